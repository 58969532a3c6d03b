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
//! - Overlapping pins: each pin holds its own pages ([`Pins`]), so a pin whose fill fails
//!   unpins only the pages no other pin holds; a pin of pages another pin is still filling
//!   keeps them pinned when that one fails. `unpin` releases its pages from every hold.

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
///
/// Each pin holds its own pages: while it fills them it holds them alone (a *pending* hold,
/// known by its [`PinId`]); once it has returned they join the region's *held* pages. A pin
/// that fails drops its own pending hold only, so pages that another pin holds (returned or
/// still filling) stay pinned however the two overlap. [`Pins::remove`] (the public
/// `unpin`) releases its pages from every hold. A page counts once however many holds cover
/// it.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    /// Whether any page is pinned: evictors look no further when it is not.
    any: AtomicBool,
    holds: RwLock<Holds>,
}

/// The holds of a region's pins (see [`Pins`]).
#[derive(Debug, Default)]
struct Holds {
    /// Every pinned page, the union of `held` and `pending`: sorted, disjoint, non-adjacent.
    pinned: Vec<Range<usize>>,
    /// Pages of pins that returned: sorted, disjoint, non-adjacent.
    held: Vec<Range<usize>>,
    /// Pages of pins still filling, by pin (a pin may have several ranges, split by `remove`).
    pending: Vec<(u64, Range<usize>)>,
    next_id: u64,
}

impl Holds {
    fn any(&self) -> bool {
        !self.pinned.is_empty()
    }

    /// Recomputes `pinned` from the holds; returns the pages that it lost.
    fn recompute(&mut self) -> Vec<Range<usize>> {
        let pinned = merge(
            self.held
                .iter()
                .cloned()
                .chain(self.pending.iter().map(|(_, r)| r.clone())),
        );
        let mut lost = self.pinned.clone();
        for r in &pinned {
            lost = subtract(&lost, r.clone());
        }
        self.pinned = pinned;
        lost
    }
}

/// A pin that has not returned yet: see [`Pins::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PinId(u64);

/// `ranges` sorted, with overlapping and adjacent ones merged.
fn merge(ranges: impl Iterator<Item = Range<usize>>) -> Vec<Range<usize>> {
    let mut all: Vec<Range<usize>> = ranges.filter(|r| !r.is_empty()).collect();
    all.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(all.len());
    for r in all {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// The parts of `ranges` (sorted, disjoint) outside `cut`, in order.
fn subtract(ranges: &[Range<usize>], cut: Range<usize>) -> Vec<Range<usize>> {
    let mut kept = Vec::with_capacity(ranges.len() + 1);
    for r in ranges {
        let (lo, hi) = (r.start.max(cut.start), r.end.min(cut.end));
        if lo >= hi {
            kept.push(r.clone());
            continue;
        }
        if r.start < lo {
            kept.push(r.start..lo);
        }
        if hi < r.end {
            kept.push(hi..r.end);
        }
    }
    kept
}

fn count(ranges: &[Range<usize>]) -> usize {
    ranges.iter().map(|r| r.len()).sum()
}

impl Pins {
    /// Whether `page` is pinned. Call after a `SeqCst` fence that follows the claim of the
    /// page (see the module documentation).
    pub(crate) fn contains(&self, page: usize) -> bool {
        if !self.any.load(Ordering::SeqCst) {
            return false;
        }
        let holds = self.holds.read();
        let i = holds.pinned.partition_point(|r| r.end <= page);
        holds.pinned.get(i).is_some_and(|r| r.start <= page)
    }

    /// Whether any page is pinned.
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::SeqCst)
    }

    /// How many pages are pinned (each once, however many pins hold it).
    pub(crate) fn pages(&self) -> usize {
        count(&self.holds.read().pinned)
    }

    /// Pins `pages` (a pending hold, until [`commit`](Pins::commit) or
    /// [`abandon`](Pins::abandon)) if `admit(pages not pinned before)` agrees (it accounts
    /// for them). The holds are locked meanwhile, so concurrent pins of overlapping ranges
    /// count each page once.
    fn add(&self, pages: Range<usize>, admit: impl FnOnce(usize) -> Result<()>) -> Result<PinId> {
        let mut holds = self.holds.write();
        let before = count(&holds.pinned);
        let pinned = merge(holds.pinned.iter().cloned().chain([pages.clone()]));
        admit(count(&pinned) - before)?;
        let id = holds.next_id;
        holds.next_id += 1;
        holds.pending.push((id, pages));
        holds.pinned = pinned;
        self.any.store(true, Ordering::SeqCst);
        Ok(PinId(id))
    }

    /// The pin `id` has returned: its pages (those not unpinned meanwhile) are held.
    fn commit(&self, id: PinId) {
        let mut holds = self.holds.write();
        let mut mine = Vec::new();
        holds.pending.retain(|(of, r)| {
            if *of == id.0 {
                mine.push(r.clone());
            }
            *of != id.0
        });
        holds.held = merge(holds.held.drain(..).chain(mine));
    }

    /// The pin `id` failed: drops its hold; returns the pages that no pin holds any more.
    fn abandon(&self, id: PinId) -> Vec<Range<usize>> {
        let mut holds = self.holds.write();
        holds.pending.retain(|(of, _)| *of != id.0);
        let lost = holds.recompute();
        self.any.store(holds.any(), Ordering::SeqCst);
        lost
    }

    /// Unpins `pages`, whichever pins hold them; returns how many pages were pinned.
    fn remove(&self, pages: Range<usize>) -> usize {
        let mut holds = self.holds.write();
        holds.held = subtract(&holds.held, pages.clone());
        let pending = std::mem::take(&mut holds.pending);
        for (id, r) in pending {
            for part in subtract(&[r], pages.clone()) {
                holds.pending.push((id, part));
            }
        }
        let removed = count(&holds.recompute());
        self.any.store(holds.any(), Ordering::SeqCst);
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
    let id = region.pins.add(pages.clone(), |new| {
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
    match fill(engine, region, pages) {
        Ok(()) => {
            region.pins.commit(id);
            Ok(())
        }
        Err(e) => {
            // Undo only this pin's hold: pages other pins hold (returned, or still filling)
            // stay pinned.
            let lost = region.pins.abandon(id);
            released(shared, region, lost);
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

/// Unpins `pages` of `region` (whichever pins hold them), gives their bytes back to the
/// buffer and puts the resident ones back in the eviction queue.
pub(crate) fn unpin(shared: &Shared, region: &Arc<RegionShared>, pages: Range<usize>) {
    let removed = region.pins.remove(pages.clone());
    shared.buffer.unpin(removed * region.page_size);
    requeue(shared, region, [pages]);
}

/// `lost` are pages of `region` no longer pinned: gives their bytes back to the buffer and
/// puts the resident ones back in the eviction queue.
fn released(shared: &Shared, region: &Arc<RegionShared>, lost: Vec<Range<usize>>) {
    shared.buffer.unpin(count(&lost) * region.page_size);
    requeue(shared, region, lost);
}

/// Queues the resident pages of `ranges` for eviction again: pages that were popped from the
/// queue while pinned (a page may end up queued twice, which the queue tolerates: a stale
/// entry is skipped).
fn requeue(
    shared: &Shared,
    region: &Arc<RegionShared>,
    ranges: impl IntoIterator<Item = Range<usize>>,
) {
    let now = Instant::now();
    for pages in ranges {
        shared.buffer.push_run(
            pages
                .filter(|&p| is_resident(region.pages.state(p)))
                .map(|page| PageRef::new(region.clone(), page, now)),
        );
    }
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
        p.holds.read().pinned.clone()
    }

    /// Adds a pending hold of `pages`; returns it and how many pages it newly pinned.
    fn begin(p: &Pins, pages: Range<usize>) -> (PinId, usize) {
        let mut new = None;
        let id = p
            .add(pages, |n| {
                new = Some(n);
                Ok(())
            })
            .unwrap();
        (id, new.unwrap())
    }

    /// A pin of `pages` that returns; how many pages it newly pinned.
    fn pin_ok(p: &Pins, pages: Range<usize>) -> usize {
        let (id, new) = begin(p, pages);
        p.commit(id);
        new
    }

    #[test]
    fn ranges_merge_split_and_count_each_page_once() {
        let p = Pins::default();
        assert!(!p.any() && !p.contains(0));
        assert_eq!(pin_ok(&p, 2..5), 3);
        assert_eq!(pin_ok(&p, 8..10), 2);
        assert_eq!(pin_ok(&p, 4..9), 3, "5, 6, 7 are new");
        assert_eq!(ranges(&p), vec![2..10]);
        assert_eq!(pin_ok(&p, 10..11), 1);
        assert_eq!(ranges(&p), vec![2..11], "adjacent ranges merge");
        assert_eq!(pin_ok(&p, 0..1), 1);
        assert_eq!(ranges(&p), vec![0..1, 2..11]);
        assert_eq!(p.pages(), 10);
        assert!(p.contains(0) && !p.contains(1) && p.contains(2) && p.contains(10));
        assert!(!p.contains(11));
        assert_eq!(p.remove(4..6), 2);
        assert_eq!(ranges(&p), vec![0..1, 2..4, 6..11]);
        assert_eq!(p.remove(0..100), 8);
        assert!(!p.any() && !p.contains(2));
        assert_eq!(p.holds.read().held, vec![], "unpin releases every hold");
    }

    #[test]
    fn a_refused_pin_changes_nothing() {
        let p = Pins::default();
        pin_ok(&p, 0..4);
        let err = p.add(2..8, |new| {
            assert_eq!(new, 4);
            Err(Error::invalid("test", 0, "refused"))
        });
        assert!(err.is_err());
        assert_eq!(ranges(&p), vec![0..4]);
        assert!(p.holds.read().pending.is_empty());
    }

    /// The race of the review: pin A (pages 0..8) adds its pages and starts filling; pin B
    /// (2..4, already pinned by A, so it adds nothing) fills and returns; then A's fill fails.
    /// A's undo must leave B's pages pinned.
    #[test]
    fn a_failed_pin_keeps_the_pages_of_an_overlapping_pin_that_returned() {
        let p = Pins::default();
        let (a, new) = begin(&p, 0..8);
        assert_eq!(new, 8);
        let (b, new) = begin(&p, 2..4);
        assert_eq!(new, 0, "B's pages were pinned by A: counted once");
        p.commit(b);
        assert_eq!(
            p.abandon(a),
            vec![0..2, 4..8],
            "only A's own pages are lost"
        );
        assert_eq!(ranges(&p), vec![2..4]);
        assert_eq!(p.pages(), 2);
        assert!(p.contains(2) && p.contains(3) && !p.contains(1) && !p.contains(4));
        // The same with B still filling when A fails, then B failing too.
        let p = Pins::default();
        let (a, _) = begin(&p, 0..8);
        let (b, _) = begin(&p, 6..10);
        assert_eq!(p.abandon(a), vec![0..6]);
        assert_eq!(ranges(&p), vec![6..10], "B's pending hold stays");
        assert_eq!(p.abandon(b), vec![6..10]);
        assert!(!p.any() && p.pages() == 0);
    }

    /// Every page lost by an undo or an unpin was counted once when pinned: the pinned pages
    /// always equal the pages admitted less those given back.
    #[test]
    fn overlapping_pins_and_undos_count_each_page_once() {
        let p = Pins::default();
        let mut admitted = 0;
        let (a, n) = begin(&p, 0..6);
        admitted += n;
        let (b, n) = begin(&p, 4..12);
        admitted += n;
        let (c, n) = begin(&p, 10..14);
        admitted += n;
        assert_eq!(admitted, 14);
        p.commit(b);
        // An unpin while A and C are still filling releases their pages too.
        let mut given_back = p.remove(5..11);
        assert_eq!(given_back, 6);
        p.commit(c);
        assert_eq!(p.abandon(a), vec![0..4], "B holds page 4");
        given_back += 4;
        assert_eq!(ranges(&p), vec![4..5, 11..14]);
        assert_eq!(p.pages(), admitted - given_back);
        given_back += p.remove(0..100);
        assert_eq!(given_back, admitted);
        assert!(!p.any());
    }

    /// An eviction that claimed a page before the pin: the pin waits for it to end, then
    /// fills the page again (the check after the pin's fence).
    #[test]
    fn a_pin_outlasts_an_eviction_that_began_before_it() {
        let ps = crate::sys::page_size();
        let umap = Umap::for_tests(ps);
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
