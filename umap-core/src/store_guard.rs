//! Calls into the user's [`Store`] that cannot unwind into the engine.
//!
//! A [`Store`] is user code, called on engine threads (fillers, evictors, a snapshot's
//! threads), on the caller's thread (a flush, an unmap) and, with `signal_faults`, in the
//! `SIGBUS` handler. A panic there would kill an engine thread and leave its pages in
//! `Filling` or `WriteBack` for good, with the faulting threads waiting on them forever; on a
//! caller's thread it would unwind through code that owns pages. So every engine call goes
//! through this module, which runs it under [`catch_unwind`] and turns a panic into
//! [`StoreError::Panicked`]: the call has failed, and the ordinary error paths do the rest (a
//! failed fault read poisons the page, a failed write-back keeps its pages dirty, a pin or a
//! prefetch returns the error). The panic is logged here, once, at error level (the default
//! panic hook prints it to stderr too).
//!
//! In the `SIGBUS` handler the guard applies as well: the panic unwinds only through the
//! handler's own frames, never through the signal frame, and ends as a failed read does
//! (the page is poisoned and the signal passed on). Unwinding allocates (the payload, the
//! hook's message), but the handler may already allocate and take locks (see
//! `Config::signal_faults`), so that adds no new hazard. The handler's own
//! [`catch_unwind`], which aborts, is left for panics of the engine itself.
//!
//! [`catch_unwind`] costs nothing on a call that does not panic. Built with `panic = "abort"`
//! there is nothing to catch: a store panic aborts the process.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use umap_store::{CopySource, Store, StoreError};

/// [`Store::read_at`], a panic turned into an error.
pub(crate) fn read_at(store: &dyn Store, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
    let len = buf.len();
    guarded("read", offset, len, || store.read_at(buf, offset))
}

/// [`Store::write_at`], a panic turned into an error.
pub(crate) fn write_at(store: &dyn Store, buf: &[u8], offset: u64) -> Result<(), StoreError> {
    guarded("write", offset, buf.len(), || store.write_at(buf, offset))
}

/// [`Store::sync`], a panic turned into an error.
pub(crate) fn sync(store: &dyn Store) -> Result<(), StoreError> {
    guarded("sync", 0, 0, || store.sync())
}

/// [`Store::copy_source`], a panic turned into `None` (the run is then read with `read_at`).
pub(crate) fn copy_source(store: &dyn Store, offset: u64, len: usize) -> Option<CopySource> {
    catch_unwind(AssertUnwindSafe(|| store.copy_source(offset, len))).unwrap_or_else(|payload| {
        panicked("copy_source", offset, len, payload);
        None
    })
}

/// Runs `call`. Unwind safety: after a panic the engine uses nothing the call touched (a
/// read's buffer is discarded as after a read error; a write's bytes are only read), and the
/// store's own state is the store's concern.
#[inline]
fn guarded(
    op: &'static str,
    offset: u64,
    len: usize,
    call: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    catch_unwind(AssertUnwindSafe(call))
        .unwrap_or_else(|payload| Err(panicked(op, offset, len, payload)))
}

/// The error for a store call that panicked with `payload`; logs it.
#[cold]
fn panicked(op: &'static str, offset: u64, len: usize, payload: Box<dyn Any + Send>) -> StoreError {
    let message = crate::unwind::message(payload.as_ref());
    // A payload's destructor may panic too (`panic_any` of such a value): keep that from
    // unwinding into the engine, and leak what it left.
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
    let error = StoreError::Panicked {
        op,
        offset,
        len,
        message,
    };
    log::error!("{error}; the engine treats it as a failed {op}");
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use umap_store::MemStore;

    /// Panics in every call, with a `&str`, a `String` or another payload.
    struct Panicky(u8);

    impl Store for Panicky {
        fn len(&self) -> u64 {
            4096
        }
        fn read_at(&self, _: &mut [u8], offset: u64) -> Result<(), StoreError> {
            match self.0 {
                0 => panic!("static message"),
                1 => panic!("read of offset {offset}"),
                _ => std::panic::panic_any(7u32),
            }
        }
        fn write_at(&self, _: &[u8], _: u64) -> Result<(), StoreError> {
            panic!("write refused")
        }
        fn sync(&self) -> Result<(), StoreError> {
            panic!("sync refused")
        }
        fn is_read_only(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_panic_becomes_a_store_error_with_its_message() {
        let mut buf = [0u8; 16];
        let err = read_at(&Panicky(0), &mut buf, 8192).unwrap_err();
        assert!(
            matches!(&err, StoreError::Panicked { op: "read", offset: 8192, len: 16, message }
                if message == "static message"),
            "{err:?}"
        );
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        assert!(!err.is_transient(), "a panic is not retried");
        let err = read_at(&Panicky(1), &mut buf, 4096).unwrap_err();
        assert_eq!(
            err.to_string(),
            "store read of 16 bytes at offset 4096 panicked: read of offset 4096"
        );
        let err = read_at(&Panicky(2), &mut buf, 0).unwrap_err();
        assert!(err.to_string().contains("not a string"), "{err}");
        let err = write_at(&Panicky(0), &buf, 4).unwrap_err();
        assert!(err.to_string().contains("write refused"), "{err}");
        let err = sync(&Panicky(0)).unwrap_err();
        assert!(
            matches!(&err, StoreError::Panicked { op: "sync", .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "store sync panicked: sync refused");
    }

    #[test]
    fn calls_that_do_not_panic_pass_through() {
        let store = MemStore::from_vec(vec![5u8; 8]);
        let mut buf = [0u8; 4];
        read_at(&store, &mut buf, 2).unwrap();
        assert_eq!(buf, [5; 4]);
        write_at(&store, &[9], 0).unwrap();
        sync(&store).unwrap();
        assert_eq!(store.to_vec()[0], 9);
        let ro = MemStore::from_vec(vec![0u8; 8]).read_only();
        assert!(matches!(write_at(&ro, &[1], 0), Err(StoreError::ReadOnly)));
    }
}
