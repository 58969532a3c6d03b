//! With page recycling on, the page pool counts toward the buffer: writing a region 8 times
//! larger than the buffer keeps the process's resident set within the buffer (plus the
//! program's own memory), however much the pool holds. The only test in its binary, so that
//! no other test's memory is in the process's resident set.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use umap::Umap;

const MIB: usize = 1 << 20;
const SEED: u64 = 0x7ec7;

/// `VmRSS` of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn recycling_keeps_the_resident_set_within_the_buffer() {
    let buffer = 32 * MIB;
    let len = 8 * buffer;
    let dir = tempfile::tempdir().unwrap();
    let path = common::pattern_file(dir.path(), "data", SEED, len as u64);
    // Low water at 20%: the pool may hold up to 80% of the buffer, which would show in the
    // resident set if it were not counted in the buffer.
    // The file is opened without mapped reads whatever `UMAP_TEST_MAPPED_READS` says: the
    // pages mapped around a scan count in the resident set, outside the buffer, by design.
    let umap = Umap::builder()
        .buffer_size(buffer)
        .watermarks(90, 20)
        .fillers(2)
        .recycle_pages(true)
        .page_size(64 << 10)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"));
    let mut region = umap
        .map(
            umap::FileStore::open(&path).unwrap(),
            umap::MapOptions::new().page_size(64 << 10).writable(true),
        )
        .unwrap();
    let baseline = rss();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let slice = region.as_mut_slice().unwrap();
    for pass in 0..3u8 {
        // Read-then-write sweeps (eager dirty fills, recycled) and scattered writes (write
        // faults, recycled too).
        for p in (0..len).step_by(4096) {
            slice[p] = slice[p].wrapping_add(pass + 1);
        }
        for k in 0..len / (64 << 10) {
            let p = (k * 7919 % (len / (64 << 10))) * (64 << 10) + 8;
            slice[p] = pass;
        }
    }
    let stats = umap.stats();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    // Every byte is the pattern but those written: each first byte of 4 KiB (raised by
    // 1 + 2 + 3) and the byte at 8 of each 64 KiB page (the last pass's 2).
    let mut want = common::pattern(SEED, 0, len);
    for p in (0..len).step_by(4096) {
        want[p] = want[p].wrapping_add(6);
    }
    for p in (8..len).step_by(64 << 10) {
        want[p] = 2;
    }
    common::assert_same("the region after the passes", 0, region.as_slice(), &want);
    let grown = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    // The fillers' scratch buffers (1 MiB each), thread stacks and the allocator: a few MiB.
    let limit = (buffer + 8 * MIB) as u64;
    eprintln!(
        "resident set grew by {:.1} MiB (limit {} MiB); recycled {} MiB, the pool held at \
         most {} MiB",
        grown as f64 / MIB as f64,
        limit / MIB as u64,
        stats.recycled_bytes / MIB as u64,
        stats.pool_peak_bytes / MIB as u64
    );
    assert!(
        stats.recycled_bytes > 0 && stats.pooled_bytes > 0,
        "the pool was never used: {stats:?}"
    );
    // The pool held more at once than the slack the limit allows beyond the buffer: had it not
    // been counted in the buffer, the resident set would have shown it.
    assert!(
        stats.pool_peak_bytes > 8 * MIB as u64,
        "the pool never held much: {stats:?}"
    );
    assert!(
        stats.resident_bytes <= buffer as u64,
        "resident bytes {} over the buffer",
        stats.resident_bytes
    );
    assert!(
        grown <= limit,
        "the resident set grew by {grown} bytes with a {buffer}-byte buffer: {stats:?}"
    );
    region.unmap().unwrap();
    common::assert_same("the file", 0, &std::fs::read(&path).unwrap(), &want);
}
