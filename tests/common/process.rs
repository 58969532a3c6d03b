//! Running a child process to completion with its output captured, without the `umap` crate,
//! so that the C library's tests (`umap-capi/tests/c_programs.rs`) include this file too
//! (`#[path = "../../tests/common/process.rs"] mod process;`).

#![allow(dead_code)] // each test binary uses its own subset.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process that ran to completion.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Both outputs as one text, for messages.
    pub fn text(&self) -> String {
        format!("stdout: {}\nstderr: {}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion with its output captured, killing it after `limit` (a hang is a
/// failure, not a stuck CI run). Both pipes are drained while it runs, so a child that writes
/// a lot cannot block on a full pipe and be taken for hung. Panics, with the output, if it had
/// to be killed.
pub fn run_captured(cmd: &mut Command, what: &str, limit: Duration) -> Finished {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            killed = true;
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let finished = Finished {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        !killed,
        "{what} hung and was killed after {limit:?}\n{}",
        finished.text()
    );
    finished
}

/// [`run_captured`], returning the exit status and both outputs as one text.
pub fn run_command(cmd: &mut Command, what: &str, limit: Duration) -> (ExitStatus, String) {
    let finished = run_captured(cmd, what, limit);
    let text = finished.text();
    (finished.status, text)
}

/// Runs the test `test` of the current test binary in a child process (`--exact`, one
/// thread) with `env` set, killed after 60 s: for tests that must crash, exit, or install
/// process-wide state. Returns its exit status and both outputs as one text.
pub fn run_test_child(test: &str, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    run_command(
        Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .envs(env.iter().copied()),
        &format!("child {test}"),
        Duration::from_secs(60),
    )
}
