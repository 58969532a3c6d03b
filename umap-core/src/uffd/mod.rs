//! A small typed layer over Linux `userfaultfd(2)`. This is the only module that issues a
//! userfaultfd `ioctl`.
//!
//! # Safety
//!
//! A userfaultfd lets this process decide what the memory of a registered range contains:
//! registering a range makes every access to a missing (or write-protected) page sleep until
//! the owner of the descriptor resolves it, and [`Uffd::copy`], [`Uffd::zeropage`],
//! [`Uffd::poison`] and [`Uffd::move_pages`] place pages there. The functions that can change
//! what memory reads as, or stall its users, are `unsafe fn`: the caller must own the range
//! (no Rust reference to it may assume other contents) and must keep serving its faults.
//!
//! # References
//! - `userfaultfd(2)`, `ioctl_userfaultfd(2)`
//! - `Documentation/admin-guide/mm/userfaultfd.rst` in the kernel tree

mod abi;

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

pub(crate) use abi::UffdMsg;

/// A set of userfaultfd features (`UFFD_FEATURE_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u64);

impl Features {
    /// Write-protect faults are reported (`UFFD_FEATURE_PAGEFAULT_FLAG_WP`).
    pub const PAGEFAULT_FLAG_WP: Features = Features(abi::UFFD_FEATURE_PAGEFAULT_FLAG_WP);
    /// `UFFD_FEATURE_THREAD_ID`: fault messages carry the faulting thread's id.
    pub const THREAD_ID: Features = Features(abi::UFFD_FEATURE_THREAD_ID);
    /// `UFFD_FEATURE_EXACT_ADDRESS`: fault addresses are not rounded to the page.
    pub const EXACT_ADDRESS: Features = Features(abi::UFFD_FEATURE_EXACT_ADDRESS);
    /// `UFFD_FEATURE_WP_UNPOPULATED`: write-protecting never-touched anonymous pages works.
    pub const WP_UNPOPULATED: Features = Features(abi::UFFD_FEATURE_WP_UNPOPULATED);
    /// `UFFD_FEATURE_POISON`: `UFFDIO_POISON` is available.
    pub const POISON: Features = Features(abi::UFFD_FEATURE_POISON);
    /// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults itself.
    pub const WP_ASYNC: Features = Features(abi::UFFD_FEATURE_WP_ASYNC);
    /// `UFFD_FEATURE_MOVE`: `UFFDIO_MOVE` is available.
    pub const MOVE: Features = Features(abi::UFFD_FEATURE_MOVE);
    /// `UFFD_FEATURE_SIGBUS`: faults raise `SIGBUS` in the faulting thread instead of being
    /// queued as events (system calls touching a missing page fail with `EFAULT`).
    pub const SIGBUS: Features = Features(abi::UFFD_FEATURE_SIGBUS);
    /// `UFFD_FEATURE_MINOR_SHMEM`: minor faults on shared memory.
    pub const MINOR_SHMEM: Features = Features(abi::UFFD_FEATURE_MINOR_SHMEM);

    /// No feature.
    pub const fn empty() -> Features {
        Features(0)
    }
    /// The raw bit mask.
    pub const fn bits(self) -> u64 {
        self.0
    }
    /// Builds a set from a raw bit mask (unknown bits are kept).
    pub const fn from_bits(bits: u64) -> Features {
        Features(bits)
    }
    /// Whether every feature of `other` is in `self`.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
    /// The features of `self` that are not in `other`.
    pub const fn difference(self, other: Features) -> Features {
        Features(self.0 & !other.0)
    }
    /// The features in both.
    pub const fn intersection(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }
    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 17] = [
            "PAGEFAULT_FLAG_WP",
            "EVENT_FORK",
            "EVENT_REMAP",
            "EVENT_REMOVE",
            "MISSING_HUGETLBFS",
            "MISSING_SHMEM",
            "EVENT_UNMAP",
            "SIGBUS",
            "THREAD_ID",
            "MINOR_HUGETLBFS",
            "MINOR_SHMEM",
            "EXACT_ADDRESS",
            "WP_HUGETLBFS_SHMEM",
            "WP_UNPOPULATED",
            "POISON",
            "WP_ASYNC",
            "MOVE",
        ];
        let mut set = f.debug_set();
        for bit in 0..64 {
            if self.0 & (1 << bit) != 0 {
                match NAMES.get(bit) {
                    Some(name) => set.entry(&format_args!("{name}")),
                    None => set.entry(&format_args!("bit{bit}")),
                };
            }
        }
        set.finish()
    }
}

/// How a userfaultfd was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMethod {
    /// The `userfaultfd(2)` system call, handling faults from user and kernel mode.
    Syscall,
    /// The `/dev/userfaultfd` device (`USERFAULTFD_IOC_NEW`), whose file permissions grant access.
    Device,
    /// The system call with `UFFD_USER_MODE_ONLY`: kernel accesses to the region (for example
    /// `write(2)` from it) fail with `EFAULT` instead of being served.
    SyscallUserModeOnly,
}

impl OpenMethod {
    /// Every method, in the order [`Uffd::open`] tries them.
    pub const ALL: [OpenMethod; 3] = [
        OpenMethod::Syscall,
        OpenMethod::Device,
        OpenMethod::SyscallUserModeOnly,
    ];
}

impl fmt::Display for OpenMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpenMethod::Syscall => "userfaultfd(2)",
            OpenMethod::Device => "/dev/userfaultfd",
            OpenMethod::SyscallUserModeOnly => "userfaultfd(2) with UFFD_USER_MODE_ONLY",
        })
    }
}

/// A failed userfaultfd call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UffdError {
    /// No way of creating a userfaultfd worked.
    #[error(
        "cannot create a userfaultfd ({}): run as root (or with CAP_SYS_PTRACE), set the sysctl \
         vm.unprivileged_userfaultfd=1, or give this user read-write access to /dev/userfaultfd",
        attempts.iter().map(|(m, e)| format!("{m}: {e}")).collect::<Vec<_>>().join("; ")
    )]
    Create {
        /// Each method tried and how it failed.
        attempts: Vec<(OpenMethod, io::Error)>,
    },
    /// The kernel refused the API handshake.
    #[error("userfaultfd API handshake failed: {0}")]
    Api(#[source] io::Error),
    /// The kernel lacks features the caller requires.
    #[error("this kernel's userfaultfd lacks required features {missing:?} (it offers {available:?}); a newer kernel is needed")]
    MissingFeatures {
        /// The required features that are not offered.
        missing: Features,
        /// Everything the kernel offers.
        available: Features,
    },
    /// An ioctl on the userfaultfd failed.
    #[error("{op} of {len} bytes at {addr:#x} failed: {source}")]
    Ioctl {
        /// The ioctl, e.g. `"UFFDIO_COPY"`.
        op: &'static str,
        /// Start address of the request.
        addr: usize,
        /// Length of the request.
        len: usize,
        /// For copy, zeropage, poison and move: bytes handled before the failure.
        done: usize,
        /// The error number.
        #[source]
        source: io::Error,
    },
    /// Reading events from the descriptor failed.
    #[error("reading userfaultfd events failed: {0}")]
    Read(#[source] io::Error),
}

impl UffdError {
    /// The errno of a failed ioctl or read, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            UffdError::Ioctl { source, .. } | UffdError::Read(source) | UffdError::Api(source) => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
    /// For a partial copy, zeropage, poison or move: how many bytes were done.
    pub fn done(&self) -> usize {
        match self {
            UffdError::Ioctl { done, .. } => *done,
            _ => 0,
        }
    }
}

/// Which faults a registered range reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterMode {
    /// Faults on missing pages (`UFFDIO_REGISTER_MODE_MISSING`).
    pub missing: bool,
    /// Writes to write-protected pages (`UFFDIO_REGISTER_MODE_WP`).
    pub write_protect: bool,
}

impl RegisterMode {
    /// Missing-page faults only.
    pub const MISSING: RegisterMode = RegisterMode {
        missing: true,
        write_protect: false,
    };
    /// Missing-page and write-protect faults.
    pub const MISSING_WP: RegisterMode = RegisterMode {
        missing: true,
        write_protect: true,
    };
    /// Write-protect faults only.
    pub const WP: RegisterMode = RegisterMode {
        missing: false,
        write_protect: true,
    };
    fn bits(self) -> u64 {
        let mut bits = 0;
        if self.missing {
            bits |= abi::UFFDIO_REGISTER_MODE_MISSING;
        }
        if self.write_protect {
            bits |= abi::UFFDIO_REGISTER_MODE_WP;
        }
        bits
    }
}

/// The ioctls a registered range supports (the `ioctls` mask `UFFDIO_REGISTER` returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeIoctls(u64);

impl RangeIoctls {
    /// `UFFDIO_COPY` works on the range.
    pub fn copy(self) -> bool {
        self.0 & (1 << abi::_UFFDIO_COPY) != 0
    }
    /// `UFFDIO_WAKE` works on the range.
    pub fn wake(self) -> bool {
        self.0 & (1 << abi::_UFFDIO_WAKE) != 0
    }
    /// `UFFDIO_WRITEPROTECT` works on the range.
    pub fn writeprotect(self) -> bool {
        self.0 & (1 << abi::_UFFDIO_WRITEPROTECT) != 0
    }
    /// `UFFDIO_POISON` works on the range.
    pub fn poison(self) -> bool {
        self.0 & (1 << abi::_UFFDIO_POISON) != 0
    }
    /// `UFFDIO_MOVE` works on the range.
    pub fn move_pages(self) -> bool {
        self.0 & (1 << abi::_UFFDIO_MOVE) != 0
    }
    /// `UFFDIO_ZEROPAGE` works on the range.
    pub fn zeropage(self) -> bool {
        self.0 & (1 << abi::_UFFDIO_ZEROPAGE) != 0
    }
}

/// Options of [`Uffd::copy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyMode {
    /// Install the page write-protected (`UFFDIO_COPY_MODE_WP`).
    pub write_protect: bool,
    /// Do not wake the threads waiting on the range (`UFFDIO_COPY_MODE_DONTWAKE`).
    pub dont_wake: bool,
}

/// What a page-fault event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting address, rounded down to the system page.
    pub address: usize,
    /// The access was a write.
    pub write: bool,
    /// The fault hit a write-protected page (always a write).
    pub write_protect: bool,
    /// The faulting thread's id, when `THREAD_ID` was negotiated (0 otherwise).
    pub thread_id: u32,
}

/// An event read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread faulted on a registered range and sleeps until the page is resolved.
    PageFault(PageFault),
    /// An event this library never enables (fork, remap, remove, unmap), by its raw code.
    Other(u8),
}

impl Event {
    /// Decodes a raw message.
    pub fn decode(msg: &UffdMsg) -> Event {
        let event = msg.event;
        let arg = msg.arg;
        if event == abi::UFFD_EVENT_PAGEFAULT {
            Event::PageFault(PageFault {
                address: arg[1] as usize,
                write: arg[0] & abi::UFFD_PAGEFAULT_FLAG_WRITE != 0,
                write_protect: arg[0] & abi::UFFD_PAGEFAULT_FLAG_WP != 0,
                thread_id: arg[2] as u32,
            })
        } else {
            Event::Other(event)
        }
    }
}

/// A userfaultfd: non-blocking, close-on-exec, with its API handshake done.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    features: Features,
    method: OpenMethod,
}

/// Features the kernel offers, probed once per process and method through a scratch
/// descriptor (the API handshake can be done only once per descriptor, so asking and then
/// choosing needs two). Indexed by `OpenMethod as usize`.
static AVAILABLE: [OnceLock<Features>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];

impl Uffd {
    /// Creates a userfaultfd, trying [`OpenMethod::ALL`] in order, and negotiates the features
    /// of `wanted` the kernel offers; fails if any feature of `required` is missing.
    pub fn open(wanted: Features, required: Features) -> Result<Uffd, UffdError> {
        let mut attempts = Vec::new();
        for method in OpenMethod::ALL {
            match Self::open_with(method, wanted, required) {
                Ok(uffd) => return Ok(uffd),
                Err(UffdError::Create { attempts: mut a }) => attempts.append(&mut a),
                Err(e) => return Err(e),
            }
        }
        Err(UffdError::Create { attempts })
    }

    /// Creates a userfaultfd by one given method; see [`Uffd::open`].
    pub fn open_with(
        method: OpenMethod,
        wanted: Features,
        required: Features,
    ) -> Result<Uffd, UffdError> {
        let available = Self::available_features(method)?;
        let missing = required.difference(available);
        if !missing.is_empty() {
            return Err(UffdError::MissingFeatures { missing, available });
        }
        let fd = raw_open(method).map_err(|e| UffdError::Create {
            attempts: vec![(method, e)],
        })?;
        let features = (wanted | required).intersection(available);
        handshake(&fd, features).map_err(UffdError::Api)?;
        Ok(Uffd {
            fd,
            features,
            method,
        })
    }

    /// Every feature the kernel offers, as seen through `method`.
    pub fn available_features(method: OpenMethod) -> Result<Features, UffdError> {
        if let Some(features) = AVAILABLE[method as usize].get() {
            return Ok(*features);
        }
        let fd = raw_open(method).map_err(|e| UffdError::Create {
            attempts: vec![(method, e)],
        })?;
        let features = handshake(&fd, Features::empty()).map_err(UffdError::Api)?;
        Ok(*AVAILABLE[method as usize].get_or_init(|| features))
    }

    /// The negotiated features.
    pub fn features(&self) -> Features {
        self.features
    }

    /// How the descriptor was created.
    pub fn method(&self) -> OpenMethod {
        self.method
    }

    /// Registers `[addr, addr + len)` (page-aligned) and returns the ioctls the range supports.
    ///
    /// # Safety
    /// The range must be anonymous private memory the caller owns, and the caller must serve
    /// every fault the mode reports until it unregisters or unmaps the range: a fault nobody
    /// serves blocks its thread.
    pub unsafe fn register(
        &self,
        addr: usize,
        len: usize,
        mode: RegisterMode,
    ) -> Result<RangeIoctls, UffdError> {
        let mut arg = abi::UffdioRegister {
            range: range(addr, len),
            mode: mode.bits(),
            ioctls: 0,
        };
        self.ioctl("UFFDIO_REGISTER", abi::UFFDIO_REGISTER, &mut arg, addr, len)?;
        Ok(RangeIoctls(arg.ioctls))
    }

    /// Unregisters `[addr, addr + len)`; threads blocked in faults on it are woken.
    pub fn unregister(&self, addr: usize, len: usize) -> Result<(), UffdError> {
        let mut arg = range(addr, len);
        self.ioctl(
            "UFFDIO_UNREGISTER",
            abi::UFFDIO_UNREGISTER,
            &mut arg,
            addr,
            len,
        )
    }

    /// Wakes the threads blocked in faults on `[addr, addr + len)`; they retry their access.
    pub fn wake(&self, addr: usize, len: usize) -> Result<(), UffdError> {
        let mut arg = range(addr, len);
        self.ioctl("UFFDIO_WAKE", abi::UFFDIO_WAKE, &mut arg, addr, len)
    }

    /// Atomically fills the missing pages `[dst, dst + len)` with `len` bytes from `src` and,
    /// unless `mode.dont_wake`, wakes the threads waiting on the range.
    ///
    /// Errors: `EEXIST` when a page of the range is already present (benign: another path
    /// installed it), `EAGAIN` with [`UffdError::done`] bytes copied when the address space was
    /// changing (retry the rest), `ENOENT`/`ESRCH` when the range or the process is gone.
    ///
    /// # Safety
    /// `dst` must lie in a range registered on this descriptor that the caller owns, and `src`
    /// must be readable for `len` bytes.
    pub unsafe fn copy(
        &self,
        dst: usize,
        src: *const u8,
        len: usize,
        mode: CopyMode,
    ) -> Result<(), UffdError> {
        let mut bits = 0;
        if mode.dont_wake {
            bits |= abi::UFFDIO_COPY_MODE_DONTWAKE;
        }
        if mode.write_protect {
            bits |= abi::UFFDIO_COPY_MODE_WP;
        }
        let mut arg = abi::UffdioCopy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: bits,
            copy: 0,
        };
        let res = self.ioctl("UFFDIO_COPY", abi::UFFDIO_COPY, &mut arg, dst, len);
        with_done(res, arg.copy)
    }

    /// Maps the shared zero page at the missing pages `[addr, addr + len)`.
    ///
    /// # Safety
    /// As for [`Uffd::copy`].
    pub unsafe fn zeropage(
        &self,
        addr: usize,
        len: usize,
        dont_wake: bool,
    ) -> Result<(), UffdError> {
        let mut arg = abi::UffdioZeropage {
            range: range(addr, len),
            mode: if dont_wake {
                abi::UFFDIO_ZEROPAGE_MODE_DONTWAKE
            } else {
                0
            },
            zeropage: 0,
        };
        let res = self.ioctl("UFFDIO_ZEROPAGE", abi::UFFDIO_ZEROPAGE, &mut arg, addr, len);
        with_done(res, arg.zeropage)
    }

    /// Write-protects (`protect`) or unprotects `[addr, addr + len)`. Unprotecting wakes the
    /// waiting writers unless `dont_wake`.
    pub fn writeprotect(
        &self,
        addr: usize,
        len: usize,
        protect: bool,
        dont_wake: bool,
    ) -> Result<(), UffdError> {
        let mut mode = 0;
        if protect {
            mode |= abi::UFFDIO_WRITEPROTECT_MODE_WP;
        }
        if dont_wake {
            mode |= abi::UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
        }
        let mut arg = abi::UffdioWriteprotect {
            range: range(addr, len),
            mode,
        };
        self.ioctl(
            "UFFDIO_WRITEPROTECT",
            abi::UFFDIO_WRITEPROTECT,
            &mut arg,
            addr,
            len,
        )
    }

    /// As [`Uffd::writeprotect`] (waking the writers on unprotect), retrying while the kernel
    /// reports the address space changing under it (`EAGAIN`, from a concurrent `mmap`,
    /// `munmap` or fork), up to 1000 times.
    pub fn writeprotect_retrying(
        &self,
        addr: usize,
        len: usize,
        protect: bool,
    ) -> Result<(), UffdError> {
        let mut tries = 0;
        loop {
            match self.writeprotect(addr, len, protect, false) {
                Err(e) if e.errno() == Some(libc::EAGAIN) && tries < 1000 => {
                    tries += 1;
                    std::thread::yield_now();
                }
                other => return other,
            }
        }
    }

    /// Marks the missing pages `[addr, addr + len)` poisoned: accesses raise `SIGBUS` until
    /// the pages are dropped (`MADV_DONTNEED`).
    ///
    /// # Safety
    /// As for [`Uffd::copy`].
    pub unsafe fn poison(&self, addr: usize, len: usize, dont_wake: bool) -> Result<(), UffdError> {
        let mut arg = abi::UffdioPoison {
            range: range(addr, len),
            mode: if dont_wake {
                abi::UFFDIO_POISON_MODE_DONTWAKE
            } else {
                0
            },
            updated: 0,
        };
        let res = self.ioctl("UFFDIO_POISON", abi::UFFDIO_POISON, &mut arg, addr, len);
        with_done(res, arg.updated)
    }

    /// Moves the pages at `[src, src + len)` to the missing pages at `[dst, dst + len)` without
    /// copying (`UFFDIO_MOVE`); both ranges must be registered on this descriptor.
    ///
    /// # Safety
    /// The caller owns both ranges; the source range reads as missing afterwards.
    pub unsafe fn move_pages(
        &self,
        dst: usize,
        src: usize,
        len: usize,
        dont_wake: bool,
    ) -> Result<(), UffdError> {
        let mut arg = abi::UffdioMove {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: if dont_wake {
                abi::UFFDIO_MOVE_MODE_DONTWAKE
            } else {
                0
            },
            r#move: 0,
        };
        let res = self.ioctl("UFFDIO_MOVE", abi::UFFDIO_MOVE, &mut arg, dst, len);
        with_done(res, arg.r#move)
    }

    /// Reads as many pending events as fit in `buf` without blocking; returns how many were
    /// read (0 when none is pending).
    pub fn read_events(&self, buf: &mut [UffdMsg]) -> Result<usize, UffdError> {
        let size = std::mem::size_of::<UffdMsg>();
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len() * size` bytes and `UffdMsg` is
            // plain old data, so any bytes the kernel writes form valid values.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    std::mem::size_of_val(buf),
                )
            };
            if n >= 0 {
                return Ok(n as usize / size);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(0),
                _ => return Err(UffdError::Read(err)),
            }
        }
    }

    fn ioctl<T>(
        &self,
        op: &'static str,
        request: u64,
        arg: &mut T,
        addr: usize,
        len: usize,
    ) -> Result<(), UffdError> {
        // SAFETY: `request` is a userfaultfd ioctl whose argument type is `T` (pinned by the
        // ABI tests), and `arg` is a valid, exclusively borrowed `T` for the whole call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as libc::Ioctl, arg as *mut T) };
        if rc == 0 {
            Ok(())
        } else {
            Err(UffdError::Ioctl {
                op,
                addr,
                len,
                done: 0,
                source: io::Error::last_os_error(),
            })
        }
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn range(addr: usize, len: usize) -> abi::UffdioRange {
    abi::UffdioRange {
        start: addr as u64,
        len: len as u64,
    }
}

/// Records in a failed result how many bytes the kernel handled (a positive count in the
/// ioctl's result field; negative values are `-errno`).
fn with_done(mut res: Result<(), UffdError>, handled: i64) -> Result<(), UffdError> {
    if let Err(UffdError::Ioctl { done, .. }) = &mut res {
        *done = handled.max(0) as usize;
    }
    res
}

fn raw_open(method: OpenMethod) -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let fd = match method {
        OpenMethod::Syscall => syscall_userfaultfd(flags),
        OpenMethod::SyscallUserModeOnly => syscall_userfaultfd(flags | abi::UFFD_USER_MODE_ONLY),
        OpenMethod::Device => {
            let dev = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/userfaultfd")?;
            // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd.
            let fd = unsafe {
                libc::ioctl(
                    dev.as_raw_fd(),
                    abi::USERFAULTFD_IOC_NEW as libc::Ioctl,
                    flags as libc::c_long,
                )
            };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        }
    }?;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn syscall_userfaultfd(flags: i32) -> io::Result<RawFd> {
    // SAFETY: userfaultfd(2) takes one integer flag argument and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd as RawFd)
    }
}

/// Does the `UFFDIO_API` handshake requesting `features`; returns what the kernel offers.
fn handshake(fd: &OwnedFd, features: Features) -> io::Result<Features> {
    let mut api = abi::UffdioApi {
        api: abi::UFFD_API,
        features: features.bits(),
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a `struct uffdio_api` (pinned by the ABI tests), valid here.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            abi::UFFDIO_API as libc::Ioctl,
            &mut api as *mut abi::UffdioApi,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Features(api.features))
}

#[cfg(test)]
mod tests;
