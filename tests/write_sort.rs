//! Write protection under pressure: a parallel quicksort, in place, of a writable file
//! mapping four times larger than the buffer, with many more threads than CPUs.
//!
//! Every page is read, written, evicted dirty, written back and read again many times while
//! 128 sorting threads and 80 engine threads run on a couple of CPUs. Any page lost,
//! misplaced, written back stale or filled from a stale store shows as a value missing,
//! duplicated or out of order, both in the mapping and in the file after the unmap.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Rng;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The seed of the input; any failure reproduces with it.
const SEED: u64 = 0x5_0127_2026;
/// 2 Mi words: 16 MiB, four times the buffer.
const WORDS: usize = 2 << 20;
const BUFFER: usize = 4 * MIB;
const PAGE: usize = 4 * KIB;
const FILLERS: usize = 40;
const EVICTORS: usize = 40;
/// Threads that sort, the test's own thread included.
const SORTERS: usize = 128;
/// Below this many words a thread sorts sequentially instead of splitting.
const CUTOFF: usize = 2048;

/// Count, wrapping sum and xor of a multiset of words: equal before and after sorting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Checksum {
    count: u64,
    sum: u64,
    xor: u64,
}

impl Checksum {
    fn add(&mut self, w: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(w);
        self.xor ^= w;
    }

    fn of(words: impl IntoIterator<Item = u64>) -> Checksum {
        let mut c = Checksum::default();
        words.into_iter().for_each(|w| c.add(w));
        c
    }
}

/// Asserts `words` is in ascending order, naming the first inversion.
fn assert_sorted(words: &[u64], what: &str) {
    if let Some(i) = words.windows(2).position(|w| w[0] > w[1]) {
        panic!(
            "{what}: not sorted at index {i}: {:#x} > {:#x} (seed {SEED:#x})",
            words[i],
            words[i + 1]
        );
    }
}

/// Partitions `v` (at least 3 words) around the median of its first, middle and last word
/// (Hoare): returns `split` with every word of `v[..split]` <= every word of `v[split..]`,
/// and 0 < split < len.
fn partition(v: &mut [u64]) -> usize {
    let n = v.len();
    let (a, b, c) = (v[0], v[n / 2], v[n - 1]);
    let pivot = a.max(b).min(a.min(b).max(c));
    let (mut i, mut j) = (0, n - 1);
    loop {
        while v[i] < pivot {
            i += 1;
        }
        while v[j] > pivot {
            j -= 1;
        }
        if i >= j {
            return j + 1;
        }
        v.swap(i, j);
        i += 1;
        j -= 1;
    }
}

/// Sorts `v`: while spare threads remain and `v` is above the cutoff, partitions it and
/// hands the upper part to a new scoped thread; otherwise sorts sequentially.
fn parallel_sort<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    v: &'scope mut [u64],
    spare: &'scope AtomicUsize,
) {
    let take_thread = || {
        spare
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    };
    if v.len() <= CUTOFF || !take_thread() {
        v.sort_unstable();
        return;
    }
    let split = partition(v);
    assert!(0 < split && split < v.len(), "degenerate partition");
    let (low, high) = v.split_at_mut(split);
    scope.spawn(move || parallel_sort(scope, high, spare));
    parallel_sort(scope, low, spare);
}

/// Sorts 16 MiB of random words in place through a 4 MiB buffer with 128 threads; the
/// mapping and then the file hold the same words, in order.
#[test]
fn parallel_sort_of_a_file_four_times_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("words");
    let mut input = Checksum::default();
    {
        let mut f = std::io::BufWriter::with_capacity(MIB, std::fs::File::create(&path).unwrap());
        let mut rng = Rng::new(SEED);
        for _ in 0..WORDS {
            let w = rng.next_u64();
            input.add(w);
            f.write_all(&w.to_ne_bytes()).unwrap();
        }
        f.into_inner().unwrap().sync_all().unwrap();
    }

    let (umap, mut region) = common::map_file_writable(&path, BUFFER, PAGE, FILLERS, EVICTORS);
    assert_eq!(region.len(), WORDS * 8);

    let bytes = region
        .as_mut_slice()
        .expect("a writable region has a mutable slice");
    // SAFETY: every bit pattern is a valid u64; the slice is the whole region, whose base is
    // page-aligned, so there is no unaligned head or tail (checked below).
    let (head, words, tail) = unsafe { bytes.align_to_mut::<u64>() };
    assert!(
        head.is_empty() && tail.is_empty(),
        "the region base is page-aligned"
    );
    assert_eq!(words.len(), WORDS);
    let spare = AtomicUsize::new(SORTERS - 1);
    std::thread::scope(|s| parallel_sort(s, words, &spare));
    assert_eq!(
        spare.load(Ordering::SeqCst),
        0,
        "all {SORTERS} sorting threads were used"
    );

    assert_sorted(words, "the mapping after sorting");
    assert_eq!(
        Checksum::of(words.iter().copied()),
        input,
        "the mapping after sorting holds other words than the input (seed {SEED:#x})"
    );

    region.unmap().expect("unmap writes back every dirty page");
    let stats = umap.stats();
    eprintln!("{stats}");
    assert!(
        stats.wp_faults > 0,
        "writes to clean resident pages must take write-protect faults\n{stats}"
    );
    assert!(
        stats.dirty_evictions > 0,
        "the buffer is a quarter of the data: dirty pages must be evicted\n{stats}"
    );
    assert!(stats.pages_written > 0, "{stats}");
    assert_eq!(stats.write_errors, 0, "{stats}");
    assert_eq!(stats.read_errors, 0, "{stats}");
    assert_eq!(stats.resident_bytes, 0, "{stats}");

    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), WORDS * 8, "the file keeps its length");
    let from_file: Vec<u64> = file
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    assert_sorted(&from_file, "the file after unmap");
    assert_eq!(
        Checksum::of(from_file.iter().copied()),
        input,
        "the file after unmap holds other words than the input (seed {SEED:#x})"
    );
}

/// The sort itself, on ordinary memory: the harness above fails only for the pager.
#[test]
fn parallel_sort_sorts_plain_memory() {
    let mut rng = Rng::new(SEED);
    for len in [3, 4, 5, 100, CUTOFF + 1, 3 * CUTOFF + 7, 200_000] {
        // Few distinct values (many equal to the pivot), then all distinct.
        for distinct in [2, 50, u64::MAX] {
            let mut v: Vec<u64> = (0..len).map(|_| rng.below(distinct)).collect();
            let mut want = v.clone();
            want.sort_unstable();
            let spare = AtomicUsize::new(SORTERS - 1);
            std::thread::scope(|s| parallel_sort(s, &mut v, &spare));
            assert_eq!(v, want, "len {len}, {distinct} distinct values");
        }
    }
}
