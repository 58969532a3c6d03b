//! A minimal stderr logger, installed when the configuration asks for a log level
//! (`UMAP_LOG_LEVEL`) and the program has no logger of its own.

use std::io::Write;

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let thread = std::thread::current();
        // One write per line, so lines of different threads do not interleave.
        let line = format!(
            "[umap {} {}] {}\n",
            record.level(),
            thread.name().unwrap_or("?"),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Logs at `level` to stderr: installs the stderr logger unless the program installed one,
/// and sets the maximum level either way.
pub(crate) fn install(level: log::LevelFilter) {
    if log::set_logger(&LOGGER).is_err() {
        log::debug!("a logger is already installed; only setting the level to {level}");
    }
    log::set_max_level(level);
}
