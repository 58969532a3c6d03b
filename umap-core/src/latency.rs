//! A lock-free latency histogram, cheap enough to record every fault.
//!
//! Values (nanoseconds) fall into log-linear buckets: exact below 16 ns, then eight buckets per
//! power of two, so a reported percentile is within 12.5% of the true value. Recording is one
//! relaxed atomic add (and a compare-and-swap on a new maximum); reading walks the 496
//! buckets.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 16;
/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Octaves above `LINEAR` that a `u64` can span.
const OCTAVES: usize = 64 - 4;
const BUCKETS: usize = LINEAR as usize + OCTAVES * SUB as usize;

/// The histogram. See the module documentation.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Box::new([const { AtomicU64::new(0) }; BUCKETS]),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.summary().fmt(f)
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < LINEAR {
        return ns as usize;
    }
    let octave = 63 - ns.leading_zeros(); // >= 4
    let sub = (ns >> (octave - SUB_BITS)) & (SUB - 1);
    LINEAR as usize + (octave as usize - 4) * SUB as usize + sub as usize
}

/// The largest value that falls in `bucket`.
fn bucket_top(bucket: usize) -> u64 {
    if bucket < LINEAR as usize {
        return bucket as u64;
    }
    let rel = bucket - LINEAR as usize;
    let octave = (rel / SUB as usize + 4) as u32;
    let sub = (rel % SUB as usize) as u64;
    let width = 1u64 << (octave - SUB_BITS);
    let start = (1u64 << octave) + sub * width;
    start.saturating_add(width - 1)
}

impl Histogram {
    /// Records one value.
    #[inline]
    pub(crate) fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        // A new maximum is rare: read first, so the common case writes no shared line.
        if ns > self.max_ns.load(Ordering::Relaxed) {
            self.max_ns.fetch_max(ns, Ordering::Relaxed);
        }
    }

    /// Count, median, 99th percentile and maximum of what was recorded so far.
    pub(crate) fn summary(&self) -> Latency {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let max = self.max_ns.load(Ordering::Relaxed);
        let quantile = |q: f64| -> Duration {
            if count == 0 {
                return Duration::ZERO;
            }
            // The rank of the q-th value (1-based), then the bucket that holds it.
            let rank = ((count as f64 * q).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (bucket, &n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Duration::from_nanos(bucket_top(bucket).min(max));
                }
            }
            Duration::from_nanos(max)
        };
        Latency {
            count,
            p50: quantile(0.50),
            p99: quantile(0.99),
            max: Duration::from_nanos(max),
        }
    }
}

/// A summary of fault service times: how long a filler took from reading a fault event to
/// waking the faulting thread, for the faults it served itself (fills and first writes).
/// Percentiles are within 12.5% of the exact value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Latency {
    /// Faults measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Longest.
    pub max: Duration,
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        write!(
            f,
            "p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} faults)",
            us(self.p50),
            us(self.p99),
            us(self.max),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for ns in (0..5000).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket_of(ns);
            assert!(b < BUCKETS, "{ns}");
            assert!(b >= last, "monotonic at {ns}");
            assert!(bucket_top(b) >= ns, "{ns} above its bucket's top");
            if b > 0 {
                assert!(bucket_top(b - 1) < ns, "{ns} belongs to an earlier bucket");
            }
            last = b;
        }
    }

    #[test]
    fn percentiles_are_within_an_eighth() {
        let h = Histogram::default();
        // 1..=1000 µs, once each: p50 = 500 µs, p99 = 990 µs, max = 1000 µs.
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.max, Duration::from_micros(1000));
        let close = |got: Duration, want: u64| {
            let got = got.as_nanos() as f64;
            let want = (want * 1000) as f64;
            assert!(got >= want && got <= want * 1.125, "{got} vs {want}");
        };
        close(s.p50, 500);
        close(s.p99, 990);
        assert_eq!(Histogram::default().summary(), Latency::default());
    }

    #[test]
    fn one_slow_fault_shows_in_max_and_not_in_median() {
        let h = Histogram::default();
        for _ in 0..999 {
            h.record(Duration::from_micros(10));
        }
        h.record(Duration::from_millis(50));
        let s = h.summary();
        assert!(s.p50 < Duration::from_micros(12), "{s:?}");
        assert!(s.p99 < Duration::from_micros(12), "{s:?}");
        assert_eq!(s.max, Duration::from_millis(50));
    }
}
