//! Access-pattern advice per page range ([`Advice`]), and the detection of sequential fault
//! streams that drives read-ahead.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::RwLock;

/// What the application tells the pager about a range; see
/// [`Region::advise`](crate::Region::advise). Modelled on `madvise(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Advice {
    /// No particular pattern: read ahead after sequential faults (the default).
    Normal,
    /// The range will be read in order: read ahead on every fault, without waiting to detect
    /// a sequential pattern (with the region's read-ahead window, or 1 MiB if it has none).
    Sequential,
    /// The range will be read in no particular order: never read ahead in it.
    Random,
    /// The range will be needed soon: fill it in the background, as
    /// [`Region::prefetch`](crate::Region::prefetch) does (up to the buffer's low-water
    /// mark; more would evict the start of the range before it is used).
    WillNeed,
    /// The range is not needed for now: write its dirty pages back and drop every resident
    /// page of it, freeing their share of the buffer. Its data stays in the store: the next
    /// access reads it back. Pages in flight (being filled, or written by another thread)
    /// are waited for.
    DontNeed,
}

/// The read-ahead pattern of a page range (the part of [`Advice`] that is remembered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern {
    Normal,
    Sequential,
    Random,
}

/// Patterns by page range: sorted, disjoint ranges; pages in none are `Normal`.
#[derive(Debug, Default)]
pub(crate) struct PatternMap {
    /// Set once any range was advised: the fault path skips the lock until then.
    any: AtomicBool,
    ranges: RwLock<Vec<(Range<usize>, Pattern)>>,
}

impl PatternMap {
    /// The pattern of `page`.
    #[inline]
    pub(crate) fn get(&self, page: usize) -> Pattern {
        if !self.any.load(Ordering::Acquire) {
            return Pattern::Normal;
        }
        let ranges = self.ranges.read();
        let i = ranges.partition_point(|(r, _)| r.end <= page);
        match ranges.get(i) {
            Some((r, p)) if r.contains(&page) => *p,
            _ => Pattern::Normal,
        }
    }

    /// Sets the pattern of `pages`, replacing what overlapped them.
    pub(crate) fn set(&self, pages: Range<usize>, pattern: Pattern) {
        if pages.is_empty() {
            return;
        }
        let mut ranges = self.ranges.write();
        let mut out = Vec::with_capacity(ranges.len() + 2);
        for (r, p) in ranges.drain(..) {
            if r.end <= pages.start || r.start >= pages.end {
                out.push((r, p));
                continue;
            }
            if r.start < pages.start {
                out.push((r.start..pages.start, p));
            }
            if r.end > pages.end {
                out.push((pages.end..r.end, p));
            }
        }
        if pattern != Pattern::Normal {
            out.push((pages, pattern));
        }
        out.sort_by_key(|(r, _)| r.start);
        *ranges = out;
        self.any.store(!ranges.is_empty(), Ordering::Release);
    }
}

/// Sequential fault streams of a region: the page each stream is expected to fault on next.
/// A fault on such a page continues its stream (read ahead); any other fault starts a stream
/// in the slot used least recently (round robin). Several readers scanning different parts of
/// a region each keep their own stream. Lock-free: a race only costs a missed detection.
#[derive(Debug)]
pub(crate) struct Streams {
    next: [AtomicUsize; STREAMS],
    victim: AtomicUsize,
}

const STREAMS: usize = 8;
/// A slot that expects no page.
const NONE: usize = usize::MAX;

impl Default for Streams {
    fn default() -> Self {
        Streams {
            next: [const { AtomicUsize::new(NONE) }; STREAMS],
            victim: AtomicUsize::new(0),
        }
    }
}

impl Streams {
    /// The stream that expected a fault on `page`, if one did.
    #[inline]
    pub(crate) fn find(&self, page: usize) -> Option<usize> {
        self.next
            .iter()
            .position(|n| n.load(Ordering::Relaxed) == page)
    }

    /// Records that stream `slot` (or a new stream, if `None`) next expects `page`.
    #[inline]
    pub(crate) fn expect(&self, slot: Option<usize>, page: usize) {
        let slot = slot.unwrap_or_else(|| self.victim.fetch_add(1, Ordering::Relaxed) % STREAMS);
        self.next[slot].store(page, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_split_and_replace_ranges() {
        let m = PatternMap::default();
        assert_eq!(m.get(5), Pattern::Normal);
        m.set(0..100, Pattern::Sequential);
        m.set(40..60, Pattern::Random);
        assert_eq!(m.get(0), Pattern::Sequential);
        assert_eq!(m.get(39), Pattern::Sequential);
        assert_eq!(m.get(40), Pattern::Random);
        assert_eq!(m.get(59), Pattern::Random);
        assert_eq!(m.get(60), Pattern::Sequential);
        assert_eq!(m.get(100), Pattern::Normal);
        m.set(50..200, Pattern::Normal);
        assert_eq!(m.get(45), Pattern::Random);
        assert_eq!(m.get(50), Pattern::Normal);
        assert_eq!(m.get(99), Pattern::Normal);
        m.set(0..50, Pattern::Normal);
        assert_eq!(m.ranges.read().len(), 0);
        assert!(!m.any.load(Ordering::Relaxed), "back on the lock-free path");
    }

    #[test]
    fn interleaved_streams_are_each_detected() {
        let s = Streams::default();
        assert_eq!(s.find(0), None);
        s.expect(None, 1);
        s.expect(None, 1001);
        assert!(s.find(1).is_some());
        let b = s.find(1001).unwrap();
        s.expect(Some(b), 1002);
        assert_eq!(s.find(1001), None);
        assert_eq!(s.find(1002), Some(b));
        assert_eq!(s.find(1), Some(0));
    }
}
