//! # umap
//!
//! Map data larger than RAM into your address space and page it in and out in user space,
//! through Linux `userfaultfd`. You choose the page size, how much memory the pager may use
//! (the buffer), and how many threads serve faults; reading the mapped memory does the rest.
//!
//! ```no_run
//! use umap::{FileStore, MapOptions, Umap};
//!
//! // At most 256 MiB of the file is resident at any time, in 64 KiB pages.
//! let umap = Umap::builder().buffer_size(256 << 20).page_size(64 << 10).start()?;
//! let region = umap.map(FileStore::open_read_only("huge.bin")?, MapOptions::new())?;
//! let data: &[u8] = region.as_slice();
//! println!("first byte {}, last byte {}", data[0], data[data.len() - 1]);
//! region.unmap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate re-exports the public API of `umap-core` (the engine) and `umap-store` (the
//! backing stores).

#![warn(missing_docs)]

pub use umap_core::{
    Advice, Config, ConfigBuilder, Error, ErrorKind, Latency, MapOptions, Prefetch, Region,
    RegionError, RegionStats, Result, Stats, Umap, UnmapError, MAX_READ_AHEAD, MIN_BUFFER_PAGES,
    PAGE_METADATA_BYTES,
};

/// The `UMAP_*` environment variables ([`Config::from_env`], [`ConfigBuilder::env`]).
pub use umap_core::env;
pub use umap_store::{CopySource, FileStore, FileStoreOptions, MemStore, Store, StoreError};

/// The typed userfaultfd layer, for programs that drive userfaultfd themselves.
pub use umap_core::uffd;

/// Live snapshots: a point-in-time image of a memory range, written to a store while the
/// application keeps writing to it.
pub use umap_core::snapshot;

/// Small system helpers (system page size, `mincore` residency), as used by the engine.
pub use umap_core::sys;

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
