//! A gate that keeps a region's memory alive while engine threads work on it.
//!
//! Fillers and evictors [`enter`](Gate::enter) before touching a region's pages and leave
//! when the guard drops; [`close`](Gate::close) refuses new entries and waits until everyone
//! inside has left, after which nobody touches the region again. The state is one word: the
//! top bit says closed, the rest counts the threads inside. Entering is one atomic add, so
//! the fault path never contends on a lock.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backoff::Backoff;

const CLOSED: usize = 1 << (usize::BITS - 1);

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: AtomicUsize,
}

/// Proof of being inside a [`Gate`]; leaves on drop.
#[derive(Debug)]
pub(crate) struct GateGuard<'a>(&'a Gate);

impl Gate {
    /// Enters, unless the gate is closed.
    #[inline]
    pub(crate) fn enter(&self) -> Option<GateGuard<'_>> {
        // SeqCst pairs with `close`: either `close` sees our increment and waits for us, or
        // we see its CLOSED bit and back out.
        let prev = self.state.fetch_add(1, Ordering::SeqCst);
        if prev & CLOSED != 0 {
            self.state.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(GateGuard(self))
    }

    /// Whether the gate is closed (or closing).
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Closes the gate and waits until every thread inside has left.
    pub(crate) fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::SeqCst);
        let mut backoff = Backoff::new();
        while self.state.load(Ordering::SeqCst) & !CLOSED != 0 {
            // Those inside finish one store I/O at most.
            backoff.wait();
        }
    }
}

impl Gate {
    /// Opens a closed gate again (an unmap that could not write its region back gives the
    /// region back, working as before).
    pub(crate) fn reopen(&self) {
        self.state.fetch_and(!CLOSED, Ordering::SeqCst);
    }
}

impl Drop for GateGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.state.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn close_waits_for_those_inside_and_refuses_newcomers() {
        let gate = Arc::new(Gate::default());
        let inside = Arc::new(AtomicBool::new(false));
        let left = Arc::new(AtomicBool::new(false));
        let worker = {
            let (gate, inside, left) = (gate.clone(), inside.clone(), left.clone());
            std::thread::spawn(move || {
                let _g = gate.enter().unwrap();
                inside.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                left.store(true, Ordering::SeqCst);
            })
        };
        while !inside.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        gate.close();
        assert!(
            left.load(Ordering::SeqCst),
            "close returned before the worker left"
        );
        assert!(gate.enter().is_none());
        assert!(gate.is_closed());
        worker.join().unwrap();
        gate.reopen();
        assert!(!gate.is_closed());
        drop(gate.enter().expect("open again"));
        gate.close();
        assert!(gate.is_closed());
    }
}
