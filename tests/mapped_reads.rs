//! `FileStoreOptions::mapped_reads`: the runs of a sequential scan are copied straight from a
//! read-only mapping of the file (`Store::copy_source`), every byte read right, random reads
//! still through `pread`; a file that shrinks under the mapping reads as a shrunk file does.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use umap::{CopySource, FileStore, MapOptions, Store, StoreError, Umap};

const MIB: usize = 1 << 20;
const PAGE: usize = 64 << 10;
const SEED: u64 = 0x3a9;

/// The `Store` methods the test stores here pass to their `inner` store, counting the reads
/// in their `reads`; each has its own `copy_source`.
macro_rules! forward_to_inner {
    () => {
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), StoreError> {
            self.inner.write_at(buf, offset)
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.inner.sync()
        }
        fn is_read_only(&self) -> bool {
            self.inner.is_read_only()
        }
    };
}

/// A file store with mapped reads that counts how the pager reads it.
struct Counting {
    inner: FileStore,
    /// Runs the pager was given memory to copy from.
    sources: AtomicUsize,
    /// `read_at` calls.
    reads: AtomicUsize,
}

impl Counting {
    fn open(path: &Path) -> Arc<Counting> {
        let inner = FileStore::options()
            .read_only(true)
            .mapped_reads(true)
            .open(path)
            .unwrap();
        Arc::new(Counting {
            inner,
            sources: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        })
    }
}

impl Store for Counting {
    forward_to_inner!();
    fn copy_source(&self, offset: u64, len: usize) -> Option<CopySource> {
        let source = self.inner.copy_source(offset, len);
        if source.is_some() {
            self.sources.fetch_add(1, Ordering::Relaxed);
        }
        source
    }
}

/// An engine with a `buffer`-byte buffer of 64 KiB pages, 2 fillers, faults served on the
/// faulting thread if `signal`.
fn engine_with(buffer: usize, signal: bool) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(PAGE)
        .fillers(2)
        .signal_faults(signal)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"))
}

/// `store` mapped through `umap` with 64 KiB pages, writable if `writable`.
fn map_store(umap: &Umap, store: Arc<dyn Store>, writable: bool) -> umap::Region {
    umap.map_shared(store, MapOptions::new().page_size(PAGE).writable(writable))
        .unwrap()
}

#[test]
fn a_scan_copies_its_runs_from_the_mapping_and_reads_every_byte() {
    let _watchdog = common::watchdog("a scan with mapped reads", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let len = 32 * MIB;
    let path = common::pattern_file(dir.path(), "data", SEED, len as u64);
    let store = Counting::open(&path);
    // A buffer of an eighth of the file: the second pass reads it all again.
    let umap = engine_with(4 * MIB, false);
    let region = map_store(&umap, store.clone(), false);
    for pass in 0..2 {
        common::check_pattern(SEED, 0, region.as_slice());
        let (sources, reads) = (
            store.sources.load(Ordering::Relaxed),
            store.reads.load(Ordering::Relaxed),
        );
        // Each stream's first run is read; the runs that continue it are copied.
        assert!(
            sources > 4 * reads,
            "pass {pass}: {sources} runs copied from the mapping, {reads} read"
        );
    }
    // Random pages, right too (those that land near a stream may be copied from the
    // mapping; the others are read).
    let bytes = region.as_slice();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let page = (rng % (len / PAGE) as u64) as usize * PAGE;
        let at = page + (rng >> 40) as usize % PAGE;
        assert_eq!(
            bytes[at],
            common::pattern_byte(SEED, at as u64),
            "byte {at}"
        );
    }
    region.unmap().unwrap();
}

#[test]
fn a_file_that_shrinks_under_the_mapping_reads_zeros_past_its_new_end() {
    let _watchdog = common::watchdog(
        "a shrinking file with mapped reads",
        Duration::from_secs(30),
    );
    let dir = tempfile::tempdir().unwrap();
    let len = 16 * MIB;
    let path = common::pattern_file(dir.path(), "data", SEED, len as u64);
    let store = Counting::open(&path);
    let umap = engine_with(4 * MIB, false);
    let region = map_store(&umap, store.clone(), false);
    let bytes = region.as_slice();
    // A scan of the first quarter: the stream copies from the mapping.
    common::check_pattern(SEED, 0, &bytes[..4 * MIB]);
    assert!(store.sources.load(Ordering::Relaxed) > 0);
    // The file shrinks, not at a page boundary: the mapping's pages past the new end can no
    // longer be read, and the copies from them fail.
    let new_len = 8 * MIB + 100;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(new_len as u64)
        .unwrap();
    // The scan goes on: the pages up to the new end hold the file, the rest reads as zeros
    // (the store's length is still the old one; a read past the file's end gives zeros).
    common::check_pattern(SEED, 4 * MIB as u64, &bytes[4 * MIB..new_len]);
    assert!(
        bytes[new_len..].iter().all(|&b| b == 0),
        "bytes past the new end are not zero"
    );
    // From the failed copy on, the region reads with read_at only.
    let sources = store.sources.load(Ordering::Relaxed);
    common::check_pattern(SEED, 0, &bytes[..4 * MIB]);
    assert_eq!(store.sources.load(Ordering::Relaxed), sources);
    region.unmap().unwrap();
}

/// Memory a test store offers as copy sources: an anonymous mapping holding the store's
/// bytes, parts of which are then made unreadable; unmapped when dropped.
struct Offered {
    addr: usize,
    len: usize,
}

impl Offered {
    /// `bytes`, in memory of their own.
    fn new(bytes: &[u8]) -> Offered {
        let len = bytes.len();
        // SAFETY: a new private anonymous mapping, unmapped in `drop`.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: the mapping just made, `len` bytes, readable and writable.
        unsafe { std::slice::from_raw_parts_mut(addr.cast::<u8>(), len) }.copy_from_slice(bytes);
        Offered {
            addr: addr as usize,
            len,
        }
    }

    /// Makes `range` unreadable.
    fn forbid(&self, range: std::ops::Range<usize>) {
        assert!(range.end <= self.len);
        // SAFETY: inside the mapping; only its protection changes.
        let rc = unsafe {
            libc::mprotect(
                (self.addr + range.start) as *mut libc::c_void,
                range.len(),
                libc::PROT_NONE,
            )
        };
        assert_eq!(rc, 0);
    }

    /// The run at `offset`, `len` bytes, as a copy source.
    fn source(&self, offset: u64, len: usize) -> CopySource {
        assert!(offset as usize + len <= self.len);
        let ptr = std::ptr::NonNull::new((self.addr + offset as usize) as *mut u8).unwrap();
        // SAFETY: each page of the mapping holds the store's bytes (copied in `new`, never
        // written since) or cannot be read, until it is dropped with the store that owns it.
        unsafe { CopySource::new(ptr) }
    }
}

impl Drop for Offered {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of that length.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A memory store whose `copy_source` offers memory that cannot be read (a `PROT_NONE`
/// mapping, which the contract of `CopySource::new` allows), for every run: each copy fails
/// with `EFAULT` before installing anything.
struct Unreadable {
    inner: umap::MemStore,
    /// The store's bytes, all unreadable.
    offered: Offered,
    asked: AtomicUsize,
    reads: AtomicUsize,
}

impl Unreadable {
    fn new(bytes: Vec<u8>) -> Arc<Unreadable> {
        let offered = Offered::new(&bytes);
        offered.forbid(0..bytes.len());
        Arc::new(Unreadable {
            inner: umap::MemStore::from_vec(bytes),
            offered,
            asked: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        })
    }
}

impl Store for Unreadable {
    forward_to_inner!();
    fn copy_source(&self, offset: u64, len: usize) -> Option<CopySource> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        Some(self.offered.source(offset, len))
    }
}

/// Memory offered that cannot be read: the first copies fail with nothing installed, the
/// region stops asking, and every run is read again with `read_at`, counted once, for reads,
/// writes and, with `signal_faults`, on the faulting thread.
#[test]
fn memory_that_cannot_be_read_falls_back_to_read_at_with_nothing_lost() {
    let _watchdog = common::watchdog("unreadable copy sources", Duration::from_secs(120));
    for signal in [false, true] {
        for writable in [false, true] {
            let len = 8 * MIB;
            let store = Unreadable::new(common::pattern(SEED, 0, len));
            let umap = engine_with(16 * MIB, signal);
            let region = map_store(&umap, store.clone(), writable);
            if writable {
                // Write faults: a written page installed writable and its read-ahead around it.
                // SAFETY: the region is writable and `len` bytes long; nothing else touches it.
                let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_mut_ptr(), len) };
                for page in (0..len).step_by(PAGE) {
                    let at = page + 17;
                    assert_eq!(bytes[at], common::pattern_byte(SEED, at as u64));
                    bytes[at] = !bytes[at];
                    bytes[at] = !bytes[at];
                }
            }
            common::check_pattern(SEED, 0, region.as_slice());
            let asked = store.asked.load(Ordering::Relaxed);
            assert!(
                (1..=4).contains(&asked),
                "signal {signal} writable {writable}: asked {asked} times"
            );
            let stats = region.stats();
            assert_eq!(
                stats.fills,
                (len / PAGE) as u64,
                "signal {signal} writable {writable}: {stats:?}"
            );
            assert_eq!(stats.bytes_read, len as u64);
            region.unmap().unwrap();
        }
    }
}

/// A memory store whose `copy_source` offers memory holding its bytes in the first system
/// page of every umap page only, the rest `PROT_NONE`: each copy stops inside its first page
/// with `EFAULT`, after installing (and waking the threads waiting on) that system page.
struct PartlyReadable {
    inner: umap::MemStore,
    /// The store's bytes, readable in the first system page of every umap page only.
    offered: Offered,
    reads: AtomicUsize,
}

impl PartlyReadable {
    fn new(bytes: Vec<u8>) -> Arc<PartlyReadable> {
        let sys_page = umap::sys::page_size();
        let offered = Offered::new(&bytes);
        for page in (0..bytes.len()).step_by(PAGE) {
            offered.forbid(page + sys_page..page + PAGE);
        }
        Arc::new(PartlyReadable {
            inner: umap::MemStore::from_vec(bytes),
            offered,
            reads: AtomicUsize::new(0),
        })
    }
}

impl Store for PartlyReadable {
    forward_to_inner!();
    fn copy_source(&self, offset: u64, len: usize) -> Option<CopySource> {
        Some(self.offered.source(offset, len))
    }
}

/// A copy from the store's memory that stops inside a writable page (the memory cannot be
/// read past its first system page): the page is completed from `read_at` and kept, so a
/// write made to its installed part by the woken thread stays.
#[test]
fn a_copy_stopped_inside_a_written_page_completes_it_and_keeps_the_write() {
    let _watchdog = common::watchdog("a copy stopped inside a page", Duration::from_secs(120));
    let len = 8 * MIB;
    for signal in [false, true] {
        let store = PartlyReadable::new(common::pattern(SEED, 0, len));
        let umap = engine_with(16 * MIB, signal);
        let region = map_store(&umap, store.clone(), true);
        // SAFETY: the region is writable and `len` bytes long; nothing else touches it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_mut_ptr(), len) };
        // A write to the first system page of every umap page: its fault's copy installs
        // that system page, wakes this thread, which writes, and then stops.
        for page in (0..len).step_by(PAGE) {
            bytes[page + 8] = 0xa5;
        }
        let mut want = common::pattern(SEED, 0, len);
        for page in (0..len).step_by(PAGE) {
            want[page + 8] = 0xa5;
        }
        common::assert_same(&format!("signal {signal}: the region"), 0, bytes, &want);
        region.flush().unwrap();
        let mut stored = vec![0u8; len];
        store.inner.read_at(&mut stored, 0).unwrap();
        common::assert_same(&format!("signal {signal}: the store"), 0, &stored, &want);
        region.unmap().unwrap();
    }
}
