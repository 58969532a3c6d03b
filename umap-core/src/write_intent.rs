//! Write intent: whether the pages a writable region fills clean are, nearly all, written soon
//! after. If so, a read fault fills its page (and its read-ahead) writable and dirty at once,
//! saving the write-protect fault that would follow each of them.
//!
//! The estimate is the share of clean fills that were followed by a first write
//! (`Clean` → `Dirty`), over a window of recent fills (both counts halve once the fills pass
//! [`WINDOW`]). Eager fills are not observed (they are dirty from the start), so one fault in
//! [`PROBE_EVERY`] still fills clean while the region looks write-heavy: if the application
//! stops writing, the probes see it and eager fills stop. A page made dirty but never written
//! costs one unneeded write-back of unchanged bytes; the threshold keeps that rare.

use std::sync::atomic::{AtomicU32, Ordering};

/// Clean fills needed before the estimate is trusted.
const MIN_SAMPLE: u32 = 256;
/// Once this many clean fills are counted, both counts halve (recent behaviour weighs most).
const WINDOW: u32 = 4096;
/// While write-heavy, one fault in this many still fills clean, to keep measuring.
const PROBE_EVERY: u32 = 8;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct WriteIntent {
    clean_fills: AtomicU32,
    first_writes: AtomicU32,
    decisions: AtomicU32,
}

impl WriteIntent {
    /// Whether a fault should fill writable and dirty (the region looks write-heavy: at least
    /// 7 in 8 clean fills were written), except for the probes.
    #[inline]
    pub(crate) fn fill_dirty(&self) -> bool {
        let fills = self.clean_fills.load(Ordering::Relaxed);
        if fills < MIN_SAMPLE {
            return false;
        }
        let writes = self.first_writes.load(Ordering::Relaxed);
        if u64::from(writes) * 8 < u64::from(fills) * 7 {
            return false;
        }
        self.decisions.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY != 0
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

    /// A clean page was written for the first time.
    #[inline]
    pub(crate) fn first_write(&self) {
        self.first_writes.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_fills_turn_eager_and_reads_turn_it_off() {
        let w = WriteIntent::default();
        assert!(!w.fill_dirty(), "no sample yet");
        // Every clean fill is written: eager, except one probe in 8.
        for _ in 0..MIN_SAMPLE {
            w.clean_filled(1);
            w.first_write();
        }
        let eager = (0..800).filter(|_| w.fill_dirty()).count();
        assert_eq!(eager, 700);
        // The application stops writing: probes fill clean and see no writes.
        for _ in 0..3 * WINDOW {
            w.clean_filled(1);
        }
        assert!(!w.fill_dirty());
    }

    #[test]
    fn a_read_mostly_region_never_turns_eager() {
        let w = WriteIntent::default();
        for i in 0..10 * WINDOW {
            w.clean_filled(1);
            if i % 2 == 0 {
                w.first_write();
            }
        }
        assert!(!w.fill_dirty(), "half the fills written is not write-heavy");
    }
}
