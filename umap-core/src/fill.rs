//! Filling pages: runs of adjacent missing pages read with one store call and installed with
//! one `UFFDIO_COPY`, for a fault (with read-ahead) or for a prefetch.
//!
//! A run is built the same way in both cases: the buffer bytes are reserved first, then each
//! page is claimed (`Absent` → `Filling`) while it is absent, so a page is never claimed and
//! then given back unfilled for lack of room (a fault dropped as a duplicate while the page
//! was `Filling` relies on the owner's copy to wake its thread). The run is read into the
//! filler's scratch buffer, installed, and its pages become `Clean` (or the faulting page
//! `Dirty`, for a write), each queued for eviction.
//!
//! Read-ahead: a fault on the page a sequential stream of faults expects next (see
//! [`crate::advice::Streams`]: the window ramps up 2, 4, 8 ... pages from a stream's second
//! continuation on), or any fault in a range advised `Sequential`, fills the read-ahead window
//! in the same run: after the faulting page for an ascending stream, before it (the run ends
//! at the faulting page) for a descending one. The extra pages are
//! taken only from free buffer room (`try_reserve`): read-ahead never makes a filler reclaim,
//! and its window is at most the buffer's low-water share, so what is read ahead is not
//! evicted before the reader gets to it. A read error in the extra pages only shortens the
//! run: the faulting page is read alone and only it is poisoned if that fails too.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::buffer::{PageRef, Reserved};
use crate::error::Error;
use crate::evictor;
use crate::filler::{watch_again, Filler};
use crate::page_table::{ABSENT, CLEAN, DIRTY, POISONED};
use crate::region::RegionShared;
use crate::report::ErrorKind;
use crate::stats::{bump, bump_both, Counters};
use crate::sys::{self, Mapping};
use crate::uffd::{CopyMode, UffdError};
use crate::write_intent::{FillMode, PROBE_PAGES};

/// Attempts at a store read that fails with a transient error.
const READ_ATTEMPTS: u32 = 3;

/// More attempts at installing the rest of a writable page installed in part (see
/// [`Filler::keep_installed`]), pausing 0.2, 0.4 ... 3.2 ms before each.
const INSTALL_ATTEMPTS: u32 = 5;

/// How long a fill waits for a full buffer that frees nothing before it gives up for now
/// (see [`Filler::reserve`]).
const STALL_LIMIT: Duration = Duration::from_secs(1);

/// After this long without freeing anything, a filler waiting for the buffer slows its
/// retries down, to at most one per this long.
const STUCK_SLEEP: Duration = Duration::from_millis(10);

/// Why a run is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// A fault on the run's page `at` (counted from the run's start; a write if `write`);
    /// the rest is read-ahead. With `dirty`, every page of the run is installed writable and
    /// dirty (see [`crate::write_intent`]).
    Fault { write: bool, dirty: bool, at: usize },
    /// A prefetch.
    Prefetch,
}

/// The longest install after which the userfaultfd is watched again (see `fill_run`): at
/// about 1.5 µs per 4 KiB copied, 16 KiB take less than a wake-up of a sleeping filler.
const SHORT_INSTALL: usize = 16 << 10;

impl Filler<'_> {
    /// Fills `page`, which this thread owns in state Filling for a fault, and the read-ahead
    /// window after it (before it, for a descending stream) if the fault continues a
    /// sequential stream.
    pub(crate) fn fill_fault(&mut self, region: &Arc<RegionShared>, page: usize, write: bool) {
        let ps = region.page_size;
        if !self.reserve(region, ps, page) {
            // The region is being unmapped, or the buffer stayed full of pages that cannot be
            // evicted: the thread faults again (and, unmapped, crashes; stalled, waits again).
            region.pages.finish_fill(page, ABSENT);
            self.wake(region.page_addr(page), ps);
            return;
        }
        let (mut window, stream) = region.read_ahead_window(page);
        // In a region whose clean fills are nearly all written soon after, fill dirty at once
        // (a probe now and then fills clean, and short, to keep measuring).
        let mode = if region.writable {
            region.write_intent.fill_mode()
        } else {
            FillMode::Clean
        };
        if mode == FillMode::Probe {
            window = window.min(PROBE_PAGES - 1);
        }
        let run = match stream {
            _ if window == 0 => page..page + 1,
            Some(hit) if hit.descending() => {
                page - self.claim_free_run_below(region, page, window)..page + 1
            }
            _ => page..page + 1 + self.claim_free_run(region, page + 1, window),
        };
        if let Some(hit) = stream {
            // A run that stopped at a page already there (resident, or being filled or
            // evicted): the reader goes past such pages without faulting, so the stream
            // expects the first absent page beyond them (within a run's length), where the
            // reader's next fault is, and keeps its window.
            let reach = region.max_run;
            let passed = run.start - region.pages.present_run_below(run.start, reach)
                ..run.end + region.pages.present_run(run.end, reach);
            region.streams.expect(hit, passed);
        }
        let dirty = mode == FillMode::Dirty;
        let at = page - run.start;
        // A fault's run never returns an error: a failed read poisons the page (and logs).
        let _ = self.fill_run(
            region,
            run.start,
            run.len(),
            Cause::Fault { write, dirty, at },
        );
    }

    /// Claims up to `max` absent pages from `start` on (stopping at the first page that is not
    /// absent or at the end of the region), for which free buffer room was reserved; returns
    /// how many.
    fn claim_free_run(&mut self, region: &RegionShared, start: usize, max: usize) -> usize {
        let wanted = region.pages.absent_run(start, max);
        let room = self.reserve_free(wanted, region.page_size);
        self.claim_reserved(region, start.., room)
    }

    /// Claims up to `max` absent pages right below `page`, downwards (stopping at the first
    /// page that is not absent or at page 0), for which free buffer room was reserved; returns
    /// how many, which are the pages `page - claimed..page`.
    fn claim_free_run_below(&mut self, region: &RegionShared, page: usize, max: usize) -> usize {
        let wanted = region.pages.absent_run_below(page, max);
        let room = self.reserve_free(wanted, region.page_size);
        self.claim_reserved(region, (0..page).rev(), room)
    }

    /// Reserves room for as many of `pages` pages of `page_size` bytes as fit in the buffer's
    /// free room without reclaiming anything (halving the count until it fits); returns how
    /// many (possibly 0). Crossing the high-water mark kicks the evictors.
    fn reserve_free(&self, pages: usize, page_size: usize) -> usize {
        let mut room = pages;
        while room > 0 {
            match self.shared.buffer.try_reserve(room * page_size) {
                Some(reserved) => {
                    self.reserved(reserved, room * page_size);
                    break;
                }
                None => room /= 2,
            }
        }
        room
    }

    /// After `reserved`, a reservation of `bytes`: kicks the evictors if it took region pages
    /// to the high-water mark (counted), or region and pool pages past the mark from which
    /// the evictors trim the pool (clean fills growing the region under pool pages nobody
    /// takes; see `crate::pool`).
    #[inline]
    fn reserved(&self, reserved: Reserved, bytes: usize) {
        let shared = self.shared;
        if reserved.crossed_high {
            bump(&shared.counters.high_water_hits, 1);
            shared.buffer.kick_evictors();
        } else if shared
            .pool
            .as_ref()
            .is_some_and(|pool| pool.crossed_trim_mark(&shared.buffer, reserved, bytes))
        {
            shared.buffer.kick_evictors();
        }
    }

    /// Claims absent pages in the order `pages` gives them (`Absent` → `Filling`), at most
    /// `reserved` of them, for which `reserved` pages of the buffer were reserved; stops at the
    /// first page it cannot claim and gives back the reservation of the pages it did not
    /// claim. Returns how many it claimed.
    fn claim_reserved(
        &self,
        region: &RegionShared,
        pages: impl Iterator<Item = usize>,
        reserved: usize,
    ) -> usize {
        let claimed = pages
            .take(reserved)
            .take_while(|&p| region.pages.claim_fill(p))
            .count();
        if claimed < reserved {
            self.shared
                .buffer
                .release((reserved - claimed) * region.page_size);
        }
        claimed
    }

    /// Fills a chunk of the oldest prefetch request. Returns false if there was none.
    pub(crate) fn prefetch_chunk(&mut self) -> bool {
        let shared = self.shared;
        let Some(chunk) = shared.prefetch.take() else {
            return false;
        };
        let region = &chunk.region;
        let pages = chunk.pages.clone();
        let Some(_inside) = region.gate.enter() else {
            chunk.ticket.done(pages.len(), None);
            return true;
        };
        let mut error = None;
        let mut p = pages.start;
        while p < pages.end {
            if region.pages.state(p) != ABSENT {
                p += 1;
                continue;
            }
            let run = region
                .pages
                .absent_run(p, region.max_run.min(pages.end - p));
            if !self.reserve(region, run * region.page_size, p) {
                // Being unmapped, or a buffer full of pages that cannot be evicted.
                if !region.gate.is_closed() {
                    error.get_or_insert(Error::BufferFull {
                        capacity: shared.buffer.capacity(),
                    });
                }
                break;
            }
            let claimed = self.claim_reserved(region, p.., run);
            if claimed == 0 {
                p += 1; // taken by someone else meanwhile
                continue;
            }
            if let Err(e) = self.fill_run(region, p, claimed, Cause::Prefetch) {
                error.get_or_insert(e);
            }
            p += claimed;
        }
        chunk.ticket.done(pages.len(), error);
        true
    }

    /// Fills the `n` pages from `start`, which this thread owns in state Filling and for
    /// which it reserved `n` pages of the buffer. On a store error the pages are given back
    /// (absent); for a fault, its page is then read alone and poisoned if that fails too.
    /// For a write fault (not filled dirty), the written page is installed first and
    /// writable, the read-ahead pages on either side of it write-protected.
    fn fill_run(
        &mut self,
        region: &Arc<RegionShared>,
        start: usize,
        n: usize,
        cause: Cause,
    ) -> Result<(), Error> {
        let shared = self.shared;
        let ps = region.page_size;
        let addr = region.page_addr(start);
        let bytes = n * ps;
        let data_len = region.len.saturating_sub(start * ps).min(bytes);
        let offset = region.page_store_offset(start);
        // Watched again (if lent) once the store read is over, before the install wakes the
        // faulting threads, if the install is short; a long one (a copy of more than
        // `SHORT_INSTALL` costs about a cross-CPU wake-up) keeps it lent until it is done.
        let lent = bytes <= SHORT_INSTALL && std::mem::take(&mut self.lent_watch);
        let all_dirty = matches!(cause, Cause::Fault { dirty: true, .. });
        let first_write = all_dirty || matches!(cause, Cause::Fault { write: true, .. });
        // A run installed writable and dirty as a whole is read into pool pages and moved into
        // the region (see `crate::pool`); any other run is copied from the store's own memory
        // if it offers that (below), or else read into the scratch buffer and copied.
        let pooled = match &shared.pool {
            Some(pool) if pool.recycles(region) && (all_dirty || (first_write && n == 1)) => {
                pool.take(bytes)
            }
            _ => None,
        };
        // Any other run that holds only store bytes (none past the end) may be copied straight
        // from the store's own memory, a file's page cache mapped read-only, if the store
        // offers it (`Store::copy_source`), instead of being read into the scratch buffer.
        let source = if pooled.is_none()
            && data_len == bytes
            && !region.copy_source_failed.load(Ordering::Relaxed)
        {
            crate::store_guard::copy_source(&*region.store, offset, bytes)
        } else {
            None
        };
        let (src, read) = if let Some(source) = source {
            watch_again(shared, lent);
            (source.as_ptr(), Ok(()))
        } else {
            let buf = match &pooled {
                // SAFETY: `at..at + bytes` lies in a pool slot this thread took: nothing else
                // reads or writes it until the slot is given back; missing pool pages are
                // allocated by the kernel when written (the pool raises no userfaultfd fault).
                Some((_, at, _)) => unsafe {
                    std::slice::from_raw_parts_mut(*at as *mut u8, bytes)
                },
                None => match self.scratch(bytes) {
                    Some(buf) => buf,
                    None => {
                        watch_again(shared, lent);
                        self.abandon(region, start..start + n);
                        return Ok(());
                    }
                },
            };
            let read = read_with_retries(&*region.store, &mut buf[..data_len], offset);
            watch_again(shared, lent);
            if read.is_ok() {
                buf[data_len..bytes].fill(0);
            }
            (buf.as_ptr(), read)
        };
        if let Err(e) = read {
            if let (Some(pool), Some((slot, at, present))) = (&shared.pool, pooled) {
                pool.put_back_unused(slot, at, present, bytes);
            }
            return match cause {
                Cause::Fault { write, dirty, at } if n > 1 => {
                    // Give the read-ahead pages back, then try the faulting page alone.
                    log::debug!("read-ahead of {n} pages at offset {offset} failed: {e}");
                    self.abandon(region, start..start + at);
                    self.abandon(region, start + at + 1..start + n);
                    let only = Cause::Fault {
                        write,
                        dirty,
                        at: 0,
                    };
                    self.fill_run(region, start + at, 1, only)
                }
                Cause::Fault { .. } => {
                    self.poison(region, start, data_len, offset, &e);
                    Ok(())
                }
                Cause::Prefetch => {
                    log::warn!(
                        "prefetch of {n} pages ({data_len} bytes at offset {offset}) failed; \
                         they stay absent: {e}"
                    );
                    self.abandon(region, start..start + n);
                    Err(e.into())
                }
            };
        }
        // Counted before the copy wakes the faulting threads, so that what they read of the
        // statistics afterwards includes their own fill (taken back if the copy fails).
        let counts = FillCounts::new(cause, n, data_len);
        counts.add(shared, region, 1);
        // The faulting page (the run's first for a prefetch, which has none).
        let own = start
            + match cause {
                Cause::Fault { at, .. } => at,
                Cause::Prefetch => 0,
            };
        let protect = region.writable;
        // The pages installed: the whole run unless part of it failed. A failed install gives
        // the page it began at, how many whole pages from there stay, and the error.
        let mut run = start..start + n;
        let keep = |from: usize, src: *const u8, writable: bool, e: UffdError| {
            // A copy from the store's memory that stopped inside a page because that memory
            // cannot be read (`EFAULT`) completes the page from `read_at` instead: copying the
            // rest from there again would only fail again, and the part installed, perhaps
            // written already, would be dropped.
            let reread = (source_unreadable(region, source.is_some(), &e) && e.done() % ps != 0)
                .then(|| {
                    let mut bytes_read = vec![0u8; bytes];
                    read_with_retries(&*region.store, &mut bytes_read[..data_len], offset)
                        .ok()
                        .map(|()| bytes_read)
                })
                .flatten();
            let src = match &reread {
                // The same layout as the run's source: the run's bytes from `start` on.
                Some(run) => run[(from - start) * ps..].as_ptr(),
                None => src,
            };
            (
                from,
                self.keep_installed(region, from, src, writable, &e),
                e,
            )
        };
        let installed = if let (Some(pool), Some((slot, at, present))) = (&shared.pool, pooled) {
            let (moved, installed) = match self.install_moved(addr, at, bytes) {
                Ok(moved) => (moved, Ok(())),
                Err((moved, e)) => {
                    let failed = keep(start, at as *const u8, true, e);
                    pool.discard(at + moved, bytes - moved);
                    (moved.min(failed.1 * ps), Err(failed))
                }
            };
            pool.put_back_after_fill(&shared.buffer, &shared.counters, slot, at, present, moved);
            installed
        } else if all_dirty {
            self.install(addr, src, bytes, protect_mode(false))
                .map_err(|e| keep(start, src, true, e))
        } else if first_write && n > 1 {
            // The written page is installed writable (and first: its thread waits), the
            // read-ahead pages on either side of it protected.
            let at = own - start;
            // SAFETY: `src` holds `bytes` bytes; `at < n`.
            let own_src = unsafe { src.add(at * ps) };
            self.install(region.page_addr(own), own_src, ps, CopyMode::default())
                .map_err(|e| keep(own, own_src, protect, e))
                .map(|()| {
                    for side in [start..own, own + 1..start + n] {
                        if side.is_empty() {
                            continue;
                        }
                        // SAFETY: `side` lies inside the run, whose bytes `src` holds.
                        let side_src = unsafe { src.add((side.start - start) * ps) };
                        let side_addr = region.page_addr(side.start);
                        let side_len = side.len() * ps;
                        if let Err(e) =
                            self.install(side_addr, side_src, side_len, protect_mode(protect))
                        {
                            // The written page is in: only these read-ahead pages go back,
                            // dropped (protected, nobody wrote them) so that the run stays
                            // one stretch of pages.
                            source_unreadable(region, source.is_some(), &e);
                            log::error!(
                                "cannot install {} read-ahead pages at {side_addr:#x}: {e}",
                                side.len()
                            );
                            // SAFETY: the pages are this thread's (Filling), protected or
                            // read-only, holding only bytes just read from the store.
                            if let Err(e) = unsafe { sys::madvise_dontneed(side_addr, e.done()) } {
                                log::error!("cannot drop read-ahead pages at {side_addr:#x}: {e}");
                            }
                            self.abandon(region, side.clone());
                            if side.start < own {
                                run.start = own;
                            } else {
                                run.end = own + 1;
                            }
                        }
                    }
                })
        } else {
            let mode = protect_mode(protect && !first_write);
            self.install(addr, src, bytes, mode)
                .map_err(|e| keep(start, src, protect && !mode.write_protect, e))
        };
        if let Err((from, kept, e)) = installed {
            if source_unreadable(region, source.is_some(), &e) && kept == 0 && e.done() == 0 {
                // Nothing was installed: the same pages, still this thread's, are read and
                // installed again, with `read_at` now.
                counts.add(shared, region, -1);
                return self.fill_run(region, start, n, cause);
            }
            log::error!(
                "cannot install {n} pages at {addr:#x}: {e}; {kept} whole pages from page {from} \
                 stay"
            );
            // Pages before `from` were not installed (the written page's install failed
            // before its read-ahead sides), nor those past the whole pages kept.
            self.abandon(region, start..from);
            self.abandon(region, from + kept..start + n);
            if kept == 0 {
                counts.add(shared, region, -1);
                return Ok(());
            }
            run = from..from + kept;
        }
        if run.len() < n {
            // Count what was installed instead.
            counts.add(shared, region, -1);
            let run_data = region
                .len
                .saturating_sub(run.start * ps)
                .min(run.len() * ps);
            let cause = match cause {
                Cause::Fault { write, dirty, .. } => Cause::Fault {
                    write,
                    dirty,
                    at: own - run.start,
                },
                Cause::Prefetch => Cause::Prefetch,
            };
            FillCounts::new(cause, run.len(), run_data).add(shared, region, 1);
        }
        let filled_at = Instant::now();
        let stamp = region.pages.stamp_at(filled_at);
        for page in run.clone() {
            let to = if all_dirty || (page == own && first_write) {
                DIRTY
            } else {
                CLEAN
            };
            // Before the page is resident: an evictor that finds it resident finds the queue
            // entries it had before as stale (its entry is queued below).
            region.pages.set_stamp(page, stamp);
            if region.pages.finish_fill(page, to) {
                self.wake(region.page_addr(page), ps);
            }
        }
        let clean = run.len() - usize::from(first_write && run.contains(&own));
        // Queued in the order the reader reaches them, from the faulting page away (downwards
        // for a descending stream's run, which ends at its faulting page), so eviction, oldest
        // first, takes the pages the reader is done with before those it has yet to read.
        let page_ref = |page| PageRef::new(region.clone(), page, filled_at);
        if own > run.start {
            shared.buffer.push_run(run.rev().map(page_ref));
        } else {
            shared.buffer.push_run(run.map(page_ref));
        }
        if protect && !all_dirty {
            region.write_intent.clean_filled(clean as u32);
        }
        Ok(())
    }

    /// Gives back `pages` (owned in state Filling, reserved): absent again, their bytes
    /// released, and any thread waiting on them woken to fault again.
    fn abandon(&self, region: &RegionShared, pages: Range<usize>) {
        let ps = region.page_size;
        for page in pages {
            region.pages.finish_fill(page, ABSENT);
            self.shared.buffer.release(ps);
            self.wake(region.page_addr(page), ps);
        }
    }

    /// The store read of `page` (owned in state Filling, reserved) failed: poisons it so
    /// accesses raise SIGBUS, as an I/O error under mmap.
    fn poison(
        &self,
        region: &RegionShared,
        page: usize,
        data_len: usize,
        offset: u64,
        error: &umap_store::StoreError,
    ) {
        let shared = self.shared;
        let ps = region.page_size;
        let addr = region.page_addr(page);
        bump_both(&shared.counters, &region.counters, |c| &c.read_errors, 1);
        region.errors.record(
            &shared.counters,
            ErrorKind::Read,
            (page * ps, data_len, offset),
            error.raw_os_error(),
            error,
        );
        log::error!(
            "store read of page {page} ({data_len} bytes at offset {offset}) failed, the page is \
             poisoned (access raises SIGBUS): {error}"
        );
        // SAFETY: the page is ours (Filling) in a registered range kept mapped by the gate;
        // poisoning it makes accesses raise SIGBUS.
        let poisoned = unsafe { shared.uffd.poison(addr, ps, false) };
        let to = match poisoned {
            Ok(()) => POISONED,
            Err(pe) => {
                log::error!("cannot poison page at {addr:#x}: {pe}; it will be retried");
                self.wake(addr, ps);
                ABSENT
            }
        };
        region.pages.finish_fill(page, to);
        shared.buffer.release(ps);
    }

    /// Copies `len` bytes from `src` to the missing pages at `addr`, waking their waiters.
    /// On an error the error's [`done`](UffdError::done) counts every byte installed from
    /// `addr` (present, their waiters woken): see [`Filler::keep_installed`].
    fn install(
        &self,
        addr: usize,
        src: *const u8,
        len: usize,
        mode: CopyMode,
    ) -> Result<(), UffdError> {
        let uffd = &self.shared.uffd;
        let sys_page = sys::page_size();
        let mut done = 0;
        while done < len {
            #[cfg(test)]
            if let Some(e) = inject::fail(self, inject::Op::Copy, addr, src, len, mode, done) {
                return Err(e);
            }
            // SAFETY: `addr..addr + len` are pages of a registered region kept mapped by the
            // caller's gate and owned by this thread (Filling); `src` holds `len` initialised
            // bytes (the scratch buffer or a pool slot this thread holds), or is memory the
            // store offers (`CopySource`), which only the kernel reads and whose unreadable
            // pages make the copy fail with `EFAULT`.
            let res = unsafe { uffd.copy(addr + done, src.add(done), len - done, mode) };
            match res {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == Some(libc::EAGAIN) => {
                    // The address space was changing; the kernel copied `done` bytes.
                    done += e.done();
                }
                Err(e) if e.errno() == Some(libc::EEXIST) => {
                    // A system page is already present (another path installed it): skip it
                    // and copy the rest.
                    done += e.done();
                    self.wake(addr + done, sys_page);
                    done += sys_page;
                }
                Err(e) => return Err(with_total(e, done)),
            }
        }
        Ok(())
    }

    /// After an install of the run's pages from `from` on failed with `error` (whose `done()`
    /// counts the bytes installed, woken and possibly read or written since), decides what
    /// stays: every whole umap page installed stays (the caller finishes it as filled). A umap
    /// page installed only in part cannot stay (its missing system pages would fault on a
    /// resident page); if it was installed write-protected (or into a read-only mapping)
    /// nobody can have written it and its installed part is dropped; if writable, a woken
    /// thread may have written it, so the rest of it is installed again, a few times with a
    /// pause (the usual error, `ENOMEM`, passes as memory is freed), and it stays if that
    /// works. Only if that fails too is its installed part dropped, logged as possibly losing
    /// such a write. Returns how many whole pages from `from` stay.
    fn keep_installed(
        &self,
        region: &RegionShared,
        from: usize,
        src: *const u8,
        writable: bool,
        error: &UffdError,
    ) -> usize {
        let ps = region.page_size;
        let whole = error.done() / ps;
        let mut part = error.done() % ps;
        if part == 0 {
            return whole;
        }
        let page_addr = region.page_addr(from + whole);
        if writable {
            for attempt in 0..INSTALL_ATTEMPTS {
                std::thread::sleep(Duration::from_micros(100 << attempt));
                // SAFETY: `src` holds the bytes of the pages from `from` on.
                let rest = unsafe { src.add(whole * ps + part) };
                match self.install(page_addr + part, rest, ps - part, protect_mode(false)) {
                    Ok(()) => return whole + 1,
                    Err(e) => part += e.done(),
                }
                if part >= ps {
                    return whole + 1;
                }
            }
            log::error!(
                "the writable page at {page_addr:#x} stays installed in part ({part} of {ps} \
                 bytes) after {INSTALL_ATTEMPTS} more attempts: the part is dropped, and a \
                 write made to it since it was installed is lost"
            );
        }
        // SAFETY: the page is this thread's (Filling); its installed part holds only bytes
        // just read from the store (or, writable, see the log above).
        if let Err(e) = unsafe { sys::madvise_dontneed(page_addr, part) } {
            log::error!("cannot drop {part} bytes at {page_addr:#x}: {e}");
        }
        whole
    }

    /// Moves `len` bytes of pool pages at `src` (holding the run's bytes) to the missing pages
    /// at `addr`, writable, waking their waiters; whatever the kernel does not move (a page
    /// it cannot move) is copied instead, and the pool pages not moved are dropped. Returns
    /// how many bytes from `addr` were moved (the rest were copied). On an error, the bytes
    /// moved, and the error, whose `done()` counts every byte installed from `addr` (moved or
    /// copied); the pool pages not moved are left for the caller's
    /// [`keep_installed`](Filler::keep_installed), which may copy more of them, and to drop
    /// afterwards.
    fn install_moved(
        &self,
        addr: usize,
        src: usize,
        len: usize,
    ) -> Result<usize, (usize, UffdError)> {
        let uffd = &self.shared.uffd;
        #[cfg(test)]
        let injected = inject::fail(
            self,
            inject::Op::Move,
            addr,
            src as *const u8,
            len,
            protect_mode(false),
            0,
        );
        #[cfg(not(test))]
        let injected = None;
        let moved = match injected {
            Some(e) => Err(e),
            // SAFETY: `addr..addr + len` are missing pages of a registered region kept mapped
            // by the caller's gate and owned by this thread (Filling); `src..src + len` are
            // pool pages in a slot this thread holds, registered on the same descriptor.
            None => unsafe { crate::pool::move_all_mode(uffd, addr, src, len, false) },
        };
        let Err(e) = moved else {
            return Ok(len);
        };
        let done = e.done();
        log::debug!("moving a filled run into its region failed, copying it: {e}");
        // SAFETY: `src + done..src + len` still holds the rest of the run's bytes.
        match self.install(
            addr + done,
            (src + done) as *const u8,
            len - done,
            protect_mode(false),
        ) {
            Ok(()) => {
                if let Some(pool) = &self.shared.pool {
                    pool.discard(src + done, len - done);
                }
                Ok(done)
            }
            // The copy's `done()` counts what it installed from `addr + done`.
            Err(e) => Err((done, with_total(e, done))),
        }
    }

    /// Reserves `bytes` of the buffer for a fill of `region` from `page` on, reclaiming the
    /// oldest pages itself when the buffer is full. False if the region is being unmapped
    /// meanwhile, or if nothing could be freed for [`STALL_LIMIT`] (every resident page dirty
    /// with a failing write-back, say): the stall is then counted, logged and recorded for the
    /// region, and the caller gives the fill up for now (a faulting thread faults again), so
    /// no filler stays blocked for good and the buffer is never exceeded.
    pub(crate) fn reserve(&mut self, region: &RegionShared, bytes: usize, page: usize) -> bool {
        let shared = self.shared;
        let mut tries = 0u32;
        let mut backoff = Backoff::new();
        let mut stuck_since: Option<Instant> = None;
        loop {
            if let Some(reserved) = shared.buffer.try_reserve(bytes) {
                self.reserved(reserved, bytes);
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
            // Pool pages are the cheapest room to take back: nobody is waiting for them. (The
            // evictors trim the pool before the buffer is full, so this is a last resort.)
            if shared
                .pool
                .as_ref()
                .is_some_and(|pool| pool.trim(&shared.buffer, bytes) > 0)
            {
                bump(&shared.counters.pool_fault_trims, 1);
                continue;
            }
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
             evicted (dirty pages whose write-back fails?); the fill of page {page} is retried",
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

/// What one run adds to the fill counters.
struct FillCounts {
    fills: u64,
    bytes: u64,
    read_ahead: u64,
    prefetched: u64,
    eager_dirty: u64,
}

impl FillCounts {
    fn new(cause: Cause, n: usize, data_len: usize) -> FillCounts {
        let n = n as u64;
        FillCounts {
            fills: n,
            bytes: data_len as u64,
            read_ahead: if matches!(cause, Cause::Fault { .. }) {
                n - 1
            } else {
                0
            },
            prefetched: if cause == Cause::Prefetch { n } else { 0 },
            eager_dirty: match cause {
                Cause::Fault {
                    dirty: true, write, ..
                } => n - u64::from(write),
                _ => 0,
            },
        }
    }

    /// Adds the counts (`sign` 1) or takes them back (`sign` -1).
    fn add(&self, shared: &crate::engine::Shared, region: &RegionShared, sign: i64) {
        let both = |field: fn(&Counters) -> &AtomicU64, v: u64| {
            if v > 0 {
                for c in [&shared.counters, &region.counters] {
                    if sign > 0 {
                        field(c).fetch_add(v, Ordering::Relaxed);
                    } else {
                        field(c).fetch_sub(v, Ordering::Relaxed);
                    }
                }
            }
        };
        both(|c| &c.fills, self.fills);
        both(|c| &c.bytes_read, self.bytes);
        both(|c| &c.read_ahead_pages, self.read_ahead);
        both(|c| &c.prefetched_pages, self.prefetched);
        both(|c| &c.eager_dirty_pages, self.eager_dirty);
    }
}

/// Whether the install error `e`, of a copy out of the store's memory (`from_source`, see
/// `Store::copy_source`), says that memory cannot be read (`EFAULT`: the file shrank, or a
/// page of it cannot be read). If so, the region's fills read with `read_at` from then on,
/// which reports such failures the store's way (logged once per region).
fn source_unreadable(region: &RegionShared, from_source: bool, e: &UffdError) -> bool {
    let unreadable = from_source && e.errno() == Some(libc::EFAULT);
    if unreadable && !region.copy_source_failed.swap(true, Ordering::Relaxed) {
        log::warn!(
            "a copy from the store's memory into the region at {:#x} failed ({e}); its fills \
             read with read_at from now on",
            region.base
        );
    }
    unreadable
}

fn protect_mode(write_protect: bool) -> CopyMode {
    CopyMode {
        write_protect,
        ..CopyMode::default()
    }
}

/// `e` with its `done()` raised by the `before` bytes an earlier call had installed.
fn with_total(mut e: UffdError, before: usize) -> UffdError {
    if let UffdError::Ioctl { done, .. } = &mut e {
        *done += before;
    }
    e
}

/// Reads `buf` from `store` at `offset`, retrying transient errors.
fn read_with_retries(
    store: &dyn umap_store::Store,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), umap_store::StoreError> {
    let mut attempt = 1;
    loop {
        match crate::store_guard::read_at(store, buf, offset) {
            Err(e) if e.is_transient() && attempt < READ_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(Duration::from_micros(100 << attempt));
            }
            other => return other,
        }
    }
}

/// Install failures on demand, for tests: an install into a chosen range stops part-way with
/// `ENOMEM`, as `UFFDIO_COPY` (or `UFFDIO_MOVE`) does when the kernel cannot allocate a page.
#[cfg(test)]
pub(crate) mod inject {
    use std::collections::VecDeque;
    use std::ops::Range;

    use parking_lot::Mutex;

    use super::Filler;
    use crate::uffd::{CopyMode, UffdError};

    /// Which kind of install fails.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Op {
        /// A copy (`Filler::install`): from the scratch buffer, or of what a move left.
        Copy,
        /// A move of pool pages into the region (`Filler::install_moved`).
        Move,
    }

    /// The next installs that start inside `range` fail, one per entry of `ops` and in that
    /// order (an install of another kind meanwhile is not touched): each installs `after`
    /// bytes (waking their threads), pauses for `pause` (so that a woken thread gets to use
    /// them, as it may in a real failure), then fails.
    pub(crate) struct Fault {
        pub(crate) range: Range<usize>,
        pub(crate) ops: VecDeque<Op>,
        pub(crate) after: usize,
        pub(crate) pause: std::time::Duration,
    }

    /// The faults armed, each by its own test (tests of one process run at once: each
    /// arms and takes back only its own, by its range).
    static FAULTS: Mutex<Vec<Fault>> = Mutex::new(Vec::new());

    /// Arms `fault` (its range must not overlap another armed one).
    pub(crate) fn arm(fault: Fault) {
        FAULTS.lock().push(fault);
    }

    /// Takes back the fault armed for `range`, with the failures it did not cause yet.
    pub(crate) fn disarm(range: &Range<usize>) -> Option<Fault> {
        let mut faults = FAULTS.lock();
        let k = faults.iter().position(|f| f.range == *range)?;
        Some(faults.swap_remove(k))
    }

    /// Called before each copy (`op` [`Op::Copy`], from `src`) or move ([`Op::Move`], from
    /// the pool pages at `src`) of `len - done` bytes to `addr + done`: the failure to return
    /// instead, if one is due.
    pub(super) fn fail(
        filler: &Filler<'_>,
        op: Op,
        addr: usize,
        src: *const u8,
        len: usize,
        mode: CopyMode,
        done: usize,
    ) -> Option<UffdError> {
        let at = addr + done;
        let (n, pause) = {
            let mut faults = FAULTS.lock();
            let f = faults
                .iter_mut()
                .find(|f| f.range.contains(&at) && f.ops.front() == Some(&op))?;
            f.ops.pop_front();
            (f.after.min(len - done), f.pause)
        };
        let uffd = &filler.shared.uffd;
        if n > 0 {
            // SAFETY: as for the copy in `install` or the move in `install_moved`, which this
            // one stands in for (moves only whole system pages: `after` is a multiple).
            let installed = unsafe {
                match op {
                    Op::Copy => uffd.copy(at, src.add(done), n, mode),
                    Op::Move => {
                        crate::pool::move_all_mode(uffd, at, src.add(done) as usize, n, false)
                    }
                }
            };
            installed.ok()?;
        }
        std::thread::sleep(pause);
        Some(UffdError::Ioctl {
            op: match op {
                Op::Copy => "UFFDIO_COPY",
                Op::Move => "UFFDIO_MOVE",
            },
            addr,
            len,
            done: done + n,
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use umap_store::{MemStore, Store};

    use super::inject::{self, Fault, Op};
    use crate::page_table::{CLEAN, DIRTY};
    use crate::{MapOptions, Region, Umap};

    const PAGE: usize = 16 << 10;

    /// An engine of 16 KiB pages (four system pages each) and a writable region of 64 pages
    /// over a memory store of `byte`s.
    fn setup(byte: u8) -> (Umap, Arc<MemStore>, Region) {
        let umap = Umap::for_tests(PAGE);
        let store = Arc::new(MemStore::from_vec(vec![byte; 64 * PAGE]));
        let region = umap
            .map_shared(store.clone(), MapOptions::new().writable(true))
            .unwrap();
        (umap, store, region)
    }

    /// The next install into `page` of `region` stops after `after` bytes, 20 ms after it
    /// woke the threads waiting on them. Returns the page's range, to disarm it.
    fn fail_next_install(region: &Region, page: usize, after: usize) -> Range<usize> {
        let at = region.as_ptr() as usize + page * PAGE;
        inject::arm(Fault {
            range: at..at + PAGE,
            ops: [Op::Copy].into(),
            after,
            pause: Duration::from_millis(20),
        });
        at..at + PAGE
    }

    /// Whether the system page at `addr` is present (`/proc/self/pagemap`, bit 63).
    fn present(addr: usize) -> bool {
        crate::sys::pagemap_entry(addr) & (1 << 63) != 0
    }

    /// Waits (bounded) until `page` is in one of `states`; returns which.
    fn wait_for_any(region: &Region, page: usize, states: &[u8]) -> u8 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = region.shared.pages.state(page);
            if states.contains(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "page {page} is in state {state}, not one of {states:?}"
            );
            std::thread::yield_now();
        }
    }

    fn wait_for_state(region: &Region, page: usize, state: u8) {
        wait_for_any(region, page, &[state]);
    }

    /// A writable page whose install stopped half-way: its thread was woken for the first
    /// half and wrote there (before the filler saw the error). The page must be completed and kept (dirty), not given back as
    /// absent with its written half still mapped and never written back.
    #[test]
    fn a_writable_page_installed_in_part_is_completed_and_kept() {
        let (umap, store, region) = setup(1);
        let armed = fail_next_install(&region, 5, PAGE / 2);
        let base = region.as_ptr() as *mut u8;
        // SAFETY: inside the region, mapped readable and writable.
        unsafe { base.add(5 * PAGE).write(0x77) };
        wait_for_state(&region, 5, DIRTY);
        assert!(
            inject::disarm(&armed).is_some_and(|f| f.ops.is_empty()),
            "the failure happened"
        );
        drop(region);
        let mut bytes = vec![0u8; PAGE];
        store.read_at(&mut bytes, (5 * PAGE) as u64).unwrap();
        assert_eq!(bytes[0], 0x77, "the write reached the store");
        assert!(bytes[1..].iter().all(|&b| b == 1));
        assert_eq!(umap.stats().resident_bytes, 0);
    }

    /// A clean (write-protected) page whose install stopped half-way: nobody can have
    /// written it, so its installed half is dropped and it is filled again whole.
    #[test]
    fn a_protected_page_installed_in_part_is_dropped_and_filled_again() {
        let (umap, _store, region) = setup(3);
        let armed = fail_next_install(&region, 7, PAGE / 2);
        assert_eq!(region.as_slice()[7 * PAGE], 3);
        assert!(
            inject::disarm(&armed).is_some_and(|f| f.ops.is_empty()),
            "the failure happened"
        );
        // Given back with nothing of it left mapped outside the buffer's count (or, if this
        // thread's read came after the drop, filled again whole): never absent in the page
        // table while part of it is mapped.
        let state = wait_for_any(&region, 7, &[crate::page_table::ABSENT, CLEAN]);
        let sys = crate::sys::page_size();
        for k in 0..PAGE / sys {
            assert_eq!(
                present(region.as_ptr() as usize + 7 * PAGE + k * sys),
                state == CLEAN,
                "system page {k} of page 7 (state {state})"
            );
        }
        // Its thread was woken for the first half; the page is filled again when a later
        // access reaches the dropped half, and every byte reads the store's.
        assert!(region.as_slice()[7 * PAGE..8 * PAGE]
            .iter()
            .all(|&b| b == 3));
        wait_for_state(&region, 7, CLEAN);
        assert_eq!(
            umap.stats().resident_bytes as usize,
            region.shared.pages.count_resident() * PAGE,
            "the buffer counts exactly the resident pages"
        );
    }

    /// Pages of 64 KiB: the smallest that are recycled.
    const BIG: usize = 64 << 10;

    /// An engine that recycles pages (a 1 MiB buffer of 64 KiB pages, one filler) and a
    /// writable region of 64 pages of `byte`s without read-ahead, so that a write fault fills
    /// its page alone, from the pool when it has pages.
    fn recycling_setup(byte: u8) -> (Umap, Arc<MemStore>, LeakOnPanic) {
        let umap = Umap::builder()
            .buffer_size(1 << 20)
            .page_size(BIG)
            .fillers(1)
            .recycle_pages(true)
            .start()
            .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"));
        assert!(
            umap.shared().pool.is_some(),
            "no page pool: the kernel lacks UFFDIO_MOVE"
        );
        let store = Arc::new(MemStore::from_vec(vec![byte; 64 * BIG]));
        let region = umap
            .map_shared(
                store.clone(),
                MapOptions::new().writable(true).read_ahead(0),
            )
            .unwrap();
        (umap, store, LeakOnPanic(Some(region)))
    }

    /// Leaks its region if the test fails while it is mapped: a page left resident with
    /// system pages missing would make the unmap's write-back fault on it forever.
    struct LeakOnPanic(Option<Region>);

    impl std::ops::Deref for LeakOnPanic {
        type Target = Region;
        fn deref(&self) -> &Region {
            self.0.as_ref().expect("mapped")
        }
    }

    impl Drop for LeakOnPanic {
        fn drop(&mut self) {
            if std::thread::panicking() {
                std::mem::forget(self.0.take());
            }
        }
    }

    /// The byte written at the start of page `page` by [`feed_pool`].
    fn mark(page: usize) -> u8 {
        100 + page as u8
    }

    /// Writes [`mark`] at the start of pages 0, 1, ... (a write fault each: a dirty fill, of
    /// pool pages once there are some) until evictions have moved `pages` pages' worth of
    /// dirty pages into the pool and the evictors are done; returns how many pages it wrote.
    fn feed_pool(umap: &Umap, region: &Region, pages: usize) -> usize {
        let buffer = &umap.shared().buffer;
        let base = region.as_mut_ptr();
        let mut next = 0;
        while next < 48 {
            // SAFETY: inside the region, mapped readable and writable.
            unsafe { base.add(next * BIG).write(mark(next)) };
            next += 1;
            if next < 20 {
                continue;
            }
            // The evictors have had more than the buffer to evict: wait for their round to
            // end (its trim done, its slot given back) with pages in the pool. If the pool is
            // empty (the last fills took its pages), the next fill finds it short and makes
            // evictions feed it again.
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                if buffer.pooled() >= pages * BIG && buffer.at_or_below_low_water() {
                    std::thread::sleep(Duration::from_millis(20));
                    if buffer.pooled() >= pages * BIG {
                        return next;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        panic!(
            "no pool pages after writing {next} pages (pooled {})",
            buffer.pooled()
        );
    }

    /// Waits (bounded) until the buffer's and the pool's counts are exact: the region's
    /// resident pages are the buffer's region bytes, the pool's present pages are its pooled
    /// bytes and what its slots hold by their bookkeeping.
    fn assert_exact_accounting(umap: &Umap, region: &Region) {
        let shared = umap.shared();
        let pool = shared.pool.as_ref().expect("a pool");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pooled = shared.buffer.pooled();
            let (held, present) = pool.held_and_present();
            let resident = shared.buffer.resident();
            let pages = region.shared.pages.count_resident() * BIG;
            if (held, present, resident) == (Some(pooled), pooled, pages) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "buffer counts {resident} region bytes for {pages} resident; pooled {pooled}, \
                 slots hold {held:?}, {present} present in the pool"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Asserts that every system page of `page` is present.
    fn assert_whole(region: &Region, page: usize) {
        let sys = crate::sys::page_size();
        for k in 0..BIG / sys {
            assert!(
                present(region.as_ptr() as usize + page * BIG + k * sys),
                "system page {k} of page {page} is missing"
            );
        }
    }

    /// Unmaps the region (writing it back) and checks the store: page `page` holds `byte` at
    /// `offset`, every page fed to the pool its mark, and every other byte the store's `fill`.
    fn assert_stored(
        mut region: LeakOnPanic,
        store: &MemStore,
        fed: usize,
        page: usize,
        (offset, byte): (usize, u8),
        fill: u8,
    ) {
        region.0.take().expect("mapped").unmap().unwrap();
        let mut bytes = vec![0u8; 64 * BIG];
        store.read_at(&mut bytes, 0).unwrap();
        for (p, data) in bytes.chunks(BIG).enumerate() {
            for (i, &b) in data.iter().enumerate() {
                let want = match (p, i) {
                    _ if (p, i) == (page, offset) => byte,
                    (p, 0) if p < fed => mark(p),
                    _ => fill,
                };
                assert_eq!(b, want, "byte {i} of page {p}");
            }
        }
    }

    /// The pool fill of `page` (for a write at `offset` of it, from this thread) meets the
    /// failures `ops`, each after `after` bytes: the fill must end with the page whole and
    /// dirty, holding the write, and the buffer's and the pool's counts exact. The pool holds
    /// at least `pool_pages` pages when the fill starts: one per fill of the page that takes
    /// pool pages (a fill given up drops those it took, and the fill after it must find more).
    fn pool_fill_fails(
        ops: &[Op],
        after: usize,
        pause: Duration,
        offset: usize,
        pool_pages: usize,
    ) {
        let (umap, store, region) = recycling_setup(9);
        let fed = feed_pool(&umap, &region, pool_pages);
        let page = 60;
        let at = region.as_ptr() as usize + page * BIG;
        inject::arm(Fault {
            range: at..at + BIG,
            ops: ops.iter().copied().collect(),
            after,
            pause,
        });
        let recycled = umap.stats().recycled_bytes;
        // SAFETY: inside the region, mapped readable and writable.
        unsafe { region.as_mut_ptr().add(page * BIG + offset).write(0x77) };
        wait_for_state(&region, page, DIRTY);
        let left = inject::disarm(&(at..at + BIG)).map(|f| f.ops);
        assert_eq!(left, Some([].into()), "every failure happened");
        assert!(
            umap.stats().recycled_bytes > recycled,
            "the fill took pool pages"
        );
        assert_whole(&region, page);
        assert_exact_accounting(&umap, &region);
        assert_stored(region, &store, fed, page, (offset, 0x77), 9);
        assert_eq!(umap.stats().resident_bytes, 0);
        let pool = umap.shared().pool.as_ref().expect("a pool");
        let pooled = umap.shared().buffer.pooled();
        assert_eq!(pool.held_and_present(), (Some(pooled), pooled));
    }

    /// A move of pool pages into the region stops half-way, after waking the writer, which
    /// writes the moved half: the rest is copied, the page kept (dirty) with the write.
    #[test]
    fn a_page_moved_in_part_gets_the_rest_copied_and_is_kept() {
        pool_fill_fails(&[Op::Move], BIG / 2, Duration::from_millis(20), 8, 1);
    }

    /// A move stops after a quarter of the page, and the copy of the rest after another
    /// quarter, whose writer (woken by the copy) writes it: the page is completed and kept.
    #[test]
    fn a_page_moved_then_copied_in_part_is_completed_and_kept() {
        pool_fill_fails(
            &[Op::Move, Op::Copy],
            BIG / 4,
            Duration::from_millis(20),
            BIG / 4 + 8,
            1,
        );
    }

    /// A move and every copy after it (the filler's own and the attempts to complete the
    /// page) stop after one system page each: the installed part is dropped and the page
    /// given back, filled again when the writer, waiting on its second half (never installed,
    /// so never woken for it), is woken to fault again. Nothing of the run's pool pages or
    /// buffer bytes is lost on the way.
    #[test]
    fn a_page_moved_in_part_that_cannot_be_completed_is_filled_again() {
        let sys = crate::sys::page_size();
        let mut ops = vec![Op::Move, Op::Copy];
        ops.extend([Op::Copy; super::INSTALL_ATTEMPTS as usize]);
        assert!((ops.len() * sys) < BIG, "the page stays installed in part");
        // Two pool pages: the fill that gives up drops the one it took, and the fill after it
        // takes the other (with one, it copies from the store and recycles nothing).
        pool_fill_fails(&ops, sys, Duration::from_millis(1), BIG / 2, 2);
    }
}
