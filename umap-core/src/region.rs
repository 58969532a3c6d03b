//! Regions: a mapped range of a store, its page table, and the handle the application holds.

use std::fmt;
use std::sync::Arc;

use umap_store::Store;

use crate::engine::Umap;
use crate::error::Result;
use crate::gate::Gate;
use crate::page_table::PageTable;
use crate::sys::Mapping;

/// How to map a store; see [`Umap::map`].
///
/// ```
/// use umap_core::MapOptions;
/// let opts = MapOptions::new().page_size(4096).offset(1 << 20).len(10 << 20);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapOptions {
    pub(crate) page_size: Option<usize>,
    pub(crate) offset: u64,
    pub(crate) len: Option<usize>,
}

impl MapOptions {
    /// Map the whole store with the engine's page size.
    pub fn new() -> MapOptions {
        MapOptions::default()
    }
    /// This region's page size: a multiple of the system page size (4 KiB, 12 KiB, 2 MiB, ...).
    pub fn page_size(mut self, bytes: usize) -> MapOptions {
        self.page_size = Some(bytes);
        self
    }
    /// The store offset the region starts at (default 0).
    pub fn offset(mut self, offset: u64) -> MapOptions {
        self.offset = offset;
        self
    }
    /// The region's length in bytes (default: from `offset` to the end of the store). It need
    /// not be a multiple of the page size: the rest of the last page reads as zeros.
    pub fn len(mut self, len: usize) -> MapOptions {
        self.len = Some(len);
        self
    }
}

/// What the engine threads know of a region.
pub(crate) struct RegionShared {
    /// Start of the region's address range.
    pub(crate) base: usize,
    /// The length the caller asked for.
    pub(crate) len: usize,
    /// `len` rounded up to the page size: the registered range.
    pub(crate) mapped_len: usize,
    pub(crate) page_size: usize,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) store_offset: u64,
    pub(crate) pages: PageTable,
    /// Held by every thread that touches the region's memory.
    pub(crate) gate: Gate,
}

impl RegionShared {
    /// The page that contains `addr` (which lies in the region).
    #[inline]
    pub(crate) fn page_of(&self, addr: usize) -> usize {
        (addr - self.base) / self.page_size
    }

    /// Whether `addr` lies in the registered range.
    #[inline]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        addr >= self.base && addr - self.base < self.mapped_len
    }

    /// Start address of `page`.
    #[inline]
    pub(crate) fn page_addr(&self, page: usize) -> usize {
        self.base + page * self.page_size
    }

    /// How many bytes of `page` come from the store (the rest of the last page is zeros).
    #[inline]
    pub(crate) fn page_data_len(&self, page: usize) -> usize {
        (self.len - page * self.page_size).min(self.page_size)
    }

    /// The store offset of `page`.
    #[inline]
    pub(crate) fn page_store_offset(&self, page: usize) -> u64 {
        self.store_offset + (page * self.page_size) as u64
    }
}

impl fmt::Debug for RegionShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionShared")
            .field("base", &format_args!("{:#x}", self.base))
            .field("len", &self.len)
            .field("page_size", &self.page_size)
            .field("store_offset", &self.store_offset)
            .finish()
    }
}

/// A store mapped into the address space. Reading its memory pages data in from the store
/// through the engine; resident pages stay within the engine's buffer.
///
/// Dropping a region unmaps it (and logs an error it cannot return); [`Region::unmap`] does
/// the same and returns the error.
pub struct Region {
    pub(crate) shared: Arc<RegionShared>,
    /// The address range; `None` once unmapped.
    pub(crate) mapping: Option<Mapping>,
    pub(crate) engine: Umap,
}

impl Region {
    /// Start of the region.
    pub fn as_ptr(&self) -> *const u8 {
        self.shared.base as *const u8
    }

    /// Length in bytes, as asked for at map time.
    pub fn len(&self) -> usize {
        self.shared.len
    }

    /// Whether the length is zero (never: zero-length maps are refused).
    pub fn is_empty(&self) -> bool {
        self.shared.len == 0
    }

    /// This region's page size in bytes.
    pub fn page_size(&self) -> usize {
        self.shared.page_size
    }

    /// The store offset the region starts at.
    pub fn store_offset(&self) -> u64 {
        self.shared.store_offset
    }

    /// The region as a byte slice. Touching it faults pages in from the store.
    ///
    /// Regions are mapped read-only, so the contents never change while the slice is
    /// borrowed: an evicted page is filled again with the same bytes from the store (as long
    /// as nobody else changes the store underneath, the same caveat as a file `mmap`).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the range [base, base + len) is mapped (read-only) for as long as `self` is
        // borrowed: unmapping takes `self` by value or happens in Drop. Every access is served
        // by the engine (missing pages are filled from the store), so all bytes are
        // initialised, and nothing writes to the range while it is mapped read-only.
        unsafe { std::slice::from_raw_parts(self.shared.base as *const u8, self.shared.len) }
    }

    /// Resident bytes of this region now (pages in the buffer). Counts the page table, so it
    /// costs one load per page of the region: a diagnostic, not for hot loops.
    pub fn resident_bytes(&self) -> usize {
        self.shared.pages.count(crate::page_table::CLEAN) * self.shared.page_size
    }

    /// Unmaps the region: waits for in-flight fills and evictions, releases its share of the
    /// buffer, and removes the address range. Threads still touching the range afterwards
    /// fault as on any unmapped memory.
    pub fn unmap(mut self) -> Result<()> {
        self.unmap_inner()
    }

    fn unmap_inner(&mut self) -> Result<()> {
        match self.mapping.take() {
            Some(mapping) => self.engine.unmap_region(&self.shared, mapping),
            None => Ok(()),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Err(e) = self.unmap_inner() {
            log::error!("unmapping region at {:#x} failed: {e}", self.shared.base);
        }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("addr", &format_args!("{:#x}", self.shared.base))
            .field("len", &self.shared.len)
            .field("page_size", &self.shared.page_size)
            .field("store_offset", &self.shared.store_offset)
            .finish()
    }
}
