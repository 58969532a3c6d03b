//! Durability of `Region::flush`: what a process flushed is in the file even if the process
//! is killed right after, while it goes on writing; and a flush includes every write made
//! before it, even to a page whose fill the engine is still finishing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

const PAGE: usize = 4 * KIB;
/// The engine's buffer: the flushed data is three times larger, so part of it is written
/// back by eviction before the flush, and part is still dirty in memory when flush runs.
const BUFFER: usize = 2 * MIB;
/// Written once before the flush and never again: must be in the file exactly.
const STABLE_LEN: usize = 6 * MIB;
/// Written before the flush, then rewritten and flushed again and again until the process
/// is killed: each word must hold a whole value written after the first flush.
const CHURN_LEN: usize = 256 * KIB;
const FILE_LEN: usize = STABLE_LEN + CHURN_LEN;

/// The file's contents before the child runs.
const INITIAL_SEED: u64 = 0x1417;
/// What the child writes and flushes.
const FLUSHED_SEED: u64 = 0xF1A5;
/// The top 16 bits of every word the child writes to the churn area after its flush; bits
/// 16..48 are the round, the low 16 bits the word's index in the area.
const LATER_TAG: u64 = 0xD1E7 << 48;

const CHILD_ENV: &str = "UMAP_TEST_DURABILITY_CHILD";

/// The flushed value of word `i` of the file.
fn flushed_word(i: usize) -> u64 {
    u64::from_le_bytes(
        common::pattern(FLUSHED_SEED, (i * 8) as u64, 8)
            .try_into()
            .unwrap(),
    )
}

/// The value the child writes to word `i` of the churn area in `round`.
fn later_word(round: u64, i: usize) -> u64 {
    LATER_TAG | (round & 0xFFFF_FFFF) << 16 | i as u64
}

/// The round of `w` if it is a value the child writes to word `i` of the churn area after
/// its flush.
fn round_of(i: usize, w: u64) -> Option<u64> {
    (w >> 48 == LATER_TAG >> 48 && w & 0xFFFF == i as u64).then_some((w >> 16) & 0xFFFF_FFFF)
}

/// Runs in a child process (see `flushed_data_survives_sigkill`): maps the file named by
/// the environment writable, writes and flushes it, says so, then rewrites and flushes the
/// churn area until killed, saying after each flush which round it covered. Does nothing
/// when run as an ordinary test.
#[test]
fn durability_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    // Watermarks at 100% and 90%: eviction frees only what fills need, a tenth of the
    // buffer at a time, so when the writes below are done at least 90% of the buffer minus
    // the batch being evicted (10%) and the read-ahead window is resident and dirty, however
    // far the evictor got: over 1.5 MiB, where the parent asks for half the buffer. A 16-page
    // read-ahead window: the engine's default (256 pages, a 1 MiB run) is half of this buffer,
    // and its clean pages ahead of the writes would count against that.
    let (umap, mut region) = common::map_file_writable_with(
        umap::Umap::builder()
            .buffer_size(BUFFER)
            .fillers(2)
            .evictors(1)
            .watermarks(100, 90)
            .read_ahead(16),
        std::path::Path::new(&path),
        PAGE,
    );
    let data = region
        .as_mut_slice()
        .expect("a writable region has a mutable slice");
    assert_eq!(data.len(), FILE_LEN);
    // The churn area first, so the stable area's pages are the most recently dirtied: many
    // are still dirty in memory when flush runs, and when the churn area is faulted back in
    // afterwards, eviction (FIFO) takes only the oldest of them.
    common::fill_pattern(
        FLUSHED_SEED,
        STABLE_LEN as u64,
        &mut data[STABLE_LEN..FILE_LEN],
    );
    common::fill_pattern(FLUSHED_SEED, 0, &mut data[..STABLE_LEN]);
    // What a no-op flush would leave unwritten (the parent checks it is a good part of the
    // buffer, so that the test keeps testing flush and not only eviction), and how many pages
    // were written during the flush: every page dirty when it began is written back after the
    // first count was taken and before the flush returns (it waits for pages that an evictor
    // is writing back), so at least `dirty_before` bytes' worth.
    let written_before = umap.stats().pages_written;
    let dirty_before = region.dirty_bytes();
    region.flush().expect("flush");
    let stats = umap.stats();
    say(&format!(
        "FLUSHED dirty_before={dirty_before} dirty_evictions={} written_by_flush={}",
        stats.dirty_evictions,
        stats.pages_written - written_before
    ));

    // Then a writer thread rewrites the churn area round after round, while this thread
    // flushes that area again and again, so pages are written back while being written.
    let churn = region.as_mut_ptr().wrapping_add(STABLE_LEN) as usize;
    let rounds = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let region = &region;
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0u64.. {
                for i in 0..CHURN_LEN / 8 {
                    let w = later_word(round, i);
                    // SAFETY: `churn` is the start of the churn area, 8-aligned (the
                    // page-aligned base plus STABLE_LEN); the area is CHURN_LEN bytes of the
                    // writable region, which stays mapped for this scope; i < CHURN_LEN / 8.
                    // Only this thread writes there.
                    unsafe { (churn as *mut u64).add(i).write_volatile(w) };
                }
                rounds.store(round + 1, Ordering::Release);
                // Never outlive a parent that failed to kill us.
                if Instant::now() > deadline {
                    std::process::exit(5);
                }
            }
        });
        let mut said = 0;
        loop {
            // Rounds before `done` were complete before this flush began: once it returns,
            // the file holds round `done - 1` or a later one at every word.
            let done = rounds.load(Ordering::Acquire);
            region
                .flush_range(STABLE_LEN, CHURN_LEN)
                .expect("flush_range");
            if done > said {
                say(&format!("CHURN_FLUSHED {}", done - 1));
                said = done;
            }
            if Instant::now() > deadline {
                std::process::exit(5);
            }
        }
    });
}

/// Prints `line` to stdout and flushes it.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Kills `child` when dropped, so no failed assertion leaves it running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process writes a pattern over a writable mapping larger than the buffer,
/// flushes, and is killed with SIGKILL while it keeps writing: the file holds every flushed
/// byte (a no-op flush would leave the initial contents in the pages still dirty in memory),
/// and an area rewritten and flushed again and again (with writes and flushes overlapping)
/// holds, at every word, a whole value written before its last completed flush or after.
#[test]
fn flushed_data_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::pattern_file(dir.path(), "data", INITIAL_SEED, FILE_LEN as u64);
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "durability_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Read the child's stdout on a thread, so that waiting for a line can time out.
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let stderr_of = |child: &mut KillOnDrop| {
        let _ = child.0.kill();
        let mut err = String::new();
        if let Some(mut e) = child.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        err
    };
    let wait_for = |prefix: &str, child: &mut KillOnDrop| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // The harness may have printed "test durability_child ... " on the line.
                Ok(line) => {
                    if let Some(at) = line.find(prefix) {
                        return line[at..].to_string();
                    }
                }
                Err(e) => panic!(
                    "no {prefix:?} line from the child ({e}); stderr:\n{}",
                    stderr_of(child)
                ),
            }
        }
    };
    let flushed = wait_for("FLUSHED", &mut child);
    let first_churn = wait_for("CHURN_FLUSHED", &mut child);
    // Let rounds of writes and flushes overlap for a while (any length will do), then kill
    // the child in the middle of them.
    std::thread::sleep(Duration::from_millis(200));
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }
    // The last round a completed flush covered (a line cut short by the kill reads lower).
    let covered = std::iter::once(first_churn)
        .chain(rx.iter())
        .filter_map(|line| {
            let at = line.find("CHURN_FLUSHED ")?;
            line[at + "CHURN_FLUSHED ".len()..]
                .trim()
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();

    let field = |name: &str| -> u64 {
        flushed
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {flushed:?}"))
    };
    // Some of the flushed data went through eviction before the flush, and much of it was
    // still dirty in memory when flush ran (see the child's watermarks) and was written while
    // it ran.
    assert!(field("dirty_evictions") > 0, "{flushed}");
    assert!(field("dirty_before") >= (BUFFER / 2) as u64, "{flushed}");
    assert!(
        field("written_by_flush") >= field("dirty_before") / PAGE as u64,
        "{flushed}"
    );

    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), FILE_LEN, "the file keeps its length");
    check_flushed_area(&file[..STABLE_LEN]);
    // The file holds, at every word of the churn area, a whole value of the last round a
    // flush covered or of a later one (written back by a later flush or by eviction).
    let mut rounds = std::collections::BTreeSet::new();
    for (i, chunk) in file[STABLE_LEN..].chunks_exact(8).enumerate() {
        let w = u64::from_ne_bytes(chunk.try_into().unwrap());
        match round_of(i, w) {
            Some(round) if round >= covered => {
                rounds.insert(round);
            }
            _ => panic!(
                "word {i} of the rewritten area is {w:#018x}: neither round {covered}, which a \
                 completed flush covered ({:#018x}), nor a later round (its value at the first \
                 flush was {:#018x})",
                later_word(covered, i),
                flushed_word(STABLE_LEN / 8 + i)
            ),
        }
    }
    eprintln!(
        "flushes covered round {covered}; the rewritten area holds rounds {:?} to {:?}",
        rounds.first(),
        rounds.last()
    );
}

/// Asserts that the stable area of the file holds what the child flushed, naming the pages
/// that do not and how many of them still hold the initial contents (never written back).
fn check_flushed_area(got: &[u8]) {
    let want = common::pattern(FLUSHED_SEED, 0, got.len());
    let initial = common::pattern(INITIAL_SEED, 0, got.len());
    let bad: Vec<usize> = (0..got.len() / PAGE)
        .filter(|p| got[p * PAGE..][..PAGE] != want[p * PAGE..][..PAGE])
        .collect();
    if let Some(&first) = bad.first() {
        let never_written = bad
            .iter()
            .filter(|&&p| got[p * PAGE..][..PAGE] == initial[p * PAGE..][..PAGE])
            .count();
        panic!(
            "{} of {} flushed pages differ in the file, the first at offset {} ({never_written} \
             of them still hold the initial contents)",
            bad.len(),
            got.len() / PAGE,
            first * PAGE
        );
    }
}

/// A page whose first access is a write just before a flush (its fill may still be finishing
/// in the filler when the flush starts: the kernel wakes the writer as soon as the page is
/// installed) is written back by that flush: the file holds it when flush returns.
#[test]
fn flush_includes_pages_filled_for_a_write_just_before() {
    use std::os::unix::fs::FileExt;
    const LEN: usize = 8 * MIB;
    const ROUNDS: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let path = common::pattern_file(dir.path(), "data", INITIAL_SEED, LEN as u64);
    let reader = std::fs::File::open(&path).unwrap();
    // A buffer of an eighth of the file: pages come back absent on every pass.
    let (umap, mut region) = common::map_file_writable(&path, MIB, PAGE, 2, 1);
    let pairs = LEN / (2 * PAGE);
    let mut missed = Vec::new();
    for round in 0..ROUNDS {
        // Two adjacent pages, absent unless the pass just wrapped: the first is dirty when
        // the flush reaches the second.
        let at = (round % pairs) * 2 * PAGE;
        let value = LATER_TAG | (round as u64) << 16;
        let data = region.as_mut_slice().unwrap();
        for w in data[at..at + 2 * PAGE].chunks_exact_mut(8) {
            w.copy_from_slice(&value.to_ne_bytes());
        }
        region.flush_range(at, 2 * PAGE).expect("flush_range");
        let mut got = vec![0u8; 2 * PAGE];
        reader.read_exact_at(&mut got, at as u64).unwrap();
        for (page, bytes) in got.chunks_exact(PAGE).enumerate() {
            if bytes.chunks_exact(8).any(|w| w != value.to_ne_bytes()) {
                missed.push((round, at / PAGE + page));
            }
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {} pages written before a flush were not in the file when it returned \
         (round, page): {:?}\n{}",
        missed.len(),
        2 * ROUNDS,
        &missed[..missed.len().min(20)],
        umap.stats()
    );
}
