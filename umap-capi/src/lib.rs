//! `libumap`: umap-rs behind LLNL umap's C API (`include/umap.h`), so that C and C++
//! programs written against LLNL umap relink against this library and run unchanged.
//!
//! - One engine per process, started at the first `umap()` from the `UMAP_*` environment
//!   variables ([`Config::from_env`], read once), as LLNL umap does. It lives until the
//!   process exits; an `atexit` handler writes back every region still mapped.
//! - Regions are kept by start address, so `uunmap(addr, len)` finds them. Each has its own
//!   lock: `uunmap` waits for the pins in progress on its region only, and a `UMAP_FIXED`
//!   map waits only for the unmaps of regions in its range.
//! - Every entry point catches panics and turns every error into `errno` (and a one-line
//!   message on stderr): nothing unwinds into C, nothing aborts.
//!
//! The semantics, and where they differ from LLNL umap's, are in the README ("C library").

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_long, c_void};
use std::fs::File;
use std::ops::Range;
use std::os::fd::FromRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libc::{off_t, size_t};
use parking_lot::{Condvar, Mutex, RwLock};
use umap_core::uffd::UffdError;
use umap_core::{Config, Error, MapOptions, Region, Umap};
use umap_store::{FileStore, StoreError};

/// `UMAP_PRIVATE` (the only sharing mode, as in LLNL umap).
const UMAP_PRIVATE: c_int = libc::MAP_PRIVATE;
/// `UMAP_FIXED`: map at exactly the address given.
const UMAP_FIXED: c_int = libc::MAP_FIXED;
/// `UMAP_FAILED`.
const UMAP_FAILED: *mut c_void = !0usize as *mut c_void;

/// Why a call failed: the `errno` to set and the message to print.
#[derive(Debug)]
struct Failure {
    errno: c_int,
    message: String,
}

impl Failure {
    fn new(errno: c_int, message: impl Into<String>) -> Failure {
        Failure {
            errno,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(errno_of(&e), e.to_string())
    }
}

/// The `errno` that best says why an engine operation failed.
fn errno_of(e: &Error) -> c_int {
    match e {
        Error::InvalidArgument { .. } => libc::EINVAL,
        Error::Uffd(UffdError::Create { .. }) => libc::EPERM,
        Error::Uffd(UffdError::MissingFeatures { .. }) => libc::EOPNOTSUPP,
        Error::Uffd(u) => u.errno().unwrap_or(libc::EIO),
        Error::Store(s) => s.raw_os_error().unwrap_or(libc::EIO),
        Error::Os { source, .. } => source.raw_os_error().unwrap_or(libc::ENOMEM),
        Error::Thread { .. } => libc::EAGAIN,
        Error::PinLimit { .. } | Error::BufferFull { .. } => libc::ENOMEM,
        Error::Poisoned { .. } => libc::EIO,
        _ => libc::EIO,
    }
}

/// Writes one line to stderr. A failed write is ignored: `eprintln!` would panic, and a panic
/// must not leave an `extern "C"` function.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn set_errno(errno: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's errno slot, valid for the
    // thread's lifetime.
    unsafe { *libc::__errno_location() = errno };
}

/// Runs `body` for the C entry point `name`: a failure or a panic sets `errno`, prints one
/// line on stderr and returns `failed`.
///
/// On success `errno` is left as the caller set it: the engine's own system calls (a futex
/// wait that finds its word changed, an `EAGAIN` from a non-blocking read) set it as a side
/// effect, and `umap_prefetch` and `umap_fetch_and_pin` report failure only through `errno`.
fn ffi<T>(name: &str, failed: T, body: impl FnOnce() -> Result<T, Failure>) -> T {
    // SAFETY: `__errno_location` returns the calling thread's errno slot.
    let saved = unsafe { *libc::__errno_location() };
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => {
            set_errno(saved);
            value
        }
        Ok(Err(f)) => {
            say(format_args!("umap: {name}: {}", f.message));
            set_errno(f.errno);
            failed
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            say(format_args!(
                "umap: {name}: internal error (a bug in umap-rs, please report it): {what}"
            ));
            set_errno(libc::EIO);
            failed
        }
    }
}

/// The configuration, read from the environment once.
static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
/// The engine, started at the first `umap()`.
static ENGINE: OnceLock<Umap> = OnceLock::new();
/// Serialises starting the engine (a failed start is retried by the next call).
static ENGINE_START: Mutex<()> = parking_lot::const_mutex(());
/// The mapped regions, by start address. A region stays here until it is unmapped, marked
/// while a `uunmap` unmaps it ([`Slot::unmapping`]). The slots never overlap: a map that the
/// kernel places over a slot still marked (its memory already unmapped, the slot about to go)
/// removes that slot. Never held while an [`Entry::region`] lock is taken.
static REGIONS: Mutex<BTreeMap<usize, Slot>> = parking_lot::const_mutex(BTreeMap::new());
/// Notified whenever a `uunmap` ends (the slot removed, or unmarked if the write-back
/// failed): a `UMAP_FIXED` map over a region being unmapped waits on it (with [`REGIONS`]).
static UNMAPPED: Condvar = Condvar::new();
/// How long `uunmap` waits for a `umap_fetch_and_pin` in another thread before it says on
/// stderr that it is still waiting (then it waits on: the pin ends, with room or `ENOMEM`).
const PIN_WAIT_NOTICE: Duration = Duration::from_secs(10);

/// A mapped region, shared by the calls that use it.
struct Entry {
    /// The region, `None` once unmapped. `umap_fetch_and_pin` and `umap_prefetch` hold it for
    /// reading while they use the region; `uunmap` takes it for writing, so it waits (blocked,
    /// not polling) for the pins in progress, and nothing uses the region after it.
    region: RwLock<Option<Region>>,
    /// The region's length and page size, for lookups without the lock.
    len: usize,
    page_size: usize,
}

impl Entry {
    /// The bytes the region spans: its length rounded up to its page size.
    fn span(&self) -> usize {
        self.len.next_multiple_of(self.page_size)
    }
}

/// A region in [`REGIONS`].
struct Slot {
    entry: Arc<Entry>,
    /// A `uunmap` has taken the region: new pins, prefetches and unmaps of it fail (EINVAL),
    /// and a `UMAP_FIXED` map over it waits for the unmap to end.
    unmapping: bool,
}

fn config() -> Result<&'static Config, Failure> {
    CONFIG
        .get_or_init(|| Config::from_env().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Failure::new(libc::EINVAL, format!("bad umap configuration: {e}")))
}

fn engine() -> Result<&'static Umap, Failure> {
    if let Some(engine) = ENGINE.get() {
        return Ok(engine);
    }
    let config = config()?;
    let _starting = ENGINE_START.lock();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine);
    }
    let engine = Umap::new(config.clone())?;
    // SAFETY: getpid has no preconditions.
    ENGINE_PID.store(
        unsafe { libc::getpid() },
        std::sync::atomic::Ordering::Relaxed,
    );
    let engine = ENGINE.get_or_init(|| engine);
    // SAFETY: `flush_at_exit` is a plain function that catches its own panics.
    if unsafe { libc::atexit(flush_at_exit) } != 0 {
        say(format_args!(
            "umap: cannot register the exit handler: regions not unmapped are not written back \
             at exit"
        ));
    }
    Ok(engine)
}

/// The process that started the engine. A child forked from it has a copy of the engine's
/// memory but none of its threads (and perhaps locks held at the fork): it must not flush,
/// which would hang, or write its copy of the pages over the parent's file.
static ENGINE_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Writes back every region still mapped when the process exits (as the kernel would for a
/// shared `mmap`); nothing in a forked child.
extern "C" fn flush_at_exit() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != ENGINE_PID.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let _ = catch_unwind(|| {
        if let Some(engine) = ENGINE.get() {
            if let Err(e) = engine.flush() {
                say(format_args!(
                    "umap: writing back the regions at exit failed: {e}"
                ));
            }
        }
    });
}

/// A [`FileStore`] on a duplicate of `fd`, read-write if `writable`. The descriptor's access
/// mode is checked by [`FileStore::from_file`]; its [`StoreError::AccessMode`] is `EACCES`.
fn store_from_fd(fd: c_int, writable: bool) -> Result<FileStore, Failure> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor (the lowest free one >= 0) and has no
    // other effect; it fails with EBADF if `fd` is not open.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        let e = std::io::Error::last_os_error();
        let errno = e.raw_os_error().unwrap_or(libc::EBADF);
        return Err(if errno == libc::EBADF {
            Failure::new(errno, format!("fd {fd} is not an open file descriptor"))
        } else {
            Failure::new(errno, format!("cannot duplicate fd {fd}: {e}"))
        });
    }
    // SAFETY: `dup` is a descriptor we just created and nobody else owns.
    let file = unsafe { File::from_raw_fd(dup) };
    FileStore::from_file(file, !writable)
        .map_err(|e| {
            let hint = match e {
                StoreError::AccessMode { .. } => {
                    " (umap needs fd open O_RDONLY or O_RDWR for PROT_READ, O_RDWR for PROT_WRITE)"
                }
                _ => "",
            };
            Failure::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("fd {fd}: {e}{hint}"),
            )
        })
        .and_then(|store| {
            let mapped =
                umap_core::env::switch_var(MAPPED_READS_VARIABLE, |name| std::env::var_os(name))?;
            Ok(if mapped {
                store.with_mapped_reads()
            } else {
                store
            })
        })
}

/// `1` opens every file with mapped reads (`FileStoreOptions::mapped_reads`): sequential
/// runs copied straight from a read-only mapping of the file. `0` or unset: off.
const MAPPED_READS_VARIABLE: &str = "UMAP_MAPPED_READS";

fn map(
    addr: *mut c_void,
    length: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> Result<*mut c_void, Failure> {
    config()?;
    if length == 0 {
        return Err(Failure::new(
            libc::EINVAL,
            "length is 0: there is nothing to map",
        ));
    }
    let writable = match prot {
        libc::PROT_READ => false,
        p if p == libc::PROT_READ | libc::PROT_WRITE || p == libc::PROT_WRITE => true,
        _ => {
            return Err(Failure::new(
                libc::EINVAL,
                format!("prot {prot:#x} is not supported: use PROT_READ or PROT_READ | PROT_WRITE"),
            ))
        }
    };
    if flags & UMAP_PRIVATE == 0 || flags & !(UMAP_PRIVATE | UMAP_FIXED) != 0 {
        return Err(Failure::new(
            libc::EINVAL,
            format!(
                "flags {flags:#x} are not supported: use UMAP_PRIVATE, optionally | UMAP_FIXED"
            ),
        ));
    }
    let page = umap_core::sys::page_size();
    if offset < 0 || offset as u64 % page as u64 != 0 {
        return Err(Failure::new(
            libc::EINVAL,
            format!(
                "offset {offset} is not a non-negative multiple of the system page size ({page})"
            ),
        ));
    }
    let mut options = MapOptions::new()
        .writable(writable)
        .offset(offset as u64)
        .len(length);
    let store = store_from_fd(fd, writable)?;
    let engine = engine()?;
    // Maps happen under the lock, so that a fixed map never replaces a region that is
    // mapped but not yet in REGIONS.
    let mut regions = REGIONS.lock();
    if flags & UMAP_FIXED != 0 {
        let page_size = engine.config().page_size;
        // It waits for the unmaps in progress of regions in its range (still mapped), and for
        // those alone.
        while !fixed_range_is_free(&regions, addr as usize, length, page_size)? {
            #[cfg(test)]
            hooks::FIXED_WAITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            UNMAPPED.wait(&mut regions);
        }
        // SAFETY: the caller of umap with UMAP_FIXED gives up whatever is mapped in the range,
        // as with mmap(MAP_FIXED) (umap.h says so); no umap region lies there (checked above),
        // and none can appear there meanwhile (REGIONS is locked).
        options = unsafe { options.fixed_address_replacing(addr as usize) };
    }
    let region = engine.map_shared(Arc::new(store), options)?;
    let base = region.as_ptr() as usize;
    let end = base + region.len().next_multiple_of(region.page_size());
    // A slot the kernel has just given the range of is one whose uunmap has unmapped it
    // and not yet removed it: it is gone.
    let stale: Vec<usize> = regions
        .range(..end)
        .filter(|(&b, slot)| b + slot.entry.span() > base)
        .map(|(&b, _)| b)
        .collect();
    for b in stale {
        regions.remove(&b);
    }
    let entry = Entry {
        len: region.len(),
        page_size: region.page_size(),
        region: RwLock::new(Some(region)),
    };
    regions.insert(
        base,
        Slot {
            entry: Arc::new(entry),
            unmapping: false,
        },
    );
    Ok(base as *mut c_void)
}

/// `UMAP_FIXED`: whether `[addr, addr + length)` (rounded up to `page_size`) is free of umap
/// regions: `Ok(false)` if a region there is being unmapped (wait for it and ask again),
/// `EEXIST` if another is mapped there. The region then goes at exactly `addr`, replacing what
/// is mapped there (as with `mmap(MAP_FIXED)` and LLNL umap).
fn fixed_range_is_free(
    regions: &BTreeMap<usize, Slot>,
    addr: usize,
    length: usize,
    page_size: usize,
) -> Result<bool, Failure> {
    let end = length
        .checked_next_multiple_of(page_size)
        .and_then(|len| addr.checked_add(len))
        .ok_or_else(|| {
            Failure::new(
                libc::EINVAL,
                format!(
                    "UMAP_FIXED at {addr:#x}: the range runs past the end of the address space"
                ),
            )
        })?;
    let mut free = true;
    // The slots do not overlap: those over the range are the last ones that start below its end.
    for (&base, slot) in regions
        .range(..end)
        .rev()
        .take_while(|(&base, slot)| base + slot.entry.span() > addr)
    {
        if !slot.unmapping {
            return Err(Failure::new(
                libc::EEXIST,
                format!(
                    "UMAP_FIXED range {addr:#x}..{end:#x} overlaps the umap region at {base:#x} \
                     ({} bytes): uunmap it first",
                    slot.entry.len
                ),
            ));
        }
        free = false;
    }
    Ok(free)
}

fn unmap(addr: *mut c_void, length: size_t) -> Result<c_int, Failure> {
    let base = addr as usize;
    let entry = {
        let mut regions = REGIONS.lock();
        let slot = regions.get_mut(&base).ok_or_else(|| {
            Failure::new(
                libc::EINVAL,
                format!("no region starts at {addr:p} (pass the address umap returned)"),
            )
        })?;
        if slot.unmapping {
            return Err(Failure::new(
                libc::EINVAL,
                format!("the region at {addr:p} is being unmapped by another thread"),
            ));
        }
        let (len, rounded) = (slot.entry.len, slot.entry.span());
        if length != 0 && length != len && length != rounded {
            return Err(Failure::new(
                libc::EINVAL,
                format!(
                    "length {length} is not the region's length ({len}): pass 0 or the length \
                     given to umap (partial unmapping is not supported)"
                ),
            ));
        }
        slot.unmapping = true;
        slot.entry.clone()
    };
    let (result, gone) = {
        // Pins in progress in other threads hold the region for reading: wait for them to
        // return (new ones see the mark and fail).
        let mut region = loop {
            if let Some(region) = entry.region.try_write_for(PIN_WAIT_NOTICE) {
                break region;
            }
            say(format_args!(
                "umap: uunmap: {addr:p}: still waiting for umap_fetch_and_pin in another thread \
                 to return"
            ));
        };
        match region.take().map(Region::unmap) {
            Some(Ok(())) => (Ok(0), true),
            Some(Err(e)) => {
                let (error, kept) = e.into_parts();
                let mut failure = Failure::from(error);
                let gone = kept.is_none();
                if let Some(kept) = kept {
                    // The write-back failed: nothing was unmapped and no data is lost. The
                    // region stays mapped (and registered here) for a later uunmap or
                    // umap_flush.
                    *region = Some(kept);
                    failure.message.push_str(
                        " (the region stays mapped with its data: call uunmap again, or \
                         umap_flush, once the file can be written)",
                    );
                }
                (Err(failure), gone)
            }
            // Only the unmap that marked the slot takes the region: not reached.
            None => (
                Err(Failure::new(
                    libc::EINVAL,
                    format!("the region at {addr:p} is unmapped already"),
                )),
                true,
            ),
        }
    };
    let mut regions = REGIONS.lock();
    if regions
        .get(&base)
        .is_some_and(|slot| Arc::ptr_eq(&slot.entry, &entry))
    {
        if gone {
            regions.remove(&base);
        } else if let Some(slot) = regions.get_mut(&base) {
            slot.unmapping = false;
        }
    }
    UNMAPPED.notify_all();
    result
}

/// The slot of the region containing `addr` (up to the end of its last page), its start and
/// the offset of `addr` in it.
fn region_at(regions: &BTreeMap<usize, Slot>, addr: usize) -> Option<(&Slot, usize, usize)> {
    let (&base, slot) = regions.range(..=addr).next_back()?;
    let offset = addr - base;
    (offset < slot.entry.span()).then_some((slot, base, offset))
}

/// The slot of the region containing `addr` ([`region_at`]) if it is not being unmapped; the
/// error says which.
fn usable_region_at(
    regions: &BTreeMap<usize, Slot>,
    addr: usize,
    what: impl FnOnce() -> String,
) -> Result<(Arc<Entry>, usize, usize), Failure> {
    match region_at(regions, addr) {
        Some((slot, base, offset)) if !slot.unmapping => Ok((slot.entry.clone(), base, offset)),
        Some(_) => Err(Failure::new(
            libc::EINVAL,
            format!("{} is in a region being unmapped", what()),
        )),
        None => Err(Failure::new(
            libc::EINVAL,
            format!("{} is not in any region", what()),
        )),
    }
}

/// The prefetch requests for `pages`, (region start, page index) pairs in any order and
/// possibly repeated: each run of adjacent pages of a region is one request of at most
/// `max_pages(region start)` pages, as (region start, pages).
fn prefetch_requests(
    mut pages: Vec<(usize, usize)>,
    max_pages: impl Fn(usize) -> usize,
) -> Vec<(usize, Range<usize>)> {
    pages.sort_unstable();
    pages.dedup();
    let mut requests: Vec<(usize, Range<usize>)> = Vec::new();
    for (base, page) in pages {
        match requests.last_mut() {
            Some((b, run)) if *b == base && run.end == page && run.len() < max_pages(base) => {
                run.end += 1
            }
            _ => requests.push((base, page..page + 1)),
        }
    }
    requests
}

fn prefetch(items: &[umap_prefetch_item]) -> Result<(), Failure> {
    let Some(engine) = ENGINE.get() else {
        return Err(Failure::new(libc::EINVAL, "no region is mapped"));
    };
    let mut first_error: Option<Failure> = None;
    let mut entries: BTreeMap<usize, Arc<Entry>> = BTreeMap::new();
    let mut pages: Vec<(usize, usize)> = Vec::with_capacity(items.len());
    {
        let regions = REGIONS.lock();
        for item in items {
            let addr = item.page_base_addr as usize;
            match usable_region_at(&regions, addr, || format!("{addr:#x}")) {
                Ok((entry, base, offset)) => {
                    pages.push((base, offset / entry.page_size));
                    entries.entry(base).or_insert(entry);
                }
                Err(f) => {
                    first_error.get_or_insert(f);
                }
            }
        }
    }
    // A request never covers more than half the buffer, so it cannot evict itself.
    let buffer = engine.config().buffer_size;
    let max_pages = |base: usize| (buffer / entries[&base].page_size / 2).max(1);
    let mut handles = Vec::new();
    for (base, run) in prefetch_requests(pages, max_pages) {
        let entry = &entries[&base];
        let region = entry.region.read();
        let Some(region) = region.as_ref() else {
            first_error.get_or_insert_with(|| {
                Failure::new(
                    libc::EINVAL,
                    format!("the region at {base:#x} was unmapped by another thread"),
                )
            });
            continue;
        };
        let offset = run.start * entry.page_size;
        let len = (run.len() * entry.page_size).min(entry.len - offset);
        match region.prefetch(offset, len) {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                first_error.get_or_insert(e.into());
            }
        }
    }
    for handle in handles {
        if let Err(e) = handle.wait() {
            first_error.get_or_insert(e.into());
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn fetch_and_pin(paddr: *mut c_char, size: u64) -> Result<(), Failure> {
    let addr = paddr as usize;
    let range_text = || format!("[{addr:#x}, +{size})");
    let (entry, base, offset) = usable_region_at(&REGIONS.lock(), addr, range_text)?;
    if size == 0 {
        return Ok(());
    }
    let end = usize::try_from(size)
        .ok()
        .and_then(|size| offset.checked_add(size))
        .filter(|&end| end <= entry.span())
        .ok_or_else(|| {
            Failure::new(
                libc::EINVAL,
                format!(
                    "{} runs past the end of its region ({} bytes at {base:#x})",
                    range_text(),
                    entry.len,
                ),
            )
        })?;
    // Held while pinning: a uunmap in another thread waits for the pin to return.
    let region = entry.region.read();
    #[cfg(test)]
    hooks::pinning(base);
    let Some(region) = region.as_ref() else {
        return Err(Failure::new(
            libc::EINVAL,
            format!("the region at {base:#x} was unmapped by another thread"),
        ));
    };
    // The rest of the last page lies past the region's length: pin the page all the same
    // (a range that starts there pins the region's last byte, hence its page).
    let start = offset.min(entry.len - 1);
    let end = end.min(entry.len);
    region.pin(start, end - start)?;
    Ok(())
}

fn cfg<T: Default>(name: &str, get: impl FnOnce(&Config) -> T) -> T {
    ffi(name, T::default(), || config().map(get))
}

/// Maps `length` bytes of the file open as `fd`, from `offset`; see `include/umap.h`.
///
/// # Safety
/// As `mmap(2)`: with `UMAP_FIXED`, `addr` must be a range the caller may give up.
#[no_mangle]
pub unsafe extern "C" fn umap(
    addr: *mut c_void,
    length: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    ffi("umap", UMAP_FAILED, || {
        map(addr, length, prot, flags, fd, offset)
    })
}

/// Writes back and unmaps the region starting at `addr`; see `include/umap.h`.
///
/// # Safety
/// As `munmap(2)`: the region's memory must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn uunmap(addr: *mut c_void, length: size_t) -> c_int {
    ffi("uunmap", -1, || unmap(addr, length))
}

/// Writes back every region and syncs their files; 0 or -1 with `errno`.
#[no_mangle]
pub extern "C" fn umap_flush() -> c_int {
    ffi("umap_flush", -1, || match ENGINE.get() {
        Some(engine) => engine.flush().map(|()| 0).map_err(Failure::from),
        None => Ok(0),
    })
}

/// Always 1: writable regions write back.
#[no_mangle]
pub extern "C" fn umap_has_write_support() -> c_int {
    1
}

/// One page to prefetch (`struct umap_prefetch_item`).
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct umap_prefetch_item {
    /// Any address in the page.
    pub page_base_addr: *mut c_void,
}

/// Fills the pages holding the `npages` addresses of `page_array` and waits for them.
///
/// # Safety
/// `page_array` points to `npages` readable items (or `npages` is 0).
#[no_mangle]
pub unsafe extern "C" fn umap_prefetch(npages: c_int, page_array: *mut umap_prefetch_item) {
    ffi("umap_prefetch", (), || {
        let n = usize::try_from(npages)
            .map_err(|_| Failure::new(libc::EINVAL, format!("npages {npages} is negative")))?;
        if n == 0 {
            return Ok(());
        }
        if page_array.is_null() {
            return Err(Failure::new(libc::EINVAL, "page_array is NULL"));
        }
        // SAFETY: the caller passes `npages` items at `page_array` (checked non-null).
        let items = unsafe { std::slice::from_raw_parts(page_array, n) };
        prefetch(items)
    })
}

/// Fills `[paddr, paddr + size)` and keeps it resident until the region is unmapped.
///
/// # Safety
/// None beyond the C API's: `paddr` is only compared with region addresses.
#[no_mangle]
pub unsafe extern "C" fn umap_fetch_and_pin(paddr: *mut c_char, size: u64) {
    ffi("umap_fetch_and_pin", (), || fetch_and_pin(paddr, size))
}

/// The system page size in bytes.
#[no_mangle]
pub extern "C" fn umapcfg_get_system_page_size() -> c_long {
    umap_core::sys::page_size() as c_long
}

/// The umap page size in bytes (`UMAP_PAGESIZE`).
#[no_mangle]
pub extern "C" fn umapcfg_get_umap_page_size() -> u64 {
    cfg("umapcfg_get_umap_page_size", |c| c.page_size as u64)
}

/// Fault events a filler reads at once (`UMAP_MAX_FAULT_EVENTS`).
#[no_mangle]
pub extern "C" fn umapcfg_get_max_fault_events() -> u64 {
    cfg("umapcfg_get_max_fault_events", |c| {
        c.max_fault_events as u64
    })
}

/// Filler threads (`UMAP_PAGE_FILLERS`).
#[no_mangle]
pub extern "C" fn umapcfg_get_num_fillers() -> u64 {
    cfg("umapcfg_get_num_fillers", |c| c.fillers as u64)
}

/// Evictor threads (`UMAP_PAGE_EVICTORS`).
#[no_mangle]
pub extern "C" fn umapcfg_get_num_evictors() -> u64 {
    cfg("umapcfg_get_num_evictors", |c| c.evictors as u64)
}

/// The buffer in umap pages (`UMAP_BUFSIZE`).
#[no_mangle]
pub extern "C" fn umapcfg_get_max_pages_in_buffer() -> u64 {
    cfg("umapcfg_get_max_pages_in_buffer", |c| {
        (c.buffer_size / c.page_size) as u64
    })
}

/// The read-ahead window in pages (`UMAP_READ_AHEAD`).
#[no_mangle]
pub extern "C" fn umapcfg_get_read_ahead() -> u64 {
    cfg("umapcfg_get_read_ahead", |c| c.read_ahead as u64)
}

/// Percent of the buffer eviction stops at (`UMAP_EVICT_LOW_WATER_THRESHOLD`).
#[no_mangle]
pub extern "C" fn umapcfg_get_evict_low_water_threshold() -> c_int {
    cfg("umapcfg_get_evict_low_water_threshold", |c| {
        c_int::from(c.low_water_percent)
    })
}

/// Percent of the buffer eviction starts at (`UMAP_EVICT_HIGH_WATER_THRESHOLD`).
#[no_mangle]
pub extern "C" fn umapcfg_get_evict_high_water_threshold() -> c_int {
    cfg("umapcfg_get_evict_high_water_threshold", |c| {
        c_int::from(c.high_water_percent)
    })
}

/// Points where a unit test holds a thread, to order it against others without sleeping.
#[cfg(test)]
mod hooks {
    use std::sync::atomic::AtomicUsize;

    use parking_lot::{Condvar, Mutex};

    /// `UMAP_FIXED` maps that waited for an unmap.
    pub(super) static FIXED_WAITS: AtomicUsize = AtomicUsize::new(0);

    /// A pin of the region starting at `base` stops once it holds the region (`paused`) until
    /// `released`. One per region, so tests running at once keep to their own regions.
    pub(super) struct PinPause {
        pub(super) base: usize,
        pub(super) paused: bool,
        pub(super) released: bool,
    }

    pub(super) static PIN_PAUSES: Mutex<Vec<PinPause>> = parking_lot::const_mutex(Vec::new());
    pub(super) static PIN_PAUSE_CHANGED: Condvar = Condvar::new();

    /// Called by `fetch_and_pin` of the region at `base` once it holds the region.
    pub(super) fn pinning(base: usize) {
        let mut pauses = PIN_PAUSES.lock();
        let Some(p) = pauses.iter_mut().find(|p| p.base == base) else {
            return;
        };
        p.paused = true;
        PIN_PAUSE_CHANGED.notify_all();
        while pauses.iter().any(|p| p.base == base && !p.released) {
            PIN_PAUSE_CHANGED.wait(&mut pauses);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno() -> c_int {
        // SAFETY: the calling thread's errno slot.
        unsafe { *libc::__errno_location() }
    }

    #[test]
    fn success_leaves_errno_as_the_caller_set_it() {
        set_errno(0);
        // The body's system calls clobber errno, as a futex wait or a non-blocking read can.
        let v = ffi("test", -1, || {
            set_errno(libc::EAGAIN);
            Ok(7)
        });
        assert_eq!((v, errno()), (7, 0));
        set_errno(libc::ENOENT);
        ffi("test", -1, || Ok(1));
        assert_eq!(
            errno(),
            libc::ENOENT,
            "an errno set before the call survives it"
        );
    }

    /// Maps a file of `len` bytes, all `byte`, read-only; returns the region's address.
    fn map_file(dir: &std::path::Path, name: &str, len: usize, byte: u8) -> usize {
        use std::os::fd::AsRawFd;
        let path = dir.join(name);
        std::fs::write(&path, vec![byte; len]).unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY: no fixed address; the file is open for reading.
        let p = unsafe {
            umap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                UMAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, UMAP_FAILED, "umap failed: errno {}", errno());
        p as usize
    }

    /// Polls until `done()`. The minute is a guard against a hang, not a time measured.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "hung waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn is_unmapping(base: usize) -> bool {
        REGIONS.lock().get(&base).is_some_and(|slot| slot.unmapping)
    }

    /// Makes a `umap_fetch_and_pin` of the region at `base` stop once it holds the region,
    /// until [`release_pins`].
    fn pause_pins(base: usize) {
        hooks::PIN_PAUSES.lock().push(hooks::PinPause {
            base,
            paused: false,
            released: false,
        });
    }

    fn pin_is_paused(base: usize) -> bool {
        hooks::PIN_PAUSES
            .lock()
            .iter()
            .any(|p| p.base == base && p.paused)
    }

    fn release_pins(base: usize) {
        for p in hooks::PIN_PAUSES.lock().iter_mut() {
            p.released |= p.base == base;
        }
        hooks::PIN_PAUSE_CHANGED.notify_all();
    }

    fn end_pause(base: usize) {
        hooks::PIN_PAUSES.lock().retain(|p| p.base != base);
    }

    /// Pins `len` bytes at `addr` in a new thread, which returns the errno.
    fn pin_in_thread(addr: usize, len: u64) -> std::thread::JoinHandle<c_int> {
        std::thread::spawn(move || {
            set_errno(0);
            // SAFETY: `addr` is only compared with region addresses.
            unsafe { umap_fetch_and_pin(addr as *mut c_char, len) };
            errno()
        })
    }

    /// Unmaps the region at `addr` in a new thread, which returns uunmap's result and errno.
    fn uunmap_in_thread(addr: usize) -> std::thread::JoinHandle<(c_int, c_int)> {
        std::thread::spawn(move || {
            // SAFETY: nothing uses the region's memory after the unmap.
            let r = unsafe { uunmap(addr as *mut c_void, 0) };
            (r, errno())
        })
    }

    /// A pin holds the region from another thread: uunmap waits for it (the region stays
    /// mapped meanwhile), refuses what comes after it (pin, prefetch, a second uunmap: EINVAL
    /// at once), blocks no map or unmap of another region, and unmaps once the pin returns.
    #[test]
    fn uunmap_waits_for_a_pin_in_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let base = map_file(dir.path(), "pinned.bin", 1 << 20, 7);
        let entry = REGIONS.lock()[&base].entry.clone();
        pause_pins(base);
        let pin = pin_in_thread(base, 256 << 10);
        wait_until("the pin holds the region", || pin_is_paused(base));
        let unmap = uunmap_in_thread(base);
        wait_until("uunmap has taken the region", || is_unmapping(base));

        // SAFETY: the region is mapped until the unmap returns, which it cannot yet.
        assert_eq!(unsafe { *(base as *const u8).add(700 << 10) }, 7);
        assert!(
            !unmap.is_finished(),
            "uunmap returned while a pin in another thread held the region"
        );
        set_errno(0);
        // SAFETY: the address is only compared with region addresses.
        unsafe { umap_fetch_and_pin(base as *mut c_char, 4096) };
        assert_eq!(errno(), libc::EINVAL, "a pin after the uunmap began");
        let mut item = umap_prefetch_item {
            page_base_addr: base as *mut c_void,
        };
        set_errno(0);
        // SAFETY: one item.
        unsafe { umap_prefetch(1, &mut item) };
        assert_eq!(errno(), libc::EINVAL, "a prefetch after the uunmap began");
        // SAFETY: refused: the region is being unmapped.
        assert_eq!(unsafe { uunmap(base as *mut c_void, 0) }, -1);
        assert_eq!(errno(), libc::EINVAL, "a second uunmap of the region");

        // Other regions, fixed or not, map and unmap meanwhile.
        let others = std::thread::spawn(|| {
            let dir = tempfile::tempdir().unwrap();
            let other = map_file(dir.path(), "other.bin", 100 << 10, 3);
            // SAFETY: `other` was mapped above and is not used after.
            assert_eq!(unsafe { uunmap(other as *mut c_void, 0) }, 0);
            fixed_map_and_unmap(dir.path());
        });
        wait_until("other regions are mapped and unmapped", || {
            others.is_finished()
        });
        others.join().unwrap();

        release_pins(base);
        assert_eq!(pin.join().unwrap(), 0, "the pin failed");
        assert_eq!(unmap.join().unwrap(), (0, 0), "uunmap failed");
        assert!(
            REGIONS
                .lock()
                .get(&base)
                .is_none_or(|slot| !Arc::ptr_eq(&slot.entry, &entry)),
            "the region is still registered"
        );
        assert!(entry.region.read().is_none(), "the region is still mapped");
        end_pause(base);
    }

    /// Maps a file with UMAP_FIXED into a PROT_NONE reservation of its own, checks it, and
    /// unmaps both.
    fn fixed_map_and_unmap(dir: &std::path::Path) {
        use std::os::fd::AsRawFd;
        let len = 256 << 10;
        let path = dir.join("fixed.bin");
        std::fs::write(&path, vec![4u8; len]).unwrap();
        let file = File::open(&path).unwrap();
        let page_size = config().unwrap().page_size;
        let room = len + 2 * page_size;
        // SAFETY: a new anonymous mapping, no address requested.
        let reserved = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                room,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(reserved, libc::MAP_FAILED);
        let at = (reserved as usize).next_multiple_of(page_size);
        // SAFETY: the range is inside the reservation made above, which nothing else uses.
        let p = unsafe {
            umap(
                at as *mut c_void,
                len,
                libc::PROT_READ,
                UMAP_PRIVATE | UMAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_eq!(p as usize, at, "fixed umap failed: errno {}", errno());
        // SAFETY: mapped above.
        assert_eq!(unsafe { *(at as *const u8).add(len - 1) }, 4);
        // SAFETY: mapped above, not used after.
        assert_eq!(unsafe { uunmap(p, len) }, 0);
        // SAFETY: the reservation made above.
        assert_eq!(unsafe { libc::munmap(reserved, room) }, 0);
    }

    /// A UMAP_FIXED map over a region whose uunmap is in progress waits for that unmap to end
    /// (not replacing the region, nor failing), then maps there.
    #[test]
    fn fixed_map_waits_for_the_unmap_of_its_range() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let len = 1 << 20;
        let base = map_file(dir.path(), "old.bin", len, 7);
        pause_pins(base);
        let pin = pin_in_thread(base, 64 << 10);
        wait_until("the pin holds the region", || pin_is_paused(base));
        let unmap = uunmap_in_thread(base);
        wait_until("uunmap has taken the region", || is_unmapping(base));

        let path = dir.path().join("new.bin");
        std::fs::write(&path, vec![9u8; len]).unwrap();
        let file = File::open(&path).unwrap();
        let fd = file.as_raw_fd();
        let waits = hooks::FIXED_WAITS.load(std::sync::atomic::Ordering::SeqCst);
        let fixed = std::thread::spawn(move || {
            // SAFETY: the range is the region being unmapped, which the test gives up.
            let p = unsafe {
                umap(
                    base as *mut c_void,
                    len,
                    libc::PROT_READ,
                    UMAP_PRIVATE | UMAP_FIXED,
                    fd,
                    0,
                )
            };
            assert_ne!(p, UMAP_FAILED, "fixed umap failed: errno {}", errno());
            // SAFETY: mapped above.
            (p as usize, unsafe { *(p as *const u8).add(len / 2) })
        });
        wait_until("the fixed map waits or returns", || {
            hooks::FIXED_WAITS.load(std::sync::atomic::Ordering::SeqCst) > waits
                || fixed.is_finished()
        });
        assert!(
            !fixed.is_finished(),
            "the fixed map returned while the region there was being unmapped"
        );
        // SAFETY: still mapped: the unmap waits for the pin.
        assert_eq!(unsafe { *(base as *const u8).add(len / 2) }, 7);

        release_pins(base);
        assert_eq!(pin.join().unwrap(), 0, "the pin failed");
        assert_eq!(unmap.join().unwrap(), (0, 0), "uunmap failed");
        assert_eq!(fixed.join().unwrap(), (base, 9), "the fixed map");
        // SAFETY: the fixed region, not used after.
        assert_eq!(unsafe { uunmap(base as *mut c_void, len) }, 0);
        end_pause(base);
    }

    /// Prefetch requests: pages sorted, repeats dropped, runs of adjacent pages merged within
    /// a region (not across two), and split at the most pages per request.
    #[test]
    fn prefetch_requests_merge_runs_drop_repeats_and_split() {
        let (a, b) = (0x10_0000, 0x90_0000);
        let pages = vec![
            (b, 11),
            (a, 5),
            (a, 3),
            (a, 4),
            (a, 5),
            (a, 4),
            (a, 9),
            (b, 10),
            (a, 6),
            (a, 7),
            (a, 3),
        ];
        let max_pages = |base| if base == a { 3 } else { 8 };
        assert_eq!(
            prefetch_requests(pages, max_pages),
            vec![(a, 3..6), (a, 6..8), (a, 9..10), (b, 10..12)]
        );
        assert_eq!(prefetch_requests(vec![], max_pages), vec![]);
    }

    #[test]
    fn pinning_the_tail_of_the_last_page_pins_that_page() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.bin");
        std::fs::write(&path, vec![5u8; 5000]).unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY: no fixed address; the file is open for reading.
        let p = unsafe {
            umap(
                std::ptr::null_mut(),
                5000,
                libc::PROT_READ,
                UMAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, UMAP_FAILED, "umap failed: errno {}", errno());
        // Past the region's 5000 bytes but inside its last (4 KiB or larger) page.
        set_errno(0);
        // SAFETY: the address lies in the mapped region.
        unsafe { umap_fetch_and_pin((p as *mut c_char).add(4999), 100) };
        assert_eq!(errno(), 0, "pinning the last page's tail failed");
        set_errno(0);
        // SAFETY: as above.
        unsafe { umap_fetch_and_pin((p as *mut c_char).add(6000), 100) };
        assert_eq!(
            errno(),
            0,
            "pinning past the region's length in its last page failed"
        );
        // SAFETY: `p` is the start of the region mapped above.
        assert_eq!(unsafe { uunmap(p, 0) }, 0);
    }

    #[test]
    fn failure_and_panic_set_errno() {
        set_errno(0);
        let v: i32 = ffi("test", -1, || Err(Failure::new(libc::EBADF, "bad fd")));
        assert_eq!((v, errno()), (-1, libc::EBADF));
        let v = ffi("test", -1, || -> Result<i32, Failure> { panic!("boom") });
        assert_eq!((v, errno()), (-1, libc::EIO));
    }
}
