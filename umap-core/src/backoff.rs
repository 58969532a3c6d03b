//! Waiting for another thread that is about to finish something (a page transition, which
//! takes at most one store I/O).

use std::time::Duration;

/// An escalating wait, in the manner of `crossbeam_utils::Backoff::snooze`: spin first (the
/// other thread is likely running and nearly done), then yield the CPU (it may need this
/// one), then sleep in short steps (it is waiting on I/O).
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    const SPIN_STEPS: u32 = 16;
    const YIELD_STEPS: u32 = 64;
    const SLEEP: Duration = Duration::from_micros(50);

    pub(crate) fn new() -> Backoff {
        Backoff::default()
    }

    /// Waits a little, longer than the previous call.
    pub(crate) fn wait(&mut self) {
        if self.step < Self::SPIN_STEPS {
            for _ in 0..1u32 << self.step.min(6) {
                std::hint::spin_loop();
            }
        } else if self.step < Self::YIELD_STEPS {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Self::SLEEP);
        }
        self.step = self.step.saturating_add(1);
    }

    /// Whether the wait has reached its sleeping stage.
    #[cfg(test)]
    fn is_sleeping(&self) -> bool {
        self.step >= Self::YIELD_STEPS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalates_to_sleeping_and_stays_there() {
        let mut b = Backoff::new();
        for _ in 0..Backoff::YIELD_STEPS {
            assert!(!b.is_sleeping());
            b.wait();
        }
        assert!(b.is_sleeping());
        let start = std::time::Instant::now();
        b.wait();
        assert!(start.elapsed() >= Backoff::SLEEP);
    }
}
