//! Always-on counters of what the pager does, and their snapshot.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The engine's live counters (relaxed atomics: cheap enough to stay on).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) read_faults: AtomicU64,
    pub(crate) write_faults: AtomicU64,
    pub(crate) wp_faults: AtomicU64,
    pub(crate) duplicate_faults: AtomicU64,
    pub(crate) parked_faults: AtomicU64,
    pub(crate) fills: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) dirty_evictions: AtomicU64,
    pub(crate) pages_written: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) buffer_full_waits: AtomicU64,
    pub(crate) buffer_stalls: AtomicU64,
    pub(crate) errors_unrecorded: AtomicU64,
    pub(crate) high_water_hits: AtomicU64,
    pub(crate) event_batches: AtomicU64,
}

#[inline]
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A snapshot of the engine's statistics, from [`Umap::stats`](crate::Umap::stats).
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
    /// Pages filled from stores.
    pub fills: u64,
    /// Bytes read from stores.
    pub bytes_read: u64,
    /// Pages evicted (clean and dirty).
    pub evictions: u64,
    /// Of those, pages written back to the store before they were dropped.
    pub dirty_evictions: u64,
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
    /// Batches of events read from the kernel (`read_faults / event_batches` is the batch size).
    pub event_batches: u64,
    /// Bytes resident now, across all regions.
    pub resident_bytes: u64,
    /// The buffer's capacity in bytes.
    pub buffer_bytes: u64,
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
            bytes_read: get(&self.bytes_read),
            evictions: get(&self.evictions),
            dirty_evictions: get(&self.dirty_evictions),
            pages_written: get(&self.pages_written),
            bytes_written: get(&self.bytes_written),
            write_errors: get(&self.write_errors),
            flushes: get(&self.flushes),
            read_errors: get(&self.read_errors),
            buffer_full_waits: get(&self.buffer_full_waits),
            buffer_stalls: get(&self.buffer_stalls),
            errors_unrecorded: get(&self.errors_unrecorded),
            high_water_hits: get(&self.high_water_hits),
            event_batches: get(&self.event_batches),
            resident_bytes,
            buffer_bytes,
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: [(&str, u64); 21] = [
            ("read faults", self.read_faults),
            ("write faults", self.write_faults),
            ("wp faults", self.wp_faults),
            ("duplicate faults", self.duplicate_faults),
            ("parked faults", self.parked_faults),
            ("fills", self.fills),
            ("bytes read", self.bytes_read),
            ("evictions", self.evictions),
            ("dirty evictions", self.dirty_evictions),
            ("pages written", self.pages_written),
            ("bytes written", self.bytes_written),
            ("write errors", self.write_errors),
            ("flushes", self.flushes),
            ("read errors", self.read_errors),
            ("buffer-full waits", self.buffer_full_waits),
            ("buffer stalls", self.buffer_stalls),
            ("errors unrecorded", self.errors_unrecorded),
            ("high-water hits", self.high_water_hits),
            ("event batches", self.event_batches),
            ("resident bytes", self.resident_bytes),
            ("buffer bytes", self.buffer_bytes),
        ];
        for (name, value) in rows {
            writeln!(f, "{name:<20}{value:>16}")?;
        }
        Ok(())
    }
}
