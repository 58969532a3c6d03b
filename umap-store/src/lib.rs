//! Backing stores for umap.
//!
//! A [`Store`] is where the bytes of a mapped region live when they are not resident: a file
//! ([`FileStore`]), memory ([`MemStore`]), or anything else that implements the trait. The pager
//! calls a store concurrently from many threads; a store knows nothing of page faults or
//! `userfaultfd`.
//!
//! The contract every backend keeps:
//! - [`Store::read_at`] fills the *whole* buffer. Bytes past the end of the store read as zeros,
//!   as a file mapped with `mmap` reads past its end within the last page.
//! - [`Store::write_at`] writes the whole buffer or fails; a read-only store refuses with
//!   [`StoreError::ReadOnly`]. Writing past the end grows the store where the backend can.
//! - [`Store::sync`] makes earlier writes durable (for files: `fdatasync`).
//! - [`Store::copy_source`] may offer memory holding a run's bytes, for the pager to copy
//!   from instead of reading them (a [`FileStore`] with
//!   [`mapped_reads`](FileStoreOptions::mapped_reads) does for sequential scans).
//!
//! ```
//! use umap_store::{MemStore, Store};
//!
//! let store = MemStore::from_vec(b"hello".to_vec());
//! let mut buf = [0xffu8; 8];
//! store.read_at(&mut buf, 0)?;
//! assert_eq!(&buf, b"hello\0\0\0");
//! # Ok::<(), umap_store::StoreError>(())
//! ```

#![warn(missing_docs)]

mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod file;
mod mapped;
mod mem;
#[cfg(test)]
mod tests;

pub use error::StoreError;
pub use file::{FileStore, FileStoreOptions};
pub use mem::MemStore;

use std::ptr::NonNull;
use std::sync::Arc;

/// The result type of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A backing store: a linear array of bytes that the pager reads pages from and writes dirty
/// pages back to.
///
/// Implementations must be safe to call from many threads at once (`&self` everywhere), and
/// concurrent calls on disjoint ranges must not interfere.
///
/// Report failures as errors. A call made by the pager that panics anyway is caught and
/// counts as failed, with [`StoreError::Panicked`]: a read fault's page is poisoned, a
/// write-back keeps its pages dirty, as for any other error.
pub trait Store: Send + Sync {
    /// The store's length in bytes.
    fn len(&self) -> u64;

    /// Whether the store is empty (its length is zero).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills all of `buf` with the bytes at `offset..offset + buf.len()`; bytes at or past
    /// [`len`](Store::len) read as zeros. Short reads and interrupted calls are retried inside.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes all of `buf` at `offset`. Fails with [`StoreError::ReadOnly`] on a read-only
    /// store.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes every completed write durable.
    fn sync(&self) -> Result<()>;

    /// Whether the store refuses writes. A read-only store can only be mapped read-only.
    fn is_read_only(&self) -> bool;

    /// The alignment, in bytes, that buffers and offsets should have for the fastest I/O
    /// (for example the logical block size under `O_DIRECT`). Any alignment works; aligned
    /// requests avoid a bounce copy. Defaults to 1.
    fn preferred_alignment(&self) -> usize {
        1
    }

    /// Where the pager may copy the bytes of `offset..offset + len` from directly, instead of
    /// reading them into a buffer first: memory that holds them, typically a store's file
    /// mapped read-only (see [`CopySource`]). `None` (the default) means "read them with
    /// [`read_at`](Store::read_at)", which the pager then does.
    ///
    /// The pager asks before each run it copies (not one moved from the page pool) that lies
    /// wholly inside the store, and only installs the bytes with `UFFDIO_COPY`, a copy done
    /// by the kernel; if that copy fails (the memory cannot be read), the region falls back
    /// to `read_at` for good.
    /// [`FileStore`] answers for runs that continue a sequential stream.
    fn copy_source(&self, offset: u64, len: usize) -> Option<CopySource> {
        let _ = (offset, len);
        None
    }
}

/// Memory holding a run of a store's bytes, for the pager to copy from (see
/// [`Store::copy_source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySource {
    ptr: NonNull<u8>,
}

impl CopySource {
    /// Memory at `ptr` holding the bytes of the run asked for.
    ///
    /// # Safety
    ///
    /// For as long as the store is alive, each page of the run's length of bytes from `ptr`
    /// must either be readable memory holding the store's bytes there (what
    /// [`read_at`](Store::read_at) would read), or not be readable at all (unmapped, or a
    /// file mapping's page that cannot be read), never memory of something else: the pager
    /// copies them into the application's pages. Some pages readable and others not is
    /// allowed.
    pub unsafe fn new(ptr: NonNull<u8>) -> CopySource {
        CopySource { ptr }
    }

    /// The address of the run's first byte. Reading through it in user space may raise
    /// `SIGBUS` (for a [`FileStore`], a page past the end of a file that shrank): the pager
    /// only passes it to the kernel, whose copy turns that into an error.
    pub fn as_ptr(self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

// SAFETY: a `CopySource` is an address the pager passes to the kernel; the memory it names is
// owned by the store (see `CopySource::new`), which is itself `Send + Sync`.
unsafe impl Send for CopySource {}
// SAFETY: as for `Send`: nothing is read or written through it in user space.
unsafe impl Sync for CopySource {}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: Store + ?Sized> Store for $ty {
            fn len(&self) -> u64 {
                (**self).len()
            }
            fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
                (**self).read_at(buf, offset)
            }
            fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
                (**self).write_at(buf, offset)
            }
            fn sync(&self) -> Result<()> {
                (**self).sync()
            }
            fn is_read_only(&self) -> bool {
                (**self).is_read_only()
            }
            fn preferred_alignment(&self) -> usize {
                (**self).preferred_alignment()
            }
            fn copy_source(&self, offset: u64, len: usize) -> Option<CopySource> {
                (**self).copy_source(offset, len)
            }
        }
    )*};
}

forward_store!(Arc<S>, Box<S>, &S);
