//! Faults served on the faulting thread (`Config::signal_faults`): the kernel raises `SIGBUS`
//! in the thread that faults and the engine's handler serves the fault there.
//!
//! Covered: reads and writes from several threads under eviction against a model (the file
//! afterwards, the statistics showing that every fault went through the handler and none
//! through a filler); system calls on missing pages (`EFAULT`, the documented price); a
//! poisoned page (a fatal `SIGBUS`, as under mmap); bus errors that are not the engine's (to
//! the handler installed before, or fatal); engines of both kinds in one process, and engines
//! coming and going (their slots are reused). Signals are checked in child processes. Page
//! recycling with signal faults is in tests/recycle.rs.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;

use common::Rng;
use umap::{MapOptions, MemStore, Region, Umap};
use umap_store::fault::{Fault, FaultyStore, Op};

const KIB: usize = 1024;

fn signal_engine(buffer: usize, page: usize) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(page)
        .fillers(1)
        .signal_faults(true)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd with UFFD_FEATURE_SIGBUS: {e}"))
}

/// `threads` threads each own the pages `p` with `p % threads == t` of a file-backed region
/// 8 times the buffer, and write and read them at random (some accesses straddle into the
/// next page of the same owner only, so owners never race); reads are checked against each
/// thread's model; at the end the file must equal the model.
fn model_run(page: usize, threads: usize, seed: u64) {
    let pages = 64;
    let len = pages * page;
    let dir = tempfile::tempdir().unwrap();
    let path = common::pattern_file(dir.path(), "data", seed, len as u64);
    let umap = signal_engine(len / 8, page);
    let region = umap
        .map(common::open_store(&path), MapOptions::new().writable(true))
        .unwrap();
    let base = region.as_mut_ptr() as usize;
    let models: Vec<Vec<u8>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ ((t as u64 + 1) * 0x9e37_79b9));
                    let mut model = common::pattern(seed, 0, len);
                    let mine: Vec<usize> = (t..pages).step_by(threads).collect();
                    let mut bytes = vec![0u8; page];
                    for _ in 0..2000 {
                        let p = mine[rng.below(mine.len() as u64) as usize];
                        let at = p * page + rng.below(page as u64) as usize;
                        let n = 1 + rng.below((p * page + page - at) as u64) as usize;
                        if rng.below(2) == 0 {
                            for b in &mut bytes[..n] {
                                *b = rng.next_u64() as u8;
                            }
                            // SAFETY: `at..at + n` lies in page `p` of the live, writable
                            // region, which only this thread accesses.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    bytes.as_ptr(),
                                    (base + at) as *mut u8,
                                    n,
                                )
                            };
                            model[at..at + n].copy_from_slice(&bytes[..n]);
                        } else {
                            // SAFETY: as above, read-only.
                            let got =
                                unsafe { std::slice::from_raw_parts((base + at) as *const u8, n) };
                            assert!(
                                got == &model[at..at + n],
                                "thread {t}: read {at}+{n} differs from the model (seed {seed})"
                            );
                        }
                    }
                    model
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let stats = umap.stats();
    region.unmap().unwrap();
    let file = std::fs::read(&path).unwrap();
    for p in 0..pages {
        let range = p * page..(p + 1) * page;
        assert!(
            file[range.clone()] == models[p % threads][range],
            "page {p} of the file differs from its owner's model (seed {seed})"
        );
    }
    assert!(
        stats.signal_faults > 0 && stats.event_batches == 0,
        "every fault is served in the handler, none read by a filler: {stats:?}"
    );
    assert_eq!(
        stats.signal_faults,
        stats.read_faults + stats.write_faults + stats.wp_faults,
        "{stats:?}"
    );
    // Writes to missing pages are told from reads (the CPU's error code) and filled writable;
    // first writes to clean pages are write-protect faults, served by unprotecting.
    assert!(
        stats.write_faults > 0 && stats.wp_faults > 0 && stats.dirty_evictions > 0,
        "{stats:?}"
    );
}

#[test]
fn threads_write_and_read_through_signals_like_a_model_4k() {
    model_run(4 * KIB, 4, 0x5161);
}

#[test]
fn threads_write_and_read_through_signals_like_a_model_64k() {
    model_run(64 * KIB, 3, 0x5164);
}

/// The documented price: the kernel's own access to a missing page (a system call's copy)
/// gets `EFAULT` instead of waiting for the page; once the page is resident (touched, or
/// prefetched) the same call works.
#[test]
fn a_system_call_on_a_missing_page_fails_until_the_page_is_resident() {
    let ps = 4 * KIB;
    let umap = signal_engine(64 * ps, ps);
    let region = umap
        .map(
            MemStore::from_vec(common::pattern(7, 0, 32 * ps)),
            MapOptions::new(),
        )
        .unwrap();
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let write_from = |offset: usize| {
        // SAFETY: the source lies inside the live region; the kernel reads it or fails.
        let rc = unsafe { libc::write(pipe[1], region.as_ptr().add(offset).cast(), 64) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if rc == 64 {
            let mut back = [0u8; 64];
            // SAFETY: reads the 64 bytes just written into the pipe.
            assert_eq!(
                unsafe { libc::read(pipe[0], back.as_mut_ptr().cast(), 64) },
                64
            );
            common::check_pattern(7, offset as u64, &back);
        }
        (rc, errno)
    };
    assert_eq!(write_from(5 * ps), (-1, Some(libc::EFAULT)), "missing page");
    // A touch serves the fault; then the call works.
    common::check_pattern(7, 5 * ps as u64, &region.as_slice()[5 * ps..5 * ps + 8]);
    assert_eq!(write_from(5 * ps).0, 64, "resident page");
    region.prefetch(9 * ps, 2 * ps).unwrap().wait().unwrap();
    assert_eq!(write_from(10 * ps).0, 64, "prefetched page");
    // SAFETY: closes the pipe's two descriptors, opened above.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    let stats = umap.stats();
    assert_eq!(stats.signal_faults, 1, "{stats:?}");
    region.unmap().unwrap();
}

const POISON_CHILD: &str = "UMAP_TEST_SIGNAL_POISON";

/// Runs in a child (see `a_page_whose_read_fails_raises_a_fatal_sigbus`).
#[test]
fn poison_child() {
    if std::env::var_os(POISON_CHILD).is_none() {
        return;
    }
    let ps = 4 * KIB;
    let umap = signal_engine(64 * ps, ps);
    let store = Arc::new(FaultyStore::new(
        MemStore::from_vec(common::pattern(3, 0, 16 * ps)),
        3,
    ));
    store.inject(Fault::on(Op::Read).range(3 * ps as u64..4 * ps as u64));
    let region = umap.map_shared(store, MapOptions::new()).unwrap();
    common::check_pattern(3, 0, &region.as_slice()[..3 * ps]);
    println!("READ THE GOOD PAGES");
    // SAFETY: reads the live region; the page's store read fails, so this raises SIGBUS.
    let v = unsafe { std::ptr::read_volatile(region.as_ptr().add(3 * ps + 10)) };
    println!("UNEXPECTED: read {v} from a page whose store read fails");
    std::process::exit(3);
}

/// A page whose store read fails is poisoned, and the access raises a `SIGBUS` that the
/// handler passes on: the process dies of it, as with an I/O error under mmap (no hang, no
/// endless retry).
#[test]
fn a_page_whose_read_fails_raises_a_fatal_sigbus() {
    let (status, out) = common::run_test_child("poison_child", &[(POISON_CHILD, "1")]);
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{out}");
    assert!(out.contains("READ THE GOOD PAGES"), "{out}");
}

const FOREIGN_CHILD: &str = "UMAP_TEST_SIGNAL_FOREIGN";
const FOREIGN_WITH_HANDLER: &str = "UMAP_TEST_SIGNAL_FOREIGN_HANDLER";

/// The exit status of the program's own `SIGBUS` handler in `foreign_child`.
const OWN_HANDLER_EXIT: i32 = 42;

extern "C" fn own_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    const MESSAGE: &[u8] = b"OWN HANDLER RAN\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `info` is the kernel's siginfo.
    unsafe {
        if (*info).si_code == libc::BUS_ADRERR {
            libc::write(1, MESSAGE.as_ptr().cast(), MESSAGE.len());
        }
        libc::_exit(OWN_HANDLER_EXIT);
    }
}

/// Runs in a child (see the two `a_bus_error_outside_...` tests): with `FOREIGN_WITH_HANDLER`
/// set it installs its own handler first. It starts a signal engine, reads a region through
/// it, then reads a file mapping past the end of its file (a bus error that is not the
/// engine's).
#[test]
fn foreign_child() {
    if std::env::var_os(FOREIGN_CHILD).is_none() {
        return;
    }
    if std::env::var_os(FOREIGN_WITH_HANDLER).is_some() {
        // SAFETY: installs a handler with the SA_SIGINFO signature; the struct is zeroed and
        // then filled.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = own_handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            assert_eq!(
                libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()),
                0
            );
        }
    }
    let ps = 4 * KIB;
    let umap = signal_engine(64 * ps, ps);
    let region = umap
        .map(
            MemStore::from_vec(common::pattern(4, 0, 8 * ps)),
            MapOptions::new(),
        )
        .unwrap();
    common::check_pattern(4, 0, region.as_slice());
    assert!(umap.stats().signal_faults > 0);
    println!("REGION READ");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short");
    std::fs::write(&path, [1u8; 16]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: a new shared read-only mapping of the file (the child exits without unmapping).
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * ps,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    // SAFETY: the mapping is live; its second page lies past the end of the file, so the
    // read raises SIGBUS (BUS_ADRERR), at an address no engine serves.
    let v = unsafe { std::ptr::read_volatile(map.cast::<u8>().add(ps)) };
    println!("UNEXPECTED: read {v} past the end of a file");
    std::process::exit(3);
}

/// A bus error that is not the engine's goes to the handler the program installed before.
#[test]
fn a_bus_error_outside_any_region_reaches_the_handler_installed_before() {
    let (status, out) = common::run_test_child(
        "foreign_child",
        &[(FOREIGN_CHILD, "1"), (FOREIGN_WITH_HANDLER, "1")],
    );
    assert_eq!(status.code(), Some(OWN_HANDLER_EXIT), "{status:?}\n{out}");
    assert!(
        out.contains("REGION READ") && out.contains("OWN HANDLER RAN"),
        "{out}"
    );
}

/// Without a handler of the program's, such a bus error is fatal, as without umap.
#[test]
fn a_bus_error_outside_any_region_is_fatal_without_a_handler() {
    let (status, out) = common::run_test_child("foreign_child", &[(FOREIGN_CHILD, "1")]);
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{out}");
    assert!(out.contains("REGION READ"), "{out}");
}

fn read_all(region: &Region, seed: u64) {
    common::check_pattern(seed, 0, region.as_slice());
}

/// Engines of both kinds run side by side (each serves its own regions), and signal engines
/// come and go more times than there are slots for them at once.
#[test]
fn engines_of_both_kinds_share_a_process_and_come_and_go() {
    let ps = 4 * KIB;
    let len = 256 * ps;
    let filler_engine = Umap::builder()
        .buffer_size(32 * ps)
        .page_size(ps)
        .fillers(1)
        .start()
        .unwrap();
    let a = filler_engine
        .map(
            MemStore::from_vec(common::pattern(1, 0, len)),
            MapOptions::new(),
        )
        .unwrap();
    for round in 0..40 {
        let engine = signal_engine(32 * ps, ps);
        let b = engine
            .map(
                MemStore::from_vec(common::pattern(2 + round, 0, len)),
                MapOptions::new(),
            )
            .unwrap();
        std::thread::scope(|s| {
            s.spawn(|| read_all(&a, 1));
            s.spawn(|| read_all(&b, 2 + round));
        });
        let stats = engine.stats();
        assert!(
            stats.fills >= 256 && stats.signal_faults > 0 && stats.event_batches == 0,
            "{stats:?}"
        );
        b.unmap().unwrap();
    }
    let stats = filler_engine.stats();
    assert!(
        stats.signal_faults == 0 && stats.event_batches > 0,
        "{stats:?}"
    );
    a.unmap().unwrap();
}
