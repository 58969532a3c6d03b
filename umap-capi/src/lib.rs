//! `libumap`: umap-rs behind LLNL umap's C API (`include/umap.h`), so that C and C++
//! programs written against LLNL umap relink against this library and run unchanged.
//!
//! - One engine per process, started at the first `umap()` from the `UMAP_*` environment
//!   variables ([`Config::from_env`], read once), as LLNL umap does. It lives until the
//!   process exits; an `atexit` handler writes back every region still mapped.
//! - Regions are kept by start address, so `uunmap(addr, len)` finds them.
//! - Every entry point catches panics and turns every error into `errno` (and a one-line
//!   message on stderr): nothing unwinds into C, nothing aborts.
//!
//! The semantics, and where they differ from LLNL umap's, are in the README ("C library").

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_long, c_void};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libc::{off_t, size_t};
use parking_lot::{Mutex, RwLock};
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
/// Held (shared) by every `uunmap` while it unmaps, taken exclusively by a `UMAP_FIXED` map:
/// a region being unmapped is out of [`REGIONS`] but still mapped. Taken before `REGIONS`.
static UNMAPS: RwLock<()> = parking_lot::const_rwlock(());
/// The mapped regions, by start address.
static REGIONS: Mutex<BTreeMap<usize, Arc<Region>>> = parking_lot::const_mutex(BTreeMap::new());

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
    FileStore::from_file(file, !writable).map_err(|e| {
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
}

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
    // A fixed map waits for unmaps in progress (their ranges are out of REGIONS already).
    let _no_unmaps = (flags & UMAP_FIXED != 0).then(|| UNMAPS.write());
    // Maps happen under the lock, so that a fixed map never replaces a region that is
    // mapped but not yet in REGIONS.
    let mut regions = REGIONS.lock();
    if flags & UMAP_FIXED != 0 {
        options = fixed(
            &regions,
            options,
            addr as usize,
            length,
            engine.config().page_size,
        )?;
    }
    let region = engine.map_shared(Arc::new(store), options)?;
    let base = region.as_ptr() as usize;
    regions.insert(base, Arc::new(region));
    Ok(base as *mut c_void)
}

/// `UMAP_FIXED`: the region goes at exactly `addr`, replacing what is mapped there (as with
/// `mmap(MAP_FIXED)` and LLNL umap), unless that is a umap region. Called with the
/// [`REGIONS`] lock held and [`UNMAPS`] taken for writing, so no region appears or disappears
/// meanwhile.
fn fixed(
    regions: &BTreeMap<usize, Arc<Region>>,
    options: MapOptions,
    addr: usize,
    length: usize,
    page_size: usize,
) -> Result<MapOptions, Failure> {
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
    if let Some((&base, region)) = regions.range(..end).next_back() {
        let region_end = base + region.len().next_multiple_of(region.page_size());
        if region_end > addr {
            return Err(Failure::new(
                libc::EEXIST,
                format!(
                    "UMAP_FIXED range {addr:#x}..{end:#x} overlaps the umap region at {base:#x} \
                     ({} bytes): uunmap it first",
                    region.len()
                ),
            ));
        }
    }
    // SAFETY: the caller of umap with UMAP_FIXED gives up whatever is mapped in the range, as
    // with mmap(MAP_FIXED) (umap.h says so); no umap region lies there (checked above), and
    // none can appear or be half unmapped there meanwhile (the locks the caller holds).
    Ok(unsafe { options.fixed_address_replacing(addr) })
}

fn unmap(addr: *mut c_void, length: size_t) -> Result<c_int, Failure> {
    let base = addr as usize;
    let _unmapping = UNMAPS.read();
    let region = {
        let mut regions = REGIONS.lock();
        let region = regions.get(&base).ok_or_else(|| {
            Failure::new(
                libc::EINVAL,
                format!("no region starts at {addr:p} (pass the address umap returned)"),
            )
        })?;
        let len = region.len();
        let rounded = len.next_multiple_of(region.page_size());
        if length != 0 && length != len && length != rounded {
            return Err(Failure::new(
                libc::EINVAL,
                format!(
                    "length {length} is not the region's length ({len}): pass 0 or the length \
                     given to umap (partial unmapping is not supported)"
                ),
            ));
        }
        regions
            .remove(&base)
            .expect("looked up under the same lock")
    };
    // Another thread may still be inside umap_fetch_and_pin on this region: let it finish.
    let mut region = region;
    let region = loop {
        match Arc::try_unwrap(region) {
            Ok(region) => break region,
            Err(shared) => {
                region = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    match region.unmap() {
        Ok(()) => Ok(0),
        Err(e) => {
            let (error, region) = e.into_parts();
            let mut failure = Failure::from(error);
            if let Some(region) = region {
                // The write-back failed: nothing was unmapped and no data is lost. The region
                // stays mapped (and registered here) for a later uunmap or umap_flush.
                REGIONS.lock().insert(base, Arc::new(region));
                failure.message.push_str(
                    " (the region stays mapped with its data: call uunmap again, or \
                     umap_flush, once the file can be written)",
                );
            }
            Err(failure)
        }
    }
}

/// The region containing `addr` (up to the end of its last page), and the offset of `addr` in
/// it.
fn region_at(regions: &BTreeMap<usize, Arc<Region>>, addr: usize) -> Option<(&Arc<Region>, usize)> {
    let (&base, region) = regions.range(..=addr).next_back()?;
    let offset = addr - base;
    (offset < region.len().next_multiple_of(region.page_size())).then_some((region, offset))
}

fn prefetch(items: &[umap_prefetch_item]) -> Result<(), Failure> {
    let Some(engine) = ENGINE.get() else {
        return Err(Failure::new(libc::EINVAL, "no region is mapped"));
    };
    let mut first_error: Option<Failure> = None;
    let mut handles = Vec::new();
    {
        let regions = REGIONS.lock();
        // (region start, page index), sorted: runs of adjacent pages become one request.
        let mut pages: Vec<(usize, usize)> = Vec::with_capacity(items.len());
        for item in items {
            let addr = item.page_base_addr as usize;
            match region_at(&regions, addr) {
                Some((region, offset)) => {
                    pages.push((region.as_ptr() as usize, offset / region.page_size()))
                }
                None => {
                    first_error.get_or_insert_with(|| {
                        Failure::new(libc::EINVAL, format!("{addr:#x} is not in any region"))
                    });
                }
            }
        }
        pages.sort_unstable();
        pages.dedup();
        let mut i = 0;
        while i < pages.len() {
            let (base, first) = pages[i];
            let region = &regions[&base];
            let ps = region.page_size();
            // A request never covers more than half the buffer, so it cannot evict itself.
            let max_pages = (engine.config().buffer_size / ps / 2).max(1);
            let mut j = i + 1;
            while j < pages.len() && pages[j] == (base, first + (j - i)) && j - i < max_pages {
                j += 1;
            }
            let offset = first * ps;
            let len = ((j - i) * ps).min(region.len() - offset);
            match region.prefetch(offset, len) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    first_error.get_or_insert(e.into());
                }
            }
            i = j;
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
    let (region, offset) = {
        let regions = REGIONS.lock();
        let (region, offset) = region_at(&regions, addr).ok_or_else(|| {
            Failure::new(
                libc::EINVAL,
                format!("{} is not in any region", range_text()),
            )
        })?;
        (region.clone(), offset)
    };
    if size == 0 {
        return Ok(());
    }
    let end = usize::try_from(size)
        .ok()
        .and_then(|size| offset.checked_add(size))
        .filter(|&end| end <= region.len().next_multiple_of(region.page_size()))
        .ok_or_else(|| {
            Failure::new(
                libc::EINVAL,
                format!(
                    "{} runs past the end of its region ({} bytes at {:p})",
                    range_text(),
                    region.len(),
                    region.as_ptr()
                ),
            )
        })?;
    // The rest of the last page lies past the region's length: pin the page all the same
    // (a range that starts there pins the region's last byte, hence its page).
    let start = offset.min(region.len() - 1);
    let end = end.min(region.len());
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
