//! The engine: one userfaultfd, the filler and evictor threads, the buffer, and the registry
//! of regions they serve. Any number of regions share one engine.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use umap_store::Store;

use crate::buffer::Buffer;
use crate::config::{
    validate_page_size, validate_read_ahead, Config, ConfigBuilder, MIN_BUFFER_PAGES,
};
use crate::error::{Error, Result};
use crate::page_table::PageTable;
use crate::prefetch::{Prefetch, PrefetchQueue};
use crate::region::{MapOptions, Region, RegionShared, MAX_RUN_BYTES};
use crate::stats::{Counters, Stats};
use crate::sys::{self, EventFd, Mapping};
use crate::uffd::{Features, RegisterMode, Uffd};
use crate::{evictor, filler, logger, pin, writeback};

/// What every engine thread shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) uffd: Uffd,
    pub(crate) registry: Registry,
    pub(crate) buffer: Buffer,
    pub(crate) counters: Counters,
    /// Readable once the engine stops; wakes fillers out of `epoll_wait`.
    pub(crate) stop_fd: EventFd,
    /// Faults published by a filler that read several at once, for idle fillers to serve.
    pub(crate) pending: Mutex<VecDeque<filler::Job>>,
    /// Signalled when `pending` or `prefetch` get work; each signal wakes one idle filler.
    pub(crate) work_fd: EventFd,
    /// Drops evicted pages in batches.
    pub(crate) dropper: sys::Dropper,
    /// Evicted pages kept for dirty fills (`Config::recycle_pages`).
    pub(crate) pool: Option<crate::pool::Pool>,
    /// How many fillers are polling the userfaultfd instead of sleeping (at most one).
    pub(crate) spinners: AtomicUsize,
    /// The epoll instance all idle fillers wait on (see `filler::Watch`).
    pub(crate) fault_epoll: sys::Epoll,
    /// How many fillers will read the userfaultfd again before sleeping (see `filler::Watch`).
    pub(crate) watchers: AtomicUsize,
    /// Regions dropped while their dirty pages could not be written back: still mapped and
    /// registered, so that [`Umap::flush`] (or the engine's shutdown) can retry and then unmap.
    leaked: Mutex<Vec<(Arc<RegionShared>, Mapping)>>,
    /// Error records left in regions when they were unmapped, for [`Umap::take_errors`].
    unmapped_errors: Mutex<Vec<crate::report::RegionError>>,
    /// Prefetch requests, served by idle fillers.
    pub(crate) prefetch: PrefetchQueue,
    /// Scratch buffers for faults served on the faulting thread (`Config::signal_faults`).
    pub(crate) in_place: Option<crate::signal::InPlaceSlots>,
    /// Set when the engine stops; wakes the monitor thread.
    stopped: Mutex<bool>,
    stopped_cv: Condvar,
    /// The engine's stamp clock, ahead of the process's by this (see
    /// [`PageTable::stamp_at`]): 0, but for tests that start it just before the wrap.
    stamp_offset: u32,
}

impl Shared {
    /// Wakes threads faulting on `[addr, addr + len)` (rounded out to system pages); failures
    /// are logged (a wake can only fail for a malformed range).
    pub(crate) fn wake(&self, addr: usize, len: usize) {
        let ps = sys::page_size();
        let start = addr & !(ps - 1);
        let end = (addr + len).next_multiple_of(ps);
        if let Err(e) = self.uffd.wake(start, end - start) {
            log::error!("{e}");
        }
    }

    /// Wakes one idle filler to take shared work (published faults, prefetches).
    pub(crate) fn signal_work(&self) {
        if let Err(e) = self.work_fd.signal() {
            log::error!("cannot wake a filler for shared work: {e}");
        }
    }

    /// Sleeps for `interval`, or until the engine stops; false once it has stopped.
    fn sleep_unless_stopped(&self, interval: Duration) -> bool {
        let deadline = Instant::now() + interval;
        let mut stopped = self.stopped.lock();
        while !*stopped {
            if self
                .stopped_cv
                .wait_until(&mut stopped, deadline)
                .timed_out()
            {
                return true;
            }
        }
        false
    }
}

impl Shared {
    /// See [`Umap::unmap_region`].
    fn unmap_region(
        &self,
        region: &Arc<RegionShared>,
        mapping: Mapping,
    ) -> Result<(), (Error, Option<Mapping>)> {
        // After this, no engine thread touches the region's memory or pages, and every page
        // is in a stable state (each transition happens inside the gate).
        region.gate.close();
        if region.writable {
            // The mapping is still ours; nobody else owns a page of it now.
            if let Err(e) = writeback::flush_pages(self, region, 0..region.pages.len()) {
                log::error!(
                    "{region:?} stays mapped: {} dirty bytes could not be written back: {e}",
                    region.pages.count(crate::page_table::DIRTY) * region.page_size
                );
                self.reopen(region);
                return Err((e, Some(mapping)));
            }
        }
        // Records the application did not take yet: kept for Umap::take_errors.
        let left = region.errors.take();
        if !left.is_empty() {
            let mut kept = self.unmapped_errors.lock();
            let room = crate::report::MAX_RECORDS.saturating_sub(kept.len());
            if left.len() > room {
                crate::stats::bump(&self.counters.errors_unrecorded, (left.len() - room) as u64);
            }
            kept.extend(left.into_iter().take(room));
        }
        self.registry.remove(region.base);
        self.prefetch.forget_region(region);
        self.buffer.forget_region(region);
        self.buffer.unpin(region.pins.pages() * region.page_size);
        let resident = region.pages.count_resident() * region.page_size;
        self.buffer.release(resident);
        let (base, len) = (mapping.addr(), mapping.len());
        // Unmap without unregistering first: in between, a fault would see plain anonymous
        // memory (zeros). munmap ends the registration with the range.
        let unmapped = mapping.unmap();
        // Threads that faulted meanwhile retry and now fault on unmapped memory.
        self.wake(base, len);
        log::debug!("unmapped {region:?}");
        unmapped.map_err(|e| (Error::os("munmap of the region", e), None))
    }

    /// Serves a region again after an unmap gave up (its gate closed for a while).
    fn reopen(&self, region: &Arc<RegionShared>) {
        region.gate.reopen();
        // Evictors drop the queue entries of a region whose gate they find closed (it is
        // usually being unmapped): queue every resident page again, so that the buffer can
        // evict them. Entries queued twice, or for pages evicted meanwhile, are harmless
        // (whoever pops one checks the page's state).
        let now = std::time::Instant::now();
        self.buffer.push_run(
            (0..region.pages.len())
                .filter(|&page| crate::page_table::is_resident(region.pages.state(page)))
                .map(|page| crate::buffer::PageRef::new(region.clone(), page, now)),
        );
    }
}

/// Regions by start address.
#[derive(Default)]
pub(crate) struct Registry {
    regions: RwLock<BTreeMap<usize, Arc<RegionShared>>>,
}

impl Registry {
    /// The region whose registered range contains `addr`.
    pub(crate) fn lookup(&self, addr: usize) -> Option<Arc<RegionShared>> {
        let map = self.regions.read();
        let (_, region) = map.range(..=addr).next_back()?;
        region.contains(addr).then(|| region.clone())
    }

    fn insert(&self, region: Arc<RegionShared>) {
        self.regions.write().insert(region.base, region);
    }

    fn remove(&self, base: usize) {
        self.regions.write().remove(&base);
    }

    fn len(&self) -> usize {
        self.regions.read().len()
    }

    /// Every region, as of now.
    pub(crate) fn all(&self) -> Vec<Arc<RegionShared>> {
        self.regions.read().values().cloned().collect()
    }
}

/// The user-space pager: configuration, fault-serving threads, and the buffer shared by all
/// its regions. Cheap to clone (a handle); the threads stop when the last handle and the last
/// region are gone.
///
/// ```no_run
/// use umap_core::{MapOptions, Umap};
/// use umap_store::FileStore;
///
/// let umap = Umap::builder().buffer_size(64 << 20).page_size(64 << 10).start()?;
/// let region = umap.map(FileStore::open_read_only("data.bin")?, MapOptions::new())?;
/// let sum: u64 = region.as_slice().iter().map(|&b| b as u64).sum();
/// region.unmap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Umap {
    handle: Arc<Handle>,
}

/// Owns the threads; dropping the last handle stops and joins them.
struct Handle {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The engine's place with the `SIGBUS` handler (`Config::signal_faults`), left when the
    /// engine stops (no region is left by then).
    signal: Option<crate::signal::Registration>,
}

impl Umap {
    /// A configuration builder whose [`start`](ConfigBuilder::start) starts an engine.
    pub fn builder() -> ConfigBuilder {
        Config::builder()
    }

    /// Starts an engine with `config`: creates the userfaultfd and the threads.
    pub fn new(config: Config) -> Result<Umap> {
        Umap::start_with(config, 0)
    }

    /// An engine whose page stamps wrap `lead` from now (instead of after 19 hours), for tests
    /// that run faults and evictions across the wrap.
    #[cfg(test)]
    pub(crate) fn with_stamps_wrapping_in(config: Config, lead: std::time::Duration) -> Umap {
        let offset = crate::buffer::stamp_offset_wrapping_in(lead);
        Umap::start_with(config, offset)
            .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"))
    }

    /// [`Umap::new`], with the engine's stamp clock `stamp_offset` ahead of the process's.
    fn start_with(config: Config, stamp_offset: u32) -> Result<Umap> {
        config.validate()?;
        if let Some(level) = config.log_level {
            logger::install(level);
        }
        let required = if config.signal_faults {
            Features::SIGBUS
        } else {
            Features::empty()
        };
        let uffd = Uffd::open(
            Features::PAGEFAULT_FLAG_WP | Features::POISON | Features::MOVE,
            required,
        )?;
        log::debug!(
            "userfaultfd via {} with features {:?}",
            uffd.method(),
            uffd.features()
        );
        let stop_fd = EventFd::new().map_err(|e| Error::os("eventfd", e))?;
        let work_fd = EventFd::new().map_err(|e| Error::os("eventfd", e))?;
        let fault_epoll = filler::fault_epoll(&uffd, &stop_fd, &work_fd)
            .map_err(|e| Error::os("epoll for the fillers", e))?;
        let buffer = Buffer::new(
            config.buffer_size,
            config.high_water_percent,
            config.low_water_percent,
        );
        // The pool takes at most the room between the low-water mark and the capacity: what
        // evictors free, kept for the fills that follow. The evictors trim it so that region
        // and pool pages stay within the high-water mark (`crate::pool`).
        let pool = if config.recycle_pages && uffd.features().contains(Features::MOVE) {
            crate::pool::Pool::new(&uffd, buffer.capacity() - buffer.low_water())?
                .map(|pool| pool.with_marks(buffer.capacity(), buffer.high_water()))
        } else {
            None
        };
        let shared = Arc::new(Shared {
            buffer,
            pool,
            uffd,
            registry: Registry::default(),
            counters: Counters::default(),
            stop_fd,
            spinners: AtomicUsize::new(0),
            fault_epoll,
            watchers: AtomicUsize::new(0),
            pending: Mutex::new(VecDeque::new()),
            work_fd,
            dropper: sys::Dropper::new(),
            leaked: Mutex::new(Vec::new()),
            unmapped_errors: Mutex::new(Vec::new()),
            prefetch: PrefetchQueue::default(),
            in_place: config.signal_faults.then(|| {
                // One per thread that may fault at once, as a rule of thumb; more threads
                // than slots take turns.
                let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
                crate::signal::InPlaceSlots::new((4 * cpus).max(16))
            }),
            stopped: Mutex::new(false),
            stopped_cv: Condvar::new(),
            stamp_offset,
            config,
        });
        let signal = if shared.config.signal_faults {
            Some(crate::signal::register(&shared)?)
        } else {
            None
        };
        let handle = Arc::new(Handle {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
            signal,
        });
        // If a spawn fails, dropping `handle` stops and joins the threads already started.
        for i in 0..shared.config.fillers {
            handle.spawn(format!("umap-fill-{i}"), filler::run)?;
        }
        for i in 0..shared.config.evictors {
            handle.spawn(format!("umap-evict-{i}"), evictor::run)?;
        }
        if shared.config.monitor_interval.is_some() {
            handle.spawn("umap-monitor".into(), monitor)?;
        }
        Ok(Umap { handle })
    }

    /// The buffer's capacity in bytes.
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.handle.shared.buffer.capacity()
    }

    /// The buffer's low-water mark in bytes.
    pub(crate) fn low_water_bytes(&self) -> usize {
        self.handle.shared.buffer.low_water()
    }

    /// Queues a prefetch of `pages` of `region` and wakes a filler for it.
    pub(crate) fn prefetch(
        &self,
        region: &Arc<RegionShared>,
        pages: std::ops::Range<usize>,
    ) -> Prefetch {
        let shared = &self.handle.shared;
        let request = shared.prefetch.push(region.clone(), pages);
        shared.signal_work();
        request
    }

    /// Writes back and drops the resident pages of `pages` of `region` (`Advice::DontNeed`).
    pub(crate) fn drop_range(
        &self,
        region: &Arc<RegionShared>,
        pages: std::ops::Range<usize>,
    ) -> Result<()> {
        evictor::drop_range(&self.handle.shared, region, pages)
    }

    /// Pins `pages` of `region`: see [`Region::pin`].
    pub(crate) fn pin(&self, region: &Arc<RegionShared>, pages: Range<usize>) -> Result<()> {
        pin::pin(&self.handle.shared, self, region, pages)
    }

    /// Unpins `pages` of `region`: see [`Region::unpin`].
    pub(crate) fn unpin(&self, region: &Arc<RegionShared>, pages: Range<usize>) {
        pin::unpin(&self.handle.shared, region, pages)
    }

    /// A small engine for unit tests that play an engine thread's part: a 1 MiB buffer of
    /// `page_size` pages, one filler.
    #[cfg(test)]
    pub(crate) fn for_tests(page_size: usize) -> Umap {
        Umap::builder()
            .buffer_size(1 << 20)
            .page_size(page_size)
            .fillers(1)
            .start()
            .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"))
    }

    /// The state the engine's threads share (for tests that play an engine thread's part).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The engine's configuration.
    pub fn config(&self) -> &Config {
        &self.handle.shared.config
    }

    /// A snapshot of the engine's statistics.
    pub fn stats(&self) -> Stats {
        let s = &self.handle.shared;
        s.counters
            .snapshot(s.buffer.resident() as u64, s.buffer.capacity() as u64)
    }

    /// How the userfaultfd was created (for diagnostics: user-mode-only descriptors cannot
    /// serve faults raised inside system calls).
    pub fn open_method(&self) -> crate::uffd::OpenMethod {
        self.handle.shared.uffd.method()
    }

    /// Maps `store` (or the part `options` selects) into the address space, read-only unless
    /// [`MapOptions::writable`].
    ///
    /// Fails before anything is mapped if the length is zero, the offset lies past the end of
    /// the store (of a read-only store, even with an explicit length: such a region could only
    /// read zeros), the page size is not a multiple of the system page size or does not fit in
    /// the buffer, a writable map is asked of a read-only store, or a fixed address is not a
    /// multiple of the system page size or overlaps an existing mapping.
    pub fn map<S: Store + 'static>(&self, store: S, options: MapOptions) -> Result<Region> {
        self.map_shared(Arc::new(store), options)
    }

    /// As [`Umap::map`], for a store shared with other owners.
    pub fn map_shared(&self, store: Arc<dyn Store>, options: MapOptions) -> Result<Region> {
        let shared = &self.handle.shared;
        let page_size = options.page_size.unwrap_or(shared.config.page_size);
        validate_page_size(page_size)?;
        if let Some(pages) = options.read_ahead {
            validate_read_ahead(pages)?;
        }
        // Pinned pages (`Region::pin`) are not available to faults.
        let unpinned = shared.buffer.capacity() - shared.buffer.pinned();
        if MIN_BUFFER_PAGES * page_size > unpinned {
            return Err(Error::invalid(
                "page_size",
                page_size,
                format!(
                    "the buffer ({} bytes, {} of them pinned) must hold at least \
                     {MIN_BUFFER_PAGES} such pages besides the pinned ones: use smaller pages \
                     or a larger buffer",
                    shared.buffer.capacity(),
                    shared.buffer.pinned()
                ),
            ));
        }
        if options.writable && store.is_read_only() {
            return Err(Error::invalid(
                "writable",
                true,
                "the store is read-only: open it writable or map it read-only",
            ));
        }
        let store_len = store.len();
        let len = match options.len {
            Some(_) if store.is_read_only() && options.offset >= store_len => {
                return Err(Error::invalid(
                    "offset",
                    options.offset,
                    format!(
                        "lies at or past the end of the read-only store ({store_len} bytes): the \
                         region could only read zeros"
                    ),
                ));
            }
            Some(len) => len,
            None => {
                if options.offset > store_len {
                    return Err(Error::invalid(
                        "offset",
                        options.offset,
                        format!("lies past the end of the store ({store_len} bytes)"),
                    ));
                }
                usize::try_from(store_len - options.offset).map_err(|_| {
                    Error::invalid("len", store_len - options.offset, "too large to map")
                })?
            }
        };
        if len == 0 {
            return Err(Error::invalid(
                "len",
                0,
                "cannot map zero bytes (is the store empty, or the offset at its end?)",
            ));
        }
        let mapped_len = len
            .checked_next_multiple_of(page_size)
            .filter(|l| *l <= isize::MAX as usize)
            .ok_or_else(|| Error::invalid("len", len, "too large to map"))?;
        options
            .offset
            .checked_add(mapped_len as u64)
            .ok_or_else(|| Error::invalid("offset", options.offset, "offset + len overflows"))?;
        if let Some(fixed) = options.fixed {
            let sys_page = sys::page_size();
            if fixed.addr == 0 || fixed.addr % sys_page != 0 {
                return Err(Error::invalid(
                    "fixed_address",
                    format_args!("{:#x}", fixed.addr),
                    format!(
                        "must be a non-zero multiple of the system page size ({sys_page} bytes)"
                    ),
                ));
            }
            if fixed
                .addr
                .checked_add(mapped_len)
                .is_none_or(|end| end > isize::MAX as usize)
            {
                return Err(Error::invalid(
                    "fixed_address",
                    format_args!("{:#x}", fixed.addr),
                    format!("a region of {mapped_len} bytes does not fit above it"),
                ));
            }
        }

        let (prot, mode) = if options.writable {
            (libc::PROT_READ | libc::PROT_WRITE, RegisterMode::MISSING_WP)
        } else {
            (libc::PROT_READ, RegisterMode::MISSING)
        };
        let mapping = match options.fixed {
            None => Mapping::anonymous(mapped_len, prot, libc::MAP_NORESERVE),
            Some(fixed) if fixed.replace => {
                // SAFETY: the caller of `MapOptions::fixed_address_replacing` vouched that
                // the range is theirs to replace.
                unsafe {
                    Mapping::anonymous_replacing(fixed.addr, mapped_len, prot, libc::MAP_NORESERVE)
                }
            }
            Some(fixed) => Mapping::anonymous_at(fixed.addr, mapped_len, prot, libc::MAP_NORESERVE),
        }
        .map_err(|e| match (options.fixed, e.raw_os_error()) {
            (Some(fixed), Some(libc::EEXIST)) => Error::invalid(
                "fixed_address",
                format_args!("{:#x}", fixed.addr),
                format!(
                    "[{:#x}, {:#x}) overlaps an existing mapping: choose a free range (or \
                     replace it with MapOptions::fixed_address_replacing)",
                    fixed.addr,
                    fixed.addr + mapped_len
                ),
            ),
            _ => Error::os("mmap of the region", e),
        })?;
        // A forked child must fault loudly on the region, never read zeros; transparent huge
        // pages would bypass the per-page fills.
        mapping
            .advise(sys::Advice::DontFork)
            .map_err(|e| Error::os("madvise(MADV_DONTFORK)", e))?;
        mapping
            .advise(sys::Advice::NoHugePage)
            .map_err(|e| Error::os("madvise(MADV_NOHUGEPAGE)", e))?;
        // SAFETY: the range is a fresh anonymous mapping owned by the region we are building;
        // from now on the engine's fillers serve its faults until it is unmapped.
        let ioctls = unsafe { shared.uffd.register(mapping.addr(), mapped_len, mode) }?;
        if !ioctls.copy() || !ioctls.wake() || (options.writable && !ioctls.writeprotect()) {
            return Err(Error::invalid(
                "region",
                format_args!("{:#x}", mapping.addr()),
                "the kernel does not allow UFFDIO_COPY, UFFDIO_WAKE (and, to write, \
                 UFFDIO_WRITEPROTECT) on it",
            ));
        }
        // Read-ahead and prefetch runs stay within the low-water share of the buffer, so what
        // is read ahead is not evicted before it is used, and within MAX_RUN_BYTES, so a run
        // stays in the CPU caches between the store read and the copy, and a faulting thread
        // waits for at most 1 MiB of reads (a 16-page window of 1 MiB pages was a 16 MiB read).
        let low_water_pages = (shared.buffer.low_water() / page_size).max(1);
        let max_run = (MAX_RUN_BYTES / page_size).clamp(1, low_water_pages);
        let read_ahead = options
            .read_ahead
            .unwrap_or(shared.config.read_ahead)
            .min(max_run - 1);
        let sequential_window = if read_ahead > 0 {
            read_ahead
        } else {
            max_run - 1
        };
        let region = Arc::new(RegionShared {
            base: mapping.addr(),
            len,
            mapped_len,
            page_size,
            writable: options.writable,
            store,
            store_offset: options.offset,
            pages: PageTable::new(mapped_len / page_size).with_stamp_offset(shared.stamp_offset),
            gate: Default::default(),
            errors: crate::report::ErrorLog::new(mapping.addr()),
            counters: Counters::default(),
            read_ahead,
            sequential_window,
            max_run,
            patterns: Default::default(),
            streams: Default::default(),
            write_intent: Default::default(),
            pins: Default::default(),
            copy_source_failed: Default::default(),
        });
        shared.registry.insert(region.clone());
        log::debug!("mapped {region:?}");
        Ok(Region {
            shared: region,
            mapping: Some(mapping),
            engine: self.clone(),
        })
    }

    /// Writes back every dirty page of every region and syncs their stores. Returns the first
    /// error; the other regions are flushed all the same. See [`Region::flush`].
    ///
    /// Regions that were dropped while their dirty pages could not be written back (see
    /// [`Region`]) are still mapped: this writes them back too, and unmaps each one it could
    /// write.
    pub fn flush(&self) -> Result<()> {
        let shared = &self.handle.shared;
        let leaked = std::mem::take(&mut *shared.leaked.lock());
        let regions = shared.registry.all();
        let mut first_error = None;
        for region in regions {
            if leaked.iter().any(|(r, _)| Arc::ptr_eq(r, &region)) {
                continue;
            }
            if let Err(e) = self.flush_region(&region, 0..region.pages.len()) {
                first_error.get_or_insert(e);
            }
        }
        for (region, mapping) in leaked {
            if let Err((e, mapping)) = shared.unmap_region(&region, mapping) {
                first_error.get_or_insert(e);
                if let Some(mapping) = mapping {
                    shared.leaked.lock().push((region, mapping));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Takes the error records that regions still held when they were unmapped (or dropped),
    /// oldest first: failures met after the last [`Region::take_errors`] of a region that is
    /// gone now (a write-back that failed and was then retried successfully by the unmap, for
    /// example). [`RegionError::region`](crate::RegionError::region) tells which region.
    pub fn take_errors(&self) -> Vec<crate::report::RegionError> {
        std::mem::take(&mut *self.handle.shared.unmapped_errors.lock())
    }

    /// Keeps a dropped region whose dirty pages could not be written back mapped and
    /// registered, for [`Umap::flush`] to retry.
    pub(crate) fn leak(&self, region: Arc<RegionShared>, mapping: Mapping) {
        self.handle.shared.leaked.lock().push((region, mapping));
    }

    /// Regions dropped with dirty pages that could not be written back, still mapped and
    /// waiting for a [`Umap::flush`] that can write them.
    pub fn leaked_regions(&self) -> usize {
        self.handle.shared.leaked.lock().len()
    }

    /// Flushes `pages` of `region`: see [`Region::flush`].
    pub(crate) fn flush_region(&self, region: &RegionShared, pages: Range<usize>) -> Result<()> {
        if !region.writable {
            return Ok(());
        }
        // A closed gate means the region is being unmapped, which writes it back itself.
        let Some(_inside) = region.gate.enter() else {
            return Ok(());
        };
        writeback::flush_pages(&self.handle.shared, region, pages)
    }

    /// Unmaps a region: see [`Region::unmap`]. If its dirty pages cannot all be written back,
    /// the region stays as it was (mapped, registered, served) and the mapping comes back
    /// with the error; if `munmap` itself fails (the data is safe by then), the error comes
    /// without it.
    pub(crate) fn unmap_region(
        &self,
        region: &Arc<RegionShared>,
        mapping: Mapping,
    ) -> Result<(), (Error, Option<Mapping>)> {
        self.handle.shared.unmap_region(region, mapping)
    }

    /// Number of regions currently mapped.
    pub fn region_count(&self) -> usize {
        self.handle.shared.registry.len()
    }
}

impl ConfigBuilder {
    /// Validates the configuration and starts an engine with it.
    pub fn start(self) -> Result<Umap> {
        Umap::new(self.build()?)
    }
}

impl Handle {
    fn spawn(&self, name: String, body: fn(Arc<Shared>)) -> Result<()> {
        let shared = self.shared.clone();
        let thread_name = name.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || crate::unwind::abort_on_panic(&thread_name, || body(shared)))
            .map_err(|source| Error::Thread { name, source })?;
        self.threads.lock().push(thread);
        Ok(())
    }
}

/// The monitor thread (`Config::monitor_interval`): prints the statistics to stderr.
///
/// No thread waits on it, so unlike the other engine threads a panic here does not abort the
/// process (see `unwind`): it is logged and the printing stops.
fn monitor(shared: Arc<Shared>) {
    let printing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| print_stats(&shared)));
    if let Err(payload) = printing {
        log::error!(
            "the statistics monitor panicked ({}); the statistics are no longer printed",
            crate::unwind::message(payload.as_ref())
        );
    }
}

/// The monitor's loop: prints the statistics every `Config::monitor_interval` until the
/// engine stops.
fn print_stats(shared: &Shared) {
    let Some(interval) = shared.config.monitor_interval else {
        return;
    };
    let started = Instant::now();
    while shared.sleep_unless_stopped(interval) {
        let stats = shared.counters.snapshot(
            shared.buffer.resident() as u64,
            shared.buffer.capacity() as u64,
        );
        let mut text = format!(
            "umap statistics after {:.1} s ({} regions):\n{stats}",
            started.elapsed().as_secs_f64(),
            shared.registry.len()
        );
        for region in shared.registry.all() {
            let r = region.counters.snapshot(0, 0);
            text.push_str(&format!(
                "  region {:#x} ({} bytes, {} B pages): {} faults, {} fills, {} evictions, \
                 {} resident pages\n",
                region.base,
                region.len,
                region.page_size,
                r.read_faults + r.write_faults + r.wp_faults,
                r.fills,
                r.evictions,
                region.pages.count_resident()
            ));
        }
        // Not `eprint!`, which panics when stderr is closed (a daemon's): a lost report is
        // no reason to stop.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // No region is left to fault on; a handler still running leaves before this returns.
        drop(self.signal.take());
        *self.shared.stopped.lock() = true;
        self.shared.stopped_cv.notify_all();
        self.shared.buffer.stop();
        if let Err(e) = self.shared.stop_fd.signal() {
            log::error!("cannot signal engine threads to stop: {e}");
        }
        for thread in self.threads.get_mut().drain(..) {
            if thread.join().is_err() {
                log::error!("an engine thread panicked");
            }
        }
        // Last chance for regions dropped with dirty pages that could not be written back,
        // once no engine thread runs any more: a failed write-back reopens the region's gate
        // and queues its pages for eviction, and an evictor still running could then write
        // back from the mapping after it is unmapped below.
        let leaked = std::mem::take(&mut *self.shared.leaked.lock());
        for (region, mapping) in leaked {
            let dirty = region.pages.count(crate::page_table::DIRTY) * region.page_size;
            if let Err((e, _mapping)) = self.shared.unmap_region(&region, mapping) {
                log::error!(
                    "engine shutting down: {dirty} dirty bytes of {region:?} could not be \
                     written back and are lost: {e}"
                );
            }
        }
    }
}

impl fmt::Debug for Umap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Umap")
            .field("config", &self.handle.shared.config)
            .field("regions", &self.region_count())
            .field("resident", &self.handle.shared.buffer.resident())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// Set in the child process of the test below.
    const PANIC_CHILD: &str = "UMAP_TEST_ENGINE_THREAD_PANIC";

    #[test]
    fn a_panicking_engine_thread_aborts_the_process_saying_why() {
        if std::env::var_os(PANIC_CHILD).is_some() {
            // An engine thread started as the fillers and evictors are, whose body panics.
            let umap = Umap::for_tests(4096);
            umap.handle
                .spawn("umap-test-panicker".into(), |_| {
                    panic!("injected engine bug")
                })
                .unwrap();
            // The abort comes first; if it does not, the parent sees a clean exit and fails.
            std::thread::sleep(Duration::from_secs(10));
            std::process::exit(0);
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let out = Command::new(exe)
            .args([
                "--exact",
                "engine::tests::a_panicking_engine_thread_aborts_the_process_saying_why",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PANIC_CHILD, "1")
            .output()
            .expect("the child test runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "the child should abort, got {:?}:\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains(
                "the engine thread umap-test-panicker panicked (injected engine bug); threads \
                 faulting on umap memory would wait forever"
            ),
            "{stderr}"
        );
    }
}
