//! Eviction: dropping the oldest resident pages to keep the buffer between its watermarks.
//!
//! Clean pages are dropped at once; dirty ones are written back first (write-protected, then
//! written, runs of adjacent pages in one store call; see [`crate::writeback`]) and dropped
//! once their bytes are in the store. A dirty page whose write fails stays resident and goes
//! back in the queue.
//!
//! Evictor threads sleep until a fill crosses the high-water mark, then evict in batches until
//! the low-water mark; with a page pool, they then trim it so that region and pool pages stay
//! within the high-water mark ([`crate::pool`]). A filler that finds the buffer completely
//! full reclaims a batch itself ([`evict_batch`]) rather than wait for an evictor: a cross-CPU
//! wake-up costs more than dropping clean pages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::buffer::{age_of, PageRef, MIN_RESIDENCY};
use crate::engine::Shared;
use crate::error::Result;
use crate::page_table::{
    is_resident, ABSENT, CLEAN, DIRTY, EVICTING, FILLING, POISONED, UNPROTECTING, WRITEBACK,
};
use crate::pin;
use crate::region::RegionShared;
use crate::stats::bump_both;
use crate::writeback::{self, CLUSTER_BYTES};

/// Pages taken from the queue per batch.
pub(crate) const BATCH: usize = 64;

/// At most this many dirty pages per page taken from the queue are added to a batch by
/// clustering.
const CLUSTER_EXTRA_PER_PAGE: usize = 4;

/// The evictor thread's loop.
pub(crate) fn run(shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(BATCH);
    // Rounds in a row that freed nothing: after 8, each doubles the pause (from 200 µs to
    // 100 ms), so dirty pages whose write-back keeps failing are retried at a calm pace.
    let mut idle_rounds = 0u32;
    while shared.buffer.wait_for_work(Duration::from_millis(200)) {
        // Kicked for the pool (region and pool pages past its trim mark): fills are short of
        // room now, and trimming is quicker than evicting (no write-back).
        if let Some(pool) = shared
            .pool
            .as_ref()
            .filter(|pool| pool.over_trim_mark(&shared.buffer))
        {
            pool.trim_to_mark(&shared.buffer);
        }
        while !shared.buffer.at_or_below_low_water() && !shared.buffer.is_stopping() {
            let excess = shared.buffer.excess_over_low_water();
            let (freed, young) = evict_batch(&shared, excess, BATCH, &mut batch);
            if freed == 0 {
                // Everything resident is in transition, too freshly filled to evict, or dirty
                // with a failing write-back.
                let pause = Duration::from_micros(200 << idle_rounds.saturating_sub(8).min(9))
                    .min(Duration::from_millis(100));
                idle_rounds += 1;
                std::thread::sleep(young.unwrap_or_default().max(pause));
                break;
            }
            idle_rounds = 0;
        }
        // Off the fault path: the pool pages that would leave fills short of room.
        if let Some(pool) = &shared.pool {
            pool.trim_to_mark(&shared.buffer);
        }
        if shared.buffer.at_or_below_low_water() {
            shared.buffer.work_done();
        }
    }
}

/// Evicts the oldest resident pages, about `bytes` worth and at most `max_pages`; returns how
/// many bytes it freed and, if it stopped at a page too freshly filled to evict, how long until
/// that page may go. `batch` is scratch space (left empty).
pub(crate) fn evict_batch(
    shared: &Shared,
    bytes: usize,
    max_pages: usize,
    batch: &mut Vec<PageRef>,
) -> (usize, Option<Duration>) {
    batch.clear();
    let young = shared.buffer.pop_oldest(bytes, max_pages, batch);
    if batch.is_empty() {
        return (0, young);
    }
    // Dirty pages evicted with an older neighbour (clustering) must be in the older half of
    // the queue, and never younger than a page may be.
    let oldest_age = batch[0].filled_at.elapsed();
    let mut cluster = Cluster {
        min_age: (oldest_age / 2).max(MIN_RESIDENCY),
        // Per page taken: a fault that reclaims one page for itself writes back a few more,
        // not a whole evictor's batch.
        budget: batch.len().saturating_mul(CLUSTER_EXTRA_PER_PAGE),
    };
    // Sorting groups pages of a region into address order, so runs of adjacent pages are
    // written with one store call and dropped with one range.
    batch.sort_unstable_by_key(|p| p.region.page_addr(p.page));
    let mut freed = 0;
    let mut drop_list: Vec<usize> = Vec::with_capacity(batch.len());
    let mut dirty: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        let region = batch[i].region.clone();
        let mut j = i;
        while j < batch.len() && Arc::ptr_eq(&batch[j].region, &region) {
            j += 1;
        }
        let Some(_inside) = region.gate.enter() else {
            // Being unmapped: the unmapper writes back and accounts for its pages.
            i = j;
            continue;
        };
        drop_list.clear();
        dirty.clear();
        for entry in &batch[i..j] {
            let p = entry.page;
            if region.pages.begin_evict(p) {
                drop_list.push(p);
            } else if region.pages.claim(p, DIRTY, WRITEBACK) {
                dirty.push(p);
            } else if is_resident(region.pages.state(p)) {
                // Another thread owns it for a moment (a flush, an unprotect): it stays
                // resident, so it keeps its place in the queue.
                shared.buffer.push(entry.clone());
            }
        }
        cluster.add_neighbours(shared, &region, &mut dirty);
        pin::give_back_pinned(shared, &region, &mut drop_list, &mut dirty);
        write_back_for_eviction(shared, &region, &dirty, &mut drop_list, |run, _| {
            // Logged and counted; the run is dirty and resident again. Retry later.
            for &p in run {
                shared
                    .buffer
                    .push(PageRef::new(region.clone(), p, Instant::now()));
            }
        });
        freed += drop_pages(shared, &region, &drop_list, true);
        i = j;
    }
    batch.clear();
    (freed, young)
}

/// Eviction clustering for one batch: which dirty neighbours of the batch's dirty pages join
/// it, so that their write-protection shares one call (see [`CLUSTER_BYTES`]).
struct Cluster {
    /// Neighbours younger than this stay.
    min_age: Duration,
    /// Neighbours the batch may still take.
    budget: usize,
}

impl Cluster {
    /// Claims (`Dirty` → `WriteBack`) the other dirty pages of `region`, old enough, in each
    /// [`CLUSTER_BYTES`] window that holds a page of `dirty` (ascending, owned in state
    /// WriteBack), and adds them to `dirty` (left sorted).
    ///
    /// On random writes the pages of one window were filled at scattered times, so this evicts
    /// some of them before their turn: FIFO order bends (within the older half of the queue),
    /// the buffer's bound does not, and no page is evicted younger than [`MIN_RESIDENCY`].
    fn add_neighbours(&mut self, shared: &Shared, region: &RegionShared, dirty: &mut Vec<usize>) {
        let ps = region.page_size;
        if dirty.is_empty() || self.budget == 0 || CLUSTER_BYTES / ps < 2 || !region.writable {
            return;
        }
        let now = region.pages.stamp_at(Instant::now());
        let seeds = dirty.len();
        let mut last_window = None;
        let mut added = 0;
        'windows: for k in 0..seeds {
            let window = region.page_addr(dirty[k]) / CLUSTER_BYTES;
            if last_window == Some(window) {
                continue;
            }
            last_window = Some(window);
            let start = region.page_of((window * CLUSTER_BYTES).max(region.base));
            let end = region
                .page_of(((window + 1) * CLUSTER_BYTES).min(region.base + region.mapped_len) - 1)
                + 1;
            for p in start..end {
                if self.budget == 0 {
                    break 'windows;
                }
                if region.pages.state(p) == DIRTY
                    && age_of(region.pages.stamp(p), now) >= self.min_age
                    && region.pages.claim(p, DIRTY, WRITEBACK)
                {
                    dirty.push(p);
                    self.budget -= 1;
                    added += 1;
                }
            }
        }
        if added > 0 {
            dirty.sort_unstable();
            bump_both(
                &shared.counters,
                &region.counters,
                |c| &c.clustered_evictions,
                added as u64,
            );
        }
    }
}

/// Writes back `dirty` (ascending, owned in state WriteBack) and hands each run written over
/// to eviction: its pages join `drop_list` (left sorted) and count as dirty evictions. The runs
/// whose write failed are dirty and resident again; `failed` gets each with its error.
fn write_back_for_eviction(
    shared: &Shared,
    region: &RegionShared,
    dirty: &[usize],
    drop_list: &mut Vec<usize>,
    mut failed: impl FnMut(&[usize], crate::error::Error),
) {
    if dirty.is_empty() {
        return;
    }
    let mut written = 0;
    let done = |run: &[usize], result: Result<()>| match result {
        Ok(()) => {
            for &p in run {
                region.pages.hand_over(p, WRITEBACK, EVICTING);
                drop_list.push(p);
            }
            written += run.len();
        }
        Err(e) => failed(run, e),
    };
    writeback::write_back(shared, region, dirty, done);
    bump_both(
        &shared.counters,
        &region.counters,
        |c| &c.dirty_evictions,
        written as u64,
    );
    drop_list.sort_unstable();
}

/// Drops `pages` (ascending, all owned in state Evicting) in runs of adjacent pages, with one
/// system call for the whole batch, then makes them Absent, wakes parked faults and releases
/// their bytes. With `recycle`, and a page pool that wants pages, the runs are moved into the
/// pool instead (their bytes stay counted in the buffer, as pooled); whatever the pool does
/// not take is dropped.
fn drop_pages(shared: &Shared, region: &RegionShared, pages: &[usize], recycle: bool) -> usize {
    let ps = region.page_size;
    // Runs of adjacent pages; with a pool, none longer than a pool slot.
    let max_run = match &shared.pool {
        Some(pool) if recycle && pool.recycles(region) => pool.slot_bytes(),
        _ => usize::MAX,
    };
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &p in pages {
        let addr = region.page_addr(p);
        match runs.last_mut() {
            Some((start, len)) if *start + *len == addr && *len + ps <= max_run => *len += ps,
            _ => runs.push((addr, ps)),
        }
    }
    if pages.is_empty() {
        return 0;
    }
    let mut pooled = 0;
    if let Some(pool) = shared
        .pool
        .as_ref()
        .filter(|pool| max_run != usize::MAX && pool.wants_pages())
    {
        let mut rest = Vec::new();
        // SAFETY: as for the drop below: the pages are ours (Evicting), in the registered
        // range kept mapped by the gate, and their bytes are in the store.
        unsafe {
            pool.stash(
                &shared.uffd,
                &shared.buffer,
                &shared.counters,
                &runs,
                &mut rest,
            )
        };
        let total: usize = runs.iter().map(|r| r.1).sum();
        pooled = total - rest.iter().map(|r| r.1).sum::<usize>();
        runs = rest;
    }
    // SAFETY: the pages are in the region's registered range, which the gate keeps mapped;
    // their bytes are in the store (clean, or written back and still write-protected) and
    // this thread owns them in state Evicting, so dropping them loses nothing: the next
    // access refills them.
    if let Err(e) = unsafe { shared.dropper.drop_ranges(&runs) } {
        log::error!("dropping {} pages failed: {e}", pages.len());
    }
    // The pooled bytes stay counted in the buffer (`Buffer::pool`); the rest is released.
    shared.buffer.release(pages.len() * ps - pooled);
    for &p in pages {
        debug_assert_eq!(region.pages.state(p), EVICTING);
        if region.pages.finish_evict(p) {
            // Faults parked while the page was being dropped: let them retry (they fault
            // again on the now absent page and are filled).
            shared.wake(region.page_addr(p), ps);
        }
    }
    bump_both(
        &shared.counters,
        &region.counters,
        |c| &c.evictions,
        pages.len() as u64,
    );
    pages.len() * ps
}

/// Writes back and drops every resident page of `pages` of `region` (`Advice::DontNeed`),
/// waiting for pages in transition to settle first. Returns the first write-back error; the
/// pages concerned stay resident and dirty.
pub(crate) fn drop_range(
    shared: &Shared,
    region: &Arc<RegionShared>,
    pages: std::ops::Range<usize>,
) -> Result<()> {
    // A closed gate means the region is being unmapped, which drops everything anyway.
    let Some(_inside) = region.gate.enter() else {
        return Ok(());
    };
    let mut first_error = None;
    let mut busy: Vec<usize> = Vec::new();
    let mut start = pages.start;
    while start < pages.end {
        let end = pages.end.min(start + BATCH);
        drop_some(shared, region, start..end, &mut busy, &mut first_error);
        start = end;
    }
    // Pages that were in transition: wait for each to settle, then drop it.
    let mut backoff = Backoff::new();
    while !busy.is_empty() {
        backoff.wait();
        let again = std::mem::take(&mut busy);
        for p in again {
            drop_some(shared, region, p..p + 1, &mut busy, &mut first_error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One batch of [`drop_range`]: drops the clean pages of `pages`, writes back and drops the
/// dirty ones, and notes in `busy` those owned by another thread for now.
fn drop_some(
    shared: &Shared,
    region: &Arc<RegionShared>,
    pages: std::ops::Range<usize>,
    busy: &mut Vec<usize>,
    first_error: &mut Option<crate::error::Error>,
) {
    let mut drop_list = Vec::new();
    let mut dirty = Vec::new();
    for p in pages {
        match region.pages.state(p) {
            ABSENT | POISONED => {}
            CLEAN if region.pages.begin_evict(p) => drop_list.push(p),
            DIRTY if region.pages.claim(p, DIRTY, WRITEBACK) => dirty.push(p),
            FILLING | UNPROTECTING | WRITEBACK | EVICTING | CLEAN | DIRTY => busy.push(p),
            other => log::error!("page {p} of {region:?} in unknown state {other}"),
        }
    }
    pin::give_back_pinned(shared, region, &mut drop_list, &mut dirty);
    write_back_for_eviction(shared, region, &dirty, &mut drop_list, |_, e| {
        first_error.get_or_insert(e);
    });
    drop_list.sort_unstable();
    // Their queue entries stay: `pop_oldest` drops an entry whose page is absent, or was
    // filled again since (a newer stamp), uncounted.
    drop_pages(shared, region, &drop_list, false);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use umap_store::{MemStore, Store};

    use crate::page_table::{ABSENT, DIRTY};
    use crate::writeback::CLUSTER_BYTES;
    use crate::{Config, MapOptions, Umap};

    const PAGE: usize = 16 << 10;

    /// Faults, evictions and eviction clustering across the wrap of the page stamps (a `u32`
    /// of 16 µs units: 19 hours of uptime; here 300 ms after the engine starts). Cold dirty
    /// pages are written before the wrap, young dirty pages of the same 2 MiB window after it,
    /// then clean fills elsewhere push the buffer past its high-water mark: the cold pages
    /// must be evicted first (their queue entries, stamped before the wrap, still current)
    /// and together (clustered: old enough, by an age taken across the wrap), and the young
    /// ones, too young to be clustered, must stay.
    #[test]
    fn eviction_and_clustering_work_across_the_stamp_wrap() {
        // Long enough that the writes before the wrap fit in it under load, and that the young
        // pages stay under half the cold ones' age (clustering's bar) until the evictors run.
        const LEAD: Duration = Duration::from_secs(2);
        // 64 pages of buffer: eviction from 58 pages down to 44.
        let config = Config::builder()
            .buffer_size(64 * PAGE)
            .page_size(PAGE)
            .fillers(1)
            .build()
            .unwrap();
        let umap = Umap::with_stamps_wrapping_in(config, LEAD);
        let store = Arc::new(MemStore::from_vec(vec![1u8; 256 * PAGE]));
        let region = umap
            .map_shared(
                store.clone(),
                MapOptions::new().writable(true).read_ahead(0),
            )
            .unwrap();
        let pages = &region.shared.pages;
        let window = |p: usize| region.shared.page_addr(p) / CLUSTER_BYTES;
        // A 2 MiB window inside the region (it is 4 MiB long); the pages outside it make the
        // pressure.
        let inside: Vec<usize> = (0..256).filter(|&p| window(p) == window(128)).collect();
        assert_eq!(inside.len(), CLUSTER_BYTES / PAGE);
        let (cold, young) = (&inside[..24], &inside[24..32]);
        let base = region.as_mut_ptr();
        // SAFETY: inside the region, mapped readable and writable.
        let write = |p: usize, byte: u8| unsafe { base.add(p * PAGE).write(byte) };

        for &p in cold {
            write(p, 0xc0);
        }
        let before = pages.stamp(cold[0]);
        let lead_units = (LEAD.as_micros() / 16) as u32;
        assert!(
            before >= u32::MAX - lead_units,
            "cold pages stamped just before the wrap ({before:#x})"
        );
        let deadline = Instant::now() + LEAD + Duration::from_secs(5);
        while pages.stamp_at(Instant::now()) >= before {
            assert!(Instant::now() < deadline, "the stamp clock never wrapped");
            std::thread::sleep(Duration::from_millis(10));
        }
        for &p in young {
            write(p, 0xd0);
        }
        assert!(
            young.iter().all(|&p| pages.stamp(p) < before),
            "young pages stamped after the wrap"
        );
        let evictions = umap.stats().evictions;
        assert_eq!(evictions, 0, "nothing evicted before the pressure");
        // Clean fills outside the window up to 59 pages resident: past the high-water mark
        // (57.6 pages), so the evictors free about 15 pages, the oldest: cold ones, and the
        // other 9 cold ones with them (clustered), but no young one.
        let outside: Vec<usize> = (0..256).filter(|&p| window(p) != window(128)).collect();
        let read = |p: usize| assert_eq!(region.as_slice()[p * PAGE], 1);
        outside[..27].iter().for_each(|&p| read(p));
        let deadline = Instant::now() + Duration::from_secs(3);
        while !cold.iter().all(|&p| pages.state(p) == ABSENT) {
            let states: Vec<u8> = cold.iter().map(|&p| pages.state(p)).collect();
            assert!(
                Instant::now() < deadline,
                "cold pages not evicted: states {states:?}, {:?}",
                region.stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // 13 more: 48 pages resident, below the high-water mark.
        outside[27..40].iter().for_each(|&p| read(p));
        let stats = region.stats();
        assert!(
            young.iter().all(|&p| pages.state(p) == DIRTY),
            "the young pages stay: {stats:?}"
        );
        assert_eq!(stats.evictions, 24, "only the cold pages: {stats:?}");
        assert_eq!(stats.dirty_evictions, 24, "{stats:?}");
        assert!(
            stats.clustered_evictions >= 9,
            "cold pages evicted with their neighbours: {stats:?}"
        );
        region.unmap().unwrap();
        let mut bytes = vec![0u8; 256 * PAGE];
        store.read_at(&mut bytes, 0).unwrap();
        for p in 0..256 {
            let want = if cold.contains(&p) {
                0xc0
            } else if young.contains(&p) {
                0xd0
            } else {
                1
            };
            assert_eq!(bytes[p * PAGE], want, "page {p}");
        }
    }
}
