//! Live snapshots: a point-in-time image of a memory range, written to a [`Store`] while the
//! application keeps writing to the memory.
//!
//! [`start`] write-protects the whole range in one `UFFDIO_WRITEPROTECT` call (with
//! `UFFD_FEATURE_WP_UNPOPULATED`, so pages never touched are covered too) on a userfaultfd of
//! the snapshot's own. From then on:
//!
//! - background copier threads walk the range in chunks: each claims the pages not yet copied,
//!   copies their bytes to a staging buffer while they are still protected, lifts the
//!   protection (writers stop faulting there) and writes the staged bytes to the store;
//! - a write to a page not yet copied is a write-protect fault: the fault thread claims that
//!   page, copies it first, lifts its protection (the writer resumes) and then writes the copy
//!   to the store. A writer never waits for store I/O, only for one page copy.
//!
//! A page is unprotected only after its bytes were copied, by whichever thread claimed it, so
//! the image holds every page as it was when the range was protected. Pages that are all zeros
//! are not written where the store already reads as zeros (past its end when the snapshot
//! started), so a sparse file stays sparse.
//!
//! Ending a snapshot ([`Snapshot::wait`], [`Snapshot::cancel`], an error, or dropping the
//! handle) always lifts every protection and unregisters the range: the memory is writable
//! again whatever happened.
//!
//! ```
//! use std::sync::Arc;
//! use umap_core::snapshot::{self, SnapshotOptions};
//! use umap_store::MemStore;
//!
//! let mut table = umap_core::sys::Mapping::anonymous(1 << 20, libc::PROT_READ | libc::PROT_WRITE, 0)?;
//! // SAFETY (of the example): the mapping is ours and outlives the snapshot.
//! unsafe { std::ptr::write_bytes(table.as_ptr(), 7, 1 << 20) };
//! let store = Arc::new(MemStore::new(0));
//! // SAFETY: the range stays mapped until the snapshot has ended (`wait` below).
//! let snap = unsafe { snapshot::start(table.as_ptr(), 1 << 20, store.clone(), SnapshotOptions::new()) }?;
//! unsafe { std::ptr::write_bytes(table.as_ptr(), 9, 4096) }; // not in the image
//! let stats = snap.wait()?;
//! assert!(store.to_vec().iter().all(|&b| b == 7));
//! assert_eq!(stats.bytes, 1 << 20);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use umap_store::Store;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::sys::{self, Epoll, EventFd};
use crate::uffd::{Event, Features, RegisterMode, Uffd, UffdMsg};

/// Not copied yet: still write-protected.
const PENDING: u8 = 0;
/// A thread is copying it (it will lift the protection).
const COPYING: u8 = 1;
/// Copied and unprotected.
const DONE: u8 = 2;

/// Pages a copier claims at a time.
const CHUNK_PAGES: usize = 64;

const TOKEN_UFFD: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// How to take a snapshot; see [`start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOptions {
    copiers: usize,
    store_offset: u64,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            copiers: 1,
            store_offset: 0,
        }
    }
}

impl SnapshotOptions {
    /// One background copier, image at store offset 0.
    pub fn new() -> SnapshotOptions {
        SnapshotOptions::default()
    }
    /// Background copier threads (at least 1; default 1). Faults are served by one more
    /// thread of the snapshot's own.
    pub fn copiers(mut self, n: usize) -> SnapshotOptions {
        self.copiers = n;
        self
    }
    /// Where in the store the image starts (default 0).
    pub fn store_offset(mut self, offset: u64) -> SnapshotOptions {
        self.store_offset = offset;
        self
    }
}

/// How far a snapshot has come; see [`Snapshot::progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Pages in the range (system pages).
    pub pages: u64,
    /// Pages copied by the background copiers.
    pub copied_in_background: u64,
    /// Pages copied first because a writer faulted on them.
    pub copied_on_fault: u64,
}

impl Progress {
    /// Whether every page has been copied (its write to the store may still be in flight).
    pub fn is_copied(&self) -> bool {
        self.copied_in_background + self.copied_on_fault == self.pages
    }
}

/// What a finished snapshot did; from [`Snapshot::wait`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SnapshotStats {
    /// From the protection of the range to the store's sync.
    pub duration: Duration,
    /// Bytes in the image (the range's length).
    pub bytes: u64,
    /// Bytes written to the store (all-zero pages over a part of the store that already read
    /// as zeros are skipped).
    pub bytes_written: u64,
    /// Pages copied by the background copiers.
    pub pages_in_background: u64,
    /// Pages copied first because a writer faulted on them.
    pub pages_on_fault: u64,
    /// All-zero pages not written.
    pub zero_pages_skipped: u64,
    /// Write-protect fault events served (including repeated ones for one page).
    pub faults: u64,
    /// The longest time a fault took to serve, from reading its event to waking the writer.
    /// (A writer's stall also includes the kernel's wake-up of the serving thread and of the
    /// writer: tens of µs more on a busy machine.)
    pub max_fault_service: Duration,
    /// The 99th percentile of the same.
    pub p99_fault_service: Duration,
}

/// A snapshot in progress. [`wait`](Snapshot::wait) for it or [`cancel`](Snapshot::cancel) it;
/// dropping it cancels it.
pub struct Snapshot {
    inner: Arc<Inner>,
    copiers: Vec<JoinHandle<()>>,
    fault_thread: Option<JoinHandle<Vec<Duration>>>,
    ended: bool,
}

/// What the snapshot's threads share.
struct Inner {
    uffd: Uffd,
    base: usize,
    len: usize,
    page: usize,
    store: Arc<dyn Store>,
    store_offset: u64,
    /// Store offsets from here on read as zeros (the store's length at the start).
    zeros_from: u64,
    states: Box<[AtomicU8]>,
    next_chunk: AtomicUsize,
    /// Pages claimed whose bytes are not yet in the store (or given up on).
    unwritten: AtomicUsize,
    in_background: AtomicU64,
    on_fault: AtomicU64,
    zero_skipped: AtomicU64,
    bytes_written: AtomicU64,
    faults: AtomicU64,
    /// Set on cancel or error: copiers stop taking chunks.
    stop: AtomicBool,
    error: Mutex<Option<Error>>,
    stop_fd: EventFd,
    started: Instant,
}

/// Starts a live snapshot of `[addr, addr + len)` into `store`, at `options.store_offset`.
///
/// Fails before anything is protected if the range is empty or not page-aligned, and with the
/// kernel's reason if it cannot be registered: memory that is not anonymous private (or
/// shmem), or a range that another userfaultfd already covers (another snapshot, a umap
/// region). Several snapshots of disjoint ranges may run at once.
///
/// Writes that complete before the call are in the image and writes made after it returns
/// are not; a write racing the call itself may land on either side, page by page (the
/// protection is one system call, but the kernel applies it page after page).
///
/// # Safety
/// The range must stay mapped, and must not be remapped or given up (`munmap`, `mremap`,
/// `madvise(MADV_DONTNEED)`, ...) until the snapshot has ended: its threads read it.
pub unsafe fn start(
    addr: *mut u8,
    len: usize,
    store: Arc<dyn Store>,
    options: SnapshotOptions,
) -> Result<Snapshot> {
    let page = sys::page_size();
    let base = addr as usize;
    if len == 0 {
        return Err(Error::invalid(
            "len",
            0,
            "a snapshot needs at least one page",
        ));
    }
    if base % page != 0 || len % page != 0 {
        return Err(Error::invalid(
            "range",
            format_args!("{base:#x}+{len}"),
            format!("start and length must be multiples of the page size ({page})"),
        ));
    }
    if options.copiers == 0 {
        return Err(Error::invalid("copiers", 0, "at least one copier thread"));
    }
    if store.is_read_only() {
        return Err(Error::invalid(
            "store",
            "read-only",
            "a snapshot writes its image to the store",
        ));
    }
    options
        .store_offset
        .checked_add(len as u64)
        .ok_or_else(|| {
            Error::invalid(
                "store_offset",
                options.store_offset,
                "offset + len overflows",
            )
        })?;
    let uffd = Uffd::open(
        Features::empty(),
        Features::PAGEFAULT_FLAG_WP | Features::WP_UNPOPULATED,
    )?;
    // SAFETY: the caller owns the range and keeps it mapped (this function's contract); the
    // snapshot's fault thread serves every write-protect fault until the range is unprotected
    // and unregistered, which every way of ending the snapshot does.
    let ioctls = unsafe { uffd.register(base, len, RegisterMode::WP) }.map_err(|e| {
        if e.errno() == Some(libc::EBUSY) {
            Error::invalid(
                "range",
                format_args!("{base:#x}+{len}"),
                "is already covered by another userfaultfd (an overlapping snapshot, or a umap \
                 region)",
            )
        } else {
            Error::Uffd(e)
        }
    })?;
    if !ioctls.writeprotect() {
        let _ = uffd.unregister(base, len);
        return Err(Error::invalid(
            "range",
            format_args!("{base:#x}+{len}"),
            "the kernel cannot write-protect this memory (anonymous private memory can be)",
        ));
    }
    let pages = len / page;
    let inner = Arc::new(Inner {
        base,
        len,
        page,
        zeros_from: store.len(),
        store,
        store_offset: options.store_offset,
        states: (0..pages).map(|_| AtomicU8::new(PENDING)).collect(),
        next_chunk: AtomicUsize::new(0),
        unwritten: AtomicUsize::new(0),
        in_background: AtomicU64::new(0),
        on_fault: AtomicU64::new(0),
        zero_skipped: AtomicU64::new(0),
        bytes_written: AtomicU64::new(0),
        faults: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        error: Mutex::new(None),
        stop_fd: EventFd::new().map_err(|e| Error::os("eventfd", e))?,
        started: Instant::now(),
        uffd,
    });
    // The point in time of the image.
    if let Err(e) = inner.uffd.writeprotect(base, len, true, false) {
        inner.release_range();
        return Err(e.into());
    }
    let mut snapshot = Snapshot {
        inner: inner.clone(),
        copiers: Vec::new(),
        fault_thread: None,
        ended: false,
    };
    let spawn_error = |e| Error::Thread {
        name: "umap-snapshot".into(),
        source: e,
    };
    // From here, dropping `snapshot` on an error cancels it and makes the memory writable.
    let fault_inner = inner.clone();
    snapshot.fault_thread = Some(
        std::thread::Builder::new()
            .name("umap-snap-fault".into())
            // Writers wait on it in the kernel: it must not die quietly (see `unwind`).
            .spawn(move || {
                crate::unwind::abort_on_panic("umap-snap-fault", || fault_inner.serve_faults())
            })
            .map_err(spawn_error)?,
    );
    for i in 0..options.copiers {
        let copier = inner.clone();
        snapshot.copiers.push(
            std::thread::Builder::new()
                .name(format!("umap-snap-copy-{i}"))
                .spawn(move || copier.copy_in_background())
                .map_err(spawn_error)?,
        );
    }
    Ok(snapshot)
}

impl Snapshot {
    /// How far the snapshot has come.
    pub fn progress(&self) -> Progress {
        Progress {
            pages: self.inner.states.len() as u64,
            copied_in_background: self.inner.in_background.load(Ordering::Relaxed),
            copied_on_fault: self.inner.on_fault.load(Ordering::Relaxed),
        }
    }

    /// Waits until the image is complete and synced to the store, and returns what the
    /// snapshot did; or the first store error, which ended it early. Either way the memory
    /// is writable and unregistered when this returns.
    pub fn wait(mut self) -> Result<SnapshotStats> {
        for copier in self.copiers.drain(..) {
            if copier.join().is_err() {
                self.inner.fail(Error::Thread {
                    name: "umap-snap-copy".into(),
                    source: std::io::Error::other("the copier thread panicked"),
                });
            }
        }
        // Pages the fault thread claimed are copied and written promptly.
        let mut backoff = Backoff::new();
        while self.inner.unwritten.load(Ordering::Acquire) > 0
            && !self.inner.stop.load(Ordering::Acquire)
        {
            backoff.wait();
        }
        let latencies = self.end();
        if let Some(e) = self.inner.error.lock().take() {
            return Err(e);
        }
        crate::store_guard::sync(&*self.inner.store)?;
        let inner = &self.inner;
        let mut latencies = latencies;
        latencies.sort_unstable();
        let p99 = latencies
            .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default();
        Ok(SnapshotStats {
            duration: inner.started.elapsed(),
            bytes: inner.len as u64,
            bytes_written: inner.bytes_written.load(Ordering::Relaxed),
            pages_in_background: inner.in_background.load(Ordering::Relaxed),
            pages_on_fault: inner.on_fault.load(Ordering::Relaxed),
            zero_pages_skipped: inner.zero_skipped.load(Ordering::Relaxed),
            faults: inner.faults.load(Ordering::Relaxed),
            max_fault_service: latencies.last().copied().unwrap_or_default(),
            p99_fault_service: p99,
        })
    }

    /// Stops the snapshot and makes the whole range writable again. The store holds part of
    /// an image; nothing is synced.
    pub fn cancel(mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.end();
    }

    /// Stops the threads (copiers first, then the fault thread), then lifts every protection
    /// and unregisters the range. Returns the fault service times.
    fn end(&mut self) -> Vec<Duration> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        for copier in self.copiers.drain(..) {
            let _ = copier.join();
        }
        if let Err(e) = self.inner.stop_fd.signal() {
            log::error!("cannot stop the snapshot's fault thread: {e}");
        }
        let latencies = self
            .fault_thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        self.inner.release_range();
        latencies
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if !self.ended {
            self.inner.stop.store(true, Ordering::Release);
            self.end();
        }
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("base", &format_args!("{:#x}", self.inner.base))
            .field("len", &self.inner.len)
            .field("progress", &self.progress())
            .finish()
    }
}

impl Inner {
    /// Records the first error and stops the copiers.
    fn fail(&self, e: Error) {
        log::error!("snapshot of {:#x}+{} failed: {e}", self.base, self.len);
        self.error.lock().get_or_insert(e);
        self.stop.store(true, Ordering::Release);
    }

    /// Lifts every protection (waking every blocked writer) and unregisters the range.
    fn release_range(&self) {
        if let Err(e) = self.uffd.writeprotect(self.base, self.len, false, false) {
            log::error!("cannot unprotect the snapshot range: {e}");
        }
        if let Err(e) = self.uffd.unregister(self.base, self.len) {
            log::error!("cannot unregister the snapshot range: {e}");
        }
    }

    /// A background copier: claims chunks of pages in address order until none is left.
    fn copy_in_background(&self) {
        let pages = self.states.len();
        let mut staging = vec![0u8; CHUNK_PAGES * self.page];
        let mut claimed = Vec::with_capacity(CHUNK_PAGES);
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let first = self.next_chunk.fetch_add(1, Ordering::Relaxed) * CHUNK_PAGES;
            if first >= pages {
                return;
            }
            let end = (first + CHUNK_PAGES).min(pages);
            claimed.clear();
            for p in first..end {
                if self.claim(p) {
                    claimed.push(p);
                }
            }
            for (i, &p) in claimed.iter().enumerate() {
                self.copy_page(p, &mut staging[i * self.page..(i + 1) * self.page]);
            }
            // Unprotect each run of claimed pages with one call; writers there resume.
            let mut start = 0;
            while start < claimed.len() {
                let mut end = start + 1;
                while end < claimed.len() && claimed[end] == claimed[end - 1] + 1 {
                    end += 1;
                }
                self.unprotect(claimed[start], end - start);
                start = end;
            }
            self.in_background
                .fetch_add(claimed.len() as u64, Ordering::Relaxed);
            self.write_pages(&claimed, &staging);
        }
    }

    /// The fault thread: serves write-protect faults until told to stop. Returns how long each
    /// fault took to serve.
    fn serve_faults(&self) -> Vec<Duration> {
        let mut latencies = Vec::new();
        let epoll = match Epoll::new().and_then(|ep| {
            ep.add_readable(self.uffd.as_raw_fd(), TOKEN_UFFD, false)?;
            ep.add_readable(self.stop_fd.as_raw_fd(), TOKEN_STOP, false)?;
            Ok(ep)
        }) {
            Ok(ep) => ep,
            Err(e) => {
                self.fail(Error::os("epoll for the snapshot's fault thread", e));
                return latencies;
            }
        };
        const BATCH: usize = 32;
        let mut msgs = vec![UffdMsg::zeroed(); BATCH];
        let mut staging = vec![0u8; BATCH * self.page];
        let mut copied = Vec::with_capacity(BATCH);
        let mut tokens = [0u64; 2];
        loop {
            match self.uffd.read_events(&mut msgs) {
                Ok(0) => {}
                Ok(n) => {
                    // Copy and release every faulting page of the batch first; write the
                    // copies to the store after, when no writer waits for them.
                    copied.clear();
                    for msg in &msgs[..n] {
                        let Event::PageFault(pf) = Event::decode(msg) else {
                            continue;
                        };
                        let served = Instant::now();
                        self.faults.fetch_add(1, Ordering::Relaxed);
                        let slot = copied.len();
                        let out = &mut staging[slot * self.page..(slot + 1) * self.page];
                        if let Some(p) = self.serve_fault(pf.address, out) {
                            copied.push(p);
                        }
                        latencies.push(served.elapsed());
                    }
                    self.write_pages(&copied, &staging);
                    continue;
                }
                Err(e) => {
                    self.fail(e.into());
                    return latencies;
                }
            }
            match epoll.wait(&mut tokens, -1) {
                Ok(n) if tokens[..n].contains(&TOKEN_STOP) => return latencies,
                Ok(_) => {}
                Err(e) => {
                    self.fail(Error::os("epoll_wait in the snapshot's fault thread", e));
                    return latencies;
                }
            }
        }
    }

    /// A write-protect fault at `addr`: copy that page into `out` first if nobody has, then let
    /// the writer go. Returns the page if this thread copied it (its copy still to be
    /// written).
    fn serve_fault(&self, addr: usize, out: &mut [u8]) -> Option<usize> {
        let Some(p) = addr
            .checked_sub(self.base)
            .map(|off| off / self.page)
            .filter(|&p| p < self.states.len())
        else {
            // Not in the range (cannot happen for a range registered alone): never leave a
            // thread blocked.
            log::error!(
                "snapshot fault at {addr:#x} outside {:#x}+{}",
                self.base,
                self.len
            );
            let _ = self.uffd.wake(addr & !(self.page - 1), self.page);
            return None;
        };
        if self.claim(p) {
            self.copy_page(p, out);
            self.unprotect(p, 1);
            self.on_fault.fetch_add(1, Ordering::Relaxed);
            return Some(p);
        }
        if self.states[p].load(Ordering::Acquire) == DONE {
            // Stale: the page was unprotected after the fault was queued. The unprotect woke
            // the writer; wake again in case.
            if let Err(e) = self.uffd.wake(self.page_addr(p), self.page) {
                log::error!("{e}");
            }
        }
        // COPYING: its copier lifts the protection, which wakes the writer.
        None
    }

    fn page_addr(&self, p: usize) -> usize {
        self.base + p * self.page
    }

    /// Pending → copying; true if this thread now owns the page's copy.
    fn claim(&self, p: usize) -> bool {
        let won = self.states[p]
            .compare_exchange(PENDING, COPYING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.unwritten.fetch_add(1, Ordering::AcqRel);
        }
        won
    }

    /// Copies page `p` (owned, still write-protected) into `out`.
    fn copy_page(&self, p: usize, out: &mut [u8]) {
        // SAFETY: the page lies in the range, which the caller of `start` keeps mapped; it is
        // still write-protected (only its owner, this thread, lifts that), so no writer
        // changes it while it is read. Reading a never-touched page maps the zero page.
        let src = unsafe { std::slice::from_raw_parts(self.page_addr(p) as *const u8, self.page) };
        out.copy_from_slice(src);
    }

    /// Lifts the protection of `count` pages from `first` (owned, copied) and marks them done;
    /// the kernel wakes the writers blocked on them.
    fn unprotect(&self, first: usize, count: usize) {
        let (addr, len) = (self.page_addr(first), count * self.page);
        if let Err(e) = self.uffd.writeprotect_retrying(addr, len, false) {
            // The range is unprotected as a whole when the snapshot ends.
            self.fail(e.into());
        }
        for p in first..first + count {
            self.states[p].store(DONE, Ordering::Release);
        }
    }

    /// Whether page `p`, whose copy is `data`, need not be written: all zeros where the store
    /// already reads zeros (never the last page, which sets the store's length).
    fn skippable(&self, p: usize, data: &[u8]) -> bool {
        let offset = self.store_offset + (p * self.page) as u64;
        p + 1 != self.states.len() && offset >= self.zeros_from && data.iter().all(|&b| b == 0)
    }

    /// Writes the copies of `pages` (page `pages[i]` at `staging[i * page..]`) to the store,
    /// runs of adjacent pages with one write each, skipping the pages that need none.
    fn write_pages(&self, pages: &[usize], staging: &[u8]) {
        let ps = self.page;
        let copy = |i: usize| &staging[i * ps..(i + 1) * ps];
        let mut i = 0;
        while i < pages.len() {
            if self.skippable(pages[i], copy(i)) {
                self.zero_skipped.fetch_add(1, Ordering::Relaxed);
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < pages.len()
                && pages[j] == pages[j - 1] + 1
                && !self.skippable(pages[j], copy(j))
            {
                j += 1;
            }
            if !self.stop.load(Ordering::Acquire) {
                let data = &staging[i * ps..j * ps];
                let offset = self.store_offset + (pages[i] * ps) as u64;
                match crate::store_guard::write_at(&*self.store, data, offset) {
                    Ok(()) => {
                        self.bytes_written
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => self.fail(e.into()),
                }
            }
            i = j;
        }
        self.unwritten.fetch_sub(pages.len(), Ordering::AcqRel);
    }
}
