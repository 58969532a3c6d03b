//! Reliability: bad input, store read and write errors, a buffer full of unwritable pages,
//! fixed addresses, fork, and running without root. Signals (SIGBUS, SIGSEGV) are checked in
//! child processes.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use umap::sys::Mapping;
use umap::{Config, Error, ErrorKind, MapOptions, MemStore, Umap};
use umap_store::fault::{Fault, FaultyStore, Op};

const PS: usize = 4096;
const MIB: usize = 1 << 20;

fn engine(buffer: usize, fillers: usize) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(PS)
        .fillers(fillers)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"))
}

fn faulty(len: usize, seed: u64) -> Arc<FaultyStore<MemStore>> {
    Arc::new(FaultyStore::new(
        MemStore::from_vec(common::pattern(seed, 0, len)),
        seed,
    ))
}

fn run_command(cmd: &mut Command, what: &str) -> (ExitStatus, String) {
    common::run_command(cmd, &format!("child {what}"), Duration::from_secs(60))
}

/// Every invalid argument is refused with a typed error naming the argument and what to
/// change, before anything is mapped.
#[test]
fn every_bad_input_is_refused_with_a_clear_error() {
    let sys = umap::sys::page_size();
    let mut tried = 0;

    // Engine configurations.
    let configs: Vec<(&str, Config, &str, &str)> = vec![
        (
            "page size 0",
            with(|c| c.page_size = 0),
            "page_size",
            "multiple of the system page",
        ),
        (
            "page size not a multiple of the system page",
            with(|c| c.page_size = sys + 512),
            "page_size",
            "multiple of the system page",
        ),
        (
            "buffer smaller than one page",
            with(|c| (c.page_size, c.buffer_size) = (PS, PS / 2)),
            "buffer_size",
            "at least 2 pages",
        ),
        (
            "buffer of one page (an access can need two)",
            with(|c| (c.page_size, c.buffer_size) = (PS, PS)),
            "buffer_size",
            "at least 2 pages",
        ),
        (
            "zero fillers",
            with(|c| c.fillers = 0),
            "fillers",
            "at least one",
        ),
        (
            "zero evictors",
            with(|c| c.evictors = 0),
            "evictors",
            "at least one",
        ),
        (
            "low water = high water",
            with(|c| (c.high_water_percent, c.low_water_percent) = (80, 80)),
            "low_water_percent",
            "below high_water_percent",
        ),
        (
            "low water > high water",
            with(|c| (c.high_water_percent, c.low_water_percent) = (50, 90)),
            "low_water_percent",
            "below high_water_percent",
        ),
        (
            "high water above 100%",
            with(|c| c.high_water_percent = 120),
            "high_water_percent",
            "between 1 and 100",
        ),
        (
            "zero fault events per read",
            with(|c| c.max_fault_events = 0),
            "max_fault_events",
            "between 1 and 4096",
        ),
    ];
    for (what, config, name, hint) in configs {
        for err in [
            config.validate().unwrap_err(),
            Umap::new(config.clone()).unwrap_err(),
        ] {
            check_invalid(what, &err, name, hint);
        }
        tried += 1;
    }

    // Map arguments.
    let umap = engine(MIB, 1);
    let occupied = Mapping::anonymous(4 * PS, libc::PROT_READ, 0).unwrap();
    let ro = || Arc::new(MemStore::from_vec(vec![1; 64 * 1024]).read_only());
    let rw = || Arc::new(MemStore::from_vec(vec![1; 64 * 1024]));
    type Case = (
        &'static str,
        Arc<dyn umap::Store>,
        MapOptions,
        &'static str,
        &'static str,
    );
    let maps: Vec<Case> = vec![
        (
            "zero length",
            rw(),
            MapOptions::new().len(0),
            "len",
            "cannot map zero bytes",
        ),
        (
            "an empty store",
            Arc::new(MemStore::new(0)),
            MapOptions::new(),
            "len",
            "cannot map zero bytes",
        ),
        (
            "page size not a multiple of the system page",
            rw(),
            MapOptions::new().page_size(sys * 3 / 2),
            "page_size",
            "multiple of the system page size",
        ),
        (
            "page size 0",
            rw(),
            MapOptions::new().page_size(0),
            "page_size",
            "multiple",
        ),
        (
            "page larger than half the buffer",
            rw(),
            MapOptions::new().page_size(MIB),
            "page_size",
            "must hold at least 2 such pages",
        ),
        (
            "writable map of a read-only store",
            ro(),
            MapOptions::new().writable(true),
            "writable",
            "read-only",
        ),
        (
            "offset past the end of the store",
            rw(),
            MapOptions::new().offset(1 << 40),
            "offset",
            "past the end of the store",
        ),
        (
            "offset at the end of a read-only store, with a length",
            ro(),
            MapOptions::new().offset(64 * 1024).len(PS),
            "offset",
            "read-only store",
        ),
        (
            "offset past the end of a read-only store, with a length",
            ro(),
            MapOptions::new().offset(1 << 30).len(PS),
            "offset",
            "read-only store",
        ),
        (
            "length too large to map",
            rw(),
            MapOptions::new().len(usize::MAX - 100),
            "len",
            "too large",
        ),
        (
            "offset + length overflowing",
            rw(),
            MapOptions::new().offset(u64::MAX - 10).len(PS),
            "offset",
            "overflows",
        ),
        (
            "unaligned fixed address",
            rw(),
            MapOptions::new().fixed_address(occupied.addr() + 100),
            "fixed_address",
            "multiple of the system page size",
        ),
        (
            "fixed address 0",
            rw(),
            MapOptions::new().fixed_address(0),
            "fixed_address",
            "non-zero",
        ),
        (
            "fixed address with no room above it",
            rw(),
            MapOptions::new().fixed_address(usize::MAX - sys + 1),
            "fixed_address",
            "does not fit",
        ),
        (
            "fixed address over an existing mapping",
            rw(),
            MapOptions::new().fixed_address(occupied.addr()),
            "fixed_address",
            "overlaps an existing mapping",
        ),
    ];
    for (what, store, options, name, hint) in maps {
        let err = umap.map_shared(store, options).unwrap_err();
        check_invalid(what, &err, name, hint);
        tried += 1;
    }
    assert_eq!(umap.region_count(), 0, "nothing was mapped");

    // Ranges of a region.
    let mut region = umap.map_shared(rw(), MapOptions::new()).unwrap();
    let len = region.len();
    for (what, offset, n) in [
        ("flush range past the end", len, 1),
        ("flush range longer than the region", 0, len + 1),
        ("flush range overflowing", usize::MAX, 2),
    ] {
        let err = region.flush_range(offset, n).unwrap_err();
        check_invalid(what, &err, "range", "outside the region");
        tried += 1;
    }
    for (what, offset, n) in [
        ("prefetch range past the end", len, 1),
        ("prefetch range overflowing", 1, usize::MAX),
    ] {
        let err = region.prefetch(offset, n).unwrap_err();
        check_invalid(what, &err, "range", "outside the region");
        tried += 1;
    }
    let err = region
        .advise(len - 1, 2, umap::Advice::WillNeed)
        .unwrap_err();
    check_invalid(
        "advice range past the end",
        &err,
        "range",
        "outside the region",
    );
    tried += 1;
    let err = region.as_mut_slice().unwrap_err();
    check_invalid(
        "mutable slice of a read-only region",
        &err,
        "region",
        "writable(true)",
    );
    tried += 1;
    region.unmap().unwrap();
    let big = umap.map(MemStore::new(2 * MIB), MapOptions::new()).unwrap();
    let err = big.prefetch(0, 2 * MIB).unwrap_err();
    check_invalid(
        "prefetch larger than the buffer",
        &err,
        "len",
        "more than the buffer",
    );
    tried += 1;
    big.unmap().unwrap();
    println!("tried {tried} bad inputs: each refused with a typed error naming it");
}

fn with(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    f(&mut c);
    c
}

fn check_invalid(what: &str, err: &Error, name: &str, hint: &str) {
    match err {
        Error::InvalidArgument { name: n, .. } => assert_eq!(*n, name, "{what}: {err}"),
        other => panic!("{what}: not an InvalidArgument error: {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(hint), "{what}: {msg:?} should say {hint:?}");
}

/// A fixed address places the region exactly there; the replacing variant maps over a
/// range the caller owns.
#[test]
fn fixed_addresses_place_the_region_exactly() {
    let umap = engine(MIB, 1);
    let data = common::pattern(5, 0, 16 * PS);
    // A free range: reserve one, note where, give it back. Another thread of this process
    // (an engine thread's first allocation, under load) may map memory there in between:
    // then the map is refused as overlapping, and another free range is tried.
    let mut overlaps = 0;
    let (region, addr) = loop {
        let probe = Mapping::anonymous(16 * PS, libc::PROT_NONE, 0).unwrap();
        let addr = probe.addr();
        probe.unmap().unwrap();
        let store = MemStore::from_vec(data.clone());
        match umap.map(store, MapOptions::new().fixed_address(addr)) {
            Ok(region) => break (region, addr),
            Err(e) if overlaps < 10 && e.to_string().contains("overlaps") => overlaps += 1,
            Err(e) => panic!("mapping at a free address {addr:#x} failed: {e}"),
        }
    };
    assert_eq!(region.as_ptr() as usize, addr);
    assert_eq!(region.as_slice(), &data[..]);
    // The range is taken now: a second region there is refused and the first one keeps
    // working.
    let err = umap
        .map(
            MemStore::new(PS),
            MapOptions::new().fixed_address(addr + PS),
        )
        .unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
    assert_eq!(region.as_slice()[PS], data[PS]);
    region.unmap().unwrap();

    // Replacing: over a mapping this test owns (and forgets, since the region replaces it).
    let owned = Mapping::anonymous(8 * PS, libc::PROT_READ | libc::PROT_WRITE, 0).unwrap();
    let addr = owned.addr();
    std::mem::forget(owned);
    // SAFETY: the range was this test's own mapping, forgotten above and used by nothing.
    let options = unsafe { MapOptions::new().fixed_address_replacing(addr) }.writable(true);
    let store = Arc::new(MemStore::from_vec(data[..8 * PS].to_vec()));
    let mut region = umap.map_shared(store.clone(), options).unwrap();
    assert_eq!(region.as_ptr() as usize, addr);
    assert_eq!(region.as_slice(), &data[..8 * PS]);
    region.as_mut_slice().unwrap()[3] = 0xEE;
    region.unmap().unwrap();
    assert_eq!(store.to_vec()[3], 0xEE);
}

/// Transient read errors are retried: the page arrives, nothing is recorded.
#[test]
fn transient_read_errors_are_retried() {
    let umap = engine(MIB, 1);
    let store = faulty(16 * PS, 11);
    // Two transient failures of the read of page 3: the third attempt succeeds.
    store.inject(
        Fault::on(Op::Read)
            .range(3 * PS as u64..4 * PS as u64)
            .transient()
            .times(2),
    );
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    common::check_pattern(11, 0, region.as_slice());
    assert_eq!(store.injected().len(), 2);
    assert_eq!(umap.stats().read_errors, 0);
    assert!(region.take_errors().is_empty());
    region.unmap().unwrap();
}

const READ_ERROR_CHILD: &str = "UMAP_TEST_RELIABILITY_READ_ERROR";

/// Runs in a child (see `a_permanent_read_error_is_recorded_and_raises_sigbus`).
#[test]
fn read_error_child() {
    if std::env::var_os(READ_ERROR_CHILD).is_none() {
        return;
    }
    let umap = engine(MIB, 2);
    let store = faulty(16 * PS, 12);
    store.inject(Fault::on(Op::Read).range(3 * PS as u64..4 * PS as u64));
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    common::check_pattern(12, 0, &region.as_slice()[..3 * PS]);
    // A system call reading the page (the kernel's own access is served by the engine too):
    // the page is poisoned, and the kernel's copy fails with EFAULT instead of a signal.
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the source lies inside the live region; the kernel reads it (or fails).
    let rc = unsafe { libc::write(pipe[1], region.as_ptr().add(3 * PS) as *const _, 64) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(
        (rc, errno),
        (-1, Some(libc::EFAULT)),
        "write(2) from a poisoned page"
    );
    let errors = region.take_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(
        (e.kind, e.offset, e.len, e.store_offset, e.errno),
        (ErrorKind::Read, 3 * PS, PS, 3 * PS as u64, Some(libc::EIO)),
        "{e}"
    );
    assert_eq!(umap.stats().read_errors, 1);
    // Other pages are fine.
    common::check_pattern(12, 4 * PS as u64, &region.as_slice()[4 * PS..]);
    println!("RECORDED {e}");
    // Now an ordinary load: SIGBUS, as with an I/O error under mmap.
    // SAFETY: reads the live region.
    let v = unsafe { std::ptr::read_volatile(region.as_ptr().add(3 * PS + 10)) };
    println!("UNEXPECTED: read {v} from a poisoned page");
    std::process::exit(3);
}

/// A store read that fails for good poisons the page: recorded for `take_errors` (offset,
/// errno) and counted; a system call reading it gets EFAULT, a load gets SIGBUS.
#[test]
fn a_permanent_read_error_is_recorded_and_raises_sigbus() {
    let (status, out) = common::run_test_child("read_error_child", &[(READ_ERROR_CHILD, "1")]);
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{out}");
    assert!(
        out.contains("RECORDED Read error at region offset 12288"),
        "{out}"
    );
}

/// Write-backs that fail for one range leave its pages dirty and resident; eviction moves
/// on to the other pages; once the store recovers, a flush writes everything.
#[test]
fn eviction_moves_past_pages_whose_write_back_fails() {
    let umap = engine(16 * PS, 1);
    let store = faulty(128 * PS, 13);
    let bad = 4 * PS as u64..6 * PS as u64;
    store.inject(Fault::on(Op::Write).range(bad.clone()));
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    // 128 pages through a 16-page buffer.
    common::tag_pages(region.as_mut_slice().unwrap(), PS);
    let stats = umap.stats();
    assert!(stats.dirty_evictions >= 100, "{stats:?}");
    assert!(stats.write_errors > 0, "{stats:?}");
    let errors = region.take_errors();
    assert!(!errors.is_empty());
    for e in &errors {
        assert_eq!(e.kind, ErrorKind::Write, "{e}");
        let (start, end) = (e.store_offset, e.store_offset + e.len as u64);
        assert!(
            start < bad.end && end > bad.start,
            "{e} is outside the failing range"
        );
    }
    // Pages 4 and 5 were never written: still dirty, the store still holds the old bytes.
    assert!(region.dirty_bytes() >= 2 * PS);
    let old = store.inner().to_vec();
    common::check_pattern(13, bad.start, &old[bad.start as usize..bad.end as usize]);
    assert!(region.flush().is_err());
    store.clear();
    region.flush().unwrap();
    assert_eq!(region.dirty_bytes(), 0);
    let bytes = store.inner().to_vec();
    common::check_tags(&bytes, PS);
    for (i, page) in bytes.chunks(PS).enumerate() {
        common::check_pattern(13, (i * PS + 8) as u64, &page[8..]);
    }
    region.unmap().unwrap();
}

/// A buffer full of dirty pages that cannot be written back: a fault on another page waits
/// without exceeding the buffer, the stall is counted and recorded (not a silent deadlock),
/// flush and other threads keep working, and once the store recovers the fault completes.
#[test]
fn a_buffer_full_of_unwritable_pages_stalls_faults_and_says_so() {
    let umap = Umap::builder()
        .buffer_size(4 * PS)
        .page_size(PS)
        .fillers(2)
        .start()
        .expect("userfaultfd engine");
    let store = faulty(64 * PS, 14);
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    store.inject(Fault::on(Op::Write));
    let data = region.as_mut_slice().unwrap();
    for page in 0..4 {
        data[page * PS] = 0x77;
    }
    let done = AtomicBool::new(false);
    let region = &region;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let v = region.as_slice()[40 * PS + 1];
            done.store(true, Ordering::SeqCst);
            v
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while umap.stats().buffer_stalls == 0 {
            assert!(Instant::now() < deadline, "the stall was never reported");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !done.load(Ordering::SeqCst),
            "no room: the fault cannot be served"
        );
        assert!(umap.stats().resident_bytes <= 4 * PS as u64);
        let errors = region.take_errors();
        assert!(
            errors
                .iter()
                .any(|e| e.kind == ErrorKind::BufferFull && e.offset == 40 * PS),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.kind == ErrorKind::Write),
            "{errors:?}"
        );
        // A flush does not hang: it reports the failing writes.
        assert!(region.flush().is_err());
        // Reads of resident pages go on.
        assert_eq!(region.as_slice()[2 * PS], 0x77);
        store.clear();
        let v = reader.join().unwrap();
        assert_eq!(v, common::pattern_byte(14, (40 * PS + 1) as u64));
    });
    let stats = umap.stats();
    assert!(stats.dirty_evictions >= 1, "{stats:?}");
    assert!(stats.resident_bytes <= 4 * PS as u64);
    region.flush().unwrap();
    let bytes = store.inner().to_vec();
    assert!((0..4).all(|p| bytes[p * PS] == 0x77));
}

/// A forked child does not inherit regions (MADV_DONTFORK): touching one, resident or not,
/// read-only or writable, kills it with SIGSEGV (never zeros); the parent's region keeps
/// working.
#[test]
fn a_forked_child_touching_a_region_gets_sigsegv_and_the_parent_goes_on() {
    let umap = engine(MIB, 2);
    let store = Arc::new(MemStore::from_vec(common::pattern(15, 0, 64 * PS)));
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    common::check_pattern(15, 0, &region.as_slice()[..8 * PS]); // pages 0..8 resident
    region.as_mut_slice().unwrap()[PS] = 0x42;
    let base = region.as_mut_ptr() as usize;
    for (what, offset, write) in [
        ("read of a resident page", PS, false),
        ("read of a missing page", 50 * PS, false),
        ("write to a resident page", 2 * PS, true),
    ] {
        // SAFETY: the child only touches memory and exits: no allocation, no locks.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let p = (base + offset) as *mut u8;
            // SAFETY: in the child the range is not mapped: this must raise SIGSEGV.
            let v = unsafe {
                if write {
                    std::ptr::write_volatile(p, 1);
                    0
                } else {
                    std::ptr::read_volatile(p)
                }
            };
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(if v == 0 { 10 } else { 11 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
            "{what}: the child was not killed by SIGSEGV (status {status:#x})"
        );
    }
    // The parent is unaffected.
    assert_eq!(region.as_slice()[PS], 0x42);
    common::check_pattern(15, 9 * PS as u64, &region.as_slice()[9 * PS..]);
    region.as_mut_slice().unwrap()[60 * PS] = 0x43;
    region.flush().unwrap();
    assert_eq!(store.to_vec()[60 * PS], 0x43);
    region.unmap().unwrap();
}

const UNPRIVILEGED_CHILD: &str = "UMAP_TEST_UNPRIVILEGED_CHILD";

/// Runs in a child as uid 65534 (see `without_root_the_engine_falls_back_and_says_what_to_change`):
/// `device` when it may open /dev/userfaultfd, `user-mode-only` when it may not.
#[test]
fn unprivileged_child() {
    let Ok(mode) = std::env::var(UNPRIVILEGED_CHILD) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    assert_ne!(unsafe { libc::geteuid() }, 0, "the child must not be root");
    let umap = engine(MIB, 2);
    let want = match mode.as_str() {
        "device" => umap::uffd::OpenMethod::Device,
        _ => umap::uffd::OpenMethod::SyscallUserModeOnly,
    };
    assert_eq!(umap.open_method(), want);
    println!("FALLBACK {}", umap.open_method());
    // And it works: reads through a small buffer, writes, flush.
    let store = Arc::new(MemStore::from_vec(common::pattern(16, 0, 512 * PS)));
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    common::check_pattern(16, 0, region.as_slice());
    region.as_mut_slice().unwrap()[300 * PS] = 0x99;
    region.flush().unwrap();
    assert_eq!(store.to_vec()[300 * PS], 0x99);
    region.unmap().unwrap();
    println!("WORKS");
    if mode == "user-mode-only" {
        // Refuse the system call as well: now every method fails.
        deny_userfaultfd_syscall();
        let err = Umap::builder()
            .buffer_size(MIB)
            .page_size(PS)
            .fillers(1)
            .start()
            .unwrap_err();
        let msg = err.to_string();
        for hint in [
            "run as root",
            "vm.unprivileged_userfaultfd=1",
            "read-write access to /dev/userfaultfd",
            "userfaultfd(2): Operation not permitted",
            "/dev/userfaultfd: Permission denied",
        ] {
            assert!(msg.contains(hint), "{msg:?} should say {hint:?}");
        }
        println!("ALL FAILED: {msg}");
    }
}

/// Makes `userfaultfd(2)` fail with EPERM for this thread (and threads it starts): a seccomp
/// filter, since a user-mode-only descriptor is otherwise always allowed.
fn deny_userfaultfd_syscall() {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // Load the system call number (offset 0 of struct seccomp_data).
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_userfaultfd as u32,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl calls; `prog` points to a valid filter for the duration of the call
    // (the kernel copies it).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Sets a sysctl (a /proc/sys file) and puts the old value back on drop.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string();
        std::fs::write(path, value).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, &self.old) {
            eprintln!("cannot restore {} to {}: {e}", self.path, self.old);
        }
    }
}

const NOBODY: libc::uid_t = 65534;

/// Without root and with `vm.unprivileged_userfaultfd=0`, the engine falls back to
/// `/dev/userfaultfd` (when the user may open it) or to user-mode-only descriptors, and
/// works; when every method fails, the error says what to change. Runs this test binary as
/// uid 65534 (root sets that up: the sysctl, restored afterwards, and a private mount
/// namespace that gives the child its own /dev/userfaultfd node).
#[test]
fn without_root_the_engine_falls_back_and_says_what_to_change() {
    use std::ffi::CString;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root: it sets vm.unprivileged_userfaultfd and runs a child as uid 65534"
    );
    let _sysctl = Sysctl::set("/proc/sys/vm/unprivileged_userfaultfd", "0");
    // The child runs a copy of this binary from a directory uid 65534 can reach.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("reliability-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

    let child = |mode: &str| {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--exact",
            "unprivileged_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(UNPRIVILEGED_CHILD, mode)
        .current_dir(dir.path());
        cmd
    };
    let drop_privileges = || -> std::io::Result<()> {
        // SAFETY: plain system calls in the forked child, before exec.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };

    // 1. /dev/userfaultfd is root's (0600): the user-mode-only descriptor, then every
    //    method refused.
    let dev = std::fs::metadata("/dev/userfaultfd").expect("/dev/userfaultfd (Linux 6.1+)");
    assert_eq!(
        dev.permissions().mode() & 0o006,
        0,
        "/dev/userfaultfd is open to everyone: this test needs it root-only"
    );
    let mut cmd = child("user-mode-only");
    // SAFETY: the closure only makes system calls.
    unsafe { cmd.pre_exec(drop_privileges) };
    let (status, out) = run_command(&mut cmd, "unprivileged_child (user-mode-only)");
    assert!(status.success(), "{status:?}\n{out}");
    assert!(
        out.contains("FALLBACK userfaultfd(2) with UFFD_USER_MODE_ONLY") && out.contains("WORKS"),
        "{out}"
    );
    assert!(
        out.contains("ALL FAILED: cannot create a userfaultfd"),
        "{out}"
    );

    // 2. A /dev/userfaultfd node the child may open, bound over the real one in the child's
    //    own mount namespace: the device is used.
    use std::os::unix::fs::MetadataExt;
    let node = dir.path().join("userfaultfd");
    let node_c = CString::new(node.to_str().unwrap()).unwrap();
    // SAFETY: creates a device node with the real one's numbers; chown gives it to nobody.
    unsafe {
        assert_eq!(
            libc::mknod(node_c.as_ptr(), libc::S_IFCHR | 0o600, dev.rdev()),
            0,
            "mknod: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::chown(node_c.as_ptr(), NOBODY, NOBODY), 0);
    }
    let target = CString::new("/dev/userfaultfd").unwrap();
    let root = CString::new("/").unwrap();
    let mut cmd = child("device");
    let bind = move || -> std::io::Result<()> {
        // SAFETY: system calls in the forked child, before exec; the strings outlive them.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    node_c.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        drop_privileges()
    };
    // SAFETY: the closure only makes system calls.
    unsafe { cmd.pre_exec(bind) };
    let (status, out) = run_command(&mut cmd, "unprivileged_child (device)");
    assert!(status.success(), "{status:?}\n{out}");
    assert!(
        out.contains("FALLBACK /dev/userfaultfd") && out.contains("WORKS"),
        "{out}"
    );
}

#[test]
fn pinning_a_poisoned_page_is_an_io_error_naming_the_page() {
    let umap = engine(MIB, 2);
    let store = faulty(16 * PS, 21);
    store.inject(Fault::on(Op::Read).range(5 * PS as u64..6 * PS as u64));
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    // The kernel's own read of the page (a system call) poisons it without a signal.
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the source lies inside the live region; the kernel reads it (or fails).
    let rc = unsafe { libc::write(pipe[1], region.as_ptr().add(5 * PS) as *const _, 64) };
    assert_eq!(rc, -1, "write(2) from the page whose read fails");
    // SAFETY: closing the pipe's own descriptors.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    let err = region.pin(4 * PS, 3 * PS).unwrap_err();
    assert!(
        matches!(err, Error::Poisoned { offset } if offset == 5 * PS),
        "{err:?}"
    );
    assert!(err.to_string().contains("poisoned"), "{err}");
    assert_eq!(region.pinned_bytes(), 0, "a failed pin pins nothing");
    // The pages around it pin as usual.
    region.pin(0, 5 * PS).unwrap();
    common::check_pattern(21, 0, &region.as_slice()[..5 * PS]);
    region.unpin(0, 5 * PS).unwrap();
}
