//! Live tests of the userfaultfd layer against the running kernel. They fail (never skip)
//! where userfaultfd is not available, saying why.

use super::*;
use crate::sys::{page_size, Mapping};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn uffd() -> Uffd {
    Uffd::open(
        Features::PAGEFAULT_FLAG_WP | Features::POISON | Features::MOVE,
        Features::empty(),
    )
    .unwrap_or_else(|e| panic!("userfaultfd is required for these tests: {e}"))
}

fn mapping(pages: usize) -> Mapping {
    Mapping::anonymous(pages * page_size(), libc::PROT_READ | libc::PROT_WRITE, 0).unwrap()
}

/// Waits (bounded) for one page-fault event.
fn next_fault(uffd: &Uffd) -> PageFault {
    let mut msgs = [UffdMsg::zeroed(); 4];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = uffd.read_events(&mut msgs).unwrap();
        if n > 0 {
            match Event::decode(&msgs[0]) {
                Event::PageFault(pf) => return pf,
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert!(Instant::now() < deadline, "no fault event within 10 s");
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn kernel_offers_the_features_the_engine_uses() {
    let available = Uffd::available_features(OpenMethod::Syscall).unwrap();
    for f in [
        Features::PAGEFAULT_FLAG_WP,
        Features::WP_UNPOPULATED,
        Features::POISON,
        Features::MOVE,
        Features::WP_ASYNC,
        Features::EXACT_ADDRESS,
    ] {
        assert!(available.contains(f), "{f:?} missing from {available:?}");
    }
    let u = uffd();
    assert_eq!(u.method(), OpenMethod::Syscall);
    assert!(u.features().contains(Features::POISON | Features::MOVE));
    assert!(!u.features().contains(Features::WP_ASYNC), "not requested");
}

#[test]
fn every_open_method_works_as_root() {
    for method in OpenMethod::ALL {
        let u = Uffd::open_with(method, Features::empty(), Features::empty())
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(u.method(), method);
    }
}

#[test]
fn missing_required_feature_is_an_error_naming_it() {
    let bogus = Features::from_bits(1 << 60);
    let err = Uffd::open(Features::empty(), bogus).unwrap_err();
    assert!(matches!(err, UffdError::MissingFeatures { .. }), "{err}");
    assert!(err.to_string().contains("bit60"), "{err}");
}

#[test]
fn copy_resolves_a_missing_fault_and_wakes_the_reader() {
    let u = uffd();
    let map = mapping(4);
    let ps = page_size();
    // SAFETY: the mapping is ours and its faults are served below.
    let ioctls = unsafe { u.register(map.addr(), map.len(), RegisterMode::MISSING) }.unwrap();
    assert!(ioctls.copy() && ioctls.wake() && ioctls.zeropage());
    let target = map.addr() + 2 * ps + 123;
    let reader = std::thread::spawn(move || {
        // SAFETY: reads a byte of the registered, live mapping.
        unsafe { std::ptr::read_volatile(target as *const u8) }
    });
    let pf = next_fault(&u);
    assert_eq!(pf.address, map.addr() + 2 * ps, "rounded to the page");
    assert!(!pf.write && !pf.write_protect);
    let src = vec![7u8; ps];
    // SAFETY: destination is a registered page of our mapping; `src` is readable.
    unsafe { u.copy(pf.address, src.as_ptr(), ps, CopyMode::default()) }.unwrap();
    assert_eq!(reader.join().unwrap(), 7);
    // A second copy onto the now present page is EEXIST.
    // SAFETY: as above.
    let err = unsafe { u.copy(pf.address, src.as_ptr(), ps, CopyMode::default()) }.unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST));
    u.unregister(map.addr(), map.len()).unwrap();
}

#[test]
fn wake_lets_a_thread_retry_and_zeropage_resolves_it() {
    let u = uffd();
    let map = mapping(2);
    // SAFETY: the mapping is ours and its faults are served below.
    unsafe { u.register(map.addr(), map.len(), RegisterMode::MISSING) }.unwrap();
    let addr = map.addr();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let reader = std::thread::spawn(move || {
        // SAFETY: reads a byte of the registered, live mapping.
        let v = unsafe { std::ptr::read_volatile(addr as *const u8) };
        done2.store(true, Ordering::SeqCst);
        v
    });
    let pf = next_fault(&u);
    // Waking without resolving makes the thread fault again.
    u.wake(pf.address, page_size()).unwrap();
    let again = next_fault(&u);
    assert_eq!(again.address, pf.address);
    assert!(!done.load(Ordering::SeqCst));
    // SAFETY: destination is a registered missing page of our mapping.
    unsafe { u.zeropage(pf.address, page_size(), false) }.unwrap();
    assert_eq!(reader.join().unwrap(), 0);
}

#[test]
fn write_protect_reports_writes_and_unprotect_wakes_the_writer() {
    let u = uffd();
    let map = mapping(1);
    let ps = page_size();
    // SAFETY: the mapping is ours and its faults are served below.
    unsafe { u.register(map.addr(), map.len(), RegisterMode::MISSING_WP) }.unwrap();
    let src = vec![1u8; ps];
    // SAFETY: registered missing page; installed write-protected.
    unsafe {
        u.copy(
            map.addr(),
            src.as_ptr(),
            ps,
            CopyMode {
                write_protect: true,
                dont_wake: false,
            },
        )
    }
    .unwrap();
    let addr = map.addr();
    let writer = std::thread::spawn(move || {
        // SAFETY: writes a byte of the registered, live, writable mapping.
        unsafe { std::ptr::write_volatile(addr as *mut u8, 9) }
    });
    let pf = next_fault(&u);
    assert!(pf.write && pf.write_protect, "{pf:?}");
    u.writeprotect(map.addr(), ps, false, false).unwrap();
    writer.join().unwrap();
    // SAFETY: the page is resident now.
    assert_eq!(unsafe { std::ptr::read_volatile(addr as *const u8) }, 9);
}

#[test]
fn move_places_a_page_without_copying() {
    let u = uffd();
    let map = mapping(2);
    let ps = page_size();
    // SAFETY: the mapping is ours; nothing faults on it while registered (we fill it first).
    unsafe { std::ptr::write_bytes(map.as_ptr().add(ps), 5, ps) };
    // SAFETY: as above.
    let ioctls = unsafe { u.register(map.addr(), map.len(), RegisterMode::MISSING) }.unwrap();
    assert!(ioctls.move_pages());
    // SAFETY: both pages belong to our registered mapping; the first is missing.
    unsafe { u.move_pages(map.addr(), map.addr() + ps, ps, false) }.unwrap();
    // SAFETY: the first page is present now.
    assert_eq!(unsafe { *map.as_ptr() }, 5);
}

#[test]
fn poison_makes_access_raise_sigbus_until_replaced() {
    let u = uffd();
    let map = mapping(1);
    // SAFETY: the mapping is ours.
    let ioctls = unsafe { u.register(map.addr(), map.len(), RegisterMode::MISSING) }.unwrap();
    assert!(ioctls.poison());
    // SAFETY: the page is ours and missing; this thread does not touch it while poisoned.
    unsafe { u.poison(map.addr(), page_size(), false) }.unwrap();
    // A child (which inherits the poison marker) reads the page and must die of SIGBUS.
    // SAFETY: the child only does a volatile read and _exit, both async-signal-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: in the child; reading the poisoned page raises SIGBUS.
        unsafe {
            std::ptr::read_volatile(map.as_ptr());
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
        "child status {status:#x}"
    );
    // A later COPY replaces the marker (so a retried fill can recover the page).
    let src = vec![3u8; page_size()];
    // SAFETY: as above; the page becomes readable.
    unsafe { u.copy(map.addr(), src.as_ptr(), page_size(), CopyMode::default()) }.unwrap();
    // SAFETY: the page is present now.
    assert_eq!(unsafe { *map.as_ptr() }, 3);
}

#[test]
fn reading_with_no_pending_event_returns_zero() {
    let u = uffd();
    let mut msgs = [UffdMsg::zeroed(); 8];
    assert_eq!(u.read_events(&mut msgs).unwrap(), 0);
}

#[test]
fn a_partial_copy_reports_eagain_and_the_bytes_done() {
    let u = uffd();
    let map = mapping(2);
    let ps = page_size();
    // The second page is present before registration; the first is missing.
    // SAFETY: the mapping is ours and writable.
    unsafe { std::ptr::write_bytes(map.as_ptr().add(ps), 1, ps) };
    // SAFETY: the mapping is ours; nothing faults on it while registered.
    unsafe { u.register(map.addr(), map.len(), RegisterMode::MISSING) }.unwrap();
    let src = vec![2u8; 2 * ps];
    // SAFETY: destination is our registered mapping; `src` is readable for 2 pages.
    let err = unsafe { u.copy(map.addr(), src.as_ptr(), 2 * ps, CopyMode::default()) }.unwrap_err();
    assert_eq!(err.errno(), Some(libc::EAGAIN), "{err}");
    assert_eq!(err.done(), ps, "the first page was copied");
    // SAFETY: both pages are present now.
    assert_eq!(unsafe { (*map.as_ptr(), *map.as_ptr().add(ps)) }, (2, 1));
}
