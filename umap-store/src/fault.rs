//! A store wrapper that injects failures and stalls, for testing what the pager does when
//! its store misbehaves. Enabled by the `fault-injection` feature.
//!
//! [`FaultyStore`] forwards every call to the store it wraps, except where one of its
//! [`Fault`] rules matches the call: then it fails the call with a typed error (transient,
//! which the pager retries, or permanent) or stalls it for a while before going on. A rule
//! matches by operation, by the byte range the call touches, by the call's sequence number
//! (the n-th read, the n-th write), and by a seeded probability, all of which must hold; it
//! can be limited to a number of injections. Every injected failure is logged in order, so a
//! test can check that each one was reported.
//!
//! ```
//! use umap_store::fault::{Fault, FaultyStore, Op};
//! use umap_store::{MemStore, Store};
//!
//! let store = FaultyStore::new(MemStore::new(1 << 16), 7);
//! // The second write fails permanently (EIO); reads of the first page fail transiently.
//! store.inject(Fault::on(Op::Write).calls(1..2));
//! let id = store.inject(Fault::on(Op::Read).range(0..4096).transient());
//! store.write_at(b"ok", 0)?;
//! assert!(store.write_at(b"no", 0).is_err());
//! assert!(store.read_at(&mut [0; 8], 100).unwrap_err().is_transient());
//! store.remove(id);
//! store.read_at(&mut [0; 8], 100)?;
//! assert_eq!(store.injected().len(), 2);
//! # Ok::<(), umap_store::StoreError>(())
//! ```

use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::{Result, Store, StoreError};

/// A store operation a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Store::read_at`].
    Read,
    /// [`Store::write_at`].
    Write,
    /// [`Store::sync`] (its byte range is empty at offset 0).
    Sync,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Sync => "sync",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a matching rule does to the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail with [`StoreError::Io`] carrying this errno (`EIO`: permanent; `EAGAIN`:
    /// transient, see [`StoreError::is_transient`]).
    Fail(i32),
    /// Sleep this long, then go on (further rules, then the wrapped store).
    Stall(Duration),
}

/// A rule: which calls it matches and what it does to them. Build one with [`Fault::on`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    op: Op,
    range: Option<Range<u64>>,
    calls: Option<Range<u64>>,
    probability: Option<f64>,
    times: Option<u64>,
    action: Action,
}

impl Fault {
    /// A rule failing every `op` call permanently (`EIO`), until narrowed down.
    pub fn on(op: Op) -> Fault {
        Fault {
            op,
            range: None,
            calls: None,
            probability: None,
            times: None,
            action: Action::Fail(libc::EIO),
        }
    }

    /// Only calls whose bytes overlap `range` of the store (a call of zero bytes matches if
    /// its offset lies in the range).
    pub fn range(mut self, range: Range<u64>) -> Fault {
        self.range = Some(range);
        self
    }

    /// Only the calls of this operation whose sequence number (0 for the first call of the
    /// operation on this store, counting every call, failed or not) lies in `calls`: `3..4`
    /// is the fourth call only, `10..u64::MAX` the eleventh and every later one.
    pub fn calls(mut self, calls: Range<u64>) -> Fault {
        self.calls = Some(calls);
        self
    }

    /// Only a random share `p` (0.0 to 1.0) of the calls, drawn from the store's seed.
    pub fn probability(mut self, p: f64) -> Fault {
        // NaN would compare false everywhere (and fire always): treat it as never.
        self.probability = Some(if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) });
        self
    }

    /// At most `n` injections; then the rule stays but matches nothing.
    pub fn times(mut self, n: u64) -> Fault {
        self.times = Some(n);
        self
    }

    /// Fail with `EIO`, an error retrying will not cure (the default).
    pub fn permanent(mut self) -> Fault {
        self.action = Action::Fail(libc::EIO);
        self
    }

    /// Fail with `EAGAIN`, an error the caller may retry ([`StoreError::is_transient`]).
    pub fn transient(mut self) -> Fault {
        self.action = Action::Fail(libc::EAGAIN);
        self
    }

    /// Fail with this errno.
    pub fn errno(mut self, errno: i32) -> Fault {
        self.action = Action::Fail(errno);
        self
    }

    /// Stall matching calls for `delay` instead of failing them.
    pub fn stall(mut self, delay: Duration) -> Fault {
        self.action = Action::Stall(delay);
        self
    }

    fn matches(&self, op: Op, offset: u64, len: usize, seq: u64) -> bool {
        if op != self.op || self.times == Some(0) {
            return false;
        }
        if let Some(r) = &self.range {
            let end = offset.saturating_add(len as u64);
            let overlaps = if len == 0 {
                r.contains(&offset)
            } else {
                offset < r.end && end > r.start
            };
            if !overlaps {
                return false;
            }
        }
        if let Some(c) = &self.calls {
            if !c.contains(&seq) {
                return false;
            }
        }
        true
    }
}

/// Identifies a rule added with [`FaultyStore::inject`], to [`remove`](FaultyStore::remove) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultId(u64);

/// One failure the store injected, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The operation that failed.
    pub op: Op,
    /// Its byte offset.
    pub offset: u64,
    /// Its length in bytes.
    pub len: usize,
    /// The errno it failed with.
    pub errno: i32,
}

impl Injected {
    /// Whether this failure was transient (retrying the call may succeed).
    pub fn is_transient(&self) -> bool {
        self.to_error().is_transient()
    }

    fn to_error(&self) -> StoreError {
        StoreError::Io {
            op: self.op.name(),
            offset: self.offset,
            len: self.len,
            source: io::Error::from_raw_os_error(self.errno),
        }
    }
}

/// A [`Store`] that forwards to `S` and injects the failures and stalls its rules describe.
/// See the [module documentation](self).
pub struct FaultyStore<S> {
    inner: S,
    rules: Mutex<Vec<(FaultId, Fault)>>,
    next_id: AtomicU64,
    /// Calls so far, per operation (the sequence numbers rules match on).
    calls: [AtomicU64; 3],
    /// State of the SplitMix64 generator behind probabilities.
    rng: AtomicU64,
    injected: Mutex<Vec<Injected>>,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`, with no rules yet; `seed` makes probabilistic rules reproducible (for
    /// a given order of calls).
    pub fn new(inner: S, seed: u64) -> FaultyStore<S> {
        FaultyStore {
            inner,
            rules: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            calls: Default::default(),
            rng: AtomicU64::new(seed),
            injected: Mutex::new(Vec::new()),
        }
    }

    /// Adds a rule; rules are applied in the order they were added.
    pub fn inject(&self, fault: Fault) -> FaultId {
        let id = FaultId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.rules.lock().push((id, fault));
        id
    }

    /// Removes a rule (if it is still there).
    pub fn remove(&self, id: FaultId) {
        self.rules.lock().retain(|(i, _)| *i != id);
    }

    /// Removes every rule: from now on the store behaves like the one it wraps.
    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    /// Every failure injected so far, in order.
    pub fn injected(&self) -> Vec<Injected> {
        self.injected.lock().clone()
    }

    /// How many `op` calls were made so far (failed ones included).
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op.index()].load(Ordering::Relaxed)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// A uniform draw in `[0, 1)`.
    fn draw(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Applies the rules to a call: stalls as they say, and returns the error of the first
    /// failing rule that matches.
    fn check(&self, op: Op, offset: u64, len: usize) -> Result<()> {
        let seq = self.calls[op.index()].fetch_add(1, Ordering::Relaxed);
        let mut stalls = Vec::new();
        let mut failure = None;
        {
            let mut rules = self.rules.lock();
            for (_, rule) in rules.iter_mut() {
                if !rule.matches(op, offset, len, seq) {
                    continue;
                }
                if let Some(p) = rule.probability {
                    if self.draw() >= p {
                        continue;
                    }
                }
                if let Some(n) = &mut rule.times {
                    *n -= 1;
                }
                match rule.action {
                    Action::Stall(d) => stalls.push(d),
                    Action::Fail(errno) => {
                        failure = Some(Injected {
                            op,
                            offset,
                            len,
                            errno,
                        });
                        break;
                    }
                }
            }
        }
        // Sleep outside the lock: a stalled call must not stall the others.
        for d in stalls {
            std::thread::sleep(d);
        }
        match failure {
            Some(f) => {
                let err = f.to_error();
                self.injected.lock().push(f);
                Err(err)
            }
            None => Ok(()),
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check(Op::Read, offset, buf.len())?;
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check(Op::Write, offset, buf.len())?;
        self.inner.write_at(buf, offset)
    }

    fn sync(&self) -> Result<()> {
        self.check(Op::Sync, 0, 0)?;
        self.inner.sync()
    }

    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }

    fn preferred_alignment(&self) -> usize {
        self.inner.preferred_alignment()
    }
}

impl<S: fmt::Debug> fmt::Debug for FaultyStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .field("rules", &self.rules.lock().len())
            .field("injected", &self.injected.lock().len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;
    use std::time::Instant;

    fn store() -> FaultyStore<MemStore> {
        FaultyStore::new(
            MemStore::from_vec((0..=255u8).cycle().take(1 << 16).collect()),
            1,
        )
    }

    #[test]
    fn without_rules_it_is_the_wrapped_store() {
        let s = store();
        let mut buf = [0u8; 4];
        s.read_at(&mut buf, 256 + 3).unwrap();
        assert_eq!(buf, [3, 4, 5, 6]);
        s.write_at(b"xy", 10).unwrap();
        s.sync().unwrap();
        assert_eq!(&s.inner().to_vec()[10..12], b"xy");
        assert_eq!(s.calls(Op::Read), 1);
        assert_eq!(s.calls(Op::Write), 1);
        assert_eq!(s.calls(Op::Sync), 1);
        assert!(s.injected().is_empty());
    }

    #[test]
    fn ranges_fail_only_overlapping_calls_with_typed_errors() {
        let s = store();
        s.inject(Fault::on(Op::Read).range(4096..8192));
        s.inject(Fault::on(Op::Write).range(0..10).transient());
        let mut buf = [0u8; 100];
        s.read_at(&mut buf, 4096 - 100).unwrap();
        let err = s.read_at(&mut buf, 4096 - 99).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        assert!(!err.is_transient());
        assert!(err.to_string().contains("read"), "{err}");
        s.read_at(&mut buf, 8192).unwrap();
        let err = s.write_at(b"a", 9).unwrap_err();
        assert!(err.is_transient(), "{err}");
        s.write_at(b"a", 10).unwrap();
        assert_eq!(s.inner().to_vec()[9], 9, "a failed write writes nothing");
        let got = s.injected();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            Injected {
                op: Op::Read,
                offset: 4096 - 99,
                len: 100,
                errno: libc::EIO
            }
        );
        assert!(got[1].is_transient());
    }

    #[test]
    fn call_numbers_times_and_removal() {
        let s = store();
        // The third and fourth writes; then a rule good for two failures of any sync.
        let id = s.inject(Fault::on(Op::Write).calls(2..4));
        s.inject(Fault::on(Op::Sync).times(2));
        let results: Vec<bool> = (0..6).map(|_| s.write_at(b"z", 0).is_ok()).collect();
        assert_eq!(results, [true, true, false, false, true, true]);
        assert!(s.sync().is_err());
        assert!(s.sync().is_err());
        s.sync().unwrap();
        s.inject(Fault::on(Op::Write));
        assert!(s.write_at(b"z", 0).is_err());
        s.remove(id);
        assert!(s.write_at(b"z", 0).is_err(), "the other rule stays");
        s.clear();
        s.write_at(b"z", 0).unwrap();
        assert_eq!(s.injected().len(), 6);
    }

    #[test]
    fn probabilities_are_seeded_and_roughly_right() {
        let run = |seed| {
            let s = FaultyStore::new(MemStore::new(64), seed);
            s.inject(Fault::on(Op::Read).probability(0.25));
            (0..4000)
                .map(|_| s.read_at(&mut [0; 1], 0).is_err())
                .collect::<Vec<_>>()
        };
        let a = run(5);
        assert_eq!(a, run(5), "same seed, same failures");
        assert_ne!(a, run(6));
        let failed = a.iter().filter(|&&f| f).count();
        assert!(
            (800..1200).contains(&failed),
            "{failed} of 4000 at p = 0.25"
        );
    }

    #[test]
    fn a_nan_probability_never_fires() {
        let s = FaultyStore::new(MemStore::new(64), 1);
        s.inject(Fault::on(Op::Read).probability(f64::NAN));
        assert!((0..100).all(|_| s.read_at(&mut [0; 1], 0).is_ok()));
    }

    #[test]
    fn stalls_delay_matching_calls_then_let_them_through() {
        let s = store();
        s.inject(
            Fault::on(Op::Read)
                .range(0..1)
                .stall(Duration::from_millis(50)),
        );
        s.read_at(&mut [0; 1], 1).unwrap();
        let t = Instant::now();
        let mut buf = [9u8; 2];
        s.read_at(&mut buf, 0).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(buf, [0, 1], "a stalled call then succeeds");
        assert!(s.injected().is_empty(), "stalls are not failures");
    }
}
