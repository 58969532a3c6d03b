//! Scan a file larger than the buffer through umap and check every byte against `pread`.
//!
//! ```text
//! cargo run --release --example scan -- [--file PATH] [--size BYTES] [--buffer BYTES]
//!     [--page-size BYTES] [--fillers N]
//! ```
//!
//! With no `--file` it writes a file of `--size` bytes (default 512 MiB) of pseudo-random data
//! to a temporary directory. It maps the file with a `--buffer` (default 32 MiB) buffer, reads
//! it sequentially and at random through the mapping, compares checksums with plain reads of
//! the file, and prints throughput and the pager's statistics. Exits non-zero on a mismatch.

#[path = "support/cli.rs"]
mod cli;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use umap::{FileStore, MapOptions, Umap};

struct Args {
    file: Option<PathBuf>,
    size: u64,
    buffer: usize,
    page_size: usize,
    fillers: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        file: None,
        size: 512 << 20,
        buffer: 32 << 20,
        page_size: 64 << 10,
        fillers: None,
    };
    let mut flags = cli::Flags::new(std::env::args().skip(1));
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--file" => args.file = Some(PathBuf::from(flags.value()?)),
            "--size" => args.size = flags.size()?,
            "--buffer" => args.buffer = flags.size_usize()?,
            "--page-size" => args.page_size = flags.size_usize()?,
            "--fillers" => args.fillers = Some(flags.count()?),
            "-h" | "--help" => {
                println!(
                    "usage: scan [--file PATH] [--size BYTES] [--buffer BYTES] [--page-size BYTES]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(args)
}

fn fnv(acc: u64, bytes: &[u8]) -> u64 {
    // Sum of 8-byte words, position-weighted: cheap and order-sensitive.
    bytes.chunks(8).enumerate().fold(acc, |a, (i, c)| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        a.wrapping_mul(31)
            .wrapping_add(u64::from_le_bytes(w) ^ i as u64)
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("scan: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("scan: {e}");
            std::process::exit(2);
        }
    };
    let _tmp;
    let path = match &args.file {
        Some(p) => p.clone(),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("scan.bin");
            let t = Instant::now();
            let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
            let mut x = 0x1234_5678_9abc_def0u64;
            let mut chunk = vec![0u8; 1 << 20];
            let mut left = args.size;
            while left > 0 {
                for w in chunk.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    w.copy_from_slice(&x.to_le_bytes());
                }
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            f.flush()?;
            println!("wrote {} MiB in {:.2?}", args.size >> 20, t.elapsed());
            _tmp = dir;
            path
        }
    };
    let file = std::fs::File::open(&path)?;
    let len = file.metadata()?.len() as usize;

    let mut builder = Umap::builder()
        .buffer_size(args.buffer)
        .page_size(args.page_size);
    if let Some(n) = args.fillers {
        builder = builder.fillers(n);
    }
    let umap = builder.start()?;
    let region = umap.map(FileStore::open_read_only(&path)?, MapOptions::new())?;
    let data = region.as_slice();

    let t = Instant::now();
    let mapped = data.chunks(1 << 20).fold(0, fnv);
    let seq = t.elapsed();
    let mut expected = 0;
    let mut chunk = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk.len());
        file.read_exact_at(&mut chunk[..n], off as u64)?;
        expected = fnv(expected, &chunk[..n]);
        off += n;
    }
    if mapped != expected {
        return Err(format!("checksum mismatch: mapped {mapped:#x}, file {expected:#x}").into());
    }
    println!(
        "sequential: {} MiB in {:.2?} ({:.0} MiB/s), checksum ok",
        len >> 20,
        seq,
        len as f64 / (1 << 20) as f64 / seq.as_secs_f64()
    );

    let reads = 100_000.min(len / 4096).max(1);
    let mut x = 42u64;
    let mut buf = [0u8; 64];
    let t = Instant::now();
    let mut mismatches = 0;
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x as usize % len.saturating_sub(64).max(1)) & !7;
        let n = 64.min(len - off);
        file.read_exact_at(&mut buf[..n], off as u64)?;
        if data[off..off + n] != buf[..n] {
            mismatches += 1;
        }
    }
    if mismatches > 0 {
        return Err(format!("{mismatches} random reads differ from the file").into());
    }
    let el = t.elapsed();
    println!(
        "random: {reads} reads checked in {el:.2?} ({:.0} reads/s)",
        reads as f64 / el.as_secs_f64()
    );
    println!("\npager statistics:\n{}", umap.stats());
    region.unmap()?;
    Ok(())
}
