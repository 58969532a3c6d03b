//! The sort example's memory: sorting data 16 times larger than the buffer keeps the process's
//! peak resident set near the buffer, not near the data. Also its `--versus-mmap` comparison,
//! which runs in a child process the same way.
//!
//! The example runs in a child process (this test binary, re-executed with the example's
//! arguments in an environment variable), so that its peak RSS is its own: the parent reads it
//! from `wait4`'s resource usage. A second run with a buffer larger than the data shows that
//! the measure sees the data when the pager keeps it all (the first assertion would fail there).

#[path = "../examples/sort.rs"]
#[allow(dead_code)] // the example's `main` is not used here
mod sort;

use std::process::Command;

const MIB: u64 = 1 << 20;

/// The data sorted: 256 MiB of u64s.
const DATA: u64 = 256 * MIB;
/// The buffer: a sixteenth of the data.
const BUFFER: u64 = 16 * MIB;
/// The most the child may keep resident: the buffer, the program, the I/O chunks (8 MiB) and
/// the threads' stacks fit well inside; a quarter of the data does not hold the data.
const RSS_LIMIT: u64 = DATA / 4;

/// How long one sort may run before the test kills it.
const CHILD_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

const CHILD_ENV: &str = "UMAP_TEST_SORT_RSS_ARGS";

/// Runs in the child process (see `run_sort`): the sort example with the arguments in the
/// environment, then exits with its status. Does nothing when run as an ordinary test.
#[test]
fn sort_rss_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let status = sort::run_cli(args.split_whitespace().map(String::from));
    std::process::exit(i32::from(status));
}

/// Runs the sort example with `args` in a child process; returns its peak RSS in bytes and
/// its output. Fails the test if the child does not exit with status 0.
// The child is reaped with `wait4` (for its resource usage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_sort(args: &str) -> (u64, String) {
    run_sort_with(args, &[])
}

/// [`run_sort`] with `env` set for the child (the example's engine reads the `UMAP_*`
/// variables).
#[allow(clippy::zombie_processes)]
fn run_sort_with(args: &str, env: &[(&str, &str)]) -> (u64, String) {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sort_rss_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("re-executing the test binary");
    let pid = child.id() as libc::pid_t;
    // Read the pipes on threads, so that a child filling one cannot block.
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = read(Box::new(child.stdout.unwrap()));
    let stderr = read(Box::new(child.stderr.unwrap()));
    // Kill the child if it has not exited in time (a hang fails the test, it does not hang it).
    let (done, timeout) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            timeout.recv_timeout(CHILD_TIME_LIMIT)
        {
            eprintln!("the sort did not finish within {CHILD_TIME_LIMIT:?}: killing it");
            // SAFETY: plain system call; `pid` is our child, not yet reaped (see below), so the
            // id cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    // Wait for the exit but leave the child unreaped (WNOWAIT) until the watchdog is gone.
    // SAFETY: an all-zero siginfo_t is a valid value of the plain C struct, and it is valid for
    // writes for the call.
    let rc = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    drop(done);
    watchdog.join().unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, which has exited and which nothing else reaps (the `Child`
    // handle was taken apart above and is never waited on); `status` and `usage` are valid for
    // writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let output = format!(
        "--- stdout\n{}--- stderr\n{}",
        stdout.join().unwrap(),
        stderr.join().unwrap()
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the sort ({args}) failed, wait status {status:#x}\n{output}"
    );
    // ru_maxrss is in KiB on Linux.
    (usage.ru_maxrss as u64 * 1024, output)
}

/// 256 MiB sorted through a 16 MiB buffer: peak RSS under a quarter of the data. With a
/// 512 MiB buffer the same sort keeps the whole data resident, and the measure shows it.
#[test]
fn sort_peak_rss_stays_near_the_buffer() {
    let bounded = format!(
        "--size {DATA} --buffer {BUFFER} --page-size 64K --threads 2 --fillers 2 --evictors 1"
    );
    let (peak, output) = run_sort(&bounded);
    eprintln!(
        "buffer {} MiB: peak RSS {:.1} MiB",
        BUFFER / MIB,
        peak as f64 / MIB as f64
    );
    assert!(
        peak < RSS_LIMIT,
        "sorting {} MiB through a {} MiB buffer peaked at {:.1} MiB resident (limit {} MiB)\n\
         {output}",
        DATA / MIB,
        BUFFER / MIB,
        peak as f64 / MIB as f64,
        RSS_LIMIT / MIB
    );
    assert!(
        output.contains("all checks passed"),
        "the sort did not report its checks\n{output}"
    );

    let unbounded = format!(
        "--size {DATA} --buffer {} --page-size 64K --threads 2",
        2 * DATA
    );
    let (peak, output) = run_sort(&unbounded);
    eprintln!(
        "buffer {} MiB: peak RSS {:.1} MiB",
        2 * DATA / MIB,
        peak as f64 / MIB as f64
    );
    assert!(
        peak > DATA * 3 / 4,
        "with a buffer larger than the data the whole data should be resident at the end of \
         the sort, yet the peak RSS was {:.1} MiB: the measure does not see the mapping\n{output}",
        peak as f64 / MIB as f64
    );
}

/// Faults served on the faulting thread (`UMAP_SIGNAL_FAULTS=1`) keep the resident set where
/// fillers keep it: the handlers' scratch buffers (up to a 1 MiB run each) are only as many as
/// the faults served at once. 4 KiB pages, so every fault reads a 1 MiB read-ahead run.
#[test]
fn signal_faults_keep_the_peak_rss_of_fillers() {
    let args = format!(
        "--size {DATA} --buffer {BUFFER} --page-size 4K --threads 2 --fillers 2 --evictors 1"
    );
    let (fillers, _) = run_sort_with(&args, &[("UMAP_SIGNAL_FAULTS", "0")]);
    let (signals, output) = run_sort_with(&args, &[("UMAP_SIGNAL_FAULTS", "1")]);
    eprintln!(
        "peak RSS: fillers {:.1} MiB, signal faults {:.1} MiB",
        fillers as f64 / MIB as f64,
        signals as f64 / MIB as f64
    );
    assert!(
        signals < fillers + 6 * MIB,
        "with signal faults the sort peaked at {:.1} MiB resident, {:.1} MiB with fillers\n{output}",
        signals as f64 / MIB as f64,
        fillers as f64 / MIB as f64
    );
    let served: u64 = output
        .lines()
        .find_map(|l| l.strip_prefix("signal faults"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        output.contains("all checks passed") && served > 0,
        "the sort did not report its checks, or served no fault in the handler\n{output}"
    );
}

/// `--versus-mmap 2`: two rounds, each a checked sort through umap and one through kernel
/// `mmap`, then a table of the rounds and the median ratio, which must agree with the times
/// printed; bad combinations are refused with a message.
#[test]
fn versus_mmap_sorts_both_ways_each_round_and_prints_the_median_ratio() {
    let (_, output) = run_sort("--size 32M --buffer 4M --threads 2 --versus-mmap 2");
    for round in 1..=2 {
        for system in ["umap", "kernel mmap"] {
            assert!(
                output.contains(&format!("== round {round} of 2: {system}")),
                "round {round} through {system} missing\n{output}"
            );
        }
    }
    assert_eq!(
        output.matches("sort: 32 MiB of random u64s").count(),
        4,
        "four sorts\n{output}"
    );
    assert_eq!(
        output.matches("all checks passed").count(),
        1,
        "one verdict, after every sort checked\n{output}"
    );
    assert!(!output.contains("peak RSS"), "RSS of mixed runs\n{output}");
    // The table: `round  umap  mmap  ratio`, the ratio being the times' quotient.
    let rows: Vec<(f64, f64, f64)> = output
        .lines()
        .skip_while(|l| !l.starts_with("round  umap sort s"))
        .skip(1)
        .take(2)
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cells.len(), 4, "{l}");
            let number = |c: &str| c.trim_end_matches('x').parse::<f64>().unwrap();
            (number(cells[1]), number(cells[2]), number(cells[3]))
        })
        .collect();
    assert_eq!(rows.len(), 2, "{output}");
    for (umap, mmap, ratio) in &rows {
        assert!(*umap > 0.0 && *mmap > 0.0, "{output}");
        // Times printed to the millisecond: a 30 ms sort is off by up to 1.7% from rounding.
        assert!(
            (umap / mmap - ratio).abs() < 0.01 + ratio * 0.06,
            "{output}"
        );
    }
    // The median of two rounds is their mean (from the rounded ratios: within 0.01).
    let printed: f64 = output
        .lines()
        .find_map(|l| l.strip_prefix("median umap/mmap "))
        .and_then(|rest| rest.split('x').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no median line\n{output}"));
    let mean = (rows[0].2 + rows[1].2) / 2.0;
    assert!(
        (printed - mean).abs() <= 0.011,
        "median {printed} of {rows:?}\n{output}"
    );

    for (args, needle) in [
        ("--versus-mmap 2 --mmap", "leave out --mmap"),
        ("--versus-mmap 2 --keep", "use one or the other"),
        ("--versus-mmap 0", "must be at least 1"),
        ("--versus-mmap 101", "at most 100"),
    ] {
        assert_eq!(
            sort::run_cli(args.split_whitespace().map(String::from)),
            2,
            "`{args}` should be refused ({needle})"
        );
    }
}
