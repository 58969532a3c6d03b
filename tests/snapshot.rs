//! Live snapshots: the image equals memory at the instant of protection while writers keep
//! writing; untouched pages; huge-page-aligned ranges; cancel; store failures; several
//! snapshots at once; bad arguments.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::TestStore;
use umap::snapshot::{self, SnapshotOptions};
use umap::sys::Mapping;
use umap::{Error, FileStore, MemStore, Store};

const PS: usize = 4096;
const MIB: usize = 1 << 20;

/// The value of word `i` before a snapshot starts.
fn before(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 27)
}

/// Anonymous private memory for a snapshot, seen as words.
struct Memory {
    map: Mapping,
    /// Offset of the range used inside the mapping (for alignment).
    skip: usize,
    len: usize,
}

impl Memory {
    /// `len` bytes aligned to `align`; `huge` asks for transparent huge pages.
    fn new(len: usize, align: usize, huge: bool) -> Memory {
        let map = Mapping::anonymous(
            len + align,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
        )
        .unwrap();
        let skip = map.addr().next_multiple_of(align) - map.addr();
        if huge {
            // SAFETY: advice on our own mapping; it does not change its contents.
            unsafe { libc::madvise(map.as_ptr().add(skip).cast(), len, libc::MADV_HUGEPAGE) };
        }
        Memory { map, skip, len }
    }

    fn ptr(&self) -> *mut u8 {
        // SAFETY: skip < align, inside the mapping.
        unsafe { self.map.as_ptr().add(self.skip) }
    }

    fn words(&self) -> usize {
        self.len / 8
    }

    /// Word `i`, for atomic access from any thread.
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.words());
        // SAFETY: in bounds and 8-byte aligned; the mapping lives as long as `self`, and all
        // accesses in these tests go through atomics.
        unsafe { &*(self.ptr().add(i * 8) as *const AtomicU64) }
    }

    fn fill_before(&self) {
        for i in 0..self.words() {
            self.word(i).store(before(i), Ordering::Relaxed);
        }
    }
}

// SAFETY: the memory is only accessed through atomics.
unsafe impl Sync for Memory {}

/// Runs `writers` threads that write random words of `mem` (with values no word had before)
/// until `stop`; returns how many writes they made.
fn run_writers<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    mem: &'s Memory,
    writers: usize,
    stop: &'s AtomicBool,
) -> Vec<std::thread::ScopedJoinHandle<'s, u64>> {
    (0..writers)
        .map(|w| {
            s.spawn(move || {
                let mut rng = common::Rng::new(0x5A5A + w as u64);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.below(mem.words() as u64) as usize;
                    mem.word(i).store(!before(i), Ordering::Relaxed);
                    n += 1;
                }
                n
            })
        })
        .collect()
}

/// Checks that the store holds `before(i)` for every word of a `len`-byte image.
fn check_image(bytes: &[u8], len: usize) {
    assert_eq!(bytes.len(), len, "image length");
    for (i, chunk) in bytes.chunks_exact(8).enumerate() {
        let got = u64::from_ne_bytes(chunk.try_into().unwrap());
        assert_eq!(
            got,
            before(i),
            "word {i} (page {}) is not its value at the start",
            i * 8 / PS
        );
    }
}

/// Writes every page of `mem` from another thread and fails the test if that blocks: the
/// memory must be writable (no protection left behind).
fn assert_writable(mem: &Memory) {
    let (done, finished) = mpsc::channel();
    let (ptr, len) = (mem.ptr() as usize, mem.len);
    std::thread::spawn(move || {
        for off in (0..len).step_by(PS) {
            // SAFETY: inside the mapping, which outlives this check (it waits for the thread
            // or fails the test, and the leaked thread would only block).
            unsafe { ((ptr + off) as *mut u8).write_volatile(0xEE) };
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(20))
        .expect("a write blocked: the snapshot left the memory protected");
}

fn snapshot_under_writers(mem: &Memory, writers: usize) -> snapshot::SnapshotStats {
    mem.fill_before();
    let store = Arc::new(TestStore::new(MemStore::new(0)).slow(Duration::from_micros(200)));
    // SAFETY: `mem` stays mapped until the snapshot has ended (wait below).
    let snap = unsafe {
        snapshot::start(
            mem.ptr(),
            mem.len,
            store.clone(),
            SnapshotOptions::new().copiers(2),
        )
    }
    .expect("snapshot (needs userfaultfd with WP_UNPOPULATED)");
    let stop = AtomicBool::new(false);
    let (stats, writes) = std::thread::scope(|s| {
        let handles = run_writers(s, mem, writers, &stop);
        let stats = snap.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        let writes: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        (stats, writes)
    });
    assert!(writes > 0);
    check_image(&store.inner.to_vec(), mem.len);
    assert_writable(mem);
    stats
}

#[test]
fn the_image_is_memory_at_the_start_while_eight_threads_write_all_over_it() {
    let mem = Memory::new(16 * MIB, PS, false);
    let stats = snapshot_under_writers(&mem, 8);
    assert_eq!(stats.bytes, 16 * MIB as u64);
    assert_eq!(
        stats.pages_in_background + stats.pages_on_fault,
        (16 * MIB / PS) as u64
    );
    assert!(
        stats.pages_on_fault > 0 && stats.faults >= stats.pages_on_fault,
        "the writers never met an uncopied page: {stats:?}"
    );
    assert!(stats.max_fault_service >= stats.p99_fault_service);
}

#[test]
fn a_huge_page_aligned_range_snapshots_the_same() {
    // 2 MiB-aligned with transparent huge pages allowed: protection, copies and faults work
    // on huge page mappings too (the kernel splits them as needed).
    let mem = Memory::new(8 * MIB, 2 * MIB, true);
    let stats = snapshot_under_writers(&mem, 8);
    assert_eq!(stats.bytes, 8 * MIB as u64);
}

#[test]
fn untouched_pages_are_in_the_image_as_zeros_and_stay_sparse() {
    // Only every fourth 256 KiB block is ever touched before the snapshot; a writer then
    // writes everywhere, untouched pages included, while the snapshot runs.
    let len = 8 * MIB;
    let mem = Memory::new(len, PS, false);
    let block = 256 * 1024;
    for b in (0..len).step_by(4 * block) {
        for i in b / 8..(b + block) / 8 {
            mem.word(i).store(before(i), Ordering::Relaxed);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    let store = Arc::new(FileStore::create(&path, 0).unwrap());
    // SAFETY: `mem` stays mapped until the snapshot has ended.
    let snap = unsafe { snapshot::start(mem.ptr(), len, store, SnapshotOptions::new()) }
        .expect("snapshot");
    let stop = AtomicBool::new(false);
    let stats = std::thread::scope(|s| {
        let writer = run_writers(s, &mem, 1, &stop);
        let stats = snap.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        writer.into_iter().for_each(|h| {
            h.join().unwrap();
        });
        stats
    });
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), len, "the last page sets the length");
    for (i, chunk) in bytes.chunks_exact(8).enumerate() {
        let got = u64::from_ne_bytes(chunk.try_into().unwrap());
        let touched = (i * 8 / block) % 4 == 0;
        let want = if touched { before(i) } else { 0 };
        assert_eq!(got, want, "word {i} (touched before: {touched})");
    }
    // Three quarters of the pages are zeros and were skipped (the last one is written).
    assert!(
        stats.zero_pages_skipped >= (len / PS * 3 / 4 - 1) as u64,
        "{stats:?}"
    );
    let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(
        allocated <= (len / 2) as u64,
        "the image file is not sparse: {allocated} bytes allocated"
    );
    assert_writable(&mem);
}

#[test]
fn cancel_midway_leaves_the_memory_writable() {
    let mem = Memory::new(4 * MIB, PS, false);
    mem.fill_before();
    let store = Arc::new(TestStore::new(MemStore::new(0)).slow(Duration::from_millis(2)));
    // SAFETY: `mem` stays mapped until the snapshot has ended (cancel below).
    let snap =
        unsafe { snapshot::start(mem.ptr(), mem.len, store.clone(), SnapshotOptions::new()) }
            .expect("snapshot");
    std::thread::sleep(Duration::from_millis(30));
    let progress = snap.progress();
    assert!(
        !progress.is_copied(),
        "finished before the cancel: {progress:?}"
    );
    snap.cancel();
    assert_writable(&mem);
    // Cancelled: the store holds only part of the image.
    assert!(store.inner.len() < mem.len as u64);
}

#[test]
fn a_store_failure_ends_the_snapshot_with_the_error_and_the_memory_writable() {
    let mem = Memory::new(4 * MIB, PS, false);
    mem.fill_before();
    let store = Arc::new(
        TestStore::new(MemStore::new(0))
            .slow(Duration::from_micros(100))
            .failing_from(5),
    );
    // SAFETY: `mem` stays mapped until the snapshot has ended (wait below).
    let snap = unsafe { snapshot::start(mem.ptr(), mem.len, store, SnapshotOptions::new()) }
        .expect("snapshot");
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        let writers = run_writers(s, &mem, 4, &stop);
        let result = snap.wait();
        stop.store(true, Ordering::Relaxed);
        writers.into_iter().for_each(|h| {
            h.join().unwrap();
        });
        result
    });
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err}");
    assert_writable(&mem);
}

#[test]
fn disjoint_snapshots_run_at_once_and_an_overlapping_one_is_refused() {
    let (a, b) = (
        Memory::new(4 * MIB, PS, false),
        Memory::new(4 * MIB, PS, false),
    );
    a.fill_before();
    b.fill_before();
    let (sa, sb) = (
        Arc::new(TestStore::new(MemStore::new(0)).slow(Duration::from_micros(100))),
        Arc::new(TestStore::new(MemStore::new(0)).slow(Duration::from_micros(100))),
    );
    // SAFETY: `a` and `b` stay mapped until their snapshots have ended.
    let snap_a = unsafe { snapshot::start(a.ptr(), a.len, sa.clone(), SnapshotOptions::new()) }
        .expect("snapshot");
    // SAFETY: as above.
    let snap_b = unsafe { snapshot::start(b.ptr(), b.len, sb.clone(), SnapshotOptions::new()) }
        .expect("a second snapshot of another range");
    // SAFETY: as above; this one must fail before touching anything.
    let err = unsafe {
        snapshot::start(
            a.ptr().add(MIB),
            MIB,
            Arc::new(MemStore::new(0)),
            SnapshotOptions::new(),
        )
    }
    .unwrap_err();
    assert!(err.to_string().contains("already covered"), "{err}");
    snap_a.wait().unwrap();
    snap_b.wait().unwrap();
    check_image(&sa.inner.to_vec(), a.len);
    check_image(&sb.inner.to_vec(), b.len);
}

#[test]
fn bad_arguments_are_refused_before_anything_is_protected() {
    let mem = Memory::new(MIB, PS, false);
    let store = || -> Arc<dyn Store> { Arc::new(MemStore::new(0)) };
    let start = |ptr: *mut u8, len: usize, store: Arc<dyn Store>, options| {
        // SAFETY: `mem` outlives every snapshot started here (all fail or end at once).
        unsafe { snapshot::start(ptr, len, store, options) }
    };
    let cases: [(Result<_, Error>, &str); 5] = [
        (
            start(mem.ptr(), 0, store(), SnapshotOptions::new()),
            "at least one page",
        ),
        (
            // SAFETY: pointer arithmetic inside the mapping.
            start(
                unsafe { mem.ptr().add(8) },
                PS,
                store(),
                SnapshotOptions::new(),
            ),
            "multiples of the page size",
        ),
        (
            start(mem.ptr(), PS + 1, store(), SnapshotOptions::new()),
            "multiples of the page size",
        ),
        (
            start(mem.ptr(), PS, store(), SnapshotOptions::new().copiers(0)),
            "copier",
        ),
        (
            start(
                mem.ptr(),
                PS,
                Arc::new(MemStore::new(0).read_only()),
                SnapshotOptions::new(),
            ),
            "read-only",
        ),
    ];
    for (result, needle) in cases {
        let err = result.unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{err} (expected {needle:?})"
        );
    }
    assert_writable(&mem);
}
