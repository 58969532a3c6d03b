//! The per-page state machine: one atomic byte per umap page of a region.
//!
//! ```text
//!            ┌──────────── fill, write fault ───────────────────────┐
//! Absent ──claim──▶ Filling ──read fault: copy protected──▶ Clean    ▼
//!                      └──store error──▶ Poisoned          Clean ──WP fault──▶ Unprotecting ──▶ Dirty
//! Clean ──evict──▶ Evicting ──dropped──▶ Absent
//! Dirty ──evict or flush──▶ WriteBack ──written, evicting──▶ Evicting ──▶ Absent
//!                               ├──────written, flushing──▶ Clean (resident, protected)
//!                               └──────store error────────▶ Dirty (unprotected again)
//! ```
//!
//! Invariants:
//! - Exactly one thread owns a page in a transitional state (`Filling`, `Unprotecting`,
//!   `WriteBack`, `Evicting`): the one whose compare-exchange entered it. Only the owner
//!   leaves that state, and it may hand the page from one transitional state to another
//!   (`WriteBack` → `Evicting`) without letting go.
//! - A resident page is writable only in state `Dirty` (and transiently while its owner
//!   unprotects it, in `Unprotecting`). `Clean` pages of writable regions are write-protected,
//!   so the first write after a fill or a write-back arrives as a fault. A `Dirty` page may
//!   be write-protected too (an evictor's clustered write-protect spans it): a write to it
//!   faults and is answered by unprotecting it.
//! - A fault event for a page in a transitional state is *parked*: the `WAITERS` bit is set and
//!   the owner, when it leaves the state, wakes the faulting threads (they retry and fault
//!   afresh if they still must). Missing-page events for a `Filling` page need no parking: the
//!   owner's `UFFDIO_COPY` wakes every thread waiting on the page's range.
//! - Threads that touch region memory (fill, unprotect, write back, evict) do so inside the
//!   region's gate, so the memory outlives every transition.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

/// The page is not resident; the next access faults.
pub(crate) const ABSENT: u8 = 0;
/// A filler owns the page and is reading it from the store.
pub(crate) const FILLING: u8 = 1;
/// Resident, identical to the store (write-protected, or in a read-only region).
pub(crate) const CLEAN: u8 = 2;
/// An evictor owns the page and is dropping it (its data is in the store).
pub(crate) const EVICTING: u8 = 3;
/// The store could not be read; the page holds a poison marker (accesses raise `SIGBUS`).
pub(crate) const POISONED: u8 = 4;
/// Resident and writable: written since it was filled or last written back.
pub(crate) const DIRTY: u8 = 5;
/// A filler owns the page and is lifting its write protection (on the way to `Dirty`).
pub(crate) const UNPROTECTING: u8 = 6;
/// An evictor or a flush owns the page: write-protected, its bytes going to the store.
pub(crate) const WRITEBACK: u8 = 7;

const STATE_MASK: u8 = 0x0f;
/// Set on a transitional state when fault events wait for the owner to finish.
const WAITERS: u8 = 0x10;

/// Whether `state` holds the page in memory (counts against the buffer).
#[inline]
pub(crate) fn is_resident(state: u8) -> bool {
    matches!(state, CLEAN | DIRTY | UNPROTECTING | WRITEBACK)
}

/// Bytes of bookkeeping a region keeps per umap page, outside the buffer: the page's state,
/// its queue stamp and its write-intent flag (see the page table in docs/ARCHITECTURE.md).
/// Size a huge mapping with it: 64 GiB of 4 KiB pages is 16 Mi pages, so 96 MiB.
///
/// ```
/// // One byte of state, four of stamp, one flag.
/// assert_eq!(umap_core::PAGE_METADATA_BYTES, 6);
/// ```
pub const PAGE_METADATA_BYTES: usize = std::mem::size_of::<AtomicU8>()
    + std::mem::size_of::<AtomicU32>()
    + std::mem::size_of::<AtomicBool>();

/// The states of every umap page of one region (keep [`PAGE_METADATA_BYTES`] in step with the
/// fields).
#[derive(Debug)]
pub(crate) struct PageTable {
    states: Box<[AtomicU8]>,
    /// When each page was last queued for eviction ([`crate::buffer::stamp_of`] of its fill
    /// time): tells a page's current queue entry from stale ones, and its age to eviction
    /// clustering. A hint for the eviction policy only; no page's safety depends on it.
    stamps: Box<[AtomicU32]>,
    /// Whether each page was filled `Clean` and not written since: the first write that
    /// [`crate::write_intent`] counts. Set by the fill's owner ([`PageTable::finish_fill`]),
    /// taken by the owner of the page's first write (`Clean` → `Unprotecting`); a page made
    /// `Clean` by a write-back has it clear. Only those owners touch it, ordered by the
    /// state's claims and releases. (A page of a read-only region has it set, unused.)
    filled_clean: Box<[AtomicBool]>,
    /// Added to the process's stamp clock ([`crate::buffer::stamp_of`]) for this table's
    /// stamps: the engine's (0, but for tests that start the clock just before the wrap).
    stamp_offset: u32,
}

impl PageTable {
    /// `pages` pages, all `Absent`.
    pub(crate) fn new(pages: usize) -> PageTable {
        PageTable {
            states: (0..pages).map(|_| AtomicU8::new(ABSENT)).collect(),
            stamps: (0..pages).map(|_| AtomicU32::new(0)).collect(),
            filled_clean: (0..pages).map(|_| AtomicBool::new(false)).collect(),
            stamp_offset: 0,
        }
    }

    /// The table with its stamps taken on a clock `offset` ahead of the process's (see
    /// [`PageTable::stamp_at`]).
    pub(crate) fn with_stamp_offset(mut self, offset: u32) -> PageTable {
        self.stamp_offset = offset;
        self
    }

    /// `at` as a stamp of this table: [`crate::buffer::stamp_of`] on the engine's clock.
    #[inline]
    pub(crate) fn stamp_at(&self, at: std::time::Instant) -> u32 {
        crate::buffer::stamp_of(at).wrapping_add(self.stamp_offset)
    }

    /// Number of pages.
    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    /// The state of `page`, without the waiters bit.
    #[inline]
    pub(crate) fn state(&self, page: usize) -> u8 {
        self.states[page].load(Ordering::Acquire) & STATE_MASK
    }

    /// The stamp of `page`'s latest eviction queue entry.
    #[inline]
    pub(crate) fn stamp(&self, page: usize) -> u32 {
        self.stamps[page].load(Ordering::Relaxed)
    }

    /// Records the stamp of a queue entry made for `page` (see [`crate::buffer::PageRef::new`]).
    #[inline]
    pub(crate) fn set_stamp(&self, page: usize, stamp: u32) {
        self.stamps[page].store(stamp, Ordering::Relaxed);
    }

    /// Whether `page`, just claimed `Clean` → `Unprotecting` for its first write, was filled
    /// clean and not written since (rather than made clean by a write-back); clears it.
    #[inline]
    pub(crate) fn take_filled_clean(&self, page: usize) -> bool {
        let cell = &self.filled_clean[page];
        // Only the page's owner touches the flag: a load and a store, no read-modify-write.
        let was = cell.load(Ordering::Relaxed);
        if was {
            cell.store(false, Ordering::Relaxed);
        }
        was
    }

    /// `from` → `to`, if the page is in the stable state `from` (no waiters bit can be set on
    /// a stable state). True if this thread made the transition and so owns the page, when
    /// `to` is transitional.
    #[inline]
    pub(crate) fn claim(&self, page: usize, from: u8, to: u8) -> bool {
        self.states[page]
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `Absent` → `Filling`. True if this thread now owns the fill.
    #[inline]
    pub(crate) fn claim_fill(&self, page: usize) -> bool {
        self.claim(page, ABSENT, FILLING)
    }

    /// Leaves the transitional state `from` (owned by the caller) for `to`. Returns whether
    /// events were parked on the page meanwhile (the caller wakes them).
    #[inline]
    pub(crate) fn release(&self, page: usize, from: u8, to: u8) -> bool {
        let old = self.states[page].swap(to, Ordering::AcqRel);
        debug_assert_eq!(old & STATE_MASK, from, "page {page} left by a non-owner");
        old & WAITERS != 0
    }

    /// Hands an owned page from the transitional state `from` to the transitional state `to`,
    /// keeping the waiters bit (the final owner's release wakes them).
    #[inline]
    pub(crate) fn hand_over(&self, page: usize, from: u8, to: u8) {
        let cell = &self.states[page];
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            debug_assert_eq!(
                cur & STATE_MASK,
                from,
                "page {page} handed over by a non-owner"
            );
            let next = (cur & WAITERS) | to;
            match cell.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// `Filling` → `to` (by the owner). Returns whether events were parked on the page.
    /// Marks the page filled clean if `to` is `Clean` (see
    /// [`take_filled_clean`](PageTable::take_filled_clean)).
    #[inline]
    pub(crate) fn finish_fill(&self, page: usize, to: u8) -> bool {
        // Before the release, which orders it for the next owner.
        self.filled_clean[page].store(to == CLEAN, Ordering::Relaxed);
        self.release(page, FILLING, to)
    }

    /// `Clean` → `Evicting`. True if this thread now owns the eviction.
    #[inline]
    pub(crate) fn begin_evict(&self, page: usize) -> bool {
        self.claim(page, CLEAN, EVICTING)
    }

    /// `Evicting` → `Absent` (by the owner). Returns whether events were parked on the page.
    #[inline]
    pub(crate) fn finish_evict(&self, page: usize) -> bool {
        self.release(page, EVICTING, ABSENT)
    }

    /// Parks a fault event on `page` if it is still in the transitional state `state`: sets the
    /// waiters bit so the owner wakes the faulting thread when it leaves the state. False if
    /// the page has left `state` meanwhile (the caller looks again).
    #[cold]
    pub(crate) fn park(&self, page: usize, state: u8) -> bool {
        let cell = &self.states[page];
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            if cur & STATE_MASK != state {
                return false;
            }
            if cur & WAITERS != 0 {
                return true;
            }
            match cell.compare_exchange_weak(
                cur,
                cur | WAITERS,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// How many pages from `start` on are absent, counting at most `max` and stopping at the
    /// first page that is not (or at the end of the table). A snapshot: claim each page.
    pub(crate) fn absent_run(&self, start: usize, max: usize) -> usize {
        let end = start.saturating_add(max).min(self.len());
        (start..end)
            .take_while(|&p| self.state(p) == ABSENT)
            .count()
    }

    /// How many pages right below `page` are absent, at most `max`: the length of the run
    /// `page - n..page`, stopping at the first page that is not absent or at page 0.
    pub(crate) fn absent_run_below(&self, page: usize, max: usize) -> usize {
        (page.saturating_sub(max)..page)
            .rev()
            .take_while(|&p| self.state(p) == ABSENT)
            .count()
    }

    /// How many pages from `start` on are not absent (resident or on their way in or out), at
    /// most `max`, stopping at the first absent page or at the end of the table.
    pub(crate) fn present_run(&self, start: usize, max: usize) -> usize {
        let end = start.saturating_add(max).min(self.len());
        (start..end)
            .take_while(|&p| self.state(p) != ABSENT)
            .count()
    }

    /// How many pages right below `page` are not absent, at most `max`, stopping at the first
    /// absent page or at page 0.
    pub(crate) fn present_run_below(&self, page: usize, max: usize) -> usize {
        (page.saturating_sub(max)..page)
            .rev()
            .take_while(|&p| self.state(p) != ABSENT)
            .count()
    }

    /// How many pages are in `state`.
    pub(crate) fn count(&self, state: u8) -> usize {
        (0..self.len()).filter(|&p| self.state(p) == state).count()
    }

    /// How many pages are resident (count against the buffer).
    pub(crate) fn count_resident(&self) -> usize {
        (0..self.len())
            .filter(|&p| is_resident(self.state(p)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn transitions_follow_the_state_machine() {
        let t = PageTable::new(2);
        assert!(!t.begin_evict(0), "absent pages cannot be evicted");
        assert!(t.claim_fill(0));
        assert!(!t.claim_fill(0), "one owner per fill");
        assert!(!t.finish_fill(0, CLEAN));
        assert_eq!(t.state(0), CLEAN);
        assert!(t.begin_evict(0));
        assert!(!t.begin_evict(0), "one owner per eviction");
        assert!(t.park(0, EVICTING));
        assert!(t.park(0, EVICTING), "parking twice is fine");
        assert!(t.finish_evict(0), "the owner sees the parked event");
        assert_eq!(t.state(0), ABSENT);
        assert!(!t.park(0, EVICTING), "nothing to park on any more");
        assert_eq!(t.count(ABSENT), 2);
    }

    #[test]
    fn write_back_keeps_parked_waiters_across_a_hand_over() {
        let t = PageTable::new(1);
        assert!(t.claim_fill(0));
        assert!(!t.finish_fill(0, DIRTY));
        assert!(is_resident(t.state(0)));
        assert!(
            !t.begin_evict(0),
            "dirty pages are written back, not dropped"
        );
        assert!(t.claim(0, DIRTY, WRITEBACK));
        assert!(!t.claim(0, DIRTY, WRITEBACK), "one owner per write-back");
        assert!(t.park(0, WRITEBACK), "a writer waits for the write-back");
        t.hand_over(0, WRITEBACK, EVICTING);
        assert_eq!(t.state(0), EVICTING);
        assert!(t.finish_evict(0), "the waiter survived the hand-over");
        assert_eq!(t.state(0), ABSENT);
        assert!(!is_resident(ABSENT));
    }

    #[test]
    fn flush_and_unprotect_transitions() {
        let t = PageTable::new(1);
        assert!(t.claim_fill(0));
        t.finish_fill(0, CLEAN);
        assert!(t.claim(0, CLEAN, UNPROTECTING));
        assert!(!t.begin_evict(0), "a page being unprotected is not evicted");
        assert!(t.park(0, UNPROTECTING));
        assert!(t.release(0, UNPROTECTING, DIRTY));
        assert!(t.claim(0, DIRTY, WRITEBACK));
        assert!(!t.release(0, WRITEBACK, CLEAN));
        assert_eq!(t.state(0), CLEAN);
        assert_eq!(t.count_resident(), 1);
    }

    #[test]
    fn exactly_one_of_many_racing_threads_claims_a_fill() {
        let t = Arc::new(PageTable::new(64));
        let wins = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (t, wins) = (t.clone(), wins.clone());
                std::thread::spawn(move || {
                    for p in 0..64 {
                        if t.claim_fill(p) {
                            wins.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(wins.load(Ordering::Relaxed), 64);
        assert_eq!(t.count(FILLING), 64);
    }

    #[test]
    fn absent_run_stops_at_the_first_page_in_use_or_the_end() {
        let t = PageTable::new(8);
        assert!(t.claim_fill(3));
        assert_eq!(t.absent_run(0, 8), 3);
        assert_eq!(t.absent_run(0, 2), 2);
        assert_eq!(t.absent_run(3, 8), 0);
        assert_eq!(t.absent_run(4, 100), 4, "the end of the table");
        assert_eq!(t.absent_run(4, usize::MAX), 4, "no overflow");
        assert_eq!(t.absent_run_below(3, 8), 3, "pages 0..3, down to page 0");
        assert_eq!(
            t.absent_run_below(8, 8),
            4,
            "pages 4..8, stopping above page 3"
        );
        assert_eq!(t.absent_run_below(8, 2), 2);
        assert_eq!(t.absent_run_below(4, 8), 0, "page 3 is in use");
        assert_eq!(t.absent_run_below(0, 8), 0);
    }
}
