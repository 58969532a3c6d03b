//! Prefetch, advice, read-ahead and the statistics that prove them.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{check_pattern, pattern, settles_to, ResidentMonitor, Rng};
use umap::{Advice, MapOptions, MemStore, Region, Stats, Store, StoreError, Umap};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const SEED: u64 = 0xad71ce;

fn engine(buffer: usize, page_size: usize, read_ahead: usize) -> Umap {
    Umap::builder()
        .buffer_size(buffer)
        .page_size(page_size)
        .fillers(2)
        .evictors(1)
        .read_ahead(read_ahead)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"))
}

fn pattern_store(len: usize) -> MemStore {
    MemStore::from_vec(pattern(SEED, 0, len))
}

/// Reads every page of `[start, end)` in order (one byte per 4 KiB) and checks it.
fn scan(region: &Region, start: usize, end: usize) {
    let data = region.as_slice();
    for off in (start..end).step_by(4 * KIB) {
        let len = (4 * KIB).min(end - off);
        check_pattern(SEED, off as u64, &data[off..off + len]);
    }
}

/// Every missing-page event filled its page or was a duplicate or parked one; prefetch and
/// read-ahead account for the other fills.
fn assert_fills_add_up(s: &Stats) {
    assert_eq!(
        s.fills + s.duplicate_faults + s.parked_faults,
        s.read_faults + s.write_faults + s.prefetched_pages + s.read_ahead_pages,
        "{s}"
    );
}

#[test]
fn prefetch_makes_a_later_pass_over_the_range_fault_free() {
    for page_size in [4 * KIB, 64 * KIB, 12 * KIB] {
        let umap = engine(8 * MIB, page_size, 0);
        let region = umap
            .map(pattern_store(32 * MIB), MapOptions::new())
            .unwrap();
        let (start, len) = (5 * MIB + 100, 4 * MIB);
        region.prefetch(start, len).unwrap().wait().unwrap();
        let before = region.stats();
        let pages = (start + len).div_ceil(page_size) - start / page_size;
        assert_eq!(
            before.prefetched_pages, pages as u64,
            "{page_size}: {before}"
        );
        assert_eq!(before.read_faults, 0);
        assert_eq!(before.resident_pages, pages as u64);
        scan(&region, start, start + len);
        let after = region.stats();
        assert_eq!(
            after.read_faults, 0,
            "{page_size}: a prefetched page faulted: {after}"
        );
        assert_eq!(after.fills, before.fills);
        // A second prefetch of a resident range reads nothing.
        region.prefetch(start, len).unwrap().wait().unwrap();
        assert_eq!(region.stats().fills, before.fills);
        assert_fills_add_up(&umap.stats());
    }
}

#[test]
fn prefetch_runs_in_the_background_while_faults_are_served() {
    let umap = engine(16 * MIB, 4 * KIB, 0);
    let region = umap
        .map(pattern_store(32 * MIB), MapOptions::new())
        .unwrap();
    let request = region.prefetch(16 * MIB, 12 * MIB).unwrap();
    // Faults elsewhere meanwhile, and on the prefetched range too.
    scan(&region, 0, 2 * MIB);
    scan(&region, 20 * MIB, 21 * MIB);
    request.wait().unwrap();
    scan(&region, 16 * MIB, 28 * MIB);
    let s = umap.stats();
    assert!(s.prefetched_pages > 0, "{s}");
    assert_fills_add_up(&s);
}

#[test]
fn prefetch_checks_its_range() {
    let umap = engine(MIB, 4 * KIB, 0);
    let region = umap.map(pattern_store(4 * MIB), MapOptions::new()).unwrap();
    let outside = region.prefetch(3 * MIB, 2 * MIB).unwrap_err().to_string();
    assert!(outside.contains("outside the region"), "{outside}");
    let overflow = region.prefetch(usize::MAX, 2).unwrap_err().to_string();
    assert!(overflow.contains("outside the region"), "{overflow}");
    let too_big = region.prefetch(0, 2 * MIB).unwrap_err().to_string();
    assert!(too_big.contains("more than the buffer holds"), "{too_big}");
    let advice = region.advise(4 * MIB, 1, Advice::DontNeed).unwrap_err();
    assert!(
        advice.to_string().contains("outside the region"),
        "{advice}"
    );
    // Empty ranges are fine and finish at once.
    let empty = region.prefetch(MIB, 0).unwrap();
    assert!(empty.is_done());
    empty.wait().unwrap();
}

#[test]
fn a_failed_prefetch_read_is_reported_and_leaves_the_pages_readable() {
    let umap = engine(4 * MIB, 4 * KIB, 0);
    let store = Arc::new(FlakyStore::new(pattern(SEED, 0, 4 * MIB)));
    let region = umap.map_shared(store.clone(), MapOptions::new()).unwrap();
    store.fail_next_reads.store(1, Ordering::SeqCst);
    let err = region.prefetch(0, MIB).unwrap().wait().unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    // Nothing was poisoned: every byte reads back (the failed run is read on fault).
    scan(&region, 0, MIB);
    assert_eq!(umap.stats().read_errors, 0);
}

#[test]
fn will_need_prefetches_up_to_the_low_water_share() {
    // 8 MiB buffer, low water 70 %: 5.6 MiB. Advise 12 MiB: about 5.6 MiB is prefetched.
    let umap = engine(8 * MIB, 64 * KIB, 0);
    let region = umap
        .map(pattern_store(16 * MIB), MapOptions::new())
        .unwrap();
    region.advise(2 * MIB, 12 * MIB, Advice::WillNeed).unwrap();
    let low_water_pages = (8 * MIB * 7 / 10 / (64 * KIB)) as u64;
    // Fills are counted just before their pages are installed: wait for them to be resident
    // too, or the scan below could fault on the last chunk while it is being copied in.
    let prefetched = common::eventually(|| {
        let s = region.stats();
        s.prefetched_pages >= low_water_pages && s.resident_pages >= low_water_pages
    });
    assert!(prefetched, "{}", region.stats());
    // The advised range's start is resident: reading it does not fault.
    scan(&region, 2 * MIB, 2 * MIB + 4 * MIB);
    let s = region.stats();
    assert_eq!(s.read_faults, 0, "{s}");
    assert_eq!(
        s.prefetched_pages, low_water_pages,
        "capped at the low-water share: {s}"
    );
}

#[test]
fn dont_need_writes_back_and_empties_the_range_and_keeps_its_data() {
    let umap = engine(16 * MIB, 4 * KIB, 0);
    let store = Arc::new(MemStore::new(8 * MIB));
    let mut region = umap
        .map_shared(store.clone(), MapOptions::new().writable(true))
        .unwrap();
    let data = region.as_mut_slice().unwrap();
    for (i, chunk) in data.chunks_mut(4 * KIB).enumerate() {
        chunk.fill(i as u8 ^ 0x5a);
    }
    let (start, len) = (MIB, 3 * MIB);
    let dirty_before = region.dirty_bytes();
    assert!(dirty_before >= 4 * MIB, "{dirty_before}");
    region.advise(start, len, Advice::DontNeed).unwrap();
    let base = region.as_ptr() as usize;
    assert_eq!(
        umap::sys::resident_pages(base + start, len).unwrap(),
        0,
        "pages of the range are still mapped"
    );
    let s = region.stats();
    assert!(s.dirty_evictions >= (len / (4 * KIB)) as u64, "{s}");
    // Written back: the store has the range's bytes without any flush.
    let stored = store.to_vec();
    for (i, chunk) in stored[start..start + len].chunks(4 * KIB).enumerate() {
        let page = start / (4 * KIB) + i;
        assert!(chunk.iter().all(|&b| b == page as u8 ^ 0x5a), "page {page}");
    }
    // Pages outside the range are untouched (still resident and dirty).
    assert!(umap::sys::resident_pages(base, start).unwrap() > 0);
    // And the data reads back through the region.
    for (i, chunk) in region.as_slice().chunks(4 * KIB).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8 ^ 0x5a), "page {i}");
    }
    region.unmap().unwrap();
}

#[test]
fn dont_need_of_a_read_only_range_frees_its_share_of_the_buffer() {
    let umap = engine(8 * MIB, 64 * KIB, 0);
    let region = umap.map(pattern_store(6 * MIB), MapOptions::new()).unwrap();
    scan(&region, 0, 6 * MIB);
    // The last page of the scan is marked resident just after its reader is woken: let it
    // settle before taking the figures.
    let resident_pages = || region.stats().resident_pages;
    settles_to(
        "resident pages",
        (6 * MIB / (64 * KIB)) as u64,
        resident_pages,
    );
    let resident = umap.stats().resident_bytes;
    region.advise(0, 2 * MIB, Advice::DontNeed).unwrap();
    assert_eq!(umap.stats().resident_bytes, resident - 2 * MIB as u64);
    settles_to(
        "resident pages",
        (4 * MIB / (64 * KIB)) as u64,
        resident_pages,
    );
    scan(&region, 0, 6 * MIB);
}

/// Faults and read-ahead pages of one sequential scan of 8 MiB, upwards or (`descending`) from
/// the last page down to the first, through a buffer that holds it all.
fn scan_stats(
    page_size: usize,
    read_ahead: usize,
    advice: Option<Advice>,
    descending: bool,
) -> Stats {
    // A buffer that holds the whole scan, so the counts do not depend on the evictor keeping
    // up: with 4 MiB, a loaded machine (the evictor short of CPU, runs shrinking to the free
    // room) gave 17-18 faults at 64 KiB pages where this test's bound allows 16. Read-ahead
    // under eviction is `read_ahead_cuts_faults_on_a_descending_scan_under_eviction` (with a
    // looser bound), and within the buffer bound
    // `read_ahead_stays_inside_the_buffer_with_many_readers`.
    scan_stats_in(16 * MIB, page_size, read_ahead, advice, descending)
}

/// As [`scan_stats`], through a `buffer`-byte buffer.
fn scan_stats_in(
    buffer: usize,
    page_size: usize,
    read_ahead: usize,
    advice: Option<Advice>,
    descending: bool,
) -> Stats {
    let len = 8 * MIB;
    let umap = engine(buffer, page_size, read_ahead);
    let region = umap.map(pattern_store(len), MapOptions::new()).unwrap();
    if let Some(advice) = advice {
        region.advise(0, len, advice).unwrap();
    }
    if descending {
        let data = region.as_slice();
        for off in (0..len).step_by(4 * KIB).rev() {
            check_pattern(SEED, off as u64, &data[off..off + 4 * KIB]);
        }
    } else {
        scan(&region, 0, len);
    }
    let s = umap.stats();
    assert_fills_add_up(&s);
    s
}

fn sequential_scan(page_size: usize, read_ahead: usize, advice: Option<Advice>) -> Stats {
    scan_stats(page_size, read_ahead, advice, false)
}

/// A window of 15 pages cuts a scan's faults at least 8-fold, at 4 KiB and 64 KiB pages.
fn assert_read_ahead_cuts_faults(descending: bool) {
    for page_size in [4 * KIB, 64 * KIB] {
        let pages = (8 * MIB / page_size) as u64;
        let without = scan_stats(page_size, 0, None, descending);
        assert_eq!(without.read_faults, pages, "{without}");
        assert_eq!(without.read_ahead_pages, 0);
        let with = scan_stats(page_size, 15, None, descending);
        assert!(with.read_ahead_pages > pages / 2, "{page_size}: {with}");
        assert!(
            with.read_faults * 8 <= without.read_faults,
            "{page_size}: {} faults with read-ahead, {} without",
            with.read_faults,
            without.read_faults
        );
        assert_eq!(with.fills, pages);
    }
}

#[test]
fn read_ahead_cuts_faults_on_a_sequential_scan() {
    assert_read_ahead_cuts_faults(false);
}

#[test]
fn a_scan_keeps_its_read_ahead_past_resident_pages() {
    // Every 32 pages, 4 are resident already (prefetched) when a sequential scan reaches
    // them: the read-ahead run before each stretch stops at it, and the reader goes past it
    // without faulting. The stream must go on at the first absent page after the stretch with
    // its full window (2 faults per 28 absent pages), not start again from nothing there
    // (no read-ahead for two faults, then 2, 4, 8 pages: 6 faults per 28 pages).
    let (page, len) = (4 * KIB, 8 * MIB);
    let umap = engine(16 * MIB, page, 15);
    let region = umap.map(pattern_store(len), MapOptions::new()).unwrap();
    let segments = len / (32 * page);
    for k in 1..segments {
        region
            .prefetch(k * 32 * page, 4 * page)
            .unwrap()
            .wait()
            .unwrap();
    }
    let before = region.stats();
    scan(&region, 0, len);
    let s = region.stats();
    let faults = s.read_faults - before.read_faults;
    assert!(
        faults <= 3 * segments as u64,
        "{faults} faults for {segments} segments of 28 absent pages: the stream restarted \
         after resident pages ({s})"
    );
    assert_fills_add_up(&umap.stats());
}

#[test]
fn read_ahead_cuts_faults_on_a_descending_scan() {
    // A scan from the last page down to the first (as a quicksort partition's right-hand
    // cursor moves): the read-ahead window lies below each fault.
    assert_read_ahead_cuts_faults(true);
}

#[test]
fn read_ahead_cuts_faults_on_a_descending_scan_under_eviction() {
    // The descending scan through a buffer half its size: the evictor frees room while the
    // scan goes on, and read-ahead runs shrink to the free room when it lags, so the bound is
    // a 4-fold cut, not 8. Read-ahead laid out above each fault (where a descending scan has
    // been already) would cut nothing.
    for page_size in [4 * KIB, 64 * KIB] {
        let pages = (8 * MIB / page_size) as u64;
        let without = scan_stats_in(4 * MIB, page_size, 0, None, true);
        assert_eq!(without.read_faults, pages, "{without}");
        assert!(without.evictions > 0, "{without}");
        let with = scan_stats_in(4 * MIB, page_size, 15, None, true);
        assert!(with.evictions > 0, "{with}");
        assert!(with.read_ahead_pages > pages / 2, "{page_size}: {with}");
        assert!(
            with.read_faults * 4 <= without.read_faults,
            "{page_size}: {} faults with read-ahead, {} without",
            with.read_faults,
            without.read_faults
        );
    }
}

#[test]
fn descending_writes_with_read_ahead_are_tracked_and_written_back() {
    // Descending write faults: each fills its page writable and the read-ahead pages below
    // it protected, so the next write down must be caught too. Then a descending read pass
    // and writes to every other page. A buffer larger than the region and one smaller.
    for buffer in [16 * MIB, 2 * MIB] {
        let len = 8 * MIB;
        let umap = engine(buffer, 4 * KIB, 15);
        let store = Arc::new(MemStore::from_vec(pattern(SEED, 0, len)));
        let mut region = umap
            .map_shared(store.clone(), MapOptions::new().writable(true))
            .unwrap();
        let mut expected = pattern(SEED, 0, len);
        let data = region.as_mut_slice().unwrap();
        for off in (0..len).step_by(4 * KIB).rev() {
            data[off + 2] = data[off + 2].wrapping_add(3);
            expected[off + 2] = expected[off + 2].wrapping_add(3);
        }
        let after_writes = umap.stats();
        assert!(after_writes.read_ahead_pages > 0, "{after_writes}");
        region.flush().unwrap();
        assert!(
            store.to_vec() == expected,
            "buffer {buffer}: a descending write was lost"
        );
        let data = region.as_mut_slice().unwrap();
        let mut sum = 0u64;
        for off in (0..len).step_by(4 * KIB).rev() {
            sum = sum.wrapping_add(data[off] as u64);
        }
        for off in (0..len).step_by(8 * KIB).rev() {
            data[off + 1] = data[off + 1].wrapping_add(1);
            expected[off + 1] = expected[off + 1].wrapping_add(1);
        }
        region.flush().unwrap();
        assert!(
            store.to_vec() == expected,
            "buffer {buffer}: a write after descending read-ahead was lost"
        );
        std::hint::black_box(sum);
        region.unmap().unwrap();
    }
}

#[test]
fn random_advice_turns_read_ahead_off_and_sequential_turns_it_on() {
    let pages = (8 * MIB / (4 * KIB)) as u64;
    let random = sequential_scan(4 * KIB, 15, Some(Advice::Random));
    assert_eq!(random.read_ahead_pages, 0, "{random}");
    assert_eq!(random.read_faults, pages);
    // Sequential reads ahead even with no window configured (1 MiB runs).
    let sequential = sequential_scan(4 * KIB, 0, Some(Advice::Sequential));
    assert!(sequential.read_faults * 50 <= pages, "{sequential}");
    // Read downwards, `Sequential` reads ahead below the faults.
    let downwards = scan_stats(4 * KIB, 0, Some(Advice::Sequential), true);
    assert!(downwards.read_faults * 50 <= pages, "{downwards}");
    let normal_again = {
        let umap = engine(4 * MIB, 4 * KIB, 0);
        let region = umap.map(pattern_store(8 * MIB), MapOptions::new()).unwrap();
        region.advise(0, 8 * MIB, Advice::Sequential).unwrap();
        region.advise(0, 8 * MIB, Advice::Normal).unwrap();
        scan(&region, 0, 8 * MIB);
        umap.stats()
    };
    assert_eq!(normal_again.read_ahead_pages, 0, "{normal_again}");
}

#[test]
fn random_reads_do_not_trigger_read_ahead() {
    let umap = engine(4 * MIB, 4 * KIB, 16);
    let region = umap
        .map(pattern_store(64 * MIB), MapOptions::new())
        .unwrap();
    let data = region.as_slice();
    let mut rng = Rng::new(7);
    for _ in 0..2000 {
        let at = rng.below(data.len() as u64 - 8) as usize;
        check_pattern(SEED, at as u64, &data[at..at + 8]);
    }
    let s = umap.stats();
    // A random read lands right after the previous fault now and then; hardly ever.
    assert!(s.read_ahead_pages <= 16 * 10, "{s}");
    assert_fills_add_up(&s);
}

#[test]
fn read_ahead_stays_inside_the_buffer_with_many_readers() {
    // 16 pages of buffer and a window far larger: it is capped at the low-water share.
    let umap = Umap::builder()
        .buffer_size(64 * KIB)
        .page_size(4 * KIB)
        .fillers(2)
        .read_ahead(1000)
        .start()
        .unwrap();
    let region = umap
        .map(pattern_store(16 * MIB), MapOptions::new())
        .unwrap();
    let monitor = ResidentMonitor::start(&umap, &region);
    std::thread::scope(|s| {
        for t in 0..4 {
            let region = &region;
            s.spawn(move || scan(region, t * 4 * MIB, (t + 1) * 4 * MIB));
        }
    });
    let peak = monitor.finish();
    assert!(peak <= 64 * KIB, "resident peaked at {peak} bytes");
    let s = umap.stats();
    assert!(s.read_ahead_pages > 0, "{s}");
    assert_fills_add_up(&s);
}

#[test]
fn a_failing_read_ahead_read_falls_back_to_the_faulting_page() {
    let umap = engine(4 * MIB, 4 * KIB, 15);
    let store = Arc::new(FlakyStore::new(pattern(SEED, 0, 8 * MIB)));
    store
        .fail_reads_longer_than
        .store(4 * KIB, Ordering::SeqCst);
    let region = umap.map_shared(store, MapOptions::new()).unwrap();
    scan(&region, 0, 8 * MIB);
    let s = umap.stats();
    assert_eq!(s.read_errors, 0, "nothing poisoned: {s}");
    assert_eq!(s.read_ahead_pages, 0, "{s}");
    assert_eq!(s.fills, (8 * MIB / (4 * KIB)) as u64);
}

#[test]
fn writes_after_read_ahead_are_tracked_and_written_back() {
    // A buffer larger than the region (read-ahead pages still resident when written) and one
    // smaller (evicted and refilled in between).
    for buffer in [16 * MIB, 2 * MIB] {
        let umap = engine(buffer, 4 * KIB, 15);
        let store = Arc::new(MemStore::from_vec(pattern(SEED, 0, 8 * MIB)));
        let mut region = umap
            .map_shared(store.clone(), MapOptions::new().writable(true))
            .unwrap();
        let data = region.as_mut_slice().unwrap();
        // A sequential read (read-ahead installs the pages protected), then writes to every
        // other page: each must be seen as dirty and reach the store.
        let mut sum = 0u64;
        for off in (0..8 * MIB).step_by(4 * KIB) {
            sum = sum.wrapping_add(data[off] as u64);
        }
        assert!(umap.stats().read_ahead_pages > 0);
        for off in (0..8 * MIB).step_by(8 * KIB) {
            data[off + 1] = data[off + 1].wrapping_add(1);
        }
        region.flush().unwrap();
        let mut expected = pattern(SEED, 0, 8 * MIB);
        for off in (0..8 * MIB).step_by(8 * KIB) {
            expected[off + 1] = expected[off + 1].wrapping_add(1);
        }
        assert!(
            store.to_vec() == expected,
            "buffer {buffer}: a write after read-ahead was lost"
        );
        std::hint::black_box(sum);
        region.unmap().unwrap();
    }
}

#[test]
fn stats_are_kept_per_region_and_add_up_to_the_engine() {
    let umap = engine(4 * MIB, 4 * KIB, 0);
    let a = umap.map(pattern_store(2 * MIB), MapOptions::new()).unwrap();
    let b = umap.map(pattern_store(4 * MIB), MapOptions::new()).unwrap();
    scan(&a, 0, 2 * MIB);
    scan(&b, 0, MIB);
    // A fault's service time is recorded just after its thread is woken: let the last settle.
    settles_to("faults served", 768, || umap.stats().fault_latency.count);
    let (sa, sb, s) = (a.stats(), b.stats(), umap.stats());
    assert_eq!(sa.read_faults, 512);
    assert_eq!(sb.read_faults, 256);
    assert_eq!(s.read_faults, sa.read_faults + sb.read_faults);
    assert_eq!(s.fills, sa.fills + sb.fills);
    assert_eq!(s.bytes_read, sa.bytes_read + sb.bytes_read);
    assert_eq!(s.evictions, sa.evictions + sb.evictions);
    assert_eq!(
        s.fault_latency.count,
        sa.fault_latency.count + sb.fault_latency.count
    );
    let l = s.fault_latency;
    assert_eq!(l.count, 768, "every fill was timed: {s}");
    assert!(
        l.p50 > std::time::Duration::ZERO && l.p50 <= l.p99 && l.p99 <= l.max,
        "{l:?}"
    );
    let table = s.to_string();
    assert!(
        table.contains("fault latency") && table.contains("p99"),
        "{table}"
    );
    assert!(sa.to_string().contains("resident pages"));
}

/// A store that fails on demand: the next N reads, or every read longer than a limit.
struct FlakyStore {
    inner: MemStore,
    fail_next_reads: AtomicUsize,
    fail_reads_longer_than: AtomicUsize,
}

impl FlakyStore {
    fn new(data: Vec<u8>) -> FlakyStore {
        FlakyStore {
            inner: MemStore::from_vec(data),
            fail_next_reads: AtomicUsize::new(0),
            fail_reads_longer_than: AtomicUsize::new(usize::MAX),
        }
    }
}

impl Store for FlakyStore {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
        let fail_now = self
            .fail_next_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail_now || buf.len() > self.fail_reads_longer_than.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                op: "read (injected)",
                offset,
                len: buf.len(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), StoreError> {
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        false
    }
}
