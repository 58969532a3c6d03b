//! Page recycling (`Config::recycle_pages`): evicted pages are moved into a pool and dirty fills
//! move pool pages into the region (`UFFDIO_MOVE`) instead of freeing and copying. These tests
//! run the write path with it on and check that no write is lost, that write-protect tracking
//! still sees every first write after a fill or a flush, and that the fallbacks (a page shared
//! with a forked child, a read-only region) still work. Each asserts that the pool was really
//! used (`Stats::recycled_bytes`), so a recycling path that quietly never ran would fail here.

mod common;

use std::sync::Arc;

use common::{assert_same, Rng};
use umap::{FileStore, MapOptions, MemStore, Region, Umap};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn engine(buffer: usize, page: usize, fillers: usize) -> Umap {
    engine_with(buffer, page, fillers, false)
}

/// The same, with faults served on the faulting thread if `signals`
/// (`Config::signal_faults`).
fn engine_with(buffer: usize, page: usize, fillers: usize, signals: bool) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(page)
        .fillers(fillers)
        .recycle_pages(true)
        .signal_faults(signals)
        .start()
        .expect("userfaultfd engine (needs Linux userfaultfd with write-protect support)")
}

/// Random writes, reads, read-then-write sweeps (which turn on eager dirty fills, the main
/// recycling path), flushes and remaps through a buffer 8 times smaller than the region, with
/// the file compared to a model after every flush and at the end.
fn model_case(page: usize, seed: u64, signals: bool) {
    let mut rng = Rng::new(seed);
    let buffer = 4 * MIB;
    let len = 8 * buffer - 3 * KIB; // not a multiple of the page
    let fillers = 1 + rng.below(2) as usize;
    let case = format!("page {page}, seed {seed:#x}, fillers {fillers}, signal faults {signals}");
    let dir = tempfile::tempdir().unwrap();
    let path = common::pattern_file(dir.path(), "data", seed, len as u64);
    let mut model = common::pattern(seed, 0, len);
    let umap = engine_with(buffer, page, fillers, signals);
    let map = |umap: &Umap| -> Region {
        umap.map(
            FileStore::open(&path).unwrap(),
            MapOptions::new().page_size(page).writable(true),
        )
        .unwrap()
    };
    let mut region = map(&umap);
    for op in 0..400 {
        let at = rng.below(len as u64) as usize;
        match rng.below(100) {
            0..=39 => {
                let n = (1 + rng.below(3 * page as u64) as usize).min(len - at);
                let v = rng.next_u64() as u8;
                region.as_mut_slice().unwrap()[at..at + n].fill(v);
                model[at..at + n].fill(v);
            }
            40..=69 => {
                let n = (1 + rng.below(2 * page as u64) as usize).min(len - at);
                assert_same(
                    &format!("{case}: op {op}: read {at}+{n}"),
                    at,
                    &region.as_slice()[at..at + n],
                    &model[at..at + n],
                );
            }
            70..=89 => {
                // A read-modify-write sweep over a few MiB: each page read, then written.
                let n = (buffer + rng.below(buffer as u64) as usize).min(len - at);
                let slice = region.as_mut_slice().unwrap();
                for p in (at..at + n).step_by(page / 2) {
                    let v = slice[p].wrapping_add(1);
                    slice[p] = v;
                    model[p] = v;
                }
            }
            90..=96 => {
                region.flush().unwrap();
                assert_eq!(
                    region.dirty_bytes(),
                    0,
                    "{case}: op {op}: dirty after flush"
                );
                assert_same(
                    &format!("{case}: op {op}: file after flush"),
                    0,
                    &std::fs::read(&path).unwrap(),
                    &model,
                );
            }
            _ => {
                region.unmap().unwrap();
                assert_same(
                    &format!("{case}: op {op}: file after unmap"),
                    0,
                    &std::fs::read(&path).unwrap(),
                    &model,
                );
                region = map(&umap);
            }
        }
    }
    assert_same(&format!("{case}: final read"), 0, region.as_slice(), &model);
    let stats = umap.stats();
    region.unmap().unwrap();
    assert_same(
        &format!("{case}: final file"),
        0,
        &std::fs::read(&path).unwrap(),
        &model,
    );
    assert!(
        stats.recycled_bytes > 0 && stats.pooled_bytes > 0,
        "{case}: the pool was never used: {stats:?}"
    );
    assert!(
        stats.dirty_evictions > 0 && stats.wp_faults > 0,
        "{case}: no dirty eviction or write-protect fault: {stats:?}"
    );
    assert_eq!(
        stats.signal_faults > 0,
        signals,
        "{case}: faults served in the handler: {stats:?}"
    );
}

#[test]
fn recycled_pages_keep_every_write_64k() {
    for seed in 0..3 {
        model_case(64 * KIB, 0x6400 + seed, false);
    }
}

#[test]
fn recycled_pages_keep_every_write_192k() {
    // Not a power of two; several system pages per move.
    for seed in 0..2 {
        model_case(192 * KIB, 0x19200 + seed, false);
    }
}

/// The model with faults served on the faulting thread (`Config::signal_faults`): the handler
/// fills dirty runs from pool pages and reclaims into the pool like a filler.
#[test]
fn recycled_pages_keep_every_write_with_signal_faults() {
    for seed in 0..2 {
        model_case(64 * KIB, 0x5640 + seed, true);
    }
    model_case(192 * KIB, 0x5192, true);
}

/// Writers on both CPUs, each owning every fourth u64 of a region 8 times the buffer, write
/// sequence numbers over many passes while pages are recycled under them; afterwards every
/// word in memory and in the store is its writer's last value.
#[test]
fn concurrent_writers_lose_nothing_with_recycling() {
    concurrent_writers(false);
}

/// The same with faults served on the faulting thread: the writers fill and reclaim through the
/// pool themselves.
#[test]
fn concurrent_writers_lose_nothing_with_recycling_and_signal_faults() {
    concurrent_writers(true);
}

fn concurrent_writers(signals: bool) {
    const THREADS: usize = 4;
    const PASSES: u64 = 3;
    let page = 64 * KIB;
    let buffer = 4 * MIB;
    let len = 8 * buffer;
    let store = Arc::new(MemStore::new(len));
    let umap = engine_with(buffer, page, 2, signals);
    let region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    let words = len / 8;
    let base = region.as_mut_ptr() as usize;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                let mut rng = Rng::new(t as u64);
                for pass in 1..=PASSES {
                    // Each pass visits the thread's words in a different order of pages.
                    let start = rng.below(words as u64) as usize;
                    for k in 0..words / THREADS {
                        let w = ((start / THREADS + k) % (words / THREADS)) * THREADS + t;
                        let p = (base + w * 8) as *mut u64;
                        // SAFETY: word `w` is inside the region, which outlives the scope, and
                        // only thread `t` touches words `w % THREADS == t`.
                        unsafe {
                            let old = std::ptr::read_volatile(p);
                            assert!(
                                old == 0 || old == encode(w, pass - 1),
                                "thread {t} pass {pass}: word {w} reads {old:#x}"
                            );
                            std::ptr::write_volatile(p, encode(w, pass));
                        }
                    }
                }
            });
        }
    });
    let check = |bytes: &[u8], what: &str| {
        for (w, chunk) in bytes.chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes(chunk.try_into().unwrap());
            assert_eq!(v, encode(w, PASSES), "{what}: word {w}");
        }
    };
    check(region.as_slice(), "memory");
    let stats = umap.stats();
    region.unmap().unwrap();
    check(&store.to_vec(), "store");
    assert!(
        stats.recycled_bytes > 0,
        "the pool was never used: {stats:?}"
    );
    assert_eq!(stats.signal_faults > 0, signals, "{stats:?}");
}

fn encode(word: usize, pass: u64) -> u64 {
    (word as u64) << 8 | pass
}

/// A page shared with a forked child cannot be moved (`EBUSY`): eviction falls back to
/// dropping it, and nothing is lost. The region is made inheritable (`MADV_DOFORK`) so that a
/// child shares its resident pages.
#[test]
fn pages_shared_with_a_child_fall_back_to_dropping() {
    let page = 64 * KIB;
    let buffer = 4 * MIB;
    let len = 8 * buffer;
    let store = Arc::new(MemStore::from_vec(common::pattern(9, 0, len)));
    let umap = engine(buffer, page, 2);
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    let mut model = common::pattern(9, 0, len);
    // Resident pages, clean and dirty, in the first half of the buffer.
    let slice = region.as_mut_slice().unwrap();
    for p in (0..buffer / 2).step_by(page) {
        if p % (2 * page) == 0 {
            slice[p] = 0xa5;
            model[p] = 0xa5;
        } else {
            assert_eq!(slice[p], model[p]);
        }
    }
    let base = region.as_mut_ptr();
    // SAFETY: plain system call on the region's own range.
    let rc = unsafe { libc::madvise(base.cast(), region.len(), libc::MADV_DOFORK) };
    assert_eq!(
        rc,
        0,
        "madvise(MADV_DOFORK): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the child only sleeps and exits: no allocation, no locks.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: sleep and _exit are async-signal-safe.
        unsafe {
            libc::sleep(60);
            libc::_exit(0);
        }
    }
    // Write everything twice over while the child holds the old pages: every page is evicted,
    // those the child shares with a failed move.
    let before = umap.stats();
    let slice = region.as_mut_slice().unwrap();
    for round in 0..2u8 {
        for p in (0..len).step_by(4 * KIB) {
            let v = slice[p].wrapping_add(round + 1);
            slice[p] = v;
            model[p] = v;
        }
    }
    let during = umap.stats();
    // SAFETY: `pid` is our child; kill and reap it.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
    }
    assert_same("memory", 0, region.as_slice(), &model);
    region.flush().unwrap();
    assert_same("store after flush", 0, &store.to_vec(), &model);
    region.unmap().unwrap();
    assert!(
        during.evictions - before.evictions >= (len / page) as u64,
        "every page should have been evicted: {during:?}"
    );
    assert!(
        during.recycled_bytes > before.recycled_bytes,
        "the pages the child did not share should still be recycled: {during:?}"
    );
}

/// A read-only region never recycles (moves need writable mappings): it reads correctly and
/// is evicted by dropping, with the option on.
#[test]
fn read_only_regions_keep_the_copy_path() {
    let page = 64 * KIB;
    let buffer = 4 * MIB;
    let len = 4 * buffer;
    let umap = engine(buffer, page, 2);
    let ro = umap
        .map(
            MemStore::from_vec(common::pattern(3, 0, len)),
            MapOptions::new(),
        )
        .unwrap();
    for _ in 0..2 {
        common::check_pattern(3, 0, ro.as_slice());
    }
    assert!(
        ro.stats().evictions > 0,
        "the read-only region should have been evicted"
    );
    let stats = umap.stats();
    assert_eq!(stats.recycled_bytes, 0, "{stats:?}");
    assert_eq!(stats.pooled_bytes, 0, "{stats:?}");
    ro.unmap().unwrap();
}

/// A steady mix of reads (clean fills, which take no pool pages) and writes (dirty fills, which
/// do) through a buffer 8 times smaller than the region: the region grows under pool pages
/// nobody takes, and the evictors trim the pool before fills find the buffer full, so the fault
/// path never drops pool pages itself (`Stats::pool_fault_trims`), while pages are recycled.
#[test]
fn evictors_trim_the_pool_off_the_fault_path() {
    let page = 64 * KIB;
    let buffer = 32 * MIB;
    let len = 8 * buffer;
    let pages = len / page;
    let store = Arc::new(MemStore::new(len));
    let umap = Umap::builder()
        .buffer_size(buffer)
        .page_size(page)
        .fillers(1)
        .watermarks(80, 50)
        .recycle_pages(true)
        .start()
        .expect("userfaultfd engine (needs Linux userfaultfd with write-protect support)");
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    let slice = region.as_mut_slice().unwrap();
    let mut sum = 0u64;
    // Pages in a scattered order (no read-ahead), three reads to a write.
    for k in 0..4 * pages {
        let p = (k * 7919 % pages) * page + k % page;
        if k % 4 == 0 {
            slice[p] = slice[p].wrapping_add(1);
        } else {
            sum += u64::from(slice[p]);
        }
        // Paced, so that evictors short of CPU (other tests, a loaded machine) keep up: the
        // test is about where the pool is trimmed, not about how fast.
        if k % 8 == 7 {
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }
    let stats = umap.stats();
    assert!(
        stats.recycled_bytes > 0 && stats.high_water_hits > 2,
        "pages were recycled over several eviction rounds: {stats:?} ({sum})"
    );
    assert_eq!(
        stats.pool_fault_trims, 0,
        "a fill trimmed the pool on the fault path: {stats:?}"
    );
    region.unmap().unwrap();
}
