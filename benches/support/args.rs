//! The throughput bench's command line (`benches/throughput.rs`): its options, their
//! defaults, and the checks between them. `tests/bench_args.rs` includes this file too, to test
//! the parser; both crates include `cli.rs` and `report.rs` as `crate::cli` and
//! `crate::report`.

#![allow(dead_code)] // the tests read only some of the options.

use std::path::PathBuf;

use crate::cli;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Workloads touch one `u64` per `TOUCH` bytes.
pub const TOUCH: usize = 4096;
/// The most rounds `--repeat` takes.
pub const MAX_REPEAT: usize = 100;
/// The umap page sizes measured by default.
pub const UMAP_PAGE_SIZES: [usize; 3] = [4 << 10, 64 << 10, 1 << 20];

pub const USAGE: &str = "\
usage: cargo bench --bench throughput -- [OPTIONS]

  --quick           small run (128 MiB file, 16 MiB buffer, 20000 random reads, 4000 writes)
  --json PATH       also write the results (and the run's parameters) to PATH as JSON
  --plot PATH.svg   also draw MB/s by workload, system and page size to PATH as an SVG chart
  --size BYTES      data file size (default 1 GiB; 128 MiB with --quick)
  --buffer BYTES    umap buffer size (default 128 MiB; 16 MiB with --quick)
  --threads N       reader (and writer) threads (default 2)
  --fillers N       umap filler threads (default 2)
  --reads N         random reads in total (default min(size/4096, 200000); 20000 with --quick)
  --writes N        operations of rand-write and of rmw in total (default as --reads; 4000
                    with --quick)
  --file PATH       read this existing file (read-only) instead of generating one; the write
                    workloads are skipped
  --direct          umap reads and writes the file with O_DIRECT (no second copy in the page
                    cache), and so do pread and pwrite
  --warm            start every run with the whole file in the page cache (read through
                    first) instead of dropping it: measures the fault path, not the disk
  --workloads LIST  run only these workloads, comma-separated (seq-read, rand-read,
                    rand-write, rmw; default all)
  --page-sizes LIST umap page sizes to run, comma-separated (default 4K,64K,1M); mmap and
                    pread always run
  --memory-store    umap's store is a MemStore loaded with the file (the pager's own cost,
                    without the file system's; mmap and pread still use the file)
  --signal-faults   umap serves faults on the faulting thread (Config::signal_faults; the
                    same as UMAP_SIGNAL_FAULTS=1)
  --mapped-reads    umap's file store copies sequential runs straight from a read-only
                    mapping of the file, mapped ahead of each scan
                    (FileStoreOptions::mapped_reads)
  --repeat N        measure every system N times (default 1), alternating the systems round
                    by round; each row shows the run of median time, the range of the times
                    and the median (and range) of its ratios to mmap and pread of the same round
  --render PATH     measure nothing: print the results of a --json file as a Markdown table
                    (alone: with no other option)
  -h, --help        this text

BYTES takes a suffix K, M, G, KiB, MiB or GiB (all binary: 1K = 1024).";

/// What the command line asked for, with defaults applied.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Size of the generated file; `None` with `--file` (the file's size is used).
    pub size: Option<u64>,
    pub buffer: usize,
    pub threads: usize,
    pub fillers: usize,
    /// Random reads in total; `None` for the default, which depends on the file size.
    pub reads: Option<usize>,
    /// Operations of each write workload in total; `None` for the default.
    pub writes: Option<usize>,
    pub file: Option<PathBuf>,
    /// umap's store (and pread/pwrite) use O_DIRECT.
    pub direct: bool,
    /// Every run starts with the file in the page cache instead of out of it.
    pub warm: bool,
    /// umap pages from a `MemStore` copy of the file.
    pub memory_store: bool,
    /// umap serves faults on the faulting thread (`Config::signal_faults`).
    pub signal_faults: bool,
    /// umap's file store copies sequential runs from a mapping of the file
    /// (`FileStoreOptions::mapped_reads`).
    pub mapped_reads: bool,
    /// How many times every (workload, system) pair is measured, in alternating rounds.
    pub repeat: usize,
    /// The workloads to run, in [`Workload::ALL`] order.
    pub workloads: Vec<Workload>,
    /// The umap page sizes to run, ascending.
    pub page_sizes: Vec<usize>,
    /// Where to write the results as JSON.
    pub json: Option<PathBuf>,
    /// Where to draw the SVG chart.
    pub plot: Option<PathBuf>,
}

#[derive(Debug)]
pub enum Parsed {
    Run(Options),
    /// Print a JSON report as Markdown.
    Render(PathBuf),
    Help,
}

pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut quick = false;
    let mut size = None;
    let mut buffer = None;
    let mut threads = None;
    let mut fillers = None;
    let mut reads = None;
    let mut writes = None;
    let mut file = None;
    let mut direct = false;
    let mut warm = false;
    let mut memory_store = false;
    let mut signal_faults = false;
    let mut mapped_reads = false;
    let mut repeat = None;
    let mut workloads: Option<Vec<Workload>> = None;
    let mut page_sizes: Vec<usize> = UMAP_PAGE_SIZES.to_vec();
    let mut json = None;
    let mut plot = None;
    let mut render = None;
    // The first option that runs something, which `--render` does not go with.
    let mut run_option: Option<String> = None;

    let mut flags = cli::Flags::new(args);
    while let Some(name) = flags.next_flag() {
        if !matches!(name.as_str(), "--bench" | "--render") && run_option.is_none() {
            run_option = Some(name.clone());
        }
        match name.as_str() {
            // cargo passes `--bench` to every bench target.
            "--bench" => {}
            "--quick" => quick = true,
            "--direct" => direct = true,
            "--warm" => warm = true,
            "--memory-store" => memory_store = true,
            "--signal-faults" => signal_faults = true,
            "--mapped-reads" => mapped_reads = true,
            "--render" => render = Some(PathBuf::from(flags.value()?)),
            "--workloads" => {
                let list = flags.value()?;
                let mut chosen = Vec::new();
                for name in list.split(',').map(str::trim) {
                    let workload = Workload::ALL
                        .into_iter()
                        .find(|w| w.name() == name)
                        .ok_or_else(|| {
                            format!(
                                "--workloads: unknown workload `{name}` (choose from seq-read, \
                                 rand-read, rand-write, rmw)"
                            )
                        })?;
                    chosen.push(workload);
                }
                workloads = Some(chosen);
            }
            "--page-sizes" => {
                let list = flags.value()?;
                page_sizes.clear();
                for item in list.split(',').map(str::trim) {
                    let size =
                        cli::parse_size_usize(item).map_err(|e| format!("--page-sizes: {e}"))?;
                    let size = Some(size)
                        .filter(|s| s.is_power_of_two() && *s >= 4096)
                        .ok_or_else(|| {
                            format!("--page-sizes: {item} is not a power of two of at least 4K")
                        })?;
                    page_sizes.push(size);
                }
                page_sizes.sort_unstable();
                page_sizes.dedup();
            }
            "-h" | "--help" => return Ok(Parsed::Help),
            "--size" => size = Some(flags.size()?),
            "--buffer" => {
                let b = flags.size()?;
                buffer = Some(usize::try_from(b).map_err(|_| "--buffer: too large".to_string())?);
            }
            "--threads" => threads = Some(flags.count()?),
            "--fillers" => fillers = Some(flags.count()?),
            "--reads" => reads = Some(flags.count()?),
            "--writes" => writes = Some(flags.count()?),
            "--repeat" => repeat = Some(flags.count()?),
            "--file" => file = Some(PathBuf::from(flags.value()?)),
            "--json" => json = Some(PathBuf::from(flags.value()?)),
            "--plot" => {
                let path = PathBuf::from(flags.value()?);
                if path
                    .extension()
                    .is_none_or(|e| !e.eq_ignore_ascii_case("svg"))
                {
                    return Err(format!(
                        "--plot: {} does not end in .svg (the chart is an SVG file)",
                        path.display()
                    ));
                }
                plot = Some(path);
            }
            _ => return Err(format!("unknown argument `{name}`")),
        }
    }

    if let Some(path) = render {
        return match run_option {
            Some(option) => Err(format!(
                "--render prints a report and runs nothing: {option} does not go with it"
            )),
            None => Ok(Parsed::Render(path)),
        };
    }
    if memory_store && direct {
        return Err("--memory-store and --direct exclude each other (umap reads no file)".into());
    }
    if mapped_reads && (direct || memory_store) {
        return Err(
            "--mapped-reads maps the store's file: not with --direct or --memory-store".into(),
        );
    }
    if warm && direct {
        return Err(
            "--warm and --direct exclude each other (O_DIRECT bypasses the page cache)".into(),
        );
    }
    let workloads: Vec<Workload> = match workloads {
        Some(chosen) => Workload::ALL
            .into_iter()
            .filter(|w| chosen.contains(w))
            .collect(),
        None => Workload::ALL.to_vec(),
    };
    if file.is_some() && workloads.iter().all(|w| w.writes()) {
        return Err(
            "--file is only read: the write workloads are skipped with it, so choose a read \
             workload too (seq-read, rand-read)"
                .into(),
        );
    }
    if file.is_some() && size.is_some() {
        return Err("--size and --file exclude each other (the file's size is used)".into());
    }
    let size = match file {
        Some(_) => None,
        None => Some(size.unwrap_or(if quick { 128 * MIB } else { GIB })),
    };
    if let Some(size) = size {
        if size < TOUCH as u64 {
            return Err(format!(
                "--size: {size} bytes is too small (at least {TOUCH})"
            ));
        }
        if usize::try_from(size).is_err() || size > isize::MAX as u64 {
            return Err(format!("--size: {size} bytes cannot be mapped"));
        }
    }
    let buffer = buffer.unwrap_or(if quick { 16 << 20 } else { 128 << 20 });
    let largest_page = *page_sizes
        .iter()
        .max()
        .expect("the list has at least one size");
    if buffer < largest_page {
        return Err(format!(
            "--buffer: {buffer} bytes cannot hold a {} page (at least {largest_page})",
            crate::report::page_label(largest_page as u64)
        ));
    }
    let repeat = repeat.unwrap_or(1);
    if repeat > MAX_REPEAT {
        return Err(format!(
            "--repeat: {repeat} rounds is too many (at most {MAX_REPEAT}; every round measures \
             every system once)"
        ));
    }
    let threads = threads.unwrap_or(2);
    if threads > 1024 {
        return Err(format!("--threads: {threads} is too many (at most 1024)"));
    }
    Ok(Parsed::Run(Options {
        quick,
        size,
        buffer,
        threads,
        fillers: fillers.unwrap_or(2),
        reads,
        writes,
        file,
        direct,
        warm,
        memory_store,
        signal_faults,
        mapped_reads,
        repeat,
        workloads,
        page_sizes,
        json,
        plot,
    }))
}

/// What the reader (or writer) threads do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Each thread reads one contiguous share of the mapping, one `u64` per 4 KiB.
    SeqRead,
    /// Each thread reads one `u64` at each of its random 4 KiB-aligned positions.
    RandRead,
    /// Each thread writes one `u64` (`written_value` in throughput.rs) at each of its random 4 KiB-aligned
    /// positions; no two threads write the same position.
    RandWrite,
    /// Read-modify-write: each thread reads the `u64` at each of its random 4 KiB-aligned
    /// positions and writes it back plus one; no two threads touch the same position.
    Rmw,
}

impl Workload {
    /// In the order they run: the write workloads last, after the read workloads that check
    /// the file's pattern (they also restore it after each run, see `check_and_restore` in
    /// throughput.rs).
    pub const ALL: [Workload; 4] = [
        Workload::SeqRead,
        Workload::RandRead,
        Workload::RandWrite,
        Workload::Rmw,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::SeqRead => "seq-read",
            Workload::RandRead => "rand-read",
            Workload::RandWrite => "rand-write",
            Workload::Rmw => "rmw",
        }
    }

    /// Whether the workload changes the data file.
    pub fn writes(self) -> bool {
        matches!(self, Workload::RandWrite | Workload::Rmw)
    }
}
