//! Map a file much larger than RAM through a small buffer, read it here and there, and show
//! that resident memory stays inside the buffer.
//!
//! ```text
//! cargo run --release --example hugefile -- [--size BYTES] [--buffer BYTES] [--page-size BYTES]
//!     [--file PATH] [--reads N]
//! ```
//!
//! With no `--file` it creates a sparse file of `--size` bytes (default 64 GiB, which takes a
//! few MiB of disk) in a temporary directory, with a 4 KiB marker block every 64 MiB. It maps
//! the file read-only through a `--buffer` buffer (default 64 MiB), reads every marker and then
//! `--reads` random pages through the mapping, compares each read with `pread` of the same bytes
//! (and each marker with what was written), and samples the process's resident set size while
//! it runs. It exits non-zero if a read differs, if the pager ever holds more than the buffer,
//! or if the resident set grows by more than the buffer, the page-state table
//! ([`umap::PAGE_METADATA_BYTES`] per umap page) and a margin. With `--file` it maps that file (read-only) instead.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/mix.rs"]
mod mix;

use mix::mix64;
use std::fs::File;
use std::io::IsTerminal;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use umap::{FileStore, MapOptions, Umap};

const USAGE: &str = "\
usage: hugefile [OPTIONS]

  --size BYTES       size of the sparse file created (default 64G)
  --buffer BYTES     umap buffer: the most data resident at once (default 64M)
  --page-size BYTES  umap page size (default 64K)
  --file PATH        map this existing file (read-only) instead of creating one
  --reads N          random pages read through the mapping (default 100000)
  -h, --help         this text

BYTES takes a suffix K, M, G, KiB, MiB or GiB (all binary: 1K = 1024).
The UMAP_* environment variables (UMAP_BUFSIZE, UMAP_PAGESIZE, UMAP_PAGE_FILLERS ...)
configure the pager too; the flags above override them.";

const MIB: u64 = 1 << 20;
/// A marker block every this many bytes of the created file.
const MARKER_EVERY: u64 = 64 * MIB;
/// Bytes of a marker block.
const MARKER_LEN: usize = 4096;
/// The first word of every marker block.
const MARKER_MAGIC: u64 = u64::from_le_bytes(*b"UMAPMARK");
/// Bytes compared per random read.
const READ_LEN: usize = 64;
/// Room for everything but the buffer and the page-state table in the growth of the resident
/// set: reader stacks, the engine's threads and bookkeeping, allocator slack.
const RSS_MARGIN: u64 = 32 * MIB;

// ---------------------------------------------------------------------------------------------
// Command line

struct Args {
    size: u64,
    /// `None`: `UMAP_BUFSIZE` if set, else 64 MiB.
    buffer: Option<usize>,
    /// `None`: `UMAP_PAGESIZE` if set, else 64 KiB.
    page_size: Option<usize>,
    file: Option<PathBuf>,
    reads: usize,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        size: 64 << 30,
        buffer: None,
        page_size: None,
        file: None,
        reads: 100_000,
    };
    let mut size_given = false;
    let mut flags = cli::Flags::new(args);
    while let Some(name) = flags.next_flag() {
        match name.as_str() {
            "--size" => {
                a.size = flags.size()?;
                size_given = true;
            }
            "--buffer" => a.buffer = Some(flags.size_usize()?),
            "--page-size" => a.page_size = Some(flags.size_usize()?),
            "--file" => a.file = Some(PathBuf::from(flags.value()?)),
            "--reads" => a.reads = flags.count()?,
            "-h" | "--help" => return Ok(None),
            _ => return Err(format!("unknown argument `{name}` (see --help)")),
        }
    }
    if size_given && a.file.is_some() {
        return Err("--size and --file exclude each other (the file's size is used)".into());
    }
    if a.file.is_none() && a.size < MARKER_LEN as u64 {
        return Err(format!(
            "--size: {} bytes is too small (at least {MARKER_LEN}, one marker block)",
            a.size
        ));
    }
    Ok(Some(a))
}

// ---------------------------------------------------------------------------------------------
// The file

/// The marker block at `MARKER_EVERY * k`: the magic, `k`, then words that depend on `k`.
fn marker(k: u64) -> Vec<u8> {
    (0..MARKER_LEN as u64 / 8)
        .flat_map(|j| {
            match j {
                0 => MARKER_MAGIC,
                1 => k,
                _ => mix64(k << 32 | j),
            }
            .to_le_bytes()
        })
        .collect()
}

/// Number of markers in a created file of `size` bytes (one at each multiple of
/// `MARKER_EVERY` with room for a whole block).
fn markers(size: u64) -> u64 {
    (size - MARKER_LEN as u64) / MARKER_EVERY + 1
}

/// Creates a sparse file of `size` bytes at `path` with its marker blocks.
fn create_file(path: &std::path::Path, size: u64) -> Result<(), String> {
    let err = |e: std::io::Error| format!("creating {}: {e}", path.display());
    let file = File::create_new(path).map_err(err)?;
    file.set_len(size).map_err(err)?;
    for k in 0..markers(size) {
        file.write_all_at(&marker(k), k * MARKER_EVERY)
            .map_err(err)?;
    }
    file.sync_all().map_err(err)
}

// ---------------------------------------------------------------------------------------------
// Memory

/// A field of `/proc/self/status` (`VmRSS`, `VmHWM`) in bytes.
fn status_bytes(field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no {field} in /proc/self/status"))
}

/// Samples the resident set and the pager's resident bytes every few milliseconds until
/// finished; keeps the maxima.
struct Sampler {
    umap: Umap,
    stop: Arc<AtomicBool>,
    max_rss: Arc<AtomicU64>,
    max_resident: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Sampler {
    fn start(umap: Umap) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_rss = Arc::new(AtomicU64::new(0));
        let max_resident = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, max_rss, max_resident) =
                (stop.clone(), max_rss.clone(), max_resident.clone());
            let umap = umap.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    max_rss.fetch_max(status_bytes("VmRSS")?, Ordering::Relaxed);
                    max_resident.fetch_max(umap.stats().resident_bytes, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            })
        };
        Sampler {
            umap,
            stop,
            max_rss,
            max_resident,
            thread,
        }
    }

    /// Stops sampling, takes a last sample; returns the largest RSS and pager resident bytes
    /// seen.
    fn finish(self) -> Result<(u64, u64), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the sampler thread panicked".to_string())??;
        Ok((
            self.max_rss
                .load(Ordering::Relaxed)
                .max(status_bytes("VmRSS")?),
            self.max_resident
                .load(Ordering::Relaxed)
                .max(self.umap.stats().resident_bytes),
        ))
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(what.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

// ---------------------------------------------------------------------------------------------
// Main

fn main() -> std::process::ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hugefile: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => {
            println!("all checks passed");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hugefile: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let _tempdir;
    let (path, created) = match &args.file {
        Some(p) => (p.clone(), false),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("umap-hugefile-")
                .tempdir()
                .map_err(|e| format!("creating a temporary directory: {e}"))?;
            let path = dir.path().join("huge.bin");
            _tempdir = dir;
            let t = Instant::now();
            create_file(&path, args.size)?;
            println!(
                "created sparse {} with {} marker blocks in {:.2?}",
                path.display(),
                markers(args.size),
                t.elapsed()
            );
            (path, true)
        }
    };
    let file = File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = meta.len();
    let ram = status_total_ram();
    println!(
        "file {}: {:.1} GiB ({} bytes), {:.1} MiB on disk; RAM {:.1} GiB",
        path.display(),
        len as f64 / (1u64 << 30) as f64,
        len,
        mib(meta.blocks() * 512),
        ram.map_or(f64::NAN, |r| r as f64 / (1u64 << 30) as f64)
    );
    if len < READ_LEN as u64 {
        return Err(format!(
            "{}: {len} bytes is too small to read",
            path.display()
        ));
    }

    let baseline = status_bytes("VmRSS")?;
    // The example's defaults, then the UMAP_* variables, then the flags.
    let mut builder = Umap::builder()
        .buffer_size(64 << 20)
        .page_size(64 << 10)
        .env()
        .map_err(|e| e.to_string())?;
    if let Some(bytes) = args.buffer {
        builder = builder.buffer_size(bytes);
    }
    if let Some(bytes) = args.page_size {
        builder = builder.page_size(bytes);
    }
    let umap = builder.start().map_err(|e| e.to_string())?;
    let buffer = umap.config().buffer_size;
    let store = FileStore::open_read_only(&path).map_err(|e| e.to_string())?;
    let region = umap
        .map(store, MapOptions::new())
        .map_err(|e| e.to_string())?;
    let data = region.as_slice();
    let pages = (len as usize).div_ceil(region.page_size()) as u64;
    let table = pages * umap::PAGE_METADATA_BYTES as u64;
    println!(
        "mapped through a {:.0} MiB buffer in {} KiB pages ({} pages, page-state table {:.1} MiB); \
         resident before: {:.1} MiB",
        mib(buffer as u64),
        region.page_size() >> 10,
        pages,
        mib(table),
        mib(baseline)
    );
    let sampler = Sampler::start(umap.clone());
    let mut mismatches: Vec<String> = Vec::new();
    let mut note = |what: String| {
        if mismatches.len() < 5 {
            mismatches.push(what);
        } else if mismatches.len() == 5 {
            mismatches.push("and more".into());
        }
    };
    let read_file = |offset: u64, buf: &mut [u8]| {
        file.read_exact_at(buf, offset)
            .map_err(|e| format!("pread at {offset}: {e}"))
    };

    // The markers (of a created file), or one block every MARKER_EVERY bytes of a given one.
    let t = Instant::now();
    let blocks = if created {
        markers(len)
    } else {
        (len - 1) / MARKER_EVERY + 1
    };
    let bar = progress(blocks, "markers");
    let mut want = vec![0u8; MARKER_LEN];
    for k in 0..blocks {
        let at = k * MARKER_EVERY;
        let n = (MARKER_LEN as u64).min(len - at) as usize;
        read_file(at, &mut want[..n])?;
        let seen = &data[at as usize..at as usize + n];
        if seen != &want[..n] {
            note(format!("block at {at}: the mapping differs from pread"));
        }
        if created && seen != marker(k) {
            note(format!(
                "marker {k} at {at}: the mapping differs from what was written"
            ));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let marker_time = t.elapsed();
    println!(
        "{blocks} {} blocks read in {marker_time:.2?} ({:.0} blocks/s)",
        if created { "marker" } else { "spaced" },
        blocks as f64 / marker_time.as_secs_f64().max(1e-9)
    );

    // Random pages.
    let t = Instant::now();
    let bar = progress(args.reads as u64, "random reads");
    let page = region.page_size() as u64;
    let mut rng = 0x6875_6765_6669_6c65u64;
    let mut buf = [0u8; READ_LEN];
    let mut marker_hits = 0u64;
    for i in 0..args.reads {
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let r = mix64(rng);
        let p = ((u128::from(r) * u128::from(pages)) >> 64) as u64;
        let start = p * page;
        let room = (len - start).min(page).saturating_sub(READ_LEN as u64);
        let at = start + (mix64(r) % (room + 1));
        let n = (READ_LEN as u64).min(len - at) as usize;
        read_file(at, &mut buf[..n])?;
        if data[at as usize..at as usize + n] != buf[..n] {
            note(format!(
                "random read at {at}: the mapping differs from pread"
            ));
        }
        if created && at % MARKER_EVERY < MARKER_LEN as u64 {
            marker_hits += 1;
        }
        if i % 1024 == 0 {
            bar.set_position(i as u64);
        }
    }
    bar.finish_and_clear();
    let random_time = t.elapsed();
    println!(
        "{} random reads of {READ_LEN} bytes in {random_time:.2?} ({:.0} reads/s{})",
        args.reads,
        args.reads as f64 / random_time.as_secs_f64().max(1e-9),
        if created {
            format!(", {marker_hits} in marker blocks")
        } else {
            String::new()
        }
    );

    let (max_rss, max_resident) = sampler.finish()?;
    let stats = umap.stats();
    let peak = status_bytes("VmHWM")?;
    region.unmap().map_err(|e| e.to_string())?;
    println!("\npager statistics:\n{stats}");
    let budget = buffer as u64 + table + RSS_MARGIN;
    println!(
        "pager resident at most {:.1} MiB (buffer {:.1} MiB); process RSS at most {:.1} MiB \
         sampled, peak {:.1} MiB: grew {:.1} MiB over the {:.1} MiB before mapping, for a \
         {:.1} GiB file (allowed: buffer + page-state table + {:.0} MiB = {:.1} MiB)",
        mib(max_resident),
        mib(buffer as u64),
        mib(max_rss),
        mib(peak),
        mib(peak.saturating_sub(baseline)),
        mib(baseline),
        len as f64 / (1u64 << 30) as f64,
        mib(RSS_MARGIN),
        mib(budget)
    );

    if !mismatches.is_empty() {
        return Err(format!("reads differ:\n  {}", mismatches.join("\n  ")));
    }
    if max_resident > buffer as u64 {
        return Err(format!(
            "the pager held {max_resident} bytes, more than its {buffer}-byte buffer"
        ));
    }
    if peak.saturating_sub(baseline) > budget {
        return Err(format!(
            "the resident set grew by {:.1} MiB, more than the {:.1} MiB allowed",
            mib(peak.saturating_sub(baseline)),
            mib(budget)
        ));
    }
    Ok(())
}

/// Total RAM in bytes (`MemTotal`), if known.
fn status_total_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}
