//! Write-back: putting dirty pages' bytes into the store, for evictors and flushes alike.
//!
//! The protocol (invariant 2 of the design): the caller owns each page in state `WriteBack`;
//! the page is write-protected *first* (one `UFFDIO_WRITEPROTECT` per group of runs in one
//! [`CLUSTER_BYTES`] window, which also flushes the TLBs, so no CPU can still be writing it),
//! and only then are its bytes
//! read for the store (one store write per run). A thread that writes to the page meanwhile
//! blocks in a write-protect fault, which a filler parks on the page; the owner wakes it when
//! it leaves `WriteBack`, and it then finds the page `Clean` (flush: it faults again and makes
//! it `Dirty`) or `Absent` (eviction: it is filled again with the bytes just written). No write
//! is lost and nothing is written back half-updated.
//!
//! A store write that fails leaves the run `Dirty` and writable again: nothing is dropped.

use std::ops::Range;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::page_table::{CLEAN, DIRTY, FILLING, UNPROTECTING, WRITEBACK};
use crate::region::RegionShared;
use crate::report::ErrorKind;
use crate::stats::bump_both;

/// Attempts at a store write that fails with a transient error.
const WRITE_ATTEMPTS: u32 = 3;

/// The most bytes a flush writes in one store call: long enough to amortise the call, short
/// enough that writers blocked on the run wait for one bounded write.
const FLUSH_RUN_BYTES: usize = 4 << 20;

/// The write-protect window: the pages a write-back is given (an eviction batch, a flush's
/// pending pages) are write-protected with one `UFFDIO_WRITEPROTECT` call per group of pages
/// that are adjacent or lie in one window of this many bytes of address space (aligned, so a
/// window is one page-table page), not one call per run of adjacent pages. Each call flushes
/// the TLBs of every CPU running the process, an inter-processor interrupt that costs more
/// than the rest of writing back a 4 KiB page: 31% of all CPU time of random 4 KiB writes
/// through a memory store went to per-run protects' TLB shootdowns. Evictions gather the
/// dirty pages of a window to make the most of it (`evictor::Cluster`).
pub(crate) const CLUSTER_BYTES: usize = 2 << 20;

/// Writes back `pages` of `region` (ascending, each owned by the caller in state `WriteBack`),
/// one run of adjacent pages at a time, and calls `done(run, result)` for every run. On
/// success the run's pages are still `WriteBack` (protected, their bytes in the store) and the
/// caller moves them on; on failure they are already `Dirty` and writable again, and any
/// threads parked on them woken.
///
/// Pages are write-protected first, one call per group of runs in one [`CLUSTER_BYTES`]
/// window, from the group's first page to its last. The span between the runs may hold
/// pages that are not the caller's: `Absent` ones (nothing is protected there: regions do not
/// use `UFFD_FEATURE_WP_UNPOPULATED`, so no markers are installed), `Clean` ones (protected
/// already), and `Dirty` (or `Filling`, `Unprotecting`) pages of other threads, which end up
/// protected while their state says writable. That is safe: a write to such a page raises a
/// write-protect fault, which the fault path answers by unprotecting a `Dirty` page (as for a
/// writer that found it protected), so the page costs at most one extra fault and no write is
/// lost; and no page becomes writable here. If the group's call fails, each run is protected
/// on its own.
///
/// The caller is inside the region's gate.
pub(crate) fn write_back(
    shared: &Shared,
    region: &RegionShared,
    pages: &[usize],
    mut done: impl FnMut(&[usize], Result<()>),
) {
    let window = |p: usize| region.page_addr(p) / CLUSTER_BYTES;
    let mut start = 0;
    while start < pages.len() {
        let mut end = start + 1;
        while end < pages.len()
            && (pages[end] == pages[end - 1] + 1 || window(pages[end]) == window(pages[end - 1]))
        {
            end += 1;
        }
        let group = &pages[start..end];
        // One run protects itself in `write_run`, as before windows.
        let protected =
            group.windows(2).any(|w| w[1] != w[0] + 1) && protect_span(shared, region, group);
        let mut run_start = start;
        while run_start < end {
            let mut run_end = run_start + 1;
            while run_end < end && pages[run_end] == pages[run_end - 1] + 1 {
                run_end += 1;
            }
            let run = &pages[run_start..run_end];
            let result = write_run(shared, region, run, !protected);
            if result.is_err() {
                restore_dirty(shared, region, run);
            }
            done(run, result);
            run_start = run_end;
        }
        start = end;
    }
}

#[cfg(test)]
thread_local! {
    /// Makes [`protect_span`] fail on this thread (tests of the per-run fallback).
    static FAIL_SPANS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// How many spans [`FAIL_SPANS`] made fail.
    static FAILED_SPANS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Write-protects `pages[0]` to the last of `pages` with one call; whether it worked.
fn protect_span(shared: &Shared, region: &RegionShared, pages: &[usize]) -> bool {
    #[cfg(test)]
    if FAIL_SPANS.with(std::cell::Cell::get) {
        FAILED_SPANS.with(|n| n.set(n.get() + 1));
        return false;
    }
    let addr = region.page_addr(pages[0]);
    let span = (pages[pages.len() - 1] + 1 - pages[0]) * region.page_size;
    match shared.uffd.writeprotect_retrying(addr, span, true) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("cannot write-protect {span} bytes at {addr:#x} at once: {e}");
            false
        }
    }
}

/// Write-protects the run (unless `protect` is false: the caller did), then writes its
/// bytes to the store.
fn write_run(shared: &Shared, region: &RegionShared, run: &[usize], protect: bool) -> Result<()> {
    let (first, last) = (run[0], run[run.len() - 1]);
    let addr = region.page_addr(first);
    let span = (last + 1 - first) * region.page_size;
    if protect {
        shared.uffd.writeprotect_retrying(addr, span, true)?;
    }
    // Bytes past the region's length are the zero tail of the last page: never written.
    let data_len = (last - first) * region.page_size + region.page_data_len(last);
    // SAFETY: the run's pages are resident (owned in WriteBack, so nobody drops them), lie in
    // the region's range which the caller's gate keeps mapped, and are write-protected since
    // the call above returned, or the caller's (with the TLBs flushed), so nothing changes
    // these bytes while
    // the store reads them, like the kernel reading an mmap'd buffer for write(2).
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, data_len) };
    let offset = region.page_store_offset(first);
    let mut attempt = 1;
    loop {
        match crate::store_guard::write_at(&*region.store, bytes, offset) {
            Ok(()) => break,
            Err(e) if e.is_transient() && attempt < WRITE_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(Duration::from_micros(100 << attempt));
            }
            Err(e) => {
                bump_both(&shared.counters, &region.counters, |c| &c.write_errors, 1);
                region.errors.record(
                    &shared.counters,
                    ErrorKind::Write,
                    (first * region.page_size, data_len, offset),
                    e.raw_os_error(),
                    &e,
                );
                log::error!(
                    "store write of {} page(s) ({data_len} bytes at offset {offset}) failed; \
                     they stay dirty and resident: {e}",
                    run.len()
                );
                return Err(Error::Store(e));
            }
        }
    }
    bump_both(
        &shared.counters,
        &region.counters,
        |c| &c.pages_written,
        run.len() as u64,
    );
    bump_both(
        &shared.counters,
        &region.counters,
        |c| &c.bytes_written,
        data_len as u64,
    );
    Ok(())
}

/// After a failed write-back: lifts the protection and makes the run `Dirty` again.
fn restore_dirty(shared: &Shared, region: &RegionShared, run: &[usize]) {
    let addr = region.page_addr(run[0]);
    let span = run.len() * region.page_size;
    if let Err(e) = shared.uffd.writeprotect_retrying(addr, span, false) {
        // The pages stay protected: a writer faults, and the filler unprotects them then.
        log::error!("cannot unprotect {span} bytes at {addr:#x} after a failed write-back: {e}");
    }
    for &p in run {
        if region.pages.release(p, WRITEBACK, DIRTY) {
            shared.wake(region.page_addr(p), region.page_size);
        }
    }
}

/// Writes back every dirty page among `pages` of `region` and leaves them resident, clean
/// and protected; waits for pages that are in transition (their data may be newer than the
/// store: a fill for a write, an unprotect, another thread's write-back) and writes them too
/// if they end up dirty. Then syncs the store. Returns the first error; runs that fail stay
/// dirty.
///
/// The caller keeps the region mapped (is inside its gate, or has closed it). No lock is held:
/// pages are owned one by one through the page table, so faults, fills and evictions of other
/// pages go on meanwhile.
pub(crate) fn flush_pages(
    shared: &Shared,
    region: &RegionShared,
    pages: Range<usize>,
) -> Result<()> {
    let mut flush = Flush {
        shared,
        region,
        max_run: (FLUSH_RUN_BYTES / region.page_size).max(1),
        run: Vec::new(),
        first_error: None,
    };
    let mut busy = Vec::new();
    for p in pages {
        if region.pages.claim(p, DIRTY, WRITEBACK) {
            flush.push(p);
            continue;
        }
        // Classify the page *before* writing the pending run (which takes time): a page in
        // transition now may be dirty by the time the write returns, and must not be missed.
        if matches!(
            region.pages.state(p),
            FILLING | UNPROTECTING | WRITEBACK | DIRTY
        ) {
            busy.push(p);
        }
        flush.gap(p);
    }
    flush.write_run();
    for p in busy {
        let mut backoff = Backoff::new();
        loop {
            match region.pages.state(p) {
                FILLING | UNPROTECTING | WRITEBACK => backoff.wait(),
                DIRTY => {
                    if region.pages.claim(p, DIRTY, WRITEBACK) {
                        flush.push(p);
                        flush.write_run();
                        break;
                    }
                }
                _ => break,
            }
        }
    }
    bump_both(&shared.counters, &region.counters, |c| &c.flushes, 1);
    if let Some(e) = flush.first_error {
        return Err(e);
    }
    crate::store_guard::sync(&*region.store).map_err(|e| {
        region.errors.record(
            &shared.counters,
            ErrorKind::Sync,
            (0, 0, region.store_offset),
            e.raw_os_error(),
            &e,
        );
        log::error!("store sync after a flush of {region:?} failed: {e}");
        Error::Store(e)
    })
}

/// A flush in progress: the pages it owns in `WriteBack` and has yet to write (adjacent, or
/// in one [`CLUSTER_BYTES`] window of address space, so that [`write_back`] protects them
/// with one call), and the first error.
struct Flush<'a> {
    shared: &'a Shared,
    region: &'a RegionShared,
    max_run: usize,
    run: Vec<usize>,
    first_error: Option<Error>,
}

impl Flush<'_> {
    fn window(&self, page: usize) -> usize {
        self.region.page_addr(page) / CLUSTER_BYTES
    }

    /// Adds `page` (owned in `WriteBack`, above the pending pages), first writing the pending
    /// pages if they are full or `page` is neither next to them nor in their window.
    fn push(&mut self, page: usize) {
        if let Some(&last) = self.run.last() {
            debug_assert!(last < page);
            if self.run.len() >= self.max_run
                || (last + 1 != page && self.window(last) != self.window(page))
            {
                self.write_run();
            }
        }
        self.run.push(page);
    }

    /// `page`, above the pending pages, is not dirty: writes them if it leaves their window.
    fn gap(&mut self, page: usize) {
        if self
            .run
            .last()
            .is_some_and(|&last| self.window(last) != self.window(page))
        {
            self.write_run();
        }
    }

    /// Writes the pending pages back and leaves them `Clean` (or `Dirty`, on error).
    fn write_run(&mut self) {
        if self.run.is_empty() {
            return;
        }
        let (shared, region) = (self.shared, self.region);
        let first_error = &mut self.first_error;
        let done = |written: &[usize], result: Result<()>| match result {
            Ok(()) => {
                for &p in written {
                    if region.pages.release(p, WRITEBACK, CLEAN) {
                        shared.wake(region.page_addr(p), region.page_size);
                    }
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        };
        write_back(shared, region, &self.run, done);
        self.run.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use umap_store::{MemStore, Store};

    use super::*;
    use crate::{MapOptions, Umap};

    /// Whether the system page at `addr` is present and write-protected through userfaultfd
    /// (`/proc/self/pagemap`: bit 63 present, bit 57 uffd-wp).
    fn uffd_protected(addr: usize) -> bool {
        let entry = crate::sys::pagemap_entry(addr);
        entry & (1 << 63) != 0 && entry & (1 << 57) != 0
    }

    /// A group of runs in one window whose single write-protect fails is protected run by
    /// run instead: every page is protected before its bytes are read, and written.
    #[test]
    fn a_failed_window_protect_falls_back_to_one_call_per_run() {
        let ps = crate::sys::page_size();
        let umap = Umap::for_tests(ps);
        let store = Arc::new(MemStore::from_vec(vec![0u8; 64 * ps]));
        let region = umap
            .map_shared(store.clone(), MapOptions::new().writable(true))
            .unwrap();
        let shared_region = region.shared.clone();
        // Three runs in one window: pages 0, 2-3 and 6, written; pages between stay absent.
        let written = [0usize, 2, 3, 6];
        let base = region.as_ptr() as *mut u8;
        for &p in &written {
            // SAFETY: the page lies in the region, mapped readable and writable.
            unsafe { base.add(p * ps).write_bytes(0xa0 + p as u8, ps) };
        }
        // Each page goes Dirty once its filler is done with it; this thread then claims it,
        // as an evictor would.
        let deadline = Instant::now() + Duration::from_secs(10);
        for &p in &written {
            while !shared_region.pages.claim(p, DIRTY, WRITEBACK) {
                assert!(
                    Instant::now() < deadline,
                    "page {p} never settled as Dirty (state {})",
                    shared_region.pages.state(p)
                );
                std::thread::yield_now();
            }
        }
        // Should an assertion fail, the pages go back to Dirty, so that unmapping the region
        // does not wait for them forever.
        struct Owned<'a>(&'a RegionShared, &'a [usize]);
        impl Drop for Owned<'_> {
            fn drop(&mut self) {
                for &p in self.1 {
                    if self.0.pages.state(p) == WRITEBACK {
                        self.0.pages.release(p, WRITEBACK, DIRTY);
                    }
                }
            }
        }
        let owned = Owned(&shared_region, &written);
        let shared = umap.shared();
        FAIL_SPANS.with(|f| f.set(true));
        let mut runs = Vec::new();
        write_back(shared, &shared_region, &written, |run, result| {
            runs.push((run.to_vec(), result.is_ok()));
        });
        FAIL_SPANS.with(|f| f.set(false));
        assert_eq!(
            FAILED_SPANS.with(|n| n.get()),
            1,
            "one window, one failed protect"
        );
        assert_eq!(
            runs,
            [(vec![0], true), (vec![2, 3], true), (vec![6], true)],
            "one write per run"
        );
        for &p in &written {
            assert!(
                uffd_protected(region.as_ptr() as usize + p * ps),
                "page {p} was written back without being write-protected"
            );
            let mut bytes = vec![0u8; ps];
            store.read_at(&mut bytes, (p * ps) as u64).unwrap();
            assert!(
                bytes.iter().all(|&b| b == 0xa0 + p as u8),
                "page {p} in the store"
            );
        }
        for p in [1, 4, 5] {
            assert_eq!(shared_region.pages.state(p), crate::page_table::ABSENT);
        }
        for &p in &written {
            shared_region.pages.release(p, WRITEBACK, CLEAN);
        }
        drop(owned);
        // The pages are Clean and protected: writing one again takes the usual fault.
        // SAFETY: as above.
        unsafe { base.add(2 * ps).write(0x55) };
        drop(region);
        let mut bytes = vec![0u8; ps];
        store.read_at(&mut bytes, (2 * ps) as u64).unwrap();
        assert_eq!(
            bytes[0], 0x55,
            "the write after the write-back reached the store"
        );
    }
}
