//! Always-on counters of what the pager does, for the engine and for each region, and their
//! snapshots.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::latency::{Histogram, Latency};

/// Live counters (relaxed atomics: cheap enough to stay on). The engine has one set, and each
/// region another; an event is counted in both (see [`bump_both`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) read_faults: AtomicU64,
    pub(crate) write_faults: AtomicU64,
    pub(crate) wp_faults: AtomicU64,
    pub(crate) duplicate_faults: AtomicU64,
    pub(crate) parked_faults: AtomicU64,
    pub(crate) fills: AtomicU64,
    pub(crate) prefetched_pages: AtomicU64,
    pub(crate) read_ahead_pages: AtomicU64,
    pub(crate) eager_dirty_pages: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) dirty_evictions: AtomicU64,
    pub(crate) clustered_evictions: AtomicU64,
    pub(crate) pages_written: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) buffer_full_waits: AtomicU64,
    pub(crate) buffer_stalls: AtomicU64,
    pub(crate) errors_unrecorded: AtomicU64,
    pub(crate) high_water_hits: AtomicU64,
    pub(crate) pooled_bytes: AtomicU64,
    pub(crate) recycled_bytes: AtomicU64,
    pub(crate) pool_peak_bytes: AtomicU64,
    pub(crate) pool_fault_trims: AtomicU64,
    pub(crate) event_batches: AtomicU64,
    pub(crate) signal_faults: AtomicU64,
    pub(crate) fault_latency: Histogram,
}

#[inline]
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Raises the high-water gauge `counter` to `value` if that is higher.
#[inline]
pub(crate) fn raise(counter: &AtomicU64, value: u64) {
    counter.fetch_max(value, Ordering::Relaxed);
}

/// Counts `by` in the engine's and in the region's `field`.
#[inline]
pub(crate) fn bump_both(
    engine: &Counters,
    region: &Counters,
    field: fn(&Counters) -> &AtomicU64,
    by: u64,
) {
    bump(field(engine), by);
    bump(field(region), by);
}

/// A snapshot of the engine's statistics, from [`Umap::stats`](crate::Umap::stats). Counters
/// cover every region the engine served since it started, unmapped ones included.
///
/// In a read-only workload, every missing-page event either fills its page or is counted as
/// a duplicate or parked one, so `fills == read_faults + write_faults - duplicate_faults -
/// parked_faults + prefetched_pages + read_ahead_pages`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Page-fault events for reads of missing pages.
    pub read_faults: u64,
    /// Page-fault events for writes to missing pages (filled writable, dirty).
    pub write_faults: u64,
    /// Write-protect faults: first writes to clean pages, and writes to pages being written
    /// back.
    pub wp_faults: u64,
    /// Events for a page another thread was already filling, or that was already resident.
    pub duplicate_faults: u64,
    /// Events parked on a page in transition and woken when it settled.
    pub parked_faults: u64,
    /// Pages filled from stores (for faults, prefetches and read-ahead).
    pub fills: u64,
    /// Of those, pages filled by [`Region::prefetch`](crate::Region::prefetch) and
    /// `Advice::WillNeed`.
    pub prefetched_pages: u64,
    /// Of those, pages filled ahead of a sequential reader.
    pub read_ahead_pages: u64,
    /// Of those, pages filled writable and dirty without a write fault, because nearly every
    /// page the region filled clean was written soon after (each saves a write-protect
    /// fault; an unwritten one costs a write-back of unchanged bytes).
    pub eager_dirty_pages: u64,
    /// Bytes read from stores.
    pub bytes_read: u64,
    /// Pages evicted (clean and dirty, by evictors and by `Advice::DontNeed`).
    pub evictions: u64,
    /// Of those, pages written back to the store before they were dropped.
    pub dirty_evictions: u64,
    /// Of those, dirty pages evicted ahead of their turn with an older dirty page of their
    /// 2 MiB of address space, so that one write-protect call (one TLB flush) covered them
    /// all (eviction clustering; none are younger than the older half of the queue).
    pub clustered_evictions: u64,
    /// Pages written back to stores (by evictions and flushes).
    pub pages_written: u64,
    /// Bytes written to stores.
    pub bytes_written: u64,
    /// Store writes that failed (their pages stayed dirty and resident).
    pub write_errors: u64,
    /// Flushes of a region or range (including those done by unmap).
    pub flushes: u64,
    /// Store reads that failed (the page was poisoned: accesses raise `SIGBUS`).
    pub read_errors: u64,
    /// Fills that found the buffer full and had to reclaim or wait.
    pub buffer_full_waits: u64,
    /// Fills that waited longer than the engine allows for a full buffer whose pages could
    /// not be evicted (dirty pages whose write-back fails): the fault was retried, and the
    /// stall recorded ([`ErrorKind::BufferFull`](crate::ErrorKind::BufferFull)).
    pub buffer_stalls: u64,
    /// Failures logged and counted but not recorded for
    /// [`Region::take_errors`](crate::Region::take_errors) (too many distinct ones).
    pub errors_unrecorded: u64,
    /// Times the resident size reached the high-water mark.
    pub high_water_hits: u64,
    /// Bytes of evicted pages moved into the page pool instead of being freed
    /// ([`Config::recycle_pages`](crate::Config::recycle_pages)).
    pub pooled_bytes: u64,
    /// Bytes of pool pages that fills moved into regions instead of copying fresh pages.
    pub recycled_bytes: u64,
    /// The most bytes the page pool held at once (as evictions moved pages into it).
    pub pool_peak_bytes: u64,
    /// Times a fill found the buffer full and dropped page-pool pages itself to make room.
    /// The evictors trim the pool before the buffer fills, so this stays 0 unless they fall
    /// behind.
    pub pool_fault_trims: u64,
    /// Batches of events read from the kernel (`read_faults / event_batches` is the batch size).
    pub event_batches: u64,
    /// Faults served on the faulting thread, in its `SIGBUS` handler
    /// ([`Config::signal_faults`](crate::Config::signal_faults)), among the read, write and
    /// write-protect faults counted above.
    pub signal_faults: u64,
    /// Bytes resident now, across all regions.
    pub resident_bytes: u64,
    /// The buffer's capacity in bytes.
    pub buffer_bytes: u64,
    /// How long faults took to serve.
    pub fault_latency: Latency,
}

/// A snapshot of one region's statistics, from [`Region::stats`](crate::Region::stats). The
/// fields mean what [`Stats`]' fields of the same names mean, for this region only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegionStats {
    /// Page-fault events for reads of missing pages.
    pub read_faults: u64,
    /// Page-fault events for writes to missing pages.
    pub write_faults: u64,
    /// Write-protect faults.
    pub wp_faults: u64,
    /// Events for a page already being filled or already resident.
    pub duplicate_faults: u64,
    /// Events parked on a page in transition.
    pub parked_faults: u64,
    /// Pages filled.
    pub fills: u64,
    /// Of those, prefetched.
    pub prefetched_pages: u64,
    /// Of those, read ahead.
    pub read_ahead_pages: u64,
    /// Of those, filled dirty ahead of writes.
    pub eager_dirty_pages: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// Pages evicted.
    pub evictions: u64,
    /// Of those, written back first.
    pub dirty_evictions: u64,
    /// Of those, evicted ahead of their turn with an older neighbour (clustering).
    pub clustered_evictions: u64,
    /// Pages written back.
    pub pages_written: u64,
    /// Bytes written to the store.
    pub bytes_written: u64,
    /// Store writes that failed.
    pub write_errors: u64,
    /// Flushes.
    pub flushes: u64,
    /// Store reads that failed (pages poisoned).
    pub read_errors: u64,
    /// Pages resident now.
    pub resident_pages: u64,
    /// Pages dirty now.
    pub dirty_pages: u64,
    /// How long this region's faults took to serve.
    pub fault_latency: Latency,
}

impl Counters {
    pub(crate) fn snapshot(&self, resident_bytes: u64, buffer_bytes: u64) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            read_faults: get(&self.read_faults),
            write_faults: get(&self.write_faults),
            wp_faults: get(&self.wp_faults),
            duplicate_faults: get(&self.duplicate_faults),
            parked_faults: get(&self.parked_faults),
            fills: get(&self.fills),
            prefetched_pages: get(&self.prefetched_pages),
            read_ahead_pages: get(&self.read_ahead_pages),
            eager_dirty_pages: get(&self.eager_dirty_pages),
            bytes_read: get(&self.bytes_read),
            evictions: get(&self.evictions),
            dirty_evictions: get(&self.dirty_evictions),
            clustered_evictions: get(&self.clustered_evictions),
            pages_written: get(&self.pages_written),
            bytes_written: get(&self.bytes_written),
            write_errors: get(&self.write_errors),
            flushes: get(&self.flushes),
            read_errors: get(&self.read_errors),
            buffer_full_waits: get(&self.buffer_full_waits),
            buffer_stalls: get(&self.buffer_stalls),
            errors_unrecorded: get(&self.errors_unrecorded),
            high_water_hits: get(&self.high_water_hits),
            pooled_bytes: get(&self.pooled_bytes),
            recycled_bytes: get(&self.recycled_bytes),
            pool_peak_bytes: get(&self.pool_peak_bytes),
            pool_fault_trims: get(&self.pool_fault_trims),
            event_batches: get(&self.event_batches),
            signal_faults: get(&self.signal_faults),
            resident_bytes,
            buffer_bytes,
            fault_latency: self.fault_latency.summary(),
        }
    }

    pub(crate) fn region_snapshot(&self, resident_pages: u64, dirty_pages: u64) -> RegionStats {
        let s = self.snapshot(0, 0);
        RegionStats {
            read_faults: s.read_faults,
            write_faults: s.write_faults,
            wp_faults: s.wp_faults,
            duplicate_faults: s.duplicate_faults,
            parked_faults: s.parked_faults,
            fills: s.fills,
            prefetched_pages: s.prefetched_pages,
            read_ahead_pages: s.read_ahead_pages,
            eager_dirty_pages: s.eager_dirty_pages,
            bytes_read: s.bytes_read,
            evictions: s.evictions,
            dirty_evictions: s.dirty_evictions,
            clustered_evictions: s.clustered_evictions,
            pages_written: s.pages_written,
            bytes_written: s.bytes_written,
            write_errors: s.write_errors,
            flushes: s.flushes,
            read_errors: s.read_errors,
            resident_pages,
            dirty_pages,
            fault_latency: s.fault_latency,
        }
    }
}

/// Prints `rows` as a two-column table, then the latency line.
fn table(f: &mut fmt::Formatter<'_>, rows: &[(&str, u64)], latency: &Latency) -> fmt::Result {
    for (name, value) in rows {
        writeln!(f, "{name:<20}{value:>16}")?;
    }
    writeln!(f, "{:<20}{latency}", "fault latency")
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        table(
            f,
            &[
                ("read faults", self.read_faults),
                ("write faults", self.write_faults),
                ("wp faults", self.wp_faults),
                ("duplicate faults", self.duplicate_faults),
                ("parked faults", self.parked_faults),
                ("fills", self.fills),
                ("prefetched pages", self.prefetched_pages),
                ("read-ahead pages", self.read_ahead_pages),
                ("eager dirty pages", self.eager_dirty_pages),
                ("bytes read", self.bytes_read),
                ("evictions", self.evictions),
                ("dirty evictions", self.dirty_evictions),
                ("clustered evictions", self.clustered_evictions),
                ("pages written", self.pages_written),
                ("bytes written", self.bytes_written),
                ("write errors", self.write_errors),
                ("flushes", self.flushes),
                ("read errors", self.read_errors),
                ("buffer-full waits", self.buffer_full_waits),
                ("buffer stalls", self.buffer_stalls),
                ("errors unrecorded", self.errors_unrecorded),
                ("high-water hits", self.high_water_hits),
                ("pooled bytes", self.pooled_bytes),
                ("recycled bytes", self.recycled_bytes),
                ("pool peak bytes", self.pool_peak_bytes),
                ("pool fault trims", self.pool_fault_trims),
                ("event batches", self.event_batches),
                ("signal faults", self.signal_faults),
                ("resident bytes", self.resident_bytes),
                ("buffer bytes", self.buffer_bytes),
            ],
            &self.fault_latency,
        )
    }
}

impl fmt::Display for RegionStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        table(
            f,
            &[
                ("read faults", self.read_faults),
                ("write faults", self.write_faults),
                ("wp faults", self.wp_faults),
                ("duplicate faults", self.duplicate_faults),
                ("parked faults", self.parked_faults),
                ("fills", self.fills),
                ("prefetched pages", self.prefetched_pages),
                ("read-ahead pages", self.read_ahead_pages),
                ("eager dirty pages", self.eager_dirty_pages),
                ("bytes read", self.bytes_read),
                ("evictions", self.evictions),
                ("dirty evictions", self.dirty_evictions),
                ("clustered evictions", self.clustered_evictions),
                ("pages written", self.pages_written),
                ("bytes written", self.bytes_written),
                ("write errors", self.write_errors),
                ("flushes", self.flushes),
                ("read errors", self.read_errors),
                ("resident pages", self.resident_pages),
                ("dirty pages", self.dirty_pages),
            ],
            &self.fault_latency,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    #[test]
    fn both_sets_count() {
        let (engine, region) = (Counters::default(), Counters::default());
        bump_both(&engine, &region, |c| &c.fills, 3);
        bump(&engine.event_batches, 1);
        let s = engine.snapshot(4096, 8192);
        assert_eq!((s.fills, s.event_batches, s.resident_bytes), (3, 1, 4096));
        let r = region.region_snapshot(1, 0);
        assert_eq!((r.fills, r.resident_pages), (3, 1));
    }

    /// The top-level numeric fields of a pretty-printed (`{:#?}`) struct, by name: an atomic
    /// counter prints as its value, so this reads `Counters` as well as the snapshots.
    fn numeric_fields(debug: &str) -> BTreeMap<String, u64> {
        debug
            .lines()
            .filter_map(|line| {
                let field = line.strip_prefix("    ").filter(|f| !f.starts_with(' '))?;
                let (name, value) = field.split_once(": ")?;
                let value = value.strip_suffix(',')?.parse().ok()?;
                Some((name.to_string(), value))
            })
            .collect()
    }

    /// The rows of a printed table, by the field each names (its words joined by
    /// underscores: "buffer-full waits" is `buffer_full_waits`), and its last line.
    fn rows(table: &str) -> (BTreeMap<String, u64>, String) {
        let mut lines: Vec<&str> = table.lines().collect();
        let last = lines.pop().expect("a latency line").to_string();
        let mut rows = BTreeMap::new();
        for line in lines {
            let (name, value) = line.split_at(20);
            let field = name.trim_end().replace([' ', '-'], "_");
            let value = value
                .trim_start()
                .parse()
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(rows.insert(field, value).is_none(), "row {line} twice");
        }
        (rows, last)
    }

    /// Every counter reaches its field of both snapshots, and the printed tables have one row
    /// per field of the snapshot, showing that field's value: each counter holds a value of its
    /// own, so a row that printed another field (or a field without a row) fails here.
    #[test]
    fn the_tables_print_every_field_on_its_own_row() {
        let n = |k: u64| AtomicU64::new(k);
        // Every field listed (no `..Default::default()`): a new counter must be added here.
        let counters = Counters {
            read_faults: n(1),
            write_faults: n(2),
            wp_faults: n(3),
            duplicate_faults: n(4),
            parked_faults: n(5),
            fills: n(6),
            prefetched_pages: n(7),
            read_ahead_pages: n(8),
            eager_dirty_pages: n(9),
            bytes_read: n(10),
            evictions: n(11),
            dirty_evictions: n(12),
            clustered_evictions: n(13),
            pages_written: n(14),
            bytes_written: n(15),
            write_errors: n(16),
            flushes: n(17),
            read_errors: n(18),
            buffer_full_waits: n(19),
            buffer_stalls: n(20),
            errors_unrecorded: n(21),
            high_water_hits: n(22),
            pooled_bytes: n(23),
            recycled_bytes: n(24),
            pool_peak_bytes: n(25),
            pool_fault_trims: n(26),
            event_batches: n(27),
            signal_faults: n(28),
            fault_latency: Histogram::default(),
        };
        counters.fault_latency.record(Duration::from_micros(3));
        let live = numeric_fields(&format!("{counters:#?}"));
        assert_eq!(live.len(), 28, "{live:?}");

        let s = counters.snapshot(1001, 1002);
        let fields = numeric_fields(&format!("{s:#?}"));
        let mut expected = live.clone();
        expected.insert("resident_bytes".into(), 1001);
        expected.insert("buffer_bytes".into(), 1002);
        assert_eq!(fields, expected, "each counter in its own field");
        let text = s.to_string();
        let (table, latency) = rows(&text);
        assert_eq!(table, fields, "{text}");
        assert_eq!(table["pool_fault_trims"], 26, "{text}");
        assert_eq!(
            latency,
            format!("{:<20}{}", "fault latency", s.fault_latency)
        );
        assert_eq!(s.fault_latency.count, 1);

        let r = counters.region_snapshot(1003, 1004);
        let fields = numeric_fields(&format!("{r:#?}"));
        for (name, value) in &fields {
            let want = match name.as_str() {
                "resident_pages" => 1003,
                "dirty_pages" => 1004,
                _ => live[name],
            };
            assert_eq!(*value, want, "region field {name}");
        }
        assert_eq!(fields.len(), 20, "{fields:?}");
        let text = r.to_string();
        let (table, latency) = rows(&text);
        assert_eq!(table, fields, "{text}");
        assert_eq!(
            latency,
            format!("{:<20}{}", "fault latency", r.fault_latency)
        );
    }
}
