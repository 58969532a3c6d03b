//! Engine configuration: page size, buffer, thread counts and watermarks, validated before
//! anything starts.

use crate::error::{Error, Result};
use crate::sys;

/// The engine's configuration. Build one with [`Config::builder`] (or start from
/// [`Config::default`]); [`Config::validate`] runs before an engine starts.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `page_size` | 64 KiB | bytes per umap page (a multiple of the system page), per region overridable |
/// | `buffer_size` | 1/4 of physical memory | bytes that may be resident across all regions (at least 2 pages) |
/// | `fillers` | number of CPUs | threads that serve page faults |
/// | `evictors` | 1 | threads that keep the buffer under the high-water mark |
/// | `high_water_percent` | 90 | eviction starts when this much of the buffer is resident |
/// | `low_water_percent` | 70 | eviction stops at this much |
/// | `max_fault_events` | 32 | page-fault events a filler reads per system call |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bytes per umap page: a multiple of the system page size.
    pub page_size: usize,
    /// Bytes of the buffer: the most that may be resident at once across all regions.
    pub buffer_size: usize,
    /// Number of filler threads (serve faults).
    pub fillers: usize,
    /// Number of evictor threads.
    pub evictors: usize,
    /// Eviction starts when resident bytes reach this percentage of the buffer.
    pub high_water_percent: u8,
    /// Eviction stops when resident bytes fall to this percentage of the buffer.
    pub low_water_percent: u8,
    /// Page-fault events read per system call by a filler.
    pub max_fault_events: usize,
}

impl Default for Config {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            page_size: 64 * 1024,
            buffer_size: default_buffer_size(),
            fillers: cpus,
            evictors: 1,
            high_water_percent: 90,
            low_water_percent: 70,
            max_fault_events: 32,
        }
    }
}

/// A quarter of physical memory, at least 64 MiB.
fn default_buffer_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    let total = if pages > 0 {
        pages as usize * sys::page_size()
    } else {
        1 << 30
    };
    (total / 4).max(64 << 20)
}

impl Config {
    /// A builder starting from the defaults.
    ///
    /// ```
    /// let config = umap_core::Config::builder()
    ///     .page_size(16 * 4096)
    ///     .buffer_size(256 << 20)
    ///     .fillers(4)
    ///     .build()?;
    /// assert_eq!(config.fillers, 4);
    /// # Ok::<(), umap_core::Error>(())
    /// ```
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder(Config::default())
    }

    /// Checks every field and says what to change when one is wrong.
    pub fn validate(&self) -> Result<()> {
        validate_page_size(self.page_size)?;
        if self.buffer_size < MIN_BUFFER_PAGES * self.page_size {
            return Err(Error::invalid(
                "buffer_size",
                self.buffer_size,
                format!(
                    "the buffer must hold at least {MIN_BUFFER_PAGES} pages ({} bytes): one access \
                     can straddle two pages, and both must be resident at once",
                    MIN_BUFFER_PAGES * self.page_size
                ),
            ));
        }
        if self.fillers == 0 {
            return Err(Error::invalid(
                "fillers",
                0,
                "at least one filler thread is needed",
            ));
        }
        if self.evictors == 0 {
            return Err(Error::invalid(
                "evictors",
                0,
                "at least one evictor thread is needed",
            ));
        }
        if self.high_water_percent == 0 || self.high_water_percent > 100 {
            return Err(Error::invalid(
                "high_water_percent",
                self.high_water_percent,
                "must be between 1 and 100",
            ));
        }
        if self.low_water_percent >= self.high_water_percent {
            return Err(Error::invalid(
                "low_water_percent",
                self.low_water_percent,
                format!(
                    "must be below high_water_percent ({})",
                    self.high_water_percent
                ),
            ));
        }
        if self.max_fault_events == 0 || self.max_fault_events > 4096 {
            return Err(Error::invalid(
                "max_fault_events",
                self.max_fault_events,
                "must be between 1 and 4096",
            ));
        }
        Ok(())
    }
}

/// The fewest pages a buffer may hold. A single load or store can straddle two pages, and
/// needs both resident at once to complete; a one-page buffer would evict one to fill the
/// other forever. (With several threads faulting at once, give it at least two pages each.)
pub const MIN_BUFFER_PAGES: usize = 2;

/// Checks that `page_size` is a non-zero multiple of the system page size.
pub(crate) fn validate_page_size(page_size: usize) -> Result<()> {
    let sys = sys::page_size();
    if page_size == 0 || page_size % sys != 0 {
        return Err(Error::invalid(
            "page_size",
            page_size,
            format!("must be a non-zero multiple of the system page size ({sys} bytes)"),
        ));
    }
    if page_size > u32::MAX as usize {
        return Err(Error::invalid(
            "page_size",
            page_size,
            "must be below 4 GiB",
        ));
    }
    Ok(())
}

/// Builds a [`Config`]; see [`Config::builder`].
#[derive(Debug, Clone)]
pub struct ConfigBuilder(Config);

impl ConfigBuilder {
    /// Default bytes per umap page for regions that do not choose their own.
    pub fn page_size(mut self, bytes: usize) -> Self {
        self.0.page_size = bytes;
        self
    }
    /// Bytes that may be resident at once across all regions.
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.0.buffer_size = bytes;
        self
    }
    /// Number of filler threads.
    pub fn fillers(mut self, n: usize) -> Self {
        self.0.fillers = n;
        self
    }
    /// Number of evictor threads.
    pub fn evictors(mut self, n: usize) -> Self {
        self.0.evictors = n;
        self
    }
    /// High- and low-water marks in percent of the buffer.
    pub fn watermarks(mut self, high_percent: u8, low_percent: u8) -> Self {
        self.0.high_water_percent = high_percent;
        self.0.low_water_percent = low_percent;
        self
    }
    /// Page-fault events a filler reads per system call.
    pub fn max_fault_events(mut self, n: usize) -> Self {
        self.0.max_fault_events = n;
        self
    }
    /// The validated configuration.
    pub fn build(self) -> Result<Config> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn invalid_values_name_the_field_and_the_fix() {
        let cases: [(ConfigBuilder, &str, &str); 7] = [
            (
                Config::builder().page_size(0),
                "page_size",
                "multiple of the system page",
            ),
            (
                Config::builder().page_size(6000),
                "page_size",
                "multiple of the system page",
            ),
            (
                Config::builder().page_size(8192).buffer_size(8192),
                "buffer_size",
                "at least 2 pages",
            ),
            (Config::builder().fillers(0), "fillers", "at least one"),
            (Config::builder().evictors(0), "evictors", "at least one"),
            (
                Config::builder().watermarks(50, 50),
                "low_water_percent",
                "below",
            ),
            (
                Config::builder().max_fault_events(0),
                "max_fault_events",
                "between",
            ),
        ];
        for (builder, field, hint) in cases {
            let err = builder.build().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(field) && msg.contains(hint), "{msg}");
        }
        let err = Config::builder().watermarks(101, 10).build().unwrap_err();
        assert!(err.to_string().contains("high_water_percent"), "{err}");
    }

    #[test]
    fn twelve_kib_pages_are_valid() {
        Config::builder().page_size(12 * 1024).build().unwrap();
    }
}
