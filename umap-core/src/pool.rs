//! Page recycling (`Config::recycle_pages`): evicted pages are moved out of their region into
//! a pool with `UFFDIO_MOVE` instead of being freed, and a dirty fill reads the store straight
//! into pool pages and moves them into the region, instead of reading into the filler's
//! scratch buffer and copying with `UFFDIO_COPY` (which allocates, charges and copies a fresh
//! page). An eviction and a fill then cost two moves (no allocation, no zeroing, no free, no
//! second copy of the bytes).
//!
//! The pool is one private anonymous mapping, read-write like the regions, registered on the
//! engine's userfaultfd (`UFFDIO_MOVE` wants both ends registered on the same descriptor) in
//! write-protect mode only: a missing page of the pool is an ordinary anonymous fault that the
//! kernel serves itself, so a store read into a pool page that is not present never raises a
//! fault on our own userfaultfd. Moved pages arrive writable and unprotected, so pool pages
//! never raise write-protect faults either. The mapping is `MADV_DONTFORK` (a child never
//! shares its pages, which would make moves fail with `EBUSY`) and `MADV_NOHUGEPAGE` (moves
//! work on small pages).
//!
//! Invariants:
//! - The pool is cut into slots (of [`MAX_SLOT_BYTES`], less in a small buffer); each slot's
//!   present pages are a prefix of it, `filled` bytes long (a stack: evictions push at the
//!   end, fills take from the end).
//!   A slot is owned by one thread at a time (taken out of the free list, put back after).
//!   If the bookkeeping were wrong, nothing is lost: a move onto a present page fails with
//!   `EEXIST` (the caller drops the page instead, and the slot, whose contents are unknown
//!   then, is emptied with `MADV_DONTNEED` and counted empty) and a read into a missing page
//!   allocates it.
//! - Present pool bytes are counted in the buffer (`Buffer::pooled`): they count toward the
//!   buffer's capacity (so resident memory stays within it) but not toward the watermarks
//!   (so evicting into the pool frees room for the evictors' purpose). A fill that finds the
//!   buffer full trims the pool before evicting region pages.
//! - Only fills that install their pages writable and `Dirty` take pool pages: a page moved
//!   into a region arrives writable, and protecting it afterwards would leave a window in
//!   which a thread that did not fault could write it unseen. Clean fills copy as before.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::buffer::Buffer;
use crate::stats::{bump, raise, Counters};
use crate::sys::{self, Mapping};
use crate::uffd::{RegisterMode, Uffd, UffdError};

/// The most bytes per slot: the longest run a fill reads at once (`MAX_RUN_BYTES`). Smaller
/// pools (small buffers) have smaller slots, down to [`MIN_PAGE_BYTES`].
pub(crate) const MAX_SLOT_BYTES: usize = crate::region::MAX_RUN_BYTES;

/// The smallest umap page that is recycled. A move costs about 3 µs per call plus a TLB
/// flush per system page, against 1.8 µs for a one-page copy and one `process_madvise` call
/// for a whole batch of drops, so single 4 KiB pages lose by moving: sorting 1 GiB with
/// 4 KiB pages was 0.84-1.0x as fast with them recycled. From 16 system pages per move on,
/// the call is amortised (0.23 µs per page for 64).
pub(crate) const MIN_PAGE_BYTES: usize = 64 << 10;

/// A slot taken out of the pool by one thread.
#[derive(Debug)]
pub(crate) struct Slot {
    index: usize,
    /// Bytes present from the slot's start.
    filled: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Pool {
    mapping: Mapping,
    /// Bytes per slot: a multiple of the system page, at least [`MIN_PAGE_BYTES`].
    slot_bytes: usize,
    /// Slots not taken by a thread.
    free: Mutex<Vec<Slot>>,
    /// Set when a dirty fill found the pool short of pages; evictions move pages into the
    /// pool only then, so a pool nobody takes from does not fill up for nothing. Cleared when
    /// a trim for room frees pool pages (a trim of an empty pool leaves it set: the fills
    /// that found the pool short still want pages).
    hungry: AtomicBool,
}

impl Pool {
    /// A pool of at most `bytes` (whole slots of up to [`MAX_SLOT_BYTES`]; `None` if that is
    /// not one slot of [`MIN_PAGE_BYTES`]), registered on `uffd`.
    pub(crate) fn new(uffd: &Uffd, bytes: usize) -> Result<Option<Pool>, crate::error::Error> {
        use crate::error::Error;
        let slot_bytes = (bytes / 4)
            .clamp(MIN_PAGE_BYTES, MAX_SLOT_BYTES)
            .next_multiple_of(MIN_PAGE_BYTES)
            .min(MAX_SLOT_BYTES);
        let slots = bytes / slot_bytes;
        if slots == 0 {
            return Ok(None);
        }
        let len = slots * slot_bytes;
        let mapping =
            Mapping::anonymous(len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_NORESERVE)
                .map_err(|e| Error::os("mmap of the page pool", e))?;
        mapping
            .advise(sys::Advice::DontFork)
            .map_err(|e| Error::os("madvise(MADV_DONTFORK) of the page pool", e))?;
        mapping
            .advise(sys::Advice::NoHugePage)
            .map_err(|e| Error::os("madvise(MADV_NOHUGEPAGE) of the page pool", e))?;
        // SAFETY: the range is a fresh anonymous mapping that only the pool uses. Registered
        // for write-protect faults only, it raises none: nothing ever protects it (moved pages
        // arrive unprotected), and missing pages are served by the kernel.
        let ioctls = unsafe { uffd.register(mapping.addr(), len, RegisterMode::WP) }?;
        if !ioctls.move_pages() {
            return Ok(None);
        }
        Ok(Some(Pool {
            mapping,
            slot_bytes,
            free: Mutex::new((0..slots).map(|index| Slot { index, filled: 0 }).collect()),
            hungry: AtomicBool::new(true),
        }))
    }

    fn slot_addr(&self, slot: &Slot) -> usize {
        self.mapping.addr() + slot.index * self.slot_bytes
    }

    /// For a fill of `bytes`: takes the slot with the most pages present (if any has some)
    /// and returns it with the address to read the run into (the last `bytes` of its present
    /// prefix, or the slot's start if fewer are present) and how many of those bytes are
    /// present pool pages.
    pub(crate) fn take(&self, bytes: usize) -> Option<(Slot, usize, usize)> {
        if bytes > self.slot_bytes {
            return None;
        }
        let slot = {
            let mut free = self.free.lock();
            let best = (0..free.len()).max_by_key(|&i| free[i].filled)?;
            if free[best].filled == 0 {
                drop(free);
                self.hungry.store(true, Ordering::Relaxed);
                return None;
            }
            free.swap_remove(best)
        };
        if slot.filled < bytes {
            self.hungry.store(true, Ordering::Relaxed);
        }
        let start = slot.filled.saturating_sub(bytes);
        let present = slot.filled - start;
        let addr = self.slot_addr(&slot) + start;
        Some((slot, addr, present))
    }

    /// Gives back a slot taken by [`Pool::take`] for a fill of `bytes` read at `addr`, after
    /// the run's pages were moved out (or dropped): its present prefix ends at `addr` now.
    /// `present` pool bytes left the pool: the buffer no longer counts them as pooled (the
    /// fill's own reservation covers the pages now in the region). `moved` is how many bytes
    /// from `addr` were moved into the region (and stayed there): the present pool pages
    /// among them, the first `present` bytes, are counted as recycled.
    pub(crate) fn put_back_after_fill(
        &self,
        buffer: &Buffer,
        counters: &Counters,
        mut slot: Slot,
        addr: usize,
        present: usize,
        moved: usize,
    ) {
        slot.filled = addr - self.slot_addr(&slot);
        buffer.unpool(present);
        buffer.release(present);
        self.free.lock().push(slot);
        // Pages past `present` were allocated by the store read, not taken from the pool; pool
        // pages that were not moved (copied instead, or the install failed) were dropped.
        bump(&counters.recycled_bytes, present.min(moved) as u64);
    }

    /// Gives back a slot taken by [`Pool::take`] for a fill of `bytes` at `addr` that did not
    /// use it (its store read failed): the pages read into past its present prefix are
    /// dropped again, so the prefix is what it was.
    pub(crate) fn put_back_unused(&self, slot: Slot, addr: usize, present: usize, bytes: usize) {
        if bytes > present {
            self.discard(addr + present, bytes - present);
        }
        self.free.lock().push(slot);
    }

    /// Drops the pages of `[addr, addr + len)` in a slot this thread holds (after a failed
    /// read or move, so that the slot's prefix is exact again).
    pub(crate) fn discard(&self, addr: usize, len: usize) {
        // SAFETY: the range lies in a slot this thread holds: nothing else reads or writes it.
        if let Err(e) = unsafe { sys::madvise_dontneed(addr, len) } {
            log::error!("cannot drop {len} bytes of the page pool at {addr:#x}: {e}");
        }
    }

    /// Whether pages of `region` are recycled at all: its mapping is writable (moves need
    /// both ends writable) and its pages are large enough to gain by it and fit a slot.
    pub(crate) fn recycles(&self, region: &crate::region::RegionShared) -> bool {
        region.writable && (MIN_PAGE_BYTES..=self.slot_bytes).contains(&region.page_size)
    }

    /// Bytes per slot: the longest run that is moved in or out at once.
    pub(crate) fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Whether evictions should move pages into the pool.
    pub(crate) fn wants_pages(&self) -> bool {
        self.hungry.load(Ordering::Relaxed)
    }

    /// Moves the `(addr, len)` runs (each at most a slot long; the caller owns their pages,
    /// whose bytes are in the store) into the pool. Returns the runs, or parts of runs, that
    /// were not moved (no room, or the kernel refused: a page shared with a forked child
    /// gives `EBUSY`): the caller drops those. Moved bytes are counted as pooled.
    ///
    /// # Safety
    /// The caller owns the runs' pages and nothing relies on them staying in place: after the
    /// call they read as missing (as after `MADV_DONTNEED`).
    pub(crate) unsafe fn stash(
        &self,
        uffd: &Uffd,
        buffer: &Buffer,
        counters: &Counters,
        runs: &[(usize, usize)],
        rest: &mut Vec<(usize, usize)>,
    ) {
        let mut slot: Option<Slot> = None;
        let mut moved = 0;
        // The shortest run that found no slot with room: runs as long or longer are given
        // back without searching the free list again (slots other threads put back meanwhile
        // are missed, which only drops what could have been pooled).
        let mut no_room_for = usize::MAX;
        for &(addr, len) in runs {
            if let Some(full) = slot.take_if(|s| s.filled + len > self.slot_bytes) {
                self.free.lock().push(full);
            }
            if slot.is_none() && len < no_room_for {
                let mut free = self.free.lock();
                // The fullest slot that still has room, to keep the pool's pages together.
                let pick = (0..free.len())
                    .filter(|&k| free[k].filled + len <= self.slot_bytes)
                    .max_by_key(|&k| free[k].filled);
                slot = pick.map(|k| free.swap_remove(k));
            }
            let Some(s) = slot.as_mut() else {
                // No slot has room for this run: it is dropped, but a shorter run after it
                // may still fit one.
                no_room_for = no_room_for.min(len);
                rest.push((addr, len));
                continue;
            };
            let dst = self.slot_addr(s) + s.filled;
            // SAFETY: `dst..dst + len` is missing pool memory in a slot this thread holds;
            // the source pages are the caller's (see this function's contract).
            let mut done = match unsafe { move_all(uffd, dst, addr, len) } {
                Ok(()) => len,
                Err(e) if e.errno() == Some(libc::EEXIST) => {
                    // A present page where the slot's bookkeeping said missing: what else the
                    // slot holds is unknown, so it is emptied before anyone reuses it. The
                    // whole run is given back: its pages moved before the conflict went with
                    // the slot, and the caller's drop of them (missing now) is harmless.
                    log::warn!("moving an evicted page into the pool found one present: {e}");
                    self.reset(buffer, s);
                    rest.push((addr, len));
                    continue;
                }
                Err(e) => {
                    if e.errno() != Some(libc::EBUSY) {
                        log::debug!("moving an evicted page into the pool failed: {e}");
                    }
                    let done = e.done();
                    rest.push((addr + done, len - done));
                    done
                }
            };
            // A region page the kernel had swapped out moves as its swap entry, write-protect
            // bit included, and the pool is registered for write protection: a store read
            // into it would then raise a write-protect fault on the engine's own userfaultfd
            // (a filler waiting on itself). Lift the protection off what was moved.
            if done > 0 {
                if let Err(e) = uffd.writeprotect_retrying(dst, done, false) {
                    log::error!("cannot unprotect {done} bytes moved into the pool: {e}");
                    self.discard(dst, done);
                    done = 0;
                }
            }
            // Counted before the slot can be seen by another thread (a trim unpools what a
            // slot holds).
            buffer.pool(done);
            s.filled += done;
            moved += done;
        }
        if let Some(s) = slot {
            self.free.lock().push(s);
        }
        bump(&counters.pooled_bytes, moved as u64);
        raise(&counters.pool_peak_bytes, buffer.pooled() as u64);
    }

    /// Empties a slot this thread holds whose bookkeeping proved wrong (a move into it found a
    /// present page, `EEXIST`): every page of it is dropped, and the `filled` bytes it was
    /// counted for leave the pool and the buffer. Pages present past `filled` were never
    /// counted, so the buffer's accounting stays exact.
    fn reset(&self, buffer: &Buffer, slot: &mut Slot) {
        self.discard(self.slot_addr(slot), self.slot_bytes);
        buffer.unpool(slot.filled);
        buffer.release(slot.filled);
        slot.filled = 0;
    }

    /// Drops present pool pages, about `bytes` worth, to make room in a full buffer; returns
    /// how many bytes it freed. If it freed any, evictions stop feeding the pool until a fill
    /// asks for pages again.
    pub(crate) fn trim(&self, buffer: &Buffer, bytes: usize) -> usize {
        let mut freed = 0;
        while freed < bytes {
            let slot = {
                let mut free = self.free.lock();
                let Some(best) = (0..free.len())
                    .filter(|&k| free[k].filled > 0)
                    .max_by_key(|&k| free[k].filled)
                else {
                    break;
                };
                free.swap_remove(best)
            };
            let mut slot = slot;
            let n = slot
                .filled
                .min((bytes - freed).next_multiple_of(sys::page_size()));
            let addr = self.slot_addr(&slot) + slot.filled - n;
            self.discard(addr, n);
            slot.filled -= n;
            freed += n;
            buffer.unpool(n);
            buffer.release(n);
            self.free.lock().push(slot);
        }
        // Only a trim that gave room back says the pool was holding pages nobody took: an
        // empty pool freed nothing, and the fills that made it hungry still want pages.
        if freed > 0 {
            self.hungry.store(false, Ordering::Relaxed);
        }
        freed
    }
}

/// Moves `len` bytes of pages from `src` to `dst`, retrying while the address space changes
/// under the kernel (`EAGAIN`). On error, [`UffdError::done`] counts every byte moved.
///
/// # Safety
/// As for [`Uffd::move_pages`].
pub(crate) unsafe fn move_all(
    uffd: &Uffd,
    dst: usize,
    src: usize,
    len: usize,
) -> Result<(), UffdError> {
    move_all_mode(uffd, dst, src, len, true)
}

/// As [`move_all`], waking the threads waiting on `dst` unless `dont_wake`.
///
/// # Safety
/// As for [`Uffd::move_pages`].
pub(crate) unsafe fn move_all_mode(
    uffd: &Uffd,
    dst: usize,
    src: usize,
    len: usize,
    dont_wake: bool,
) -> Result<(), UffdError> {
    let mut done = 0;
    let mut tries = 0;
    loop {
        // SAFETY: forwarded from the caller.
        match unsafe { uffd.move_pages(dst + done, src + done, len - done, dont_wake) } {
            Ok(()) => return Ok(()),
            Err(e) if e.errno() == Some(libc::EAGAIN) && tries < 100 => {
                done += e.done();
                tries += 1;
            }
            Err(e) => {
                let total = done + e.done();
                return Err(match e {
                    UffdError::Ioctl {
                        op,
                        addr,
                        len,
                        source,
                        ..
                    } => UffdError::Ioctl {
                        op,
                        addr,
                        len,
                        done: total,
                        source,
                    },
                    other => other,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Stashes the page at `addr` and asserts the pool took it.
    ///
    /// # Safety
    /// As for [`Pool::stash`]: the page is the caller's, and reads as missing afterwards.
    unsafe fn stash_page(
        pool: &Pool,
        uffd: &Uffd,
        buffer: &Buffer,
        counters: &Counters,
        addr: usize,
    ) {
        let mut rest = Vec::new();
        // SAFETY: the caller's contract.
        unsafe { pool.stash(uffd, buffer, counters, &[(addr, PAGE)], &mut rest) };
        assert!(rest.is_empty(), "the pool took the page");
    }

    use super::*;
    use crate::uffd::{CopyMode, Features};

    const PAGE: usize = 64 << 10;

    fn uffd() -> Uffd {
        Uffd::open(
            Features::PAGEFAULT_FLAG_WP | Features::MOVE,
            Features::empty(),
        )
        .unwrap_or_else(|e| panic!("userfaultfd is required for these tests: {e}"))
    }

    /// A writable region of `pages` 64 KiB pages registered like the engine's, each page
    /// installed write-protected (as a clean fill) with bytes `page index + 1`.
    fn region(uffd: &Uffd, pages: usize) -> Mapping {
        let map = Mapping::anonymous(
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_NORESERVE,
        )
        .unwrap();
        map.advise(sys::Advice::DontFork).unwrap();
        map.advise(sys::Advice::NoHugePage).unwrap();
        // SAFETY: a fresh mapping this test owns; it never faults on a missing page.
        unsafe { uffd.register(map.addr(), map.len(), RegisterMode::MISSING_WP) }.unwrap();
        for p in 0..pages {
            let src = vec![p as u8 + 1; PAGE];
            let mode = CopyMode {
                write_protect: true,
                ..CopyMode::default()
            };
            // SAFETY: the page is missing, registered on `uffd`, and `src` holds PAGE bytes.
            unsafe { uffd.copy(map.addr() + p * PAGE, src.as_ptr(), PAGE, mode) }.unwrap();
        }
        map
    }

    /// Evicted pages go into the pool (counted as pooled), a fill reads into them and moves
    /// them back (the pooled bytes leave the buffer), and what does not fit comes back to be
    /// dropped.
    #[test]
    fn pages_move_out_into_the_pool_and_back_with_the_buffer_counting_them() {
        let uffd = uffd();
        let counters = Counters::default();
        // Room for two slots of one page each.
        let pool = Pool::new(&uffd, 2 * PAGE).unwrap().expect("a pool");
        assert_eq!(pool.slot_bytes(), PAGE);
        let region = region(&uffd, 4);
        let buffer = Buffer::new(4 * PAGE, 90, 50);
        assert!(buffer.try_reserve(4 * PAGE).is_some());
        let runs: Vec<(usize, usize)> = (0..3).map(|p| (region.addr() + p * PAGE, PAGE)).collect();
        let mut rest = Vec::new();
        // SAFETY: the test owns the region's pages; they read as missing afterwards.
        unsafe { pool.stash(&uffd, &buffer, &counters, &runs, &mut rest) };
        assert_eq!(rest, vec![runs[2]], "the third page does not fit");
        assert_eq!(buffer.pooled(), 2 * PAGE);
        assert_eq!(
            counters.pool_peak_bytes.load(Ordering::Relaxed),
            2 * PAGE as u64
        );
        assert_eq!(buffer.resident(), 2 * PAGE);
        assert_eq!(sys::resident_pages(region.addr(), 2 * PAGE).unwrap(), 0);
        assert_eq!(
            sys::resident_pages(pool.mapping.addr(), 2 * PAGE).unwrap(),
            2 * PAGE / sys::page_size()
        );

        // A fill of page 0: the pool page arrives writable, holding the old bytes.
        let (slot, at, present) = pool.take(PAGE).expect("a present slot");
        assert_eq!(present, PAGE);
        // SAFETY: the slot is ours; its page is present and writable.
        let bytes = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, PAGE) };
        assert!(
            bytes.iter().all(|&b| b == 1 || b == 2),
            "an evicted page's bytes"
        );
        bytes.fill(0x5a);
        // SAFETY: page 0 of the region is missing and ours; the slot is ours.
        unsafe { move_all_mode(&uffd, region.addr(), at, PAGE, false) }.unwrap();
        pool.put_back_after_fill(&buffer, &counters, slot, at, present, PAGE);
        assert_eq!(buffer.pooled(), PAGE);
        assert_eq!(
            buffer.resident(),
            2 * PAGE,
            "the fill's own reservation counts it"
        );
        // SAFETY: page 0 is present now.
        let page0 = unsafe { std::slice::from_raw_parts(region.addr() as *const u8, PAGE) };
        assert!(page0.iter().all(|&b| b == 0x5a));
        assert_eq!(counters.recycled_bytes.load(Ordering::Relaxed), PAGE as u64);
        assert_eq!(
            counters.pooled_bytes.load(Ordering::Relaxed),
            2 * PAGE as u64
        );
        assert_eq!(
            counters.pool_peak_bytes.load(Ordering::Relaxed),
            2 * PAGE as u64,
            "a peak stays when the pool shrinks"
        );

        // Moving onto a present pool page (bookkeeping gone wrong) fails and gives the run
        // back instead of losing it (see also the `EEXIST` test below).
        let slot = pool.take(PAGE).expect("the other slot");
        assert_eq!(slot.2, PAGE);
        pool.free.lock().push(Slot {
            index: slot.0.index,
            filled: 0, // wrong on purpose: its page is present
        });
        // Counted as if the page had been dropped.
        buffer.unpool(PAGE);
        buffer.release(PAGE);
        let mut rest = Vec::new();
        // SAFETY: as above; page 3 is ours.
        unsafe {
            pool.stash(
                &uffd,
                &buffer,
                &counters,
                &[(region.addr() + 3 * PAGE, PAGE)],
                &mut rest,
            )
        };
        assert_eq!(rest, vec![(region.addr() + 3 * PAGE, PAGE)]);
        assert_eq!(
            sys::resident_pages(region.addr() + 3 * PAGE, PAGE).unwrap(),
            PAGE / sys::page_size()
        );
        assert_eq!(
            sys::resident_pages(pool.mapping.addr(), 2 * PAGE).unwrap(),
            0,
            "the slot whose page was present is emptied"
        );
        assert_eq!(buffer.pooled(), 0);

        // Trimming drops pool pages and gives their room back; only a trim that freed some
        // stops the pool taking pages (see also the trim test below).
        let before = buffer.pooled();
        let freed = pool.trim(&buffer, PAGE);
        assert_eq!(buffer.pooled(), before - freed);
        assert_eq!(pool.wants_pages(), freed == 0);
    }

    /// A move into a slot that finds a present page (`EEXIST`: its bookkeeping is wrong)
    /// empties the whole slot, releasing exactly what it was counted for, and the run is
    /// given back; the slot is usable again afterwards.
    #[test]
    fn a_slot_whose_move_found_a_present_page_is_emptied() {
        let uffd = uffd();
        let counters = Counters::default();
        // Four slots of two pages.
        let pool = Pool::new(&uffd, 8 * PAGE).unwrap().expect("a pool");
        assert_eq!(pool.slot_bytes(), 2 * PAGE);
        let region = region(&uffd, 3);
        let buffer = Buffer::new(4 * PAGE, 90, 50);
        assert!(buffer.try_reserve(3 * PAGE).is_some());
        let at = |p: usize| region.addr() + p * PAGE;
        let mut rest = Vec::new();
        // SAFETY: the test owns the region's pages; they read as missing afterwards.
        unsafe { pool.stash(&uffd, &buffer, &counters, &[(at(0), 2 * PAGE)], &mut rest) };
        assert!(rest.is_empty());
        assert_eq!(buffer.pooled(), 2 * PAGE);
        // Bookkeeping gone wrong: the slot's second page counted as dropped but present.
        {
            let mut free = pool.free.lock();
            let slot = free
                .iter_mut()
                .find(|s| s.filled > 0)
                .expect("the full slot");
            slot.filled = PAGE;
        }
        buffer.unpool(PAGE);
        buffer.release(PAGE);
        assert_eq!((buffer.pooled(), buffer.resident()), (PAGE, PAGE));

        // Page 2 goes to the fullest slot with room, onto its present second page.
        // SAFETY: as above.
        unsafe { pool.stash(&uffd, &buffer, &counters, &[(at(2), PAGE)], &mut rest) };
        assert_eq!(rest, vec![(at(2), PAGE)], "the run is given back");
        assert_eq!(
            sys::resident_pages(pool.mapping.addr(), 8 * PAGE).unwrap(),
            0,
            "the slot is emptied, the page it did not count included"
        );
        assert!(pool.free.lock().iter().all(|s| s.filled == 0));
        assert_eq!(buffer.pooled(), 0, "its counted page left the pool");
        assert_eq!(buffer.resident(), PAGE, "page 2, which the caller drops");
        assert_eq!(
            counters.pooled_bytes.load(Ordering::Relaxed),
            2 * PAGE as u64
        );

        // The pool works again: page 2 goes in.
        rest.clear();
        // SAFETY: as above.
        unsafe { pool.stash(&uffd, &buffer, &counters, &[(at(2), PAGE)], &mut rest) };
        assert!(rest.is_empty());
        assert_eq!((buffer.pooled(), buffer.resident()), (PAGE, 0));
        assert_eq!(
            sys::resident_pages(pool.mapping.addr(), 8 * PAGE).unwrap(),
            PAGE / sys::page_size()
        );
        let (slot, addr, present) = pool.take(PAGE).expect("the slot with page 2");
        assert_eq!((addr, present), (pool.slot_addr(&slot), PAGE));
        // SAFETY: the slot is ours; its first page is present.
        assert_eq!(unsafe { *(addr as *const u8) }, 3, "page 2's bytes");
    }

    /// A run that fits no slot is given back, and a shorter run after it still goes into a
    /// slot with room for it.
    #[test]
    fn a_run_that_fits_no_slot_does_not_stop_shorter_runs_after_it() {
        let uffd = uffd();
        let counters = Counters::default();
        // Four slots of two pages.
        let pool = Pool::new(&uffd, 8 * PAGE).unwrap().expect("a pool");
        assert_eq!(pool.slot_bytes(), 2 * PAGE);
        let region = region(&uffd, 10);
        let buffer = Buffer::new(10 * PAGE, 90, 50);
        assert!(buffer.try_reserve(10 * PAGE).is_some());
        let at = |p: usize| region.addr() + p * PAGE;
        let mut rest = Vec::new();
        // Three slots full, the fourth half full.
        let runs = [
            (at(0), 2 * PAGE),
            (at(2), 2 * PAGE),
            (at(4), 2 * PAGE),
            (at(6), PAGE),
        ];
        // SAFETY: the test owns the region's pages; they read as missing afterwards.
        unsafe { pool.stash(&uffd, &buffer, &counters, &runs, &mut rest) };
        assert!(rest.is_empty());
        assert_eq!(buffer.pooled(), 7 * PAGE);
        // Two pages fit no slot; the one page after them fits the half-full slot.
        let runs = [(at(8), 2 * PAGE), (at(7), PAGE)];
        // SAFETY: as above.
        unsafe { pool.stash(&uffd, &buffer, &counters, &runs, &mut rest) };
        assert_eq!(
            rest,
            vec![(at(8), 2 * PAGE)],
            "only the long run is given back"
        );
        assert_eq!(buffer.pooled(), 8 * PAGE);
        assert_eq!(sys::resident_pages(at(7), PAGE).unwrap(), 0, "page 7 moved");
        assert_eq!(
            sys::resident_pages(at(8), 2 * PAGE).unwrap(),
            2 * PAGE / sys::page_size(),
            "pages 8 and 9 stay for the caller to drop"
        );
        // Page 7 is the second page of page 6's slot: its present pages are a prefix.
        let full: Vec<usize> = pool.free.lock().iter().map(|s| s.filled).collect();
        assert_eq!(full, vec![2 * PAGE; 4]);
        assert_eq!(
            sys::resident_pages(pool.mapping.addr(), 8 * PAGE).unwrap(),
            8 * PAGE / sys::page_size()
        );
        // Each slot holds the bytes of two adjacent region pages, in order.
        for k in 0..4 {
            let base = pool.mapping.addr() + k * 2 * PAGE;
            // SAFETY: no thread holds a slot; their pages are present.
            let first = unsafe { *(base as *const u8) };
            // SAFETY: as above.
            let second = unsafe { *((base + PAGE) as *const u8) };
            assert_eq!(second, first + 1, "slot {k}");
        }
    }

    /// A fill whose move into the region fails (here onto a present page: `EEXIST`) counts
    /// no recycled bytes, though the pool page it took leaves the pool.
    #[test]
    fn a_failed_move_into_the_region_recycles_nothing() {
        let uffd = uffd();
        let counters = Counters::default();
        let pool = Pool::new(&uffd, 2 * PAGE).unwrap().expect("a pool");
        let region = region(&uffd, 2);
        let buffer = Buffer::new(4 * PAGE, 90, 50);
        assert!(buffer.try_reserve(2 * PAGE).is_some());
        // SAFETY: the test owns page 1; it reads as missing afterwards.
        unsafe { stash_page(&pool, &uffd, &buffer, &counters, region.addr() + PAGE) };
        // A fill of PAGE (reserved) takes the pool page and moves it onto page 0, which is
        // present: the move fails.
        assert!(buffer.try_reserve(PAGE).is_some());
        let (slot, at, present) = pool.take(PAGE).expect("a present slot");
        assert_eq!(present, PAGE);
        // SAFETY: the slot is ours; the move fails without touching page 0.
        let e = unsafe { move_all_mode(&uffd, region.addr(), at, PAGE, false) }.unwrap_err();
        assert_eq!((e.errno(), e.done()), (Some(libc::EEXIST), 0));
        // As the filler does: the pool page is dropped (its bytes copied instead).
        pool.discard(at, PAGE);
        pool.put_back_after_fill(&buffer, &counters, slot, at, present, e.done());
        assert_eq!(counters.recycled_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(buffer.pooled(), 0);
        assert_eq!(
            buffer.resident(),
            2 * PAGE,
            "page 0 and the fill's reservation"
        );
    }

    /// Trimming an empty pool frees nothing and leaves it hungry; a trim that frees pages
    /// stops it taking more.
    #[test]
    fn only_a_trim_that_frees_pages_stops_the_pool_taking_pages() {
        let uffd = uffd();
        let counters = Counters::default();
        let pool = Pool::new(&uffd, 2 * PAGE).unwrap().expect("a pool");
        let buffer = Buffer::new(4 * PAGE, 90, 50);
        assert!(pool.wants_pages(), "a new pool wants pages");
        assert_eq!(pool.trim(&buffer, PAGE), 0, "nothing to trim");
        assert!(
            pool.wants_pages(),
            "a trim that freed nothing leaves it hungry"
        );

        let region = region(&uffd, 1);
        assert!(buffer.try_reserve(PAGE).is_some());
        // SAFETY: the test owns the page; it reads as missing afterwards.
        unsafe { stash_page(&pool, &uffd, &buffer, &counters, region.addr()) };
        assert_eq!(pool.trim(&buffer, PAGE), PAGE);
        assert!(!pool.wants_pages(), "a trim that freed pages stops it");
        assert_eq!((buffer.pooled(), buffer.resident()), (0, 0));
    }

    /// A fill larger than the pool's present pages reads into missing pool pages: the kernel
    /// allocates them (no userfaultfd fault on the pool), and moving them works the same.
    #[test]
    fn missing_pool_pages_are_served_by_the_kernel() {
        let uffd = uffd();
        let counters = Counters::default();
        // Four slots of two pages.
        let pool = Pool::new(&uffd, 8 * PAGE).unwrap().expect("a pool");
        assert_eq!(pool.slot_bytes(), 2 * PAGE);
        let region = region(&uffd, 1);
        let buffer = Buffer::new(8 * PAGE, 90, 50);
        assert!(buffer.try_reserve(PAGE).is_some());
        // SAFETY: the test owns the page.
        unsafe { stash_page(&pool, &uffd, &buffer, &counters, region.addr()) };
        let two = 2 * PAGE;
        let (slot, at, present) = pool.take(two).expect("a slot with one page");
        assert_eq!((at, present), (pool.slot_addr(&slot), PAGE));
        // SAFETY: the slot is ours: its first page present, the second missing (allocated by
        // the kernel on this write, as by a store read).
        unsafe { std::slice::from_raw_parts_mut(at as *mut u8, two) }.fill(7);
        let dst = Mapping::anonymous(two, libc::PROT_READ | libc::PROT_WRITE, 0).unwrap();
        dst.advise(sys::Advice::NoHugePage).unwrap();
        // SAFETY: a fresh mapping this test owns.
        unsafe { uffd.register(dst.addr(), two, RegisterMode::MISSING_WP) }.unwrap();
        // SAFETY: `dst` is missing and ours; the slot is ours.
        unsafe { move_all_mode(&uffd, dst.addr(), at, two, false) }.unwrap();
        pool.put_back_after_fill(&buffer, &counters, slot, at, present, two);
        assert_eq!(buffer.pooled(), 0);
        assert_eq!(
            counters.recycled_bytes.load(Ordering::Relaxed),
            PAGE as u64,
            "only the page taken from the pool is recycled"
        );
        // SAFETY: both pages are present now.
        let got = unsafe { std::slice::from_raw_parts(dst.addr() as *const u8, two) };
        assert!(got.iter().all(|&b| b == 7));
    }
}
