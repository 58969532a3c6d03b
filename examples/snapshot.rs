//! A live snapshot of a table that several threads keep updating.
//!
//! ```text
//! cargo run --release --example snapshot -- [--size BYTES] [--threads N] [--copiers N]
//!                                            [--file PATH]
//! ```
//!
//! The table (512 MiB of u64 by default) lives in anonymous memory; writer threads update
//! random slots as fast as they can. After a second of that, the example takes a live
//! snapshot of the table into a file while the writers keep going, and prints how long it
//! took, the writers' throughput before and during it, and their worst stall (the longest
//! single update) in each phase. Then it checks the file against the table as it was when the
//! snapshot started, byte for byte, and exits non-zero on any difference.
//!
//! To know that expected image, the writers pause for a moment just before the snapshot while
//! the table is copied aside; that pause is bookkeeping for the check, not part of the
//! snapshot (which needs none).

#[path = "support/cli.rs"]
mod cli;

use std::error::Error;
use std::fs::File;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use umap::snapshot::{self, SnapshotOptions};
use umap::sys::Mapping;
use umap::FileStore;

type BoxError = Box<dyn Error + Send + Sync>;

const USAGE: &str = "\
usage: snapshot [--size BYTES] [--threads N] [--copiers N] [--file PATH]
  --size BYTES   table size (default 512M; suffixes K, M, G)
  --threads N    writer threads (default 4)
  --copiers N    snapshot copier threads (default 1)
  --file PATH    write the image here (default: a file in a temporary directory)";

struct Options {
    size: usize,
    threads: usize,
    copiers: usize,
    file: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut o = Options {
        size: 512 << 20,
        threads: 4,
        copiers: 1,
        file: None,
    };
    let mut flags = cli::Flags::new(std::env::args().skip(1));
    while let Some(arg) = flags.next_flag() {
        match arg.as_str() {
            "--size" => o.size = flags.size_usize()?,
            "--threads" => o.threads = flags.count()?,
            "--copiers" => o.copiers = flags.count()?,
            "--file" => o.file = Some(flags.value()?.into()),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let page = umap::sys::page_size();
    if o.size < page || o.size % page != 0 {
        return Err(format!(
            "--size: a multiple of the page size ({page}), at least one page"
        ));
    }
    Ok(Some(o))
}

/// The table: anonymous memory seen as atomic words.
struct Table {
    map: Mapping,
}

impl Table {
    fn words(&self) -> usize {
        self.map.len() / 8
    }
    fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: `i` is below `words()` at every call site (callers take it modulo), so the
        // word is inside the mapping, 8-byte aligned (the mapping is page-aligned); every
        // access to the table goes through atomics, and the mapping lives as long as `self`.
        unsafe { &*(self.map.as_ptr().add(i * 8) as *const AtomicU64) }
    }
}

/// What the writers share with the main thread.
struct Control {
    /// Writers stop updating while set (and count themselves in `parked`).
    pause: AtomicBool,
    parked: AtomicUsize,
    stop: AtomicBool,
    /// Updates done, and the longest single update in ns, in the current phase.
    updates: AtomicU64,
    worst_ns: AtomicU64,
}

impl Control {
    /// Starts a new measuring phase; returns the updates of the one that ends.
    fn new_phase(&self) -> (u64, Duration) {
        let updates = self.updates.swap(0, Ordering::AcqRel);
        let worst = self.worst_ns.swap(0, Ordering::AcqRel);
        (updates, Duration::from_nanos(worst))
    }
}

fn writer(table: &Table, control: &Control, seed: u64) {
    let mut x = seed | 1;
    let words = table.words() as u64;
    let (mut updates, mut worst) = (0u64, 0u64);
    while !control.stop.load(Ordering::Relaxed) {
        if control.pause.load(Ordering::Acquire) {
            control.updates.fetch_add(updates, Ordering::AcqRel);
            control.worst_ns.fetch_max(worst, Ordering::AcqRel);
            (updates, worst) = (0, 0);
            control.parked.fetch_add(1, Ordering::AcqRel);
            while control.pause.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            control.parked.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        // xorshift: a random slot and a new value for it.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let start = Instant::now();
        table
            .word((x % words) as usize)
            .fetch_add(x | 1, Ordering::Relaxed);
        let took = start.elapsed().as_nanos() as u64;
        updates += 1;
        worst = worst.max(took);
        if updates % 4096 == 0 {
            control.updates.fetch_add(updates, Ordering::AcqRel);
            control.worst_ns.fetch_max(worst, Ordering::AcqRel);
            (updates, worst) = (0, 0);
        }
    }
    control.updates.fetch_add(updates, Ordering::AcqRel);
    control.worst_ns.fetch_max(worst, Ordering::AcqRel);
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn run(o: &Options) -> Result<bool, BoxError> {
    let dir = tempfile::tempdir()?;
    let path = o
        .file
        .clone()
        .unwrap_or_else(|| dir.path().join("table.snapshot"));
    let table = Table {
        map: Mapping::anonymous(
            o.size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
        )?,
    };
    for i in 0..table.words() {
        table
            .word(i)
            .store(i as u64 * 0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    }
    let control = Control {
        pause: AtomicBool::new(false),
        parked: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        updates: AtomicU64::new(0),
        worst_ns: AtomicU64::new(0),
    };
    println!(
        "table {} MiB, {} writer thread(s), {} copier(s), {} CPUs; image: {}",
        o.size >> 20,
        o.threads,
        o.copiers,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        path.display()
    );
    let outcome = std::thread::scope(|s| -> Result<_, BoxError> {
        for t in 0..o.threads {
            let (table, control) = (&table, &control);
            s.spawn(move || writer(table, control, 0xC0FFEE + t as u64 * 7919));
        }
        let result = (|| -> Result<_, BoxError> {
            // Phase 1: the writers alone.
            control.new_phase();
            let before_start = Instant::now();
            std::thread::sleep(Duration::from_secs(1));
            // The expected image: pause the writers, copy the table aside.
            control.pause.store(true, Ordering::Release);
            while control.parked.load(Ordering::Acquire) < o.threads {
                std::thread::yield_now();
            }
            let before = (control.new_phase(), before_start.elapsed());
            let expected: Vec<u64> = (0..table.words())
                .map(|i| table.word(i).load(Ordering::Relaxed))
                .collect();
            let file = File::create(&path)?;
            drop(file);
            let store = Arc::new(FileStore::open(&path)?);
            // Phase 2: the snapshot, with the writers going.
            let started = Instant::now();
            // SAFETY: the table stays mapped until the snapshot has ended (`wait` below).
            let snap = unsafe {
                snapshot::start(
                    table.map.as_ptr(),
                    o.size,
                    store,
                    SnapshotOptions::new().copiers(o.copiers),
                )
            }?;
            control.pause.store(false, Ordering::Release);
            let stats = snap.wait()?;
            let during = (control.new_phase(), started.elapsed());
            Ok((before, during, stats, expected))
        })();
        control.pause.store(false, Ordering::Release);
        control.stop.store(true, Ordering::Release);
        result
    })?;
    let (before, during, stats, expected) = outcome;
    let ((upd_before, worst_before), t_before) = before;
    let ((upd_during, worst_during), t_during) = during;
    let rate_before = upd_before as f64 / t_before.as_secs_f64();
    let rate_during = upd_during as f64 / t_during.as_secs_f64();
    println!(
        "snapshot: {:.3} s for {} MiB ({:.0} MiB/s), {} pages copied in the background, {} on \
         a writer's fault; {} MiB written, {} zero pages skipped",
        stats.duration.as_secs_f64(),
        stats.bytes >> 20,
        mib_per_s(stats.bytes, stats.duration),
        stats.pages_in_background,
        stats.pages_on_fault,
        stats.bytes_written >> 20,
        stats.zero_pages_skipped
    );
    println!(
        "writers: {:.2} M updates/s before, {:.2} M updates/s during ({:.0}% of before)",
        rate_before / 1e6,
        rate_during / 1e6,
        100.0 * rate_during / rate_before.max(1.0)
    );
    println!(
        "worst single update: {:.0} µs before, {:.0} µs during (fault service: max {:.0} µs, \
         p99 {:.0} µs over {} faults)",
        worst_before.as_secs_f64() * 1e6,
        worst_during.as_secs_f64() * 1e6,
        stats.max_fault_service.as_secs_f64() * 1e6,
        stats.p99_fault_service.as_secs_f64() * 1e6,
        stats.faults
    );
    let image = std::fs::read(&path)?;
    let mut bad = 0usize;
    for (i, (chunk, want)) in image.chunks_exact(8).zip(&expected).enumerate() {
        let got = u64::from_ne_bytes(chunk.try_into()?);
        if got != *want {
            if bad < 5 {
                eprintln!("word {i}: image has {got:#x}, the table had {want:#x}");
            }
            bad += 1;
        }
    }
    if image.len() != o.size {
        eprintln!("the image is {} bytes, the table {}", image.len(), o.size);
        return Ok(false);
    }
    if bad > 0 {
        eprintln!("{bad} words of the image differ from the table at the snapshot's start");
        return Ok(false);
    }
    println!("check: the image equals the table at the snapshot's start, byte for byte");
    Ok(true)
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Some(o)) => match run(&o) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("snapshot: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("snapshot: {e}");
            ExitCode::from(2)
        }
    }
}
