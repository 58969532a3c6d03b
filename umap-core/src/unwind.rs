//! Panics on umap's own threads: their messages, and threads that must not die quietly.
//!
//! A filler, an evictor or a snapshot's fault thread that unwound would leave the threads
//! faulting on its regions waiting in the kernel for an answer that never comes: nothing else
//! reads their fault events (or, for an evictor, makes room for their fills). A panicking
//! [`Store`](umap_store::Store) is not this case: `store_guard` turns those panics into store
//! errors. What is left is a bug in umap itself, after which the engine's page states cannot
//! be trusted; so [`abort_on_panic`] ends the process, saying why, instead of letting it hang.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A panic payload's message: the `&str` or `String` it carries, or a placeholder.
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_owned()
    }
}

/// Runs `body`, the whole life of the thread `name`, and returns what it returns; if it
/// panics, logs and prints why the process cannot go on and aborts it (see the module
/// documentation).
pub(crate) fn abort_on_panic<T>(name: &str, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let text = format!(
            "umap: the engine thread {name} panicked ({}); threads faulting on umap memory \
             would wait forever for it, so the process aborts. This is a bug in umap: please \
             report it with the panic message above",
            message(payload.as_ref())
        );
        log::error!("{text}");
        // Not `eprintln!`, which panics when stderr is closed.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{text}\n").as_bytes());
        std::process::abort()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_str_string_and_other_payloads() {
        let of = |f: fn()| message(catch_unwind(f).unwrap_err().as_ref());
        assert_eq!(of(|| panic!("plain")), "plain");
        assert_eq!(of(|| panic!("formatted {}", 7)), "formatted 7");
        assert_eq!(
            of(|| std::panic::panic_any(7u32)),
            "(a panic payload that is not a string)"
        );
    }

    #[test]
    fn a_thread_that_returns_does_not_abort() {
        assert_eq!(abort_on_panic("test", || 7), 7);
    }
}
