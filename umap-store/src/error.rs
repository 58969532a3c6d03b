//! The error type of store operations.

use std::io;
use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The operating system refused a read, write, sync, open or resize.
    #[error("store {op} of {len} bytes at offset {offset} failed: {source}")]
    Io {
        /// What was being done: "read", "write", "sync", "open", "resize".
        op: &'static str,
        /// The byte offset of the request.
        offset: u64,
        /// The length of the request in bytes.
        len: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file could not be opened, created or inspected while building a store.
    #[error("cannot open store file {}: {source}", path.display())]
    Open {
        /// The file that was being opened.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `O_DIRECT` was asked for, but the file system holding the file refuses it (as tmpfs
    /// does).
    #[error(
        "O_DIRECT is not supported by the file system holding {}: {source}; open the store without direct I/O",
        path.display()
    )]
    DirectIoUnsupported {
        /// The file that was being opened.
        path: PathBuf,
        /// The underlying error (usually `EINVAL`).
        #[source]
        source: io::Error,
    },
    /// An open file's access mode does not allow what the store needs: it is write-only (a
    /// store reads), or read-only for a writable store. Its errno is `EACCES`, as for an
    /// `mmap` of a descriptor opened the wrong way.
    #[error("{file} is open {mode}; {needed}")]
    AccessMode {
        /// The file (its path, or the descriptor's number when the path is unknown).
        file: String,
        /// How it is open: "write-only" or "read-only".
        mode: &'static str,
        /// What the store needs instead.
        needed: &'static str,
    },
    /// A write was attempted on a read-only store.
    #[error("the store is read-only: open it writable to write to it")]
    ReadOnly,
    /// A request reached beyond what the backend can address.
    #[error("request of {len} bytes at offset {offset} is out of range: {reason}")]
    OutOfRange {
        /// The byte offset of the request.
        offset: u64,
        /// The length of the request in bytes.
        len: usize,
        /// What limit was hit.
        reason: &'static str,
    },
    /// The store was opened or configured with arguments that cannot work.
    #[error("invalid store configuration: {0}")]
    Invalid(String),
    /// The store's own code panicked during a call made by the pager. The pager catches the
    /// panic and treats the call as failed (a read as an I/O error, a write as a write-back
    /// that keeps its pages dirty); its errno is `EIO`.
    #[error("store {op}{span} panicked: {message}", span = request_span(*offset, *len))]
    Panicked {
        /// What was being done: "read", "write" or "sync".
        op: &'static str,
        /// The byte offset of the request (0 for a sync).
        offset: u64,
        /// The length of the request in bytes (0 for a sync).
        len: usize,
        /// The panic's message, when it was a string.
        message: String,
    },
}

/// ` of 4096 bytes at offset 8192` for a read or write; nothing for a request without a
/// range (a sync).
fn request_span(offset: u64, len: usize) -> String {
    if len == 0 && offset == 0 {
        String::new()
    } else {
        format!(" of {len} bytes at offset {offset}")
    }
}

impl StoreError {
    /// The operating-system error number behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            StoreError::Io { source, .. }
            | StoreError::Open { source, .. }
            | StoreError::DirectIoUnsupported { source, .. } => source.raw_os_error(),
            StoreError::AccessMode { .. } => Some(libc::EACCES),
            StoreError::ReadOnly => Some(libc::EROFS),
            StoreError::OutOfRange { .. } => Some(libc::EFBIG),
            StoreError::Invalid(_) => Some(libc::EINVAL),
            StoreError::Panicked { .. } => Some(libc::EIO),
        }
    }

    /// Whether retrying the same call may succeed (interrupted or would-block).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.raw_os_error(),
            Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOMEM)
        )
    }
}
