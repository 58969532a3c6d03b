//! Helpers shared by the integration tests: deterministic data, files, a resident-memory
//! monitor, and (in `process.rs`, shared with the C library's tests) running a child process.

#![allow(dead_code)] // each test binary uses its own subset.

mod process;

#[allow(unused_imports)] // each test binary uses its own subset.
pub use process::{run_command, run_test_child};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// SplitMix64: a small, seeded, reproducible generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The byte at `offset` of the test pattern `seed`: every 8-byte word holds a hash of its
/// index, so any misplaced page shows.
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let word = mix(seed ^ (offset / 8));
    (word >> ((offset % 8) * 8)) as u8
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `out` with the pattern bytes starting at `offset`.
pub fn fill_pattern(seed: u64, offset: u64, out: &mut [u8]) {
    let mut i = 0;
    // Unaligned head byte by byte, then whole words.
    while i < out.len() && (offset + i as u64) % 8 != 0 {
        out[i] = pattern_byte(seed, offset + i as u64);
        i += 1;
    }
    while i + 8 <= out.len() {
        let w = mix(seed ^ ((offset + i as u64) / 8));
        out[i..i + 8].copy_from_slice(&w.to_le_bytes());
        i += 8;
    }
    while i < out.len() {
        out[i] = pattern_byte(seed, offset + i as u64);
        i += 1;
    }
}

/// `len` pattern bytes from `offset`.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(seed, offset, &mut v);
    v
}

/// Writes a file of `len` pattern bytes in `dir`.
pub fn pattern_file(dir: &Path, name: &str, seed: u64, len: u64) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let mut chunk = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk.len() as u64) as usize;
        fill_pattern(seed, off, &mut chunk[..n]);
        f.write_all(&chunk[..n]).unwrap();
        off += n as u64;
    }
    f.into_inner().unwrap().sync_all().unwrap();
    path
}
/// Writes each `page_size` page's tag (its index `^ 0xABCD`, 8 bytes little-endian) at its
/// start, dirtying every page of `mem`; [`check_tags`] checks them.
pub fn tag_pages(mem: &mut [u8], page_size: usize) {
    for (i, page) in mem.chunks_mut(page_size).enumerate() {
        page[..8].copy_from_slice(&(i as u64 ^ 0xABCD).to_le_bytes());
    }
}

/// Checks that every `page_size` page of `bytes` starts with the tag [`tag_pages`] wrote.
pub fn check_tags(bytes: &[u8], page_size: usize) {
    for (i, page) in bytes.chunks(page_size).enumerate() {
        assert_eq!(
            page[..8],
            (i as u64 ^ 0xABCD).to_le_bytes(),
            "page {i}'s tag"
        );
    }
}

/// Asserts that `got` equals the pattern at `offset`, naming the first differing byte.
pub fn check_pattern(seed: u64, offset: u64, got: &[u8]) {
    let want = pattern(seed, offset, got.len());
    if got != &want[..] {
        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        panic!(
            "byte at offset {} is {:#04x}, expected {:#04x}",
            offset + i as u64,
            got[i],
            want[i]
        );
    }
}

/// The bytes of the file at `path` in `[offset, offset + len)`.
pub fn file_bytes(path: &Path, offset: usize, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut out = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut out, offset as u64)
        .unwrap();
    out
}

/// Asserts that `got` equals `want` (both starting at byte `offset` of whatever they are
/// taken from), naming `what`, and the first differing byte or the lengths.
pub fn assert_same(what: &str, offset: usize, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {} is {:#04x}, expected {:#04x}",
            offset + i,
            got[i],
            want[i]
        );
    }
}

/// Samples the resident system pages of regions (mincore) until stopped; keeps the maximum.
///
/// One `mincore` call walks the range while fills and evictions go on, so a sample can count a
/// page that was evicted during the walk and also the page filled in its place. Each sample
/// therefore subtracts the pages filled while it was taken (the engine's `fills` counter,
/// read before the walk and a moment after it), times the largest page size: what remains
/// is a lower bound of the true peak that is still above the buffer if the engine overfills.
pub struct ResidentMonitor {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl ResidentMonitor {
    pub fn start(umap: &umap::Umap, region: &umap::Region) -> ResidentMonitor {
        Self::start_many(umap, &[region])
    }

    /// Samples the sum over several regions (each sample covers all of them at once).
    pub fn start_many(umap: &umap::Umap, regions: &[&umap::Region]) -> ResidentMonitor {
        let ps = umap::sys::page_size();
        let ranges: Vec<(usize, usize)> = regions
            .iter()
            .map(|r| (r.as_ptr() as usize, r.len().next_multiple_of(ps)))
            .collect();
        let largest_page = regions.iter().map(|r| r.page_size()).max().unwrap_or(ps);
        let umap = umap.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, max) = (stop.clone(), max.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let fills_before = umap.stats().fills;
                    let pages: usize = ranges
                        .iter()
                        .map(|&(addr, len)| umap::sys::resident_pages(addr, len).expect("mincore"))
                        .sum();
                    std::thread::sleep(Duration::from_micros(500));
                    let filled = (umap.stats().fills - fills_before) as usize;
                    let lower_bound = (pages * ps).saturating_sub(filled * largest_page);
                    max.fetch_max(lower_bound, Ordering::Relaxed);
                }
            })
        };
        ResidentMonitor {
            stop,
            max,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the largest resident size seen, in bytes.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.max.load(Ordering::Relaxed)
    }
}

/// Waits up to 10 s for `cond`; returns whether it held (it is tried once more at the end).
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// Waits (up to 10 s) until `value()` equals `want`, and asserts it does. A filler settles a
/// page's state, and the figures derived from it (`resident_bytes`, `dirty_bytes`, the
/// statistics), just after the copy that wakes the faulting thread, so they can lag an access
/// by a moment.
pub fn settles_to<T: PartialEq + std::fmt::Debug>(
    what: &str,
    want: T,
    mut value: impl FnMut() -> T,
) {
    let mut got = value();
    if got != want {
        eventually(|| {
            got = value();
            got == want
        });
    }
    assert_eq!(got, want, "{what}");
}

/// Waits (up to 10 s) until every fault event `umap` counted has been served (its page's
/// state and the statistics settled: see [`settles_to`]) or dropped as a duplicate or parked
/// one, and asserts it was: the figures read afterwards no longer change unless a thread
/// faults again or the evictors run.
pub fn faults_settle(umap: &umap::Umap) {
    let unsettled = || {
        let s = umap.stats();
        let events = s.read_faults + s.write_faults + s.wp_faults;
        let done = s.fault_latency.count + s.duplicate_faults + s.parked_faults;
        events.abs_diff(done)
    };
    settles_to("fault events not yet served", 0, unsettled);
}

/// Ends the test process with a message if it is still running after `limit` (a hang, where
/// the code under test loops or deadlocks), unless the returned guard was dropped first.
#[must_use = "the watchdog is disarmed when the guard is dropped"]
pub fn watchdog(what: &'static str, limit: Duration) -> Watchdog {
    let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
            eprintln!("{what}: still running after {limit:?}: a hang; aborting");
            std::process::abort();
        }
    });
    Watchdog { _disarm: disarm }
}

/// See [`watchdog`].
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

/// Open file descriptors and threads of this process.
pub fn fds_and_threads() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let threads = std::fs::read_dir("/proc/self/task").unwrap().count();
    (fds, threads)
}

/// The file at `path` as a read-write store; with `UMAP_TEST_MAPPED_READS=1` in the
/// environment, with mapped reads (`FileStoreOptions::mapped_reads`), so that the suites that
/// open their files here run in that configuration too.
pub fn open_store(path: &Path) -> umap::FileStore {
    let mapped = std::env::var("UMAP_TEST_MAPPED_READS").is_ok_and(|v| v == "1");
    umap::FileStore::options()
        .mapped_reads(mapped)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An engine with `buffer` bytes of `page`-byte pages and the given thread counts, and the
/// file at `path` mapped writable through it.
pub fn map_file_writable(
    path: &Path,
    buffer: usize,
    page: usize,
    fillers: usize,
    evictors: usize,
) -> (umap::Umap, umap::Region) {
    map_file_writable_with(
        umap::Umap::builder()
            .buffer_size(buffer)
            .fillers(fillers)
            .evictors(evictors),
        path,
        page,
    )
}

/// The engine `builder` makes, with `page`-byte pages, and the file at `path` mapped writable
/// through it.
pub fn map_file_writable_with(
    builder: umap::ConfigBuilder,
    path: &Path,
    page: usize,
) -> (umap::Umap, umap::Region) {
    let umap = builder
        .page_size(page)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"));
    let region = umap
        .map(
            open_store(path),
            umap::MapOptions::new().page_size(page).writable(true),
        )
        .unwrap();
    (umap, region)
}

/// A memory store for tests whose writes are counted, can be slowed (a delay per 4 KiB page
/// written, however the pages are batched) and can fail with `EIO` (from a given write on, or
/// while `failing` is set).
pub struct TestStore {
    pub inner: umap::MemStore,
    pub writes: AtomicUsize,
    pub failing: AtomicBool,
    delay_per_page: Duration,
    fail_from: usize,
}

impl TestStore {
    pub fn new(inner: umap::MemStore) -> TestStore {
        TestStore {
            inner,
            writes: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            delay_per_page: Duration::ZERO,
            fail_from: usize::MAX,
        }
    }

    /// Every write sleeps `delay` per 4 KiB page.
    pub fn slow(mut self, delay: Duration) -> TestStore {
        self.delay_per_page = delay;
        self
    }

    /// Writes fail from the `n`-th on (counting from 0).
    pub fn failing_from(mut self, n: usize) -> TestStore {
        self.fail_from = n;
        self
    }

    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::Relaxed)
    }
}

impl umap::Store for TestStore {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), umap::StoreError> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), umap::StoreError> {
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        if n >= self.fail_from || self.failing.load(Ordering::Relaxed) {
            return Err(umap::StoreError::Io {
                op: "write",
                offset,
                len: buf.len(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        if !self.delay_per_page.is_zero() {
            std::thread::sleep(self.delay_per_page * buf.len().div_ceil(4096) as u32);
        }
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> Result<(), umap::StoreError> {
        self.inner.sync()
    }
    fn is_read_only(&self) -> bool {
        false
    }
}
