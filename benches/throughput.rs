//! Read and write throughput: umap at several page sizes against kernel `mmap` of the same
//! file and against `pread`/`pwrite`.
//!
//! ```text
//! cargo bench --bench throughput -- [--quick] [--json PATH] [--plot PATH.svg] [--size BYTES]
//!                                   [--buffer BYTES] [--threads N] [--fillers N] [--reads N]
//!                                   [--writes N] [--file PATH] [--direct] [--warm]
//!                                   [--workloads LIST] [--page-sizes LIST] [--memory-store]
//! cargo bench --bench throughput -- --render PATH.json
//! ```
//!
//! Every run starts cold: the data file is `fdatasync`ed and dropped from the page cache with
//! `posix_fadvise(POSIX_FADV_DONTNEED)` first. With `--warm` every run starts with the whole
//! file in the page cache instead, so that the figures measure the pager's fault path rather
//! than the disk. With `--memory-store` umap pages from a `MemStore` holding the file's bytes
//! instead of the file (loaded untimed; after a write workload its bytes are written to the
//! file, untimed, for the check): the figures are then the pager's own, without the file
//! system's cost per store call. The results form a table of workloads (rows of
//! [`Workload::ALL`]) by systems ([`systems`]); each (workload, system) pair is one
//! [`Measurement`], made by [`measure`].
//!
//! The write workloads come last and change the data file. Their time includes writing the
//! changes back to the disk (umap `Region::flush`, `msync(MS_SYNC)`, `fdatasync`). After each
//! write run, [`check_and_restore`] reads the whole file, checks that it holds exactly what the
//! run wrote (and the pattern everywhere else) and puts the pattern back, so every run starts
//! from the same file.

#[path = "support/args.rs"]
mod args;
#[path = "../examples/support/cli.rs"]
mod cli;
#[path = "support/data_file.rs"]
mod data_file;
#[path = "support/faults.rs"]
mod faults;
#[path = "../examples/support/median.rs"]
mod median;
#[path = "../examples/support/mix.rs"]
mod mix;
#[path = "support/report.rs"]
mod report;

use args::{parse_args, Options, Parsed, Workload, TOUCH, USAGE};
use data_file::{
    create_data_file, drop_from_page_cache, fill_pattern, pattern, read_into_page_cache, FileMap,
    CHUNK,
};
use mix::mix64;
use std::collections::BTreeMap;
use std::error::Error;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use umap::{FileStore, MapOptions, MemStore, Stats, Umap};

type BoxError = Box<dyn Error + Send + Sync>;

/// Seed of the random-read positions (thread `t` uses `RANDOM_SEED + t`).
const RANDOM_SEED: u64 = 0x5eed_0000_0000_0001;
/// Seed of the random-write positions (thread `t` uses `WRITE_SEED + t`); rand-write and rmw
/// use the same positions.
const WRITE_SEED: u64 = 0x5eed_0000_0000_0f01;
/// Evictor threads per engine.
const EVICTORS: usize = 1;

// ---------------------------------------------------------------------------------------------
// Deterministic numbers

/// SplitMix64: small, fast, and good enough to pick positions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is negligible here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads and systems

impl Workload {
    /// One operation of a write workload on the `u64` at byte offset `offset`, which holds
    /// `old` (read only by [`Workload::Rmw`]): the value to store there.
    fn new_value(self, offset: usize, old: impl FnOnce() -> u64) -> u64 {
        match self {
            Workload::Rmw => old().wrapping_add(1),
            _ => written_value(offset),
        }
    }
}

/// What rand-write stores at byte offset `offset`: the complement of the pattern, so a write
/// that is lost shows.
fn written_value(offset: usize) -> u64 {
    !pattern((offset / 8) as u64)
}

/// What serves the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    /// Kernel `mmap(MAP_SHARED)` of the file, no memory cap: `PROT_READ` for the read
    /// workloads, `PROT_READ | PROT_WRITE` for the write workloads.
    Mmap,
    /// `pread` of the 4 KiB block around each position (O_DIRECT with `--direct`); for the
    /// write workloads, `pwrite` of each `u64` (of the whole block with `--direct`, read first).
    Pread,
    /// A umap engine with this page size (a writable region for the write workloads).
    Umap { page_size: usize },
}

impl System {
    /// The system's name in rows of `workload`.
    fn name(self, workload: Workload) -> &'static str {
        match self {
            System::Mmap => "mmap",
            System::Pread if workload.writes() => "pwrite",
            System::Pread => "pread",
            System::Umap { .. } => "umap",
        }
    }

    fn page(self) -> String {
        page_label(self.page_bytes())
    }

    /// The page size in bytes: the system page for mmap, the 4 KiB block for pread/pwrite.
    fn page_bytes(self) -> usize {
        match self {
            System::Mmap => umap::sys::page_size(),
            System::Pread => TOUCH,
            System::Umap { page_size } => page_size,
        }
    }
}

/// The systems measured, the baseline (`mmap`) first.
fn systems(page_sizes: &[usize]) -> Vec<System> {
    let mut all = vec![System::Mmap, System::Pread];
    all.extend(
        page_sizes
            .iter()
            .map(|&page_size| System::Umap { page_size }),
    );
    all
}

/// One reader thread's share of a workload.
enum Share {
    /// Touch positions `first * TOUCH, (first + 1) * TOUCH, ...` below `end * TOUCH`.
    Range { first: usize, end: usize },
    /// Touch these byte offsets (multiples of `TOUCH`), in order.
    Offsets(Vec<usize>),
}

impl Share {
    fn for_each_offset(&self, mut f: impl FnMut(usize)) {
        match self {
            Share::Range { first, end } => (*first..*end).for_each(|p| f(p * TOUCH)),
            Share::Offsets(offsets) => offsets.iter().for_each(|&o| f(o)),
        }
    }
}

/// A workload laid out for a file and a number of threads: the same plan is run against every
/// system, so every system touches exactly the same positions.
struct Plan {
    workload: Workload,
    shares: Vec<Share>,
    /// The bytes the MB/s figure counts.
    bytes_touched: u64,
}

impl Plan {
    /// How many positions the plan touches, over all threads.
    fn touches(&self) -> usize {
        self.shares
            .iter()
            .map(|share| match share {
                Share::Range { first, end } => end - first,
                Share::Offsets(offsets) => offsets.len(),
            })
            .sum()
    }

    /// `ops`: the operations of a random workload (rand-read, rand-write, rmw) in total.
    fn new(workload: Workload, size: usize, threads: usize, ops: usize) -> Plan {
        // Positions p * TOUCH with room for a whole u64 (and a whole 4 KiB page) behind them.
        let positions = size / TOUCH;
        match workload {
            Workload::SeqRead => {
                let shares = (0..threads)
                    .map(|t| Share::Range {
                        first: positions * t / threads,
                        end: positions * (t + 1) / threads,
                    })
                    .collect();
                Plan {
                    workload,
                    shares,
                    bytes_touched: size as u64,
                }
            }
            Workload::RandRead => Plan {
                workload,
                shares: random_shares(threads, ops, RANDOM_SEED, |rng, _| {
                    Some(rng.below(positions as u64) as usize)
                }),
                bytes_touched: (ops * TOUCH) as u64,
            },
            Workload::RandWrite | Workload::Rmw => Plan {
                workload,
                // Thread t takes the positions p with p % threads == t, so no two threads
                // touch the same u64 and the file's final content does not depend on timing;
                // the positions still spread over the whole file, as rand-read's do.
                shares: random_shares(threads, ops, WRITE_SEED, |rng, t| {
                    // Positions p < `positions` with p % threads == t.
                    let own = (positions + threads - 1 - t) / threads;
                    (own > 0).then(|| rng.below(own as u64) as usize * threads + t)
                }),
                bytes_touched: (ops * TOUCH) as u64,
            },
        }
    }

    /// What a write plan must leave behind in a file that held [`pattern`]: the final value of
    /// every `u64` it wrote, by byte offset, and the wrapping sum of the values it wrote (which
    /// is the run's checksum).
    fn expected_writes(&self) -> (BTreeMap<usize, u64>, u64) {
        let mut file = BTreeMap::new();
        let mut sum = 0u64;
        for share in &self.shares {
            share.for_each_offset(|o| {
                let old = *file.get(&o).unwrap_or(&pattern((o / 8) as u64));
                let new = self.workload.new_value(o, || old);
                file.insert(o, new);
                sum = sum.wrapping_add(new);
            });
        }
        (file, sum)
    }

    /// The checksum a run must produce if the `u64` at byte offset `o` is `value(o)`.
    fn expected_checksum(&self, value: impl Fn(usize) -> u64) -> u64 {
        let mut sum = 0u64;
        for share in &self.shares {
            share.for_each_offset(|o| sum = sum.wrapping_add(value(o)));
        }
        sum
    }
}

// ---------------------------------------------------------------------------------------------
// Running

/// Splits `ops` random operations between `threads` shares: thread `t` draws its positions
/// (4 KiB-aligned, by index) with `pick(rng, t)` from a generator seeded `seed + t`; `None`
/// means the thread has no position to draw from.
fn random_shares(
    threads: usize,
    ops: usize,
    seed: u64,
    pick: impl Fn(&mut SplitMix64, usize) -> Option<usize>,
) -> Vec<Share> {
    (0..threads)
        .map(|t| {
            let n = ops * (t + 1) / threads - ops * t / threads;
            let mut rng = SplitMix64(seed.wrapping_add(t as u64));
            Share::Offsets(
                (0..n)
                    .map_while(|_| pick(&mut rng, t).map(|p| p * TOUCH))
                    .collect(),
            )
        })
        .collect()
}

/// Runs `plan` over `data` with one thread per share; returns the time from the moment all
/// threads are ready to the moment the last finishes, and the wrapping sum of every `u64` read.
fn run_plan(data: &[u8], plan: &Plan) -> (Duration, u64) {
    assert_eq!(
        data.as_ptr() as usize % std::mem::align_of::<u64>(),
        0,
        "the mapping must be u64-aligned"
    );
    let start = Barrier::new(plan.shares.len() + 1);
    std::thread::scope(|s| {
        let readers: Vec<_> = plan
            .shares
            .iter()
            .map(|share| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    read_share(data, share)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let sum = readers
            .into_iter()
            .map(|r| r.join().expect("a reader thread panicked"))
            .fold(0u64, u64::wrapping_add);
        (t0.elapsed(), sum)
    })
}

/// Reads the `u64` at each offset of `share`; returns their wrapping sum.
fn read_share(data: &[u8], share: &Share) -> u64 {
    let mut sum = 0u64;
    share.for_each_offset(|offset| {
        assert!(offset + 8 <= data.len(), "offset {offset} out of bounds");
        // SAFETY: `offset + 8 <= data.len()` was just checked, so the 8 bytes lie inside the
        // borrowed slice, which stays mapped and readable for the borrow; the address is
        // 8-aligned because `data` is (asserted in `run_plan`) and `offset` is a multiple of
        // TOUCH. Every bit pattern is a valid u64. The volatile read cannot be elided.
        let v = unsafe { std::ptr::read_volatile(data.as_ptr().add(offset).cast::<u64>()) };
        sum = sum.wrapping_add(v);
    });
    sum
}

/// A writable mapping, as the writer threads share it.
#[derive(Debug, Clone, Copy)]
struct RawMemory {
    base: *mut u8,
    len: usize,
}

// SAFETY: a `RawMemory` is an address range; it is only dereferenced by `write_share`, which
// the threads of one `run_write_plan` call on the disjoint positions of their own shares (no
// two threads access the same bytes), while the mapping outlives the threads (the callers
// unmap only after `run_write_plan` has joined them).
unsafe impl Send for RawMemory {}
// SAFETY: as for `Send`: shared access only touches disjoint `u64`s, one thread each.
unsafe impl Sync for RawMemory {}

/// Runs the write plan `plan` over `memory` with one thread per share, then `write_back`;
/// returns the time from the moment all threads are ready to the end of `write_back`, the
/// time `write_back` took, and the wrapping sum of every `u64` written.
///
/// `memory` must be mapped readable and writable for the duration of the call, and nothing
/// else may access it meanwhile.
fn run_write_plan(
    memory: RawMemory,
    plan: &Plan,
    write_back: impl FnOnce() -> Result<(), BoxError>,
) -> Result<(Duration, Duration, u64), BoxError> {
    if memory.base as usize % std::mem::align_of::<u64>() != 0 {
        return Err(format!("the mapping at {:p} is not u64-aligned", memory.base).into());
    }
    let mut out_of_bounds = None;
    for share in &plan.shares {
        share.for_each_offset(|o| {
            if o.checked_add(8).is_none_or(|end| end > memory.len) {
                out_of_bounds = Some(o);
            }
        });
    }
    if let Some(o) = out_of_bounds {
        return Err(format!("offset {o} is out of the {}-byte mapping", memory.len).into());
    }
    let start = Barrier::new(plan.shares.len() + 1);
    let (t0, sum) = std::thread::scope(|s| {
        let writers: Vec<_> = plan
            .shares
            .iter()
            .map(|share| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    write_share(memory, plan.workload, share)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let sum = writers
            .into_iter()
            .map(|w| w.join().expect("a writer thread panicked"))
            .fold(0u64, u64::wrapping_add);
        (t0, sum)
    });
    let t1 = Instant::now();
    write_back()?;
    Ok((t0.elapsed(), t1.elapsed(), sum))
}

/// Does one operation of `workload` (a write workload) at each offset of `share`; returns the
/// wrapping sum of the values written. The offsets were checked against `memory.len` by
/// `run_write_plan`.
fn write_share(memory: RawMemory, workload: Workload, share: &Share) -> u64 {
    let mut sum = 0u64;
    share.for_each_offset(|offset| {
        // SAFETY: `run_write_plan` checked that `offset + 8 <= memory.len` for every offset of
        // the plan, and that `memory.base` is 8-aligned (`offset` is a multiple of TOUCH), so
        // `word` is an aligned u64 inside the mapping, which stays mapped readable and writable
        // until the threads are joined. No other thread accesses this u64: the plan gives each
        // position to one thread. Every bit pattern is a valid u64; the volatile accesses
        // cannot be elided or merged.
        let new = unsafe {
            let word = memory.base.add(offset).cast::<u64>();
            let new = workload.new_value(offset, || std::ptr::read_volatile(word));
            std::ptr::write_volatile(word, new);
            new
        };
        sum = sum.wrapping_add(new);
    });
    sum
}

/// One (workload, system) run.
struct Measurement {
    workload: Workload,
    system: System,
    elapsed: Duration,
    bytes_touched: u64,
    /// umap: `Stats::read_faults` delta (plus `write_faults` and `wp_faults` for the write
    /// workloads); mmap: minor + major faults of the process; pread/pwrite: system calls.
    faults: u64,
    /// umap: `Stats::wp_faults` delta (write-protect faults).
    wp_faults: Option<u64>,
    /// Write workloads: the part of `elapsed` spent writing back at the end (umap flush,
    /// msync, fdatasync).
    write_back: Option<Duration>,
    /// Read workloads: the wrapping sum of the `u64`s read; write workloads: of those written.
    checksum: u64,
    /// Fraction of the file still in the page cache right after dropping it.
    cached_before: f64,
    /// umap: the engine's statistics at the end of the run.
    stats: Option<Stats>,
}

impl Measurement {
    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes_touched as f64 / 1e6 / self.secs()
    }
    /// 4 KiB positions touched per second (operations per second of the random workloads).
    fn pages_per_s(&self) -> f64 {
        (self.bytes_touched / TOUCH as u64) as f64 / self.secs()
    }
    fn faults_per_s(&self) -> f64 {
        self.faults as f64 / self.secs()
    }
    fn wp_faults_per_s(&self) -> Option<f64> {
        self.wp_faults.map(|n| n as f64 / self.secs())
    }
}

/// Everything a run needs besides the workload and the system.
struct Bench {
    path: PathBuf,
    size: usize,
    buffer: usize,
    fillers: usize,
    /// umap's store (and pread/pwrite) use O_DIRECT.
    direct: bool,
    /// Runs start with the file in the page cache (`--warm`) instead of out of it.
    warm: bool,
    /// umap pages from a `MemStore` copy of the file (`--memory-store`).
    memory_store: bool,
    /// umap serves faults on the faulting thread (`--signal-faults` or `UMAP_SIGNAL_FAULTS=1`).
    signal_faults: bool,
    /// umap's file store copies sequential runs from a mapping of the file.
    mapped_reads: bool,
    /// How long one run may take before the bench declares a hang.
    run_limit: Duration,
}

/// Runs `plan` against `system`, starting with the file out of the page cache.
fn measure(bench: &Bench, plan: &Plan, system: System) -> Result<Measurement, BoxError> {
    match (system, plan.workload.writes()) {
        (System::Mmap, false) => measure_mmap(bench, plan),
        (System::Mmap, true) => measure_mmap_write(bench, plan),
        (System::Pread, false) => measure_pread(bench, plan),
        (System::Pread, true) => measure_pwrite(bench, plan),
        (System::Umap { page_size }, false) => measure_umap(bench, plan, page_size),
        (System::Umap { page_size }, true) => measure_umap_write(bench, plan, page_size),
    }
}

/// The data file for `pread`/`pwrite`, read-write if `write`, with O_DIRECT under `--direct`.
fn open_for_io(bench: &Bench, write: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(write);
    if bench.direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(&bench.path)
}

/// A `TOUCH`-byte block of `raw` (at least `2 * TOUCH` bytes) aligned to `TOUCH`, as O_DIRECT
/// needs.
fn aligned_block(raw: &mut [u8]) -> &mut [u8] {
    let skip = raw.as_ptr().align_offset(TOUCH);
    &mut raw[skip..skip + TOUCH]
}

/// Reads the 4 KiB block around every position with `pread` (the I/O a pager does, without
/// the pager): each call counts as one "fault".
fn measure_pread(bench: &Bench, plan: &Plan) -> Result<Measurement, BoxError> {
    use std::os::unix::fs::FileExt;
    let cached_before = prepare_page_cache(bench)?;
    let file = open_for_io(bench, false)?;
    let _watchdog = Watchdog::arm(
        format!("{} on pread", plan.workload.name()),
        bench.run_limit,
        String::new,
    );
    let start = Barrier::new(plan.shares.len() + 1);
    let (elapsed, checksum) = std::thread::scope(|s| {
        let readers: Vec<_> = plan
            .shares
            .iter()
            .map(|share| {
                let (start, file) = (&start, &file);
                s.spawn(move || -> io::Result<u64> {
                    let mut raw = vec![0u8; 2 * TOUCH];
                    let block = aligned_block(&mut raw);
                    start.wait();
                    let mut sum = 0u64;
                    let mut result = Ok(());
                    share.for_each_offset(|offset| {
                        if result.is_err() {
                            return;
                        }
                        let base = offset - offset % TOUCH;
                        result = file.read_exact_at(block, base as u64);
                        let at = offset - base;
                        let word: [u8; 8] = block[at..at + 8].try_into().expect("8 bytes");
                        sum = sum.wrapping_add(u64::from_ne_bytes(word));
                    });
                    result.map(|()| sum)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let mut sum = 0u64;
        for r in readers {
            sum = sum.wrapping_add(r.join().expect("a reader thread panicked")?);
        }
        Ok::<_, io::Error>((t0.elapsed(), sum))
    })?;
    Ok(Measurement {
        workload: plan.workload,
        system: System::Pread,
        elapsed,
        bytes_touched: plan.bytes_touched,
        faults: plan.touches() as u64,
        wp_faults: None,
        write_back: None,
        checksum,
        cached_before,
        stats: None,
    })
}

fn measure_mmap(bench: &Bench, plan: &Plan) -> Result<Measurement, BoxError> {
    let cached_before = prepare_page_cache(bench)?;
    let file = File::open(&bench.path)?;
    let map = FileMap::new(&file, bench.size)?;
    let _watchdog = Watchdog::arm(
        format!("{} on mmap", plan.workload.name()),
        bench.run_limit,
        String::new,
    );
    let before = faults::process_faults()?;
    let (elapsed, checksum) = run_plan(map.as_slice(), plan);
    let after = faults::process_faults()?;
    Ok(Measurement {
        workload: plan.workload,
        system: System::Mmap,
        elapsed,
        bytes_touched: plan.bytes_touched,
        faults: after.saturating_sub(before),
        wp_faults: None,
        write_back: None,
        checksum,
        cached_before,
        stats: None,
    })
}

fn measure_umap(bench: &Bench, plan: &Plan, page_size: usize) -> Result<Measurement, BoxError> {
    let (umap, region, _store) = map_bench_file(bench, page_size, false)?;
    let cached_before = prepare_page_cache(bench)?;
    let watchdog = umap_watchdog(bench, plan, &umap, page_size);
    let before = umap.stats();
    let (elapsed, checksum) = run_plan(region.as_slice(), plan);
    let after = umap.stats();
    drop(watchdog);
    region.unmap()?;
    Ok(Measurement {
        workload: plan.workload,
        system: System::Umap { page_size },
        elapsed,
        bytes_touched: plan.bytes_touched,
        faults: after.read_faults.saturating_sub(before.read_faults),
        wp_faults: Some(after.wp_faults.saturating_sub(before.wp_faults)),
        write_back: None,
        checksum,
        cached_before,
        stats: Some(after),
    })
}

/// The write workloads through `pwrite`: for each position, `pwrite` of the new `u64` (rmw
/// reads the 4 KiB block around it with `pread` first, as the read workloads do). With
/// `--direct` the descriptor has O_DIRECT, which takes only whole aligned blocks: every
/// operation reads the block, changes the `u64` and writes the block. `fdatasync` at the end
/// is timed. Each system call counts as one "fault".
fn measure_pwrite(bench: &Bench, plan: &Plan) -> Result<Measurement, BoxError> {
    let cached_before = prepare_page_cache(bench)?;
    let file = open_for_io(bench, true)?;
    let _watchdog = Watchdog::arm(
        format!("{} on pwrite", plan.workload.name()),
        bench.run_limit,
        String::new,
    );
    let workload = plan.workload;
    let start = Barrier::new(plan.shares.len() + 1);
    let (elapsed, write_back, checksum, calls) = std::thread::scope(|s| {
        let writers: Vec<_> =
            plan.shares
                .iter()
                .map(|share| {
                    let (start, file) = (&start, &file);
                    s.spawn(move || -> io::Result<(u64, u64)> {
                        let mut raw = vec![0u8; 2 * TOUCH];
                        let block = aligned_block(&mut raw);
                        start.wait();
                        let (mut sum, mut calls) = (0u64, 0u64);
                        let mut result = Ok(());
                        share.for_each_offset(|offset| {
                            if result.is_ok() {
                                result = pwrite_op(file, block, workload, offset, bench.direct)
                                    .map(|(new, n)| {
                                        sum = sum.wrapping_add(new);
                                        calls += n;
                                    });
                            }
                        });
                        result.map(|()| (sum, calls))
                    })
                })
                .collect();
        start.wait();
        let t0 = Instant::now();
        let (mut sum, mut calls) = (0u64, 0u64);
        for w in writers {
            let (s, c) = w.join().expect("a writer thread panicked")?;
            sum = sum.wrapping_add(s);
            calls += c;
        }
        let t1 = Instant::now();
        file.sync_data()?;
        Ok::<_, io::Error>((t0.elapsed(), t1.elapsed(), sum, calls))
    })?;
    Ok(Measurement {
        workload: plan.workload,
        system: System::Pread,
        elapsed,
        bytes_touched: plan.bytes_touched,
        faults: calls,
        wp_faults: None,
        write_back: Some(write_back),
        checksum,
        cached_before,
        stats: None,
    })
}

/// One operation of the write workload `workload` at byte offset `offset` of `file`, through
/// the TOUCH-byte, TOUCH-aligned buffer `block`; returns the value written and the number of
/// system calls made. `whole_block`: read and write the whole 4 KiB block (O_DIRECT).
fn pwrite_op(
    file: &File,
    block: &mut [u8],
    workload: Workload,
    offset: usize,
    whole_block: bool,
) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let base = offset - offset % TOUCH;
    let at = offset - base;
    let mut calls = 0;
    if whole_block || workload == Workload::Rmw {
        file.read_exact_at(block, base as u64)?;
        calls += 1;
    }
    let word = &mut block[at..at + 8];
    let new = workload.new_value(offset, || {
        u64::from_ne_bytes(word.try_into().expect("the slice is 8 bytes"))
    });
    word.copy_from_slice(&new.to_ne_bytes());
    if whole_block {
        file.write_all_at(block, base as u64)?;
    } else {
        file.write_all_at(&block[at..at + 8], offset as u64)?;
    }
    Ok((new, calls + 1))
}

/// The write workloads through a shared writable kernel mapping; `msync(MS_SYNC)` of the whole
/// mapping at the end is timed.
fn measure_mmap_write(bench: &Bench, plan: &Plan) -> Result<Measurement, BoxError> {
    let cached_before = prepare_page_cache(bench)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&bench.path)?;
    let map = FileMap::new_writable(&file, bench.size)?;
    let _watchdog = Watchdog::arm(
        format!("{} on mmap", plan.workload.name()),
        bench.run_limit,
        String::new,
    );
    let before = faults::process_faults()?;
    let (elapsed, write_back, checksum) = run_write_plan(
        RawMemory {
            base: map.as_mut_ptr(),
            len: map.len(),
        },
        plan,
        || Ok(map.sync()?),
    )?;
    let after = faults::process_faults()?;
    Ok(Measurement {
        workload: plan.workload,
        system: System::Mmap,
        elapsed,
        bytes_touched: plan.bytes_touched,
        faults: after.saturating_sub(before),
        wp_faults: None,
        write_back: Some(write_back),
        checksum,
        cached_before,
        stats: None,
    })
}

/// An engine configured for the bench, and the data file mapped through it (`writable` for
/// the write workloads) with `page_size` pages.
/// The store umap pages from: the file, or with `--memory-store` a copy of it in memory.
enum BenchStore {
    File,
    Memory(Arc<MemStore>),
}

impl BenchStore {
    /// After a write run with a memory store: its bytes go to the file (untimed), where
    /// [`check_and_restore`] checks them.
    fn write_to_file(&self, path: &Path) -> io::Result<()> {
        match self {
            BenchStore::File => Ok(()),
            BenchStore::Memory(store) => std::fs::write(path, store.to_vec()),
        }
    }
}

fn map_bench_file(
    bench: &Bench,
    page_size: usize,
    writable: bool,
) -> Result<(Umap, umap::Region, BenchStore), BoxError> {
    // The UMAP_* variables first (e.g. UMAP_RECYCLE_PAGES=1), then the bench's own settings.
    let umap = Umap::builder()
        .env()?
        .signal_faults(bench.signal_faults)
        .buffer_size(bench.buffer)
        .page_size(page_size)
        .fillers(bench.fillers)
        .evictors(EVICTORS)
        .start()?;
    let options = MapOptions::new().writable(writable);
    let (region, store) = if bench.memory_store {
        let store = Arc::new(MemStore::from_vec(std::fs::read(&bench.path)?));
        let region = umap.map_shared(store.clone(), options)?;
        (region, BenchStore::Memory(store))
    } else {
        let store = FileStore::options()
            .read_only(!writable)
            .direct(bench.direct)
            .mapped_reads(bench.mapped_reads)
            .open(&bench.path)?;
        (umap.map(store, options)?, BenchStore::File)
    };
    if region.len() != bench.size {
        return Err(format!(
            "the region is {} bytes, the file {}",
            region.len(),
            bench.size
        )
        .into());
    }
    Ok((umap, region, store))
}

/// A watchdog for one umap run, which prints the engine's statistics if it fires.
fn umap_watchdog(bench: &Bench, plan: &Plan, umap: &Umap, page_size: usize) -> Watchdog {
    let watched = umap.clone();
    Watchdog::arm(
        format!(
            "{} on umap with {} pages",
            plan.workload.name(),
            page_label(page_size)
        ),
        bench.run_limit,
        move || format!("umap stats at the time:\n{}", watched.stats()),
    )
}

/// The write workloads through a writable umap region; `Region::flush` at the end (which
/// writes back the dirty pages and syncs the store) is timed.
fn measure_umap_write(
    bench: &Bench,
    plan: &Plan,
    page_size: usize,
) -> Result<Measurement, BoxError> {
    let (umap, region, store) = map_bench_file(bench, page_size, true)?;
    let memory = RawMemory {
        base: region.as_mut_ptr(),
        len: region.len(),
    };
    let cached_before = prepare_page_cache(bench)?;
    let watchdog = umap_watchdog(bench, plan, &umap, page_size);
    let before = umap.stats();
    let (elapsed, write_back, checksum) = run_write_plan(memory, plan, || Ok(region.flush()?))?;
    let after = umap.stats();
    drop(watchdog);
    region.unmap()?;
    store.write_to_file(&bench.path)?;
    let delta = |f: fn(&Stats) -> u64| f(&after).saturating_sub(f(&before));
    Ok(Measurement {
        workload: plan.workload,
        system: System::Umap { page_size },
        elapsed,
        bytes_touched: plan.bytes_touched,
        faults: delta(|s| s.read_faults) + delta(|s| s.write_faults) + delta(|s| s.wp_faults),
        wp_faults: Some(delta(|s| s.wp_faults)),
        write_back: Some(write_back),
        checksum,
        cached_before,
        stats: Some(after),
    })
}

// ---------------------------------------------------------------------------------------------
// The operating system

/// Puts the data file in the state a run starts from: out of the page cache, or with
/// `--warm` wholly in it. Returns the fraction of the file cached afterwards.
fn prepare_page_cache(bench: &Bench) -> io::Result<f64> {
    if bench.warm {
        read_into_page_cache(&bench.path)
    } else {
        drop_from_page_cache(&bench.path)
    }
}

/// The kernel release, e.g. `6.18.0`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Kills the bench (exit status 3) if a run does not finish in time, saying what hung.
struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn arm(
        what: String,
        limit: Duration,
        report: impl FnOnce() -> String + Send + 'static,
    ) -> Watchdog {
        let (done, wait) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                eprintln!(
                    "\n!!!!!!!! HANG: {what} did not finish within {} s; giving up (exit 3).\n{}",
                    limit.as_secs(),
                    report()
                );
                std::process::exit(3);
            }
        });
        Watchdog {
            done: Some(done),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The data file

/// After a write run: reads the whole data file and checks that it holds `expected` (byte
/// offset -> `u64`) at the positions written and [`pattern`] everywhere else; then writes the
/// pattern back over every 4 KiB block that differs from it (not synced: the next run's
/// [`drop_from_page_cache`] does that, untimed). Returns a description of each difference
/// (at most a few, then a count).
fn check_and_restore(path: &Path, expected: &BTreeMap<usize, u64>) -> io::Result<Vec<String>> {
    use std::os::unix::fs::FileExt;
    const SHOWN: usize = 5;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let size = file.metadata()?.len();
    let mut found = vec![0u8; CHUNK];
    let mut pure = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut differences = Vec::new();
    let mut more = 0usize;
    let mut start = 0u64;
    while start < size {
        let n = (size - start).min(CHUNK as u64) as usize;
        let (found, pure, want) = (&mut found[..n], &mut pure[..n], &mut want[..n]);
        file.read_exact_at(found, start)?;
        fill_pattern(pure, start);
        want.copy_from_slice(pure);
        let range = start as usize..start as usize + n;
        for (&offset, &value) in expected.range(range) {
            let at = offset - start as usize;
            // Positions are TOUCH-aligned and chunks a multiple of TOUCH: no u64 straddles.
            if let Some(word) = want.get_mut(at..at + 8) {
                word.copy_from_slice(&value.to_ne_bytes());
            }
        }
        if found != want {
            for (i, (f, w)) in found.chunks(8).zip(want.chunks(8)).enumerate() {
                if f == w {
                    continue;
                }
                if differences.len() == SHOWN {
                    more += 1;
                    continue;
                }
                let offset = start as usize + i * 8;
                let word = |b: &[u8]| {
                    let mut bytes = [0u8; 8];
                    bytes[..b.len()].copy_from_slice(b);
                    u64::from_ne_bytes(bytes)
                };
                differences.push(format!(
                    "byte {offset}: found {:#018x}, expected {:#018x}{}",
                    word(f),
                    word(w),
                    if expected.contains_key(&offset) {
                        " (written)"
                    } else {
                        " (not written: the pattern)"
                    }
                ));
            }
        }
        for (block, (f, p)) in found.chunks(TOUCH).zip(pure.chunks(TOUCH)).enumerate() {
            if f != p {
                file.write_all_at(p, start + (block * TOUCH) as u64)?;
            }
        }
        start += n as u64;
    }
    if more > 0 {
        differences.push(format!("and {more} more differing u64s"));
    }
    Ok(differences)
}

// ---------------------------------------------------------------------------------------------
// Output

fn page_label(bytes: usize) -> String {
    report::page_label(bytes as u64)
}

/// The results as reported: one row per (workload, system), with its ratios to the mmap and
/// the pread (pwrite) runs of the same workload and round (see [`report::summarize`]).
fn report_rows(results: &[(usize, Measurement)]) -> Vec<report::Row> {
    let runs: Vec<report::Run> = results
        .iter()
        .map(|(round, m)| report::Run {
            round: *round,
            row: report::Row {
                workload: m.workload.name().to_string(),
                system: m.system.name(m.workload).to_string(),
                page_bytes: m.system.page_bytes() as u64,
                seconds: m.secs(),
                flush_seconds: m.write_back.map(|t| t.as_secs_f64()),
                mb_per_s: m.mb_per_s(),
                pages_per_s: m.pages_per_s(),
                faults_per_s: m.faults_per_s(),
                wp_faults_per_s: m.wp_faults_per_s(),
                vs_mmap: None,
                vs_pread: None,
                seconds_each: Vec::new(),
                vs_mmap_each: Vec::new(),
                vs_pread_each: Vec::new(),
            },
        })
        .collect();
    report::summarize(&runs)
}

/// Prints the results as a table with aligned columns.
fn print_table(rows: &[report::Row]) {
    const COLUMNS: usize = 11;
    const HEADER: [&str; COLUMNS] = [
        "workload",
        "system",
        "page",
        "time s",
        "flush s",
        "MB/s",
        "pages/s",
        "faults/s",
        "wp faults/s",
        "vs mmap",
        "vs pread",
    ];
    // Text columns align left, numbers right.
    const LEFT: [bool; COLUMNS] = [
        true, true, false, false, false, false, false, false, false, false, false,
    ];
    let rows: Vec<[String; COLUMNS]> = rows
        .iter()
        .map(|r| {
            [
                r.workload.clone(),
                r.system.clone(),
                page_label(r.page_bytes as usize),
                report::time_cell(r),
                r.flush_seconds.map_or("-".into(), |t| format!("{t:.3}")),
                format!("{:.1}", r.mb_per_s),
                format!("{:.0}", r.pages_per_s),
                format!("{:.0}", r.faults_per_s),
                r.wp_faults_per_s.map_or("-".into(), |n| format!("{n:.0}")),
                report::ratio_cell(r.vs_mmap, &r.vs_mmap_each),
                report::ratio_cell(r.vs_pread, &r.vs_pread_each),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; COLUMNS]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .zip(LEFT)
            .map(|((cell, w), left)| {
                if left {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        println!("{}", parts.join(" | ").trim_end());
    };
    line(HEADER);
    println!(
        "{}",
        widths
            .iter()
            .map(|&w| "-".repeat(w))
            .collect::<Vec<_>>()
            .join("-|-")
    );
    for row in &rows {
        line(std::array::from_fn(|i| row[i].as_str()));
    }
}

/// Creates (truncates) the output file `path` given with `flag`, if any.
fn create_output(path: Option<&Path>, flag: &str) -> Result<Option<(File, PathBuf)>, BoxError> {
    path.map(|path| {
        File::create(path)
            .map(|f| (f, path.to_path_buf()))
            .map_err(|e| format!("{flag}: cannot create {}: {e}", path.display()).into())
    })
    .transpose()
}

/// Writes `text` to `file` (created at `path`), reads it back and checks it with `check`.
fn write_output(
    mut file: File,
    path: &Path,
    text: &str,
    check: impl FnOnce(&str) -> Result<(), String>,
) -> Result<(), BoxError> {
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    let back = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    check(&back).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// A check that a JSON report parses and holds `rows` rows.
fn check_json(rows: usize) -> impl FnOnce(&str) -> Result<(), String> {
    move |text| {
        let (_, found) = report::from_json(text)?;
        let found = found.len();
        if found != rows {
            return Err(format!("{found} rows, expected {rows}"));
        }
        Ok(())
    }
}

/// A check that an SVG chart is well-formed XML with one bar per row.
fn check_svg(rows: usize) -> impl FnOnce(&str) -> Result<(), String> {
    move |text| {
        let doc = roxmltree::Document::parse(text).map_err(|e| format!("not well-formed: {e}"))?;
        if doc.root_element().tag_name().name() != "svg" {
            return Err("the root element is not <svg>".into());
        }
        let bars = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("bar"))
            .count();
        if bars != rows {
            return Err(format!("{bars} bars, expected {rows}"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Main

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Render(path)) => {
            return match render(&path) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("throughput: --render {}: {e}", path.display());
                    ExitCode::from(2)
                }
            }
        }
        Err(e) => {
            eprintln!("throughput: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("throughput: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A report written with `--json` as Markdown: a line saying how it was measured, then the
/// table.
fn render(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (meta, rows) = report::from_json(&text)?;
    let when = meta["unix_time"]
        .as_u64()
        .map_or("at an unknown time".to_string(), |t| {
            format!("on {}", report::utc_minute(t))
        });
    let mut out = format!(
        "Run finished {} on kernel {}, {} CPUs: file {} bytes, umap buffer {} \
         bytes, {} threads, {} fillers, {} evictor(s); page cache {}{}{}{}.\n\n",
        when,
        meta["kernel"].as_str().unwrap_or("?"),
        meta["cpus"],
        meta["file_bytes"],
        meta["buffer_bytes"],
        meta["threads"],
        meta["fillers"],
        meta["evictors"],
        if meta["warm_page_cache"].as_bool() == Some(true) {
            "warm (the file cached before every run)"
        } else {
            "cold (the file dropped before every run)"
        },
        match (
            meta["direct"].as_bool(),
            meta["memory_store"].as_bool(),
            meta["mapped_reads"].as_bool(),
        ) {
            (Some(true), _, _) => ", umap's store O_DIRECT",
            (_, Some(true), _) => ", umap's store a MemStore copy of the file",
            (_, _, Some(true)) => ", umap's store with mapped reads",
            _ => "",
        },
        if meta["signal_faults"].as_bool() == Some(true) {
            ", umap faults served on the faulting thread (signal_faults)"
        } else {
            ""
        },
        match meta["repeat"].as_u64() {
            Some(n) if n > 1 => format!(
                "; every system measured {n} times in alternating rounds (each row: the run of \
                 median time, the range of the times, the median and range of the ratios to the \
                 runs of the same round)"
            ),
            _ => String::new(),
        },
    );
    if let Some(failure) = meta["stopped"].as_str() {
        out.push_str(&report::stopped_note(failure, &rows));
        out.push_str("\n\n");
    }
    out.push_str(&report::to_markdown(&rows));
    Ok(out)
}

fn run(options: &Options) -> Result<ExitCode, BoxError> {
    // Create the output files now, so that a bad path fails before the long run.
    let json_file = create_output(options.json.as_deref(), "--json")?;
    let plot_file = create_output(options.plot.as_deref(), "--plot")?;

    // The data file: the given one, or a generated one in a temporary directory.
    let _tempdir;
    let (path, generated) = match &options.file {
        Some(path) => (path.clone(), false),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("umap-throughput-")
                .tempdir_in(std::env::temp_dir())?;
            let path = dir.path().join("data.bin");
            _tempdir = dir;
            let size = options.size.expect("size is set without --file");
            eprint!(
                "writing {} ({} bytes) of test data to {} ... ",
                page_label(size as usize),
                size,
                path.display()
            );
            let t0 = Instant::now();
            create_data_file(&path, size)?;
            eprintln!("{:.1} s", t0.elapsed().as_secs_f64());
            (path, true)
        }
    };
    let size = File::open(&path)
        .and_then(|f| f.metadata())
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size < TOUCH as u64 {
        return Err(format!(
            "{}: {size} bytes is too small (at least {TOUCH})",
            path.display()
        )
        .into());
    }
    let size = usize::try_from(size).map_err(|_| "the file is too large to map")?;
    let positions = size / TOUCH;
    let reads = options.reads.unwrap_or(if options.quick {
        20_000
    } else {
        positions.min(200_000)
    });
    let writes = options
        .writes
        .unwrap_or(if options.quick { 4_000 } else { reads });

    // Fail early (and say how) if userfaultfd is unavailable.
    let probe = Umap::builder()
        .buffer_size(options.buffer)
        .fillers(1)
        .evictors(1)
        .start()?;
    let open_method = probe.open_method();
    drop(probe);

    let bench = Bench {
        path: path.clone(),
        size,
        buffer: options.buffer,
        fillers: options.fillers,
        direct: options.direct,
        warm: options.warm,
        memory_store: options.memory_store,
        signal_faults: options.signal_faults || Umap::builder().env()?.config().signal_faults,
        mapped_reads: options.mapped_reads,
        run_limit: Duration::from_secs(if options.quick { 120 } else { 900 }),
    };
    println!("umap throughput: reads and writes");
    println!(
        "  kernel {}, {} CPUs, userfaultfd via {open_method}",
        kernel_release(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  file {} ({} bytes, {}){}",
        path.display(),
        size,
        if generated {
            "generated"
        } else {
            "given, read-only"
        },
        if options.quick { ", quick run" } else { "" }
    );
    println!(
        "  reader threads {}, umap buffer {} ({} bytes), fillers {}, evictors {EVICTORS}{}",
        options.threads,
        page_label(options.buffer),
        options.buffer,
        options.fillers,
        if options.direct {
            ", umap store O_DIRECT"
        } else if options.memory_store {
            ", umap store a MemStore copy of the file (--memory-store)"
        } else if options.mapped_reads {
            ", umap store with mapped reads (--mapped-reads)"
        } else {
            ""
        }
    );
    println!(
        "  seq-read touches one u64 per 4 KiB ({positions} reads); rand-read {reads} reads at \
         random 4 KiB-aligned positions"
    );
    if generated {
        println!(
            "  rand-write writes one u64 at each of {writes} random 4 KiB-aligned positions; rmw \
             reads one there, adds 1 and writes it back (same positions; each thread its own)"
        );
    }
    if options.warm {
        println!(
            "  page cache: warm; before every run the whole file is read through, so every \
             run starts with it cached (the figures measure the fault path, not the disk)"
        );
    } else {
        println!(
            "  page cache: before every run the file is fdatasync'ed and dropped with \
             posix_fadvise(POSIX_FADV_DONTNEED) (not /proc/sys/vm/drop_caches)"
        );
    }
    println!();

    // Each measurement with the round it was made in.
    let mut results: Vec<(usize, Measurement)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    // The first run that failed (not a data mismatch: an error that ends the bench). The runs
    // before it are still reported, so that a long `--repeat` sitting keeps its rounds.
    let mut stopped: Option<String> = None;
    // A given file is only read: the write workloads need a generated one.
    let workloads = options
        .workloads
        .iter()
        .copied()
        .filter(|w| generated || !w.writes());
    'workloads: for workload in workloads {
        let ops = if workload.writes() { writes } else { reads };
        let plan = Plan::new(workload, size, options.threads, ops);
        // The checksum every system must produce and, for the write workloads, what the file
        // must hold afterwards.
        let (expected, final_file) = if workload.writes() {
            let (file, sum) = plan.expected_writes();
            (Some(sum), Some(file))
        } else {
            let sum = generated.then(|| plan.expected_checksum(|o| pattern((o / 8) as u64)));
            (sum, None)
        };
        // Round by round, every system once, so that each round's ratios compare runs made
        // minutes apart at most.
        let rounds = (0..options.repeat).flat_map(|round| {
            systems(&options.page_sizes)
                .into_iter()
                .map(move |s| (round, s))
        });
        for (round, system) in rounds {
            // "2/5" with --repeat 5; nothing for single runs.
            let of_rounds =
                (options.repeat > 1).then(|| format!("{}/{}", round + 1, options.repeat));
            let label = format!(
                "{} on {} {}{}",
                workload.name(),
                system.name(workload),
                system.page(),
                of_rounds
                    .as_ref()
                    .map_or(String::new(), |r| format!(" (round {r})"))
            );
            eprint!(
                "{:<10} {:<6} {:>7}{} ... ",
                workload.name(),
                system.name(workload),
                system.page(),
                of_rounds
                    .as_ref()
                    .map_or(String::new(), |r| format!(" [{r}]"))
            );
            let m = match measure(&bench, &plan, system) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("failed");
                    stopped = Some(format!("{label}: {e}"));
                    break 'workloads;
                }
            };
            eprintln!(
                "{:.3} s{}, {} faults{}, {:.2}% of the file cached at the start, checksum \
                 {:#018x}",
                m.secs(),
                m.write_back.map_or(String::new(), |t| format!(
                    " (write-back {:.3} s)",
                    t.as_secs_f64()
                )),
                m.faults,
                m.wp_faults
                    .filter(|_| workload.writes())
                    .map_or(String::new(), |n| format!(" ({n} write-protect)")),
                m.cached_before * 100.0,
                m.checksum
            );
            if !options.warm && m.cached_before > 0.01 {
                eprintln!(
                    "  warning: {:.1}% of the file was still in the page cache at the start",
                    m.cached_before * 100.0
                );
            }
            if options.warm && m.cached_before < 0.99 {
                eprintln!(
                    "  warning: only {:.1}% of the file was in the page cache at the start \
                     (--warm could not keep it cached)",
                    m.cached_before * 100.0
                );
            }
            if let Some(expected) = expected {
                if m.checksum != expected {
                    errors.push(format!(
                        "{label}: checksum {:#018x}, the file's pattern gives {expected:#018x}",
                        m.checksum
                    ));
                }
            }
            let baseline = results
                .iter()
                .map(|(_, b)| b)
                .find(|b| b.workload == workload && b.system == System::Mmap);
            if let Some(b) = baseline {
                if m.checksum != b.checksum {
                    errors.push(format!(
                        "{label}: checksum {:#018x}, mmap {} {:#018x}",
                        m.checksum,
                        if workload.writes() { "wrote" } else { "read" },
                        b.checksum
                    ));
                }
            }
            if let Some(final_file) = &final_file {
                let differences = match check_and_restore(&path, final_file) {
                    Ok(differences) => differences,
                    Err(e) => {
                        // The run's data is unchecked and the file maybe not restored: neither
                        // this run nor any later one can be trusted.
                        stopped = Some(format!("{label}: checking the file afterwards: {e}"));
                        break 'workloads;
                    }
                };
                errors.extend(
                    differences
                        .into_iter()
                        .map(|d| format!("{label}: the file after write-back differs at {d}")),
                );
            }
            results.push((round, m));
        }
    }

    let rows = report_rows(&results);
    println!();
    if let Some(failure) = &stopped {
        println!("{}", report::stopped_note(failure, &rows));
        println!();
    }
    print_table(&rows);
    println!();
    println!(
        "MB/s: 10^6 bytes touched per second (seq-read: the file size; rand-read, rand-write, \
         rmw: operations x 4 KiB). pages/s: 4 KiB positions touched per second. faults/s: umap fault events (read faults; for rand-write \
         and rmw read + write + write-protect faults), the process's minor+major faults for \
         mmap, system calls for pread/pwrite. wp faults/s: umap write-protect faults. vs pread: \
         to the pread row (the pwrite row for rand-write and rmw)."
    );
    if generated {
        println!(
            "rand-write and rmw: the time includes writing everything back to the disk at the \
             end (\"flush s\"): umap Region::flush (dirty pages to the store, then fdatasync), \
             mmap msync(MS_SYNC) of the whole mapping, pwrite fdatasync. Afterwards the whole \
             file is checked against what was written, then restored (untimed)."
        );
    } else {
        println!("rand-write and rmw were skipped: a file given with --file is only read.");
    }
    if options.repeat > 1 {
        println!(
            "--repeat {}: every system ran {} times, the systems alternating round by round. \
             Each row's figures are from its run of median time (of the two middle runs, the \
             slower); \"time s\" gives the range of all its runs in parentheses; \"vs mmap\" and \
             \"vs pread\" are the medians of the ratios to the runs of the same round, with \
             their range.",
            options.repeat, options.repeat
        );
    }
    if let Some((_, last)) = results.iter().rev().find(|(_, m)| m.stats.is_some()) {
        println!();
        println!(
            "umap stats of the last umap run ({}, {} pages):",
            last.workload.name(),
            last.system.page()
        );
        print!("{}", last.stats.as_ref().expect("found by is_some"));
    }
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    if let Some((file, path)) = json_file {
        let meta = serde_json::json!({
            "bench": "throughput",
            "unix_time": unix_time,
            "kernel": kernel_release(),
            "cpus": cpus,
            "userfaultfd": open_method.to_string(),
            "file_bytes": size,
            "file_generated": generated,
            "buffer_bytes": options.buffer,
            "threads": options.threads,
            "fillers": options.fillers,
            "evictors": EVICTORS,
            "random_reads": reads,
            "writes": writes,
            "direct": options.direct,
            "warm_page_cache": options.warm,
            "memory_store": options.memory_store,
            "signal_faults": bench.signal_faults,
            "mapped_reads": bench.mapped_reads,
            "quick": options.quick,
            "repeat": options.repeat,
            "data_errors": errors.len(),
            "stopped": stopped,
        });
        write_output(
            file,
            &path,
            &report::to_json(meta, &rows),
            check_json(rows.len()),
        )?;
        println!("\nresults written to {}", path.display());
    }
    if let Some((file, path)) = plot_file {
        let title = "umap throughput: MB/s by workload, system and page size";
        let subtitle = format!(
            "file {}, umap buffer {}, {} threads, {} fillers; kernel {}, {cpus} CPUs{}{}{}",
            page_label(size),
            page_label(options.buffer),
            options.threads,
            options.fillers,
            kernel_release(),
            if options.quick { "; quick run" } else { "" },
            if options.warm {
                "; warm page cache"
            } else {
                ""
            },
            if options.memory_store {
                "; umap store in memory"
            } else {
                ""
            },
        );
        let svg = report::to_svg(title, &subtitle, &rows);
        write_output(file, &path, &svg, check_svg(rows.len()))?;
        println!("chart drawn to {}", path.display());
    }
    io::stdout().flush()?;

    if let Some(failure) = stopped {
        // The data errors, if any, are reported with the failure.
        for e in &errors {
            eprintln!("throughput: data mismatch: {e}");
        }
        return Err(failure.into());
    }
    if errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!();
        eprintln!(
            "!!!!!!!! DATA MISMATCH: a run read or wrote different data than expected !!!!!!!!"
        );
        for e in &errors {
            eprintln!("  {e}");
        }
        Ok(ExitCode::from(1))
    }
}
