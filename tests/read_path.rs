//! The read path: faults filled from the store, every byte checked, the buffer respected.

mod common;

use std::sync::Arc;

use common::{check_pattern, pattern_file, ResidentMonitor, Rng};
use umap::{FileStore, MapOptions, MemStore, Region, Store, Umap};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn engine(buffer: usize, page_size: usize, fillers: usize) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(page_size)
        .fillers(fillers)
        .evictors(1)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"))
}

/// Reads `reads` random ranges (up to `max_len` bytes) from `threads` threads and checks
/// them against the pattern.
fn random_reads(
    region: &Region,
    seed: u64,
    base_offset: u64,
    threads: usize,
    reads: usize,
    max_len: usize,
) {
    let data = region.as_slice();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = Rng::new(0x5eed ^ t as u64);
                for _ in 0..reads {
                    let len = 1 + rng.below(max_len as u64) as usize;
                    let start = rng.below((data.len() - len + 1) as u64) as usize;
                    check_pattern(seed, base_offset + start as u64, &data[start..start + len]);
                }
            });
        }
    });
}

/// A 256 MiB file through an 8 MiB buffer: a sequential pass, then random reads from 16
/// threads, every byte checked, resident memory sampled throughout.
fn large_file_through_small_buffer(page_size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let len = 256 * MIB;
    let path = pattern_file(dir.path(), "big", 1, len as u64);
    let (buffer, fillers) = (8 * MIB, 2);
    let umap = engine(buffer, page_size, fillers);
    let region = umap
        .map(FileStore::open_read_only(&path).unwrap(), MapOptions::new())
        .unwrap();
    assert_eq!(region.len(), len);
    let monitor = ResidentMonitor::start(&umap, &region);

    for (i, chunk) in region.as_slice().chunks(4 * MIB).enumerate() {
        check_pattern(1, (i * 4 * MIB) as u64, chunk);
    }
    random_reads(&region, 1, 0, 16, 300, 3 * page_size);

    let max_resident = monitor.finish();
    let limit = buffer + fillers * page_size;
    assert!(
        max_resident <= limit,
        "resident {max_resident} bytes exceeded buffer + one page per filler ({limit})"
    );
    let stats = umap.stats();
    assert!(stats.resident_bytes as usize <= buffer, "{stats}");
    assert!(stats.evictions > 0, "an 8 MiB buffer must evict: {stats}");
    assert!(stats.fills as usize >= len / page_size, "{stats}");
    assert_eq!(stats.read_errors, 0);
    region.unmap().unwrap();
    assert_eq!(umap.stats().resident_bytes, 0, "unmap releases the buffer");
}

#[test]
fn large_file_through_small_buffer_4k_pages() {
    large_file_through_small_buffer(4 * KIB);
}

#[test]
fn large_file_through_small_buffer_64k_pages() {
    large_file_through_small_buffer(64 * KIB);
}

/// Every page size that is a multiple of the system page works, powers of two or not.
#[test]
fn page_sizes_4k_12k_64k_2m() {
    let dir = tempfile::tempdir().unwrap();
    // Not a multiple of any of the page sizes: the last page is partial.
    let len = 24 * MIB + 12_345;
    let path = pattern_file(dir.path(), "f", 2, len as u64);
    for page_size in [4 * KIB, 12 * KIB, 64 * KIB, 2 * MIB] {
        let buffer = 8 * MIB;
        let umap = engine(buffer, 4 * KIB, 2);
        let region = umap
            .map(
                FileStore::open_read_only(&path).unwrap(),
                MapOptions::new().page_size(page_size),
            )
            .unwrap();
        assert_eq!(region.page_size(), page_size);
        let monitor = ResidentMonitor::start(&umap, &region);
        check_pattern(2, 0, region.as_slice());
        random_reads(&region, 2, 0, 4, 200, 2 * page_size);
        let max = monitor.finish();
        assert!(
            max <= buffer + 2 * page_size,
            "page size {page_size}: resident {max}"
        );
        assert!(umap.stats().evictions > 0, "page size {page_size}");
        region.unmap().unwrap();
    }
}

/// Two regions with different page sizes and stores share one engine and buffer.
#[test]
fn two_regions_with_different_page_sizes_and_stores_read_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let file_len = 20 * MIB;
    let path = pattern_file(dir.path(), "a", 3, file_len as u64);
    let mem_len = 12 * MIB + 100;
    let mem = MemStore::from_vec(common::pattern(4, 0, mem_len));

    let buffer = 4 * MIB;
    let umap = engine(buffer, 4 * KIB, 3);
    let a = umap
        .map(
            FileStore::open_read_only(&path).unwrap(),
            MapOptions::new().page_size(12 * KIB),
        )
        .unwrap();
    let b = umap
        .map(mem, MapOptions::new().page_size(64 * KIB))
        .unwrap();
    assert_eq!(umap.region_count(), 2);
    let monitor = ResidentMonitor::start_many(&umap, &[&a, &b]);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (a, b) = (&a, &b);
            s.spawn(move || {
                let mut rng = Rng::new(t);
                for _ in 0..400 {
                    let (region, seed) = if rng.below(2) == 0 { (a, 3) } else { (b, 4) };
                    let data = region.as_slice();
                    let len = 1 + rng.below(100_000) as usize;
                    let start = rng.below((data.len() - len) as u64) as usize;
                    check_pattern(seed, start as u64, &data[start..start + len]);
                }
            });
        }
    });
    let resident = monitor.finish();
    // The buffer is shared: together they stay within it (plus a page per filler).
    assert!(resident <= buffer + 3 * 64 * KIB, "resident {resident}");
    a.unmap().unwrap();
    check_pattern(4, 0, b.as_slice());
    drop(b);
    assert_eq!(umap.region_count(), 0);
    assert_eq!(umap.stats().resident_bytes, 0);
}

/// A store offset is honoured, aligned or not, with and without an explicit length.
#[test]
fn store_offset_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let file_len = 8 * MIB as u64;
    let path = pattern_file(dir.path(), "f", 5, file_len);
    let umap = engine(MIB, 4 * KIB, 2);
    let store = Arc::new(FileStore::open_read_only(&path).unwrap());
    for offset in [4096u64, 3 * MIB as u64 + 12_288, 12_345, file_len - 1] {
        let region = umap
            .map_shared(store.clone(), MapOptions::new().offset(offset))
            .unwrap();
        assert_eq!(region.len() as u64, file_len - offset);
        assert_eq!(region.store_offset(), offset);
        check_pattern(5, offset, region.as_slice());
        region.unmap().unwrap();
    }
    let region = umap
        .map_shared(
            store.clone(),
            MapOptions::new().offset(MIB as u64).len(100_000),
        )
        .unwrap();
    assert_eq!(region.len(), 100_000);
    check_pattern(5, MIB as u64, region.as_slice());
    // The rest of the last page reads as zeros, not as the store's next bytes.
    let page_end = 100_000usize.next_multiple_of(4096);
    for i in 100_000..page_end {
        // SAFETY: the whole last page is mapped (the region is rounded up to its page size).
        assert_eq!(
            unsafe { region.as_ptr().add(i).read_volatile() },
            0,
            "byte {i}"
        );
    }
}

/// A mapping longer than the file reads zeros past the file's end.
#[test]
fn file_shorter_than_the_mapping_reads_zeros_beyond_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let file_len = MIB + 777;
    let path = pattern_file(dir.path(), "short", 6, file_len as u64);
    let umap = engine(MIB, 4 * KIB, 2);
    let region = umap
        .map(
            FileStore::open_read_only(&path).unwrap(),
            MapOptions::new().len(4 * MIB).page_size(64 * KIB),
        )
        .unwrap();
    let data = region.as_slice();
    check_pattern(6, 0, &data[..file_len]);
    assert!(data[file_len..].iter().all(|&b| b == 0));
    assert_eq!(data.len(), 4 * MIB);
}

/// A read-only file (mode 0444, opened read-only) maps and reads.
#[test]
fn read_only_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = pattern_file(dir.path(), "ro", 7, 3 * MIB as u64);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let store = FileStore::open_read_only(&path).unwrap();
    assert!(store.is_read_only());
    let umap = engine(MIB, 4 * KIB, 2);
    let region = umap.map(store, MapOptions::new()).unwrap();
    check_pattern(7, 0, region.as_slice());
}

/// The kernel reads the region on the process's behalf: `write(2)` from it faults inside the
/// system call, and the engine serves those faults too.
#[test]
fn write_syscall_from_the_region_returns_the_right_bytes() {
    use std::io::{Read, Seek, Write};
    let dir = tempfile::tempdir().unwrap();
    let len = 6 * MIB + 5;
    let path = pattern_file(dir.path(), "src", 8, len as u64);
    let umap = engine(MIB, 4 * KIB, 2);
    let region = umap
        .map(FileStore::open_read_only(&path).unwrap(), MapOptions::new())
        .unwrap();
    let mut out = tempfile::tempfile().unwrap();
    // Every page is cold: the kernel's copy_from_user faults on each one.
    out.write_all(region.as_slice()).unwrap();
    out.rewind().unwrap();
    let mut back = Vec::new();
    out.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), len);
    check_pattern(8, 0, &back);
}

/// Many threads hammering a few pages through a tiny buffer: constant eviction and refaults
/// of the same pages, duplicate events and events on pages being evicted.
#[test]
fn tiny_buffer_under_contention_returns_correct_bytes() {
    let len = 64 * 4 * KIB;
    let store = MemStore::from_vec(common::pattern(9, 0, len));
    // Two pages per reader thread (an access can straddle two pages).
    let umap = Umap::builder()
        .buffer_size(16 * 4 * KIB)
        .page_size(4 * KIB)
        .fillers(3)
        .evictors(1)
        .watermarks(75, 50)
        .start()
        .unwrap();
    let region = umap.map(store, MapOptions::new()).unwrap();
    random_reads(&region, 9, 0, 8, 3000, 6000);
    let stats = umap.stats();
    assert!(stats.resident_bytes as usize <= 16 * 4 * KIB, "{stats}");
    assert!(stats.evictions > 100, "{stats}");
}

/// Dropping a region unmaps it and frees its share of the buffer.
#[test]
fn drop_unmaps() {
    let umap = engine(MIB, 4 * KIB, 1);
    let region = umap
        .map(MemStore::from_vec(vec![1; 100 * KIB]), MapOptions::new())
        .unwrap();
    assert!(region.as_slice().iter().all(|&b| b == 1));
    // The filler marks a page resident just after the copy that wakes the reader: allow it
    // a moment to finish its bookkeeping.
    common::settles_to("resident bytes", 100 * KIB, || region.resident_bytes());
    assert!(umap.stats().resident_bytes > 0);
    drop(region);
    assert_eq!(umap.region_count(), 0);
    assert_eq!(umap.stats().resident_bytes, 0);
}

/// A store opened with `O_DIRECT`: page-aligned fills go to the direct descriptor, the
/// unaligned ones (odd offsets, the partial last page) through the buffered one; all read right.
#[test]
fn direct_io_store() {
    // The temporary directory is on a disk file system here; tmpfs would refuse O_DIRECT
    // with an error saying so.
    let dir = tempfile::tempdir().unwrap();
    let len = 5 * MIB + 1234;
    let path = pattern_file(dir.path(), "direct", 10, len as u64);
    let umap = engine(MIB, 4 * KIB, 2);
    for (offset, page_size) in [(0u64, 4 * KIB), (8192, 12 * KIB), (1000, 64 * KIB)] {
        let store = FileStore::options()
            .read_only(true)
            .direct(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("O_DIRECT is needed for this test: {e}"));
        assert!(store.preferred_alignment() >= 512);
        let region = umap
            .map(store, MapOptions::new().offset(offset).page_size(page_size))
            .unwrap();
        check_pattern(10, offset, region.as_slice());
        random_reads(&region, 10, offset, 4, 200, 2 * page_size);
        region.unmap().unwrap();
    }
}
