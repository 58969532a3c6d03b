//! The buffer: how many bytes may be resident across all regions, how many are, and the
//! order in which resident pages are evicted.
//!
//! Invariants:
//! - `resident` never exceeds `capacity`: a fill [`reserve`](Buffer::try_reserve)s its page
//!   before installing it, and bytes are [`release`](Buffer::release)d only after the page is
//!   dropped (or its region is unmapped).
//! - Every resident page has an entry in the eviction queue. The queue may also hold stale
//!   entries (pages evicted or unmapped since): whoever pops one checks the page's state.
//!
//! A page stays resident at least [`MIN_RESIDENCY`] after its fill, so that the thread woken
//! by the fill gets to touch it: with a buffer of a few pages and more faulting threads than
//! pages, evicting the newest pages would otherwise let fillers refill each other's pages
//! forever while the woken threads wait for a CPU (a livelock, not a slowdown). When every
//! resident page is that young, reclaimers wait for the oldest one to age instead.
//!
//! Policy: FIFO. A user-space pager sees a page only when it faults in, never when it is
//! hit while resident (the kernel keeps the accessed bit to itself), so CLOCK or LRU would
//! have no reference information to act on and degenerate to FIFO at a higher cost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::region::RegionShared;

/// How long a freshly filled page is protected from eviction.
pub(crate) const MIN_RESIDENCY: Duration = Duration::from_micros(500);

/// Units of [`stamp_of`]: 16 µs, so a `u32` wraps after about 19 hours.
const STAMP_UNIT_NANOS: u128 = 16_000;

/// `at` on the process's stamp clock: 16 µs units since an hour before the first stamp taken
/// in this process (so that instants a little older than that stamp still differ), wrapping.
/// A page's stamp is this plus its engine's offset ([`PageTable::stamp_at`], 0 but in tests
/// that start the clock just before the wrap). Stamps are compared for equality and
/// subtracted with wrap-around (ages under 19 hours), never ordered.
///
/// [`PageTable::stamp_at`]: crate::page_table::PageTable::stamp_at
pub(crate) fn stamp_of(at: Instant) -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    });
    (at.saturating_duration_since(epoch).as_nanos() / STAMP_UNIT_NANOS) as u32
}

/// The stamp offset that makes an engine's stamp clock wrap (pass `u32::MAX`) `lead` from
/// now: for tests that run faults and evictions across the wrap (after 19 hours otherwise).
#[cfg(test)]
pub(crate) fn stamp_offset_wrapping_in(lead: Duration) -> u32 {
    let lead = (lead.as_nanos() / STAMP_UNIT_NANOS) as u32;
    0u32.wrapping_sub(lead)
        .wrapping_sub(stamp_of(Instant::now()))
}

/// How long ago, at `now`, a page stamped `stamp` was queued.
pub(crate) fn age_of(stamp: u32, now: u32) -> Duration {
    Duration::from_nanos(u64::from(now.wrapping_sub(stamp)) * STAMP_UNIT_NANOS as u64)
}

/// A resident page in the eviction queue.
#[derive(Debug, Clone)]
pub(crate) struct PageRef {
    pub(crate) region: Arc<RegionShared>,
    pub(crate) page: usize,
    /// When the fill completed.
    pub(crate) filled_at: Instant,
}

impl PageRef {
    /// An entry for `page` of `region`, filled (or queued again) at `filled_at`, which
    /// becomes the page's current entry: older entries of the page are stale from now on
    /// (see [`PageRef::is_current`]). Every entry pushed on the queue is made here.
    pub(crate) fn new(region: Arc<RegionShared>, page: usize, filled_at: Instant) -> PageRef {
        let stamp = region.pages.stamp_at(filled_at);
        region.pages.set_stamp(page, stamp);
        PageRef {
            region,
            page,
            filled_at,
        }
    }

    /// Whether this is the page's latest entry. A stale one (the page was evicted out of
    /// turn and filled again, or queued again, since) is skipped: the newer entry stands
    /// for the page, in its place in the queue.
    pub(crate) fn is_current(&self) -> bool {
        let pages = &self.region.pages;
        pages.stamp(self.page) == pages.stamp_at(self.filled_at)
    }
}

/// A reservation made by [`Buffer::try_reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reserved {
    /// Whether it took region pages (pool pages not counted) to the high-water mark.
    pub(crate) crossed_high: bool,
    /// [`Buffer::total`] right after it, as it stored it: exact, so that of the reservations
    /// that raise the total past a mark, exactly one sees itself cross it (the total rises by
    /// reservations only: moving a page into the pool or out of it leaves it as it is).
    pub(crate) total: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Buffer {
    capacity: usize,
    high: usize,
    low: usize,
    /// Bytes of region pages resident or reserved, plus `pooled`.
    resident: AtomicUsize,
    /// Bytes of present pages in the page pool (`crate::pool`): within the capacity, but
    /// not counted toward the watermarks.
    pooled: AtomicUsize,
    /// Bytes of pinned pages (`Region::pin`), resident or being filled.
    pinned: AtomicUsize,
    queue: Mutex<VecDeque<PageRef>>,
    /// Set while evictors should run; the condvar wakes them.
    evicting: Mutex<bool>,
    evict_cv: Condvar,
    /// Set when the engine shuts down.
    stopping: AtomicBool,
}

impl Buffer {
    pub(crate) fn new(capacity: usize, high_percent: u8, low_percent: u8) -> Buffer {
        let high = (capacity as u128 * high_percent as u128 / 100) as usize;
        let low = (capacity as u128 * low_percent as u128 / 100) as usize;
        Buffer {
            capacity,
            high,
            low,
            resident: AtomicUsize::new(0),
            pooled: AtomicUsize::new(0),
            pinned: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            evicting: Mutex::new(false),
            evict_cv: Condvar::new(),
            stopping: AtomicBool::new(false),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of region pages resident or reserved (the page pool's are not counted).
    pub(crate) fn resident(&self) -> usize {
        self.resident
            .load(Ordering::Relaxed)
            .saturating_sub(self.pooled())
    }

    /// Bytes of present pages in the page pool.
    pub(crate) fn pooled(&self) -> usize {
        self.pooled.load(Ordering::Relaxed)
    }

    /// `bytes` of evicted region pages moved into the page pool: still resident, but no
    /// longer the region's (the watermarks stop counting them).
    pub(crate) fn pool(&self, bytes: usize) {
        self.pooled.fetch_add(bytes, Ordering::AcqRel);
    }

    /// `bytes` of pool pages left the pool: moved into a region by a fill (whose reservation
    /// counts them from now on; it releases the duplicate) or dropped (the caller releases
    /// them).
    pub(crate) fn unpool(&self, bytes: usize) {
        let prev = self.pooled.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(prev >= bytes, "unpooled more than was pooled");
    }

    /// Bytes of region and pool pages resident or reserved: what the capacity bounds.
    pub(crate) fn total(&self) -> usize {
        self.resident.load(Ordering::Relaxed)
    }

    /// Takes `bytes` of the buffer if they fit. Returns `None` if they do not, else what the
    /// reservation crossed.
    #[inline]
    pub(crate) fn try_reserve(&self, bytes: usize) -> Option<Reserved> {
        let mut cur = self.resident.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(bytes)?;
            if next > self.capacity {
                return None;
            }
            match self.resident.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let pooled = self.pooled();
                    let (cur, region) = (cur.saturating_sub(pooled), next.saturating_sub(pooled));
                    return Some(Reserved {
                        crossed_high: cur < self.high && region >= self.high,
                        total: next,
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back `bytes` (a page was dropped, or a fill gave up).
    #[inline]
    pub(crate) fn release(&self, bytes: usize) {
        let prev = self.resident.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(prev >= bytes, "released more than was reserved");
    }

    /// Bytes pinned now.
    pub(crate) fn pinned(&self) -> usize {
        self.pinned.load(Ordering::Acquire)
    }

    /// Counts `bytes` more as pinned if the total stays within `limit`; otherwise returns the
    /// bytes pinned now.
    pub(crate) fn try_pin(&self, bytes: usize, limit: usize) -> Result<(), usize> {
        self.pinned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(bytes).filter(|&next| next <= limit)
            })
            .map(|_| ())
    }

    /// Gives back `bytes` of pinned pages (unpinned, or their region unmapped).
    pub(crate) fn unpin(&self, bytes: usize) {
        let prev = self.pinned.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(prev >= bytes, "unpinned more than was pinned");
    }

    /// Queues a newly resident page for eviction.
    #[inline]
    pub(crate) fn push(&self, page: PageRef) {
        self.queue.lock().push_back(page);
    }

    /// Queues newly resident pages for eviction, in order, under one lock.
    #[inline]
    pub(crate) fn push_run(&self, pages: impl Iterator<Item = PageRef>) {
        self.queue.lock().extend(pages);
    }

    /// The low-water mark in bytes.
    pub(crate) fn low_water(&self) -> usize {
        self.low
    }

    /// The high-water mark in bytes: evictors start when resident pages pass it.
    pub(crate) fn high_water(&self) -> usize {
        self.high
    }

    /// Takes the oldest queued pages, up to `max_pages` of them or until their sizes add up
    /// to `bytes`, whichever comes first, but none filled less than [`MIN_RESIDENCY`] ago.
    /// Stale entries on the way (see [`PageRef::is_current`], and those of pages no longer
    /// resident) are dropped.
    /// Returns how long until the next queued page may be taken, if a young page stopped it.
    pub(crate) fn pop_oldest(
        &self,
        bytes: usize,
        max_pages: usize,
        out: &mut Vec<PageRef>,
    ) -> Option<Duration> {
        let now = Instant::now();
        let mut q = self.queue.lock();
        let mut taken = 0;
        while taken < bytes && out.len() < max_pages {
            let Some(oldest) = q.front() else { break };
            if !oldest.is_current()
                || !crate::page_table::is_resident(oldest.region.pages.state(oldest.page))
            {
                // Stale: the page was evicted out of turn (clustering, `Advice::DontNeed`),
                // and maybe filled again or queued again since (its newer entry stands for
                // it). Not counted, so that a batch is made of pages to evict.
                q.pop_front();
                continue;
            }
            let age = now.saturating_duration_since(oldest.filled_at);
            if age < MIN_RESIDENCY {
                return Some(MIN_RESIDENCY - age);
            }
            if let Some(page) = q.pop_front() {
                taken += page.region.page_size;
                out.push(page);
            }
        }
        None
    }

    /// Bytes above the low-water mark (what evictors should free).
    pub(crate) fn excess_over_low_water(&self) -> usize {
        self.resident().saturating_sub(self.low)
    }

    /// Drops every queued entry of `region` (it is being unmapped).
    pub(crate) fn forget_region(&self, region: &Arc<RegionShared>) {
        self.queue
            .lock()
            .retain(|p| !Arc::ptr_eq(&p.region, region));
    }

    /// Whether evictors have work: resident at or above the high-water mark.
    pub(crate) fn above_high_water(&self) -> bool {
        self.resident() >= self.high
    }

    /// Whether evictors may stop: resident at or below the low-water mark.
    pub(crate) fn at_or_below_low_water(&self) -> bool {
        self.resident() <= self.low
    }

    /// Wakes the evictors.
    pub(crate) fn kick_evictors(&self) {
        let mut on = self.evicting.lock();
        if !*on {
            *on = true;
            self.evict_cv.notify_all();
        }
    }

    /// Evictor side: waits until kicked (or for `timeout`, or shutdown). Returns false on
    /// shutdown.
    pub(crate) fn wait_for_work(&self, timeout: Duration) -> bool {
        let mut on = self.evicting.lock();
        if !*on && !self.stopping.load(Ordering::Acquire) && !self.above_high_water() {
            self.evict_cv.wait_for(&mut on, timeout);
        }
        !self.stopping.load(Ordering::Acquire)
    }

    /// Evictor side: the low-water mark was reached; sleep until kicked again.
    pub(crate) fn work_done(&self) {
        *self.evicting.lock() = false;
    }

    /// Stops the evictors.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _on = self.evicting.lock();
        self.evict_cv.notify_all();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserves `bytes`: whether they fit, and whether that crossed the high-water mark.
    fn crossed(b: &Buffer, bytes: usize) -> Option<bool> {
        b.try_reserve(bytes).map(|r| r.crossed_high)
    }

    #[test]
    fn reservations_never_exceed_capacity_and_report_high_water() {
        let b = Buffer::new(100, 90, 70);
        assert_eq!(crossed(&b, 80), Some(false));
        assert_eq!(crossed(&b, 10), Some(true), "crossed 90");
        assert_eq!(crossed(&b, 11), None);
        assert_eq!(crossed(&b, 10), Some(false));
        assert_eq!(b.resident(), 100);
        assert!(b.above_high_water());
        b.release(40);
        assert!(b.at_or_below_low_water());
        assert_eq!(crossed(&b, usize::MAX), None, "no overflow");
    }

    #[test]
    fn pooled_bytes_count_toward_the_capacity_but_not_the_watermarks() {
        let b = Buffer::new(100, 90, 70);
        assert_eq!(crossed(&b, 90), Some(true));
        // Evicting 30 bytes into the pool: still resident, no longer above the marks.
        b.pool(30);
        assert_eq!(b.resident(), 60);
        assert!(b.at_or_below_low_water());
        assert!(!b.above_high_water());
        assert_eq!(b.excess_over_low_water(), 0);
        // The capacity still counts them: only 10 bytes of room.
        assert_eq!(crossed(&b, 11), None);
        assert_eq!(crossed(&b, 10), Some(false));
        // A fill moves 20 pooled bytes in under its reservation of 20: the duplicate goes.
        assert_eq!(crossed(&b, 20), None, "full");
        b.unpool(20);
        b.release(20);
        assert_eq!(
            crossed(&b, 20),
            Some(true),
            "crossed 90 counting region pages only"
        );
        assert_eq!((b.resident(), b.pooled()), (90, 10));
    }

    #[test]
    fn pins_stay_within_the_limit() {
        let b = Buffer::new(100, 90, 70);
        assert_eq!(b.try_pin(60, 70), Ok(()));
        assert_eq!(b.try_pin(20, 70), Err(60), "60 + 20 > 70");
        assert_eq!(b.try_pin(10, 70), Ok(()));
        assert_eq!(b.try_pin(usize::MAX, usize::MAX), Err(70), "no overflow");
        b.unpin(70);
        assert_eq!(b.pinned(), 0);
    }

    /// A region of 8 pages, all resident (`Clean`).
    fn region(page_size: usize) -> Arc<RegionShared> {
        let r = absent_region(page_size);
        for p in 0..8 {
            assert!(r.pages.claim_fill(p));
            r.pages.finish_fill(p, crate::page_table::CLEAN);
        }
        r
    }

    fn absent_region(page_size: usize) -> Arc<RegionShared> {
        Arc::new(RegionShared {
            base: 0x1000_0000,
            len: page_size * 8,
            mapped_len: page_size * 8,
            page_size,
            writable: false,
            store: Arc::new(umap_store::MemStore::new(0)),
            store_offset: 0,
            pages: crate::page_table::PageTable::new(8),
            gate: Default::default(),
            errors: Default::default(),
            counters: Default::default(),
            read_ahead: 0,
            sequential_window: 0,
            max_run: 1,
            patterns: Default::default(),
            streams: Default::default(),
            write_intent: Default::default(),
            pins: Default::default(),
            copy_source_failed: Default::default(),
        })
    }

    #[test]
    fn pop_oldest_takes_pages_until_the_byte_target() {
        let b = Buffer::new(1 << 30, 90, 70);
        let (small, big) = (region(4096), region(1 << 20));
        let old = Instant::now() - MIN_RESIDENCY;
        for page in 0..4 {
            b.push(PageRef::new(big.clone(), page, old));
            b.push(PageRef::new(small.clone(), page, old));
        }
        let mut out = Vec::new();
        // One big page covers 8 KiB: the oldest entry alone.
        b.pop_oldest(8192, 64, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].region.page_size, 1 << 20);
        out.clear();
        // Small then big: two entries reach 12 KiB.
        b.pop_oldest(12 * 1024, 64, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        // The page cap wins over the byte target.
        b.pop_oldest(usize::MAX, 3, &mut out);
        assert_eq!(out.len(), 3);
        out.clear();
        assert_eq!(b.pop_oldest(usize::MAX, 64, &mut out), None);
        assert_eq!(out.len(), 2, "only what is queued");
    }

    #[test]
    fn young_pages_are_not_taken() {
        let b = Buffer::new(1 << 30, 90, 70);
        let r = region(4096);
        b.push(PageRef::new(r.clone(), 0, Instant::now() - MIN_RESIDENCY));
        b.push(PageRef::new(r.clone(), 1, Instant::now()));
        let mut out = Vec::new();
        let wait = b.pop_oldest(usize::MAX, 64, &mut out);
        assert_eq!(out.len(), 1, "the old page only");
        let wait = wait.expect("stopped at the young page");
        assert!(wait > Duration::ZERO && wait <= MIN_RESIDENCY);
        out.clear();
        std::thread::sleep(MIN_RESIDENCY);
        assert_eq!(b.pop_oldest(usize::MAX, 64, &mut out), None);
        assert_eq!(out.len(), 1, "aged now");
    }

    #[test]
    fn stale_entries_are_dropped_and_not_counted() {
        let b = Buffer::new(1 << 30, 90, 70);
        let r = region(4096);
        let old = Instant::now() - MIN_RESIDENCY * 4;
        // Page 0 queued, then queued again later: the first entry is stale.
        b.push(PageRef::new(r.clone(), 0, old));
        b.push(PageRef::new(r.clone(), 1, old));
        b.push(PageRef::new(r.clone(), 0, old + MIN_RESIDENCY));
        // Page 2 queued, then evicted out of turn: absent, so its entry is stale too.
        b.push(PageRef::new(r.clone(), 2, old));
        assert!(r.pages.begin_evict(2));
        r.pages.finish_evict(2);
        b.push(PageRef::new(r.clone(), 3, old));
        let mut out = Vec::new();
        // Two pages' worth: the stale entries of pages 0 and 2 do not count.
        b.pop_oldest(2 * 4096, 64, &mut out);
        let pages: Vec<usize> = out.iter().map(|p| p.page).collect();
        assert_eq!(pages, [1, 0]);
        assert!(out.iter().all(PageRef::is_current));
        out.clear();
        b.pop_oldest(usize::MAX, 64, &mut out);
        let pages: Vec<usize> = out.iter().map(|p| p.page).collect();
        assert_eq!(pages, [3], "page 2's entry was dropped");
        // Stamps are 16 µs apart at least: an entry and a refill's entry differ.
        assert_ne!(stamp_of(old), stamp_of(old + Duration::from_micros(16)));
        let age = age_of(stamp_of(old), stamp_of(old + Duration::from_millis(3)));
        assert!(
            age.abs_diff(Duration::from_millis(3)) <= Duration::from_micros(16),
            "{age:?}"
        );
        assert_eq!(age_of(u32::MAX, 1), Duration::from_micros(32), "wraps");
    }

    #[test]
    fn many_threads_reserving_respect_capacity() {
        let b = Arc::new(Buffer::new(4096 * 10, 90, 70));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if b.try_reserve(4096).is_some() {
                            assert!(b.resident() <= 4096 * 10);
                            b.release(4096);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.resident(), 0);
    }
}
