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

/// `madvise` advice that leaves a mapping's contents alone (dropping pages is
/// [`madvise_dontneed`], which is `unsafe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_DONTFORK`: a forked child does not inherit the range.
    DontFork,
    /// `MADV_NOHUGEPAGE`: no transparent huge pages in the range.
    NoHugePage,
}

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    /// `mmap(addr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags)`, as a `Mapping`.
    ///
    /// # Safety
    /// If `flags` holds `MAP_FIXED`, the caller gives up whatever is mapped in
    /// `[addr, addr + len)`.
    unsafe fn map_anonymous(
        addr: usize,
        len: usize,
        prot: libc::c_int,
        flags: libc::c_int,
    ) -> io::Result<Mapping> {
        // SAFETY: an anonymous mapping aliases nothing; without MAP_FIXED it replaces nothing,
        // and with it the caller vouched for the range.
        let got = unsafe {
            libc::mmap(
                addr as *mut _,
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            addr: got as usize,
            len,
        })
    }

    /// Reserves `len` bytes (a multiple of the system page) of anonymous private memory with
    /// protection `prot` (`PROT_*`). `flags` are added to `MAP_PRIVATE | MAP_ANONYMOUS`.
    pub fn anonymous(len: usize, prot: libc::c_int, flags: libc::c_int) -> io::Result<Mapping> {
        // SAFETY: no MAP_FIXED: the kernel chooses a free range.
        unsafe { Mapping::map_anonymous(0, len, prot, flags & !libc::MAP_FIXED) }
    }

    /// As [`Mapping::anonymous`], at exactly `addr` (a multiple of the system page): fails
    /// with `EEXIST` if any part of `[addr, addr + len)` is mapped already
    /// (`MAP_FIXED_NOREPLACE`; on kernels that ignore it, a mapping placed elsewhere is undone
    /// and the same error returned).
    pub fn anonymous_at(
        addr: usize,
        len: usize,
        prot: libc::c_int,
        flags: libc::c_int,
    ) -> io::Result<Mapping> {
        let flags = (flags & !libc::MAP_FIXED) | libc::MAP_FIXED_NOREPLACE;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let mapping = unsafe { Mapping::map_anonymous(addr, len, prot, flags) }?;
        if mapping.addr != addr {
            // An old kernel took the flag for a hint: the range was not free.
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        Ok(mapping)
    }

    /// As [`Mapping::anonymous`], at exactly `addr` (a multiple of the system page), replacing
    /// whatever is mapped in `[addr, addr + len)` (`MAP_FIXED`).
    ///
    /// # Safety
    /// The caller owns that range, and nothing uses what was mapped there any more: it is
    /// gone once this returns (as after `munmap`).
    pub unsafe fn anonymous_replacing(
        addr: usize,
        len: usize,
        prot: libc::c_int,
        flags: libc::c_int,
    ) -> io::Result<Mapping> {
        // SAFETY: the caller gives up whatever lies in the range (see above).
        unsafe { Mapping::map_anonymous(addr, len, prot, flags | libc::MAP_FIXED) }
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

    /// Applies `advice` to the whole mapping.
    pub fn advise(&self, advice: Advice) -> io::Result<()> {
        let advice = match advice {
            Advice::DontFork => libc::MADV_DONTFORK,
            Advice::NoHugePage => libc::MADV_NOHUGEPAGE,
        };
        // SAFETY: the range is this mapping, and neither advice changes its contents.
        check(unsafe { libc::madvise(self.addr as *mut _, self.len, advice) }).map(drop)
    }
}

impl Mapping {
    /// Unmaps now, returning the error `Drop` could only log.
    pub fn unmap(self) -> io::Result<()> {
        let (addr, len) = (self.addr, self.len);
        std::mem::forget(self);
        // SAFETY: the mapping was owned by `self`, which is gone; nobody uses it any more.
        check(unsafe { libc::munmap(addr as *mut _, len) }).map(drop)
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

/// Drops many ranges of this process's memory with as few system calls as possible:
/// `process_madvise(MADV_DONTNEED)` on a pidfd of this process takes up to `IOV_MAX` ranges
/// per call and flushes the TLB once per call instead of once per range. Falls back to one
/// `madvise` per range where `process_madvise` is refused (older kernels).
#[derive(Debug)]
pub struct Dropper {
    pidfd: Option<OwnedFd>,
}

impl Dropper {
    /// Opens a pidfd of this process (or records that only `madvise` is available).
    pub fn new() -> Dropper {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: `fd` is a new descriptor owned by nothing else.
            unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
        });
        Dropper { pidfd }
    }

    /// Drops the pages of every `(addr, len)` range.
    ///
    /// # Safety
    /// As for [`madvise_dontneed`], for every range.
    pub unsafe fn drop_ranges(&self, ranges: &[(usize, usize)]) -> io::Result<()> {
        const IOV_MAX: usize = 1024;
        let mut rest = ranges;
        if let Some(pidfd) = &self.pidfd {
            while !rest.is_empty() {
                let n = rest.len().min(IOV_MAX);
                let iov: Vec<libc::iovec> = rest[..n]
                    .iter()
                    .map(|&(addr, len)| libc::iovec {
                        iov_base: addr as *mut _,
                        iov_len: len,
                    })
                    .collect();
                // SAFETY: `iov` describes `n` ranges the caller owns (forwarded contract);
                // process_madvise only reads the array.
                let done = unsafe {
                    libc::syscall(
                        libc::SYS_process_madvise,
                        pidfd.as_raw_fd(),
                        iov.as_ptr(),
                        n,
                        libc::MADV_DONTNEED,
                        0,
                    )
                };
                if done < 0 {
                    break; // Refused: fall back below for what is left.
                }
                // Skip the ranges fully done; a partial one is finished by madvise below.
                let mut bytes = done as usize;
                let mut k = 0;
                while k < n && bytes >= rest[k].1 {
                    bytes -= rest[k].1;
                    k += 1;
                }
                if k < n && bytes > 0 {
                    let (addr, len) = rest[k];
                    // SAFETY: forwarded from the caller.
                    unsafe { madvise_dontneed(addr + bytes, len - bytes)? };
                    k += 1;
                }
                rest = &rest[k..];
            }
        }
        for &(addr, len) in rest {
            // SAFETY: forwarded from the caller.
            unsafe { madvise_dontneed(addr, len)? };
        }
        Ok(())
    }
}

impl Default for Dropper {
    fn default() -> Self {
        Dropper::new()
    }
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

impl EventFd {
    /// Makes the descriptor unreadable again (reads and discards its counter).
    pub fn reset(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; a non-blocking eventfd that is not readable
        // fails with EAGAIN, which is what "already reset" means.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
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
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Watches `fd` for readability, edge-triggered: each readiness change (for an eventfd,
    /// each write) wakes one thread waiting on this instance.
    pub fn add_edge(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            fd,
            token,
            (libc::EPOLLIN | libc::EPOLLET) as u32,
        )
    }

    /// Watches `fd` for readability once (`EPOLLONESHOT`): after a wait reports it, it is
    /// not reported again until [`Epoll::rearm_oneshot`].
    pub fn add_oneshot(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let events = (libc::EPOLLIN | libc::EPOLLONESHOT) as u32;
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Arms a descriptor added with [`Epoll::add_oneshot`] again; if it is readable now, a
    /// waiting thread wakes at once.
    pub fn rearm_oneshot(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let events = (libc::EPOLLIN | libc::EPOLLONESHOT) as u32;
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    /// Stops reporting a descriptor added with [`Epoll::add_oneshot`] until it is re-armed.
    pub fn disarm_oneshot(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, libc::EPOLLONESHOT as u32)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) }).map(drop)
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

/// This process's `/proc/self/pagemap` entry for the system page at `addr` (for tests:
/// bit 63 present, bit 57 write-protected through userfaultfd).
#[cfg(test)]
pub(crate) fn pagemap_entry(addr: usize) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
    f.seek(SeekFrom::Start((addr / page_size() * 8) as u64))
        .unwrap();
    let mut entry = [0u8; 8];
    f.read_exact(&mut entry).unwrap();
    u64::from_le_bytes(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropper_drops_scattered_ranges() {
        let ps = page_size();
        let map = Mapping::anonymous(64 * ps, libc::PROT_READ | libc::PROT_WRITE, 0).unwrap();
        // SAFETY: the mapping is ours and writable.
        unsafe { std::ptr::write_bytes(map.as_ptr(), 1, 64 * ps) };
        assert_eq!(resident_pages(map.addr(), map.len()).unwrap(), 64);
        let ranges: Vec<_> = (0..64)
            .step_by(2)
            .map(|p| (map.addr() + p * ps, ps))
            .collect();
        let dropper = Dropper::new();
        assert!(dropper.pidfd.is_some(), "pidfd_open works on this kernel");
        // SAFETY: the ranges are ours; nothing relies on their contents.
        unsafe { dropper.drop_ranges(&ranges) }.unwrap();
        assert_eq!(resident_pages(map.addr(), map.len()).unwrap(), 32);
        for p in 0..64 {
            // SAFETY: in bounds of our mapping; dropped pages read as zeros.
            let v = unsafe { *map.as_ptr().add(p * ps) };
            assert_eq!(v, if p % 2 == 0 { 0 } else { 1 }, "page {p}");
        }
        // The fallback path gives the same result.
        // SAFETY: as above.
        unsafe { Dropper { pidfd: None }.drop_ranges(&[(map.addr() + ps, ps)]) }.unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { *map.as_ptr().add(ps) }, 0);
    }

    /// The one-shot and edge-triggered registrations the fillers' shared epoll relies on: a
    /// one-shot descriptor is reported once, not again until re-armed (even while still
    /// readable), at once on re-arming if readable, and never while disarmed; an
    /// edge-triggered one once per signal.
    #[test]
    fn epoll_oneshot_rearm_disarm_and_edge() {
        let ep = Epoll::new().unwrap();
        let (once, edge) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        ep.add_oneshot(once.as_raw_fd(), 7).unwrap();
        ep.add_edge(edge.as_raw_fd(), 9).unwrap();
        let mut tokens = [0u64; 4];
        assert_eq!(ep.wait(&mut tokens, 0).unwrap(), 0);
        once.signal().unwrap();
        assert_eq!(ep.wait(&mut tokens, 1000).unwrap(), 1);
        assert_eq!(tokens[0], 7);
        assert_eq!(ep.wait(&mut tokens, 0).unwrap(), 0, "reported twice");
        ep.rearm_oneshot(once.as_raw_fd(), 7).unwrap();
        assert_eq!(ep.wait(&mut tokens, 0).unwrap(), 1, "pending event lost");
        assert_eq!(tokens[0], 7);
        ep.rearm_oneshot(once.as_raw_fd(), 7).unwrap();
        ep.disarm_oneshot(once.as_raw_fd(), 7).unwrap();
        assert_eq!(
            ep.wait(&mut tokens, 0).unwrap(),
            0,
            "reported while disarmed"
        );
        once.reset();
        ep.rearm_oneshot(once.as_raw_fd(), 7).unwrap();
        assert_eq!(
            ep.wait(&mut tokens, 0).unwrap(),
            0,
            "reported while unreadable"
        );
        edge.signal().unwrap();
        assert_eq!(ep.wait(&mut tokens, 0).unwrap(), 1);
        assert_eq!(tokens[0], 9);
        assert_eq!(ep.wait(&mut tokens, 0).unwrap(), 0, "edge reported twice");
        edge.signal().unwrap();
        assert_eq!(ep.wait(&mut tokens, 0).unwrap(), 1, "second signal lost");
    }
}
