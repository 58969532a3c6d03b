//! Write intent: whether the pages a writable region fills clean are, nearly all, written soon
//! after. If so, a read fault fills its page (and its read-ahead) writable and dirty at once,
//! saving the write-protect fault that would follow each of them.
//!
//! The estimate is the share of clean fills that were followed by a first write
//! (`Clean` → `Dirty` of a page filled clean and not written since, marked in the page table:
//! a page made clean again by a write-back, then re-written, is no fill of ours), over a window of recent fills (both counts halve once the fills pass
//! [`WINDOW`]). Eager fills are not observed (they are dirty from the start), so one fault in
//! [`PROBE_EVERY`] still fills clean while the region looks write-heavy: if the application
//! stops writing, the probes see it and eager fills stop. A probe's run is at most
//! [`PROBE_PAGES`] pages: each of its pages costs a write-protect fault when written, and a
//! whole read-ahead window of them (256 pages at 4 KiB) made probing the main cost of a
//! write-heavy scan. A page made dirty but never written
//! costs one unneeded write-back of unchanged bytes; the threshold keeps that rare.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::page_table::PageTable;

/// Clean fills needed before the estimate is trusted.
const MIN_SAMPLE: u32 = 256;
/// Once this many clean fills are counted, both counts halve (recent behaviour weighs most).
const WINDOW: u32 = 4096;
/// While write-heavy, one fault in this many still fills clean, to keep measuring.
const PROBE_EVERY: u32 = 8;
/// The most pages a probe fills (clean): its read-ahead window is cut to fit.
pub(crate) const PROBE_PAGES: usize = 16;

/// How a fault in a writable region fills its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FillMode {
    /// Clean and write-protected (the usual way).
    Clean,
    /// Clean, to measure whether the region is still write-heavy: at most [`PROBE_PAGES`].
    Probe,
    /// Writable and dirty at once.
    Dirty,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct WriteIntent {
    clean_fills: AtomicU32,
    first_writes: AtomicU32,
    decisions: AtomicU32,
}

impl WriteIntent {
    /// How a fault should fill: writable and dirty if the region looks write-heavy (at least
    /// 7 in 8 clean fills were written), except for the probes.
    #[inline]
    pub(crate) fn fill_mode(&self) -> FillMode {
        let fills = self.clean_fills.load(Ordering::Relaxed);
        if fills < MIN_SAMPLE {
            return FillMode::Clean;
        }
        let writes = self.first_writes.load(Ordering::Relaxed);
        if u64::from(writes) * 8 < u64::from(fills) * 7 {
            return FillMode::Clean;
        }
        if self.decisions.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == 0 {
            FillMode::Probe
        } else {
            FillMode::Dirty
        }
    }

    /// `pages` were filled clean (write-protected).
    #[inline]
    pub(crate) fn clean_filled(&self, pages: u32) {
        let fills = self.clean_fills.fetch_add(pages, Ordering::Relaxed) + pages;
        if fills >= WINDOW {
            // Racy halving: a concurrent update may be lost, which only blurs the estimate.
            self.clean_fills.store(fills / 2, Ordering::Relaxed);
            let writes = self.first_writes.load(Ordering::Relaxed);
            self.first_writes.store(writes / 2, Ordering::Relaxed);
        }
    }

    /// `page`, just claimed `Clean` → `Unprotecting` by the caller, is being written: counts a
    /// first write if the page was filled clean and not written since. A page made clean by
    /// a write-back (a flush, or an evictor's write-back of a pinned page) does not count:
    /// its fill was counted once at most, and counting every re-write after a write-back kept
    /// the share high (and eager fills on) when no fresh fill was written any more.
    #[inline]
    pub(crate) fn first_write(&self, pages: &PageTable, page: usize) {
        if pages.take_filled_clean(page) {
            self.first_writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_table::{CLEAN, DIRTY, UNPROTECTING, WRITEBACK};

    /// A fault fills `page` clean (protected), as `fill_run` does.
    fn fill_clean(w: &WriteIntent, t: &PageTable, page: usize) {
        assert!(t.claim_fill(page));
        t.finish_fill(page, CLEAN);
        w.clean_filled(1);
    }

    /// The application writes the clean `page`: a write-protect fault, as `serve` handles it.
    fn write(w: &WriteIntent, t: &PageTable, page: usize) {
        assert!(t.claim(page, CLEAN, UNPROTECTING));
        w.first_write(t, page);
        t.release(page, UNPROTECTING, DIRTY);
    }

    /// A flush writes the dirty `page` back: clean (protected) again, still resident.
    fn flush(t: &PageTable, page: usize) {
        assert!(t.claim(page, DIRTY, WRITEBACK));
        t.release(page, WRITEBACK, CLEAN);
    }

    #[test]
    fn written_fills_turn_eager_and_reads_turn_it_off() {
        let w = WriteIntent::default();
        let t = PageTable::new(MIN_SAMPLE as usize + 3 * WINDOW as usize);
        assert_eq!(w.fill_mode(), FillMode::Clean, "no sample yet");
        // Every clean fill is written: eager, except one probe in 8.
        for p in 0..MIN_SAMPLE as usize {
            fill_clean(&w, &t, p);
            write(&w, &t, p);
        }
        let modes: Vec<FillMode> = (0..800).map(|_| w.fill_mode()).collect();
        let eager = modes.iter().filter(|&&m| m == FillMode::Dirty).count();
        assert_eq!(eager, 700);
        let probes = modes.iter().filter(|&&m| m == FillMode::Probe).count();
        assert_eq!(probes, 100, "the others are probes");
        // The application stops writing: probes fill clean and see no writes.
        for p in MIN_SAMPLE as usize..t.len() {
            fill_clean(&w, &t, p);
        }
        assert_eq!(w.fill_mode(), FillMode::Clean);
    }

    #[test]
    fn a_read_mostly_region_never_turns_eager() {
        let w = WriteIntent::default();
        let t = PageTable::new(10 * WINDOW as usize);
        for p in 0..t.len() {
            fill_clean(&w, &t, p);
            if p % 2 == 0 {
                write(&w, &t, p);
            }
        }
        assert_eq!(
            w.fill_mode(),
            FillMode::Clean,
            "half the fills written is not write-heavy"
        );
    }

    /// The review's case: eager, then the application stops writing the pages it reads fresh
    /// (the probes fill them clean and see no write) but keeps re-writing pages that flushes
    /// made clean again. Those re-writes are no fills of ours: eager fills must stop.
    #[test]
    fn rewrites_of_flushed_pages_do_not_keep_eager_fills_on() {
        let w = WriteIntent::default();
        let written = MIN_SAMPLE as usize;
        let t = PageTable::new(written + 3 * WINDOW as usize);
        for p in 0..written {
            fill_clean(&w, &t, p);
            write(&w, &t, p);
        }
        assert_ne!(w.fill_mode(), FillMode::Clean, "write-heavy");
        // Each fresh fill is read only; meanwhile two flushed pages are written again.
        for (i, p) in (written..t.len()).enumerate() {
            fill_clean(&w, &t, p);
            for q in [2 * i % written, (2 * i + 1) % written] {
                flush(&t, q);
                write(&w, &t, q);
            }
        }
        assert_eq!(w.fill_mode(), FillMode::Clean);
        // A page filled dirty and then flushed is no clean fill either.
        let t = PageTable::new(1);
        let w = WriteIntent::default();
        assert!(t.claim_fill(0));
        t.finish_fill(0, DIRTY);
        flush(&t, 0);
        write(&w, &t, 0);
        assert_eq!(w.first_writes.load(Ordering::Relaxed), 0);
    }
}
