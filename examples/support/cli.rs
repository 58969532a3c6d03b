//! Command-line parsing shared by the examples and the benches (each includes this file with
//! `#[path = ...] mod cli;`).

#![allow(dead_code)] // each program uses its own subset.

/// Parses a byte count with an optional binary suffix: `4096`, `64K`, `128MiB`, `1G`
/// (`K`, `KB` and `KiB` all mean 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "`{text}` is not a size (try 4096, 64K, 128MiB, 1G)"
        ));
    }
    let unit: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}`: unknown suffix `{suffix}` (use K, M, G, KiB, MiB or GiB)"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// As [`parse_size`], for a size that must fit in memory.
pub fn parse_size_usize(text: &str) -> Result<usize, String> {
    usize::try_from(parse_size(text)?).map_err(|_| format!("`{text}` is too large"))
}

/// Parses a count of at least 1 given to `flag`.
pub fn parse_count(text: &str, flag: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err(format!("{flag}: must be at least 1")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{flag}: `{text}` is not a positive integer")),
    }
}
