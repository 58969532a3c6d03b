//! Every configuration knob takes effect: thread counts, watermarks, page size, buffer, event
//! batch size, read-ahead, the `UMAP_*` environment, the monitor, the log level, and the
//! default buffer under a cgroup memory limit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{check_pattern, eventually, pattern, ResidentMonitor};
use umap::{Config, MapOptions, MemStore, Region, Umap};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const SEED: u64 = 0xc0f1;
/// Set in a child process: which child body to run.
const CHILD: &str = "UMAP_CONFIG_TEST_CHILD";

/// Tests that start an engine run one at a time in this process (under `cargo test` they
/// would otherwise share it, and one test's engine threads would show in another's count).
static SERIAL: Mutex<()> = Mutex::new(());

fn scan(region: &Region, len: usize) {
    let data = region.as_slice();
    for off in (0..len).step_by(4 * KIB) {
        let n = (4 * KIB).min(len - off);
        check_pattern(SEED, off as u64, &data[off..off + n]);
    }
}

fn store(len: usize) -> MemStore {
    MemStore::from_vec(pattern(SEED, 0, len))
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[test]
fn thread_counts_take_effect() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (fillers, evictors) = (threads_named("umap-fill"), threads_named("umap-evict"));
    let umap = Umap::builder()
        .buffer_size(MIB)
        .fillers(3)
        .evictors(2)
        .start()
        .unwrap();
    // A thread names itself once it runs: give them a moment.
    assert!(
        eventually(|| threads_named("umap-fill").saturating_sub(fillers) == 3),
        "{} fillers",
        threads_named("umap-fill").saturating_sub(fillers)
    );
    assert!(eventually(|| threads_named("umap-evict")
        .saturating_sub(evictors)
        == 2));
    assert_eq!(threads_named("umap-monitor"), 0, "no monitor unless asked");
    drop(umap);
    assert_eq!(
        threads_named("umap-fill"),
        fillers,
        "threads stop with the engine"
    );
}

#[test]
fn watermarks_take_effect() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 64 pages of buffer; read 40 (62 %).
    let start = |high, low| {
        Umap::builder()
            .buffer_size(64 * 4 * KIB)
            .page_size(4 * KIB)
            .fillers(1)
            .read_ahead(0)
            .watermarks(high, low)
            .start()
            .unwrap()
    };
    let relaxed = start(90, 70);
    let region = relaxed.map(store(MIB), MapOptions::new()).unwrap();
    scan(&region, 40 * 4 * KIB);
    std::thread::sleep(Duration::from_millis(100));
    let s = relaxed.stats();
    assert_eq!(s.evictions, 0, "below the high-water mark: {s}");
    assert_eq!(s.resident_bytes, 40 * 4 * 1024);
    let eager = start(50, 20);
    let region = eager.map(store(MIB), MapOptions::new()).unwrap();
    scan(&region, 40 * 4 * KIB);
    // Past 50 % the evictors run until at most 20 % (12.8 pages) is resident.
    assert!(
        eventually(|| eager.stats().resident_bytes <= 12 * 4 * 1024),
        "{}",
        eager.stats()
    );
    assert!(eager.stats().high_water_hits >= 1);
}

#[test]
fn page_size_and_buffer_take_effect() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let umap = Umap::builder()
        .buffer_size(MIB)
        .page_size(16 * KIB)
        .fillers(2)
        .read_ahead(0)
        .start()
        .unwrap();
    assert_eq!(umap.stats().buffer_bytes, MIB as u64);
    let region = umap.map(store(8 * MIB), MapOptions::new()).unwrap();
    assert_eq!(region.page_size(), 16 * KIB);
    let monitor = ResidentMonitor::start(&umap, &region);
    scan(&region, 8 * MIB);
    assert!(monitor.finish() <= MIB, "the buffer was exceeded");
    let s = region.stats();
    assert_eq!(
        s.read_faults,
        (8 * MIB / (16 * KIB)) as u64,
        "one fault per 16 KiB"
    );
    assert_eq!(s.bytes_read, 8 * MIB as u64);
    // A region may choose its own page size.
    let other = umap
        .map(store(MIB), MapOptions::new().page_size(8 * KIB))
        .unwrap();
    scan(&other, MIB);
    assert_eq!(other.stats().read_faults, (MIB / (8 * KIB)) as u64);
}

#[test]
fn max_fault_events_bounds_each_batch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let umap = Umap::builder()
        .buffer_size(4 * MIB)
        .page_size(4 * KIB)
        .fillers(1)
        .max_fault_events(1)
        .start()
        .unwrap();
    let region = umap.map(store(MIB), MapOptions::new()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let region = &region;
            s.spawn(move || {
                let data = region.as_slice();
                for off in (t * 4 * KIB..MIB).step_by(16 * KIB) {
                    std::hint::black_box(data[off]);
                }
            });
        }
    });
    let s = umap.stats();
    assert_eq!(s.event_batches, s.read_faults, "one event per read: {s}");
}

#[test]
fn read_ahead_default_applies_to_regions_unless_they_choose() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let umap = Umap::builder()
        .buffer_size(4 * MIB)
        .page_size(4 * KIB)
        .fillers(1)
        .read_ahead(7)
        .start()
        .unwrap();
    let with = umap.map(store(2 * MIB), MapOptions::new()).unwrap();
    scan(&with, 2 * MIB);
    assert!(with.stats().read_ahead_pages > 0);
    assert!(with.stats().read_faults <= 2 * MIB as u64 / (4 * 1024) / 7 + 2);
    let without = umap
        .map(store(2 * MIB), MapOptions::new().read_ahead(0))
        .unwrap();
    scan(&without, 2 * MIB);
    assert_eq!(without.stats().read_ahead_pages, 0);
    let err = umap
        .map(
            store(MIB),
            MapOptions::new().read_ahead(umap::MAX_READ_AHEAD + 1),
        )
        .unwrap_err();
    assert!(err.to_string().contains("read_ahead"), "{err}");
}

#[test]
fn the_default_buffer_is_half_the_available_memory() {
    let available = || -> usize {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .map(|kib: usize| kib * 1024)
            .unwrap()
    };
    let before = available();
    let buffer = Config::default().buffer_size;
    let after = available();
    // MemAvailable moves while we look (other tests run): half of it, 10 % either way. (This
    // process's cgroup has no memory limit here; the cgroup test covers one that has.)
    let (low, high) = (before.min(after) as f64, before.max(after) as f64);
    assert!(
        buffer as f64 >= low * 0.45 && buffer as f64 <= high * 0.55,
        "buffer {buffer} for {before}..{after} bytes available"
    );
}

// ------------------------------------------------------------------------------------------
// Child processes: the real environment, stderr output, and cgroup limits.

/// Runs this test binary's `child_entry` with `body` and `vars`; returns (success, stdout,
/// stderr).
fn run_child(body: &str, vars: &[(&str, &str)], cgroup: Option<&Path>) -> (bool, String, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, body);
    for var in umap::env::VARIABLES {
        cmd.env_remove(var);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    if let Some(dir) = cgroup {
        cmd.env("UMAP_TEST_CGROUP", dir);
    }
    let out = cmd.output().expect("cannot run the test binary as a child");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The child side: does nothing unless started by `run_child`.
#[test]
fn child_entry() {
    let Ok(body) = std::env::var(CHILD) else {
        return;
    };
    match body.as_str() {
        "from_env" => match Config::from_env() {
            Ok(c) => {
                let umap = Umap::new(c.clone()).unwrap();
                eventually(|| threads_named("umap-fill") == c.fillers);
                println!(
                    "CONFIG page={} buffer={} fillers={} evictors={} high={} low={} events={} \
                     ra={} monitor={:?} threads={}",
                    c.page_size,
                    c.buffer_size,
                    c.fillers,
                    c.evictors,
                    c.high_water_percent,
                    c.low_water_percent,
                    c.max_fault_events,
                    c.read_ahead,
                    c.monitor_interval,
                    threads_named("umap-fill"),
                );
                drop(umap);
            }
            Err(e) => println!("ERROR {e}"),
        },
        "work" => {
            // Faults for a while, so the monitor and the logger have something to say.
            let umap = Umap::builder()
                .env()
                .unwrap()
                .buffer_size(MIB)
                .page_size(4 * KIB)
                .start()
                .unwrap();
            let region = umap.map(store(4 * MIB), MapOptions::new()).unwrap();
            let until = Instant::now() + Duration::from_millis(450);
            while Instant::now() < until {
                scan(&region, 4 * MIB);
            }
            region.unmap().unwrap();
        }
        "cgroup" => {
            let dir = PathBuf::from(std::env::var("UMAP_TEST_CGROUP").unwrap());
            // Join the cgroup, then ask for the default buffer.
            std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
                .expect("cannot join the test cgroup");
            println!("BUFFER {}", Config::default().buffer_size);
        }
        other => panic!("unknown child body {other}"),
    }
}

#[test]
fn the_environment_configures_the_engine() {
    let (ok, out, err) = run_child(
        "from_env",
        &[
            ("UMAP_PAGESIZE", "8192"),
            ("UMAP_BUFSIZE", "512"),
            ("UMAP_PAGE_FILLERS", "3"),
            ("UMAP_PAGE_EVICTORS", "2"),
            ("UMAP_EVICT_HIGH_WATER_THRESHOLD", "60"),
            ("UMAP_EVICT_LOW_WATER_THRESHOLD", "30"),
            ("UMAP_MAX_FAULT_EVENTS", "9"),
            ("UMAP_READ_AHEAD", "4"),
            ("UMAP_MONITOR_FREQ", "2.5"),
        ],
        None,
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(
            "CONFIG page=8192 buffer=4194304 fillers=3 evictors=2 high=60 low=30 events=9 \
             ra=4 monitor=Some(2.5s) threads=3"
        ),
        "{out}\n{err}"
    );
    let (ok, out, err) = run_child("from_env", &[("UMAP_PAGE_FILLERS", "lots")], None);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("ERROR invalid UMAP_PAGE_FILLERS = lots: must be a whole number of threads"),
        "{out}"
    );
}

#[test]
fn the_monitor_prints_statistics_periodically() {
    let (ok, out, err) = run_child("work", &[("UMAP_MONITOR_FREQ", "0.1")], None);
    assert!(ok, "{out}\n{err}");
    let reports = err.matches("umap statistics after").count();
    assert!((2..=8).contains(&reports), "{reports} reports:\n{err}");
    assert!(
        err.contains("fault latency") && err.contains("read faults"),
        "{err}"
    );
    assert!(err.contains("  region 0x"), "{err}");
    let (ok, _, quiet) = run_child("work", &[], None);
    assert!(ok);
    assert!(!quiet.contains("umap statistics"), "{quiet}");
}

#[test]
fn the_monitor_survives_a_closed_stderr() {
    // A daemon's stderr may be gone: writes fail (EPIPE here, the reader closed), which makes
    // `eprint!` panic. The monitor must go on without printing, not take the process down.
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for var in umap::env::VARIABLES {
        cmd.env_remove(var);
    }
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, "work")
        .env("UMAP_MONITOR_FREQ", "0.05")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("cannot run the test binary as a child");
    // The first report is due after 50 ms: close the pipe's only reader before that.
    drop(child.stderr.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_log_level_installs_a_stderr_logger() {
    let (ok, out, err) = run_child("work", &[("UMAP_LOG_LEVEL", "debug")], None);
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("[umap DEBUG") && err.contains("userfaultfd via"),
        "{err}"
    );
    let (ok, _, err) = run_child("work", &[("UMAP_LOG_LEVEL", "error")], None);
    assert!(ok);
    assert!(!err.contains("[umap DEBUG"), "{err}");
}

/// A fresh memory cgroup limited to `limit` bytes, removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn create(limit: usize) -> TestCgroup {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        // cgroup v1 memory controller, else v2 with the memory controller available.
        let (dir, limit_file) = if let Some(path) = cgroups
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        {
            let base = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
            (base, "memory.limit_in_bytes")
        } else if let Some(path) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) {
            let base = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
            let controllers =
                std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
            assert!(
                controllers.split_whitespace().any(|c| c == "memory"),
                "this test needs the memory cgroup controller (v1, or v2 enabled in {})",
                base.display()
            );
            (base, "memory.max")
        } else {
            panic!("this test needs a memory cgroup (v1 or v2); /proc/self/cgroup:\n{cgroups}");
        };
        let dir = dir.join(format!("umap-config-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot create {} (the test runs as root): {e}",
                dir.display()
            )
        });
        std::fs::write(dir.join(limit_file), limit.to_string()).unwrap();
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The child has exited, so the group is empty.
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn the_default_buffer_respects_the_cgroup_memory_limit() {
    let cgroup = TestCgroup::create(256 * MIB);
    let (ok, out, err) = run_child("cgroup", &[], Some(&cgroup.0));
    assert!(ok, "{out}\n{err}");
    let buffer: usize = out
        .lines()
        .find_map(|l| Some(&l[l.find("BUFFER ")? + 7..]))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no BUFFER line:\n{out}\n{err}"));
    assert!(
        // Half the 256 MiB limit, less half of what the child itself uses.
        (100 * MIB..=128 * MIB).contains(&buffer),
        "buffer {buffer} under a 256 MiB limit"
    );
}
