//! Engine configuration: page size, buffer, thread counts, watermarks, read-ahead and
//! diagnostics, validated before anything starts. The `UMAP_*` environment variables are read
//! by [`crate::env`].

use std::time::Duration;

use crate::error::{Error, Result};
use crate::{memory, sys};

/// The engine's configuration. Build one with [`Config::builder`] (or start from
/// [`Config::default`]); [`Config::validate`] runs before an engine starts.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `page_size` | 64 KiB | bytes per umap page (a multiple of the system page), per region overridable |
/// | `buffer_size` | half the memory available to the process (see below) | bytes that may be resident across all regions (at least 2 pages) |
/// | `fillers` | number of CPUs | threads that serve page faults |
/// | `evictors` | 1 | threads that keep the buffer under the high-water mark |
/// | `high_water_percent` | 90 | eviction starts when this much of the buffer is resident |
/// | `low_water_percent` | 70 | eviction stops at this much |
/// | `max_fault_events` | 32 | page-fault events a filler reads per system call |
/// | `read_ahead` | 256 | pages filled after a sequential fault, at most 1 MiB of them (per region overridable) |
/// | `recycle_pages` | false | move evicted pages into a pool and dirty fills out of it (`UFFDIO_MOVE`) instead of freeing and copying |
/// | `signal_faults` | false | serve each fault on the faulting thread, in a `SIGBUS` handler, instead of in a filler thread (see the field) |
/// | `monitor_interval` | none | print the statistics to stderr this often |
/// | `log_level` | none | install a stderr logger at this level if the program has none |
///
/// The default buffer is half of what the process can use without pressure: the smaller of
/// the system's `MemAvailable` and the room left under the memory limit of the process's
/// cgroup (v1 or v2, the tightest limit among its ancestors), at least 16 MiB. A container
/// limited to 1 GiB thus gets a buffer under 512 MiB even on a large host.
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
    /// Read-ahead window in pages: after a fault that continues a sequential run of faults,
    /// this many following pages are filled with it (0: off). Capped per region so that a run
    /// is at most 1 MiB and within the buffer's low-water share (so none with 1 MiB pages).
    pub read_ahead: usize,
    /// Page recycling: evictions move pages into a pool (`UFFDIO_MOVE`) instead of dropping
    /// them, and fills that install writable, dirty pages read the store straight into pool
    /// pages and move them into the region instead of copying them (`UFFDIO_COPY`). The pool
    /// counts toward the buffer. Without `UFFDIO_MOVE` (older kernels) this does nothing.
    pub recycle_pages: bool,
    /// Serve faults on the faulting thread: the engine's userfaultfd raises `SIGBUS` in the
    /// thread that faults (`UFFD_FEATURE_SIGBUS`) instead of queuing an event for a filler,
    /// and a process-wide `SIGBUS` handler reads the page from the store and installs it
    /// right there. No thread is woken or put to sleep, so a fault costs a few µs instead of
    /// two cross-CPU hand-offs; fillers then only serve prefetches. The price, which is why
    /// this is off by default:
    /// - a system call that reads or writes a page of a region that is not resident fails
    ///   with `EFAULT` instead of waiting for it (`write(fd, region, n)`, `read` into a
    ///   region, ...): touch or [`prefetch`](crate::Region::prefetch) such pages first;
    /// - the handler runs on the application's thread and takes engine locks and may
    ///   allocate: code that touches region memory must not do so while holding the global
    ///   allocator's lock (no heap placed inside a region), and must not block `SIGBUS`;
    /// - the program must not replace the `SIGBUS` handler while such an engine runs (one
    ///   installed before is kept and gets every `SIGBUS` the engine does not serve);
    /// - x86-64 only (the handler tells writes from reads by the CPU's error code).
    ///
    /// It combines with [`recycle_pages`](Config::recycle_pages): the page pool raises no
    /// fault of its own (its pages are never write-protected), so nothing changes for it.
    pub signal_faults: bool,
    /// Print [`Stats`](crate::Stats) to stderr at this interval (`None`: never).
    pub monitor_interval: Option<Duration>,
    /// If set, the engine installs a logger that writes to stderr at this level, unless the
    /// program installed one of its own (then only the maximum level is set).
    pub log_level: Option<log::LevelFilter>,
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
            read_ahead: DEFAULT_READ_AHEAD,
            recycle_pages: false,
            signal_faults: false,
            monitor_interval: None,
            log_level: None,
        }
    }
}

/// Half of the memory available to this process, at least 16 MiB; see [`Config`].
fn default_buffer_size() -> usize {
    let available = memory::available_to_process();
    let half = usize::try_from(available / 2).unwrap_or(usize::MAX);
    half.max(16 << 20) & !(sys::page_size() - 1)
}

/// The default read-ahead window in pages: 1 MiB of 4 KiB pages. Every window is capped so
/// that a run (the faulting page and its read-ahead) is at most 1 MiB and within the buffer's
/// low-water share, so with larger pages this means "as far as a 1 MiB run goes" (15 pages of
/// 64 KiB). A scan faults once per window instead of once per page, after a ramp (2, 4, 8 ...
/// pages) that random access never climbs; see docs/PERFORMANCE.md for the measurements.
pub const DEFAULT_READ_AHEAD: usize = 256;

/// The most pages a read-ahead window may have.
pub const MAX_READ_AHEAD: usize = 1 << 16;

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
        validate_read_ahead(self.read_ahead)?;
        if self.monitor_interval == Some(Duration::ZERO) {
            return Err(Error::invalid(
                "monitor_interval",
                "0s",
                "must be positive (None turns the monitor off)",
            ));
        }
        Ok(())
    }
}

/// The fewest pages a buffer may hold. A single load or store can straddle two pages, and
/// needs both resident at once to complete; a one-page buffer would evict one to fill the
/// other forever. (With several threads faulting at once, give it at least two pages each.)
pub const MIN_BUFFER_PAGES: usize = 2;

/// Checks a read-ahead window.
pub(crate) fn validate_read_ahead(pages: usize) -> Result<()> {
    if pages > MAX_READ_AHEAD {
        return Err(Error::invalid(
            "read_ahead",
            pages,
            format!("must be at most {MAX_READ_AHEAD} pages"),
        ));
    }
    Ok(())
}

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
    /// Read-ahead window in pages for regions that do not choose their own (0: off).
    pub fn read_ahead(mut self, pages: usize) -> Self {
        self.0.read_ahead = pages;
        self
    }
    /// Page recycling on or off (see [`Config::recycle_pages`]).
    pub fn recycle_pages(mut self, on: bool) -> Self {
        self.0.recycle_pages = on;
        self
    }
    /// Faults served on the faulting thread, or by filler threads (see
    /// [`Config::signal_faults`]).
    pub fn signal_faults(mut self, on: bool) -> Self {
        self.0.signal_faults = on;
        self
    }
    /// Print the statistics to stderr at this interval (`None`: never).
    pub fn monitor_interval(mut self, interval: Option<Duration>) -> Self {
        self.0.monitor_interval = interval;
        self
    }
    /// Log to stderr at this level if the program installed no logger (`None`: leave logging
    /// to the program).
    pub fn log_level(mut self, level: Option<log::LevelFilter>) -> Self {
        self.0.log_level = level;
        self
    }
    /// The configuration so far (not validated yet).
    pub fn config(&self) -> &Config {
        &self.0
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
        let cases: [(ConfigBuilder, &str, &str); 9] = [
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
            (
                Config::builder().read_ahead(MAX_READ_AHEAD + 1),
                "read_ahead",
                "at most",
            ),
            (
                Config::builder().monitor_interval(Some(Duration::ZERO)),
                "monitor_interval",
                "positive",
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
