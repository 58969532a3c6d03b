//! Engine and region lifecycles, argument checks, and fault independence.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{fds_and_threads, pattern_file};
use umap::{Error, FileStore, MapOptions, MemStore, Store, StoreError, Umap};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn engine(buffer: usize, fillers: usize) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(4 * KIB)
        .fillers(fillers)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"))
}

/// Map and unmap 1000 times: no descriptor and no thread is leaked, by regions or engines.
#[test]
fn map_and_unmap_1000_times_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = pattern_file(dir.path(), "f", 1, 256 * KIB as u64);
    let before = fds_and_threads();
    {
        let umap = engine(MIB, 2);
        for i in 0..1000 {
            let region = umap
                .map(FileStore::open_read_only(&path).unwrap(), MapOptions::new())
                .unwrap();
            // Touch a page so every cycle fills and evicts through unmap.
            let off = (i * 4096) % region.len();
            common::check_pattern(1, off as u64, &region.as_slice()[off..off + 8]);
            region.unmap().unwrap();
        }
        assert_eq!(umap.region_count(), 0);
        assert_eq!(umap.stats().resident_bytes, 0);
    }
    for _ in 0..50 {
        let umap = engine(MIB, 2);
        let region = umap
            .map(MemStore::from_vec(vec![5; 8192]), MapOptions::new())
            .unwrap();
        assert_eq!(region.as_slice()[4096], 5);
        drop(umap); // The region keeps the engine alive.
        assert_eq!(region.as_slice()[0], 5);
    }
    // A joined thread can linger in /proc/self/task for a moment while the kernel reaps it:
    // wait (bounded) for the counts to settle; a real leak never does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = fds_and_threads();
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        after = fds_and_threads();
    }
    assert_eq!(before, after, "(fds, threads) before vs after");
}

/// Bad arguments are refused before anything is mapped, with messages that say what to do.
#[test]
fn invalid_arguments_are_refused_with_clear_errors() {
    let umap = engine(MIB, 1);
    let store = || MemStore::from_vec(vec![0; 64 * KIB]);
    let cases: Vec<(MapOptions, &str)> = vec![
        (MapOptions::new().len(0), "cannot map zero bytes"),
        (
            MapOptions::new().page_size(5000),
            "multiple of the system page size",
        ),
        (
            MapOptions::new().page_size(0),
            "multiple of the system page size",
        ),
        (
            MapOptions::new().page_size(2 * MIB),
            "must hold at least 2 such pages",
        ),
        (
            MapOptions::new().page_size(MIB / 2 + 4096),
            "must hold at least 2 such pages",
        ),
        (
            MapOptions::new().offset(64 * KIB as u64),
            "cannot map zero bytes",
        ),
        (
            MapOptions::new().offset(1 << 40),
            "past the end of the store",
        ),
        (MapOptions::new().len(usize::MAX - 100), "too large"),
    ];
    for (options, message) in cases {
        let err = umap.map(store(), options.clone()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{options:?}: {err:?}"
        );
        assert!(err.to_string().contains(message), "{options:?}: {err}");
    }
    assert!(umap.map(MemStore::new(0), MapOptions::new()).is_err());
    assert_eq!(umap.region_count(), 0);
    let err = Umap::builder().fillers(0).start().unwrap_err();
    assert!(err.to_string().contains("fillers"), "{err}");
}

/// A store whose reads of one offset block until released, counting reads.
struct GatedStore {
    inner: MemStore,
    gated_offset: u64,
    /// Reads at these offsets take 300 ms.
    slow_offsets: Vec<u64>,
    released: Mutex<bool>,
    cv: Condvar,
    gated_readers: AtomicUsize,
}

impl GatedStore {
    /// Reads of offset 0 block until released; reads of `slow_offsets` take 300 ms.
    fn new(data: Vec<u8>, slow_offsets: Vec<u64>) -> Arc<GatedStore> {
        Arc::new(GatedStore {
            inner: MemStore::from_vec(data),
            gated_offset: 0,
            slow_offsets,
            released: Mutex::new(false),
            cv: Condvar::new(),
            gated_readers: AtomicUsize::new(0),
        })
    }

    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.cv.notify_all();
    }

    /// Releases the gated reads when dropped. Made before the threads that fault on the
    /// gated page are spawned, so that a failed assertion while they wait releases them:
    /// `thread::scope` joins its threads before it passes the panic on, and would otherwise
    /// wait for the gate's own 60 s deadline instead of failing at once.
    fn release_on_drop(&self) -> ReleaseOnDrop<'_> {
        ReleaseOnDrop(self)
    }
}

/// See [`GatedStore::release_on_drop`].
struct ReleaseOnDrop<'a>(&'a GatedStore);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Store for GatedStore {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
        if self.slow_offsets.contains(&offset) {
            std::thread::sleep(Duration::from_millis(300));
        }
        if offset == self.gated_offset {
            self.gated_readers.fetch_add(1, Ordering::SeqCst);
            let mut released = self.released.lock().unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !*released && Instant::now() < deadline {
                released = self
                    .cv
                    .wait_timeout(released, Duration::from_millis(50))
                    .unwrap()
                    .0;
            }
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), StoreError> {
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        true
    }
}

/// A page whose store read is stuck stalls only the threads that touch that page: others
/// are served meanwhile, duplicate faults on the stuck page are not served twice, and all
/// of them get the right bytes once it is released.
#[test]
fn a_slow_page_does_not_stall_faults_on_other_pages() {
    let len = 256 * 4 * KIB;
    let store = GatedStore::new(common::pattern(2, 0, len), Vec::new());
    let umap = engine(MIB, 2);
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    let data = region.as_slice();
    let stuck_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let release = store.release_on_drop();
        // Three threads fault on the stuck page 0.
        let stuck: Vec<_> = (0..3)
            .map(|i| {
                let stuck_done = &stuck_done;
                s.spawn(move || {
                    let v = data[i * 100];
                    stuck_done.store(true, Ordering::SeqCst);
                    v
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.gated_readers.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "page 0 was never read");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Meanwhile every other page is served (by the other filler, woken by the faults
        // because the stuck one stopped watching the userfaultfd). A hang guard, well under
        // the fillers' 10 s idle wake-up, which would otherwise hide a missed wake-up.
        let other = s.spawn(move || common::check_pattern(2, 4096, &data[4096..]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !other.is_finished() {
            assert!(
                Instant::now() < deadline,
                "faults on other pages waited behind the stuck page"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        other.join().unwrap();
        assert!(
            !stuck_done.load(Ordering::SeqCst),
            "page 0 cannot be resident yet"
        );
        drop(release);
        for t in stuck {
            t.join().unwrap();
        }
    });
    assert_eq!(
        store.gated_readers.load(Ordering::SeqCst),
        1,
        "page 0 read once"
    );
    common::check_pattern(2, 0, &data[..4096]);
}

/// Faults that reach a filler in one batch with a stuck page are not held back by it: the
/// filler shares the rest of its batch with idle fillers.
#[test]
fn faults_batched_with_a_stuck_page_are_served_meanwhile() {
    let ps = 4 * KIB;
    let len = 256 * ps;
    let store = GatedStore::new(
        common::pattern(3, 0, len),
        vec![200 * ps as u64, 201 * ps as u64],
    );
    let umap = engine(MIB, 2);
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    let data = region.as_slice();
    std::thread::scope(|s| {
        let release = store.release_on_drop();
        // Keep both fillers busy for 300 ms so the next faults queue up in the kernel.
        let busy: Vec<_> = [200, 201]
            .map(|p| {
                s.spawn(move || common::check_pattern(3, (p * ps) as u64, &data[p * ps..][..8]))
            })
            .into_iter()
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        // First in the queue: the page whose read will be stuck; then eight others.
        let stuck = s.spawn(move || data[0]);
        std::thread::sleep(Duration::from_millis(20));
        let others: Vec<_> = (1..=8)
            .map(|p| {
                s.spawn(move || common::check_pattern(3, (p * ps) as u64, &data[p * ps..][..ps]))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !others.iter().all(|t| t.is_finished()) {
            assert!(
                Instant::now() < deadline,
                "faults queued behind the stuck page were not served"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!stuck.is_finished(), "page 0 cannot be resident yet");
        drop(release);
        for t in others.into_iter().chain(busy) {
            t.join().unwrap();
        }
        assert_eq!(stuck.join().unwrap(), data[0]);
    });
    assert_eq!(
        store.gated_readers.load(Ordering::SeqCst),
        1,
        "page 0 read once"
    );
}

/// A store whose reads always fail.
struct FailingStore;

impl Store for FailingStore {
    fn len(&self) -> u64 {
        1 << 20
    }
    fn read_at(&self, _: &mut [u8], offset: u64) -> Result<(), StoreError> {
        Err(StoreError::Io {
            op: "read",
            offset,
            len: 0,
            source: std::io::Error::from_raw_os_error(libc::EIO),
        })
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        true
    }
}

const CHILD_ENV: &str = "UMAP_TEST_READ_ERROR_CHILD";
const UNMAP_CHILD_ENV: &str = "UMAP_TEST_UNMAP_CHILD";

/// Runs in a child process (see the two tests below; the variable's value, `fillers` or
/// `signals`, says how faults are served). Does nothing when run as an ordinary test.
///
/// One thread faults on page 0, whose store read is stuck. Another faults on page 1: with one
/// filler, before the unmap, so its fault stays queued behind the stuck read; with signal
/// faults (served at once otherwise), after the unmap has closed the region's gate. Then the
/// stuck read is released and the unmap finishes: the second thread must fault on unmapped
/// memory (SIGSEGV), neither return nor hang.
#[test]
fn unmap_child() {
    let Some(mode) = std::env::var_os(UNMAP_CHILD_ENV) else {
        return;
    };
    let signals = mode == "signals";
    let ps = 4 * KIB;
    let store = GatedStore::new(common::pattern(4, 0, 64 * ps), Vec::new());
    // One filler: while it is stuck reading page 0, a queued fault on page 1 waits.
    let umap = Umap::builder()
        .buffer_size(MIB)
        .page_size(ps)
        .fillers(1)
        .signal_faults(signals)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"));
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    let addr = region.as_ptr() as usize;
    std::thread::spawn(move || {
        // SAFETY: reads the live region (page 0 blocks in the stuck store read).
        unsafe { std::ptr::read_volatile(addr as *const u8) }
    });
    while store.gated_readers.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let second_fault = move || {
        std::thread::spawn(move || {
            // SAFETY: reads the region; once it is unmapped this must fault (SIGSEGV), never
            // return zeros.
            let v = unsafe { std::ptr::read_volatile((addr + ps + 8) as *const u8) };
            println!("UNEXPECTED: read {v} from an unmapped region");
            std::process::exit(3);
        });
        std::thread::sleep(Duration::from_millis(50));
    };
    if !signals {
        second_fault();
    }
    // The unmap closes the gate and waits for the stuck fill.
    let unmapper = std::thread::spawn(move || region.unmap());
    std::thread::sleep(Duration::from_millis(50));
    if signals {
        second_fault();
    }
    store.release();
    unmapper.join().unwrap().unwrap();
    std::thread::sleep(Duration::from_secs(20));
    println!("UNEXPECTED: the faulting thread neither crashed nor returned");
    std::process::exit(4);
}

/// A thread whose fault is still queued when its region is unmapped is woken and then
/// faults like on any unmapped memory (SIGSEGV): it neither hangs nor reads zeros, and the
/// unmap does not deadlock with the filler.
#[test]
fn unmap_wakes_threads_faulting_meanwhile() {
    use std::os::unix::process::ExitStatusExt;
    let (status, output) = common::run_test_child("unmap_child", &[(UNMAP_CHILD_ENV, "fillers")]);
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?}\n{output}");
}

/// With faults served on the faulting thread, a fault on a region whose unmap has begun (its
/// gate closed, waiting for a fill) neither deadlocks the unmap nor reads zeros: the handler
/// lets the access retry until the region is gone, and then it faults like on any unmapped
/// memory.
#[test]
fn a_signal_fault_on_a_region_being_unmapped_ends_in_sigsegv() {
    use std::os::unix::process::ExitStatusExt;
    let (status, output) = common::run_test_child("unmap_child", &[(UNMAP_CHILD_ENV, "signals")]);
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?}\n{output}");
}

/// Runs in a child process (see `a_failed_store_read_raises_sigbus`): touches a page whose
/// store read fails. Does nothing when run as an ordinary test.
#[test]
fn read_error_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let umap = engine(MIB, 1);
    let region = umap.map(FailingStore, MapOptions::new()).unwrap();
    let v = region.as_slice()[5000];
    println!("read {v} from a page whose store read failed");
    std::process::exit(0);
}

/// A store read that fails poisons the page: the reading thread gets SIGBUS, as with an I/O
/// error under mmap, instead of hanging or reading zeros.
#[test]
fn a_failed_store_read_raises_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    let (status, output) = common::run_test_child("read_error_child", &[(CHILD_ENV, "1")]);
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{output}");
}
