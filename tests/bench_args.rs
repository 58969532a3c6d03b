//! The throughput bench's command line (`benches/support/args.rs`): each option reaches
//! `Options`, lists come back in their canonical order, and contradictory or malformed input is
//! refused with a message naming the option.

#[path = "../benches/support/args.rs"]
mod args;
#[path = "../examples/support/cli.rs"]
mod cli;
#[path = "../examples/support/median.rs"]
mod median;
#[path = "../benches/support/report.rs"]
mod report;

use std::path::PathBuf;

use args::{parse_args, Options, Parsed, Workload};

fn parse(line: &str) -> Result<Parsed, String> {
    parse_args(line.split_whitespace().map(String::from))
}

/// The options of a command line that must run something.
fn run(line: &str) -> Options {
    match parse(line) {
        Ok(Parsed::Run(options)) => options,
        other => panic!("`{line}`: expected options to run, got {other:?}"),
    }
}

/// The message of a command line that must be refused; it must mention `needle`.
fn refused(line: &str, needle: &str) -> String {
    match parse(line) {
        Err(message) => {
            assert!(message.contains(needle), "`{line}`: {message}");
            message
        }
        Ok(parsed) => panic!("`{line}` was accepted: {parsed:?}"),
    }
}

#[test]
fn defaults_run_every_workload_and_page_size_cold_from_the_file() {
    // `--bench` is what cargo passes to every bench target.
    let o = run("--bench");
    assert_eq!(o.workloads, Workload::ALL.to_vec());
    assert_eq!(o.page_sizes, vec![4 << 10, 64 << 10, 1 << 20]);
    assert!(!o.warm && !o.memory_store && !o.direct && !o.quick && !o.signal_faults);
    assert_eq!(o.size, Some(1 << 30));
    assert_eq!((o.buffer, o.threads, o.fillers), (128 << 20, 2, 2));
    assert_eq!(
        o.repeat, 1,
        "one run of each system unless --repeat says more"
    );
    let q = run("--quick");
    assert_eq!((q.size, q.buffer), (Some(128 << 20), 16 << 20));
    assert!(matches!(parse("--help"), Ok(Parsed::Help)));
    assert!(matches!(parse("--bench -h"), Ok(Parsed::Help)));
}

#[test]
fn warm_and_memory_store_are_set_and_exclude_direct() {
    assert!(run("--warm").warm);
    assert!(!run("--warm").memory_store);
    assert!(run("--memory-store").memory_store);
    assert!(!run("--memory-store").warm);
    let both = run("--warm --memory-store --size 1M --buffer 1M --page-sizes 64K");
    assert!(both.warm && both.memory_store && !both.direct);
    assert!(run("--direct").direct);
    assert!(run("--signal-faults").signal_faults);
    assert!(!run("--signal-faults").memory_store);
    refused("--warm --direct", "--warm and --direct");
    refused("--direct --warm", "--warm and --direct");
    refused("--memory-store --direct", "--memory-store and --direct");
    // Mapped reads map umap's file: with a file store only, and not with O_DIRECT.
    assert!(run("--mapped-reads").mapped_reads);
    assert!(!run("--direct").mapped_reads);
    assert!(run("--warm --mapped-reads").mapped_reads);
    refused(
        "--mapped-reads --direct",
        "--mapped-reads maps the store's file",
    );
    refused(
        "--memory-store --mapped-reads",
        "--mapped-reads maps the store's file",
    );
}

#[test]
fn workloads_come_back_in_run_order_without_duplicates() {
    assert_eq!(
        run("--workloads rmw,seq-read").workloads,
        vec![Workload::SeqRead, Workload::Rmw]
    );
    assert_eq!(
        run("--workloads=rand-write,rand-read,rand-write").workloads,
        vec![Workload::RandRead, Workload::RandWrite]
    );
    assert_eq!(
        run("--workloads rand-read").workloads,
        vec![Workload::RandRead]
    );
    refused("--workloads seq-read,bogus", "unknown workload `bogus`");
    refused("--workloads", "--workloads");
    // A given file is only read: it needs a read workload.
    refused("--file data.bin --workloads rand-write,rmw", "--file");
    let o = run("--file data.bin --workloads rmw,rand-read");
    assert_eq!(o.file, Some(PathBuf::from("data.bin")));
    assert_eq!(o.size, None, "the file's own size is used");
    refused("--file data.bin --size 1M", "--size and --file");
}

#[test]
fn page_sizes_come_back_sorted_without_duplicates_and_powers_of_two() {
    assert_eq!(
        run("--page-sizes 1M,4K,4K").page_sizes,
        vec![4 << 10, 1 << 20]
    );
    assert_eq!(
        run("--page-sizes 64KiB,8192").page_sizes,
        vec![8 << 10, 64 << 10]
    );
    refused("--page-sizes 12K", "not a power of two of at least 4K");
    refused("--page-sizes 2K", "not a power of two of at least 4K");
    refused("--page-sizes 4K,", "--page-sizes");
    refused("--page-sizes 4X", "--page-sizes");
    // The buffer must hold the largest page asked for.
    refused("--buffer 1M --page-sizes 2M", "--buffer");
    assert_eq!(
        run("--buffer 1M --page-sizes 64K").page_sizes,
        vec![64 << 10]
    );
}

#[test]
fn render_takes_a_path_and_no_other_option() {
    match parse("--render out.json") {
        Ok(Parsed::Render(path)) => assert_eq!(path, PathBuf::from("out.json")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse("--bench --render out.json"),
        Ok(Parsed::Render(_))
    ));
    // What follows `--render` is parsed too, not silently dropped.
    refused("--render out.json --bogus", "unknown argument `--bogus`");
    refused("--render out.json --warm", "--warm does not go with it");
    refused(
        "--json out.json --render x.json",
        "--json does not go with it",
    );
    refused("--render", "--render");
}

#[test]
fn bad_values_and_unknown_options_are_refused() {
    refused("--bogus", "unknown argument `--bogus`");
    refused("stray", "unknown argument `stray`");
    refused("--plot chart.png", "does not end in .svg");
    assert_eq!(
        run("--plot chart.SVG").plot,
        Some(PathBuf::from("chart.SVG"))
    );
    refused("--size 100", "too small");
    refused("--size lots", "--size");
    refused("--threads 0", "--threads");
    refused("--threads 2000", "too many");
    refused("--quick=yes", "");
    assert_eq!(run("--repeat 5").repeat, 5);
    assert_eq!(run("--repeat=100").repeat, 100);
    refused("--repeat 0", "--repeat: must be at least 1");
    refused(
        "--repeat 101",
        "--repeat: 101 rounds is too many (at most 100",
    );
    refused("--repeat twice", "--repeat");
    assert_eq!(run("--size 1M --threads 3").threads, 3);
}
