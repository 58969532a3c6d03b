//! The C library as C and C++ programs use it: the programs in `tests/c/` are compiled with
//! the system's `cc`/`c++` against `include/umap.h`, linked against the `libumap.so` (or
//! `libumap.a`) that cargo built for this test run, with the flags of the generated
//! `umap.pc`, run, and their output checked. The test builds the library first (see
//! [`lib_dir`]).
//!
//! Needs a C and a C++ compiler (`cc`, `c++`) and userfaultfd, as every engine test.

#[path = "../../tests/common/process.rs"]
mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use process::Finished;

/// The C sources.
fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c")
}

/// Builds the library (`libumap.so`, `libumap.a`; build.rs writes `umap.pc`) into the
/// profile directory of this test's executable (above its `deps/`), and returns that
/// directory. Cargo does not build a `cdylib`/`staticlib` for the package's own integration
/// tests, so the test asks cargo for it: once the tests are built this only links the crate
/// (the dependencies are those just built for the tests).
fn lib_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test's own path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test runs from target/<profile>/deps")
                .to_path_buf();
            let target_dir = profile_dir.parent().expect("target/<profile>");
            let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") => "test",
                Some(name) => name,
                None => panic!("unexpected test location {}", exe.display()),
            };
            let cargo = std::env::var_os("CARGO")
                .or_else(|| option_env!("CARGO").map(Into::into))
                .unwrap_or_else(|| "cargo".into());
            let out = Command::new(&cargo)
                .args(["build", "--quiet", "-p", "umap-capi", "--profile", profile])
                .arg("--target-dir")
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
            assert!(
                out.status.success(),
                "building the C library failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for file in ["libumap.so", "libumap.a", "umap.pc"] {
                assert!(
                    profile_dir.join(file).exists(),
                    "{file} not found in {} after building umap-capi",
                    profile_dir.display()
                );
            }
            profile_dir
        })
        .clone()
}

/// Fails loudly, saying what to install, if `compiler` does not run.
fn require(compiler: &str) {
    let ok = Command::new(compiler)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{compiler}` is needed to test the C library and does not run: install a C and C++ \
         compiler (Debian/Ubuntu: apt-get install gcc g++; Fedora: dnf install gcc gcc-c++)"
    );
}

/// The fields of `umap.pc`, variables expanded.
fn pkg_config(lib_dir: &Path) -> HashMap<String, String> {
    let path = lib_dir.join("umap.pc");
    let text = std::fs::read_to_string(&path).expect("umap.pc is readable");
    let mut vars: HashMap<String, String> = HashMap::new();
    let mut fields = HashMap::new();
    let expand = |value: &str, vars: &HashMap<String, String>| {
        let mut out = value.to_string();
        for (k, v) in vars {
            out = out.replace(&format!("${{{k}}}"), v);
        }
        assert!(!out.contains("${"), "unknown variable in umap.pc: {value}");
        out
    };
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let var = line.find('=');
        let field = line.find(':');
        match (var, field) {
            (Some(v), f) if f.is_none_or(|f| v < f) => {
                let value = expand(line[v + 1..].trim(), &vars);
                vars.insert(line[..v].trim().to_string(), value);
            }
            (_, Some(f)) => {
                let value = expand(line[f + 1..].trim(), &vars);
                fields.insert(line[..f].trim().to_string(), value);
            }
            _ => panic!("malformed line in {}: {line}", path.display()),
        }
    }
    for field in ["Name", "Version", "Cflags", "Libs", "Libs.private"] {
        assert!(fields.contains_key(field), "umap.pc has no {field}");
    }
    fields
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// How to link: against the shared library (found through an rpath) or the static one.
#[derive(Clone, Copy)]
enum Link {
    Shared,
    Static,
}

/// Compiles `source` (in `tests/c/`) with `compiler` and `std`, linked as `link`, into
/// `dir`; panics with the compiler's messages on failure.
fn build(compiler: &str, std: &str, source: &str, link: Link, dir: &Path) -> PathBuf {
    require(compiler);
    let lib_dir = lib_dir();
    let pc = pkg_config(&lib_dir);
    let exe = dir.join(source.replace('.', "_"));
    let mut cmd = Command::new(compiler);
    cmd.arg(format!("-std={std}"))
        .args([
            "-D_GNU_SOURCE",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
        ])
        .args(words(&pc["Cflags"]))
        .arg(sources().join(source))
        .arg("-o")
        .arg(&exe);
    match link {
        Link::Shared => {
            cmd.args(words(&pc["Libs"]))
                .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
        }
        Link::Static => {
            // Only the static library is offered to the linker.
            cmd.arg(lib_dir.join("libumap.a"))
                .args(words(&pc["Libs.private"]));
        }
    }
    cmd.arg("-lpthread");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "compiling {source} failed: {cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs `exe` with `args` and only the `UMAP_*` variables in `env` (others removed), within
/// a minute; returns its output, panicking with it if the program failed.
fn run(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    for var in umap_core::env::VARIABLES {
        cmd.env_remove(var);
    }
    cmd.env_remove("UMAP_MAPPED_READS");
    cmd.envs(env.iter().copied());
    let what = format!("{exe:?} {args:?} with {env:?}");
    let out = process::run_captured(&mut cmd, &what, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{what} failed ({})\n{}",
        out.status,
        out.text()
    );
    out
}

/// A test program built in a temporary directory of its own, where it keeps its data file.
struct Program {
    dir: tempfile::TempDir,
    exe: PathBuf,
}

impl Program {
    /// Compiles `source` (see [`build`]).
    fn build(compiler: &str, std: &str, source: &str, link: Link) -> Program {
        let dir = tempfile::tempdir().unwrap();
        let exe = build(compiler, std, source, link, dir.path());
        Program { dir, exe }
    }

    /// A C11 program linked against the shared library.
    fn c11(source: &str) -> Program {
        Program::build("cc", "c11", source, Link::Shared)
    }

    /// The path of the data file the programs take as their argument (in its directory).
    fn data_file(&self) -> String {
        self.dir
            .path()
            .join("data.bin")
            .to_str()
            .expect("UTF-8 temp path")
            .to_owned()
    }

    /// Runs it (see [`run`]) and checks that its stdout contains `expect`.
    fn run_expecting(&self, args: &[&str], env: &[(&str, &str)], expect: &str) -> Finished {
        let out = run(&self.exe, args, env);
        assert!(
            out.stdout.contains(expect),
            "no {expect:?} in the output of {}:\n{}",
            self.exe.display(),
            out.text()
        );
        out
    }

    /// Runs it on its data file with `env`, checking that stdout contains `expect`.
    fn run_on_data(&self, env: &[(&str, &str)], expect: &str) -> Finished {
        self.run_expecting(&[&self.data_file()], env, expect)
    }
}

/// The runner reads both pipes while the child runs: a child that writes far more than a
/// pipe holds (64 KiB) to each is not taken for hung.
#[test]
fn runner_takes_more_output_than_a_pipe_holds() {
    let out = run(
        Path::new("/bin/sh"),
        &[
            "-c",
            "head -c 1000000 /dev/zero | tr '\\0' o; head -c 1000000 /dev/zero | tr '\\0' e >&2",
        ],
        &[],
    );
    assert_eq!(out.stdout.len(), 1_000_000);
    assert!(out.stdout.bytes().all(|b| b == b'o'));
    assert_eq!(out.stderr.len(), 1_000_000);
    assert!(out.stderr.bytes().all(|b| b == b'e'));
}

/// 4 threads read and write 16 MiB through a 1 MiB buffer; umap_flush and uunmap write it
/// all back; the program closes its descriptor right after umap.
#[test]
fn threads_read_write_flush_and_uunmap() {
    Program::c11("rw_threads.c").run_on_data(
        &[("UMAP_PAGESIZE", "4096"), ("UMAP_BUFSIZE", "256")],
        "rw_threads ok: 4 threads, 16 MiB through 256 pages of 4096 bytes",
    );
}

/// The same with faults served on the faulting thread (`UMAP_SIGNAL_FAULTS=1`): the library's
/// SIGBUS handler serves the C threads' faults.
#[test]
fn threads_read_write_flush_and_uunmap_with_signal_faults() {
    let out = Program::c11("rw_threads.c").run_on_data(
        &[
            ("UMAP_PAGESIZE", "4096"),
            ("UMAP_BUFSIZE", "256"),
            ("UMAP_SIGNAL_FAULTS", "1"),
            ("UMAP_MONITOR_FREQ", "0.02"),
        ],
        "rw_threads ok: 4 threads, 16 MiB through 256 pages of 4096 bytes",
    );
    // The monitor's statistics show faults served in the handler.
    let served = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("signal faults"))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .max();
    assert!(
        served.is_some_and(|n| n > 0),
        "no faults served in the SIGBUS handler:\n{}",
        out.text()
    );
}

/// The same with every file opened with mapped reads (`UMAP_MAPPED_READS=1`).
#[test]
fn threads_read_write_flush_and_uunmap_with_mapped_reads() {
    Program::c11("rw_threads.c").run_on_data(
        &[
            ("UMAP_PAGESIZE", "4096"),
            ("UMAP_BUFSIZE", "256"),
            ("UMAP_MAPPED_READS", "1"),
        ],
        "rw_threads ok: 4 threads, 16 MiB through 256 pages of 4096 bytes",
    );
}

/// An invalid `UMAP_MAPPED_READS`: mapping a file fails with EINVAL and says why.
#[test]
fn bad_mapped_reads_variable_fails_umap() {
    let out = Program::c11("errors.c").run_expecting(
        &["badmapped"],
        &[("UMAP_MAPPED_READS", "2")],
        "errors badmapped ok",
    );
    assert!(
        out.stderr
            .contains("invalid UMAP_MAPPED_READS = 2: must be 0 (off) or 1 (on)"),
        "{}",
        out.stderr
    );
}

/// The same program, linked against libumap.a alone.
#[test]
fn static_library_links_and_works() {
    let program = Program::build("cc", "c11", "rw_threads.c", Link::Static);
    let ldd = Command::new("ldd").arg(&program.exe).output();
    if let Ok(ldd) = ldd {
        let needed = String::from_utf8_lossy(&ldd.stdout);
        assert!(
            !needed.contains("libumap"),
            "statically linked, yet needs {needed}"
        );
    }
    program.run_on_data(
        &[("UMAP_PAGESIZE", "8192"), ("UMAP_BUFSIZE", "64")],
        "through 64 pages of 8192 bytes",
    );
}

/// Offsets, odd lengths, the end of the file, prefetch and pinning, with umap pages of one
/// and of four system pages.
#[test]
fn offsets_prefetch_and_pin() {
    let program = Program::c11("offset.c");
    let page = umap_core::sys::page_size();
    for (umap_page, pages) in [(page * 4, 64), (page, 256)] {
        let (umap_page, pages) = (umap_page.to_string(), pages.to_string());
        program.run_on_data(
            &[("UMAP_PAGESIZE", &umap_page), ("UMAP_BUFSIZE", &pages)],
            &format!("offset ok: umap page {umap_page}, system page {page}"),
        );
    }
}

/// Misuse fails with the right errno and a message saying why.
#[test]
fn errors_set_errno_and_say_why() {
    let out = Program::c11("errors.c").run_on_data(
        &[("UMAP_PAGESIZE", "4096"), ("UMAP_BUFSIZE", "32")],
        "errors ok",
    );
    for expected in [
        "umap: umap: length is 0",
        "umap: umap: fd -1 is not an open file descriptor",
        "is open read-only; open it read-write",
        "is open write-only; a store must be able to read it",
        "O_RDWR for PROT_WRITE",
        "umap: uunmap: no region starts at",
        "partial unmapping is not supported",
        "umap: umap_fetch_and_pin: cannot pin",
    ] {
        assert!(
            out.stderr.contains(expected),
            "no {expected:?} in:\n{}",
            out.stderr
        );
    }
}

/// An invalid UMAP_* variable: every call fails with EINVAL and says which variable.
#[test]
fn bad_environment_fails_every_call() {
    let out = Program::c11("errors.c").run_expecting(
        &["badenv"],
        &[("UMAP_PAGE_FILLERS", "lots")],
        "errors badenv ok",
    );
    assert!(
        out.stderr
            .contains("umap: umap: bad umap configuration: invalid UMAP_PAGE_FILLERS = lots"),
        "{}",
        out.stderr
    );
}

/// A C++ program includes the header, links, and reads the configuration from the
/// environment through every getter.
#[test]
fn header_compiles_as_cpp_and_getters_read_the_environment() {
    let env = [
        ("UMAP_PAGESIZE", "8192"),
        ("UMAP_BUFSIZE", "100"),
        ("UMAP_PAGE_FILLERS", "3"),
        ("UMAP_PAGE_EVICTORS", "2"),
        ("UMAP_READ_AHEAD", "5"),
        ("UMAP_EVICT_HIGH_WATER_THRESHOLD", "80"),
        ("UMAP_EVICT_LOW_WATER_THRESHOLD", "50"),
        ("UMAP_MAX_FAULT_EVENTS", "7"),
    ];
    let expected = format!(
        "header.cpp ok: linked 1, page {}, umap page 8192, fillers 3, evictors 2, buffer 100 \
         pages, read-ahead 5, watermarks 80/50, events 7, write 1, flags {} {}, failed \
         0xffffffffffffffff",
        umap_core::sys::page_size(),
        libc::MAP_PRIVATE,
        libc::MAP_FIXED
    );
    Program::build("c++", "c++11", "header.cpp", Link::Shared).run_expecting(&[], &env, &expected);
}

/// The header alone compiles as strict C99 and C++11.
#[test]
fn header_compiles_alone_as_c_and_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let pc = pkg_config(&lib_dir());
    for (compiler, lang, std) in [("cc", "c", "c99"), ("c++", "c++", "c++11")] {
        require(compiler);
        let source = dir.path().join(format!("only_header.{lang}"));
        std::fs::write(&source, "#include <umap.h>\n#include <umap.h>\n").unwrap();
        let out = Command::new(compiler)
            .args(["-x", lang, &format!("-std={std}"), "-fsyntax-only"])
            .args(["-Wall", "-Wextra", "-Werror", "-pedantic"])
            .args(words(&pc["Cflags"]))
            .arg(&source)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umap.h does not compile as {std}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A program that exits without unmapping: its writes reach the file all the same; and a
/// child forked from it exits without hanging in the exit handler.
#[test]
fn regions_are_written_back_at_exit() {
    for fork in [false, true] {
        written_back_at_exit(fork);
    }
}

fn written_back_at_exit(fork: bool) {
    let program = Program::build("cc", "gnu11", "exit_flush.c", Link::Shared);
    let file = program.data_file();
    let args: Vec<&str> = if fork {
        vec![&file, "fork"]
    } else {
        vec![&file]
    };
    let out = program.run_expecting(
        &args,
        &[("UMAP_PAGESIZE", "4096"), ("UMAP_BUFSIZE", "2048")],
        "exit_flush wrote 4 MiB",
    );
    assert_eq!(
        out.stdout.contains("exit_flush child exited"),
        fork,
        "fork {fork}: {}",
        out.text()
    );
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 4 << 20);
    for (i, word) in bytes.chunks_exact(8).enumerate() {
        let word = u64::from_ne_bytes(word.try_into().unwrap());
        assert_eq!(
            word,
            !(i as u64 * 8),
            "word {i} was not written back at exit"
        );
    }
}
