//! The engine behind [umap](https://docs.rs/umap): a user-space pager built on Linux
//! `userfaultfd`.
//!
//! An [`Umap`] engine owns one userfaultfd, a pool of filler threads that serve page faults
//! straight from the kernel (one wake-up per fault), a pool of evictor threads, and a buffer
//! that bounds how much of all its regions may be resident. [`Umap::map`] maps a
//! [`Store`](umap_store::Store) into the address space as a [`Region`]; touching the region's
//! memory pages data in from the store.
//!
//! Modules, one job each:
//! - [`uffd`]: the typed userfaultfd layer (the only place that issues its ioctls);
//! - [`sys`]: mappings, `madvise`, `mincore`, epoll and eventfd;
//! - [`snapshot`]: live snapshots of any memory range into a store, through write protection;
//! - [`env`](mod@env): the `UMAP_*` environment variables;
//! - `config`, `engine`, `region`, `prefetch`, `advice`: the public API;
//! - `page_table` (per-page state machine), `gate` (region lifetime), `buffer` (capacity and
//!   eviction order), `filler` (serving faults), `fill` (runs of pages, read-ahead), `evictor`,
//!   `writeback` (dirty pages to the store), `stats` and `latency`, `memory` (the default
//!   buffer size), `logger`: the machinery.

#![warn(missing_docs)]

mod advice;
mod backoff;
mod buffer;
mod config;
mod engine;
pub mod env;
mod error;
mod evictor;
mod fill;
mod filler;
mod gate;
mod latency;
mod logger;
mod memory;
mod page_table;
mod pin;
mod pool;
mod prefetch;
mod region;
mod report;
mod signal;
pub mod snapshot;
mod stats;
mod store_guard;
pub mod sys;
pub mod uffd;
mod unwind;
mod write_intent;
mod writeback;

pub use advice::Advice;
pub use config::{Config, ConfigBuilder, MAX_READ_AHEAD, MIN_BUFFER_PAGES};
pub use engine::Umap;
pub use error::{Error, Result};
pub use latency::Latency;
pub use page_table::PAGE_METADATA_BYTES;
pub use prefetch::Prefetch;
pub use region::{MapOptions, Region, UnmapError};
pub use report::{ErrorKind, RegionError, MAX_RECORDS};
pub use stats::{RegionStats, Stats};

#[cfg(test)]
mod tests {
    /// Regions and engines are shared between threads.
    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::Umap>();
        check::<crate::Region>();
        check::<crate::Config>();
        check::<crate::Stats>();
        check::<crate::Error>();
        check::<crate::UnmapError>();
        check::<crate::RegionError>();
        check::<crate::snapshot::Snapshot>();
        check::<crate::snapshot::SnapshotStats>();
    }
}
