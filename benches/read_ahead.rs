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
//! table gives the median of the rounds and each one's ratio to read-ahead off.

#[path = "../examples/support/cli.rs"]
mod cli;

use std::error::Error;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

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

/// One scan: seconds and faults.
fn scan(path: &Path, o: &Options, system: System, cold: bool) -> Result<(f64, u64), BoxError> {
    let file = File::open(path)?;
    if cold {
        // The file was synced when written, so its pages are clean and can be dropped.
        // SAFETY: a plain advice call on an open descriptor.
        let err = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err).into());
        }
    }
    let sum_bytes = |data: &[u8]| -> u64 {
        let mut sum = 0u64;
        for chunk in data.chunks(4096) {
            sum = sum.wrapping_add(chunk[0] as u64);
        }
        sum
    };
    match system {
        System::Mmap => {
            // SAFETY: a fresh read-only shared mapping of a file nobody truncates meanwhile.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    o.size,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error().into());
            }
            let start = Instant::now();
            // SAFETY: the mapping is `o.size` readable bytes until the munmap below.
            let data = unsafe { std::slice::from_raw_parts(addr as *const u8, o.size) };
            std::hint::black_box(sum_bytes(data));
            let secs = start.elapsed().as_secs_f64();
            // SAFETY: unmapping what we mapped; `data` is not used afterwards.
            unsafe { libc::munmap(addr, o.size) };
            Ok((secs, 0))
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
            std::hint::black_box(sum_bytes(region.as_slice()));
            let secs = start.elapsed().as_secs_f64();
            let faults = region.stats().read_faults;
            region.unmap()?;
            Ok((secs, faults))
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run(o: &Options) -> Result<(), BoxError> {
    let dir = tempfile::tempdir_in(std::env::var_os("UMAP_BENCH_DIR").unwrap_or(".".into()))?;
    let path = dir.path().join("read_ahead.bin");
    {
        let mut f = std::io::BufWriter::new(File::create(&path)?);
        let block: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
        for _ in 0..o.size / MIB {
            f.write_all(&block)?;
        }
        f.into_inner()?.sync_all()?;
    }
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
            scan(&path, o, System::Mmap, false)?;
        }
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
        let mut faults = vec![0u64; systems.len()];
        for _ in 0..o.rounds {
            for (i, &system) in systems.iter().enumerate() {
                let (secs, f) = scan(&path, o, system, cold)?;
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
