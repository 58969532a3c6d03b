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
//! - The free list ([`FreeSlots`]) keeps the slots no thread holds in stacks by how full they
//!   are (one per system page of `filled`), with a bitmap of the stacks that are not empty:
//!   every operation (the fullest slot, the fullest slot with room for a run) pops one stack
//!   after scanning at most `slot_bytes / page / 64` words of the bitmap (5 for 1 MiB slots
//!   of 4 KiB pages), however many slots the pool has.
//!   If the bookkeeping were wrong, nothing is lost: a move onto a present page fails with
//!   `EEXIST` (the caller drops the page instead, and the slot, whose contents are unknown
//!   then, is emptied with `MADV_DONTNEED` and counted empty) and a read into a missing page
//!   allocates it.
//! - Present pool bytes are counted in the buffer (`Buffer::pooled`): they count toward the
//!   buffer's capacity (so resident memory stays within it) but not toward the watermarks
//!   (so evicting into the pool frees room for the evictors' purpose).
//! - The pool is trimmed off the fault path: a round of the evictors, after evicting region
//!   pages down to the low-water mark (into the pool), trims the pool until region and pool
//!   pages together are at most the high-water mark ([`Pool::trim_to_mark`]), so that fills
//!   find the room above it as they would without a pool. Between rounds, fills that do not
//!   take pool pages (clean fills) grow the region under a pool that stays: a fill whose
//!   reservation takes region and pool pages past the midpoint between the high-water mark and
//!   the capacity kicks the evictors ([`Pool::crossed_trim_mark`], exact from the
//!   reservation's own total), which trim again (one at a time). Only a
//!   fill that finds the buffer full all the same (evictors behind) trims the pool itself,
//!   counted in `pool_fault_trims`, before evicting region pages.
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
    free: Mutex<FreeSlots>,
    /// Set when a dirty fill found the pool short of pages; evictions move pages into the
    /// pool only then, so a pool nobody takes from does not fill up for nothing. Cleared when
    /// a trim for room frees pool pages (a trim of an empty pool leaves it set: the fills
    /// that found the pool short still want pages).
    hungry: AtomicBool,
    /// Region and pool bytes from which a fill kicks the evictors to trim the pool.
    trim_at: usize,
    /// Region and pool bytes the evictors trim the pool down to.
    trim_to: usize,
    /// Held by the evictor trimming the pool to its mark ([`Pool::trim_to_mark`]).
    trimming: Mutex<()>,
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
            free: Mutex::new(FreeSlots::new(slots, slot_bytes, sys::page_size())),
            hungry: AtomicBool::new(true),
            trim_at: usize::MAX,
            trim_to: usize::MAX,
            trimming: Mutex::new(()),
        }))
    }

    /// Sets the marks of a pool in a buffer of `capacity` bytes with its high-water mark at
    /// `high` bytes: evictors trim the pool until region and pool pages are at most `high`,
    /// and fills kick them from midway between `high` and `capacity` (see the module
    /// documentation). A new pool is never trimmed but for room.
    pub(crate) fn with_marks(mut self, capacity: usize, high: usize) -> Pool {
        let high = high.min(capacity);
        self.trim_to = high;
        self.trim_at = high + (capacity - high) / 2;
        self
    }

    /// Whether `reserved`, a reservation of `bytes` just made, took region and pool pages
    /// together past the mark from which the evictors should trim the pool, with pool pages
    /// to trim.
    ///
    /// Exact, from the total the reservation itself stored: of the reservations that raise the
    /// total past the mark, exactly one sees itself cross it, however many race (reading the
    /// counters again after the reservation, two racing fills could each see the other's bytes
    /// and both miss the crossing). No atomic operation is added to the fault path: the pool's
    /// count is read only by the reservation that crossed. A kick can still be forgone when
    /// the pool is empty at the crossing and gets pages while the total stays above the mark
    /// (no reservation crosses it again): those pages come from evictions, whose round ends
    /// with a trim to the mark anyway; and a trim that leaves the total above the mark (its
    /// pages taken by fills meanwhile) leaves the rest to the evictors' wake-up every 200 ms
    /// ([`Pool::over_trim_mark`]) and, if the buffer fills first, to the fill that finds it
    /// full and trims the pool itself (`Stats::pool_fault_trims`).
    #[inline]
    pub(crate) fn crossed_trim_mark(
        &self,
        buffer: &Buffer,
        reserved: crate::buffer::Reserved,
        bytes: usize,
    ) -> bool {
        let total = reserved.total;
        total >= self.trim_at && total - bytes.min(total) < self.trim_at && buffer.pooled() > 0
    }

    /// Whether region and pool pages together are past the mark from which the evictors
    /// should trim the pool.
    pub(crate) fn over_trim_mark(&self, buffer: &Buffer) -> bool {
        buffer.total() >= self.trim_at
    }

    /// Evictor side: drops pool pages until region and pool pages together are at most the
    /// high-water mark (see the module documentation); returns how many bytes it freed.
    /// One evictor at a time: several that each measured the same excess would trim it once
    /// each (another one trimming now does it for this one). The excess is measured again
    /// after each slot, so that pages freed meanwhile (a fill's own trim, evictions) count.
    pub(crate) fn trim_to_mark(&self, buffer: &Buffer) -> usize {
        let Some(_alone) = self.trimming.try_lock() else {
            return 0;
        };
        let mut freed = 0;
        loop {
            let over = buffer.total().saturating_sub(self.trim_to);
            let n = if over > 0 {
                self.trim_slot(buffer, over)
            } else {
                0
            };
            if n == 0 {
                break;
            }
            freed += n;
        }
        self.trimmed(freed);
        freed
    }

    /// For tests, with no slot taken by a thread: the bytes the slots hold by their
    /// bookkeeping, and the bytes of pool pages present (`mincore`). Equal if it is exact.
    #[cfg(test)]
    pub(crate) fn held_and_present(&self) -> (Option<usize>, usize) {
        let held = self.free.lock().slots().into_iter().sum();
        let present = sys::resident_pages(self.mapping.addr(), self.mapping.len())
            .expect("mincore of the pool")
            * sys::page_size();
        (held, present)
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
        let Some(slot) = self.free.lock().pop_fullest(1, usize::MAX) else {
            // No slot has a page present (or every slot is taken).
            self.hungry.store(true, Ordering::Relaxed);
            return None;
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
        // back without taking the free list's lock again (slots other threads put back
        // meanwhile are missed, which only drops what could have been pooled).
        let mut no_room_for = usize::MAX;
        for &(addr, len) in runs {
            if let Some(full) = slot.take_if(|s| s.filled + len > self.slot_bytes) {
                self.free.lock().push(full);
            }
            if slot.is_none() && len < no_room_for {
                // The fullest slot that still has room, to keep the pool's pages together.
                slot = self
                    .slot_bytes
                    .checked_sub(len)
                    .and_then(|room| self.free.lock().pop_with_room(room));
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
            let n = self.trim_slot(buffer, bytes - freed);
            if n == 0 {
                break;
            }
            freed += n;
        }
        self.trimmed(freed);
        freed
    }

    /// Drops up to `bytes` (rounded up to system pages) from the top of the fullest slot;
    /// returns how many bytes it freed (0 if no slot a thread does not hold has pages).
    fn trim_slot(&self, buffer: &Buffer, bytes: usize) -> usize {
        let Some(mut slot) = self.free.lock().pop_fullest(1, usize::MAX) else {
            return 0;
        };
        let n = slot.filled.min(bytes.next_multiple_of(sys::page_size()));
        let addr = self.slot_addr(&slot) + slot.filled - n;
        self.discard(addr, n);
        slot.filled -= n;
        buffer.unpool(n);
        buffer.release(n);
        self.free.lock().push(slot);
        n
    }

    /// After a trim that freed `freed` bytes: only a trim that gave room back says the pool
    /// was holding pages nobody took (an empty pool freed nothing, and the fills that made it
    /// hungry still want pages), so evictions stop feeding it until a fill asks again.
    ///
    /// Every trim clears it, the evictors' as the fault path's. For the trims kicked by clean
    /// fills growing the region under the pool that is what stops evictions feeding a pool
    /// nobody takes from (a move and a drop for every page evicted). The evictors' trim after
    /// a round can also cut back only what the round itself moved in past the high-water
    /// mark (a round that began above it, under dirty fills that empty the pool between
    /// rounds): then the next round drops instead of pooling until a dirty fill finds the
    /// pool short again, so recycling may skip a round there. Kept as it is: keeping the
    /// pool hungry across such trims would keep moving pages in only to drop them in
    /// workloads that stopped taking them, and which costs more is a measurement not made.
    fn trimmed(&self, freed: usize) {
        if freed > 0 {
            self.hungry.store(false, Ordering::Relaxed);
        }
    }
}

/// No slot (in [`FreeSlots`]' links).
const NO_SLOT: usize = usize::MAX;

/// The slots no thread holds (see the module documentation): a stack per bucket of `filled`
/// (bucket `filled.div_ceil(unit)`), linked through the slots, and a bitmap of the buckets
/// whose stack is not empty. Pushing is O(1); popping the fullest slot within a range of
/// buckets scans the bitmap (a few words) and pops one stack. No allocation after `new`.
#[derive(Debug)]
struct FreeSlots {
    /// Bytes per bucket: the system page (pool pages are moved and dropped in whole system
    /// pages, so `filled` is a multiple of it).
    unit: usize,
    /// Per bucket, the slot on top of its stack, or [`NO_SLOT`].
    heads: Vec<usize>,
    /// Per slot, the slot under it in its bucket's stack (meaningful while it is free).
    next: Vec<usize>,
    /// Per slot, its `filled` (meaningful while it is free).
    filled: Vec<usize>,
    /// Bit `b` set: bucket `b`'s stack is not empty.
    nonempty: Vec<u64>,
}

impl FreeSlots {
    /// `slots` empty slots of `slot_bytes`, in buckets of `unit` bytes.
    fn new(slots: usize, slot_bytes: usize, unit: usize) -> FreeSlots {
        let unit = unit.clamp(1, slot_bytes.max(1));
        let buckets = slot_bytes / unit + 1;
        let mut free = FreeSlots {
            unit,
            heads: vec![NO_SLOT; buckets],
            next: vec![NO_SLOT; slots],
            filled: vec![0; slots],
            nonempty: vec![0; buckets.div_ceil(64)],
        };
        // Pushed in reverse so that slot 0 is on top (the first taken).
        for index in (0..slots).rev() {
            free.push(Slot { index, filled: 0 });
        }
        free
    }

    /// The bucket of a slot holding `filled` bytes: rounded up, so that every slot in
    /// bucket `b` holds at most `b * unit` bytes (and at least one byte from bucket 1 on).
    fn bucket(&self, filled: usize) -> usize {
        filled.div_ceil(self.unit).min(self.heads.len() - 1)
    }

    /// Puts `slot` back (on top of its bucket's stack).
    fn push(&mut self, slot: Slot) {
        let b = self.bucket(slot.filled);
        self.next[slot.index] = self.heads[b];
        self.filled[slot.index] = slot.filled;
        self.heads[b] = slot.index;
        self.nonempty[b / 64] |= 1 << (b % 64);
    }

    /// Takes the fullest slot whose bucket lies in `lo..=hi` (`hi` clamped to the last).
    fn pop_fullest(&mut self, lo: usize, hi: usize) -> Option<Slot> {
        let hi = hi.min(self.heads.len() - 1);
        if lo > hi {
            return None;
        }
        let mut w = hi / 64;
        loop {
            let mut word = self.nonempty[w];
            if w == hi / 64 {
                // Buckets up to `hi` only.
                word &= u64::MAX >> (63 - hi % 64);
            }
            if w == lo / 64 {
                // Buckets from `lo` on only.
                word &= u64::MAX << (lo % 64);
            }
            if word != 0 {
                let b = w * 64 + 63 - word.leading_zeros() as usize;
                let index = self.heads[b];
                self.heads[b] = self.next[index];
                if self.heads[b] == NO_SLOT {
                    self.nonempty[w] &= !(1 << (b % 64));
                }
                return Some(Slot {
                    index,
                    filled: self.filled[index],
                });
            }
            if w == lo / 64 {
                return None;
            }
            w -= 1;
        }
    }

    /// Takes the fullest slot holding at most `room` bytes (so that `slot_bytes - room` more
    /// fit in it).
    fn pop_with_room(&mut self, room: usize) -> Option<Slot> {
        // Bucket `b` holds at most `b * unit` bytes: those up to `room / unit` fit.
        self.pop_fullest(0, room / self.unit)
    }

    /// The `filled` of every free slot, by slot index (`None` for a slot a thread holds).
    #[cfg(test)]
    fn slots(&self) -> Vec<Option<usize>> {
        let mut out = vec![None; self.filled.len()];
        for &head in &self.heads {
            let mut k = head;
            while k != NO_SLOT {
                out[k] = Some(self.filled[k]);
                k = self.next[k];
            }
        }
        out
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
    use super::*;
    use crate::uffd::{CopyMode, Features};

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

    /// A region of three pages (see [`region`]) and a buffer of `capacity` pages in which
    /// they are reserved, as resident pages are.
    fn three_resident_pages(uffd: &Uffd, capacity: usize) -> (Mapping, Buffer) {
        let buffer = Buffer::new(capacity * PAGE, 90, 50);
        assert!(buffer.try_reserve(3 * PAGE).is_some());
        (region(uffd, 3), buffer)
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
        let runs = [(region.addr() + 3 * PAGE, PAGE)];
        // SAFETY: as above; page 3 is ours.
        unsafe { pool.stash(&uffd, &buffer, &counters, &runs, &mut rest) };
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
        let (region, buffer) = three_resident_pages(&uffd, 4);
        let at = |p: usize| region.addr() + p * PAGE;
        let mut rest = Vec::new();
        // SAFETY: the test owns the region's pages; they read as missing afterwards.
        unsafe { pool.stash(&uffd, &buffer, &counters, &[(at(0), 2 * PAGE)], &mut rest) };
        assert!(rest.is_empty());
        assert_eq!(buffer.pooled(), 2 * PAGE);
        // Bookkeeping gone wrong: the slot's second page counted as dropped but present.
        {
            let mut free = pool.free.lock();
            let mut slot = free.pop_fullest(1, usize::MAX).expect("the full slot");
            assert_eq!(slot.filled, 2 * PAGE);
            slot.filled = PAGE;
            free.push(slot);
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
        assert!(pool.free.lock().slots().iter().all(|s| *s == Some(0)));
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
        let full = pool.free.lock().slots();
        assert_eq!(full, vec![Some(2 * PAGE); 4]);
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

    /// The free list picks what the linear scans it replaced picked: against a model (a list
    /// of free slots scanned for the fullest, the fullest with room), thousands of slots of
    /// 1 MiB and random pushes and pops agree on how full the slot taken is, every time.
    #[test]
    fn the_free_list_takes_the_fullest_slot_among_thousands() {
        const SLOTS: usize = 5000;
        const SLOT: usize = 1 << 20;
        const UNIT: usize = 4096;
        let mut free = FreeSlots::new(SLOTS, SLOT, UNIT);
        let mut model: Vec<(usize, usize)> = (0..SLOTS).map(|k| (k, 0)).collect();
        let mut held: Vec<Slot> = Vec::new();
        // xorshift: a fixed sequence.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for step in 0..100_000 {
            match next(3) {
                // Take the fullest slot with a page present (`take`, `trim`).
                0 => {
                    let want = model.iter().filter(|s| s.1 > 0).map(|s| s.1).max();
                    let got = free.pop_fullest(1, usize::MAX);
                    assert_eq!(got.as_ref().map(|s| s.filled), want, "step {step}");
                    if let Some(slot) = got {
                        let k = model.iter().position(|s| s.0 == slot.index).unwrap();
                        assert_eq!(model.swap_remove(k).1, slot.filled, "step {step}");
                        held.push(slot);
                    }
                }
                // Take the fullest slot with room for a run (`stash`).
                1 => {
                    let len = (1 + next(SLOT / UNIT)) * UNIT;
                    let want = model
                        .iter()
                        .filter(|s| s.1 + len <= SLOT)
                        .map(|s| s.1)
                        .max();
                    let got = free.pop_with_room(SLOT - len);
                    assert_eq!(got.as_ref().map(|s| s.filled), want, "step {step}");
                    if let Some(slot) = got {
                        let k = model.iter().position(|s| s.0 == slot.index).unwrap();
                        assert_eq!(model.swap_remove(k).1, slot.filled, "step {step}");
                        held.push(slot);
                    }
                }
                // Give a held slot back, fuller or emptier.
                _ => {
                    if held.is_empty() {
                        continue;
                    }
                    let mut slot = held.swap_remove(next(held.len()));
                    slot.filled = next(SLOT / UNIT + 1) * UNIT;
                    model.push((slot.index, slot.filled));
                    free.push(slot);
                }
            }
        }
        // Every slot is accounted for, once: free with the model's `filled`, or held.
        let mut slots = free.slots();
        for s in &held {
            assert_eq!(slots[s.index], None, "a held slot is not free");
            slots[s.index] = Some(s.filled);
        }
        for &(k, filled) in &model {
            assert_eq!(slots[k], Some(filled));
        }
        assert!(slots.iter().all(Option::is_some));
    }

    /// A pool of thousands of slots works like a small one: a run stashed into it is taken
    /// back from the slot that holds it (among thousands of empty ones), a fuller slot is
    /// preferred, and a trim drops pages from the fullest.
    #[test]
    fn a_pool_of_thousands_of_slots() {
        let uffd = uffd();
        let counters = Counters::default();
        // 4096 slots of 1 MiB (address space only: `MAP_NORESERVE`, nothing touched).
        let pool = Pool::new(&uffd, 4 << 30).unwrap().expect("a pool");
        assert_eq!(pool.slot_bytes(), MAX_SLOT_BYTES);
        assert_eq!(pool.free.lock().slots().len(), 4096);
        let (region, buffer) = three_resident_pages(&uffd, 16);
        let at = |p: usize| region.addr() + p * PAGE;
        let mut rest = Vec::new();
        // Pages 0 and 1 go into one slot (the fullest with room, after the first), page 2
        // follows them.
        // SAFETY: the test owns the region's pages; they read as missing afterwards.
        unsafe { pool.stash(&uffd, &buffer, &counters, &[(at(0), 2 * PAGE)], &mut rest) };
        // SAFETY: as above.
        unsafe { pool.stash(&uffd, &buffer, &counters, &[(at(2), PAGE)], &mut rest) };
        assert!(rest.is_empty());
        let slots = pool.free.lock().slots();
        let used: Vec<usize> = (0..slots.len()).filter(|&k| slots[k] != Some(0)).collect();
        assert_eq!(used.len(), 1, "one slot holds the three pages");
        assert_eq!(slots[used[0]], Some(3 * PAGE));
        // A fill of one page takes the top page of that slot: page 2's bytes.
        let (slot, addr, present) = pool.take(PAGE).expect("the full slot");
        assert_eq!(slot.index, used[0]);
        assert_eq!((addr, present), (pool.slot_addr(&slot) + 2 * PAGE, PAGE));
        // SAFETY: the slot is ours; its page at `addr` is present.
        assert_eq!(unsafe { *(addr as *const u8) }, 3, "page 2's bytes");
        pool.put_back_unused(slot, addr, present, PAGE);
        // A trim drops from the fullest slot's top.
        assert_eq!(pool.trim(&buffer, PAGE), PAGE);
        assert_eq!(pool.free.lock().slots()[used[0]], Some(2 * PAGE));
        assert_eq!(buffer.pooled(), 2 * PAGE);
    }

    /// A pool of four slots of two pages whose evictors trim it to the high-water mark of a
    /// buffer of 10 pages (6), with that buffer (empty).
    fn marked_pool(uffd: &Uffd) -> (Pool, Buffer) {
        let pool = Pool::new(uffd, 8 * PAGE)
            .unwrap()
            .expect("a pool")
            .with_marks(10 * PAGE, 6 * PAGE);
        (pool, Buffer::new(10 * PAGE, 60, 20))
    }

    /// The evictors' marks: a reservation that takes region and pool pages past the midpoint
    /// between the high-water mark and the capacity asks for a trim (once, as it crosses), and
    /// the trim drops pool pages until region and pool pages are at most the high-water mark.
    #[test]
    fn evictors_trim_the_pool_down_to_the_high_water_mark() {
        let uffd = uffd();
        let counters = Counters::default();
        // Four slots of two pages, in a buffer of 10 pages with the high-water mark at 6.
        let (pool, buffer) = marked_pool(&uffd);
        let region = region(&uffd, 4);
        assert!(buffer.try_reserve(4 * PAGE).is_some());
        let mut rest = Vec::new();
        let runs = [(region.addr(), 4 * PAGE)];
        // SAFETY: the test owns the region's pages; they read as missing afterwards.
        unsafe { pool.stash(&uffd, &buffer, &counters, &runs, &mut rest) };
        assert_eq!(
            rest,
            vec![(region.addr(), 4 * PAGE)],
            "a run longer than a slot"
        );
        rest.clear();
        let runs: Vec<(usize, usize)> = (0..2)
            .map(|k| (region.addr() + k * 2 * PAGE, 2 * PAGE))
            .collect();
        // SAFETY: as above.
        unsafe { pool.stash(&uffd, &buffer, &counters, &runs, &mut rest) };
        assert!(rest.is_empty());
        assert_eq!((buffer.resident(), buffer.pooled()), (0, 4 * PAGE));
        // Reserves `bytes`: whether that asks the evictors to trim the pool.
        let crosses = |bytes: usize| {
            let reserved = buffer.try_reserve(bytes).expect("room");
            pool.crossed_trim_mark(&buffer, reserved, bytes)
        };
        // Region pages grow under the pool: nothing to trim up to the high-water mark.
        assert!(!crosses(2 * PAGE));
        assert!(!pool.over_trim_mark(&buffer));
        assert_eq!(pool.trim_to_mark(&buffer), 0, "at the high-water mark");
        assert!(pool.wants_pages());
        // Past the midpoint (8 pages): the reservation that crosses it asks, the next does not.
        assert!(crosses(2 * PAGE));
        assert!(pool.over_trim_mark(&buffer));
        assert!(!crosses(PAGE), "crossed already");
        // 5 region pages and 4 pool pages: 3 pool pages go.
        assert_eq!(pool.trim_to_mark(&buffer), 3 * PAGE);
        assert_eq!((buffer.resident(), buffer.pooled()), (5 * PAGE, PAGE));
        assert!(!pool.wants_pages(), "a trim that freed pages");
        assert!(!pool.over_trim_mark(&buffer));
        // Two fills racing past the mark (7 pages, then 8 and 9) before either looks: the
        // first asks, from its own reservation (reading the total again, both saw 9 pages
        // and neither asked).
        assert!(!crosses(PAGE));
        let first = buffer.try_reserve(PAGE).expect("room");
        let second = buffer.try_reserve(PAGE).expect("room");
        assert!(
            pool.crossed_trim_mark(&buffer, first, PAGE),
            "the first crossed"
        );
        assert!(!pool.crossed_trim_mark(&buffer, second, PAGE));
        buffer.release(3 * PAGE);
        // Region pages alone past the mark: no pool pages to trim, nothing asked.
        assert_eq!(pool.trim(&buffer, PAGE), PAGE);
        assert!(!crosses(4 * PAGE), "an empty pool");
        assert_eq!(pool.trim_to_mark(&buffer), 0);
    }

    /// Several evictors trimming at once trim the excess once: while one trims, the others
    /// leave it to it, and racing ones together free exactly the excess.
    #[test]
    fn evictors_trimming_at_once_trim_the_excess_once() {
        let uffd = uffd();
        let counters = Counters::default();
        for round in 0..20 {
            // Four slots of two pages, all full; a buffer of 10 pages with the high-water
            // mark at 6: two pool pages too many.
            let (pool, buffer) = marked_pool(&uffd);
            let region = region(&uffd, 8);
            assert!(buffer.try_reserve(8 * PAGE).is_some());
            let runs: Vec<(usize, usize)> = (0..4)
                .map(|k| (region.addr() + k * 2 * PAGE, 2 * PAGE))
                .collect();
            let mut rest = Vec::new();
            // SAFETY: the test owns the region's pages; they read as missing afterwards.
            unsafe { pool.stash(&uffd, &buffer, &counters, &runs, &mut rest) };
            assert!(rest.is_empty());
            if round == 0 {
                let busy = pool.trimming.lock();
                assert_eq!(pool.trim_to_mark(&buffer), 0, "another evictor trims");
                drop(busy);
            }
            let start = std::sync::Barrier::new(4);
            let freed: usize = std::thread::scope(|s| {
                let threads: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            pool.trim_to_mark(&buffer)
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).sum()
            });
            assert_eq!(freed, 2 * PAGE, "round {round}");
            assert_eq!(buffer.pooled(), 6 * PAGE, "round {round}");
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
