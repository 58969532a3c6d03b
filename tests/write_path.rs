//! The write path: dirty tracking through write-protect faults, write-back on eviction,
//! flush, and unmap.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{settles_to, TestStore};
use umap::Store;
use umap::{Error, FileStore, MapOptions, MemStore, Umap};

const PS: usize = 4096;

fn engine(buffer: usize, fillers: usize) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(PS)
        .fillers(fillers)
        // These tests count faults and resident pages exactly: no pages read ahead.
        .read_ahead(0)
        .start()
        .expect("userfaultfd engine (needs Linux userfaultfd with write-protect support)")
}

fn writable() -> MapOptions {
    MapOptions::new().writable(true)
}

#[test]
fn read_only_maps_refuse_writes_with_a_clear_error() {
    let umap = engine(1 << 20, 1);
    let err = umap
        .map(MemStore::new(1 << 16).read_only(), writable())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "writable",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("read-only"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = common::pattern_file(dir.path(), "ro", 1, 1 << 16);
    let store = FileStore::open_read_only(&path).unwrap();
    assert!(umap.map(store, writable()).is_err());

    let mut region = umap.map(MemStore::new(1 << 16), MapOptions::new()).unwrap();
    assert!(!region.is_writable());
    let err = region.as_mut_slice().unwrap_err();
    assert!(err.to_string().contains("writable(true)"), "{err}");
    // Flushing a read-only region is a no-op, not an error.
    region.flush().unwrap();
    assert_eq!(umap.stats().pages_written, 0);
}

#[test]
fn first_writes_are_tracked_and_flush_keeps_pages_resident_and_clean() {
    let umap = engine(1 << 20, 2);
    let store = Arc::new(MemStore::from_vec(common::pattern(7, 0, 64 * PS)));
    let mut region = umap.map_shared(store.clone(), writable()).unwrap();

    // Read 16 pages (filled clean, write-protected), then write to 8 of them: 8 WP faults.
    let sum: u64 = region.as_slice()[..16 * PS].iter().map(|&b| b as u64).sum();
    assert!(sum > 0);
    let before = umap.stats();
    assert_eq!(before.wp_faults, 0);
    for page in 0..8 {
        region.as_mut_slice().unwrap()[page * PS + 5] = 0xAB;
    }
    let after = umap.stats();
    assert_eq!(after.wp_faults, 8, "{after:?}");
    settles_to("dirty bytes", 8 * PS, || region.dirty_bytes());
    // Nothing reached the store yet.
    assert_ne!(store.to_vec()[5], 0xAB);

    region.flush().unwrap();
    let flushed = umap.stats();
    assert_eq!(flushed.pages_written - after.pages_written, 8);
    assert_eq!(region.dirty_bytes(), 0);
    settles_to("flush keeps pages resident", 16 * PS, || {
        region.resident_bytes()
    });
    let bytes = store.to_vec();
    for page in 0..8 {
        assert_eq!(bytes[page * PS + 5], 0xAB);
    }
    // Nothing dirty: a second flush writes nothing.
    region.flush().unwrap();
    assert_eq!(umap.stats().pages_written, flushed.pages_written);

    // Written back pages are protected again: the next write faults and is flushed.
    region.as_mut_slice().unwrap()[3 * PS] = 0xCD;
    assert_eq!(umap.stats().wp_faults, flushed.wp_faults + 1);
    region.flush().unwrap();
    assert_eq!(umap.stats().pages_written, flushed.pages_written + 1);
    assert_eq!(store.to_vec()[3 * PS], 0xCD);
    region.unmap().unwrap();
}

#[test]
fn a_failed_write_back_keeps_pages_dirty_writable_and_retried() {
    let umap = engine(1 << 20, 1);
    let store = Arc::new(TestStore::new(MemStore::new(16 * PS)));
    let mut region = umap.map_shared(store.clone(), writable()).unwrap();
    region.as_mut_slice().unwrap()[..4 * PS].fill(5);
    settles_to("dirty bytes", 4 * PS, || region.dirty_bytes());

    store.failing.store(true, Ordering::Relaxed);
    let err = region.flush().unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err}");
    assert!(err.to_string().contains("write"), "{err}");
    assert_eq!(umap.stats().write_errors, 1, "one run, one failed write");
    assert_eq!(
        region.dirty_bytes(),
        4 * PS,
        "nothing was dropped or cleaned"
    );
    // Still writable without a fault: the protection taken for the write-back was lifted.
    let wp_before = umap.stats().wp_faults;
    region.as_mut_slice().unwrap()[PS] = 6;
    assert_eq!(umap.stats().wp_faults, wp_before);

    // The store recovers: the next flush writes everything, the newest bytes included.
    store.failing.store(false, Ordering::Relaxed);
    region.flush().unwrap();
    assert_eq!(region.dirty_bytes(), 0);
    let bytes = store.inner.to_vec();
    assert_eq!(bytes[PS], 6);
    assert!(bytes[..4 * PS]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == if i == PS { 6 } else { 5 }));

    // unmap reports a write-back error too, and gives the region back, mapped and intact.
    region.as_mut_slice().unwrap()[0] = 7;
    store.failing.store(true, Ordering::Relaxed);
    let err = region.unmap().unwrap_err();
    assert!(matches!(err.error(), Error::Store(_)), "{err}");
    assert!(err.to_string().contains("into_region"), "{err}");
    let mut region = err.into_region().expect("the region comes back");
    assert_eq!(umap.region_count(), 1);
    assert_eq!(region.as_slice()[0], 7);
    assert_eq!(region.dirty_bytes(), PS, "still dirty");
    let errors = region.take_errors();
    assert!(
        errors.iter().any(|e| e.kind == umap::ErrorKind::Write
            && e.offset == 0
            && e.errno == Some(libc::EIO)),
        "{errors:?}"
    );
    // It keeps working: faults, writes, evictions.
    region.as_mut_slice().unwrap()[15 * PS] = 8;
    store.failing.store(false, Ordering::Relaxed);
    region.unmap().unwrap();
    assert_eq!(umap.region_count(), 0);
    let bytes = store.inner.to_vec();
    assert_eq!((bytes[0], bytes[PS], bytes[15 * PS]), (7, 6, 8));
}

#[test]
fn a_region_dropped_with_unwritable_pages_stays_mapped_until_a_flush_writes_them() {
    let umap = engine(1 << 20, 1);
    let store = Arc::new(TestStore::new(MemStore::new(16 * PS)));
    let mut region = umap.map_shared(store.clone(), writable()).unwrap();
    region.as_mut_slice().unwrap()[..3 * PS].fill(4);
    store.failing.store(true, Ordering::Relaxed);
    drop(region);
    assert_eq!(umap.region_count(), 1, "kept mapped and registered");
    assert_eq!(umap.leaked_regions(), 1);
    assert!(umap.stats().resident_bytes >= 3 * PS as u64);
    // Still unwritable: flush says so and keeps it.
    assert!(umap.flush().is_err());
    assert_eq!(umap.leaked_regions(), 1);
    store.failing.store(false, Ordering::Relaxed);
    umap.flush().unwrap();
    assert_eq!((umap.region_count(), umap.leaked_regions()), (0, 0));
    assert_eq!(umap.stats().resident_bytes, 0);
    assert!(store.inner.to_vec()[..3 * PS].iter().all(|&b| b == 4));
    assert!(store.inner.to_vec()[3 * PS..].iter().all(|&b| b == 0));
}

#[test]
fn the_engine_shutdown_writes_a_leaked_region_when_it_can() {
    let umap = engine(1 << 20, 1);
    let store = Arc::new(TestStore::new(MemStore::new(16 * PS)));
    let mut region = umap.map_shared(store.clone(), writable()).unwrap();
    region.as_mut_slice().unwrap()[5 * PS] = 9;
    store.failing.store(true, Ordering::Relaxed);
    drop(region);
    assert_eq!(umap.leaked_regions(), 1);
    store.failing.store(false, Ordering::Relaxed);
    drop(umap);
    assert_eq!(store.inner.to_vec()[5 * PS], 9);
}

#[test]
fn a_write_to_a_missing_page_fills_it_writable() {
    let umap = engine(1 << 20, 1);
    let store = Arc::new(MemStore::from_vec(common::pattern(3, 0, 16 * PS)));
    let mut region = umap.map_shared(store.clone(), writable()).unwrap();
    region.as_mut_slice().unwrap()[2 * PS + 100] = 1;
    let stats = umap.stats();
    assert_eq!(stats.write_faults, 1, "{stats:?}");
    assert_eq!(stats.wp_faults, 0, "installed writable: no second fault");
    settles_to("dirty bytes", PS, || region.dirty_bytes());
    // The rest of the page came from the store.
    common::check_pattern(3, 2 * PS as u64, &region.as_slice()[2 * PS..2 * PS + 100]);
    region.unmap().unwrap();
    let bytes = store.to_vec();
    assert_eq!(bytes[2 * PS + 100], 1);
    common::check_pattern(3, 2 * PS as u64 + 101, &bytes[2 * PS + 101..3 * PS]);
}

#[test]
fn flush_range_writes_only_the_pages_it_covers_and_checks_bounds() {
    let umap = engine(1 << 20, 2);
    let store = Arc::new(MemStore::new(32 * PS - 100));
    let mut region = umap.map_shared(store.clone(), writable()).unwrap();
    let len = region.len();
    region.as_mut_slice().unwrap().fill(9);
    settles_to("dirty bytes", 32 * PS, || region.dirty_bytes());

    // Bytes 1.5 pages .. 3.5 pages: pages 1, 2 and 3.
    region.flush_range(PS + PS / 2, 2 * PS).unwrap();
    assert_eq!(umap.stats().pages_written, 3);
    settles_to("dirty bytes", 29 * PS, || region.dirty_bytes());
    let bytes = store.to_vec();
    assert!(bytes[PS..4 * PS].iter().all(|&b| b == 9));
    assert!(bytes[..PS].iter().all(|&b| b == 0));
    assert!(bytes[4 * PS..].iter().all(|&b| b == 0));

    // An empty range is fine; ranges past the end are errors naming the bounds.
    region.flush_range(len, 0).unwrap();
    for (offset, n) in [(len, 1), (0, len + 1), (usize::MAX, 2)] {
        let err = region.flush_range(offset, n).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { name: "range", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("outside the region"), "{err}");
    }

    // The last page is partial: the store keeps its length.
    region.flush().unwrap();
    assert_eq!(store.len(), (32 * PS - 100) as u64);
    assert!(store.to_vec().iter().all(|&b| b == 9));
    region.unmap().unwrap();
}

#[test]
fn umap_flush_flushes_every_region_and_drop_writes_back() {
    let umap = engine(1 << 20, 2);
    let a = Arc::new(MemStore::new(8 * PS));
    let b = Arc::new(MemStore::new(8 * PS));
    let mut ra = umap.map_shared(a.clone(), writable()).unwrap();
    let mut rb = umap.map_shared(b.clone(), writable()).unwrap();
    ra.as_mut_slice().unwrap()[10] = 1;
    rb.as_mut_slice().unwrap()[PS * 7] = 2;
    umap.flush().unwrap();
    assert_eq!(a.to_vec()[10], 1);
    assert_eq!(b.to_vec()[PS * 7], 2);

    ra.as_mut_slice().unwrap()[11] = 3;
    drop(ra);
    assert_eq!(a.to_vec()[11], 3, "Drop writes back");
    drop(rb);
    assert_eq!(umap.region_count(), 0);
}

#[test]
fn flush_writes_each_run_of_adjacent_dirty_pages_with_one_store_call() {
    let umap = engine(1 << 20, 1);
    let store = Arc::new(TestStore::new(MemStore::new(64 * PS)));
    let mut region = umap.map_shared(store.clone(), writable()).unwrap();
    let data = region.as_mut_slice().unwrap();
    data[..32 * PS].fill(1);
    // The last page's state settles just after its writer resumes (see `settles_to`): a page
    // still in transition would be written on its own.
    settles_to("dirty bytes", 32 * PS, || region.dirty_bytes());
    region.flush().unwrap();
    assert_eq!(store.writes(), 1, "32 adjacent pages");
    let data = region.as_mut_slice().unwrap();
    data[..8 * PS].fill(2);
    data[16 * PS..24 * PS].fill(3);
    data[40 * PS] = 4;
    settles_to("dirty bytes", 17 * PS, || region.dirty_bytes());
    region.flush().unwrap();
    assert_eq!(store.writes(), 4, "three more runs");
    let bytes = store.inner.to_vec();
    assert!(bytes[..8 * PS].iter().all(|&b| b == 2));
    assert!(bytes[8 * PS..16 * PS].iter().all(|&b| b == 1));
    assert!(bytes[16 * PS..24 * PS].iter().all(|&b| b == 3));
    assert_eq!(bytes[40 * PS], 4);
    region.unmap().unwrap();
}

#[test]
fn eviction_writes_dirty_pages_back_in_coalesced_runs() {
    // 512 pages through a 64-page buffer, written in address order. The evictor starts at
    // half the buffer and frees down to a tenth, in batches: it sees runs of adjacent dirty
    // pages and writes each run with one store call. (Fillers that find the buffer full
    // reclaim one page at a time, so the average run is what is checked.)
    let umap = Umap::builder()
        .buffer_size(64 * PS)
        .page_size(PS)
        .fillers(1)
        .watermarks(50, 10)
        .start()
        .expect("userfaultfd engine");
    let store = Arc::new(TestStore::new(MemStore::new(512 * PS)));
    let mut region = umap.map_shared(store.clone(), writable()).unwrap();
    let monitor = common::ResidentMonitor::start(&umap, &region);
    for (i, chunk) in region.as_mut_slice().unwrap().chunks_mut(PS).enumerate() {
        chunk.fill(i as u8 ^ 0x5A);
    }
    let peak = monitor.finish();
    assert!(peak <= 64 * PS, "resident peak {peak} above the buffer");
    let evicted = umap.stats();
    assert!(evicted.dirty_evictions >= 400, "{evicted:?}");
    let writes = store.writes();
    assert!(
        writes * 2 <= evicted.pages_written as usize,
        "{writes} store writes for {} pages: runs were not coalesced",
        evicted.pages_written
    );
    region.unmap().unwrap();
    let bytes = store.inner.to_vec();
    for (i, chunk) in bytes.chunks(PS).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8 ^ 0x5A), "page {i}");
    }
}

/// Slot `i` of the array of u64 words starting at `base`.
///
/// # Safety
/// `base` must point to a mapped, 8-byte aligned region of more than `i` words.
unsafe fn slot<'a>(base: *mut u8, i: usize) -> &'a AtomicU64 {
    // SAFETY: by the caller's contract the word is mapped and aligned; AtomicU64 has the
    // layout of u64, and every access to the region in these tests is atomic.
    unsafe { &*(base.add(i * 8) as *const AtomicU64) }
}

/// A base pointer that may cross threads (the region outlives the scoped threads).
#[derive(Clone, Copy)]
struct Base(*mut u8);
// SAFETY: the pointer is only dereferenced through atomics while the region is mapped.
unsafe impl Send for Base {}
// SAFETY: as above.
unsafe impl Sync for Base {}

#[test]
fn concurrent_versioned_slots_never_go_backwards_and_all_reach_the_file() {
    const WRITERS: usize = 16;
    const READERS: usize = 2;
    const REGION: usize = 2 << 20;
    const SLOTS: usize = REGION / 8;
    const STEPS: usize = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    FileStore::create(&path, REGION as u64).unwrap();
    // A buffer of 1/8 of the region: random writes evict constantly.
    let umap = Umap::builder()
        .buffer_size(REGION / 8)
        .page_size(PS)
        .fillers(4)
        .evictors(2)
        .start()
        .expect("userfaultfd engine");
    let region = umap.map(common::open_store(&path), writable()).unwrap();
    let base = Base(region.as_mut_ptr());
    let done = AtomicUsize::new(0);
    let finals: Vec<Vec<u64>> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let done = &done;
                s.spawn(move || {
                    let base = base;
                    // Writer w owns slots w, w + 16, w + 32, ...: every page is shared by
                    // all writers.
                    let mut versions = vec![0u64; SLOTS / WRITERS];
                    let mut rng = common::Rng::new(0xABC0 + w as u64);
                    for _ in 0..STEPS {
                        let k = rng.below(versions.len() as u64) as usize;
                        versions[k] += 1;
                        // SAFETY: slot index < SLOTS, inside the mapped region.
                        let cell = unsafe { slot(base.0, k * WRITERS + w) };
                        cell.store(versions[k], Ordering::Release);
                    }
                    done.fetch_add(1, Ordering::Release);
                    versions
                })
            })
            .collect();
        for r in 0..READERS {
            let done = &done;
            s.spawn(move || {
                let base = base;
                let mut seen = vec![0u64; SLOTS];
                let mut rng = common::Rng::new(0xDEF0 + r as u64);
                while done.load(Ordering::Acquire) < WRITERS {
                    let i = rng.below(SLOTS as u64) as usize;
                    // SAFETY: i < SLOTS.
                    let v = unsafe { slot(base.0, i) }.load(Ordering::Acquire);
                    assert!(v >= seen[i], "slot {i} went back from {} to {v}", seen[i]);
                    seen[i] = v;
                }
            });
        }
        // Flushes race the writers too.
        s.spawn(|| {
            while done.load(Ordering::Acquire) < WRITERS {
                region.flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        writers.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let stats = umap.stats();
    assert!(
        stats.dirty_evictions > 1000 && stats.wp_faults > 0,
        "the buffer did not force write-back: {stats:?}"
    );
    region.unmap().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for (w, versions) in finals.iter().enumerate() {
        for (k, &want) in versions.iter().enumerate() {
            let i = k * WRITERS + w;
            let got = u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
            assert_eq!(got, want, "slot {i} (writer {w}) lost its last version");
        }
    }
}

#[test]
fn writes_racing_a_slow_write_back_are_not_lost() {
    // Every store write takes 2 ms; 4 threads keep incrementing counters that share the same
    // 8 pages while evictions (a 2-page buffer) and flushes write those pages back: writers
    // hit pages under write-back constantly.
    const PAGES: usize = 8;
    const THREADS: usize = 4;
    const ROUNDS: u64 = 400;
    let umap = Umap::builder()
        .buffer_size(2 * PS)
        .page_size(PS)
        .fillers(2)
        .start()
        .expect("userfaultfd engine");
    let store = Arc::new(TestStore::new(MemStore::new(PAGES * PS)).slow(Duration::from_millis(2)));
    let region = umap.map_shared(store.clone(), writable()).unwrap();
    let base = Base(region.as_mut_ptr());
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let done = &done;
            s.spawn(move || {
                let base = base;
                for round in 1..=ROUNDS {
                    // A few words on every page, interleaved with the other threads'.
                    for p in 0..PAGES {
                        let i = (p * PS / 8) + t + (round as usize % 16) * THREADS;
                        // SAFETY: i < PAGES * PS / 8.
                        unsafe { slot(base.0, i) }.fetch_add(1, Ordering::AcqRel);
                    }
                }
                done.fetch_add(1, Ordering::Release);
            });
        }
        s.spawn(|| {
            while done.load(Ordering::Acquire) < THREADS {
                region.flush().unwrap();
            }
        });
    });
    let stats = umap.stats();
    assert!(
        stats.parked_faults > 0,
        "no write met a write-back: {stats:?}"
    );
    region.unmap().unwrap();
    let bytes = store.inner.to_vec();
    for p in 0..PAGES {
        for t in 0..THREADS {
            for k in 0..16 {
                let i = (p * PS / 8) + t + k * THREADS;
                let got = u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
                // Rounds 1..=ROUNDS with round % 16 == k.
                let want = (1..=ROUNDS).filter(|r| *r as usize % 16 == k).count() as u64;
                assert_eq!(got, want, "word {i} (page {p}, thread {t}) lost increments");
            }
        }
    }
}
