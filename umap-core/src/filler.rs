//! Fillers: the threads that serve page faults.
//!
//! Each filler waits on the engine's userfaultfd through its own epoll instance registered
//! with `EPOLLEXCLUSIVE`, so a new fault wakes one filler, not all. The woken filler reads a
//! batch of events and serves them itself: it claims each page (`Absent` → `Filling`), reads
//! it from the store into its own aligned scratch buffer and installs it with `UFFDIO_COPY`,
//! which wakes the faulting threads. No other thread is involved, so a fault costs one
//! wake-up (kernel → filler), not two.
//!
//! While one filler does I/O, another takes the next events. When one read returns faults on
//! several pages, the filler serves the first and publishes the rest on the engine's shared
//! work list, waking one idle filler to help, so no fault waits in a batch behind another
//! page's I/O. A single fault (the common case) is never handed to another thread. An event
//! for a page that another filler is filling is dropped (that filler's COPY wakes its thread);
//! one for a page being evicted is parked on the page (see [`crate::page_table`]). No filler
//! ever waits for another page's I/O.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::buffer::PageRef;
use crate::engine::Shared;
use crate::evictor;
use crate::page_table::{
    ABSENT, CLEAN, DIRTY, EVICTING, FILLING, POISONED, UNPROTECTING, WRITEBACK,
};
use crate::region::RegionShared;
use crate::report::ErrorKind;
use crate::stats::bump;
use crate::sys::{self, Epoll, Mapping};
use crate::uffd::{CopyMode, Event, UffdMsg};

const TOKEN_UFFD: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_WORK: u64 = 2;

/// A fault to serve: a page of a region, and what the faulting threads want of it.
pub(crate) type Job = (Arc<RegionShared>, usize, Access);

/// What a fault asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    /// The faulting access was a write.
    pub(crate) write: bool,
    /// It hit a write-protected page.
    pub(crate) write_protect: bool,
}

impl Access {
    /// Both faults' needs at once (two events on one page are served as one).
    fn merge(self, other: Access) -> Access {
        Access {
            write: self.write || other.write,
            write_protect: self.write_protect || other.write_protect,
        }
    }
}

/// Attempts at a store read that fails with a transient error.
const READ_ATTEMPTS: u32 = 3;

/// How long a fill waits for a full buffer that frees nothing before it gives the fault up
/// for now (see [`Filler::reserve`]).
const STALL_LIMIT: Duration = Duration::from_secs(1);

/// After this long without freeing anything, a filler waiting for the buffer slows its
/// retries down, to at most one per this long.
const STUCK_SLEEP: Duration = Duration::from_millis(10);

/// One filler thread's state. It borrows the engine's shared state from the thread's own
/// `Arc`, so serving a fault clones no reference count.
struct Filler<'a> {
    shared: &'a Shared,
    scratch: Option<Mapping>,
    reclaim: Vec<PageRef>,
    jobs: Vec<Job>,
}

/// The filler thread's loop.
pub(crate) fn run(shared: Arc<Shared>) {
    let epoll = match Epoll::new().and_then(|ep| {
        ep.add_readable(shared.uffd.as_raw_fd(), TOKEN_UFFD, true)?;
        ep.add_readable(shared.stop_fd.as_raw_fd(), TOKEN_STOP, false)?;
        ep.add_readable(shared.work_fd.as_raw_fd(), TOKEN_WORK, true)?;
        Ok(ep)
    }) {
        Ok(ep) => ep,
        Err(e) => {
            log::error!("filler cannot set up epoll, exiting: {e}");
            return;
        }
    };
    let mut msgs = vec![UffdMsg::zeroed(); shared.config.max_fault_events];
    let mut filler = Filler {
        shared: &shared,
        scratch: None,
        reclaim: Vec::with_capacity(evictor::BATCH),
        jobs: Vec::new(),
    };
    let mut tokens = [0u64; 4];
    let mut spin = Spin::new();
    let mut just_served = false;
    loop {
        match filler.shared.uffd.read_events(&mut msgs) {
            Ok(0) => {
                if filler.shared.buffer.is_stopping() {
                    return;
                }
                if just_served {
                    just_served = false;
                    if let Some(n) = spin.poll(filler.shared, &mut msgs) {
                        filler.serve_batch(&msgs[..n]);
                        just_served = true;
                        continue;
                    }
                }
                match epoll.wait(&mut tokens, 1000) {
                    Ok(n) => {
                        if tokens[..n].contains(&TOKEN_WORK) {
                            filler.shared.work_fd.reset();
                            filler.serve_shared_work();
                        }
                    }
                    Err(e) => {
                        log::error!("filler epoll_wait failed: {e}");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            Ok(n) => {
                filler.serve_batch(&msgs[..n]);
                just_served = true;
            }
            Err(e) => {
                log::error!("filler cannot read fault events: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Brief, adaptive polling of the userfaultfd after serving faults, before sleeping.
///
/// A thread woken from `epoll_wait` on another CPU costs 20-60 µs, while the kernel's part of
/// a fault is a few µs; when faults come back to back (one application thread faults again
/// as soon as its page arrives), a filler that keeps polling for a moment serves the next
/// fault without a wake-up. At most one filler spins at a time (the others sleep, so
/// application threads keep the other CPUs), and the window adapts: it doubles when polling
/// found a fault and halves when it did not, so an idle engine stops spinning.
struct Spin {
    window: Duration,
}

impl Spin {
    const MIN: Duration = Duration::from_micros(5);
    const MAX: Duration = Duration::from_micros(200);

    fn new() -> Spin {
        Spin {
            window: Duration::from_micros(50),
        }
    }

    /// Polls for events for up to the current window, if no other filler is polling.
    /// Returns how many events were read, or `None`.
    fn poll(&mut self, shared: &Shared, msgs: &mut [UffdMsg]) -> Option<usize> {
        if shared
            .spinners
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let start = Instant::now();
        let mut found = None;
        while start.elapsed() < self.window {
            match shared.uffd.read_events(msgs) {
                Ok(0) => {
                    for _ in 0..32 {
                        std::hint::spin_loop();
                    }
                }
                Ok(n) => {
                    found = Some(n);
                    break;
                }
                Err(_) => break,
            }
        }
        shared.spinners.store(0, Ordering::Release);
        self.window = if found.is_some() {
            (self.window * 2).min(Self::MAX)
        } else {
            (self.window / 2).max(Self::MIN)
        };
        found
    }
}

impl Filler<'_> {
    fn serve_batch(&mut self, msgs: &[UffdMsg]) {
        let shared = self.shared;
        bump(&shared.counters.event_batches, 1);
        let mut jobs = std::mem::take(&mut self.jobs);
        jobs.clear();
        let mut last: Option<Arc<RegionShared>> = None;
        for msg in msgs {
            let pf = match Event::decode(msg) {
                Event::PageFault(pf) => pf,
                Event::Other(code) => {
                    log::warn!("ignoring unexpected userfaultfd event {code:#x}");
                    continue;
                }
            };
            let counter = if pf.write_protect {
                &shared.counters.wp_faults
            } else if pf.write {
                &shared.counters.write_faults
            } else {
                &shared.counters.read_faults
            };
            bump(counter, 1);
            let access = Access {
                write: pf.write || pf.write_protect,
                write_protect: pf.write_protect,
            };
            let region = match &last {
                Some(r) if r.contains(pf.address) => r.clone(),
                _ => match shared.registry.lookup(pf.address) {
                    Some(r) => {
                        last = Some(r.clone());
                        r
                    }
                    None => {
                        // The region was unmapped meanwhile: let the thread retry, it then
                        // faults on unmapped memory like after munmap.
                        shared.wake(pf.address, sys::page_size());
                        continue;
                    }
                },
            };
            let page = region.page_of(pf.address);
            if let Some(job) = jobs
                .iter_mut()
                .find(|(r, p, _)| *p == page && Arc::ptr_eq(r, &region))
            {
                // Twice in this batch: serving it once (for both needs) wakes both threads.
                job.2 = job.2.merge(access);
                bump(&shared.counters.duplicate_faults, 1);
                continue;
            }
            jobs.push((region, page, access));
        }
        if jobs.len() > 1 {
            // Let an idle filler serve the rest while this one serves the first.
            shared.pending.lock().extend(jobs.drain(1..));
            if let Err(e) = shared.work_fd.signal() {
                log::error!("cannot wake a filler for shared work: {e}");
            }
        }
        if let Some((region, page, access)) = jobs.pop() {
            self.serve(&region, page, access);
        }
        self.jobs = jobs;
        self.serve_shared_work();
    }

    /// Serves faults other fillers published, until none is left.
    fn serve_shared_work(&mut self) {
        loop {
            let job = self.shared.pending.lock().pop_front();
            match job {
                Some((region, page, access)) => self.serve(&region, page, access),
                None => return,
            }
        }
    }

    /// Serves a fault on `page` of `region`.
    fn serve(&mut self, region: &Arc<RegionShared>, page: usize, access: Access) {
        let shared = self.shared;
        let ps = region.page_size;
        let Some(_inside) = region.gate.enter() else {
            shared.wake(region.page_addr(page), ps);
            return;
        };
        let write = access.write && region.writable;
        loop {
            let state = region.pages.state(page);
            match state {
                ABSENT => {
                    if region.pages.claim_fill(page) {
                        self.fill(region, page, write);
                        return;
                    }
                }
                FILLING if !access.write_protect => {
                    // The owner's UFFDIO_COPY wakes every thread waiting on the missing page.
                    bump(&shared.counters.duplicate_faults, 1);
                    return;
                }
                CLEAN | DIRTY if write && (state == CLEAN || access.write_protect) => {
                    // The first write to a clean page (or a writer that found a dirty page
                    // still protected): make it dirty, then writable.
                    if region.pages.claim(page, state, UNPROTECTING) {
                        self.unprotect(region, page, state);
                        return;
                    }
                }
                FILLING | UNPROTECTING | WRITEBACK | EVICTING => {
                    // Owned by another thread: it wakes the faulting thread when it is done,
                    // and the thread retries (a write-protect fault on a page just installed
                    // protected, or on one being written back, or any fault on a page being
                    // dropped).
                    if region.pages.park(page, state) {
                        bump(&shared.counters.parked_faults, 1);
                        return;
                    }
                }
                CLEAN | DIRTY | POISONED => {
                    // Stale event: the page was installed (or poisoned) after the fault was
                    // queued. The install woke the thread; wake again in case.
                    bump(&shared.counters.duplicate_faults, 1);
                    shared.wake(region.page_addr(page), ps);
                    return;
                }
                other => {
                    // Not a state this engine sets; never leave a thread blocked.
                    log::error!("page {page} of {region:?} in unknown state {other}");
                    shared.wake(region.page_addr(page), ps);
                    return;
                }
            }
        }
    }

    /// Makes `page` (owned in state Unprotecting, entered from `from`) dirty and writable,
    /// which wakes the writers waiting on it.
    fn unprotect(&mut self, region: &RegionShared, page: usize, from: u8) {
        let shared = self.shared;
        let ps = region.page_size;
        let addr = region.page_addr(page);
        let to = match shared.uffd.writeprotect_retrying(addr, ps, false) {
            Ok(()) => DIRTY,
            Err(e) => {
                // Still protected: leave it as it was; the writer is woken and faults again.
                log::error!("cannot unprotect page at {addr:#x}: {e}");
                from
            }
        };
        if region.pages.release(page, UNPROTECTING, to) || to != DIRTY {
            shared.wake(addr, ps);
        }
    }

    /// Fills `page`, which this thread owns in state Filling: writable and dirty if `write`,
    /// else clean (write-protected in a writable region).
    fn fill(&mut self, region: &Arc<RegionShared>, page: usize, write: bool) {
        let shared = self.shared;
        let ps = region.page_size;
        let addr = region.page_addr(page);
        if !self.reserve(region, page) {
            // The region is being unmapped, or the buffer stayed full of pages that cannot be
            // evicted: the thread faults again (and, unmapped, crashes; stalled, waits again).
            region.pages.finish_fill(page, ABSENT);
            shared.wake(addr, ps);
            return;
        }
        let data_len = region.page_data_len(page);
        let offset = region.page_store_offset(page);
        let Some(buf) = self.scratch(ps) else {
            region.pages.finish_fill(page, ABSENT);
            shared.buffer.release(ps);
            shared.wake(addr, ps);
            return;
        };
        if let Err(e) = read_page(&*region.store, &mut buf[..data_len], offset) {
            bump(&shared.counters.read_errors, 1);
            region.errors.record(
                &shared.counters,
                ErrorKind::Read,
                (page * ps, data_len, offset),
                e.raw_os_error(),
                &e,
            );
            log::error!(
                "store read of page {page} ({data_len} bytes at offset {offset}) failed, \
                 the page is poisoned (access raises SIGBUS): {e}"
            );
            // SAFETY: the page is ours (Filling) in a registered range kept mapped by the
            // gate; poisoning it makes accesses raise SIGBUS, as an I/O error under mmap.
            let poisoned = unsafe { shared.uffd.poison(addr, ps, false) };
            let to = match poisoned {
                Ok(()) => POISONED,
                Err(pe) => {
                    log::error!("cannot poison page at {addr:#x}: {pe}; it will be retried");
                    shared.wake(addr, ps);
                    ABSENT
                }
            };
            region.pages.finish_fill(page, to);
            shared.buffer.release(ps);
            return;
        }
        buf[data_len..].fill(0);
        let src = buf.as_ptr();
        let mode = CopyMode {
            write_protect: region.writable && !write,
            ..CopyMode::default()
        };
        match self.install(addr, src, ps, mode) {
            Ok(()) => {
                if region
                    .pages
                    .finish_fill(page, if write { DIRTY } else { CLEAN })
                {
                    shared.wake(addr, ps);
                }
                shared.buffer.push(PageRef {
                    region: region.clone(),
                    page,
                    filled_at: Instant::now(),
                });
                bump(&shared.counters.fills, 1);
                bump(&shared.counters.bytes_read, data_len as u64);
            }
            Err(e) => {
                log::error!("cannot install page at {addr:#x}: {e}");
                region.pages.finish_fill(page, ABSENT);
                shared.buffer.release(ps);
                shared.wake(addr, ps);
            }
        }
    }

    /// Copies `len` bytes from `src` to the missing page at `addr`, waking its waiters.
    fn install(
        &self,
        addr: usize,
        src: *const u8,
        len: usize,
        mode: CopyMode,
    ) -> Result<(), crate::uffd::UffdError> {
        let uffd = &self.shared.uffd;
        let mut done = 0;
        loop {
            // SAFETY: `addr..addr + len` is a page of a registered region kept mapped by the
            // caller's gate and owned by this thread (Filling); `src` is this thread's scratch
            // buffer holding `len` initialised bytes.
            let res = unsafe { uffd.copy(addr + done, src.add(done), len - done, mode) };
            match res {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == Some(libc::EAGAIN) => {
                    // The address space was changing; the kernel copied `done` bytes.
                    done += e.done();
                    if done >= len {
                        return Ok(());
                    }
                }
                Err(e) if e.errno() == Some(libc::EEXIST) => {
                    // Already present: another path installed it. Wake and move on.
                    self.shared.wake(addr, len);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reserves a page of the buffer for a fill of `page` of `region`, reclaiming the oldest
    /// pages itself when the buffer is full. False if the region is being unmapped meanwhile,
    /// or if nothing could be freed for [`STALL_LIMIT`] (every resident page dirty with a
    /// failing write-back, say): the stall is then counted, logged and recorded for the region,
    /// and the caller gives the fault up for now (the thread faults again), so no filler stays
    /// blocked for good and the buffer is never exceeded.
    fn reserve(&mut self, region: &RegionShared, page: usize) -> bool {
        let shared = self.shared;
        let bytes = region.page_size;
        let mut tries = 0u32;
        let mut backoff = Backoff::new();
        let mut stuck_since: Option<Instant> = None;
        loop {
            if let Some(crossed_high) = shared.buffer.try_reserve(bytes) {
                if crossed_high {
                    bump(&shared.counters.high_water_hits, 1);
                    shared.buffer.kick_evictors();
                }
                return true;
            }
            if tries == 0 {
                bump(&shared.counters.buffer_full_waits, 1);
            }
            tries = tries.saturating_add(1);
            if region.gate.is_closed() {
                return false;
            }
            shared.buffer.kick_evictors();
            // Free what this fill needs (the queue's pages may be smaller than ours), no more:
            // whatever is reclaimed here delays this fault, and the evictors, on another CPU,
            // free the rest in batches (and write dirty pages back in coalesced runs). Taking
            // 256 KiB here instead made sequential 4 KiB scans about 1.5x slower.
            let (freed, young) =
                evictor::evict_batch(shared, bytes, evictor::BATCH, &mut self.reclaim);
            if freed > 0 {
                // Try the reservation again.
                stuck_since = None;
                continue;
            }
            let stuck = stuck_since.get_or_insert_with(Instant::now).elapsed();
            if stuck >= STALL_LIMIT {
                self.report_stall(region, page, stuck);
                return false;
            }
            if stuck >= STUCK_SLEEP {
                // Nothing freed for a while (write-backs failing, or very slow): retry at a
                // calmer pace (a tenth of the time waited so far, at most 10 ms) instead of
                // hammering the store.
                std::thread::sleep((stuck / 10).min(STUCK_SLEEP));
            } else if let Some(wait) = young {
                // Every resident page was just filled: let the threads woken by those fills
                // touch them (sleeping frees this CPU for them) before evicting any.
                std::thread::sleep(wait);
            } else {
                // All resident pages are in transition: their owners finish soon.
                backoff.wait();
            }
        }
    }

    /// Counts, logs and records a fill that gave up on a full buffer.
    #[cold]
    fn report_stall(&self, region: &RegionShared, page: usize, waited: Duration) {
        let shared = self.shared;
        bump(&shared.counters.buffer_stalls, 1);
        let message = format!(
            "the buffer ({} bytes) stayed full for {waited:?} with no page that could be \
             evicted (dirty pages whose write-back fails?); the fault on page {page} is retried",
            shared.buffer.capacity()
        );
        log::error!("{region:?}: {message}");
        region.errors.record(
            &shared.counters,
            ErrorKind::BufferFull,
            (
                page * region.page_size,
                region.page_size,
                region.page_store_offset(page),
            ),
            None,
            &message,
        );
    }

    /// This filler's page-aligned scratch buffer, at least `len` bytes; `None` (logged) if
    /// memory for it cannot be had (the fault is then retried).
    fn scratch(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.scratch.as_ref().is_none_or(|m| m.len() < len) {
            self.scratch = None;
            match Mapping::anonymous(len, libc::PROT_READ | libc::PROT_WRITE, 0) {
                Ok(m) => self.scratch = Some(m),
                Err(e) => {
                    log::error!("cannot allocate a {len}-byte fill buffer: {e}");
                    return None;
                }
            }
        }
        let map = self.scratch.as_ref()?;
        // SAFETY: the mapping is private to this thread, readable and writable, and at least
        // `len` bytes long; the returned borrow ties it to `&mut self`.
        Some(unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), len) })
    }
}

/// Reads `buf` from `store` at `offset`, retrying transient errors.
fn read_page(
    store: &dyn umap_store::Store,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), umap_store::StoreError> {
    let mut attempt = 1;
    loop {
        match store.read_at(buf, offset) {
            Err(e) if e.is_transient() && attempt < READ_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(Duration::from_micros(100 << attempt));
            }
            other => return other,
        }
    }
}
