//! Fillers: the threads that serve page faults.
//!
//! Idle fillers sleep on one shared epoll instance in which the engine's userfaultfd is
//! one-shot and armed only while no filler is awake to read it (see [`Watch`]), so a new
//! fault wakes at most one filler, and none while another is serving, spinning or about to
//! read again. The woken filler reads a batch of events and serves them itself: it claims
//! each page (`Absent` → `Filling`), reads it from the store into its own aligned scratch
//! buffer and installs it with `UFFDIO_COPY`, which wakes the faulting threads. No other
//! thread is involved, so a fault costs at most one wake-up (kernel → filler), not two.
//!
//! While one filler does I/O, another takes the next events. When one read returns faults on
//! several pages, the filler serves the first and publishes the rest on the engine's shared
//! work list, waking one idle filler to help, so no fault waits in a batch behind another
//! page's I/O. A single fault (the common case) is never handed to another thread. An event
//! for a page that another filler is filling is dropped (that filler's COPY wakes its thread);
//! one for a page being evicted is parked on the page (see [`crate::page_table`]). No filler
//! ever waits for another page's I/O.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::PageRef;
use crate::engine::Shared;
use crate::evictor;
use crate::page_table::{
    ABSENT, CLEAN, DIRTY, EVICTING, FILLING, POISONED, UNPROTECTING, WRITEBACK,
};
use crate::region::RegionShared;
use crate::stats::{bump, bump_both, Counters};
use crate::sys::{self, Epoll, Mapping};
use crate::uffd::{Event, UffdMsg};

/// How long an idle filler sleeps at most. Only a safety net, long enough not to hide a
/// missed wake-up in the tests: every event that needs a filler wakes one (a fault through
/// the one-shot userfaultfd, see [`Watch`]; shared work; stop).
const IDLE_WAKE_MS: i32 = 10_000;

const TOKEN_UFFD: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_WORK: u64 = 2;

/// A fault to serve: a page of a region, what the faulting threads want of it, and when its
/// event was read (for the service-time statistics).
pub(crate) struct Job {
    pub(crate) region: Arc<RegionShared>,
    pub(crate) page: usize,
    pub(crate) access: Access,
    pub(crate) read_at: Instant,
}

/// How [`Filler::serve`] left a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Served, or nothing left to do: the faulting thread may retry its access.
    Done,
    /// Another thread owns the page (filling, evicting, writing it back): only an in-place
    /// filler gets this (a queued fault is parked or dropped instead); it waits and serves
    /// the fault again.
    Busy,
    /// The page is poisoned (its store read failed): only for an in-place filler, whose
    /// thread then gets the `SIGBUS` of an I/O error.
    Poisoned,
    /// The region is being unmapped.
    Closing,
}

/// What a fault asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    /// The faulting access was a write.
    pub(crate) write: bool,
    /// It hit a write-protected page.
    pub(crate) write_protect: bool,
}

impl Access {
    /// The statistics counter of a fault of this kind (write-protect, write or read).
    pub(crate) fn counter(self) -> fn(&Counters) -> &AtomicU64 {
        if self.write_protect {
            |c| &c.wp_faults
        } else if self.write {
            |c| &c.write_faults
        } else {
            |c| &c.read_faults
        }
    }

    /// Both faults' needs at once (two events on one page are served as one).
    fn merge(self, other: Access) -> Access {
        Access {
            write: self.write || other.write,
            write_protect: self.write_protect || other.write_protect,
        }
    }
}

/// One filler thread's state. It borrows the engine's shared state from the thread's own
/// `Arc`, so serving a fault clones no reference count.
pub(crate) struct Filler<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) scratch: Option<Mapping>,
    pub(crate) reclaim: Vec<PageRef>,
    jobs: Vec<Job>,
    /// Whether this filler stopped watching the userfaultfd for store I/O (see [`Watch`]).
    pub(crate) lent_watch: bool,
    /// Serving a fault on the faulting thread itself (see [`crate::signal`]): no watch to lend,
    /// nobody blocked in the kernel to wake, and a busy page is waited for, not parked.
    in_place: bool,
}

/// The epoll instance every idle filler waits on: the userfaultfd (one-shot, see [`Watch`]),
/// the stop eventfd (level-triggered, so it wakes every filler in turn) and the work eventfd
/// (edge-triggered: each signal wakes one filler).
pub(crate) fn fault_epoll(
    uffd: &crate::uffd::Uffd,
    stop_fd: &sys::EventFd,
    work_fd: &sys::EventFd,
) -> std::io::Result<Epoll> {
    let ep = Epoll::new()?;
    ep.add_oneshot(uffd.as_raw_fd(), TOKEN_UFFD)?;
    ep.add_readable(stop_fd.as_raw_fd(), TOKEN_STOP, false)?;
    ep.add_edge(work_fd.as_raw_fd(), TOKEN_WORK)?;
    Ok(ep)
}

/// Who watches the userfaultfd: fault readiness wakes a sleeping filler only when no filler
/// is awake to read it.
///
/// A filler is a watcher while it will read the userfaultfd again before it sleeps: from
/// waking until it goes back to `epoll_wait`, except while it does store I/O (a fill, a
/// prefetch chunk), which may block. The userfaultfd is in the shared epoll instance with
/// `EPOLLONESHOT`: the wake-up it delivers disarms it, and it is armed again only when the
/// number of watchers drops to zero. So while one filler serves faults, spins or unprotects
/// pages, a new fault does not wake another filler on another CPU just to find the event
/// already read; while every awake filler is busy with I/O, it does, and no fault waits
/// behind another page's I/O. Arming reports an event that is already pending at once, so
/// none is missed between the last watcher's last read and its sleep.
struct Watch;

impl Watch {
    /// Becomes a watcher. The first one disarms the userfaultfd, unless the caller knows it
    /// is disarmed (it was just woken by it).
    fn join(shared: &Shared, disarmed: bool) {
        if shared.watchers.fetch_add(1, Ordering::AcqRel) == 0 && !disarmed {
            if let Err(e) = shared
                .fault_epoll
                .disarm_oneshot(shared.uffd.as_raw_fd(), TOKEN_UFFD)
            {
                log::error!("cannot disarm the userfaultfd in the fillers' epoll: {e}");
            }
        }
    }

    fn leave(shared: &Shared) {
        if shared.watchers.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Err(e) = shared
                .fault_epoll
                .rearm_oneshot(shared.uffd.as_raw_fd(), TOKEN_UFFD)
            {
                log::error!("cannot re-arm the userfaultfd in the fillers' epoll: {e}");
            }
        }
    }
}

/// Watches the userfaultfd again if `lent` (see [`Filler::take_watch_back`]).
pub(crate) fn watch_again(shared: &Shared, lent: bool) {
    if lent {
        Watch::join(shared, false);
    }
}

/// The filler thread's loop.
pub(crate) fn run(shared: Arc<Shared>) {
    let mut msgs = vec![UffdMsg::zeroed(); shared.config.max_fault_events];
    let mut filler = Filler {
        shared: &shared,
        scratch: None,
        reclaim: Vec::with_capacity(evictor::BATCH),
        jobs: Vec::new(),
        lent_watch: false,
        in_place: false,
    };
    let mut tokens = [0u64; 4];
    let mut spin = Spin::new();
    let mut just_served = false;
    Watch::join(filler.shared, false);
    loop {
        match filler.shared.uffd.read_events(&mut msgs) {
            Ok(0) => {
                if filler.shared.buffer.is_stopping() {
                    return;
                }
                if !filler.shared.prefetch.is_empty() {
                    filler.lend_watch();
                    let filled = filler.prefetch_chunk();
                    filler.take_watch_back();
                    if filled {
                        // Look for faults again before the next chunk.
                        continue;
                    }
                }
                if just_served {
                    just_served = false;
                    if let Some(n) = spin.poll(filler.shared, &mut msgs) {
                        filler.serve_batch(&msgs[..n]);
                        just_served = true;
                        continue;
                    }
                }
                Watch::leave(filler.shared);
                let woken = filler.shared.fault_epoll.wait(&mut tokens, IDLE_WAKE_MS);
                let by_fault = matches!(woken, Ok(n) if tokens[..n].contains(&TOKEN_UFFD));
                Watch::join(filler.shared, by_fault);
                match woken {
                    Ok(n) => {
                        if tokens[..n].contains(&TOKEN_WORK) {
                            filler.shared.work_fd.reset();
                            filler.serve_shared_work();
                            if !filler.shared.prefetch.is_empty() {
                                // More prefetch work than this filler: wake another one.
                                filler.shared.signal_work();
                            }
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

impl<'a> Filler<'a> {
    /// A filler for serving faults on the faulting thread (see [`crate::signal`]), with the
    /// scratch buffer and reclaim list of one of the engine's in-place slots.
    pub(crate) fn in_place(
        shared: &'a Shared,
        scratch: Option<Mapping>,
        reclaim: Vec<PageRef>,
    ) -> Filler<'a> {
        Filler {
            shared,
            scratch,
            reclaim,
            jobs: Vec::new(),
            lent_watch: false,
            in_place: true,
        }
    }

    /// The scratch buffer and reclaim list, given back by an in-place filler.
    pub(crate) fn into_parts(self) -> (Option<Mapping>, Vec<PageRef>) {
        (self.scratch, self.reclaim)
    }

    /// Stops watching the userfaultfd before work that may block (store I/O), so that a new
    /// fault meanwhile wakes a sleeping filler.
    pub(crate) fn lend_watch(&mut self) {
        debug_assert!(!self.lent_watch);
        self.lent_watch = true;
        Watch::leave(self.shared);
    }

    /// Watches the userfaultfd again after [`Filler::lend_watch`] (no-op otherwise): done
    /// once the store read is over and before the install wakes the faulting threads, whose
    /// next faults then find this filler watching instead of waking another one.
    pub(crate) fn take_watch_back(&mut self) {
        watch_again(self.shared, std::mem::take(&mut self.lent_watch));
    }

    fn serve_batch(&mut self, msgs: &[UffdMsg]) {
        let shared = self.shared;
        bump(&shared.counters.event_batches, 1);
        let read_at = Instant::now();
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
            bump_both(&shared.counters, &region.counters, access.counter(), 1);
            let page = region.page_of(pf.address);
            if let Some(job) = jobs
                .iter_mut()
                .find(|j| j.page == page && Arc::ptr_eq(&j.region, &region))
            {
                // Twice in this batch: serving it once (for both needs) wakes both threads.
                job.access = job.access.merge(access);
                bump_both(
                    &shared.counters,
                    &region.counters,
                    |c| &c.duplicate_faults,
                    1,
                );
                continue;
            }
            jobs.push(Job {
                region,
                page,
                access,
                read_at,
            });
        }
        if jobs.len() > 1 {
            // Let an idle filler serve the rest while this one serves the first.
            shared.pending.lock().extend(jobs.drain(1..));
            shared.signal_work();
        }
        if let Some(job) = jobs.pop() {
            let _ = self.serve(&job);
        }
        self.jobs = jobs;
        self.serve_shared_work();
    }

    /// Serves faults other fillers published, until none is left.
    fn serve_shared_work(&mut self) {
        loop {
            let job = self.shared.pending.lock().pop_front();
            match job {
                Some(job) => {
                    let _ = self.serve(&job);
                }
                None => return,
            }
        }
    }

    /// Serves a fault: fills its page, or makes it writable, or parks or drops the event if
    /// another thread owns the page (an in-place filler gets [`Outcome::Busy`] instead).
    pub(crate) fn serve(&mut self, job: &Job) -> Outcome {
        let (region, page, access) = (&job.region, job.page, job.access);
        let shared = self.shared;
        let ps = region.page_size;
        let Some(_inside) = region.gate.enter() else {
            self.wake(region.page_addr(page), ps);
            return Outcome::Closing;
        };
        let write = access.write && region.writable;
        loop {
            let state = region.pages.state(page);
            match state {
                ABSENT => {
                    if region.pages.claim_fill(page) {
                        // The store read may block: let a new fault meanwhile wake another
                        // filler (`fill_run` takes the watch back before installing).
                        if !self.in_place {
                            self.lend_watch();
                        }
                        self.fill_fault(region, page, write);
                        self.take_watch_back();
                        self.served(region, job.read_at);
                        return Outcome::Done;
                    }
                }
                FILLING | UNPROTECTING | WRITEBACK | EVICTING if self.in_place => {
                    // The owner finishes soon; the caller waits and serves the fault again.
                    return Outcome::Busy;
                }
                POISONED if self.in_place => return Outcome::Poisoned,
                FILLING if !access.write_protect => {
                    // The owner's UFFDIO_COPY wakes every thread waiting on the missing page.
                    bump_both(
                        &shared.counters,
                        &region.counters,
                        |c| &c.duplicate_faults,
                        1,
                    );
                    return Outcome::Done;
                }
                CLEAN | DIRTY if write && (state == CLEAN || access.write_protect) => {
                    // The first write to a clean page (or a writer that found a dirty page
                    // still protected): make it dirty, then writable.
                    if region.pages.claim(page, state, UNPROTECTING) {
                        if state == CLEAN {
                            region.write_intent.first_write(&region.pages, page);
                        }
                        self.unprotect(region, page, state);
                        self.served(region, job.read_at);
                        return Outcome::Done;
                    }
                }
                FILLING | UNPROTECTING | WRITEBACK | EVICTING => {
                    // Owned by another thread: it wakes the faulting thread when it is done,
                    // and the thread retries (a write-protect fault on a page just installed
                    // protected, or on one being written back, or any fault on a page being
                    // dropped).
                    if region.pages.park(page, state) {
                        bump_both(&shared.counters, &region.counters, |c| &c.parked_faults, 1);
                        return Outcome::Done;
                    }
                }
                CLEAN | DIRTY | POISONED => {
                    // Stale event: the page was installed (or poisoned) after the fault was
                    // queued. The install woke the thread; wake again in case.
                    bump_both(
                        &shared.counters,
                        &region.counters,
                        |c| &c.duplicate_faults,
                        1,
                    );
                    self.wake(region.page_addr(page), ps);
                    return Outcome::Done;
                }
                other => {
                    // Not a state this engine sets; never leave a thread blocked.
                    log::error!("page {page} of {region:?} in unknown state {other}");
                    self.wake(region.page_addr(page), ps);
                    return Outcome::Done;
                }
            }
        }
    }

    /// Wakes threads blocked in the kernel on `[addr, addr + len)`; none are, for an in-place
    /// filler (every wake of a filler's own fault path goes through here).
    pub(crate) fn wake(&self, addr: usize, len: usize) {
        if !self.in_place {
            self.shared.wake(addr, len);
        }
    }

    /// Records the service time of a fault read at `read_at` and just served.
    fn served(&self, region: &RegionShared, read_at: Instant) {
        let elapsed = read_at.elapsed();
        self.shared.counters.fault_latency.record(elapsed);
        region.counters.fault_latency.record(elapsed);
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
            self.wake(addr, ps);
        }
    }
}
