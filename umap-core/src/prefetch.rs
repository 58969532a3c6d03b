//! Prefetch requests: ranges of pages to fill in the background, and the handle that tells
//! when one is done.
//!
//! [`Region::prefetch`](crate::Region::prefetch) queues a range here and wakes an idle
//! filler. Fillers serve faults first: they take a chunk of a prefetch (one store read, one
//! `UFFDIO_COPY`) only when the userfaultfd has no event pending, so a prefetch never delays a
//! fault by more than one chunk.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::region::RegionShared;

/// A queued request.
struct Request {
    region: Arc<RegionShared>,
    pages: Range<usize>,
    ticket: Arc<Ticket>,
}

/// A chunk of a request handed to a filler.
pub(crate) struct Chunk {
    pub(crate) region: Arc<RegionShared>,
    pub(crate) pages: Range<usize>,
    pub(crate) ticket: Arc<Ticket>,
}

/// Queued prefetch requests, oldest first.
#[derive(Default)]
pub(crate) struct PrefetchQueue {
    requests: Mutex<VecDeque<Request>>,
    /// Requests queued: lets fillers skip the lock when there are none.
    queued: AtomicUsize,
}

impl PrefetchQueue {
    /// Queues `pages` of `region`; returns the request's handle.
    pub(crate) fn push(&self, region: Arc<RegionShared>, pages: Range<usize>) -> Prefetch {
        let ticket = Arc::new(Ticket::new(pages.len()));
        if !pages.is_empty() {
            self.requests.lock().push_back(Request {
                region,
                pages,
                ticket: ticket.clone(),
            });
            self.queued.fetch_add(1, Ordering::Release);
        }
        Prefetch { ticket }
    }

    /// Whether a request may be queued (a cheap check).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.queued.load(Ordering::Acquire) == 0
    }

    /// Takes one run's worth of pages (see [`RegionShared::max_run`]) from the front of the
    /// oldest request.
    pub(crate) fn take(&self) -> Option<Chunk> {
        let mut q = self.requests.lock();
        let front = q.front_mut()?;
        let end = front
            .pages
            .end
            .min(front.pages.start + front.region.max_run);
        let chunk = Chunk {
            region: front.region.clone(),
            pages: front.pages.start..end,
            ticket: front.ticket.clone(),
        };
        front.pages.start = end;
        if front.pages.is_empty() {
            q.pop_front();
            self.queued.fetch_sub(1, Ordering::Release);
        }
        Some(chunk)
    }

    /// Drops the requests of `region` (it is being unmapped); their handles complete.
    pub(crate) fn forget_region(&self, region: &Arc<RegionShared>) {
        let mut q = self.requests.lock();
        q.retain(|r| {
            let keep = !Arc::ptr_eq(&r.region, region);
            if !keep {
                r.ticket.done(r.pages.len(), None);
                self.queued.fetch_sub(1, Ordering::Release);
            }
            keep
        });
    }
}

/// Progress of one request, shared by its handle and the fillers.
pub(crate) struct Ticket {
    state: Mutex<TicketState>,
    done_cv: Condvar,
}

struct TicketState {
    remaining: usize,
    error: Option<Error>,
}

impl Ticket {
    fn new(pages: usize) -> Ticket {
        Ticket {
            state: Mutex::new(TicketState {
                remaining: pages,
                error: None,
            }),
            done_cv: Condvar::new(),
        }
    }

    /// `pages` of the request were handled (filled, found resident, or given up with `error`).
    pub(crate) fn done(&self, pages: usize, error: Option<Error>) {
        let mut s = self.state.lock();
        s.remaining = s.remaining.saturating_sub(pages);
        if s.error.is_none() {
            s.error = error;
        }
        if s.remaining == 0 {
            self.done_cv.notify_all();
        }
    }
}

/// A prefetch in progress, from [`Region::prefetch`](crate::Region::prefetch). Dropping it
/// does not cancel the prefetch; [`wait`](Prefetch::wait) blocks until it is done.
pub struct Prefetch {
    ticket: Arc<Ticket>,
}

impl Prefetch {
    /// Whether every page of the range has been handled.
    pub fn is_done(&self) -> bool {
        self.ticket.state.lock().remaining == 0
    }

    /// Pages of the range not handled yet.
    pub fn remaining_pages(&self) -> usize {
        self.ticket.state.lock().remaining
    }

    /// Blocks until every page of the range has been filled or found resident. Returns the
    /// first store error: a page whose read failed is left absent (not poisoned: nobody has
    /// touched it yet), and an access to it reads it again. A range whose region was unmapped
    /// meanwhile is done.
    pub fn wait(self) -> Result<()> {
        let mut s = self.ticket.state.lock();
        while s.remaining > 0 {
            self.ticket.done_cv.wait(&mut s);
        }
        s.error.take().map_or(Ok(()), Err)
    }
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("remaining_pages", &self.remaining_pages())
            .finish()
    }
}
