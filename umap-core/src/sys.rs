//! Thin wrappers over the non-userfaultfd system calls the engine uses: anonymous mappings,
//! `madvise`, `mincore`, `epoll` and `eventfd`.
//!
//! # Safety
//! [`Mapping`] owns an anonymous mapping and unmaps it on drop; [`madvise_dontneed`] discards
//! page contents and is `unsafe` for that reason.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

/// The system page size in bytes.
pub fn page_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if size > 0 {
            size as usize
        } else {
            4096
        }
    })
}

/// Whether a call failed, as an `io::Result`.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    /// Reserves `len` bytes (a multiple of the system page) of anonymous private memory with
    /// protection `prot` (`PROT_*`). `flags` are added to `MAP_PRIVATE | MAP_ANONYMOUS`.
    pub fn anonymous(len: usize, prot: libc::c_int, flags: libc::c_int) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses aliases nothing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            addr: addr as usize,
            len,
        })
    }

    /// Start address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the length is zero (never, for a successful mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start as a pointer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// Applies `madvise(advice)` to the whole mapping.
    pub fn advise(&self, advice: libc::c_int) -> io::Result<()> {
        // SAFETY: the range is this mapping; the advice values used by the engine
        // (MADV_DONTFORK, MADV_NOHUGEPAGE) do not change contents.
        check(unsafe { libc::madvise(self.addr as *mut _, self.len, advice) }).map(drop)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by `self` and no longer used.
        let rc = unsafe { libc::munmap(self.addr as *mut _, self.len) };
        if rc != 0 {
            log::error!(
                "munmap({:#x}, {}) failed: {}",
                self.addr,
                self.len,
                io::Error::last_os_error()
            );
        }
    }
}

/// Drops the pages of `[addr, addr + len)`: later accesses fault as missing.
///
/// # Safety
/// The caller owns the range and nothing relies on its current contents.
pub unsafe fn madvise_dontneed(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: forwarded to the caller.
    check(unsafe { libc::madvise(addr as *mut _, len, libc::MADV_DONTNEED) }).map(drop)
}

/// How many system pages of `[addr, addr + len)` are resident (`mincore`).
pub fn resident_pages(addr: usize, len: usize) -> io::Result<usize> {
    let pages = len.div_ceil(page_size());
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the range, as mincore requires.
    check(unsafe { libc::mincore(addr as *mut _, len, vec.as_mut_ptr()) })?;
    Ok(vec.iter().filter(|b| **b & 1 != 0).count())
}

/// An `eventfd`, used to wake threads blocked in `epoll_wait`.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` is new and owned by nothing else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable (wakes every epoll waiting on it).
    pub fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    /// A close-on-exec epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is new and owned by nothing else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for readability, tagging events with `token`. With `exclusive`, a
    /// readiness change wakes one of the epoll instances waiting on `fd` (`EPOLLEXCLUSIVE`)
    /// instead of all of them.
    pub fn add_readable(&self, fd: RawFd, token: u64, exclusive: bool) -> io::Result<()> {
        let mut events = libc::EPOLLIN as u32;
        if exclusive {
            events |= libc::EPOLLEXCLUSIVE as u32;
        }
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })
            .map(drop)
    }

    /// Waits up to `timeout_ms` (-1: forever) and returns the tokens of ready descriptors
    /// in `out`, how many.
    pub fn wait(&self, out: &mut [u64], timeout_ms: i32) -> io::Result<usize> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let max = out.len().min(evs.len()) as libc::c_int;
        loop {
            // SAFETY: `evs` has room for `max` events.
            let n =
                unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), max, timeout_ms) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(err);
            }
            for (slot, ev) in out.iter_mut().zip(&evs[..n as usize]) {
                *slot = ev.u64;
            }
            return Ok(n as usize);
        }
    }
}

/// Counts the open file descriptors and threads of this process (for leak checks).
pub fn process_fds_and_threads() -> io::Result<(usize, usize)> {
    let fds = std::fs::read_dir("/proc/self/fd")?.count();
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    Ok((fds, threads))
}
