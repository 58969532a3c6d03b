//! The cost of dirty tracking: first writes to resident, clean pages.
//!
//! ```text
//! cargo bench --bench wp_faults -- [--quick] [--size BYTES] [--threads N] [--rounds N]
//! ```
//!
//! A file that fits in the buffer is mapped writable and read once (every page resident and
//! clean). Each round then writes one byte per page, from `--threads` threads splitting the
//! pages between them, and flushes. Through umap each of these writes is a write-protect
//! fault (`UFFDIO_WRITEPROTECT` to lift the protection, served by a filler thread); through
//! kernel `mmap(MAP_SHARED)` of the same file each is a kernel write fault (after `msync`
//! the kernel write-protects written-back pages to track the next write). No store I/O is in
//! the timed write phase of either: it measures the fault path alone. The flush (write-back
//! and `fdatasync`, or `msync(MS_SYNC)`) is timed separately.

#[path = "../examples/support/cli.rs"]
mod cli;
#[path = "support/faults.rs"]
mod faults;

use std::error::Error;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use umap::{FileStore, MapOptions, Umap};

type BoxError = Box<dyn Error + Send + Sync>;

const USAGE: &str = "\
usage: cargo bench --bench wp_faults -- [OPTIONS]

  --quick          small run (16 MiB, 3 rounds)
  --size BYTES     mapped file size (default 256 MiB); suffixes K, M, G
  --threads N      writer threads (default 2)
  --rounds N       write+flush rounds (default 5)
  -h, --help       this text";

struct Options {
    size: usize,
    threads: usize,
    rounds: usize,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut o = Options {
        size: 256 << 20,
        threads: 2,
        rounds: 5,
    };
    let mut flags = cli::Flags::new(std::env::args().skip(1));
    while let Some(arg) = flags.next_flag() {
        match arg.as_str() {
            "--bench" => {}
            "--quick" => {
                o.size = 16 << 20;
                o.rounds = 3;
            }
            "--size" => o.size = flags.size_usize()?,
            "--threads" => o.threads = flags.count()?,
            "--rounds" => o.rounds = flags.count()?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.size < 64 << 10 {
        return Err("--size: at least 64K".into());
    }
    Ok(Some(o))
}

/// A pointer writer threads share; each writes its own pages.
#[derive(Clone, Copy)]
struct Base(*mut u8);
// SAFETY: the threads write disjoint pages of a mapping that outlives them.
unsafe impl Send for Base {}
// SAFETY: as above.
unsafe impl Sync for Base {}

/// Writes one byte (`value`) at the start of every `step`-th byte of `[0, len)`, split
/// between `threads` threads; returns the time taken.
fn write_pages(base: Base, len: usize, step: usize, threads: usize, value: u8) -> Duration {
    let pages = len / step;
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                let base = base;
                barrier.wait();
                for p in (t..pages).step_by(threads) {
                    // SAFETY: p * step < len: inside the writable mapping, and no other
                    // thread writes page p.
                    unsafe { base.0.add(p * step).write_volatile(value) };
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

/// Reads one byte per `step` (to make every page resident); returns their sum.
fn read_pages(base: *const u8, len: usize, step: usize) -> u64 {
    (0..len / step)
        // SAFETY: inside the mapping.
        .map(|p| unsafe { base.add(p * step).read_volatile() } as u64)
        .sum()
}

struct Row {
    system: String,
    faults: u64,
    write: Duration,
    flush: Duration,
}

fn bench_umap(path: &std::path::Path, o: &Options, page: usize) -> Result<Row, BoxError> {
    // The UMAP_* variables first (e.g. UMAP_RECYCLE_PAGES=1), then the bench's own settings.
    let umap = Umap::builder()
        .env()?
        // Twice the data: the high-water mark is never reached, nothing is evicted.
        .buffer_size(2 * o.size)
        .page_size(page)
        .fillers(2)
        .start()?;
    let region = umap.map(FileStore::open(path)?, MapOptions::new().writable(true))?;
    read_pages(region.as_ptr(), region.len(), page);
    region.flush()?;
    let before = umap.stats();
    let (mut write, mut flush) = (Duration::ZERO, Duration::ZERO);
    for round in 0..o.rounds {
        write += write_pages(
            Base(region.as_mut_ptr()),
            region.len(),
            page,
            o.threads,
            round as u8 + 1,
        );
        let start = Instant::now();
        region.flush()?;
        flush += start.elapsed();
    }
    let after = umap.stats();
    let faults = after.wp_faults - before.wp_faults;
    let expected = (o.rounds * region.len() / page) as u64;
    if faults < expected || after.fills != before.fills {
        return Err(format!(
            "umap {page}: expected {expected} write-protect faults and no fills, got {faults} \
             and {} fills:\n{after}",
            after.fills - before.fills
        )
        .into());
    }
    region.unmap()?;
    Ok(Row {
        system: format!("umap {} KiB", page >> 10),
        faults,
        write,
        flush,
    })
}

fn bench_mmap(path: &std::path::Path, o: &Options) -> Result<Row, BoxError> {
    let file = File::options().read(true).write(true).open(path)?;
    let ps = umap::sys::page_size();
    // SAFETY: a fresh shared mapping of the whole file, unmapped below; nothing else maps it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            o.size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()).into());
    }
    let base = addr as *mut u8;
    let msync = || -> Result<(), BoxError> {
        // SAFETY: the range is the mapping made above.
        if unsafe { libc::msync(addr, o.size, libc::MS_SYNC) } != 0 {
            return Err(format!("msync: {}", std::io::Error::last_os_error()).into());
        }
        Ok(())
    };
    read_pages(base, o.size, ps);
    // Dirty then clean every page, so each page is in the page cache and write-protected.
    write_pages(Base(base), o.size, ps, 1, 0xEE);
    msync()?;
    let faults_before = faults::process_faults()?;
    let (mut write, mut flush) = (Duration::ZERO, Duration::ZERO);
    for round in 0..o.rounds {
        write += write_pages(Base(base), o.size, ps, o.threads, round as u8 + 1);
        let start = Instant::now();
        msync()?;
        flush += start.elapsed();
    }
    let faults = faults::process_faults()?.saturating_sub(faults_before);
    // SAFETY: unmaps the mapping made above; nothing uses it any more.
    unsafe { libc::munmap(addr, o.size) };
    Ok(Row {
        system: "kernel mmap".into(),
        faults,
        write,
        flush,
    })
}

fn run(o: &Options) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("wp-faults.bin");
    let file = File::create(&path)?;
    file.set_len(o.size as u64)?;
    drop(file);
    println!(
        "first writes to resident clean pages: {} MiB, {} writer thread(s), {} round(s), {} CPUs",
        o.size >> 20,
        o.threads,
        o.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rows = [
        bench_mmap(&path, o)?,
        bench_umap(&path, o, 4 << 10)?,
        bench_umap(&path, o, 64 << 10)?,
    ];
    // Every row makes the same pages writable again, round after round.
    let pages = (o.rounds * o.size / umap::sys::page_size()) as f64;
    let mmap_time = rows[0].write.as_secs_f64();
    println!(
        "{:<12} | {:>9} | {:>8} | {:>10} | {:>8} | {:>10} | {:>7} | {:>7}",
        "system", "faults", "write s", "faults/s", "µs/fault", "4K pages/s", "vs mmap", "flush s"
    );
    for r in &rows {
        let secs = r.write.as_secs_f64();
        let rate = r.faults as f64 / secs;
        println!(
            "{:<12} | {:>9} | {:>8.3} | {:>10.0} | {:>8.2} | {:>10.0} | {:>6.2}x | {:>7.3}",
            r.system,
            r.faults,
            secs,
            rate,
            1e6 / rate,
            pages / secs,
            mmap_time / secs,
            r.flush.as_secs_f64()
        );
    }
    println!(
        "faults: umap write-protect faults; for kernel mmap, the process's page faults during \
         the write phases (one per folio, which may span several 4 KiB pages). 4K pages/s: \
         system pages whose first write was tracked, per second of write phase; vs mmap: the \
         same work's time ratio."
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Some(o)) => match run(&o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wp_faults: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("wp_faults: {e}");
            ExitCode::from(2)
        }
    }
}
