//! A store that panics: the engine catches the panic and treats the call as failed. A fault
//! read poisons its page (SIGBUS, EFAULT for the kernel's own access), a write-back keeps its
//! pages dirty until a later flush writes them, a pin returns the error and lets go of its
//! pages, a snapshot ends with the error. No engine thread dies and nothing hangs: each test
//! runs under a watchdog that ends the process with a message if it does. The watchdog is each
//! test's first local, so it is dropped last and also catches a hang while a failing test
//! unwinds (dropping a region with a page stuck in `WriteBack`).

mod common;

use std::ops::Range;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use umap::snapshot::{self, SnapshotOptions};
use umap::sys::Mapping;
use umap::{Error, ErrorKind, MapOptions, MemStore, Store, StoreError, Umap};

const PS: usize = 4096;
const MIB: usize = 1 << 20;
/// Longer than any step takes when it works; a step that hangs ends the test process.
const LIMIT: Duration = Duration::from_secs(20);

/// The message of the injected write panics (a `&str` payload; reads panic with a `String`).
const WRITE_PANIC: &str = "test store: injected write panic";
const SYNC_PANIC: &str = "test store: injected sync panic";

/// A memory store whose reads and writes that touch `bad` panic while `reads` or `writes` is
/// set, and whose syncs panic while `syncs` is set.
struct PanickyStore {
    inner: MemStore,
    bad: Range<u64>,
    reads: AtomicBool,
    writes: AtomicBool,
    syncs: AtomicBool,
    panics: AtomicUsize,
}

impl PanickyStore {
    fn new(inner: MemStore, bad: Range<u64>) -> PanickyStore {
        PanickyStore {
            inner,
            bad,
            reads: AtomicBool::new(false),
            writes: AtomicBool::new(false),
            syncs: AtomicBool::new(false),
            panics: AtomicUsize::new(0),
        }
    }

    fn hits(&self, offset: u64, len: usize) -> bool {
        offset < self.bad.end && self.bad.start < offset + len as u64
    }

    fn panics(&self) -> usize {
        self.panics.load(Ordering::SeqCst)
    }
}

impl Store for PanickyStore {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
        if self.reads.load(Ordering::SeqCst) && self.hits(offset, buf.len()) {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("test store: injected read panic at offset {offset}");
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), StoreError> {
        if self.writes.load(Ordering::SeqCst) && self.hits(offset, buf.len()) {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("{}", WRITE_PANIC);
        }
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> Result<(), StoreError> {
        if self.syncs.load(Ordering::SeqCst) {
            self.panics.fetch_add(1, Ordering::SeqCst);
            std::panic::panic_any(SYNC_PANIC);
        }
        self.inner.sync()
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

fn engine(buffer: usize, fillers: usize, signal_faults: bool) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(PS)
        .fillers(fillers)
        .signal_faults(signal_faults)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"))
}

/// `pages` pages of pattern `seed`, whose reads of page 3 panic.
fn read_panics_on_page_3(seed: u64, pages: usize) -> Arc<PanickyStore> {
    let store = PanickyStore::new(
        MemStore::from_vec(common::pattern(seed, 0, pages * PS)),
        3 * PS as u64..4 * PS as u64,
    );
    store.reads.store(true, Ordering::SeqCst);
    Arc::new(store)
}

/// Whether `e` is the store error of a panic whose message contains `message`.
fn is_panic(e: &Error, op: &str, message: &str) -> bool {
    matches!(e, Error::Store(StoreError::Panicked { op: o, message: m, .. })
        if *o == op && m.contains(message))
}

/// A read of a page whose store read panics is served as a failed read: the page is poisoned
/// (the kernel's own access gets EFAULT), the failure is recorded with the panic's message,
/// the other pages read correctly, and the region unmaps.
#[test]
fn a_read_that_panics_poisons_its_page_and_the_engine_goes_on() {
    let _watchdog = common::watchdog("reading a region whose store panics", LIMIT);
    let umap = engine(MIB, 2, false);
    let store = read_panics_on_page_3(21, 16);
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    common::check_pattern(21, 0, &region.as_slice()[..3 * PS]);
    // The kernel's copy from the page faults like an application thread and waits for the
    // fill, which fails: EFAULT (without the fix it waited forever on a dead filler).
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the source lies inside the live region; the kernel reads it (or fails).
    let rc = unsafe { libc::write(pipe[1], region.as_ptr().add(3 * PS).cast(), 64) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(
        (rc, errno),
        (-1, Some(libc::EFAULT)),
        "write(2) from the page whose read panicked"
    );
    // SAFETY: our own descriptors.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    assert!(store.panics() >= 1);
    // The engine goes on: every other page reads (the fillers are alive).
    common::check_pattern(21, 4 * PS as u64, &region.as_slice()[4 * PS..]);
    let errors = region.take_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(
        (e.kind, e.offset, e.errno),
        (ErrorKind::Read, 3 * PS, Some(libc::EIO)),
        "{e}"
    );
    assert!(
        e.message.contains("panicked") && e.message.contains("injected read panic"),
        "the record names the panic: {e}"
    );
    assert_eq!(umap.stats().read_errors, 1);
    region.unmap().unwrap();
    drop(umap);
}

const READ_PANIC_CHILD: &str = "UMAP_TEST_STORE_PANIC_READ";
const SIGNAL_MODE: &str = "UMAP_TEST_STORE_PANIC_SIGNAL_MODE";

/// Runs in a child (see `a_load_of_a_page_whose_read_panics_raises_sigbus`): a load of the
/// page, from another thread than the one that mapped it, dies of SIGBUS.
#[test]
fn read_panic_child() {
    if std::env::var_os(READ_PANIC_CHILD).is_none() {
        return;
    }
    // Without the fix the load waits forever (fillers) or aborts (signal mode).
    let _watchdog = common::watchdog("a load of a page whose store read panics", LIMIT);
    let umap = engine(MIB, 2, std::env::var_os(SIGNAL_MODE).is_some());
    let store = read_panics_on_page_3(22, 16);
    let region = umap.map_shared(store, MapOptions::new()).unwrap();
    common::check_pattern(22, 0, &region.as_slice()[..3 * PS]);
    println!("READ THE GOOD PAGES");
    let addr = region.as_ptr() as usize + 3 * PS + 10;
    std::thread::spawn(move || {
        // SAFETY: reads the live region (kept mapped by `region` below); the page's store read
        // panics, so this raises SIGBUS.
        let v = unsafe { std::ptr::read_volatile(addr as *const u8) };
        println!("UNEXPECTED: read {v} from a page whose store read panics");
        std::process::exit(3);
    })
    .join()
    .unwrap();
    drop(region);
}

/// A load of a page whose store read panics raises SIGBUS, as for a read error (served by a
/// filler).
#[test]
fn a_load_of_a_page_whose_read_panics_raises_sigbus() {
    let (status, out) = common::run_test_child("read_panic_child", &[(READ_PANIC_CHILD, "1")]);
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{out}");
    assert!(out.contains("READ THE GOOD PAGES"), "{out}");
}

/// The same with faults served in the `SIGBUS` handler (`signal_faults`): the panic is caught
/// there too, the page poisoned and the signal passed on (SIGBUS, not an abort).
#[test]
fn a_load_of_a_page_whose_read_panics_raises_sigbus_in_signal_mode() {
    let (status, out) = common::run_test_child(
        "read_panic_child",
        &[(READ_PANIC_CHILD, "1"), (SIGNAL_MODE, "1")],
    );
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{out}");
    assert!(out.contains("READ THE GOOD PAGES"), "{out}");
}

/// A flush whose store write panics returns the error and keeps the page dirty; so does an
/// unmap; once the store works, a flush writes the page and the store holds its bytes.
#[test]
fn a_write_that_panics_fails_the_flush_and_loses_nothing() {
    let _watchdog = common::watchdog("flushing to a store whose writes panic", LIMIT);
    let umap = engine(MIB, 2, false);
    let store = Arc::new(PanickyStore::new(
        MemStore::new(16 * PS),
        2 * PS as u64..3 * PS as u64,
    ));
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    let bytes = region.as_mut_slice().unwrap();
    bytes[2 * PS..3 * PS].fill(0xA2);
    bytes[5 * PS..6 * PS].fill(0xA5);
    store.writes.store(true, Ordering::SeqCst);
    let err = region.flush().unwrap_err();
    assert!(is_panic(&err, "write", WRITE_PANIC), "{err:?}");
    assert!(err.to_string().contains(WRITE_PANIC), "{err}");
    assert_eq!(store.panics(), 1);
    let data = store.inner.to_vec();
    assert!(data[2 * PS..3 * PS].iter().all(|&b| b == 0), "not written");
    assert!(
        data[5 * PS..6 * PS].iter().all(|&b| b == 0xA5),
        "the other page is"
    );
    assert_eq!(region.dirty_bytes(), PS, "the page stays dirty");
    let errors = region.take_errors();
    assert!(
        errors
            .iter()
            .any(|e| e.kind == ErrorKind::Write && e.message.contains(WRITE_PANIC)),
        "{errors:?}"
    );
    // Unmapping writes the dirty page back first: it fails, and hands the region back.
    let region = region
        .unmap()
        .unwrap_err()
        .into_region()
        .expect("a failed unmap hands the region back");
    assert!(region.as_slice()[2 * PS..3 * PS].iter().all(|&b| b == 0xA2));
    store.writes.store(false, Ordering::SeqCst);
    region.flush().unwrap();
    assert_eq!(region.dirty_bytes(), 0);
    assert!(store.inner.to_vec()[2 * PS..3 * PS]
        .iter()
        .all(|&b| b == 0xA2));
    region.unmap().unwrap();
    drop(umap);
}

/// Evictors (and fillers that reclaim) whose write-backs panic keep those pages dirty and
/// resident and move on to others: 128 dirty pages pass through a 16-page buffer. Once the
/// store works, a flush writes everything.
#[test]
fn write_backs_that_panic_keep_their_pages_and_eviction_goes_on() {
    let _watchdog = common::watchdog("evicting to a store whose writes panic", LIMIT);
    let umap = engine(16 * PS, 1, false);
    let store = Arc::new(PanickyStore::new(
        MemStore::new(128 * PS),
        4 * PS as u64..6 * PS as u64,
    ));
    store.writes.store(true, Ordering::SeqCst);
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    common::tag_pages(region.as_mut_slice().unwrap(), PS);
    // The evictor may still be in the panic hook (printing a backtrace) for pages 4 and 5.
    assert!(
        common::eventually(|| umap.stats().write_errors > 0),
        "{:?}",
        umap.stats()
    );
    let stats = umap.stats();
    assert!(stats.dirty_evictions >= 100, "{stats:?}");
    assert!(store.panics() > 0);
    let err = region.flush().unwrap_err();
    assert!(is_panic(&err, "write", WRITE_PANIC), "{err:?}");
    store.writes.store(false, Ordering::SeqCst);
    region.flush().unwrap();
    common::check_tags(&store.inner.to_vec(), PS);
    region.unmap().unwrap();
    drop(umap);
}

/// A pin whose store read panics returns the error and pins nothing; the pages can be pinned
/// once the store works.
#[test]
fn a_pin_whose_read_panics_fails_and_releases_its_pages() {
    let _watchdog = common::watchdog("pinning pages whose store read panics", LIMIT);
    let umap = engine(MIB, 1, false);
    let store = read_panics_on_page_3(23, 64);
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    let err = region.pin(0, 8 * PS).unwrap_err();
    assert!(is_panic(&err, "read", "injected read panic"), "{err:?}");
    assert_eq!(region.pinned_bytes(), 0, "the failed pin holds nothing");
    store.reads.store(false, Ordering::SeqCst);
    region.pin(0, 8 * PS).unwrap();
    assert_eq!(region.pinned_bytes(), 8 * PS);
    common::check_pattern(23, 0, &region.as_slice()[..8 * PS]);
    region.unpin(0, 8 * PS).unwrap();
    assert_eq!(region.pinned_bytes(), 0);
    region.unmap().unwrap();
    drop(umap);
}

/// Private anonymous memory of `pages` pages, each filled with its number, for a snapshot.
fn snapshot_memory(pages: usize) -> Mapping {
    let mem = Mapping::anonymous(
        pages * PS,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
    )
    .unwrap();
    for p in 0..pages {
        // SAFETY: page `p` lies in our fresh read-write mapping.
        unsafe { std::ptr::write_bytes(mem.as_ptr().add(p * PS), p as u8, PS) };
    }
    mem
}

/// Starts a snapshot of all of `mem` into `store`.
///
/// # Safety
///
/// `mem` must stay mapped until the snapshot has ended.
unsafe fn start_snapshot(mem: &Mapping, store: Arc<PanickyStore>) -> snapshot::Snapshot {
    // SAFETY: the caller keeps `mem` mapped until the snapshot has ended.
    unsafe { snapshot::start(mem.as_ptr(), mem.len(), store, SnapshotOptions::new()) }
        .expect("snapshot")
}

/// A snapshot whose store writes panic ends with that error (while a thread writes to the
/// memory, so the fault thread writes to the store too), and the memory is writable again.
#[test]
fn a_snapshot_whose_writes_panic_ends_with_the_error() {
    let _watchdog = common::watchdog("a snapshot whose store writes panic", LIMIT);
    let pages = 1024;
    let mem = snapshot_memory(pages);
    let store = Arc::new(PanickyStore::new(MemStore::new(0), 0..u64::MAX));
    store.writes.store(true, Ordering::SeqCst);
    // SAFETY: `mem` stays mapped until the snapshot has ended (wait below).
    let snap = unsafe { start_snapshot(&mem, store.clone()) };
    let stop = AtomicBool::new(false);
    let base = mem.as_ptr() as usize;
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let mut p = pages;
            while !stop.load(Ordering::Relaxed) {
                p = (p + 7) % pages;
                // SAFETY: page `p` lies in the mapping, which outlives this scope; a write to
                // a protected page waits for the snapshot's fault thread.
                unsafe { std::ptr::write_volatile((base + p * PS) as *mut u8, 0xEE) };
            }
        });
        let result = snap.wait();
        stop.store(true, Ordering::Relaxed);
        result
    });
    let err = result.unwrap_err();
    assert!(is_panic(&err, "write", WRITE_PANIC), "{err:?}");
    assert!(store.panics() >= 1);
    for p in 0..pages {
        // SAFETY: as above; the snapshot has ended, so nothing is protected.
        unsafe { std::ptr::write_volatile((base + p * PS) as *mut u8, 1) };
    }
}

/// A snapshot whose store sync panics returns that error from `wait` (instead of panicking
/// on the caller's thread); the image was written.
#[test]
fn a_snapshot_whose_sync_panics_returns_the_error() {
    let _watchdog = common::watchdog("a snapshot whose store sync panics", LIMIT);
    let pages = 64;
    let mem = snapshot_memory(pages);
    let store = Arc::new(PanickyStore::new(MemStore::new(0), 0..0));
    store.syncs.store(true, Ordering::SeqCst);
    // SAFETY: `mem` stays mapped until the snapshot has ended (wait below).
    let snap = unsafe { start_snapshot(&mem, store.clone()) };
    let err = snap.wait().unwrap_err();
    assert!(is_panic(&err, "sync", SYNC_PANIC), "{err:?}");
    assert_eq!(store.panics(), 1);
    let data = store.inner.to_vec();
    assert_eq!(data.len(), pages * PS);
    for (p, page) in data.chunks(PS).enumerate() {
        assert!(page.iter().all(|&b| b == p as u8), "page {p} of the image");
    }
}

/// A flush whose store sync panics returns that error; the next one syncs.
#[test]
fn a_sync_that_panics_fails_the_flush() {
    let _watchdog = common::watchdog("a flush whose store sync panics", LIMIT);
    let umap = engine(MIB, 1, false);
    let store = Arc::new(PanickyStore::new(MemStore::new(4 * PS), 0..0));
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    region.as_mut_slice().unwrap()[PS] = 9;
    store.syncs.store(true, Ordering::SeqCst);
    let err = region.flush().unwrap_err();
    assert!(is_panic(&err, "sync", SYNC_PANIC), "{err:?}");
    let errors = region.take_errors();
    assert!(
        errors
            .iter()
            .any(|e| e.kind == ErrorKind::Sync && e.message.contains(SYNC_PANIC)),
        "{errors:?}"
    );
    store.syncs.store(false, Ordering::SeqCst);
    region.flush().unwrap();
    assert_eq!(store.inner.to_vec()[PS], 9);
    region.unmap().unwrap();
}
