//! Eager dirty fills: in a writable region whose clean pages are nearly all written soon after
//! they are filled, read faults fill writable and dirty at once (no write-protect fault
//! follows); a region that is only read never does, and one that stops writing stops.

mod common;

use std::sync::Arc;

use umap::{MapOptions, MemStore, Region, Umap};

const PS: usize = 4096;
const PAGES: usize = 4096; // 16 MiB
const SEED: u64 = 0x1e7e;

/// An engine of `buffer` bytes with a read-ahead window of `read_ahead` pages.
fn engine(buffer: usize, read_ahead: usize) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(PS)
        .fillers(2)
        .read_ahead(read_ahead)
        .start()
        .expect("userfaultfd engine (needs Linux userfaultfd with write-protect support)")
}

fn map(umap: &Umap) -> (Arc<MemStore>, Region) {
    let store = Arc::new(MemStore::from_vec(common::pattern(SEED, 0, PAGES * PS)));
    let region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    (store, region)
}

/// Reads each page of `pages`, then writes one byte of it (as a sort's partition does).
fn read_then_write(region: &mut Region, pages: std::ops::Range<usize>, expected: &mut [u8]) {
    let data = region.as_mut_slice().unwrap();
    for p in pages {
        let at = p * PS + (p % 97) * 8;
        let v = data[at].wrapping_add(1);
        data[at] = v;
        expected[at] = v;
    }
}

#[test]
fn read_then_write_pages_are_filled_dirty_after_a_while_and_all_writes_land() {
    let umap = engine(2 << 20, 0);
    let (store, mut region) = map(&umap);
    let mut expected = common::pattern(SEED, 0, PAGES * PS);
    read_then_write(&mut region, 0..PAGES, &mut expected);
    let s = region.stats();
    // The first 256 fills are the sample; then 7 faults in 8 fill dirty.
    assert!(s.eager_dirty_pages >= (PAGES as u64 - 256) * 3 / 4, "{s}");
    assert!(s.wp_faults <= 256 + PAGES as u64 / 4, "{s}");
    region.flush().unwrap();
    assert!(store.to_vec() == expected, "a write was lost");
    region.unmap().unwrap();
}

#[test]
fn a_region_that_is_only_read_is_never_filled_dirty() {
    let umap = engine(2 << 20, 0);
    let (_store, region) = map(&umap);
    for round in 0..3 {
        let data = region.as_slice();
        let sum: u64 = (0..PAGES).map(|p| data[p * PS + round] as u64).sum();
        std::hint::black_box(sum);
    }
    region.flush().unwrap();
    let s = region.stats();
    assert_eq!(s.eager_dirty_pages, 0, "{s}");
    assert_eq!(s.pages_written, 0, "read pages were written back: {s}");
}

#[test]
fn eager_fills_stop_when_the_writes_stop() {
    let umap = engine(2 << 20, 0);
    let (store, mut region) = map(&umap);
    let mut expected = common::pattern(SEED, 0, PAGES * PS);
    // Write-heavy first: eager.
    read_then_write(&mut region, 0..PAGES, &mut expected);
    region.flush().unwrap();
    let eager_before = region.stats().eager_dirty_pages;
    assert!(eager_before > 0);
    // Then only reads, many times the region: the probes see no writes, and eager fills
    // stop. The 16 MiB region through a 2 MiB buffer is refilled on every pass.
    let data = region.as_slice();
    let mut eager_per_pass = Vec::new();
    for pass in 0..6 {
        let before = region.stats().eager_dirty_pages;
        let sum: u64 = (0..PAGES).map(|p| data[p * PS + pass] as u64).sum();
        std::hint::black_box(sum);
        eager_per_pass.push(region.stats().eager_dirty_pages - before);
    }
    eprintln!("eager dirty pages per read-only pass: {eager_per_pass:?}");
    assert_eq!(
        *eager_per_pass.last().unwrap(),
        0,
        "still filling dirty after {} read-only passes: {eager_per_pass:?}",
        eager_per_pass.len()
    );
    region.flush().unwrap();
    assert!(store.to_vec() == expected);
    region.unmap().unwrap();
}

#[test]
fn eager_fills_cover_read_ahead_runs_and_lose_no_write() {
    // With read-ahead, a sequential read-then-write pass fills whole runs dirty.
    let umap = engine(2 << 20, 15);
    let (store, mut region) = map(&umap);
    let mut expected = common::pattern(SEED, 0, PAGES * PS);
    read_then_write(&mut region, 0..PAGES, &mut expected);
    let s = region.stats();
    assert!(
        s.read_ahead_pages > 0 && s.eager_dirty_pages > PAGES as u64 / 2,
        "{s}"
    );
    region.flush().unwrap();
    assert!(store.to_vec() == expected, "a write was lost");
    region.unmap().unwrap();
}

#[test]
fn probes_stay_short_under_a_long_read_ahead_window() {
    // A 256-page window: once eager, a probe fills at most 16 pages clean (each a
    // write-protect fault when written), not a whole 1 MiB run.
    let umap = engine(8 << 20, 256);
    let (store, mut region) = map(&umap);
    let mut expected = common::pattern(SEED, 0, PAGES * PS);
    for _ in 0..3 {
        read_then_write(&mut region, 0..PAGES, &mut expected);
        region
            .advise(0, PAGES * PS, umap::Advice::DontNeed)
            .unwrap();
    }
    let s = region.stats();
    let faults = s.read_faults + s.write_faults;
    assert!(s.eager_dirty_pages > 2 * PAGES as u64, "{s}");
    // The sample (256 clean fills, plus the run that crosses it), then at most 16 per probe
    // (one fault in 8).
    let bound = 2 * 256 + 16 * (faults / 8 + 1);
    assert!(
        s.wp_faults <= bound,
        "{} WP faults, bound {bound}: {s}",
        s.wp_faults
    );
    region.flush().unwrap();
    assert!(store.to_vec() == expected, "a write was lost");
    region.unmap().unwrap();
}

/// Eager at first; then the pages read fresh are no longer written, while a hot set of pages
/// (pinned, so always resident) is written again after every flush. Those re-writes of pages
/// made clean by a flush are no fills of the pager: eager fills must stop, as if only reads.
#[test]
fn rewrites_of_flushed_pages_do_not_keep_eager_fills_on() {
    const HOT: usize = 64;
    let umap = engine(2 << 20, 0);
    let (store, mut region) = map(&umap);
    let mut expected = common::pattern(SEED, 0, PAGES * PS);
    region.pin(0, HOT * PS).unwrap();
    read_then_write(&mut region, 0..PAGES, &mut expected);
    region.flush().unwrap();
    assert!(region.stats().eager_dirty_pages > 0);
    let base = region.as_mut_ptr();
    let mut eager_per_pass = Vec::new();
    for pass in 0..6 {
        let before = region.stats().eager_dirty_pages;
        for chunk in (HOT..PAGES).collect::<Vec<_>>().chunks(HOT) {
            for &p in chunk {
                // SAFETY: page `p` lies in the mapped region.
                std::hint::black_box(unsafe { base.add(p * PS + pass).read_volatile() });
            }
            for p in 0..HOT {
                let at = p * PS + pass;
                expected[at] = expected[at].wrapping_add(1);
                // SAFETY: `at` lies in the mapped, writable region; no other thread uses it.
                unsafe { base.add(at).write_volatile(expected[at]) };
            }
            region.flush().unwrap();
        }
        eager_per_pass.push(region.stats().eager_dirty_pages - before);
    }
    eprintln!("eager dirty pages per pass: {eager_per_pass:?}");
    assert_eq!(
        *eager_per_pass.last().unwrap(),
        0,
        "re-writes of flushed pages kept eager fills on: {eager_per_pass:?}"
    );
    assert!(store.to_vec() == expected, "a write was lost");
    region.unmap().unwrap();
}
