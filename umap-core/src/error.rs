//! The engine's error type.

use crate::uffd::UffdError;
use umap_store::StoreError;

/// The result type of engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an engine operation failed. Messages say what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument or configuration value is not allowed.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidArgument {
        /// The parameter or configuration field.
        name: &'static str,
        /// The value given, as text.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// A userfaultfd operation failed (creation, registration, or serving a fault).
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// The backing store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reserving or configuring the address range failed.
    #[error("{op} failed: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The buffer stayed full of pages that could not be evicted (dirty pages whose
    /// write-back fails) for longer than the engine waits.
    #[error(
        "the buffer ({capacity} bytes) stayed full of pages that could not be evicted (dirty \
         pages whose write-back fails: see Region::take_errors); retry once the store works"
    )]
    BufferFull {
        /// The buffer's capacity in bytes.
        capacity: usize,
    },
    /// An engine thread could not be started.
    #[error("cannot start engine thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A page of the range is poisoned: its store read failed when it was faulted in, and it
    /// stays so (accesses raise `SIGBUS`) until the region is unmapped (`Region::pin`).
    #[error(
        "the page at offset {offset} of the region is poisoned: its store read failed (see \
         Region::take_errors), and it stays so until the region is unmapped"
    )]
    Poisoned {
        /// The page's offset in the region, in bytes.
        offset: usize,
    },
    /// Pinning would leave too little of the buffer for faults (`Region::pin`).
    #[error(
        "cannot pin {bytes} more bytes: {pinned} bytes are pinned already and at most {limit} \
         may be (the buffer's low-water mark, leaving room for two pages of the largest page \
         size): pin less, unpin, or use a larger buffer"
    )]
    PinLimit {
        /// Bytes the pin would add.
        bytes: usize,
        /// Bytes pinned before it.
        pinned: usize,
        /// The most that may be pinned.
        limit: usize,
    },
}

impl Error {
    pub(crate) fn invalid(
        name: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Error {
        Error::InvalidArgument {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn os(op: &'static str, source: std::io::Error) -> Error {
        Error::Os { op, source }
    }
}
