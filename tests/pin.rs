//! Pinned ranges (`Region::pin`): filled once, never evicted while the rest of the region is
//! paged through the buffer, written back, counted against the buffer within a limit.

mod common;

use std::sync::Arc;

use common::{check_pattern, pattern};
use umap::{Advice, Error, MapOptions, MemStore, Region, Store, Umap};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const SEED: u64 = 0x9195;

fn engine(buffer: usize, page_size: usize) -> Umap {
    engine_with(buffer, page_size, false)
}

/// The same, faults served on the faulting thread if `signals` (`Config::signal_faults`).
fn engine_with(buffer: usize, page_size: usize, signals: bool) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(page_size)
        .fillers(2)
        .evictors(1)
        .signal_faults(signals)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"))
}

/// System pages of `[offset, offset + len)` of `region` that are resident.
fn resident(region: &Region, offset: usize, len: usize) -> usize {
    umap::sys::resident_pages(region.as_ptr() as usize + offset, len).unwrap()
}

fn sys_pages(len: usize) -> usize {
    len / umap::sys::page_size()
}

/// Reads `[start, end)` of `region` (one check per 4 KiB).
fn scan(region: &Region, start: usize, end: usize) {
    let data = region.as_slice();
    for off in (start..end).step_by(4 * KIB) {
        check_pattern(SEED, off as u64, &data[off..off + 8]);
    }
}

#[test]
fn pinned_pages_stay_resident_while_threads_page_through_the_rest() {
    pinned_pages_stay_resident(false);
}

/// The same with faults served on the faulting thread: the handlers' reclaim skips pinned
/// pages as the fillers' does.
#[test]
fn pinned_pages_stay_resident_with_signal_faults() {
    pinned_pages_stay_resident(true);
}

fn pinned_pages_stay_resident(signals: bool) {
    for page_size in [4 * KIB, 64 * KIB] {
        let umap = engine_with(4 * MIB, page_size, signals);
        let region = Arc::new(
            umap.map(
                MemStore::from_vec(pattern(SEED, 0, 32 * MIB)),
                MapOptions::new(),
            )
            .unwrap(),
        );
        let (at, len) = (10 * MIB + 100, MIB);
        region.pin(at, len).unwrap();
        let (first, last) = (
            at / page_size * page_size,
            (at + len).next_multiple_of(page_size),
        );
        assert_eq!(region.pinned_bytes(), last - first);
        assert_eq!(
            resident(&region, first, last - first),
            sys_pages(last - first)
        );
        // Two threads read the whole region (8x the buffer) twice.
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let region = region.clone();
                std::thread::spawn(move || {
                    for round in 0..2 {
                        let half = 16 * MIB;
                        let start = (t + round) % 2 * half;
                        scan(&region, start, start + half);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(umap.stats().evictions > 0, "{}", umap.stats());
        assert_eq!(
            resident(&region, first, last - first),
            sys_pages(last - first),
            "page size {page_size}: pinned pages were evicted"
        );
        let faults = region.stats().read_faults;
        scan(&region, first, last);
        assert_eq!(
            region.stats().read_faults,
            faults,
            "the pinned range faulted"
        );
        assert!(umap.stats().resident_bytes <= 4 * MIB as u64);
        assert_eq!(umap.stats().signal_faults > 0, signals, "{}", umap.stats());
    }
}

#[test]
fn writes_to_pinned_pages_are_written_back_by_flush_and_unmap() {
    let umap = engine(MIB, 4 * KIB);
    let store = Arc::new(MemStore::from_vec(pattern(SEED, 0, 8 * MIB)));
    let region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    let (at, len) = (2 * MIB, 256 * KIB);
    region.pin(at, len).unwrap();
    // SAFETY: the range lies in the writable region, which only this thread touches.
    unsafe { std::ptr::write_bytes(region.as_mut_ptr().add(at), 0xa5, len) };
    scan(&region, 0, at);
    scan(&region, at + len, 8 * MIB);
    assert_eq!(resident(&region, at, len), sys_pages(len));
    assert_eq!(region.dirty_bytes(), len, "still dirty and resident");
    region.flush().unwrap();
    let mut got = vec![0u8; len];
    store.read_at(&mut got, at as u64).unwrap();
    assert!(got.iter().all(|&b| b == 0xa5));
    assert_eq!(
        resident(&region, at, len),
        sys_pages(len),
        "flushed, still resident"
    );
    // SAFETY: as above.
    unsafe { std::ptr::write_bytes(region.as_mut_ptr().add(at + 4096), 0x5a, 4096) };
    region.unmap().unwrap();
    store.read_at(&mut got[..4096], (at + 4096) as u64).unwrap();
    assert!(got[..4096].iter().all(|&b| b == 0x5a));
    assert_eq!(umap.stats().resident_bytes, 0);
}

#[test]
fn pins_are_limited_counted_once_and_given_back() {
    let umap = engine(MIB, 4 * KIB);
    // Low water: 70% of 1 MiB = 734003 bytes; two 4 KiB pages leave far more room.
    let limit = MIB * 70 / 100;
    let a = umap
        .map(
            MemStore::from_vec(pattern(SEED, 0, 4 * MIB)),
            MapOptions::new(),
        )
        .unwrap();
    a.pin(0, 512 * KIB).unwrap();
    a.pin(0, 512 * KIB).unwrap();
    a.pin(100 * KIB, 200 * KIB).unwrap();
    assert_eq!(a.pinned_bytes(), 512 * KIB, "each page counts once");
    match a.pin(256 * KIB, 512 * KIB) {
        Err(Error::PinLimit {
            bytes,
            pinned,
            limit: l,
        }) => {
            assert_eq!((bytes, pinned, l), (256 * KIB, 512 * KIB, limit));
        }
        other => panic!("expected PinLimit, got {other:?}"),
    }
    assert_eq!(a.pinned_bytes(), 512 * KIB, "a refused pin changes nothing");
    assert!(a.pin(0, 5 * MIB).is_err(), "outside the region");

    // A second region shares the limit; unmapping the first gives its pins back.
    let b = umap
        .map(
            MemStore::from_vec(pattern(SEED, 0, 4 * MIB)),
            MapOptions::new(),
        )
        .unwrap();
    assert!(matches!(b.pin(0, 256 * KIB), Err(Error::PinLimit { .. })));
    a.unpin(0, 256 * KIB).unwrap();
    assert_eq!(a.pinned_bytes(), 256 * KIB);
    b.pin(0, 256 * KIB).unwrap();
    a.unmap().unwrap();
    b.pin(0, 700 * KIB).unwrap();
    assert_eq!(b.pinned_bytes(), 700 * KIB);
    assert!(700 * KIB <= limit);

    // Unpinned pages are evicted again.
    b.unpin(0, 4 * MIB).unwrap();
    assert_eq!(b.pinned_bytes(), 0);
    scan(&b, 0, 4 * MIB);
    scan(&b, 0, 4 * MIB);
    assert!(resident(&b, 0, 700 * KIB) < sys_pages(700 * KIB));
}

#[test]
fn dont_need_and_eviction_leave_pinned_pages() {
    let umap = engine(2 * MIB, 16 * KIB);
    let region = umap
        .map(
            MemStore::from_vec(pattern(SEED, 0, 4 * MIB)),
            MapOptions::new(),
        )
        .unwrap();
    region.pin(MIB, 512 * KIB).unwrap();
    scan(&region, 0, 4 * MIB);
    // The last page of the scan is marked resident just after its reader is woken: were the
    // advice to run first, that page would be resident after it.
    common::faults_settle(&umap);
    region.advise(0, 4 * MIB, Advice::DontNeed).unwrap();
    assert_eq!(resident(&region, MIB, 512 * KIB), sys_pages(512 * KIB));
    assert_eq!(
        region.resident_bytes(),
        512 * KIB,
        "everything else was dropped"
    );
}

/// Pins race with evictions: one thread keeps paging the region through the buffer while
/// another pins, checks and unpins ranges. When `pin` returns, every page is resident, and
/// stays so until `unpin`.
#[test]
fn pins_racing_evictions_hold() {
    let umap = engine(MIB, 4 * KIB);
    let region = Arc::new(
        umap.map(
            MemStore::from_vec(pattern(SEED, 0, 8 * MIB)),
            MapOptions::new(),
        )
        .unwrap(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pager = {
        let (region, stop) = (region.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                scan(&region, 0, 8 * MIB);
            }
        })
    };
    for i in 0..40 {
        let at = i * 172 * KIB % (7 * MIB);
        let len = 128 * KIB;
        region.pin(at, len).unwrap();
        assert_eq!(
            resident(&region, at, len),
            sys_pages(len),
            "pin {i} at {at}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(
            resident(&region, at, len),
            sys_pages(len),
            "pin {i} at {at}, later"
        );
        region.unpin(at, len).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pager.join().unwrap();
    assert!(umap.stats().evictions > 0);
    assert_eq!(region.pinned_bytes(), 0);
}

/// A read-only region of `len` bytes (a pattern) over a store whose faults the test injects.
fn faulty_region(
    umap: &Umap,
    len: usize,
) -> (Arc<umap_store::fault::FaultyStore<MemStore>>, Region) {
    let store = Arc::new(umap_store::fault::FaultyStore::new(
        MemStore::from_vec(pattern(7, 0, len)),
        1,
    ));
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    (store, region)
}

#[test]
fn a_pin_that_fails_leaves_earlier_pins_pinned() {
    use umap_store::fault::{Fault, Op};
    let ps = 4096;
    let umap = engine(1 << 20, ps);
    let (store, region) = faulty_region(&umap, 64 * ps);
    region.pin(0, 4 * ps).unwrap();
    assert_eq!(region.pinned_bytes(), 4 * ps);
    // Page 6 cannot be read: a pin over pages 0..8 fails, and must undo only its own pages.
    store.inject(
        Fault::on(Op::Read)
            .range(6 * ps as u64..7 * ps as u64)
            .permanent(),
    );
    let err = region.pin(0, 8 * ps).unwrap_err();
    assert!(
        matches!(&err, Error::Store(e) if e.raw_os_error() == Some(libc::EIO)),
        "the store's read error: {err:?}"
    );
    assert_eq!(
        region.pinned_bytes(),
        4 * ps,
        "the earlier pin of pages 0..4 must stay pinned"
    );
}

/// Two overlapping pins, the first of which fails: pin A of pages 0..8 pins them all and
/// starts filling, its read of page 6 stalls and then fails; meanwhile pin B of pages 0..4
/// (already pinned by A, so it pins nothing new) fills them and returns. A's undo must not
/// unpin B's pages.
#[test]
fn a_failed_pin_leaves_an_overlapping_pin_that_returned_pinned() {
    use std::time::{Duration, Instant};
    use umap_store::fault::{Fault, Op};
    let ps = 4096;
    let umap = engine(1 << 20, ps);
    let (store, region) = faulty_region(&umap, 64 * ps);
    let page6 = 6 * ps as u64..7 * ps as u64;
    store.inject(
        Fault::on(Op::Read)
            .range(page6.clone())
            .stall(Duration::from_millis(500))
            .times(1),
    );
    store.inject(Fault::on(Op::Read).range(page6).permanent());
    std::thread::scope(|s| {
        let a = s.spawn(|| region.pin(0, 8 * ps));
        // B begins once A has pinned its pages (and long before A's read of page 6 fails).
        let deadline = Instant::now() + Duration::from_secs(10);
        while region.pinned_bytes() != 8 * ps {
            assert!(Instant::now() < deadline, "pin A never pinned its pages");
            std::thread::yield_now();
        }
        region.pin(0, 4 * ps).unwrap();
        assert!(a.join().unwrap().is_err(), "page 6 cannot be read");
    });
    assert_eq!(
        region.pinned_bytes(),
        4 * ps,
        "pin B returned Ok: its pages must stay pinned"
    );
    assert_eq!(resident(&region, 0, 4 * ps), sys_pages(4 * ps));
}
