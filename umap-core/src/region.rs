//! Regions: a mapped range of a store, its page table, and the handle the application holds.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use umap_store::Store;

use crate::advice::{Advice, Pattern, PatternMap, StreamHit, Streams};
use crate::engine::Umap;
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::page_table::{PageTable, DIRTY};
use crate::pin::Pins;
use crate::prefetch::Prefetch;
use crate::report::{ErrorLog, RegionError};
use crate::stats::{Counters, RegionStats};
use crate::write_intent::WriteIntent;

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
    pub(crate) writable: bool,
    pub(crate) read_ahead: Option<usize>,
    pub(crate) fixed: Option<Fixed>,
}

/// Where a fixed-address region goes, and whether it may replace what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fixed {
    pub(crate) addr: usize,
    pub(crate) replace: bool,
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
    /// Map the region writable (default: read-only). Writes go to the store when a dirty
    /// page is evicted, on [`Region::flush`], and on unmap. The store must be writable.
    pub fn writable(mut self, writable: bool) -> MapOptions {
        self.writable = writable;
        self
    }
    /// This region's read-ahead window in pages (default: the engine's
    /// [`Config::read_ahead`](crate::Config::read_ahead)); 0 turns read-ahead off. After a
    /// fault that continues a sequential run of faults, up to this many following pages are
    /// filled with it, in the same store read. The window is capped so that a run (the
    /// faulting page and its read-ahead) is at most 1 MiB and within the buffer's low-water
    /// share: pages of 1 MiB or more are their own read-ahead.
    pub fn read_ahead(mut self, pages: usize) -> MapOptions {
        self.read_ahead = Some(pages);
        self
    }

    /// Map the region at exactly `addr` (a multiple of the system page size; LLNL umap's
    /// `UMAP_FIXED`). The map fails, touching nothing, if any part of the range is mapped
    /// already (`MAP_FIXED_NOREPLACE`).
    pub fn fixed_address(mut self, addr: usize) -> MapOptions {
        self.fixed = Some(Fixed {
            addr,
            replace: false,
        });
        self
    }

    /// Map the region at exactly `addr` (a multiple of the system page size), replacing
    /// whatever is mapped in the range (`MAP_FIXED`, as LLNL umap's `UMAP_FIXED` does).
    ///
    /// # Safety
    /// The caller owns `[addr, addr + len)` (the length rounded up to the page size), and
    /// nothing uses what is mapped there any more: the map removes it, as `munmap` would.
    pub unsafe fn fixed_address_replacing(mut self, addr: usize) -> MapOptions {
        self.fixed = Some(Fixed {
            addr,
            replace: true,
        });
        self
    }
}

/// Bytes a fill run (a fault and its read-ahead, or a prefetch chunk) reads at most in one
/// store call: larger runs no longer fit the CPU caches between the read and the copy.
pub(crate) const MAX_RUN_BYTES: usize = 1 << 20;

/// What the engine threads know of a region.
pub(crate) struct RegionShared {
    /// Start of the region's address range.
    pub(crate) base: usize,
    /// The length the caller asked for.
    pub(crate) len: usize,
    /// `len` rounded up to the page size: the registered range.
    pub(crate) mapped_len: usize,
    pub(crate) page_size: usize,
    /// Mapped writable, registered for write-protect faults too.
    pub(crate) writable: bool,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) store_offset: u64,
    pub(crate) pages: PageTable,
    /// Held by every thread that touches the region's memory.
    pub(crate) gate: Gate,
    /// Failures met in the background, for [`Region::take_errors`].
    pub(crate) errors: ErrorLog,
    /// This region's share of the statistics.
    pub(crate) counters: Counters,
    /// Read-ahead window in pages after a sequential fault (0: off).
    pub(crate) read_ahead: usize,
    /// Window in pages for faults in ranges advised `Sequential`.
    pub(crate) sequential_window: usize,
    /// Most pages filled by one store read for a prefetch.
    pub(crate) max_run: usize,
    /// Access patterns advised by the application.
    pub(crate) patterns: PatternMap,
    /// Sequential fault streams seen (for read-ahead).
    pub(crate) streams: Streams,
    /// Whether clean fills are nearly all written soon after (writable regions).
    pub(crate) write_intent: WriteIntent,
    /// Pages never evicted (`Region::pin`).
    pub(crate) pins: Pins,
    /// A copy from the store's [`copy_source`](umap_store::Store::copy_source) failed (the
    /// memory could not be read: the file shrank, or a page of it cannot be read): from then
    /// on this region's fills read with `read_at`, which reports such failures properly.
    pub(crate) copy_source_failed: AtomicBool,
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

    /// The read-ahead window for a fault on `page` (0 for none), and the fault's place in the
    /// sequential streams (to record once the run's length is known), if read-ahead applies.
    #[inline]
    pub(crate) fn read_ahead_window(&self, page: usize) -> (usize, Option<StreamHit>) {
        match self.patterns.get(page) {
            Pattern::Random => (0, None),
            // The whole window on every fault, in the direction the fault's stream runs
            // (upwards for a new one).
            Pattern::Sequential => (self.sequential_window, Some(self.streams.find(page))),
            Pattern::Normal if self.read_ahead == 0 => (0, None),
            Pattern::Normal => {
                let hit = self.streams.find(page);
                (Streams::window(hit, self.read_ahead), Some(hit))
            }
        }
    }

    /// The pages that overlap `[offset, offset + len)` of the region, or an error naming the
    /// bad bound.
    pub(crate) fn page_range(&self, offset: usize, len: usize) -> Result<Range<usize>> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.len)
            .ok_or_else(|| {
                Error::invalid(
                    "range",
                    format_args!("{offset}..{}", offset as u128 + len as u128),
                    format!("lies outside the region (0..{})", self.len),
                )
            })?;
        if len == 0 {
            return Ok(0..0);
        }
        Ok(offset / self.page_size..end.div_ceil(self.page_size))
    }
}

impl fmt::Debug for RegionShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionShared")
            .field("base", &format_args!("{:#x}", self.base))
            .field("len", &self.len)
            .field("page_size", &self.page_size)
            .field("writable", &self.writable)
            .field("store_offset", &self.store_offset)
            .finish()
    }
}

/// A store mapped into the address space. Touching its memory pages data in from the store
/// through the engine; resident pages stay within the engine's buffer.
///
/// A writable region ([`MapOptions::writable`]) tracks which pages are written (the first
/// write to a clean page is a write-protect fault) and writes them back to the store when
/// they are evicted, on [`flush`](Region::flush), and when the region is unmapped.
///
/// [`Region::unmap`] writes back and unmaps it; if the write-back fails, the region stays
/// mapped and comes back in the error ([`UnmapError::into_region`]), so no dirty byte is lost.
/// Dropping a region does the same, and when the write-back fails it logs the error and keeps
/// the region mapped and registered with the engine (leaked, out of the application's reach):
/// [`Umap::flush`] retries it and unmaps it once written, and the engine's shutdown tries a
/// last time. Call [`Region::unmap`] to handle the error yourself.
///
/// ```
/// use umap_core::{MapOptions, Umap};
/// use umap_store::MemStore;
/// use std::sync::Arc;
///
/// let umap = Umap::builder().buffer_size(1 << 20).page_size(4096).fillers(1).start()?;
/// let store = Arc::new(MemStore::new(4 << 20));
/// let mut region = umap.map_shared(store.clone(), MapOptions::new().writable(true))?;
/// region.as_mut_slice()?[3 << 20] = 42; // 4 MiB through a 1 MiB buffer
/// region.flush()?;                        // now in the store
/// assert_eq!(store.to_vec()[3 << 20], 42);
/// region.unmap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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

    /// Whether the region was mapped writable.
    pub fn is_writable(&self) -> bool {
        self.shared.writable
    }

    /// The region as a byte slice. Touching it faults pages in from the store.
    ///
    /// The contents do not change while the slice is borrowed (writing through
    /// [`as_mut_slice`](Region::as_mut_slice) needs `&mut self`): an evicted page is filled
    /// again with the bytes it had, from the store (as long as nobody else changes the store
    /// underneath, the same caveat as a file `mmap`). Writes through
    /// [`as_mut_ptr`](Region::as_mut_ptr) while the slice is borrowed are the caller's
    /// responsibility, as with any raw pointer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the range [base, base + len) is mapped for as long as `self` is borrowed:
        // unmapping takes `self` by value or happens in Drop. Every access is served by the
        // engine (missing pages are filled from the store, and written pages are written back
        // before they are dropped), so all bytes are initialised and keep their values.
        unsafe { std::slice::from_raw_parts(self.shared.base as *const u8, self.shared.len) }
    }

    /// The region as a mutable byte slice, or an error if it was mapped read-only.
    ///
    /// Writes are seen by the engine page by page and reach the store on eviction, on
    /// [`flush`](Region::flush) and on unmap. Split the slice (`chunks_mut`, `split_at_mut`,
    /// rayon) to write from several threads.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        if !self.shared.writable {
            return Err(Error::invalid(
                "region",
                format_args!("{:#x}", self.shared.base),
                "is mapped read-only: map it with MapOptions::writable(true) to write",
            ));
        }
        // SAFETY: as in `as_slice`, the range is mapped and initialised while `self` is
        // borrowed, here exclusively; it is mapped PROT_READ | PROT_WRITE, and the engine
        // makes every page writable on its first write (write-protect faults).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.shared.base as *mut u8, self.shared.len) })
    }

    /// The start of the region as a raw pointer, for threads that share the region and
    /// synchronise their accesses themselves (as with a shared `mmap`). Writing through it
    /// is allowed only in a writable region (in a read-only one a write raises `SIGSEGV`), and
    /// only within [`len`](Region::len) bytes while the region is mapped.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.shared.base as *mut u8
    }

    /// Writes every dirty page of the region back to the store, then syncs the store
    /// ([`Store::sync`]: `fdatasync` for files). Pages stay resident, clean and
    /// write-protected. Returns the first error; pages whose write failed stay dirty (and
    /// resident), so a later flush retries them.
    ///
    /// Writes that other threads make while the flush runs may or may not be included; all
    /// writes that happened before the call are. Other pages keep being faulted, filled and
    /// evicted meanwhile: the flush holds no lock, only each page for its own write-back.
    pub fn flush(&self) -> Result<()> {
        self.flush_range(0, self.shared.len)
    }

    /// As [`flush`](Region::flush), for the pages overlapping `[offset, offset + len)` of the
    /// region; an error if the range does not lie inside the region.
    pub fn flush_range(&self, offset: usize, len: usize) -> Result<()> {
        let pages = self.shared.page_range(offset, len)?;
        self.engine.flush_region(&self.shared, pages)
    }

    /// Takes the failures the engine recorded for this region since the last call, oldest
    /// first: store reads that failed (their pages are poisoned, accesses raise `SIGBUS`),
    /// write-backs and syncs that failed (the pages stay dirty and are retried), and fills
    /// that stalled on a buffer full of pages that could not be written back. Each says
    /// where (region and store offsets), the errno and how many times it happened; see
    /// [`RegionError`]. The counts are in [`Umap::stats`] too.
    pub fn take_errors(&self) -> Vec<RegionError> {
        self.shared.errors.take()
    }

    /// Starts filling the pages overlapping `[offset, offset + len)` in the background and
    /// returns at once; [`Prefetch::wait`] blocks until they are resident. Filler threads do
    /// it when no fault is waiting (faults go first), in runs of up to 1 MiB per store read.
    /// A later access to the range does not fault (as long as the pages were not evicted
    /// meanwhile: prefetch at most the buffer's low-water share, less what other threads
    /// fill meanwhile). Pages already resident are left as they are.
    ///
    /// Errors: the range is not inside the region, or is larger than the buffer (the end of
    /// the range would evict its start).
    ///
    /// ```
    /// use umap_core::{MapOptions, Umap};
    /// use umap_store::MemStore;
    ///
    /// let umap = Umap::builder().buffer_size(4 << 20).page_size(4096).fillers(1).start()?;
    /// let region = umap.map(MemStore::from_vec(vec![7u8; 8 << 20]), MapOptions::new())?;
    /// region.prefetch(1 << 20, 2 << 20)?.wait()?;
    /// let faults = region.stats().read_faults;
    /// assert!(region.as_slice()[1 << 20..3 << 20].iter().all(|&b| b == 7));
    /// assert_eq!(region.stats().read_faults, faults, "no fault: the range was resident");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prefetch(&self, offset: usize, len: usize) -> Result<Prefetch> {
        let pages = self.shared.page_range(offset, len)?;
        let bytes = pages.len() * self.shared.page_size;
        let capacity = self.engine.buffer_capacity();
        if bytes > capacity {
            return Err(Error::invalid(
                "len",
                len,
                format!(
                    "the range covers {bytes} bytes of pages, more than the buffer holds \
                     ({capacity} bytes): prefetch at most the buffer's low-water share, a part \
                     at a time"
                ),
            ));
        }
        Ok(self.engine.prefetch(&self.shared, pages))
    }

    /// Tells the pager how the range `[offset, offset + len)` will be used; see [`Advice`].
    /// `Normal`, `Sequential` and `Random` set the range's read-ahead policy; `WillNeed`
    /// prefetches it (in the background, up to the buffer's low-water share); `DontNeed`
    /// writes back and drops its resident pages before returning, and returns the first
    /// write-back error (pages that could not be written stay resident and dirty).
    ///
    /// ```
    /// use umap_core::{Advice, MapOptions, Umap};
    /// use umap_store::MemStore;
    ///
    /// let umap = Umap::builder().buffer_size(4 << 20).page_size(4096).fillers(1).start()?;
    /// let region = umap.map(MemStore::from_vec(vec![1u8; 2 << 20]), MapOptions::new())?;
    /// let sum: u64 = region.as_slice().iter().map(|&b| b as u64).sum();
    /// assert!(region.resident_bytes() > 0);
    /// region.advise(0, region.len(), Advice::DontNeed)?;
    /// assert_eq!(region.resident_bytes(), 0);
    /// assert_eq!(region.as_slice()[12345], 1, "the data is still there");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn advise(&self, offset: usize, len: usize, advice: Advice) -> Result<()> {
        let pages = self.shared.page_range(offset, len)?;
        match advice {
            Advice::Normal => self.shared.patterns.set(pages, Pattern::Normal),
            Advice::Sequential => self.shared.patterns.set(pages, Pattern::Sequential),
            Advice::Random => self.shared.patterns.set(pages, Pattern::Random),
            Advice::WillNeed => {
                let low_water_pages = self.engine.low_water_bytes() / self.shared.page_size;
                let end = pages.end.min(pages.start + low_water_pages.max(1));
                // The handle is not needed: the prefetch runs on its own.
                drop(self.engine.prefetch(&self.shared, pages.start..end));
            }
            Advice::DontNeed => return self.engine.drop_range(&self.shared, pages),
        }
        Ok(())
    }

    /// Fills the pages overlapping `[offset, offset + len)` and keeps them resident: they are
    /// never evicted (nor dropped by [`Advice::DontNeed`]) until [`unpin`](Region::unpin) or
    /// unmap. Returns once every page is resident, so accesses to the range never fault
    /// again (except the first write to a clean page of a writable region, a write-protect
    /// fault). Writes to pinned pages are written back by [`flush`](Region::flush) and unmap.
    /// Pinning a range again, or an overlapping one, counts each page once. Pins do not
    /// nest: [`unpin`](Region::unpin) releases every page of its range, however many pins
    /// cover it.
    ///
    /// Pinned pages stay in the buffer and are counted in it: the pinned bytes of all regions
    /// may reach the buffer's low-water mark, less two pages of the largest page size (so
    /// evictors can always reach the mark and faults always find room). Errors:
    /// [`Error::PinLimit`] beyond that; the range is not inside the region; a page of it
    /// could not be read (then this pin is undone: its pages are unpinned except those that
    /// another pin holds, one that returned or is still filling, overlapping pins included).
    ///
    /// ```
    /// use umap_core::{MapOptions, Umap};
    /// use umap_store::MemStore;
    ///
    /// let umap = Umap::builder().buffer_size(4 << 20).page_size(4096).fillers(1).start()?;
    /// let region = umap.map(MemStore::from_vec(vec![5u8; 16 << 20]), MapOptions::new())?;
    /// region.pin(0, 1 << 20)?;
    /// // 16 MiB through a 4 MiB buffer: the first MiB stays resident all the while.
    /// assert!(region.as_slice().iter().all(|&b| b == 5));
    /// let faults = region.stats().read_faults;
    /// assert!(region.as_slice()[..1 << 20].iter().all(|&b| b == 5));
    /// assert_eq!(region.stats().read_faults, faults);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pin(&self, offset: usize, len: usize) -> Result<()> {
        let pages = self.shared.page_range(offset, len)?;
        if pages.is_empty() {
            return Ok(());
        }
        self.engine.pin(&self.shared, pages)
    }

    /// Lets the pages overlapping `[offset, offset + len)` be evicted again (pinned or not,
    /// by one pin or several: pins do not nest); their bytes no longer count as pinned.
    pub fn unpin(&self, offset: usize, len: usize) -> Result<()> {
        let pages = self.shared.page_range(offset, len)?;
        self.engine.unpin(&self.shared, pages);
        Ok(())
    }

    /// Bytes of this region pinned now ([`pin`](Region::pin)).
    pub fn pinned_bytes(&self) -> usize {
        self.shared.pins.pages() * self.shared.page_size
    }

    /// This region's statistics (the engine's [`Stats`](crate::Stats) covers all regions).
    /// Counts the page table for the resident and dirty pages: one load per page.
    pub fn stats(&self) -> RegionStats {
        let pages = &self.shared.pages;
        self.shared
            .counters
            .region_snapshot(pages.count_resident() as u64, pages.count(DIRTY) as u64)
    }

    /// Resident bytes of this region now (pages in the buffer). Counts the page table, so it
    /// costs one load per page of the region: a diagnostic, not for hot loops.
    pub fn resident_bytes(&self) -> usize {
        self.shared.pages.count_resident() * self.shared.page_size
    }

    /// Bytes of this region written since they were last written back (dirty pages). A
    /// diagnostic, as [`resident_bytes`](Region::resident_bytes).
    pub fn dirty_bytes(&self) -> usize {
        self.shared.pages.count(DIRTY) * self.shared.page_size
    }

    /// Writes back every dirty page, syncs the store, and unmaps the region: waits for
    /// in-flight fills and evictions, releases its share of the buffer, and removes the
    /// address range. Threads still touching the range afterwards fault as on any unmapped
    /// memory.
    ///
    /// If a write-back or the sync fails, nothing is unmapped: the error gives the region
    /// back, mapped, intact and working ([`UnmapError::into_region`]), to retry later (a
    /// `flush` that succeeds, then `unmap`) or to drop. Threads that faulted on the region
    /// while the unmap was trying just retry.
    pub fn unmap(mut self) -> Result<(), UnmapError> {
        let Some(mapping) = self.mapping.take() else {
            return Ok(());
        };
        match self.engine.unmap_region(&self.shared, mapping) {
            Ok(()) => Ok(()),
            Err((error, Some(mapping))) => {
                self.mapping = Some(mapping);
                Err(UnmapError {
                    error,
                    region: Some(self),
                })
            }
            Err((error, None)) => Err(UnmapError {
                error,
                region: None,
            }),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let Some(mapping) = self.mapping.take() else {
            return;
        };
        match self.engine.unmap_region(&self.shared, mapping) {
            Ok(()) => {}
            Err((e, Some(mapping))) => {
                log::error!(
                    "dropping region at {:#x}: its dirty pages could not be written back ({e}); \
                     it stays mapped until a Umap::flush writes them",
                    self.shared.base
                );
                self.engine.leak(self.shared.clone(), mapping);
            }
            Err((e, None)) => {
                log::error!("unmapping region at {:#x} failed: {e}", self.shared.base);
            }
        }
    }
}

/// An unmap that did not complete: the error, and the region if it is still mapped (its dirty
/// pages could not all be written back). See [`Region::unmap`].
///
/// Converting it into an [`Error`] (with `?`) drops the region, which then stays mapped for
/// [`Umap::flush`] to retry (see [`Region`]).
pub struct UnmapError {
    error: Error,
    region: Option<Region>,
}

impl UnmapError {
    /// Why the unmap did not complete.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The region, still mapped with all its data, if the write-back is what failed; `None`
    /// if the data was written and synced but `munmap` failed.
    pub fn into_region(self) -> Option<Region> {
        self.region
    }

    /// The error and the region.
    pub fn into_parts(self) -> (Error, Option<Region>) {
        (self.error, self.region)
    }
}

impl fmt::Debug for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnmapError")
            .field("error", &self.error)
            .field("region", &self.region)
            .finish()
    }
}

impl fmt::Display for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.region {
            Some(_) => write!(
                f,
                "the region was not unmapped, its dirty pages could not be written back \
                 (it is still mapped: UnmapError::into_region gives it back): {}",
                self.error
            ),
            None => write!(f, "unmapping the region failed: {}", self.error),
        }
    }
}

impl std::error::Error for UnmapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<UnmapError> for Error {
    fn from(e: UnmapError) -> Error {
        e.error
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("addr", &format_args!("{:#x}", self.shared.base))
            .field("len", &self.shared.len)
            .field("page_size", &self.shared.page_size)
            .field("writable", &self.shared.writable)
            .field("store_offset", &self.shared.store_offset)
            .finish()
    }
}
