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
    /// a sequential pattern (with the region's read-ahead window, or 1 MiB if it has none);
    /// upwards, or downwards once faults are seen to run down.
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

/// Sequential fault streams of a region, ascending or descending: the page each stream is
/// expected to fault on next, and how far it has ramped up. A fault on such a page continues
/// its stream; any other fault starts a stream in the next slot (round robin), expecting the
/// page above it *and* the page below it: the stream's first continuation settles which way it
/// runs. Several readers scanning different parts of a region, in either direction (a
/// quicksort partition scans its range from both ends), each keep their own stream. A stream
/// reads ahead only from its second continuation on, with a window that doubles each time (2,
/// 4, 8 ... up to the region's window), so a random access that happens to land right next to
/// an earlier fault reads ahead nothing, and one more such coincidence reads ahead two pages.
/// Lock-free: a race only costs a missed detection or a smaller window.
#[derive(Debug)]
pub(crate) struct Streams {
    /// Per slot, the page an ascending stream expects next ([`NONE`] if it descends).
    up: [AtomicUsize; STREAMS],
    /// Per slot, the page a descending stream expects next ([`NONE`] if it ascends).
    down: [AtomicUsize; STREAMS],
    /// Continuations seen so far, per stream.
    ramp: [AtomicUsize; STREAMS],
    victim: AtomicUsize,
}

const STREAMS: usize = 8;
/// A slot that expects no page.
const NONE: usize = usize::MAX;

impl Default for Streams {
    fn default() -> Self {
        Streams {
            up: [const { AtomicUsize::new(NONE) }; STREAMS],
            down: [const { AtomicUsize::new(NONE) }; STREAMS],
            ramp: [const { AtomicUsize::new(0) }; STREAMS],
            victim: AtomicUsize::new(0),
        }
    }
}

/// A fault's place in the streams: the stream it continues (if any), that stream's ramp, and
/// which way it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamHit {
    slot: Option<usize>,
    ramp: usize,
    descending: bool,
}

impl StreamHit {
    /// Whether the fault continues a descending stream: its read-ahead lies below it.
    #[inline]
    pub(crate) fn descending(self) -> bool {
        self.descending
    }
}

impl Streams {
    /// Looks up the stream a fault on `page` continues.
    #[inline]
    pub(crate) fn find(&self, page: usize) -> StreamHit {
        let found = |slots: &[AtomicUsize; STREAMS]| {
            slots.iter().position(|n| n.load(Ordering::Relaxed) == page)
        };
        let (slot, descending) = match found(&self.up) {
            Some(slot) => (Some(slot), false),
            None => (found(&self.down), true),
        };
        match slot {
            Some(slot) => StreamHit {
                slot: Some(slot),
                ramp: self.ramp[slot].load(Ordering::Relaxed) + 1,
                descending,
            },
            None => StreamHit {
                slot: None,
                ramp: 0,
                descending: false,
            },
        }
    }

    /// The read-ahead window for `hit` under a region window of `max` pages: none for a new
    /// stream or its first continuation, then 2, 4, 8 ... pages up to `max`.
    #[inline]
    pub(crate) fn window(hit: StreamHit, max: usize) -> usize {
        match hit.ramp {
            0 | 1 => 0,
            r => max.min(1usize << (r - 1).min(20)),
        }
    }

    /// Records that the stream of `hit` (or a new stream) filled the pages `run` (the faulting
    /// page and its read-ahead), so it next expects the page after the run (ascending), the
    /// page before it (descending), or either (a new stream).
    #[inline]
    pub(crate) fn expect(&self, hit: StreamHit, run: Range<usize>) {
        let below = run.start.checked_sub(1).unwrap_or(NONE);
        let (slot, up, down) = match hit.slot {
            Some(slot) if hit.descending => (slot, NONE, below),
            Some(slot) => (slot, run.end, NONE),
            None => {
                // Round robin without a read-modify-write: racing fillers may pick the same
                // slot, which only costs a stream.
                let v = self.victim.load(Ordering::Relaxed);
                self.victim.store(v.wrapping_add(1), Ordering::Relaxed);
                (v % STREAMS, run.end, below)
            }
        };
        self.ramp[slot].store(hit.ramp, Ordering::Relaxed);
        self.up[slot].store(up, Ordering::Relaxed);
        self.down[slot].store(down, Ordering::Relaxed);
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
    fn streams_ramp_up_and_interleaved_streams_are_each_detected() {
        let s = Streams::default();
        let max = 16;
        // Stream A from page 0, stream B from page 1000, interleaved.
        let mut windows = Vec::new();
        let (mut a, mut b) = (0, 1000);
        for _ in 0..7 {
            for page in [&mut a, &mut b] {
                let hit = s.find(*page);
                let w = Streams::window(hit, max);
                s.expect(hit, *page..*page + 1 + w);
                windows.push(w);
                *page += 1 + w;
            }
        }
        assert_eq!(windows, [0, 0, 0, 0, 2, 2, 4, 4, 8, 8, 16, 16, 16, 16]);
        // A fault elsewhere starts a new stream and reads nothing ahead.
        assert_eq!(
            s.find(5000),
            StreamHit {
                slot: None,
                ramp: 0,
                descending: false,
            }
        );
    }

    #[test]
    fn a_single_coincidence_reads_nothing_ahead() {
        let s = Streams::default();
        let first = s.find(10);
        s.expect(first, 10..11);
        let hit = s.find(11);
        assert_eq!(Streams::window(hit, 16), 0);
        let s = Streams::default();
        let first = s.find(10);
        s.expect(first, 10..11);
        let hit = s.find(9);
        assert!(hit.descending());
        assert_eq!(Streams::window(hit, 16), 0);
    }

    #[test]
    fn descending_streams_ramp_up_next_to_ascending_ones() {
        let s = Streams::default();
        let max = 16;
        // Stream A descends from page 10_000 (each run ends at the faulting page), stream B
        // ascends from page 0, interleaved, as a quicksort partition scans its range.
        let mut windows = Vec::new();
        let (mut a, mut b) = (10_000usize, 0usize);
        for _ in 0..7 {
            let hit = s.find(a);
            assert!(hit.slot.is_none() || hit.descending(), "A descends");
            let w = Streams::window(hit, max);
            s.expect(hit, a - w..a + 1);
            windows.push(w);
            a -= 1 + w;
            let hit = s.find(b);
            assert!(!hit.descending(), "B ascends");
            let w = Streams::window(hit, max);
            s.expect(hit, b..b + 1 + w);
            windows.push(w);
            b += 1 + w;
        }
        assert_eq!(windows, [0, 0, 0, 0, 2, 2, 4, 4, 8, 8, 16, 16, 16, 16]);
        // A descending stream reaching page 0 expects nothing below it.
        let s = Streams::default();
        let hit = s.find(1);
        s.expect(hit, 1..2);
        let hit = s.find(0);
        assert!(hit.descending());
        s.expect(hit, 0..1);
        assert!(s.down.iter().all(|d| d.load(Ordering::Relaxed) == NONE));
    }
}
