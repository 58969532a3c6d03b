//! The examples' and benches' flag parser (`examples/support/cli.rs`): values inline or
//! separate, errors that name the flag, and no value silently dropped.

#[path = "../examples/support/cli.rs"]
mod cli;

fn flags(args: &[&str]) -> cli::Flags<std::vec::IntoIter<String>> {
    cli::Flags::new(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
}

#[test]
fn values_come_inline_or_as_the_next_argument() {
    let mut f = flags(&["--size=64K", "--threads", "3", "--buffer", "1M", "plain"]);
    assert_eq!(f.next_flag().as_deref(), Some("--size"));
    assert_eq!(f.size(), Ok(64 << 10));
    assert_eq!(f.next_flag().as_deref(), Some("--threads"));
    assert_eq!(f.count(), Ok(3));
    assert_eq!(f.next_flag().as_deref(), Some("--buffer"));
    assert_eq!(f.size_usize(), Ok(1 << 20));
    assert_eq!(f.next_flag().as_deref(), Some("plain"));
    assert_eq!(f.next_flag(), None);
}

#[test]
fn errors_name_the_flag() {
    let mut f = flags(&["--size", "12Q", "--threads=x", "--buffer"]);
    f.next_flag();
    let err = f.size().unwrap_err();
    assert!(err.starts_with("--size: ") && err.contains("12Q"), "{err}");
    f.next_flag();
    let err = f.count().unwrap_err();
    assert!(err.starts_with("--threads: ") && err.contains('x'), "{err}");
    f.next_flag();
    assert_eq!(f.value(), Err("--buffer needs a value".to_string()));
}

#[test]
fn a_value_given_to_a_flag_that_takes_none_is_not_dropped() {
    // `--keep` takes no value: its `=no` comes back whole, which no parser knows.
    let mut f = flags(&["--keep=no", "--mmap"]);
    assert_eq!(f.next_flag().as_deref(), Some("--keep"));
    assert_eq!(f.next_flag().as_deref(), Some("--keep=no"));
    assert_eq!(f.next_flag().as_deref(), Some("--mmap"));
    assert_eq!(f.next_flag(), None);
    // Also as the last argument.
    let mut f = flags(&["--quick=1"]);
    assert_eq!(f.next_flag().as_deref(), Some("--quick"));
    assert_eq!(f.next_flag().as_deref(), Some("--quick=1"));
    assert_eq!(f.next_flag(), None);
}
