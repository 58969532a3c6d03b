//! Sort a file of random `u64`s in place, in parallel, through a umap mapping much smaller than
//! the data (or through kernel `mmap` for comparison), and check the result.
//!
//! ```text
//! cargo run --release --example sort -- [--size BYTES] [--buffer BYTES] [--page-size BYTES]
//!     [--threads N] [--fillers N] [--evictors N] [--file PATH] [--keep] [--mmap] [--direct]
//!     [--mapped-reads] [--versus-mmap ROUNDS]
//! ```
//!
//! With no flags it writes 1 GiB of random `u64`s to a file in a temporary directory, maps it
//! writable through a 128 MiB buffer, sorts the mapped words with rayon's `par_sort_unstable`,
//! checks that the mapping is sorted and holds the same multiset of words as the input (count,
//! wrapping sum, xor and a wrapping sum of hashes), flushes, unmaps, reads the file back and
//! checks it again. It prints the time of each phase, the pager's statistics and the peak
//! resident set size, and exits non-zero if any check fails.
//!
//! `--mmap` does the same work through kernel `mmap(MAP_SHARED)` of the file (the flush is
//! `msync(MS_SYNC)`). `--versus-mmap N` runs the sort through umap and then through kernel
//! `mmap`, N rounds, and prints each round's sort times, their ratio and the median ratio: the
//! comparison issue 9's sort target asks for, made in one sitting. `--threads 128 --fillers 40 --evictors 40 --page-size 4K` is the classic
//! stress test of userfaultfd write protection: 128 sorting threads, 80 pager threads.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/median.rs"]
mod median;
#[path = "support/mix.rs"]
mod mix;

use mix::mix64;
use std::fmt;
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use umap::{FileStore, MapOptions, Umap};

const USAGE: &str = "\
usage: sort [OPTIONS]

  --size BYTES       data to sort (default 1G; a multiple of 8: whole u64 words)
  --buffer BYTES     umap buffer: the most data resident at once (default 128M)
  --page-size BYTES  umap page size (default 64K)
  --threads N        sorting threads (default: the number of CPUs)
  --fillers N        umap filler threads (default: the engine's)
  --evictors N       umap evictor threads (default: the engine's)
  --file PATH        write the data to PATH (which must not exist) instead of a temporary
                     directory
  --keep             keep the sorted file afterwards (it is deleted by default)
  --mmap             do the same work through kernel mmap(MAP_SHARED), for comparison
  --direct           umap reads and writes the file with O_DIRECT
  --mapped-reads     umap copies sequential runs from a read-only mapping of the file
                     (FileStoreOptions::mapped_reads)
  --versus-mmap N    sort through umap, then through kernel mmap, N rounds (at most 100),
                     and print the sort times of each round, umap/mmap, and the median
  -h, --help         this text

BYTES takes a suffix K, M, G, KiB, MiB or GiB (all binary: 1K = 1024).
The UMAP_* environment variables (UMAP_BUFSIZE, UMAP_PAGESIZE, UMAP_PAGE_FILLERS,
UMAP_READ_AHEAD ...) configure the pager too; the flags above override them.";

/// Seed of the random input (the word at index `i` is `mix64(SEED ^ i)`).
const SEED: u64 = 0x736f_7274_2d75_6d61;
/// Bytes the input is written and the output read back in.
const CHUNK: usize = 8 << 20;
/// The most rounds `--versus-mmap` takes.
const MAX_ROUNDS: usize = 100;
/// Words each verification task summarises.
const VERIFY_WORDS: usize = 1 << 16;

// ---------------------------------------------------------------------------------------------
// Command line

/// What the command line asked for, with defaults applied.
#[derive(Debug, Clone)]
struct Args {
    size: u64,
    /// `None`: `UMAP_BUFSIZE` if set, else 128 MiB.
    buffer: Option<usize>,
    /// `None`: `UMAP_PAGESIZE` if set, else 64 KiB.
    page_size: Option<usize>,
    threads: usize,
    fillers: Option<usize>,
    evictors: Option<usize>,
    file: Option<PathBuf>,
    keep: bool,
    mmap: bool,
    direct: bool,
    mapped_reads: bool,
    /// `--versus-mmap`: rounds of a umap run then an mmap run.
    versus_mmap: Option<usize>,
}

enum Parsed {
    Run(Args),
    Help,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut a = Args {
        size: 1 << 30,
        buffer: None,
        page_size: None,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        fillers: None,
        evictors: None,
        file: None,
        keep: false,
        mmap: false,
        direct: false,
        mapped_reads: false,
        versus_mmap: None,
    };
    // Options that mean nothing with --mmap, to refuse them there.
    let mut umap_only = Vec::new();
    let mut flags = cli::Flags::new(args);
    while let Some(name) = flags.next_flag() {
        match name.as_str() {
            "--size" => a.size = flags.size()?,
            "--buffer" => a.buffer = Some(flags.size_usize()?),
            "--page-size" => a.page_size = Some(flags.size_usize()?),
            "--threads" => a.threads = flags.count()?,
            "--fillers" => a.fillers = Some(flags.count()?),
            "--evictors" => a.evictors = Some(flags.count()?),
            "--file" => a.file = Some(PathBuf::from(flags.value()?)),
            "--keep" => a.keep = true,
            "--mmap" => a.mmap = true,
            "--direct" => a.direct = true,
            "--mapped-reads" => a.mapped_reads = true,
            "--versus-mmap" => a.versus_mmap = Some(flags.count()?),
            "-h" | "--help" => return Ok(Parsed::Help),
            _ => return Err(format!("unknown argument `{name}`")),
        }
        if matches!(
            name.as_str(),
            "--buffer" | "--page-size" | "--fillers" | "--evictors" | "--direct" | "--mapped-reads"
        ) {
            umap_only.push(name);
        }
    }
    if a.mmap && !umap_only.is_empty() {
        return Err(format!(
            "{}: umap options, which do not apply with --mmap (the kernel pages the mapping)",
            umap_only.join(", ")
        ));
    }
    if let Some(rounds) = a.versus_mmap {
        if a.mmap {
            return Err("--versus-mmap runs both umap and kernel mmap: leave out --mmap".into());
        }
        if a.keep {
            return Err(
                "--keep keeps one run's file, and --versus-mmap makes several: use one or the \
                 other"
                    .into(),
            );
        }
        if rounds > MAX_ROUNDS {
            return Err(format!(
                "--versus-mmap: {rounds} rounds is too many (at most {MAX_ROUNDS})"
            ));
        }
    }
    if a.size == 0 || a.size % 8 != 0 {
        return Err(format!(
            "--size: {} bytes is not a positive multiple of 8 (the data is whole u64 words)",
            a.size
        ));
    }
    if usize::try_from(a.size).is_err() || a.size > isize::MAX as u64 {
        return Err(format!("--size: {} bytes cannot be mapped", a.size));
    }
    if a.threads > 4096 {
        return Err(format!(
            "--threads: {} is too many (at most 4096)",
            a.threads
        ));
    }
    if let Some(path) = &a.file {
        if path.exists() {
            return Err(format!(
                "--file: {} exists; the sort writes its own random data there, so give a path \
                 that does not exist yet",
                path.display()
            ));
        }
    }
    Ok(Parsed::Run(a))
}

// ---------------------------------------------------------------------------------------------
// Checks

/// The input word at index `i`.
fn input_word(i: u64) -> u64 {
    mix64(SEED ^ i)
}

/// Order-independent digest of a multiset of words: equal for the input and any permutation
/// of it; a lost, duplicated or changed word changes it (all but certainly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Digest {
    count: u64,
    sum: u64,
    xor: u64,
    /// Wrapping sum of `mix64(word)`: catches changes that keep the sum and the xor.
    hash_sum: u64,
}

impl Digest {
    fn add(&mut self, w: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(w);
        self.xor ^= w;
        self.hash_sum = self.hash_sum.wrapping_add(mix64(w));
    }

    fn merge(self, o: Digest) -> Digest {
        Digest {
            count: self.count + o.count,
            sum: self.sum.wrapping_add(o.sum),
            xor: self.xor ^ o.xor,
            hash_sum: self.hash_sum.wrapping_add(o.hash_sum),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "count {}, sum {:#018x}, xor {:#018x}, hash sum {:#018x}",
            self.count, self.sum, self.xor, self.hash_sum
        )
    }
}

/// What verification needs to know of a run of consecutive words.
#[derive(Debug, Clone, Copy)]
struct Summary {
    digest: Digest,
    /// Index (within the summarised words) of the first `i` with `w[i] > w[i + 1]`.
    first_inversion: Option<u64>,
    first: u64,
    last: u64,
    len: u64,
}

impl Summary {
    fn of(words: &[u64]) -> Summary {
        let mut digest = Digest::default();
        words.iter().for_each(|&w| digest.add(w));
        Summary {
            digest,
            first_inversion: words.windows(2).position(|p| p[0] > p[1]).map(|i| i as u64),
            first: words.first().copied().unwrap_or(0),
            last: words.last().copied().unwrap_or(0),
            len: words.len() as u64,
        }
    }

    /// The summary of `self`'s words followed by `next`'s.
    fn then(self, next: Summary) -> Summary {
        if self.len == 0 {
            return next;
        }
        if next.len == 0 {
            return self;
        }
        let first_inversion = self
            .first_inversion
            .or((self.last > next.first).then_some(self.len - 1))
            .or(next.first_inversion.map(|i| self.len + i));
        Summary {
            digest: self.digest.merge(next.digest),
            first_inversion,
            first: self.first,
            last: next.last,
            len: self.len + next.len,
        }
    }

    fn empty() -> Summary {
        Summary {
            digest: Digest::default(),
            first_inversion: None,
            first: 0,
            last: 0,
            len: 0,
        }
    }
}

/// Summarises `words` in parallel (on the current rayon pool).
fn summarise(words: &[u64]) -> Summary {
    words
        .par_chunks(VERIFY_WORDS)
        .map(Summary::of)
        .collect::<Vec<_>>()
        .into_iter()
        .fold(Summary::empty(), Summary::then)
}

/// Checks that `summary` describes a sorted permutation of the input, whose digest is `input`.
fn check(what: &str, summary: &Summary, input: &Digest) -> Result<(), Failure> {
    if summary.digest != *input {
        return Err(Failure::Verify(format!(
            "{what} holds other words than the input:\n  input: {input}\n  found: {}",
            summary.digest
        )));
    }
    if let Some(i) = summary.first_inversion {
        return Err(Failure::Verify(format!(
            "{what} is not sorted: word {i} is greater than word {}",
            i + 1
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors, progress, phases

/// Why the run failed.
#[derive(Debug)]
enum Failure {
    /// A check of the data failed.
    Verify(String),
    /// The work could not be done.
    Run(String),
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Run(e.to_string())
    }
}

/// A progress bar on stderr if it is a terminal, else a hidden one.
fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(what.to_string());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:40}] {binary_bytes}/{binary_total_bytes} {elapsed}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// A spinner on stderr if it is a terminal, for work whose progress is unknown.
fn spinner(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(what.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} {spinner} {elapsed}").expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The phases' times, in order.
#[derive(Default)]
struct Phases(Vec<(&'static str, Duration)>);

impl Phases {
    /// Runs `f` as phase `name`, timing it.
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0.push((name, t.elapsed()));
        out
    }

    fn print(&self, bytes: u64) {
        println!("{:<14} {:>9} {:>9}", "phase", "seconds", "MB/s");
        for (name, t) in &self.0 {
            // Mapping and unmapping (after the flush) do not move the data.
            let rate = if matches!(*name, "map" | "unmap") {
                "-".to_string()
            } else {
                format!("{:.1}", bytes as f64 / 1e6 / t.as_secs_f64().max(1e-9))
            };
            println!("{name:<14} {:>9.3} {rate:>9}", t.as_secs_f64());
        }
        let total: Duration = self.0.iter().map(|(_, t)| *t).sum();
        println!("{:<14} {:>9.3}", "total", total.as_secs_f64());
    }

    fn get(&self, name: &str) -> Option<Duration> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }
}

/// Peak resident set size of this process in bytes (`VmHWM`).
fn peak_rss() -> Result<u64, Failure> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| Failure::Run("no VmHWM in /proc/self/status".into()))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

// ---------------------------------------------------------------------------------------------
// The work

/// Writes `size` bytes of input words to a new file at `path`; returns their digest.
fn write_input(path: &Path, size: u64, pool: &rayon::ThreadPool) -> Result<Digest, Failure> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Failure::Run(format!("creating {}: {e}", path.display())))?;
    let bar = progress(size, "writing input");
    let mut words = vec![0u64; CHUNK / 8];
    let mut bytes = vec![0u8; CHUNK];
    let mut digest = Digest::default();
    let mut done = 0u64;
    while done < size {
        let n = ((size - done) as usize).min(CHUNK) / 8;
        let first = done / 8;
        let part = &mut words[..n];
        pool.install(|| {
            part.par_iter_mut()
                .enumerate()
                .for_each(|(i, w)| *w = input_word(first + i as u64))
        });
        part.iter().for_each(|&w| digest.add(w));
        for (out, w) in bytes.chunks_exact_mut(8).zip(part.iter()) {
            out.copy_from_slice(&w.to_ne_bytes());
        }
        file.write_all(&bytes[..n * 8])
            .map_err(|e| Failure::Run(format!("writing {}: {e}", path.display())))?;
        done += (n * 8) as u64;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    Ok(digest)
}

/// Reads the file at `path` back and summarises its words.
fn read_back(path: &Path, pool: &rayon::ThreadPool) -> Result<Summary, Failure> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let bar = progress(len, "reading back");
    let mut words = vec![0u64; CHUNK / 8];
    let mut summary = Summary::empty();
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(CHUNK);
        if n % 8 != 0 {
            return Err(Failure::Verify(format!(
                "{} is {len} bytes long, not whole words",
                path.display()
            )));
        }
        let part = &mut words[..n / 8];
        // SAFETY: `part` is `n` initialised bytes of u64s, viewed as bytes (u8 has no alignment
        // requirement, and every byte pattern is a valid u64 afterwards).
        let as_bytes = unsafe { std::slice::from_raw_parts_mut(part.as_mut_ptr().cast::<u8>(), n) };
        file.read_exact(as_bytes)?;
        summary = summary.then(pool.install(|| summarise(part)));
        done += n as u64;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// Views `bytes` (the whole of a mapping, whose base is page-aligned) as words.
fn as_words(bytes: &mut [u8]) -> Result<&mut [u64], Failure> {
    // SAFETY: every bit pattern is a valid u64, and any u8 is a valid part of one; align_to_mut
    // puts only correctly aligned u64s in the middle part.
    let (head, words, tail) = unsafe { bytes.align_to_mut::<u64>() };
    if !head.is_empty() || !tail.is_empty() {
        return Err(Failure::Run(format!(
            "the mapping is not whole aligned words ({} bytes before, {} after)",
            head.len(),
            tail.len()
        )));
    }
    Ok(words)
}

/// Sorts `words` on `pool` and summarises the result (in the mapping).
fn sort_and_check_mapping(
    phases: &mut Phases,
    pool: &rayon::ThreadPool,
    words: &mut [u64],
    input: &Digest,
) -> Result<(), Failure> {
    phases.run("sort", || {
        let bar = spinner("sorting");
        pool.install(|| words.par_sort_unstable());
        bar.finish_and_clear();
    });
    let summary = phases.run("verify mapping", || {
        let bar = spinner("verifying");
        let s = pool.install(|| summarise(words));
        bar.finish_and_clear();
        s
    });
    check("the mapping after sorting", &summary, input)
}

/// Sorts the file at `path` through umap.
fn sort_umap(
    args: &Args,
    phases: &mut Phases,
    pool: &rayon::ThreadPool,
    path: &Path,
    input: &Digest,
) -> Result<(), Failure> {
    // The example's defaults, then the UMAP_* variables, then the flags.
    let mut builder = Umap::builder()
        .buffer_size(128 << 20)
        .page_size(64 << 10)
        .env()?;
    if let Some(bytes) = args.buffer {
        builder = builder.buffer_size(bytes);
    }
    if let Some(bytes) = args.page_size {
        builder = builder.page_size(bytes);
    }
    if let Some(n) = args.fillers {
        builder = builder.fillers(n);
    }
    if let Some(n) = args.evictors {
        builder = builder.evictors(n);
    }
    let (umap, mut region) = phases.run("map", || -> Result<_, Failure> {
        let umap = builder.start()?;
        let store = FileStore::options()
            .direct(args.direct)
            .mapped_reads(args.mapped_reads)
            .open(path)?;
        let region = umap.map(store, MapOptions::new().writable(true))?;
        Ok((umap, region))
    })?;
    let config = umap.config();
    println!(
        "umap: buffer {:.0} MiB, page {} KiB, fillers {}, evictors {}, userfaultfd via {}{}",
        mib(config.buffer_size as u64),
        region.page_size() >> 10,
        config.fillers,
        config.evictors,
        umap.open_method(),
        if args.direct {
            ", O_DIRECT"
        } else if args.mapped_reads {
            ", mapped reads"
        } else {
            ""
        }
    );
    let words = as_words(region.as_mut_slice()?)?;
    let sorted = sort_and_check_mapping(phases, pool, words, input);
    if sorted.is_ok() {
        phases.run("flush", || region.flush())?;
    }
    let unmapped = phases.run("unmap", || region.unmap());
    println!("\npager statistics:\n{}", umap.stats());
    sorted?;
    unmapped?;
    Ok(())
}

/// A writable shared kernel mapping of a whole file, unmapped on drop.
struct FileMap {
    addr: *mut libc::c_void,
    len: usize,
}

impl FileMap {
    fn new(file: &File, len: usize) -> std::io::Result<FileMap> {
        // SAFETY: a fresh mapping at an address of the kernel's choosing; `file` is open for
        // the call (the mapping keeps its own reference to it afterwards).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileMap { addr, len })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `addr..addr + len` is mapped readable and writable until `self` drops, which
        // the borrow prevents; its bytes come from the file, which this program created and
        // nobody else changes or truncates, so they are initialised; the exclusive borrow of
        // `self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.addr.cast::<u8>(), self.len) }
    }

    /// `msync(MS_SYNC)`: the dirty pages written back to the file, and waited for.
    fn sync(&self) -> std::io::Result<()> {
        // SAFETY: the range is this mapping; msync changes no memory.
        if unsafe { libc::msync(self.addr, self.len, libc::MS_SYNC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn unmap(self) -> std::io::Result<()> {
        let (addr, len) = (self.addr, self.len);
        std::mem::forget(self);
        // SAFETY: the mapping was owned by `self`, which is gone; no borrow of it remains.
        if unsafe { libc::munmap(addr, len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by `self`, and no borrow of it outlives `self`.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Sorts the file at `path` through kernel `mmap(MAP_SHARED)`.
fn sort_mmap(
    phases: &mut Phases,
    pool: &rayon::ThreadPool,
    path: &Path,
    size: usize,
    input: &Digest,
) -> Result<(), Failure> {
    let mut map = phases.run("map", || -> Result<_, Failure> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(FileMap::new(&file, size)?)
    })?;
    println!("kernel mmap(MAP_SHARED), no memory limit");
    let words = as_words(map.as_mut_slice())?;
    sort_and_check_mapping(phases, pool, words, input)?;
    phases.run("flush", || map.sync())?;
    phases.run("unmap", || map.unmap())?;
    Ok(())
}

/// Sorts once, as `args` say, printing the phases; returns the time of the sort phase.
/// `rss`: also print the process's peak RSS (meaningless after an earlier run in the same
/// process, so `--versus-mmap` leaves it out).
fn run(args: &Args, rss: bool) -> Result<Duration, Failure> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .thread_name(|i| format!("sort-{i}"))
        .build()
        .map_err(|e| Failure::Run(format!("starting {} sorting threads: {e}", args.threads)))?;

    let mut tempdir = None;
    let path = match &args.file {
        Some(p) => p.clone(),
        None => {
            let dir = tempfile::Builder::new().prefix("umap-sort-").tempdir()?;
            let path = dir.path().join("words.bin");
            tempdir = Some(dir);
            path
        }
    };
    println!(
        "sort: {:.0} MiB of random u64s ({} words) in {}, {} sorting threads, {}",
        mib(args.size),
        args.size / 8,
        path.display(),
        args.threads,
        if args.mmap { "kernel mmap" } else { "umap" }
    );

    let mut phases = Phases::default();
    let result = (|| {
        let input = phases.run("write input", || write_input(&path, args.size, &pool))?;
        let size = args.size as usize;
        if args.mmap {
            sort_mmap(&mut phases, &pool, &path, size, &input)?;
        } else {
            sort_umap(args, &mut phases, &pool, &path, &input)?;
        }
        let summary = phases.run("verify file", || read_back(&path, &pool))?;
        check("the file after unmap", &summary, &input)?;
        println!("input digest: {input}");
        Ok::<(), Failure>(())
    })();
    let sorted = phases.get("sort");

    // The file goes (unless kept) before anything else can fail.
    if args.keep {
        // A kept temporary directory is left on disk.
        tempdir.map(tempfile::TempDir::keep);
    } else if args.file.is_some() {
        std::fs::remove_file(&path)?;
    } else {
        drop(tempdir);
    }

    println!();
    phases.print(args.size);
    if rss {
        let peak = peak_rss()?;
        println!(
            "peak RSS {:.1} MiB ({:.1}% of the data)",
            mib(peak),
            peak as f64 * 100.0 / args.size as f64
        );
    }
    if let Some(sort) = phases.get("sort") {
        println!(
            "sort: {:.1} M words/s",
            args.size as f64 / 8.0 / 1e6 / sort.as_secs_f64().max(1e-9)
        );
    }
    if args.keep {
        println!("kept {}", path.display());
    }
    result?;
    sorted.ok_or_else(|| Failure::Run("the sort phase did not run".into()))
}

/// `--versus-mmap`: `rounds` rounds of the sort through umap, then through kernel `mmap`
/// (the same data, written afresh for each run); prints each round's sort times and their
/// ratio, then the median ratio. Returns the (umap, mmap) sort times of each round.
fn versus_mmap(args: &Args, rounds: usize) -> Result<Vec<(Duration, Duration)>, Failure> {
    let mut times = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let sort_with = |mmap: bool| {
            let name = if mmap { "kernel mmap" } else { "umap" };
            println!("\n== round {round} of {rounds}: {name}");
            run(
                &Args {
                    mmap,
                    ..args.clone()
                },
                false,
            )
        };
        let umap = sort_with(false)?;
        let mmap = sort_with(true)?;
        times.push((umap, mmap));
    }
    let ratios: Vec<f64> = times
        .iter()
        .map(|(u, m)| u.as_secs_f64() / m.as_secs_f64().max(1e-9))
        .collect();
    println!("\nround  umap sort s  mmap sort s  umap/mmap");
    for (i, ((u, m), r)) in times.iter().zip(&ratios).enumerate() {
        println!(
            "{:>5}  {:>11.3}  {:>11.3}  {:>8.2}x",
            i + 1,
            u.as_secs_f64(),
            m.as_secs_f64(),
            r
        );
    }
    let (low, high) = median::min_max(&ratios).unwrap_or((f64::NAN, f64::NAN));
    println!(
        "median umap/mmap {:.2}x (range {low:.2}-{high:.2}x) over {rounds} round(s)",
        median::median(&ratios).unwrap_or(f64::NAN)
    );
    Ok(times)
}

/// Runs the program with `args` (without the program name); returns its exit status: 0 when
/// every check passed, 1 on a failed check or an error, 2 on bad arguments.
pub fn run_cli(args: impl IntoIterator<Item = String>) -> u8 {
    let args = match parse_args(args) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("sort: {e} (see --help)");
            return 2;
        }
    };
    let result = match args.versus_mmap {
        Some(rounds) => versus_mmap(&args, rounds).map(drop),
        None => run(&args, true).map(drop),
    };
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => {
            println!("all checks passed");
            0
        }
        Err(Failure::Verify(e)) => {
            eprintln!("sort: CHECK FAILED: {e}");
            1
        }
        Err(Failure::Run(e)) => {
            eprintln!("sort: error: {e}");
            1
        }
    }
}

#[allow(dead_code)] // unused where a test includes this file
fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(run_cli(std::env::args().skip(1)))
}
