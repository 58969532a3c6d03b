//! Pinned pages: ranges of a region that are filled once and never evicted
//! ([`Region::pin`](crate::Region::pin), LLNL umap's `umap_fetch_and_pin`).
//!
//! - Each region keeps its pinned page ranges ([`Pins`]); the buffer counts the pinned bytes
//!   of all regions. A pin is refused if the pinned bytes would exceed [`limit`]: the
//!   low-water mark (so evictors can always get down to it by evicting unpinned pages), and
//!   at most the buffer less two pages of the largest page size (so faults always have room).
//! - Evictors and `DontNeed` claim pages as usual, then give back the pinned ones they
//!   claimed ([`give_back_pinned`]); a pinned page leaves the eviction queue when it is popped.
//!   Dirty pinned pages are written back by flushes and unmap, and stay resident.
//! - Ordering: the pinner adds the range and then (after a `SeqCst` fence) checks that every
//!   page is resident; an evictor claims a page and then (after a `SeqCst` fence) checks
//!   whether it is pinned. So either the evictor sees the pin and gives the page back, or the
//!   pinner sees the page being evicted (or gone) and fills it again. Once a pin has returned,
//!   none of its pages is evicted.

use std::ops::Range;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::backoff::Backoff;
use crate::buffer::PageRef;
use crate::config::MIN_BUFFER_PAGES;
use crate::engine::{Shared, Umap};
use crate::error::{Error, Result};
use crate::page_table::{is_resident, ABSENT, CLEAN, DIRTY, EVICTING, POISONED, WRITEBACK};
use crate::region::RegionShared;

/// A region's pinned page ranges.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    /// Whether any page is pinned: evictors look no further when it is not.
    any: AtomicBool,
    /// Sorted, disjoint, non-adjacent page ranges.
    ranges: RwLock<Vec<Range<usize>>>,
}

impl Pins {
    /// Whether `page` is pinned. Call after a `SeqCst` fence that follows the claim of the
    /// page (see the module documentation).
    pub(crate) fn contains(&self, page: usize) -> bool {
        if !self.any.load(Ordering::SeqCst) {
            return false;
        }
        let ranges = self.ranges.read();
        let i = ranges.partition_point(|r| r.end <= page);
        ranges.get(i).is_some_and(|r| r.start <= page)
    }

    /// Whether any page is pinned.
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::SeqCst)
    }

    /// How many pages are pinned.
    pub(crate) fn pages(&self) -> usize {
        self.ranges.read().iter().map(|r| r.len()).sum()
    }

    /// Pins `pages` if `admit(newly pinned pages)` agrees (it accounts for them); returns the
    /// parts of `pages` that were not pinned before (so that a pin that fails later undoes
    /// only what it added). The ranges are locked meanwhile, so concurrent pins of
    /// overlapping ranges count each page once.
    fn add(
        &self,
        pages: Range<usize>,
        admit: impl FnOnce(usize) -> Result<()>,
    ) -> Result<Vec<Range<usize>>> {
        let mut ranges = self.ranges.write();
        // The gaps of `pages` between the (sorted, disjoint) pinned ranges.
        let mut gaps = Vec::new();
        let mut at = pages.start;
        for r in ranges
            .iter()
            .filter(|r| r.end > pages.start && r.start < pages.end)
        {
            if r.start > at {
                gaps.push(at..r.start);
            }
            at = at.max(r.end);
        }
        if at < pages.end {
            gaps.push(at..pages.end);
        }
        admit(gaps.iter().map(|g| g.len()).sum())?;
        let (mut start, mut end) = (pages.start, pages.end);
        ranges.retain(|r| {
            if r.end < start || r.start > end {
                return true;
            }
            // Overlapping or adjacent: merged into the new range.
            start = start.min(r.start);
            end = end.max(r.end);
            false
        });
        let at = ranges.partition_point(|r| r.end < start);
        ranges.insert(at, start..end);
        self.any.store(true, Ordering::SeqCst);
        Ok(gaps)
    }

    /// Unpins `pages`; returns how many pages were pinned.
    fn remove(&self, pages: Range<usize>) -> usize {
        let mut ranges = self.ranges.write();
        let mut removed = 0;
        let mut kept = Vec::with_capacity(ranges.len() + 1);
        for r in ranges.drain(..) {
            let (lo, hi) = (r.start.max(pages.start), r.end.min(pages.end));
            if lo >= hi {
                kept.push(r);
                continue;
            }
            removed += hi - lo;
            if r.start < lo {
                kept.push(r.start..lo);
            }
            if hi < r.end {
                kept.push(hi..r.end);
            }
        }
        *ranges = kept;
        self.any.store(!ranges.is_empty(), Ordering::SeqCst);
        removed
    }
}

/// The most bytes that may be pinned across the engine (see the module documentation).
pub(crate) fn limit(shared: &Shared, region: &RegionShared) -> usize {
    let largest = shared
        .registry
        .all()
        .iter()
        .map(|r| r.page_size)
        .chain([region.page_size, shared.config.page_size])
        .max()
        .unwrap_or(region.page_size);
    let capacity = shared.buffer.capacity();
    shared
        .buffer
        .low_water()
        .min(capacity.saturating_sub(MIN_BUFFER_PAGES * largest))
}

/// Pins `pages` of `region`, fills them, and returns once every one is resident.
pub(crate) fn pin(
    shared: &Shared,
    engine: &Umap,
    region: &Arc<RegionShared>,
    pages: Range<usize>,
) -> Result<()> {
    let ps = region.page_size;
    let limit = limit(shared, region);
    let added = region.pins.add(pages.clone(), |new| {
        shared
            .buffer
            .try_pin(new * ps, limit)
            .map_err(|pinned| Error::PinLimit {
                bytes: new * ps,
                pinned,
                limit,
            })
    })?;
    // Pairs with the fence in `give_back_pinned` (module documentation).
    fence(Ordering::SeqCst);
    match fill(engine, region, pages.clone()) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Undo only this pin: pages pinned before it stay pinned.
            for gap in added {
                unpin(shared, region, gap);
            }
            Err(e)
        }
    }
}

/// Fills `pages` until all are resident at once (pages being evicted when the pin began are
/// filled again).
fn fill(engine: &Umap, region: &Arc<RegionShared>, pages: Range<usize>) -> Result<()> {
    let mut backoff = Backoff::new();
    loop {
        let mut missing: Vec<Range<usize>> = Vec::new();
        let mut in_transition = false;
        for p in pages.clone() {
            let state = region.pages.state(p);
            if is_resident(state) {
                continue;
            }
            if state == POISONED {
                return Err(Error::Poisoned {
                    offset: p * region.page_size,
                });
            }
            // Being evicted (begun before the pin) or filled by a fault: it settles soon.
            in_transition |= state != ABSENT;
            match missing.last_mut() {
                Some(run) if run.end == p => run.end = p + 1,
                _ => missing.push(p..p + 1),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if in_transition {
            backoff.wait();
        }
        for run in missing {
            engine.prefetch(region, run).wait()?;
        }
    }
}

/// Unpins `pages` of `region`, gives their bytes back to the buffer and puts the resident
/// ones back in the eviction queue.
pub(crate) fn unpin(shared: &Shared, region: &Arc<RegionShared>, pages: Range<usize>) {
    let removed = region.pins.remove(pages.clone());
    shared.buffer.unpin(removed * region.page_size);
    let now = Instant::now();
    // Pages that were popped from the queue while pinned are queued again (a page may end up
    // queued twice, which the queue tolerates: a stale entry is skipped).
    shared.buffer.push_run(
        pages
            .filter(|&p| is_resident(region.pages.state(p)))
            .map(|page| PageRef::new(region.clone(), page, now)),
    );
}

/// Evictor side: of the pages just claimed for eviction (`evicting`, state `Evicting`) and
/// for write-back before eviction (`writing`, state `WriteBack`), gives the pinned ones back
/// (`Clean` and `Dirty` again) and removes them from the lists. Their queue entries are not
/// restored: a pinned page leaves the queue.
pub(crate) fn give_back_pinned(
    shared: &Shared,
    region: &RegionShared,
    evicting: &mut Vec<usize>,
    writing: &mut Vec<usize>,
) {
    // Pairs with the fence in `pin` (module documentation).
    fence(Ordering::SeqCst);
    if !region.pins.any() {
        return;
    }
    let give_back = |pages: &mut Vec<usize>, from: u8, to: u8| {
        pages.retain(|&p| {
            if !region.pins.contains(p) {
                return true;
            }
            if region.pages.release(p, from, to) {
                shared.wake(region.page_addr(p), region.page_size);
            }
            false
        });
    };
    give_back(evicting, EVICTING, CLEAN);
    give_back(writing, WRITEBACK, DIRTY);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapOptions;
    use umap_store::MemStore;

    fn ranges(p: &Pins) -> Vec<Range<usize>> {
        p.ranges.read().clone()
    }

    #[test]
    fn ranges_merge_split_and_count_each_page_once() {
        let p = Pins::default();
        assert!(!p.any() && !p.contains(0));
        assert_eq!(p.add(2..5, |_| Ok(())).unwrap(), vec![2..5]);
        assert_eq!(p.add(8..10, |_| Ok(())).unwrap(), vec![8..10]);
        assert_eq!(
            p.add(4..9, |_| Ok(())).unwrap(),
            vec![5..8],
            "5, 6, 7 are new"
        );
        assert_eq!(ranges(&p), vec![2..10]);
        assert_eq!(p.add(10..11, |_| Ok(())).unwrap(), vec![10..11]);
        assert_eq!(ranges(&p), vec![2..11], "adjacent ranges merge");
        assert_eq!(p.add(0..1, |_| Ok(())).unwrap(), vec![0..1]);
        assert_eq!(ranges(&p), vec![0..1, 2..11]);
        assert_eq!(p.pages(), 10);
        assert!(p.contains(0) && !p.contains(1) && p.contains(2) && p.contains(10));
        assert!(!p.contains(11));
        assert_eq!(p.remove(4..6), 2);
        assert_eq!(ranges(&p), vec![0..1, 2..4, 6..11]);
        assert_eq!(p.remove(0..100), 8);
        assert!(!p.any() && !p.contains(2));
    }

    #[test]
    fn a_refused_pin_changes_nothing() {
        let p = Pins::default();
        p.add(0..4, |_| Ok(())).unwrap();
        let err = p.add(2..8, |new| {
            assert_eq!(new, 4);
            Err(Error::invalid("test", 0, "refused"))
        });
        assert!(err.is_err());
        assert_eq!(ranges(&p), vec![0..4]);
    }

    /// An eviction that claimed a page before the pin: the pin waits for it to end, then
    /// fills the page again (the check after the pin's fence).
    #[test]
    fn a_pin_outlasts_an_eviction_that_began_before_it() {
        let ps = crate::sys::page_size();
        let umap = Umap::builder()
            .buffer_size(1 << 20)
            .page_size(ps)
            .fillers(1)
            .start()
            .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"));
        let region = umap
            .map(MemStore::from_vec(vec![7u8; 64 * ps]), MapOptions::new())
            .unwrap();
        let pages = region.shared.clone();
        assert_eq!(region.as_slice()[3 * ps], 7);
        // This thread plays an evictor that claimed page 3 just before the pin. The filler
        // marks the page Clean just after waking the reader: wait for that (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pages.pages.begin_evict(3) {
            assert!(
                std::time::Instant::now() < deadline,
                "page 3 never settled as Clean (state {})",
                pages.pages.state(3)
            );
            std::thread::yield_now();
        }
        std::thread::scope(|s| {
            let pinner = s.spawn(|| region.pin(0, 8 * ps));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !pinner.is_finished(),
                "the pin returned while page 3 was being evicted"
            );
            let shared = umap.shared();
            // SAFETY: page 3 is ours (Evicting) and clean: its bytes are in the store.
            unsafe { shared.dropper.drop_ranges(&[(pages.page_addr(3), ps)]) }.unwrap();
            if pages.pages.finish_evict(3) {
                shared.wake(pages.page_addr(3), ps);
            }
            shared.buffer.release(ps);
            pinner.join().unwrap().unwrap();
        });
        assert!(is_resident(pages.pages.state(3)));
        let resident = crate::sys::resident_pages(region.as_ptr() as usize, 8 * ps).unwrap();
        assert_eq!(resident, 8);
        assert_eq!(region.pinned_bytes(), 8 * ps);
    }
}
