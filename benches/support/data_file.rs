//! The benches' data file (`benches/throughput.rs`, `benches/read_ahead.rs`; each includes this
//! file with `#[path = "support/data_file.rs"] mod data_file;`, and `mix.rs` as `crate::mix`):
//! its pattern, writing it, mapping it with the kernel's `mmap`, and putting it into or out of
//! the page cache.

#![allow(dead_code)] // each bench uses its own subset.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::mix::mix64;

/// Seed of the data file's pattern.
pub const PATTERN_SEED: u64 = 0x756d_6170_2d72_7321;

/// The `u64` at index `index` of a generated data file.
pub fn pattern(index: u64) -> u64 {
    mix64(index ^ PATTERN_SEED)
}

/// Bytes the data file is written and checked in.
pub const CHUNK: usize = 8 << 20;

/// Fills `buf` with the pattern bytes of the file from byte offset `start` (a multiple of 8).
pub fn fill_pattern(buf: &mut [u8], start: u64) {
    let first = start / 8;
    for (i, word) in buf.chunks_mut(8).enumerate() {
        let bytes = pattern(first + i as u64).to_ne_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// Creates `path` holding `size` bytes of [`pattern`] (the `u64` at index `i` is
/// `pattern(i)`, native-endian), written back to disk.
pub fn create_data_file(path: &Path, size: u64) -> io::Result<()> {
    let mut file = File::create(path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    while written < size {
        let n = (size - written).min(CHUNK as u64) as usize;
        fill_pattern(&mut buf[..n], written);
        file.write_all(&buf[..n])?;
        written += n as u64;
    }
    file.sync_all()
}

/// A shared mapping of a whole file, read-only unless made by [`FileMap::new_writable`].
pub struct FileMap {
    addr: *mut libc::c_void,
    len: usize,
}

impl FileMap {
    /// Maps `len` bytes of `file` readable.
    pub fn new(file: &File, len: usize) -> io::Result<FileMap> {
        FileMap::with_protection(file, len, libc::PROT_READ)
    }

    /// Maps `len` bytes of `file` (opened read-write) readable and writable.
    pub fn new_writable(file: &File, len: usize) -> io::Result<FileMap> {
        FileMap::with_protection(file, len, libc::PROT_READ | libc::PROT_WRITE)
    }

    fn with_protection(file: &File, len: usize, protection: libc::c_int) -> io::Result<FileMap> {
        // SAFETY: a fresh mapping at an address of the kernel's choosing; the arguments are
        // plain values and `file` is an open descriptor for the duration of the call (the
        // mapping keeps its own reference to the file afterwards).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(FileMap { addr, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `addr..addr + len` is mapped readable until `self` drops, which the borrow
        // prevents. Its bytes come from the file (which the bench created or was given and
        // does not change or truncate while mapped), so they are initialised.
        unsafe { std::slice::from_raw_parts(self.addr.cast::<u8>(), self.len) }
    }

    /// The mapping's first byte (writable for a mapping made by [`FileMap::new_writable`];
    /// valid until `self` drops).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.addr.cast::<u8>()
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (it never is: mmap refuses a length of 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the mapping's dirty pages back to the file and waits for them:
    /// `msync(MS_SYNC)`, which for a shared file mapping is `fdatasync` of the range.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: `addr..addr + len` is our mapping (page-aligned, as mmap returned it);
        // msync only writes its dirty pages back to the file, it changes no memory.
        if unsafe { libc::msync(self.addr, self.len, libc::MS_SYNC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is our mapping, and no borrow of it outlives `self`.
        if unsafe { libc::munmap(self.addr, self.len) } != 0 {
            eprintln!("warning: munmap: {}", io::Error::last_os_error());
        }
    }
}

/// Reads `path` through once so that all of it is in the page cache; returns the fraction
/// cached afterwards.
pub fn read_into_page_cache(path: &Path) -> io::Result<f64> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut chunk = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < len {
        let n = file.read_at(&mut chunk, offset)?;
        if n == 0 {
            break;
        }
        offset += n as u64;
    }
    cached_fraction(&file)
}

/// Writes back the file's dirty pages and drops its pages from the page cache; returns the
/// fraction of the file still cached afterwards (measured with `mincore`).
pub fn drop_from_page_cache(path: &Path) -> io::Result<f64> {
    let file = File::open(path)?;
    file.sync_data()?;
    // SAFETY: plain advice on an open descriptor; offset 0 and length 0 mean the whole file.
    let err = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    cached_fraction(&file)
}

/// The fraction of `file` that is in the page cache.
pub fn cached_fraction(file: &File) -> io::Result<f64> {
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| io::Error::other("file too large to map"))?;
    if len == 0 {
        return Ok(0.0);
    }
    let map = FileMap::new(file, len)?;
    let pages = len.div_ceil(umap::sys::page_size());
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` covers `len` bytes from a page-aligned address; `vec` has one byte per
    // page of that range, as mincore requires. mincore only inspects the page tables and the
    // page cache: it does not read the file.
    if unsafe { libc::mincore(map.as_mut_ptr().cast(), len, vec.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let cached = vec.iter().filter(|&&b| b & 1 != 0).count();
    Ok(cached as f64 / pages as f64)
}
