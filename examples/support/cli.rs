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

/// Command-line flags, each `--name value` or `--name=value`.
///
/// ```ignore
/// let mut flags = cli::Flags::new(std::env::args().skip(1));
/// while let Some(name) = flags.next_flag() {
///     match name.as_str() {
///         "--size" => size = cli::parse_size(&flags.value()?)?,
///         other => return Err(format!("unknown option {other}")),
///     }
/// }
/// ```
pub struct Flags<I> {
    args: I,
    name: String,
    inline: Option<String>,
}

impl<I: Iterator<Item = String>> Flags<I> {
    /// Flags from `args` (without the program name).
    pub fn new(args: impl IntoIterator<IntoIter = I>) -> Flags<I> {
        Flags {
            args: args.into_iter(),
            name: String::new(),
            inline: None,
        }
    }

    /// The next flag's name (`--size` of `--size=1G` too), or the next plain argument. A
    /// value given to the previous flag that it did not take (`--keep=no`, for a flag without
    /// a value) comes back whole, as an argument no parser knows, so it is refused rather
    /// than ignored.
    pub fn next_flag(&mut self) -> Option<String> {
        if let Some(value) = self.inline.take() {
            return Some(format!("{}={value}", self.name));
        }
        let arg = self.args.next()?;
        (self.name, self.inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        Some(self.name.clone())
    }

    /// The value of the flag just read: after its `=`, else the next argument.
    pub fn value(&mut self) -> Result<String, String> {
        self.inline
            .take()
            .or_else(|| self.args.next())
            .ok_or(format!("{} needs a value", self.name))
    }

    /// The value of the flag just read as a byte count ([`parse_size`]); errors name the flag.
    pub fn size(&mut self) -> Result<u64, String> {
        let value = self.value()?;
        parse_size(&value).map_err(|e| format!("{}: {e}", self.name))
    }

    /// As [`Flags::size`], as a `usize` ([`parse_size_usize`]).
    pub fn size_usize(&mut self) -> Result<usize, String> {
        let value = self.value()?;
        parse_size_usize(&value).map_err(|e| format!("{}: {e}", self.name))
    }

    /// The value of the flag just read as a count ([`parse_count`]).
    pub fn count(&mut self) -> Result<usize, String> {
        let value = self.value()?;
        parse_count(&value, &self.name)
    }
}
