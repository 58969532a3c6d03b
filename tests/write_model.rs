//! A seeded randomized test of the write path against a `Vec<u8>` model.
//!
//! Each case maps part of a file writable (at a store offset, with a length that is not a
//! multiple of the page size) through a buffer 8 to 16 times smaller than the region, then
//! runs a random sequence of writes (random offsets and lengths, some straddling pages), reads
//! compared with the model, flushes and range flushes (after which the file must hold the
//! model's bytes), and unmap/remap cycles. After the final unmap the file must equal the model
//! byte for byte, including the bytes outside the region, and keep its length.
//!
//! Page sizes: 4 KiB, 64 KiB and 12 KiB (not a power of two), each also with faults served on
//! the faulting thread (`Config::signal_faults`). Set `UMAP_WRITE_SEED` to replay
//! one case, `UMAP_WRITE_CASES` to run more per page size.

mod common;

use common::{assert_same, file_bytes, Rng};
use umap::{MapOptions, Region, Umap};

const KIB: usize = 1024;

fn map(umap: &Umap, path: &std::path::Path, page: usize, offset: usize, len: usize) -> Region {
    umap.map(
        common::open_store(path),
        MapOptions::new()
            .page_size(page)
            .offset(offset as u64)
            .len(len)
            .writable(true),
    )
    .unwrap()
}

fn run_case(page: usize, seed: u64, signals: bool) {
    let mut rng = Rng::new(seed);
    let buffer_pages = 4 + rng.below(5) as usize;
    let buffer = buffer_pages * page;
    // 8 to 16 times the buffer, not a multiple of the page size.
    let len = buffer * (8 + rng.below(9) as usize) - 1 - rng.below(page as u64 - 1) as usize;
    let offset = match rng.below(3) {
        0 => 0,
        1 => page,
        _ => 1 + rng.below(3 * page as u64) as usize,
    };
    let file_len = offset + len + rng.below(2 * page as u64) as usize;
    let fillers = 1 + rng.below(3) as usize;
    let read_ahead = [0, 4, 16, 256][rng.below(4) as usize];
    let ops = 300;
    let case = format!(
        "page {page}, seed {seed:#x} (buffer {buffer}, len {len}, offset {offset}, file \
         {file_len}, fillers {fillers}, read-ahead {read_ahead}, signal faults {signals})"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = common::pattern_file(dir.path(), "data", seed, file_len as u64);
    // The whole file: bytes outside the region must come out unchanged.
    let mut model = common::pattern(seed, 0, file_len);
    let umap = Umap::builder()
        .buffer_size(buffer)
        .page_size(page)
        .fillers(fillers)
        .read_ahead(read_ahead)
        .signal_faults(signals)
        .start()
        .expect("userfaultfd engine (needs Linux userfaultfd with write-protect support)");
    let mut region = map(&umap, &path, page, offset, len);
    let mut data = vec![0u8; 3 * page];
    for op in 0..ops {
        let at = rng.below(len as u64) as usize;
        let max = (len - at).min(match rng.below(4) {
            0 => 8,
            1 => page / 2,
            2 => page + 1,
            _ => 3 * page,
        });
        let n = 1 + rng.below(max as u64) as usize;
        let kind = rng.below(100);
        match kind {
            0..=49 => {
                for b in &mut data[..n] {
                    *b = rng.next_u64() as u8;
                }
                region.as_mut_slice().unwrap()[at..at + n].copy_from_slice(&data[..n]);
                model[offset + at..offset + at + n].copy_from_slice(&data[..n]);
            }
            50..=84 => {
                let what = format!("{case}: op {op}: read {at}+{n}");
                assert_same(
                    &what,
                    at,
                    &region.as_slice()[at..at + n],
                    &model[offset + at..offset + at + n],
                );
            }
            85..=89 => {
                region.flush().unwrap();
                assert_eq!(
                    region.dirty_bytes(),
                    0,
                    "{case}: op {op}: dirty after flush"
                );
                let what = format!("{case}: op {op}: file after flush");
                assert_same(&what, 0, &file_bytes(&path, 0, file_len), &model);
            }
            90..=95 => {
                region.flush_range(at, n).unwrap();
                let what = format!("{case}: op {op}: file after flush_range({at}, {n})");
                assert_same(
                    &what,
                    offset + at,
                    &file_bytes(&path, offset + at, n),
                    &model[offset + at..offset + at + n],
                );
            }
            96..=97 => {
                // A sweep page by page, up or down (sequential streams and their read-ahead,
                // below the faulting page for a descending one), touching one byte per page:
                // all reads, all writes, or both.
                let pages = len.div_ceil(page);
                let steps = 1 + rng.below(2 * buffer_pages as u64 + 4) as usize;
                let down = rng.below(2) == 0;
                let mode = rng.below(3);
                let first = at / page;
                for step in 0..steps {
                    let p = if down {
                        match first.checked_sub(step) {
                            Some(p) => p,
                            None => break,
                        }
                    } else if first + step < pages {
                        first + step
                    } else {
                        break;
                    };
                    let byte = p * page + (at % page).min(len - 1 - p * page);
                    let write = match mode {
                        0 => false,
                        1 => true,
                        _ => rng.below(2) == 0,
                    };
                    if write {
                        let v = rng.next_u64() as u8;
                        region.as_mut_slice().unwrap()[byte] = v;
                        model[offset + byte] = v;
                    } else {
                        let what = format!("{case}: op {op}: sweep read {byte}");
                        assert_same(
                            &what,
                            byte,
                            &region.as_slice()[byte..byte + 1],
                            &model[offset + byte..offset + byte + 1],
                        );
                    }
                }
            }
            _ => {
                region.unmap().unwrap();
                let what = format!("{case}: op {op}: file after unmap");
                assert_same(&what, 0, &file_bytes(&path, 0, file_len), &model);
                region = map(&umap, &path, page, offset, len);
            }
        }
    }
    let stats = umap.stats();
    region.unmap().unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        file_len as u64,
        "{case}: the file changed length"
    );
    assert_same(
        &format!("{case}: final file"),
        0,
        &std::fs::read(&path).unwrap(),
        &model,
    );
    assert!(
        stats.dirty_evictions > 0 && stats.wp_faults > 0,
        "{case}: the sequence never evicted a dirty page or took a write-protect fault: \
         {stats:?}"
    );
    assert_eq!(
        stats.signal_faults > 0,
        signals,
        "{case}: faults served in the handler: {stats:?}"
    );
}

fn run(page: usize, salt: u64, signals: bool) {
    if let Ok(seed) = std::env::var("UMAP_WRITE_SEED") {
        let seed = seed
            .strip_prefix("0x")
            .map_or_else(|| seed.parse(), |hex| u64::from_str_radix(hex, 16))
            .expect("UMAP_WRITE_SEED must be a number (decimal or 0x hex)");
        run_case(page, seed, signals);
        return;
    }
    let cases: u64 = std::env::var("UMAP_WRITE_CASES")
        .map(|c| c.parse().expect("UMAP_WRITE_CASES must be a number"))
        .unwrap_or(6);
    for case in 0..cases {
        run_case(
            page,
            salt.wrapping_mul(0x1_0000).wrapping_add(case),
            signals,
        );
    }
}

#[test]
fn random_writes_4k_pages() {
    run(4 * KIB, 0x4, false);
}

#[test]
fn random_writes_64k_pages() {
    run(64 * KIB, 0x64, false);
}

#[test]
fn random_writes_12k_pages() {
    run(12 * KIB, 0x12, false);
}

/// The same, with faults served on the faulting thread (`Config::signal_faults`).
#[test]
fn random_writes_4k_pages_signal_faults() {
    run(4 * KIB, 0x5004, true);
}

#[test]
fn random_writes_64k_pages_signal_faults() {
    run(64 * KIB, 0x5064, true);
}

#[test]
fn random_writes_12k_pages_signal_faults() {
    run(12 * KIB, 0x5012, true);
}
