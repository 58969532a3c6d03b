//! Eviction clustering: a dirty page taken for eviction brings along the other dirty pages of
//! its 2 MiB of address space that are old enough, and all of them are write-protected with
//! one call (one TLB flush) instead of one call each. Dirty pages in that span that stay
//! (too young) end up protected while the engine counts them writable; a write to one must
//! be answered by lifting the protection, and no write may be lost.
//!
//! Covered, for faults served by fillers and on the faulting thread: writers scattering
//! writes over a region 32 times the buffer (every page of a window far apart in time, so
//! windows hold pages of every age) while a hot writer keeps rewriting one page of each
//! window; the store afterwards against the model; the statistics showing that clustering
//! happened and that the young pages protected with their neighbours took write-protect
//! faults (every other write here hits a missing page).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::Rng;
use umap::{MapOptions, MemStore, Umap};

const KIB: usize = 1024;
const PAGE: usize = 4 * KIB;
/// 2 MiB windows of 4 KiB pages.
const WINDOW_PAGES: usize = 512;
const WINDOWS: usize = 4;
const PAGES: usize = WINDOWS * WINDOW_PAGES;

fn engine(signal_faults: bool) -> Umap {
    Umap::builder()
        .buffer_size(PAGES * PAGE / 32)
        .page_size(PAGE)
        .fillers(1)
        .evictors(1)
        .signal_faults(signal_faults)
        .start()
        .unwrap_or_else(|e| {
            panic!("the engine needs userfaultfd (with SIGBUS for signal faults): {e}")
        })
}

/// Two writers own alternate pages (`p % 2`) apart from page 1 of each window, which a hot
/// writer keeps incrementing (the first 8 bytes, as a `u64`) until the writers are done. Each
/// write stores the writer's sequence number and the page number in the page's first 16
/// bytes.
fn scattered_writes_with_hot_pages(signal_faults: bool, seed: u64) {
    // A protected dirty page that the fault path failed to unprotect would fault forever.
    let _watchdog = common::watchdog("scattered writes", std::time::Duration::from_secs(120));
    let umap = engine(signal_faults);
    let store = Arc::new(MemStore::new(PAGES * PAGE));
    let region = umap
        .map(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    let base = region.as_mut_ptr() as usize;
    let hot = |w: usize| w * WINDOW_PAGES + 1;
    let done = AtomicBool::new(false);
    let (models, hot_counts) = std::thread::scope(|s| {
        let hot_writer = s.spawn(|| {
            let mut count = 0u64;
            while !done.load(Ordering::Acquire) {
                count += 1;
                for w in 0..WINDOWS {
                    // SAFETY: the hot pages are in the region, which outlives the scope, and
                    // only this thread writes them.
                    unsafe { ((base + hot(w) * PAGE) as *mut u64).write_volatile(count) };
                }
                std::thread::yield_now();
            }
            count
        });
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let mut model = vec![0u64; PAGES];
                    for seq in 1..=20_000u64 {
                        let p = loop {
                            let p = rng.below(PAGES as u64) as usize;
                            if p % 2 == t as usize && p % WINDOW_PAGES != 1 {
                                break p;
                            }
                        };
                        let at = (base + p * PAGE) as *mut u64;
                        // SAFETY: `p` is this thread's page of the region (alive for the scope).
                        unsafe {
                            at.write_volatile(seq);
                            at.add(1).write_volatile(p as u64);
                        }
                        model[p] = seq;
                    }
                    model
                })
            })
            .collect();
        let models: Vec<Vec<u64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Release);
        (models, hot_writer.join().unwrap())
    });
    region.flush().unwrap();
    let stats = umap.stats();
    let bytes = store.to_vec();
    let word = |p: usize, i: usize| {
        let at = p * PAGE + i * 8;
        u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap())
    };
    for p in 0..PAGES {
        if p % WINDOW_PAGES == 1 {
            assert_eq!(word(p, 0), hot_counts, "hot page {p}: its last write lost");
            continue;
        }
        let seq = models[p % 2][p];
        let want = if seq == 0 { (0, 0) } else { (seq, p as u64) };
        assert_eq!(
            (word(p, 0), word(p, 1)),
            want,
            "page {p} (writer {})",
            p % 2
        );
    }
    assert!(
        stats.clustered_evictions > 1000 && stats.clustered_evictions < stats.dirty_evictions,
        "dirty pages should be evicted in clusters, and some in turn: {stats}"
    );
    // Fault events are all missing-page faults here but for the hot pages' first writes
    // after a write-back, and for the young dirty pages protected with their neighbours.
    assert!(stats.wp_faults > 0, "{stats}");
    assert_eq!(stats.signal_faults > 0, signal_faults, "{stats}");
    drop(region);
}

#[test]
fn scattered_writes_are_kept_when_evicted_in_clusters() {
    scattered_writes_with_hot_pages(false, 1);
}

#[test]
fn scattered_writes_are_kept_when_evicted_in_clusters_with_signal_faults() {
    scattered_writes_with_hot_pages(true, 2);
}
