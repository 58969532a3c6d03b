//! The `UMAP_*` environment variables, with the names and units of LLNL umap.
//!
//! | variable | unit | sets |
//! |---|---|---|
//! | `UMAP_PAGESIZE` | bytes | [`Config::page_size`] |
//! | `UMAP_BUFSIZE` | pages of the page size | [`Config::buffer_size`] |
//! | `UMAP_PAGE_FILLERS` | threads | [`Config::fillers`] |
//! | `UMAP_PAGE_EVICTORS` | threads | [`Config::evictors`] |
//! | `UMAP_EVICT_HIGH_WATER_THRESHOLD` | percent | [`Config::high_water_percent`] |
//! | `UMAP_EVICT_LOW_WATER_THRESHOLD` | percent | [`Config::low_water_percent`] |
//! | `UMAP_MAX_FAULT_EVENTS` | events | [`Config::max_fault_events`] |
//! | `UMAP_READ_AHEAD` | pages | [`Config::read_ahead`] |
//! | `UMAP_RECYCLE_PAGES` | `0` or `1` | [`Config::recycle_pages`] |
//! | `UMAP_SIGNAL_FAULTS` | `0` or `1` | [`Config::signal_faults`] |
//! | `UMAP_MONITOR_FREQ` | seconds (0: off) | [`Config::monitor_interval`] |
//! | `UMAP_LOG_LEVEL` | `off`, `error`, `warning`, `info`, `debug`, `trace` | [`Config::log_level`] |
//!
//! A variable that is set is used or rejected, never ignored: an empty or malformed value is
//! an error naming the variable, the value and what is allowed.

use std::time::Duration;

use crate::config::{Config, ConfigBuilder};
use crate::error::{Error, Result};
use crate::sys;

/// Every variable read, in the order they are applied (`UMAP_PAGESIZE` before `UMAP_BUFSIZE`,
/// which counts pages of it).
pub const VARIABLES: [&str; 12] = [
    "UMAP_PAGESIZE",
    "UMAP_BUFSIZE",
    "UMAP_PAGE_FILLERS",
    "UMAP_PAGE_EVICTORS",
    "UMAP_EVICT_HIGH_WATER_THRESHOLD",
    "UMAP_EVICT_LOW_WATER_THRESHOLD",
    "UMAP_MAX_FAULT_EVENTS",
    "UMAP_READ_AHEAD",
    "UMAP_RECYCLE_PAGES",
    "UMAP_SIGNAL_FAULTS",
    "UMAP_MONITOR_FREQ",
    "UMAP_LOG_LEVEL",
];

impl Config {
    /// The defaults, overridden by the `UMAP_*` environment variables that are set (see the
    /// table in the README or [`VARIABLES`]), validated.
    ///
    /// ```
    /// // With none of the variables set, this is the default configuration.
    /// let config = umap_core::Config::from_env()?;
    /// # Ok::<(), umap_core::Error>(())
    /// ```
    pub fn from_env() -> Result<Config> {
        Config::builder().env()?.build()
    }
}

impl ConfigBuilder {
    /// Applies the `UMAP_*` environment variables that are set, on top of this builder; later
    /// builder calls override them. A value that is set but not valid is an error naming the
    /// variable.
    ///
    /// ```
    /// let umap = umap_core::Umap::builder().env()?.fillers(2).start();
    /// # Ok::<(), umap_core::Error>(())
    /// ```
    pub fn env(self) -> Result<ConfigBuilder> {
        self.vars(|name| std::env::var_os(name))
    }

    /// As [`env`](ConfigBuilder::env), reading each variable through `lookup` instead of the
    /// process environment (for tests, and for programs that keep settings elsewhere).
    pub fn vars(
        mut self,
        mut lookup: impl FnMut(&str) -> Option<std::ffi::OsString>,
    ) -> Result<ConfigBuilder> {
        let mut watermarks_set = (false, false);
        for variable in VARIABLES {
            let Some(raw) = lookup(variable) else {
                continue;
            };
            let value = raw.to_str().ok_or_else(|| {
                Error::invalid(variable, raw.to_string_lossy(), "is not valid UTF-8")
            })?;
            self = apply(self, variable, value.trim())?;
            match variable {
                "UMAP_EVICT_HIGH_WATER_THRESHOLD" => watermarks_set.0 = true,
                "UMAP_EVICT_LOW_WATER_THRESHOLD" => watermarks_set.1 = true,
                _ => {}
            }
        }
        let (high, low) = (
            self.config().high_water_percent,
            self.config().low_water_percent,
        );
        if low >= high {
            // Checked once both are known, naming the variable that was set.
            let err = match watermarks_set {
                (_, true) => Error::invalid(
                    "UMAP_EVICT_LOW_WATER_THRESHOLD",
                    low,
                    format!("must be below the high-water threshold ({high} percent)"),
                ),
                (true, false) => Error::invalid(
                    "UMAP_EVICT_HIGH_WATER_THRESHOLD",
                    high,
                    format!(
                        "must be above the low-water threshold ({low} percent; set \
                         UMAP_EVICT_LOW_WATER_THRESHOLD to change it)"
                    ),
                ),
                (false, false) => return Ok(self), // the builder's own values: build() says
            };
            return Err(err);
        }
        Ok(self)
    }
}

/// A switch variable that configures something besides the engine (the C library reads
/// `UMAP_MAPPED_READS` so), read through `lookup` and checked as the engine's are: unset is
/// off, `0` off, `1` on, anything else an error naming the variable.
///
/// ```
/// let on = umap_core::env::switch_var("UMAP_EXAMPLE", |_| Some("1".into()))?;
/// assert!(on);
/// assert!(umap_core::env::switch_var("UMAP_EXAMPLE", |_| Some("yes".into())).is_err());
/// # Ok::<(), umap_core::Error>(())
/// ```
pub fn switch_var(
    variable: &'static str,
    lookup: impl FnOnce(&str) -> Option<std::ffi::OsString>,
) -> Result<bool> {
    match lookup(variable) {
        None => Ok(false),
        Some(raw) => {
            let value = raw.to_str().ok_or_else(|| {
                Error::invalid(variable, raw.to_string_lossy(), "is not valid UTF-8")
            })?;
            switch(variable, value.trim())
        }
    }
}

fn apply(b: ConfigBuilder, variable: &'static str, value: &str) -> Result<ConfigBuilder> {
    let sys_page = sys::page_size();
    Ok(match variable {
        "UMAP_PAGESIZE" => {
            let bytes = integer(variable, value, 1, u32::MAX as u64, "bytes")? as usize;
            if bytes % sys_page != 0 {
                return Err(Error::invalid(
                    variable,
                    value,
                    format!("must be a multiple of the system page size ({sys_page} bytes)"),
                ));
            }
            b.page_size(bytes)
        }
        "UMAP_BUFSIZE" => {
            let page = b.config().page_size;
            let pages = integer(variable, value, 2, u64::MAX, "pages")?;
            let bytes = pages
                .checked_mul(page as u64)
                .and_then(|b| usize::try_from(b).ok())
                .filter(|&b| b <= isize::MAX as usize)
                .ok_or_else(|| {
                    Error::invalid(
                        variable,
                        value,
                        format!("{pages} pages of {page} bytes do not fit in the address space"),
                    )
                })?;
            b.buffer_size(bytes)
        }
        "UMAP_PAGE_FILLERS" => b.fillers(integer(variable, value, 1, 4096, "threads")? as usize),
        "UMAP_PAGE_EVICTORS" => b.evictors(integer(variable, value, 1, 4096, "threads")? as usize),
        "UMAP_EVICT_HIGH_WATER_THRESHOLD" => {
            let high = integer(variable, value, 1, 100, "percent")? as u8;
            let low = b.config().low_water_percent;
            b.watermarks(high, low)
        }
        "UMAP_EVICT_LOW_WATER_THRESHOLD" => {
            let low = integer(variable, value, 0, 99, "percent")? as u8;
            let high = b.config().high_water_percent;
            b.watermarks(high, low)
        }
        "UMAP_MAX_FAULT_EVENTS" => {
            b.max_fault_events(integer(variable, value, 1, 4096, "events")? as usize)
        }
        "UMAP_READ_AHEAD" => {
            let max = crate::config::MAX_READ_AHEAD as u64;
            b.read_ahead(integer(variable, value, 0, max, "pages")? as usize)
        }
        "UMAP_RECYCLE_PAGES" => b.recycle_pages(switch(variable, value)?),
        "UMAP_SIGNAL_FAULTS" => b.signal_faults(switch(variable, value)?),
        "UMAP_MONITOR_FREQ" => {
            let secs: f64 = value
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
                .ok_or_else(|| {
                    Error::invalid(
                        variable,
                        value,
                        "must be a number of seconds between 0 (off) and 86400, such as 5 or 0.5",
                    )
                })?;
            b.monitor_interval((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
        }
        _ => b.log_level(Some(log_level(variable, value)?)),
    })
}

/// A switch: `0` (off) or `1` (on).
fn switch(variable: &'static str, value: &str) -> Result<bool> {
    match value {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(Error::invalid(variable, value, "must be 0 (off) or 1 (on)")),
    }
}

/// A decimal integer in `min..=max`.
fn integer(variable: &'static str, value: &str, min: u64, max: u64, unit: &str) -> Result<u64> {
    let n: u64 = value.parse().map_err(|_| {
        Error::invalid(
            variable,
            value,
            format!("must be a whole number of {unit} between {min} and {max}"),
        )
    })?;
    if n < min || n > max {
        return Err(Error::invalid(
            variable,
            value,
            format!("must be between {min} and {max} {unit}"),
        ));
    }
    Ok(n)
}

/// A log level by name (LLNL umap's names, plus `warn`, `trace` and `off`), any case.
fn log_level(variable: &'static str, value: &str) -> Result<log::LevelFilter> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "off" | "none" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warning" | "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => {
            return Err(Error::invalid(
                variable,
                value,
                "must be one of off, error, warning, info, debug, trace",
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn with(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Config::builder().vars(|n| map.get(n).cloned())?.build()
    }

    #[test]
    fn every_variable_takes_effect() {
        let c = with(&[
            ("UMAP_PAGESIZE", "16384"),
            ("UMAP_BUFSIZE", "1000"),
            ("UMAP_PAGE_FILLERS", "3"),
            ("UMAP_PAGE_EVICTORS", "5"),
            ("UMAP_EVICT_HIGH_WATER_THRESHOLD", "80"),
            ("UMAP_EVICT_LOW_WATER_THRESHOLD", "40"),
            ("UMAP_MAX_FAULT_EVENTS", "7"),
            ("UMAP_READ_AHEAD", "12"),
            ("UMAP_RECYCLE_PAGES", "1"),
            ("UMAP_MONITOR_FREQ", "0.25"),
            ("UMAP_LOG_LEVEL", "WARNING"),
        ])
        .unwrap();
        assert_eq!(c.page_size, 16384);
        assert_eq!(c.buffer_size, 1000 * 16384, "UMAP_BUFSIZE counts pages");
        assert_eq!((c.fillers, c.evictors), (3, 5));
        assert_eq!((c.high_water_percent, c.low_water_percent), (80, 40));
        assert_eq!((c.max_fault_events, c.read_ahead), (7, 12));
        assert!(c.recycle_pages);
        assert_eq!(c.monitor_interval, Some(Duration::from_millis(250)));
        assert_eq!(c.log_level, Some(log::LevelFilter::Warn));
        assert!(!c.signal_faults);
        let signals = with(&[("UMAP_SIGNAL_FAULTS", "1")]).unwrap();
        assert!(signals.signal_faults && !signals.recycle_pages);
        let both = with(&[("UMAP_SIGNAL_FAULTS", "1"), ("UMAP_RECYCLE_PAGES", "1")]).unwrap();
        assert!(both.signal_faults && both.recycle_pages);
        let off = with(&[("UMAP_MONITOR_FREQ", "0"), ("UMAP_LOG_LEVEL", " debug ")]).unwrap();
        assert_eq!(off.monitor_interval, None);
        assert_eq!(off.log_level, Some(log::LevelFilter::Debug));
        // Nothing set: the defaults (the buffer follows MemAvailable, which moves).
        let defaults = Config {
            buffer_size: 0,
            ..Config::default()
        };
        let unset = with(&[]).unwrap();
        assert_eq!(
            Config {
                buffer_size: 0,
                ..unset
            },
            defaults
        );
    }

    #[test]
    fn bad_values_name_the_variable_the_value_and_what_is_allowed() {
        let cases: &[(&str, &str, &str)] = &[
            ("UMAP_PAGESIZE", "", "whole number of bytes"),
            ("UMAP_PAGESIZE", "abc", "whole number of bytes"),
            ("UMAP_PAGESIZE", "6000", "multiple of the system page size"),
            ("UMAP_PAGESIZE", "0", "between 1 and"),
            ("UMAP_PAGESIZE", "-4096", "whole number"),
            ("UMAP_BUFSIZE", "1", "between 2 and"),
            (
                "UMAP_BUFSIZE",
                "99999999999999999999",
                "whole number of pages",
            ),
            ("UMAP_BUFSIZE", "4611686018427387904", "do not fit"),
            ("UMAP_PAGE_FILLERS", "0", "between 1 and 4096"),
            ("UMAP_PAGE_FILLERS", "2.5", "whole number of threads"),
            ("UMAP_PAGE_EVICTORS", "none", "whole number of threads"),
            (
                "UMAP_EVICT_HIGH_WATER_THRESHOLD",
                "101",
                "between 1 and 100",
            ),
            (
                "UMAP_EVICT_LOW_WATER_THRESHOLD",
                "90",
                "below the high-water",
            ),
            ("UMAP_EVICT_LOW_WATER_THRESHOLD", "100", "between 0 and 99"),
            ("UMAP_MAX_FAULT_EVENTS", "5000", "between 1 and 4096"),
            ("UMAP_READ_AHEAD", "x", "whole number of pages"),
            ("UMAP_READ_AHEAD", "100000", "between 0 and 65536"),
            ("UMAP_RECYCLE_PAGES", "yes", "must be 0 (off) or 1 (on)"),
            ("UMAP_RECYCLE_PAGES", "2", "must be 0 (off) or 1 (on)"),
            ("UMAP_SIGNAL_FAULTS", "on", "must be 0 (off) or 1 (on)"),
            ("UMAP_MONITOR_FREQ", "soon", "number of seconds"),
            ("UMAP_MONITOR_FREQ", "-1", "number of seconds"),
            ("UMAP_MONITOR_FREQ", "NaN", "number of seconds"),
            ("UMAP_LOG_LEVEL", "loud", "one of off, error"),
        ];
        for (variable, value, hint) in cases {
            let msg = with(&[(variable, value)]).unwrap_err().to_string();
            assert!(
                msg.contains(variable)
                    && msg.contains(&format!("= {}", value.trim()))
                    && msg.contains(hint),
                "{variable}={value:?}: {msg}"
            );
        }
        eprintln!("{} bad environment values tried", cases.len());
    }

    #[test]
    fn a_switch_outside_the_engine_is_checked_as_the_engines_are() {
        use std::os::unix::ffi::OsStringExt;
        let read = |value: Option<&str>| switch_var("UMAP_X", |_| value.map(OsString::from));
        assert!(!read(None).unwrap());
        assert!(!read(Some("0")).unwrap());
        assert!(read(Some(" 1 ")).unwrap());
        for bad in ["yes", "", "2"] {
            let err = read(Some(bad)).unwrap_err().to_string();
            assert!(
                err.contains("UMAP_X") && err.contains("0 (off) or 1 (on)"),
                "{err}"
            );
        }
        let err = switch_var("UMAP_X", |_| Some(OsString::from_vec(vec![0xff])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("UMAP_X") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn non_utf8_values_are_rejected() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0x31]);
        let err = Config::builder()
            .vars(|n| (n == "UMAP_READ_AHEAD").then(|| bad.clone()))
            .unwrap_err();
        assert!(err.to_string().contains("UMAP_READ_AHEAD"), "{err}");
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn watermarks_are_checked_as_a_pair_naming_the_variable_set() {
        // 50 % high with the default 70 % low: the pair is invalid as a whole.
        let err = with(&[("UMAP_EVICT_HIGH_WATER_THRESHOLD", "50")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("UMAP_EVICT_HIGH_WATER_THRESHOLD = 50"),
            "{msg}"
        );
        assert!(msg.contains("above the low-water threshold (70"), "{msg}");
        let ok = with(&[
            ("UMAP_EVICT_HIGH_WATER_THRESHOLD", "50"),
            ("UMAP_EVICT_LOW_WATER_THRESHOLD", "20"),
        ])
        .unwrap();
        assert_eq!((ok.high_water_percent, ok.low_water_percent), (50, 20));
    }
}
