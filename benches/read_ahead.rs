//! Sequential scans with and without read-ahead: umap at 4 KiB, 64 KiB and 1 MiB pages with
//! read-ahead off, with a window, and with `Advice::Sequential`, against kernel `mmap` of the
//! same file, cold and warm.
//!
//! ```text
//! cargo bench --bench read_ahead -- [--quick] [--size BYTES] [--buffer BYTES] [--window PAGES]
//!                                   [--rounds N]
//! ```
//!
//! Cold runs drop the file from the page cache first (`posix_fadvise(POSIX_FADV_DONTNEED)`),
//! so umap reads from the disk; warm runs read the page cache (user-space paging cost only).
//! Rounds alternate the configurations, so a noisy neighbour slows all of them alike; the
//! table gives the median of the rounds and each one's ratio to read-ahead off. Every scan's
//! checksum is compared with the file's: wrong bytes fail the bench (exit status 1).

#[path = "../examples/support/cli.rs"]
mod cli;
#[path = "support/data_file.rs"]
mod data_file;
#[path = "../examples/support/mix.rs"]
mod mix;

use std::error::Error;
use std::fs::File;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use data_file::{create_data_file, drop_from_page_cache, pattern, FileMap};

use umap::{Advice, FileStore, MapOptions, Umap};

type BoxError = Box<dyn Error + Send + Sync>;

const MIB: usize = 1 << 20;

const USAGE: &str = "\
usage: cargo bench --bench read_ahead -- [OPTIONS]

  --quick           small run (64 MiB file, 16 MiB buffer, 1 round)
  --size BYTES      data file size (default 512 MiB)
  --buffer BYTES    umap buffer size (default 64 MiB)
  --window PAGES    read-ahead window in pages (default 16)
  --rounds N        rounds of every configuration (default 3)
  -h, --help        this text";

struct Options {
    size: usize,
    buffer: usize,
    window: usize,
    rounds: usize,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options {
        size: 512 * MIB,
        buffer: 64 * MIB,
        window: 16,
        rounds: 3,
    };
    let mut flags = cli::Flags::new(args);
    while let Some(arg) = flags.next_flag() {
        match arg.as_str() {
            "--bench" => {}
            "--quick" => {
                o.size = 64 * MIB;
                o.buffer = 16 * MIB;
                o.rounds = 1;
            }
            "--size" => o.size = flags.size_usize()?,
            "--buffer" => o.buffer = flags.size_usize()?,
            "--window" => o.window = flags.count()?,
            "--rounds" => o.rounds = flags.count()?.max(1),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if o.size < MIB || o.buffer < MIB {
        return Err("--size and --buffer must be at least 1 MiB".into());
    }
    if o.size % MIB != 0 {
        // The data file is written in whole MiB: a mapping past its end would raise SIGBUS.
        return Err(format!(
            "--size {} is not a whole number of MiB (try {}M)",
            o.size,
            o.size / MIB
        ));
    }
    Ok(Some(o))
}

/// How a scan maps the file.
#[derive(Clone, Copy)]
enum System {
    Mmap,
    Umap {
        page: usize,
        window: usize,
        sequential: bool,
    },
}

impl System {
    fn label(self) -> String {
        match self {
            System::Mmap => "kernel mmap".into(),
            System::Umap {
                page,
                window,
                sequential,
            } => {
                let ra = if sequential {
                    "Advice::Sequential".to_string()
                } else if window == 0 {
                    "read-ahead off".to_string()
                } else {
                    format!("read-ahead {window} pages")
                };
                format!("umap {} KiB, {ra}", page / 1024)
            }
        }
    }
}

/// A position-weighted sum of the `u64` at the start of every 4 KiB of `data` (the one read
/// the scan touches there): a page read from the wrong place, or wrong bytes where it was
/// read, change it.
fn checksum(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    for (i, block) in data.chunks(4096).enumerate() {
        let word = u64::from_ne_bytes(block[..8].try_into().expect("whole 4 KiB blocks"));
        sum = sum.wrapping_add(word.wrapping_mul(2 * i as u64 + 1));
    }
    sum
}

/// The [`checksum`] of the whole data file of `size` bytes (a multiple of 4 KiB), from its
/// pattern.
fn file_checksum(size: usize) -> u64 {
    (0..size / 4096).fold(0u64, |sum, i| {
        sum.wrapping_add(pattern(i as u64 * 512).wrapping_mul(2 * i as u64 + 1))
    })
}

/// One scan: seconds, faults, and the [`checksum`] of what it read.
fn scan(path: &Path, o: &Options, system: System, cold: bool) -> Result<(f64, u64, u64), BoxError> {
    if cold {
        // The file was synced when written, so its pages are clean and can be dropped.
        let cached = drop_from_page_cache(path)?;
        if cached > 0.01 {
            eprintln!(
                "warning: {:.1}% of the file is still in the page cache after dropping it",
                cached * 100.0
            );
        }
    }
    match system {
        System::Mmap => {
            let file = File::open(path)?;
            let map = FileMap::new(&file, o.size)?;
            let start = Instant::now();
            let sum = checksum(map.as_slice());
            Ok((start.elapsed().as_secs_f64(), 0, sum))
        }
        System::Umap {
            page,
            window,
            sequential,
        } => {
            let umap = Umap::builder()
                .buffer_size(o.buffer)
                .page_size(page)
                .fillers(2)
                .read_ahead(window)
                .start()?;
            let region = umap.map(FileStore::open_read_only(path)?, MapOptions::new())?;
            if sequential {
                region.advise(0, region.len(), Advice::Sequential)?;
            }
            let start = Instant::now();
            let sum = checksum(region.as_slice());
            let secs = start.elapsed().as_secs_f64();
            let faults = region.stats().read_faults;
            region.unmap()?;
            Ok((secs, faults, sum))
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Fails unless a scan through `system` read the file's bytes.
fn check(system: System, sum: u64, want: u64) -> Result<(), BoxError> {
    if sum != want {
        return Err(format!(
            "{} read wrong bytes: checksum {sum:#018x}, the file's is {want:#018x}",
            system.label()
        )
        .into());
    }
    Ok(())
}

fn run(o: &Options) -> Result<(), BoxError> {
    let dir = tempfile::tempdir_in(std::env::var_os("UMAP_BENCH_DIR").unwrap_or(".".into()))?;
    let path = dir.path().join("read_ahead.bin");
    create_data_file(&path, o.size as u64)?;
    let want = file_checksum(o.size);
    let mut systems = vec![System::Mmap];
    for page in [4096, 64 * 1024, 1024 * 1024] {
        for (window, sequential) in [(0, false), (o.window, false), (0, true)] {
            systems.push(System::Umap {
                page,
                window,
                sequential,
            });
        }
    }
    println!(
        "sequential scan of {} MiB, umap buffer {} MiB, {} round(s), median MB/s",
        o.size / MIB,
        o.buffer / MIB,
        o.rounds
    );
    for cold in [true, false] {
        if !cold {
            // Warm the page cache once for every warm run.
            let (_, _, sum) = scan(&path, o, System::Mmap, false)?;
            check(System::Mmap, sum, want)?;
        }
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
        let mut faults = vec![0u64; systems.len()];
        for _ in 0..o.rounds {
            for (i, &system) in systems.iter().enumerate() {
                let (secs, f, sum) = scan(&path, o, system, cold)?;
                check(system, sum, want)?;
                times[i].push(secs);
                faults[i] = f;
            }
        }
        println!(
            "\n{} page cache\n{:<40} {:>9} {:>10} {:>11} {:>9}",
            if cold { "cold" } else { "warm" },
            "system",
            "MB/s",
            "faults",
            "× ra off",
            "× mmap"
        );
        let mb_s: Vec<f64> = times
            .iter()
            .map(|t| o.size as f64 / 1e6 / median(t.clone()))
            .collect();
        for (i, system) in systems.iter().enumerate() {
            let base = match system {
                System::Umap { page, .. } => systems.iter().position(|s| {
                    matches!(s, System::Umap { page: p, window: 0, sequential: false } if p == page)
                }),
                System::Mmap => None,
            };
            let vs_off = base.map_or("-".to_string(), |b| format!("{:.2}x", mb_s[i] / mb_s[b]));
            println!(
                "{:<40} {:>9.0} {:>10} {:>11} {:>8.2}x",
                system.label(),
                mb_s[i],
                faults[i],
                vs_off,
                mb_s[i] / mb_s[0]
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("read_ahead bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
