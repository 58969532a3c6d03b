//! Faults served on the faulting thread ([`Config::signal_faults`](crate::Config)).
//!
//! With `UFFD_FEATURE_SIGBUS` the kernel queues no fault event: the faulting thread gets a
//! `SIGBUS` (`BUS_ADRERR`, at the faulting address) instead, and this module's handler serves
//! the fault right there, with the fillers' own code ([`Filler::serve`] in its in-place
//! form): it claims the page, reads the store into a scratch buffer and installs the page
//! with `UFFDIO_COPY` (or lifts write protection for a first write), then returns, and the
//! access is retried. No thread is woken and none sleeps, which removes both cross-CPU
//! hand-offs of a fault served by a filler (see docs/PERFORMANCE.md).
//!
//! The handler is process-wide and installed once, by the first engine that asks for it. It
//! serves the addresses of the regions of the engines registered in [`SLOTS`] and passes
//! every other `SIGBUS` (a poisoned page, a file mapping beyond its end, any other engine's
//! or program's) to the handler that was installed before it, or to the default action (the
//! process dies of the signal, as it would have without umap).
//!
//! What the handler may do: it runs on an application thread interrupted at an access to a
//! region's memory. It takes engine locks (the registry's read lock, the eviction queue's,
//! a slot's) and may allocate memory; none of that can deadlock unless the interrupted code
//! itself holds one of them, which it can only if it touches region memory while inside the
//! engine or the global allocator (a heap placed in a region): see `Config::signal_faults`.
//! It never unwinds: a panic aborts the process. A panic of the *store* is not one of those:
//! the store calls go through [`crate::store_guard`] here as on a filler, so it unwinds only
//! within the handler's frames, and the read counts as failed (the page is poisoned and the
//! signal passed on, as for a read error).
//!
//! Slots: an engine publishes a pointer to its shared state in a free slot for as long as it
//! runs. A handler counts itself in the slot's `readers` before loading the pointer, and an
//! engine that leaves clears the pointer and then waits until `readers` is zero, so a handler
//! never uses an engine's state after it is freed.

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::buffer::PageRef;
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::evictor;
use crate::filler::{Access, Filler, Job, Outcome};
use crate::stats::bump_both;
use crate::sys::Mapping;

/// How many signal-mode engines may run at once in a process.
pub(crate) const MAX_ENGINES: usize = 32;

/// How long a handler that found its region being unmapped waits before the access is
/// retried (the unmap then finishes, and the retried access faults like after `munmap`).
const CLOSING_WAIT: Duration = Duration::from_micros(100);

/// An engine's place in [`SLOTS`].
struct Slot {
    engine: AtomicPtr<Shared>,
    readers: AtomicUsize,
    /// The process that registered the engine. A forked child inherits the handler and a copy
    /// of the slots, but none of the engines' threads, and its copies of their locks may be
    /// held forever: the handler serves no engine of another process.
    pid: AtomicI32,
}

static SLOTS: [Slot; MAX_ENGINES] = [const {
    Slot {
        engine: AtomicPtr::new(std::ptr::null_mut()),
        readers: AtomicUsize::new(0),
        pid: AtomicI32::new(0),
    }
}; MAX_ENGINES];

/// The `SIGBUS` action in place before this module's handler, for the signals it does not
/// serve.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Scratch buffers and reclaim lists for the threads that serve faults in place, one per
/// concurrent fault (a thread takes any free one).
pub(crate) struct InPlaceSlots {
    slots: Box<[Mutex<Parts>]>,
}

#[derive(Default)]
struct Parts {
    scratch: Option<Mapping>,
    reclaim: Vec<PageRef>,
}

impl InPlaceSlots {
    /// `n` slots, their reclaim lists allocated up front (a fault handler allocates as little
    /// as it can).
    pub(crate) fn new(n: usize) -> InPlaceSlots {
        InPlaceSlots {
            slots: (0..n)
                .map(|_| {
                    Mutex::new(Parts {
                        scratch: None,
                        reclaim: Vec::with_capacity(evictor::BATCH),
                    })
                })
                .collect(),
        }
    }

    /// Runs `f` with the first free slot; waits while all are taken. Searching from the first
    /// keeps the slots in use (and their scratch buffers, up to a 1 MiB run each) as few as
    /// the faults served at once, so the memory beyond the buffer stays small.
    fn with<R>(&self, f: impl FnOnce(&mut Parts) -> R) -> R {
        let mut backoff = Backoff::new();
        loop {
            for slot in self.slots.iter() {
                if let Some(mut parts) = slot.try_lock() {
                    return f(&mut parts);
                }
            }
            backoff.wait();
        }
    }
}

/// An engine registered with the handler; leaves its slot when dropped.
pub(crate) struct Registration {
    index: usize,
}

/// Installs the handler (once per process) and registers `shared`'s regions with it.
pub(crate) fn register(shared: &Arc<Shared>) -> Result<Registration> {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        return Err(Error::invalid(
            "signal_faults",
            true,
            "is supported on x86-64 Linux only (the handler tells writes from reads by the \
             CPU's page-fault error code); turn it off",
        ));
    }
    install_handler()?;
    // SAFETY: getpid(2) cannot fail.
    let pid = unsafe { libc::getpid() };
    let ptr = Arc::as_ptr(shared).cast_mut();
    for (index, slot) in SLOTS.iter().enumerate() {
        if slot
            .engine
            .compare_exchange(
                std::ptr::null_mut(),
                ptr,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            // Until this store a handler skips the slot (the engine has no region yet).
            slot.pid.store(pid, Ordering::SeqCst);
            return Ok(Registration { index });
        }
    }
    Err(Error::invalid(
        "signal_faults",
        true,
        format!(
            "at most {MAX_ENGINES} engines serving faults on the faulting thread may run at \
             once; stop one, or turn signal_faults off for this one"
        ),
    ))
}

impl Drop for Registration {
    fn drop(&mut self) {
        let slot = &SLOTS[self.index];
        slot.engine.store(std::ptr::null_mut(), Ordering::SeqCst);
        // A handler that loaded the pointer before it was cleared is counted in `readers`.
        let mut backoff = Backoff::new();
        while slot.readers.load(Ordering::SeqCst) != 0 {
            backoff.wait();
        }
    }
}

/// Installs [`on_sigbus`] for `SIGBUS`, keeping the previous action, once per process.
fn install_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: both `sigaction` structures are fully initialised (zeroed, then the fields
        // the kernel reads set); `on_sigbus` has the signature `SA_SIGINFO` requires.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            // SA_NODEFER: a store read inside the handler may fault on another region.
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            let _ = PREVIOUS.set(previous);
        }
        Ok(())
    });
    result.map_err(|errno| {
        Error::os(
            "sigaction(SIGBUS) for serving faults on the faulting thread",
            std::io::Error::from_raw_os_error(errno),
        )
    })
}

/// The `SIGBUS` handler.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: errno is thread-local; the handler must leave it as it found it.
    let errno = unsafe { *libc::__errno_location() };
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the kernel passes a valid siginfo and context to an SA_SIGINFO handler.
        unsafe { serve(&*info, context) }
    }))
    .unwrap_or_else(|_| {
        const MESSAGE: &[u8] = b"umap: panic while serving a fault in a SIGBUS handler\n";
        // SAFETY: write(2) of a static buffer to stderr; abort never returns.
        unsafe {
            libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
            libc::abort()
        }
    });
    if !served {
        // SAFETY: the same arguments, passed on.
        unsafe { pass_on(signal, info, context) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// What kind of access faulted, from the CPU's page-fault error code: (write, on a present
/// page). Only x86-64 is supported ([`register`] refuses elsewhere): without the error code a
/// write-protect fault could not be told from a stale read fault.
fn access_kind(context: *mut c_void) -> (bool, bool) {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        const PRESENT: i64 = 1;
        const WRITE: i64 = 2;
        // SAFETY: the kernel passes a `ucontext_t` to an SA_SIGINFO handler; on x86-64 its
        // `REG_ERR` register holds the page fault's error code.
        let code = unsafe {
            (*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_ERR as usize]
        };
        (code & WRITE != 0, code & PRESENT != 0)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = context;
        unreachable!("signal_faults is refused on this architecture")
    }
}

/// Serves the fault if it is one on a registered engine's region; false for any other
/// `SIGBUS`.
///
/// # Safety
/// `context` is the context the kernel passed to the handler.
unsafe fn serve(info: &libc::siginfo_t, context: *mut c_void) -> bool {
    if info.si_code != libc::BUS_ADRERR {
        return false; // a poisoned page (BUS_MCEERR_AR) or another kind of bus error
    }
    // SAFETY: a SIGBUS raised by a fault carries its address.
    let addr = unsafe { info.si_addr() } as usize;
    // SAFETY: getpid(2) cannot fail.
    let pid = unsafe { libc::getpid() };
    for slot in &SLOTS {
        if slot.engine.load(Ordering::Relaxed).is_null() || slot.pid.load(Ordering::SeqCst) != pid {
            continue; // free, or an engine of the parent of this forked process
        }
        slot.readers.fetch_add(1, Ordering::SeqCst);
        let engine = slot.engine.load(Ordering::SeqCst);
        // SAFETY: the engine's `Registration` clears the pointer and waits for `readers` to
        // drop to zero before the engine's state can be freed, and we are counted.
        let served = (!engine.is_null())
            .then(|| unsafe { &*engine })
            .and_then(|shared| serve_in(shared, addr, context));
        slot.readers.fetch_sub(1, Ordering::SeqCst);
        if let Some(served) = served {
            return served;
        }
    }
    false
}

/// Serves a fault at `addr` if it lies in one of `shared`'s regions (`None` otherwise);
/// false if the page is poisoned (the signal is passed on, as for an I/O error under mmap).
fn serve_in(shared: &Shared, addr: usize, context: *mut c_void) -> Option<bool> {
    let region = shared.registry.lookup(addr)?;
    let slots = shared.in_place.as_ref()?;
    let (write, present) = access_kind(context);
    let access = Access {
        write,
        write_protect: write && present,
    };
    bump_both(&shared.counters, &region.counters, access.counter(), 1);
    bump_both(&shared.counters, &region.counters, |c| &c.signal_faults, 1);
    let job = Job {
        page: region.page_of(addr),
        region,
        access,
        read_at: Instant::now(),
    };
    let outcome = slots.with(|parts| {
        let mut filler = Filler::in_place(
            shared,
            parts.scratch.take(),
            std::mem::take(&mut parts.reclaim),
        );
        let mut backoff = Backoff::new();
        let served = loop {
            match filler.serve(&job) {
                Outcome::Busy => backoff.wait(),
                Outcome::Done => break true,
                Outcome::Closing => {
                    std::thread::sleep(CLOSING_WAIT);
                    break true;
                }
                Outcome::Poisoned => break false,
            }
        };
        (parts.scratch, parts.reclaim) = filler.into_parts();
        served
    });
    Some(outcome)
}

/// Passes a signal this module does not serve to the action installed before it, or to the
/// default action.
///
/// # Safety
/// The arguments are those the kernel passed to the handler.
unsafe fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    match PREVIOUS.get() {
        Some(previous)
            if previous.sa_sigaction != libc::SIG_DFL && previous.sa_sigaction != libc::SIG_IGN =>
        {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: an SA_SIGINFO handler has this signature.
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                    unsafe { std::mem::transmute(previous.sa_sigaction) };
                handler(signal, info, context);
            } else {
                // SAFETY: a plain handler has this signature.
                let handler: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(previous.sa_sigaction) };
                handler(signal);
            }
        }
        _ => {
            // The default action: returning retries the access, which raises the signal
            // again, now fatal (a synchronous SIGBUS cannot be ignored).
            // SAFETY: a zeroed sigaction with SIG_DFL is valid.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            }
        }
    }
}
