//! A store backed by a file (or a block device), read and written with `pread`/`pwrite`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::mapped::FileMapping;
use crate::{CopySource, Result, Store, StoreError};

/// The direct-I/O alignment used when the kernel does not report one (`STATX_DIOALIGN` needs
/// Linux 6.1 and a file system that fills it in).
const FALLBACK_DIRECT_ALIGN: usize = 4096;

/// The largest byte offset a file can be addressed at (`off_t` is signed).
const MAX_FILE_OFFSET: u64 = i64::MAX as u64;

/// A [`Store`] backed by a file.
///
/// Reads and writes are positioned (`pread`/`pwrite`), so any number of threads can use one
/// `FileStore` at once without locking. Short transfers and `EINTR` are retried inside; bytes
/// at or past [`len`](Store::len) read as zeros, and writing past the end grows the file.
///
/// The length is cached when the store is opened and grown by this store's writes; changes
/// made to the file's size by anyone else afterwards are not noticed.
///
/// With [`FileStoreOptions::direct`] the file is also opened with `O_DIRECT`, bypassing the
/// page cache for requests whose buffer address, offset and length are all multiples of
/// [`preferred_alignment`](Store::preferred_alignment); other requests go through a second,
/// ordinary descriptor on the same file, so every request works whatever its alignment.
///
/// ```
/// use umap_store::{FileStore, Store};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("data");
///
/// let store = FileStore::create(&path, 4096)?;
/// store.write_at(b"hello", 100)?;
/// store.sync()?;
/// drop(store);
///
/// let store = FileStore::open_read_only(&path)?;
/// assert_eq!(store.len(), 4096);
/// let mut buf = [0u8; 5];
/// store.read_at(&mut buf, 100)?;
/// assert_eq!(&buf, b"hello");
/// assert!(store.write_at(b"no", 0).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FileStore {
    /// The ordinary (page-cached) descriptor. Every request that the direct descriptor cannot
    /// take goes here, as does `fdatasync`.
    file: File,
    /// The `O_DIRECT` descriptor on the same file, in direct mode.
    direct: Option<DirectFile>,
    /// The store's length: the file's size when opened, grown by writes past the end.
    len: AtomicU64,
    read_only: bool,
    /// Where the file is, for messages and `Debug` (best effort for [`FileStore::from_file`]).
    path: Option<PathBuf>,
    /// The file mapped read-only, for [`Store::copy_source`] (see `crate::mapped`); none in
    /// direct mode, for an empty file, or when turned off.
    mapping: Option<FileMapping>,
}

/// An `O_DIRECT` descriptor and the alignment its requests need.
struct DirectFile {
    file: File,
    /// A power of two: the larger of the file system's direct-I/O alignments and the page size.
    align: usize,
}

impl DirectFile {
    /// Whether a request with this buffer address, file offset and length can go to the direct
    /// descriptor.
    fn accepts(&self, addr: *const u8, offset: u64, len: usize) -> bool {
        let mask = self.align - 1;
        (addr as usize) & mask == 0 && (offset & mask as u64) == 0 && len & mask == 0
    }
}

/// How to open a [`FileStore`]: read-only or not, direct I/O or not, creating the file or not.
///
/// Built by [`FileStore::options`]; the setters chain like [`std::fs::OpenOptions`].
///
/// ```
/// use umap_store::{FileStore, Store};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("data");
/// let store = FileStore::options().create(1 << 20).open(&path)?;
/// assert_eq!(store.len(), 1 << 20);
/// assert!(!store.is_read_only());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct FileStoreOptions {
    read_only: bool,
    direct: bool,
    create: Option<u64>,
    mapped_reads: bool,
}

impl FileStoreOptions {
    /// Options that open an existing file read-write with ordinary (page-cached) I/O.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the file read-only; the store then refuses writes with [`StoreError::ReadOnly`].
    /// Cannot be combined with [`create`](Self::create).
    pub fn read_only(&mut self, read_only: bool) -> &mut Self {
        self.read_only = read_only;
        self
    }

    /// Also opens the file with `O_DIRECT`, so that aligned requests bypass the page cache.
    /// Opening fails with [`StoreError::DirectIoUnsupported`] on file systems that refuse it.
    pub fn direct(&mut self, direct: bool) -> &mut Self {
        self.direct = direct;
        self
    }

    /// Whether sequential reads are copied straight from a read-only mapping of the file
    /// (off by default; not with [`direct`](Self::direct)). The pager then installs each run
    /// of a sequential scan with one copy from the page cache instead of a `pread` and a
    /// copy, and a helper thread maps the file ahead of each scan (`MADV_POPULATE_READ`), so
    /// that the disk reads while the pager copies. Random reads and descending scans still
    /// use `pread`.
    ///
    /// The price is resident memory outside the pager's buffer: the file's pages mapped ahead
    /// of and just behind each scan (clean page cache, about 18 MiB ahead and 6 MiB behind
    /// once rounded to 2 MiB blocks, for at most 4 scans at once) count in the process's
    /// resident set.
    ///
    /// It relies on `read`/`write` and `mmap` of the file sharing one page cache, as on
    /// local file systems and block devices. Do not use it on file systems where they do not
    /// (FUSE with `direct_io`, CIFS or 9p without caching): a copy could then install bytes
    /// older than a write-back made with `pwrite`. If the file cannot be mapped, the store
    /// reads with `pread` only ([`FileStore::has_mapped_reads`] tells).
    pub fn mapped_reads(&mut self, on: bool) -> &mut Self {
        self.mapped_reads = on;
        self
    }

    /// Creates the file if it does not exist, or truncates it if it does, then sizes it to
    /// exactly `size` bytes, all zero (sparse where the file system can).
    pub fn create(&mut self, size: u64) -> &mut Self {
        self.create = Some(size);
        self
    }

    /// Opens the file at `path` with these options.
    ///
    /// Errors name the path: [`StoreError::Open`] when the file cannot be opened, created or
    /// sized, [`StoreError::DirectIoUnsupported`] when `O_DIRECT` is refused, and
    /// [`StoreError::Invalid`] for contradictory options or a file that is neither a regular
    /// file nor a block device.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<FileStore> {
        let path = path.as_ref();
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if self.read_only && self.create.is_some() {
            return Err(StoreError::Invalid(format!(
                "cannot create {} read-only: a created file is opened read-write",
                path.display()
            )));
        }

        let mut options = OpenOptions::new();
        options.read(true).write(!self.read_only);
        if self.create.is_some() {
            options.create(true).truncate(true);
        }
        let file = options.open(path).map_err(open_err)?;
        if let Some(size) = self.create {
            if size > MAX_FILE_OFFSET {
                return Err(StoreError::OutOfRange {
                    offset: size,
                    len: 0,
                    reason: "a file cannot be larger than i64::MAX bytes",
                });
            }
            file.set_len(size).map_err(open_err)?;
        }

        let direct = if self.direct {
            let direct_file = OpenOptions::new()
                .read(true)
                .write(!self.read_only)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .map_err(|source| {
                    if source.raw_os_error() == Some(libc::EINVAL) {
                        StoreError::DirectIoUnsupported {
                            path: path.to_path_buf(),
                            source,
                        }
                    } else {
                        open_err(source)
                    }
                })?;
            if !same_file(&file, &direct_file).map_err(open_err)? {
                return Err(StoreError::Invalid(format!(
                    "{} was replaced while it was being opened",
                    path.display()
                )));
            }
            Some(DirectFile {
                align: direct_alignment(&direct_file, Some(path))?,
                file: direct_file,
            })
        } else {
            None
        };

        let store = FileStore::assemble(file, direct, self.read_only, Some(path.to_path_buf()))?;
        Ok(if self.mapped_reads {
            store.with_mapped_reads()
        } else {
            store
        })
    }
}

impl FileStore {
    /// Opens an existing file read-write.
    pub fn open(path: impl AsRef<Path>) -> Result<FileStore> {
        FileStoreOptions::new().open(path)
    }

    /// Opens an existing file read-only.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<FileStore> {
        FileStoreOptions::new().read_only(true).open(path)
    }

    /// Creates a file, or truncates an existing one, sized to exactly `size` zero bytes, and
    /// opens it read-write. The file is sparse where the file system allows.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<FileStore> {
        FileStoreOptions::new().create(size).open(path)
    }

    /// Options for opening a store: read-only, `O_DIRECT`, create.
    pub fn options() -> FileStoreOptions {
        FileStoreOptions::new()
    }

    /// Makes a store of an already open file, taking ownership of it.
    ///
    /// `file` must be readable, and writable unless `read_only`; a writable store must not
    /// be in append mode (`O_APPEND` would make positioned writes append). If the descriptor
    /// has `O_DIRECT`, the store is in direct mode and opens a second, ordinary descriptor on
    /// the same file through `/proc/self/fd` for unaligned requests.
    ///
    /// The length is taken from the file's size now. The file offset is not used (all I/O is
    /// positioned), so a descriptor shared with other code keeps working.
    ///
    /// Errors: [`StoreError::AccessMode`] (`EACCES`) for a descriptor open write-only, or
    /// read-only when `read_only` is false; [`StoreError::Invalid`] for append mode or a file
    /// that is neither a regular file nor a block device.
    pub fn from_file(file: File, read_only: bool) -> Result<FileStore> {
        let fd = file.as_raw_fd();
        let proc_path = PathBuf::from(format!("/proc/self/fd/{fd}"));
        let path = std::fs::read_link(&proc_path).ok();
        let open_err = |source| match &path {
            Some(path) => StoreError::Open {
                path: path.clone(),
                source,
            },
            None => StoreError::Io {
                op: "open",
                offset: 0,
                len: 0,
                source,
            },
        };
        let name = || match &path {
            Some(path) => path.display().to_string(),
            None => format!("file descriptor {fd}"),
        };

        // SAFETY: F_GETFL takes no argument and only reads the flags of `fd`, which is open
        // because `file` owns it for the duration of the call.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(open_err(io::Error::last_os_error()));
        }
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => {
                return Err(StoreError::AccessMode {
                    file: name(),
                    mode: "write-only",
                    needed: "a store must be able to read it",
                })
            }
            libc::O_RDONLY if !read_only => {
                return Err(StoreError::AccessMode {
                    file: name(),
                    mode: "read-only",
                    needed: "open it read-write or make a read-only store",
                })
            }
            _ => {}
        }
        if !read_only && flags & libc::O_APPEND != 0 {
            return Err(StoreError::Invalid(format!(
                "{} is open in append mode (O_APPEND), where positioned writes append",
                name()
            )));
        }

        if flags & libc::O_DIRECT == 0 {
            return FileStore::assemble(file, None, read_only, path);
        }
        // The descriptor is direct: reopen the same file (not a dup, which would share the
        // O_DIRECT flag) for the requests that cannot be aligned.
        let buffered = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&proc_path)
            .map_err(|source| {
                StoreError::Invalid(format!(
                    "{} is open with O_DIRECT, and reopening it without O_DIRECT through {} \
                     failed: {source}",
                    name(),
                    proc_path.display()
                ))
            })?;
        if !same_file(&file, &buffered).map_err(open_err)? {
            return Err(StoreError::Invalid(format!(
                "reopening {} through {} gave a different file",
                name(),
                proc_path.display()
            )));
        }
        let align = direct_alignment(&file, path.as_deref())?;
        FileStore::assemble(buffered, Some(DirectFile { file, align }), read_only, path)
    }

    /// Finishes opening: checks the file type and reads the length.
    fn assemble(
        file: File,
        direct: Option<DirectFile>,
        read_only: bool,
        path: Option<PathBuf>,
    ) -> Result<FileStore> {
        let open_err = |source| match &path {
            Some(path) => StoreError::Open {
                path: path.clone(),
                source,
            },
            None => StoreError::Io {
                op: "open",
                offset: 0,
                len: 0,
                source,
            },
        };
        let meta = file.metadata().map_err(open_err)?;
        let file_type = meta.file_type();
        let len = if file_type.is_file() {
            meta.len()
        } else if file_type.is_block_device() {
            block_device_len(&file).map_err(open_err)?
        } else {
            let name = match &path {
                Some(path) => path.display().to_string(),
                None => "the file".to_owned(),
            };
            return Err(StoreError::Invalid(format!(
                "{name} is neither a regular file nor a block device"
            )));
        };
        Ok(FileStore {
            file,
            direct,
            len: AtomicU64::new(len),
            read_only,
            path,
            mapping: None,
        })
    }

    /// The path the store was opened from, if known. For [`FileStore::from_file`] it is what
    /// `/proc/self/fd` says, which may be missing or stale.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether the store uses `O_DIRECT` for aligned requests.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Turns on mapped reads (see [`FileStoreOptions::mapped_reads`]) for a store made
    /// otherwise, such as with [`FileStore::from_file`]. As with the option, a store in direct
    /// mode, an empty file or a file that cannot be mapped keeps reading with `pread` only;
    /// [`has_mapped_reads`](Self::has_mapped_reads) tells.
    pub fn with_mapped_reads(mut self) -> FileStore {
        // Best effort: a file that cannot be mapped is read with `pread` only.
        if self.mapping.is_none() && self.direct.is_none() {
            let len = self.len.load(Ordering::Relaxed);
            if len > 0 {
                self.mapping = FileMapping::new(&self.file, len).ok();
            }
        }
        self
    }

    /// Whether sequential runs are copied from a mapping of the file (mapped reads on, and
    /// the file mapped).
    pub fn has_mapped_reads(&self) -> bool {
        self.mapping.is_some()
    }

    /// The file to use for a request with this buffer address, offset and length.
    fn file_for(&self, addr: *const u8, offset: u64, len: usize) -> &File {
        match &self.direct {
            Some(direct) if direct.accepts(addr, offset, len) => &direct.file,
            _ => &self.file,
        }
    }

    /// Reads into `buf` from `offset` until it is full or the file ends; returns how many
    /// bytes were read. The descriptor is chosen afresh for every call, so a short direct read
    /// (at the end of the file) is finished on the ordinary descriptor.
    fn read_full(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let pos = offset + done as u64;
            match self
                .file_for(rest.as_ptr(), pos, rest.len())
                .read_at(rest, pos)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes `buf` at `offset`, adding to `done` as bytes are written, until all are written
    /// or a write fails.
    fn write_full(&self, buf: &[u8], offset: u64, done: &mut usize) -> io::Result<()> {
        while *done < buf.len() {
            let rest = &buf[*done..];
            let pos = offset + *done as u64;
            match self
                .file_for(rest.as_ptr(), pos, rest.len())
                .write_at(rest, pos)
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => *done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Store for FileStore {
    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = self.len();
        // The bytes that exist; the rest of `buf` reads as zeros.
        let avail = if offset >= len {
            0
        } else {
            (len - offset).min(buf.len() as u64) as usize
        };
        // Ask the kernel for `avail` bytes, rounded up to the direct alignment when the whole
        // request is aligned so that it can still go to the direct descriptor.
        let want = match &self.direct {
            Some(direct) if direct.accepts(buf.as_ptr(), offset, buf.len()) => {
                avail.next_multiple_of(direct.align)
            }
            _ => avail,
        };
        let got = self
            .read_full(&mut buf[..want], offset)
            .map_err(|source| StoreError::Io {
                op: "read",
                offset,
                len: buf.len(),
                source,
            })?;
        buf[got.min(avail)..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        if buf.is_empty() {
            return Ok(());
        }
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= MAX_FILE_OFFSET => {}
            _ => {
                return Err(StoreError::OutOfRange {
                    offset,
                    len: buf.len(),
                    reason: "a file cannot reach past byte i64::MAX",
                })
            }
        }
        let mut done = 0;
        let result = self.write_full(buf, offset, &mut done);
        if done > 0 {
            // Even a failed write may have grown the file by what it did write.
            self.len.fetch_max(offset + done as u64, Ordering::AcqRel);
        }
        result.map_err(|source| StoreError::Io {
            op: "write",
            offset,
            len: buf.len(),
            source,
        })
    }

    fn sync(&self) -> Result<()> {
        if self.read_only {
            // Nothing written through this store; some file systems refuse to sync read-only
            // descriptors.
            return Ok(());
        }
        // fdatasync flushes the whole file, whichever descriptor wrote to it.
        loop {
            match self.file.sync_data() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        op: "sync",
                        offset: 0,
                        len: 0,
                        source,
                    })
                }
            }
        }
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn preferred_alignment(&self) -> usize {
        self.direct.as_ref().map_or(1, |direct| direct.align)
    }

    fn copy_source(&self, offset: u64, len: usize) -> Option<CopySource> {
        let ptr = self.mapping.as_ref()?.source(offset, len)?;
        // SAFETY: `ptr` points into the store's read-only shared mapping of its file, at
        // `offset`, with `offset + len` inside the mapping (`FileMapping::source` checks it);
        // the mapping lives as long as the store. Its bytes are the file's, as `read_at` reads
        // them (the page cache is shared), or, if the file shrank or a page cannot be read,
        // they cannot be read at all.
        Some(unsafe { CopySource::new(ptr) })
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .field("len", &self.len())
            .field("read_only", &self.read_only)
            .field("direct", &self.is_direct())
            .field("alignment", &self.preferred_alignment())
            .field("mapped_reads", &self.has_mapped_reads())
            .finish()
    }
}

/// Whether two open files are the same inode.
fn same_file(a: &File, b: &File) -> io::Result<bool> {
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// The size of a block device, found by seeking to its end (metadata says 0 for devices).
/// The file offset is put back, for a descriptor shared with other code.
fn block_device_len(mut file: &File) -> io::Result<u64> {
    let saved = file.stream_position()?;
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(saved))?;
    Ok(len)
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|size| size.is_power_of_two())
        .unwrap_or(FALLBACK_DIRECT_ALIGN)
}

/// What the kernel says about direct I/O on a file.
enum DioAlign {
    /// The kernel or file system does not say: assume the fallback.
    Unknown,
    /// The file system says direct I/O is not supported on this file.
    Unsupported,
    /// Buffers, offsets and lengths must be multiples of this (a power of two).
    Align(usize),
}

/// Asks `statx(STATX_DIOALIGN)` (Linux 6.1+) for the direct-I/O alignment of `file`.
#[cfg(any(target_env = "gnu", target_env = "musl", target_os = "android"))]
fn query_dio_align(file: &File) -> DioAlign {
    // SAFETY: `statx` is a plain C struct of integers, for which all zeros is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated (empty) string, which with AT_EMPTY_PATH
    // makes statx describe the open descriptor `file` owns; `stx` is a valid, writable
    // `statx` that the kernel fills in and that outlives the call.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return DioAlign::Unknown;
    }
    if stx.stx_dio_offset_align == 0 {
        return DioAlign::Unsupported;
    }
    let align = stx.stx_dio_mem_align.max(stx.stx_dio_offset_align) as usize;
    if align.is_power_of_two() {
        DioAlign::Align(align)
    } else {
        DioAlign::Unknown
    }
}

/// Without a `statx` binding the kernel cannot be asked: assume the fallback.
#[cfg(not(any(target_env = "gnu", target_env = "musl", target_os = "android")))]
fn query_dio_align(_file: &File) -> DioAlign {
    DioAlign::Unknown
}

/// The alignment direct requests must have on `file`: what the file system asks for, but at
/// least a page.
///
/// Page granularity keeps the direct and ordinary descriptors apart: an aligned (direct)
/// request covers whole pages, so it never shares a page-cache page with an unaligned request
/// on a disjoint byte range running at the same time, and the kernel's flush-and-invalidate
/// around direct I/O cannot lose such a concurrent buffered write.
fn direct_alignment(file: &File, path: Option<&Path>) -> Result<usize> {
    let align = match query_dio_align(file) {
        DioAlign::Unknown => FALLBACK_DIRECT_ALIGN,
        DioAlign::Align(align) => align,
        DioAlign::Unsupported => {
            return Err(StoreError::DirectIoUnsupported {
                path: path.map_or_else(|| PathBuf::from("<file descriptor>"), Path::to_path_buf),
                source: io::Error::from_raw_os_error(libc::EINVAL),
            })
        }
    };
    Ok(align.max(page_size()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// A directory for test files, with the store options to use in it.
    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// A directory on a file system that takes O_DIRECT: the temporary directory if it does
    /// (not on tmpfs), else one inside the crate. Fails the test if neither does: the
    /// direct-I/O tests never skip silently.
    pub(crate) fn direct_dir() -> tempfile::TempDir {
        let candidates = [
            std::env::temp_dir(),
            PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        ];
        for candidate in candidates {
            let Ok(dir) = tempfile::tempdir_in(&candidate) else {
                continue;
            };
            let probe = dir.path().join("probe");
            std::fs::write(&probe, b"").unwrap();
            match FileStore::options().direct(true).open(&probe) {
                Ok(_) => return dir,
                Err(StoreError::DirectIoUnsupported { .. }) => continue,
                Err(e) => panic!("probing O_DIRECT in {}: {e}", candidate.display()),
            }
        }
        panic!(
            "no directory here supports O_DIRECT (tried the temporary directory and the crate \
             directory): set TMPDIR to a directory on a disk file system"
        )
    }

    /// A buffer of `len` bytes at an address aligned to `align`.
    pub(crate) struct AlignedBuf {
        storage: Vec<u8>,
        start: usize,
        len: usize,
    }

    impl AlignedBuf {
        pub(crate) fn new(len: usize, align: usize) -> Self {
            let storage = vec![0u8; len + align];
            let start = storage.as_ptr().align_offset(align);
            AlignedBuf {
                storage,
                start,
                len,
            }
        }

        pub(crate) fn as_mut(&mut self) -> &mut [u8] {
            &mut self.storage[self.start..self.start + self.len]
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    fn direct_flags(store: &FileStore) -> i32 {
        let fd = store.direct.as_ref().unwrap().file.as_raw_fd();
        // SAFETY: F_GETFL on a descriptor the store owns and keeps open.
        unsafe { libc::fcntl(fd, libc::F_GETFL) }
    }

    #[test]
    fn create_sets_exact_size_sparse_and_zeroed() {
        let dir = dir();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0xaa; 100_000]).unwrap();
        let store = FileStore::create(&path, 12_345).unwrap();
        assert_eq!(store.len(), 12_345);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 12_345);
        let mut buf = vec![0xffu8; 12_345];
        store.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "create must truncate old data");

        let big = dir.path().join("big");
        let store = FileStore::create(&big, 1 << 36).unwrap();
        assert_eq!(store.len(), 1 << 36);
        let meta = std::fs::metadata(&big).unwrap();
        assert_eq!(meta.len(), 1 << 36);
        assert!(meta.blocks() * 512 < 1 << 20, "create must be sparse");

        let store = FileStore::create(dir.path().join("empty"), 0).unwrap();
        assert!(store.is_empty());
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = dir();
        let missing = dir.path().join("missing-file");
        let err = FileStore::open(&missing).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("missing-file"), "{err}");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        let err = FileStore::open_read_only(&missing).unwrap_err();
        assert!(err.to_string().contains("missing-file"), "{err}");

        // A directory is neither a file nor a device.
        let err = FileStore::open_read_only(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");

        let err = FileStore::options()
            .read_only(true)
            .create(10)
            .open(dir.path().join("x"))
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn mapped_reads_are_off_unless_asked_and_never_in_direct_mode() {
        let dir = dir();
        let path = dir.path().join("data");
        std::fs::write(&path, pattern(1 << 20, 3)).unwrap();
        assert!(!FileStore::open(&path).unwrap().has_mapped_reads());
        let store = FileStore::options().mapped_reads(true).open(&path).unwrap();
        assert!(store.has_mapped_reads());
        assert!(format!("{store:?}").contains("mapped_reads: true"));
        // From a descriptor: off, then on when asked.
        let store = FileStore::from_file(File::open(&path).unwrap(), true).unwrap();
        assert!(!store.has_mapped_reads());
        let store = store.with_mapped_reads();
        assert!(store.has_mapped_reads());
        // A stream's second run comes from the mapping, holding the file's bytes.
        assert!(store.copy_source(0, 65536).is_none());
        let source = store.copy_source(65536, 65536).expect("a continuing run");
        // SAFETY: the run lies inside the mapping of an intact file, alive with `store`.
        let bytes = unsafe { std::slice::from_raw_parts(source.as_ptr(), 65536) };
        assert_eq!(bytes, &pattern(1 << 20, 3)[65536..131072]);
        // Not in direct mode.
        let direct_dir = direct_dir();
        let direct_path = direct_dir.path().join("data");
        std::fs::write(&direct_path, pattern(1 << 20, 3)).unwrap();
        let store = FileStore::options()
            .direct(true)
            .mapped_reads(true)
            .open(&direct_path)
            .unwrap();
        assert!(store.is_direct() && !store.has_mapped_reads());
        assert!(!store.with_mapped_reads().has_mapped_reads());
        // Nothing to map in an empty file.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, []).unwrap();
        let store = FileStore::options()
            .mapped_reads(true)
            .open(&empty)
            .unwrap();
        assert!(!store.has_mapped_reads());
        assert!(!store.with_mapped_reads().has_mapped_reads());
    }

    #[test]
    fn open_existing_reads_length_and_contents() {
        let dir = dir();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").unwrap();
        let store = FileStore::open(&path).unwrap();
        assert_eq!(store.len(), 11);
        assert!(!store.is_read_only());
        assert!(!store.is_direct());
        assert_eq!(store.preferred_alignment(), 1);
        assert_eq!(store.path(), Some(path.as_path()));
        let mut buf = [0u8; 5];
        store.read_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"world");
        let debug = format!("{store:?}");
        assert!(
            debug.contains("FileStore") && debug.contains("len: 11"),
            "{debug}"
        );
    }

    #[test]
    fn read_only_refuses_writes_but_reads() {
        let dir = dir();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abcdef").unwrap();
        let store = FileStore::open_read_only(&path).unwrap();
        assert!(store.is_read_only());
        let err = store.write_at(b"x", 0).unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly), "{err:?}");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert!(matches!(store.write_at(b"", 0), Err(StoreError::ReadOnly)));
        let mut buf = [0u8; 6];
        store.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abcdef");
        store.sync().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
    }

    #[test]
    fn write_past_end_grows_file() {
        let dir = dir();
        let path = dir.path().join("f");
        let store = FileStore::create(&path, 10).unwrap();
        store.write_at(b"tail", 20).unwrap();
        assert_eq!(store.len(), 24);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 24);
        // A write inside does not shrink it.
        store.write_at(b"in", 0).unwrap();
        assert_eq!(store.len(), 24);
        store.sync().unwrap();
        let mut expected = vec![0u8; 24];
        expected[..2].copy_from_slice(b"in");
        expected[20..].copy_from_slice(b"tail");
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        let err = store.write_at(b"x", u64::MAX).unwrap_err();
        assert!(matches!(err, StoreError::OutOfRange { .. }), "{err:?}");
        let err = store.write_at(b"xy", i64::MAX as u64 - 1).unwrap_err();
        assert!(matches!(err, StoreError::OutOfRange { .. }), "{err:?}");
        assert_eq!(store.len(), 24);
    }

    #[test]
    fn from_file_checks_the_descriptor() {
        let dir = dir();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();

        let store = FileStore::from_file(File::open(&path).unwrap(), true).unwrap();
        assert_eq!(store.len(), 10);
        assert_eq!(store.path(), Some(path.as_path()));

        let err = FileStore::from_file(File::open(&path).unwrap(), false).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::AccessMode {
                    mode: "read-only",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        assert!(err.to_string().contains("is open read-only"), "{err}");

        let append = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&path)
            .unwrap();
        let err = FileStore::from_file(append, false).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");

        let write_only = OpenOptions::new().write(true).open(&path).unwrap();
        let err = FileStore::from_file(write_only, true).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::AccessMode {
                    mode: "write-only",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));

        let rw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let store = FileStore::from_file(rw, false).unwrap();
        assert!(!store.is_direct());
        store.write_at(b"ab", 12).unwrap();
        assert_eq!(store.len(), 14);
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789\0\0ab");
    }

    #[test]
    fn from_file_with_o_direct_descriptor() {
        let dir = direct_dir();
        let path = dir.path().join("f");
        std::fs::write(&path, pattern(10_000, 3)).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let store = FileStore::from_file(file, false).unwrap();
        assert!(store.is_direct());
        let align = store.preferred_alignment();
        assert!(align >= 4096 && align.is_power_of_two());
        // Unaligned requests work through the companion descriptor.
        let mut buf = vec![0u8; 1000];
        store.read_at(&mut buf, 3).unwrap();
        assert_eq!(buf, pattern(10_000, 3)[3..1003]);
        store.write_at(b"xyz", 9_999).unwrap();
        assert_eq!(store.len(), 10_002);
        // Aligned ones through the direct descriptor.
        let mut aligned = AlignedBuf::new(align, align);
        aligned.as_mut().copy_from_slice(&pattern(align, 9));
        store.write_at(aligned.as_mut(), 0).unwrap();
        let mut back = AlignedBuf::new(align, align);
        store.read_at(back.as_mut(), 0).unwrap();
        assert_eq!(back.as_mut(), &pattern(align, 9)[..]);
    }

    #[test]
    fn direct_requires_support_or_says_why() {
        // tmpfs refuses O_DIRECT on older kernels; newer ones accept it. Either way the result
        // must be a working store or the dedicated error naming the file.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let Ok(dir) = tempfile::tempdir_in(shm) else {
            return;
        };
        let path = dir.path().join("direct-probe");
        match FileStore::options().direct(true).create(5000).open(&path) {
            Ok(store) => {
                store.write_at(b"abc", 4999).unwrap();
                let mut buf = [0u8; 3];
                store.read_at(&mut buf, 4999).unwrap();
                assert_eq!(&buf, b"abc");
            }
            Err(err @ StoreError::DirectIoUnsupported { .. }) => {
                let msg = err.to_string();
                assert!(
                    msg.contains("O_DIRECT") && msg.contains("direct-probe"),
                    "{msg}"
                );
            }
            Err(err) => panic!("unexpected error: {err}"),
        }
    }

    #[test]
    fn direct_aligned_and_unaligned_io() {
        let dir = direct_dir();
        let path = dir.path().join("f");
        // A length that is not a multiple of the block size: a partial last block.
        let data = pattern(10_000, 7);
        std::fs::write(&path, &data).unwrap();
        let store = FileStore::options().direct(true).open(&path).unwrap();
        assert!(store.is_direct());
        assert_ne!(direct_flags(&store) & libc::O_DIRECT, 0);
        assert_eq!(store.len(), 10_000);
        let align = store.preferred_alignment();
        assert!(align >= 4096 && align.is_power_of_two(), "{align}");
        let debug = format!("{store:?}");
        assert!(debug.contains("direct: true"), "{debug}");

        // Aligned read of the whole file, rounded up: the partial last block reads short and
        // the rest is zeros.
        let blocks = 10_000usize.div_ceil(align) + 1;
        let mut buf = AlignedBuf::new(blocks * align, align);
        buf.as_mut().fill(0xff);
        store.read_at(buf.as_mut(), 0).unwrap();
        assert_eq!(&buf.as_mut()[..10_000], &data[..]);
        assert!(buf.as_mut()[10_000..].iter().all(|&b| b == 0));

        // Aligned read of just the last block.
        let last = (10_000 / align) * align;
        let mut one = AlignedBuf::new(align, align);
        one.as_mut().fill(0xff);
        store.read_at(one.as_mut(), last as u64).unwrap();
        assert_eq!(&one.as_mut()[..10_000 - last], &data[last..]);
        assert!(one.as_mut()[10_000 - last..].iter().all(|&b| b == 0));

        // Aligned read entirely past the end.
        one.as_mut().fill(0xff);
        store
            .read_at(one.as_mut(), (blocks * align) as u64)
            .unwrap();
        assert!(one.as_mut().iter().all(|&b| b == 0));

        // Unaligned reads: odd offset, odd length, odd address.
        let mut odd = vec![0xffu8; 5001];
        store.read_at(&mut odd[1..], 17).unwrap();
        assert_eq!(&odd[1..], &data[17..5017]);
        let mut straddle = vec![0xffu8; 300];
        store.read_at(&mut straddle, 9_900).unwrap();
        assert_eq!(&straddle[..100], &data[9_900..]);
        assert!(straddle[100..].iter().all(|&b| b == 0));

        // Aligned write inside, then unaligned read across it.
        let mut w = AlignedBuf::new(align, align);
        w.as_mut().copy_from_slice(&pattern(align, 42));
        store.write_at(w.as_mut(), 0).unwrap();
        let mut expected = data.clone();
        expected[..align].copy_from_slice(&pattern(align, 42));
        let mut check = vec![0u8; 10_000];
        store.read_at(&mut check, 0).unwrap();
        assert_eq!(check, expected);

        // Unaligned write inside, then aligned read over it.
        store.write_at(b"unaligned", 5).unwrap();
        expected[5..14].copy_from_slice(b"unaligned");
        store.read_at(one.as_mut(), 0).unwrap();
        assert_eq!(one.as_mut(), &expected[..align]);

        // Unaligned write extending the file to a length that is not block aligned.
        store.write_at(&pattern(2345, 5), 10_000).unwrap();
        expected.extend_from_slice(&pattern(2345, 5));
        assert_eq!(store.len(), 12_345);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 12_345);

        // Aligned write past the end leaves a hole and ends exactly where it ends.
        let far = (blocks + 2) * align;
        store.write_at(w.as_mut(), far as u64).unwrap();
        assert_eq!(store.len(), (far + align) as u64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (far + align) as u64
        );
        expected.resize(far, 0);
        expected.extend_from_slice(&pattern(align, 42));

        store.sync().unwrap();
        let mut all = AlignedBuf::new(far + align, align);
        store.read_at(all.as_mut(), 0).unwrap();
        assert_eq!(all.as_mut(), &expected[..]);
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        // Reopened, the length is still exact.
        drop(store);
        let store = FileStore::options()
            .direct(true)
            .read_only(true)
            .open(&path)
            .unwrap();
        assert_eq!(store.len(), (far + align) as u64);
        assert!(matches!(
            store.write_at(w.as_mut(), 0),
            Err(StoreError::ReadOnly)
        ));
    }

    #[test]
    fn direct_aligned_range_in_misaligned_buffer() {
        let dir = direct_dir();
        let path = dir.path().join("f");
        let store = FileStore::options()
            .direct(true)
            .create(0)
            .open(&path)
            .unwrap();
        let align = store.preferred_alignment();
        // Offset and length aligned, buffer address one byte off: must not go direct.
        let mut storage = AlignedBuf::new(2 * align + 1, align);
        let misaligned = &mut storage.as_mut()[1..];
        misaligned[..align].copy_from_slice(&pattern(align, 1));
        store.write_at(&misaligned[..align], align as u64).unwrap();
        assert_eq!(store.len(), 2 * align as u64);
        misaligned.fill(0xff);
        store.read_at(&mut misaligned[..2 * align], 0).unwrap();
        assert!(misaligned[..align].iter().all(|&b| b == 0));
        assert_eq!(&misaligned[align..2 * align], &pattern(align, 1)[..]);
    }

    /// The length is cached: growth by others is not seen, and those bytes read as zeros, for
    /// direct (rounded-up) reads too.
    fn external_growth_reads_zero(direct: bool) {
        let dir = if direct { direct_dir() } else { self::dir() };
        let path = dir.path().join("f");
        std::fs::write(&path, pattern(5000, 2)).unwrap();
        let store = FileStore::options().direct(direct).open(&path).unwrap();
        std::fs::write(&path, pattern(20_000, 2)).unwrap();
        assert_eq!(store.len(), 5000);
        let align = store.preferred_alignment().max(4096);
        let mut buf = AlignedBuf::new(2 * align, align);
        buf.as_mut().fill(0xff);
        store.read_at(buf.as_mut(), 0).unwrap();
        assert_eq!(&buf.as_mut()[..5000], &pattern(5000, 2)[..]);
        assert!(buf.as_mut()[5000..].iter().all(|&b| b == 0));
        let mut tail = [0xffu8; 100];
        store.read_at(&mut tail, 4950).unwrap();
        assert_eq!(&tail[..50], &pattern(5000, 2)[4950..]);
        assert!(tail[50..].iter().all(|&b| b == 0));
    }

    #[test]
    fn external_growth_reads_zero_buffered() {
        external_growth_reads_zero(false);
    }

    #[test]
    fn external_growth_reads_zero_direct() {
        external_growth_reads_zero(true);
    }

    #[test]
    fn direct_create_unaligned_size() {
        let dir = direct_dir();
        let path = dir.path().join("f");
        let store = FileStore::options()
            .direct(true)
            .create(4096 * 3 + 1)
            .open(&path)
            .unwrap();
        assert_eq!(store.len(), 4096 * 3 + 1);
        let align = store.preferred_alignment();
        let mut buf = AlignedBuf::new(4 * 4096usize.max(align), align);
        buf.as_mut().fill(0xff);
        store.read_at(buf.as_mut(), 0).unwrap();
        assert!(buf.as_mut().iter().all(|&b| b == 0));
    }

    /// Eight threads write and read back disjoint ranges, mixing aligned and unaligned
    /// requests.
    fn concurrent_disjoint(store: Arc<FileStore>) {
        let align = store.preferred_alignment().max(4096);
        // Each thread owns `region` bytes: two aligned blocks and an unaligned tail, and
        // regions begin off alignment for odd threads.
        let region = 2 * align + 1000;
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let base = t as usize * region;
                    let data = pattern(region, t);
                    for round in 0..20 {
                        if t % 2 == 0 && round % 2 == 0 {
                            // Aligned blocks (direct in direct mode) and an unaligned tail.
                            let mut block = AlignedBuf::new(2 * align, align);
                            let aligned_start = base.next_multiple_of(align);
                            let n = (base + region - aligned_start) / align * align;
                            let n = n.min(2 * align);
                            let rel = aligned_start - base;
                            block.as_mut()[..n].copy_from_slice(&data[rel..rel + n]);
                            store
                                .write_at(&block.as_mut()[..n], aligned_start as u64)
                                .unwrap();
                            store.write_at(&data[..rel], base as u64).unwrap();
                            store
                                .write_at(&data[rel + n..], (base + rel + n) as u64)
                                .unwrap();
                        } else {
                            for (i, chunk) in data.chunks(777).enumerate() {
                                store.write_at(chunk, (base + i * 777) as u64).unwrap();
                            }
                        }
                        let mut back = vec![0u8; region];
                        store.read_at(&mut back, base as u64).unwrap();
                        assert_eq!(back, data, "thread {t} round {round}");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(store.len(), 8 * region as u64);
        let mut all = vec![0u8; 8 * region + 10];
        store.read_at(&mut all, 0).unwrap();
        for t in 0..8u8 {
            let base = t as usize * region;
            assert_eq!(&all[base..base + region], &pattern(region, t)[..]);
        }
        assert!(all[8 * region..].iter().all(|&b| b == 0));
    }

    #[test]
    fn concurrent_disjoint_buffered() {
        let dir = dir();
        let store = FileStore::create(dir.path().join("f"), 0).unwrap();
        concurrent_disjoint(Arc::new(store));
    }

    #[test]
    fn concurrent_disjoint_direct() {
        let dir = direct_dir();
        let store = FileStore::options()
            .direct(true)
            .create(0)
            .open(dir.path().join("f"))
            .unwrap();
        concurrent_disjoint(Arc::new(store));
    }
}
