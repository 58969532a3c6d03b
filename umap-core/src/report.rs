//! Errors the engine met in the background, kept per region until the application takes
//! them ([`Region::take_errors`](crate::Region::take_errors)).
//!
//! A store read that fails poisons a page (the thread touching it gets `SIGBUS`), and a
//! write-back that fails during an eviction has no caller to return an error to: both are
//! logged, counted in [`Stats`](crate::Stats), and recorded here with where they happened and
//! the errno, so the application can find out what it lost or what is still unwritten.
//! Flushes return their errors and record them too, so the record is complete.
//!
//! The same failure repeated (an evictor retrying an unwritable run) is one record with a
//! count. At most [`MAX_RECORDS`] distinct records are kept per region between two takes;
//! beyond that, failures are still logged and counted but not recorded
//! ([`Stats::errors_unrecorded`](crate::Stats::errors_unrecorded)).

use std::fmt;

use parking_lot::Mutex;

use crate::stats::{bump, Counters};

/// The most distinct records a region keeps between two calls of
/// [`Region::take_errors`](crate::Region::take_errors).
pub const MAX_RECORDS: usize = 1024;

/// What the engine was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading a page from the store for a fault: the page was poisoned (accesses raise
    /// `SIGBUS`) until the region is unmapped.
    Read,
    /// Writing dirty pages back (eviction, flush or unmap): they stay dirty and resident, and
    /// are retried later.
    Write,
    /// Syncing the store at the end of a flush.
    Sync,
    /// A fill found the buffer full of pages that could not be evicted (dirty pages whose
    /// write-back fails) for longer than the engine waits: the fault was put back and is
    /// retried; until some page can be written back, faults on non-resident pages stall.
    BufferFull,
}

/// One failure recorded for a region.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegionError {
    /// The start address of the region it happened in.
    pub region: usize,
    /// What failed.
    pub kind: ErrorKind,
    /// Where in the region (bytes from its start) the failed request began.
    pub offset: usize,
    /// How many bytes of the region it covered (0 for a sync).
    pub len: usize,
    /// Where in the store it began.
    pub store_offset: u64,
    /// The operating-system error number, if there was one.
    pub errno: Option<i32>,
    /// The error's message.
    pub message: String,
    /// How many times this same failure happened since the errors were last taken.
    pub count: u64,
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} error at region offset {} ({} bytes, store offset {}) of the region at {:#x}, \
             {} time(s): {}",
            self.kind,
            self.offset,
            self.len,
            self.store_offset,
            self.region,
            self.count,
            self.message
        )
    }
}

/// A region's error records.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    /// The region's start address.
    region: usize,
    records: Mutex<Vec<RegionError>>,
}

impl ErrorLog {
    /// The log of the region starting at `region`.
    pub(crate) fn new(region: usize) -> ErrorLog {
        ErrorLog {
            region,
            records: Mutex::new(Vec::new()),
        }
    }

    /// Records a failure (or counts it again, if the same one is already recorded).
    pub(crate) fn record(
        &self,
        counters: &Counters,
        kind: ErrorKind,
        (offset, len, store_offset): (usize, usize, u64),
        errno: Option<i32>,
        message: &dyn fmt::Display,
    ) {
        let mut records = self.records.lock();
        if let Some(r) = records
            .iter_mut()
            .find(|r| r.kind == kind && r.offset == offset && r.len == len && r.errno == errno)
        {
            r.count += 1;
            return;
        }
        if records.len() >= MAX_RECORDS {
            bump(&counters.errors_unrecorded, 1);
            return;
        }
        records.push(RegionError {
            region: self.region,
            kind,
            offset,
            len,
            store_offset,
            errno,
            message: message.to_string(),
            count: 1,
        });
    }

    /// Takes every record, oldest first.
    pub(crate) fn take(&self) -> Vec<RegionError> {
        std::mem::take(&mut *self.records.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_the_log_is_bounded() {
        let counters = Counters::default();
        let log = ErrorLog::default();
        for _ in 0..3 {
            log.record(
                &counters,
                ErrorKind::Write,
                (4096, 8192, 4096),
                Some(5),
                &"boom",
            );
        }
        log.record(&counters, ErrorKind::Read, (0, 4096, 0), Some(5), &"bang");
        let got = log.take();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].count, 3);
        assert_eq!(got[1].kind, ErrorKind::Read);
        assert!(got[0].to_string().contains("boom"), "{}", got[0]);
        assert!(log.take().is_empty(), "taken");
        for i in 0..MAX_RECORDS + 5 {
            log.record(&counters, ErrorKind::Read, (i, 1, 0), None, &"x");
        }
        assert_eq!(log.take().len(), MAX_RECORDS);
        assert_eq!(
            counters
                .errors_unrecorded
                .load(std::sync::atomic::Ordering::Relaxed),
            5
        );
    }
}
