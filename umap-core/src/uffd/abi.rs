//! The kernel's userfaultfd ABI (`include/uapi/linux/userfaultfd.h`, Linux 6.18), defined
//! here because the system headers and the `libc` crate lag behind the kernel.
//!
//! Every number and layout in this file is pinned by a unit test at the bottom.

#![allow(dead_code)] // the whole ABI is described, not all of it is used yet.

/// The API version passed in `uffdio_api.api`.
pub const UFFD_API: u64 = 0xAA;

/// `ioctl` type of every userfaultfd request.
const UFFDIO: u32 = 0xAA;

const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}
const fn iowr<T>(nr: u32) -> u64 {
    ioc(IOC_READ | IOC_WRITE, UFFDIO, nr, core::mem::size_of::<T>()) as u64
}
const fn ior<T>(nr: u32) -> u64 {
    ioc(IOC_READ, UFFDIO, nr, core::mem::size_of::<T>()) as u64
}

// Request numbers (the `_UFFDIO_*` constants), also the bits of `uffdio_register.ioctls`.
pub const _UFFDIO_REGISTER: u32 = 0x00;
pub const _UFFDIO_UNREGISTER: u32 = 0x01;
pub const _UFFDIO_WAKE: u32 = 0x02;
pub const _UFFDIO_COPY: u32 = 0x03;
pub const _UFFDIO_ZEROPAGE: u32 = 0x04;
pub const _UFFDIO_MOVE: u32 = 0x05;
pub const _UFFDIO_WRITEPROTECT: u32 = 0x06;
pub const _UFFDIO_CONTINUE: u32 = 0x07;
pub const _UFFDIO_POISON: u32 = 0x08;
pub const _UFFDIO_API: u32 = 0x3F;

pub const UFFDIO_API: u64 = iowr::<UffdioApi>(_UFFDIO_API);
pub const UFFDIO_REGISTER: u64 = iowr::<UffdioRegister>(_UFFDIO_REGISTER);
pub const UFFDIO_UNREGISTER: u64 = ior::<UffdioRange>(_UFFDIO_UNREGISTER);
pub const UFFDIO_WAKE: u64 = ior::<UffdioRange>(_UFFDIO_WAKE);
pub const UFFDIO_COPY: u64 = iowr::<UffdioCopy>(_UFFDIO_COPY);
pub const UFFDIO_ZEROPAGE: u64 = iowr::<UffdioZeropage>(_UFFDIO_ZEROPAGE);
pub const UFFDIO_MOVE: u64 = iowr::<UffdioMove>(_UFFDIO_MOVE);
pub const UFFDIO_WRITEPROTECT: u64 = iowr::<UffdioWriteprotect>(_UFFDIO_WRITEPROTECT);
pub const UFFDIO_CONTINUE: u64 = iowr::<UffdioContinue>(_UFFDIO_CONTINUE);
pub const UFFDIO_POISON: u64 = iowr::<UffdioPoison>(_UFFDIO_POISON);

/// `/dev/userfaultfd`'s only request: returns a new userfaultfd (`include/uapi/linux/userfaultfd.h`).
pub const USERFAULTFD_IOC_NEW: u64 = ioc(IOC_NONE, UFFDIO, 0x00, 0) as u64;

/// Flag for the `userfaultfd(2)` syscall and `USERFAULTFD_IOC_NEW`: only faults raised from user
/// mode are handled (kernel accesses such as `write(2)` from the region fail with `EFAULT`).
pub const UFFD_USER_MODE_ONLY: i32 = 1;

// Events (`uffd_msg.event`).
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

// Page-fault flags (`uffd_msg.arg.pagefault.flags`).
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
pub const UFFD_PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

// Features (`uffdio_api.features`).
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

// Modes.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
pub const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_CONTINUE_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_POISON_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_MOVE_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioZeropage {
    pub range: UffdioRange,
    pub mode: u64,
    pub zeropage: i64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `struct uffdio_continue`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioContinue {
    pub range: UffdioRange,
    pub mode: u64,
    pub mapped: i64,
}

/// `struct uffdio_poison`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioPoison {
    pub range: UffdioRange,
    pub mode: u64,
    pub updated: i64,
}

/// `struct uffdio_move`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioMove {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub r#move: i64,
}

/// `struct uffd_msg`: an 8-byte header and a 24-byte union. Only the page-fault member is
/// decoded by field; the others are read from `arg` as raw words.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct UffdMsg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    /// The union `arg`: for `UFFD_EVENT_PAGEFAULT`, `[flags, address, ptid]`.
    pub arg: [u64; 3],
}

impl UffdMsg {
    pub const fn zeroed() -> Self {
        UffdMsg {
            event: 0,
            reserved1: 0,
            reserved2: 0,
            reserved3: 0,
            arg: [0; 3],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(size_of::<UffdioApi>(), 24);
        assert_eq!(size_of::<UffdioRange>(), 16);
        assert_eq!(size_of::<UffdioRegister>(), 32);
        assert_eq!(size_of::<UffdioCopy>(), 40);
        assert_eq!(size_of::<UffdioZeropage>(), 32);
        assert_eq!(size_of::<UffdioWriteprotect>(), 24);
        assert_eq!(size_of::<UffdioContinue>(), 32);
        assert_eq!(size_of::<UffdioPoison>(), 32);
        assert_eq!(size_of::<UffdioMove>(), 40);
        assert_eq!(size_of::<UffdMsg>(), 32);
    }

    #[test]
    fn field_offsets_match_the_kernel() {
        assert_eq!(offset_of!(UffdioCopy, mode), 24);
        assert_eq!(offset_of!(UffdioCopy, copy), 32);
        assert_eq!(offset_of!(UffdioRegister, mode), 16);
        assert_eq!(offset_of!(UffdioRegister, ioctls), 24);
        assert_eq!(offset_of!(UffdioZeropage, zeropage), 24);
        assert_eq!(offset_of!(UffdioPoison, updated), 24);
        assert_eq!(offset_of!(UffdioMove, r#move), 32);
        assert_eq!(offset_of!(UffdMsg, arg), 8);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // Values computed by the kernel's own _IOWR/_IOR macros on x86_64.
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_AA01);
        assert_eq!(UFFDIO_WAKE, 0x8010_AA02);
        assert_eq!(UFFDIO_COPY, 0xC028_AA03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xC020_AA04);
        assert_eq!(UFFDIO_MOVE, 0xC028_AA05);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xC018_AA06);
        assert_eq!(UFFDIO_CONTINUE, 0xC020_AA07);
        assert_eq!(UFFDIO_POISON, 0xC020_AA08);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xAA00);
    }

    #[test]
    fn feature_and_event_values_match_the_kernel() {
        assert_eq!(UFFD_FEATURE_MOVE, 0x1_0000);
        assert_eq!(UFFD_FEATURE_WP_ASYNC, 0x8000);
        assert_eq!(UFFD_FEATURE_POISON, 0x4000);
        assert_eq!(UFFD_FEATURE_WP_UNPOPULATED, 0x2000);
        assert_eq!(UFFD_FEATURE_EXACT_ADDRESS, 0x800);
        assert_eq!(UFFD_FEATURE_MINOR_SHMEM, 0x400);
        assert_eq!(UFFD_FEATURE_THREAD_ID, 0x100);
        assert_eq!(UFFD_EVENT_PAGEFAULT, 0x12);
        assert_eq!(UFFD_EVENT_UNMAP, 0x16);
        assert_eq!(UFFD_API, 0xAA);
    }

    #[test]
    fn system_header_agrees_where_it_has_the_value() {
        // libc carries the pre-5.x subset; where it exists it must agree with ours.
        assert_eq!(libc::SYS_userfaultfd, 323);
    }
}
