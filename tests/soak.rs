//! Soak test: random mixed reads, writes, flushes, prefetches, drops of ranges, region
//! creation and removal, with injected store read and write failures, checked against a
//! reference model. Runs `UMAP_SOAK_SECS` seconds (default 30), then a third of that again
//! with 64 KiB pages and page recycling on; `UMAP_SOAK_SEED` replays a run (the seed is
//! printed).
//!
//! What it checks, all along and at the end:
//! - every byte read from a region is the model's (what was last written there);
//! - after every flush that succeeds, the store holds the model's bytes for the flushed pages
//!   ("every successfully flushed byte is in the store"); after an unmap that succeeds, for
//!   the whole region; a flush that fails leaves the pages dirty, a later one writes them;
//! - every injected permanent failure is reported: a failed write-back is in the region's
//!   `take_errors` (same store range and errno), a read that fails under a prefetch makes it
//!   return an error, a read that fails under a fault poisons the page and is recorded;
//! - a region dropped while its store fails stays mapped until `Umap::flush` writes it.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Rng;
use umap::{Advice, ErrorKind, MapOptions, MemStore, Region, RegionError, Umap};
use umap_store::fault::{Fault, FaultId, FaultyStore, Injected, Op};

const PS: usize = 4096;
const BUFFER_PAGES: usize = 96;
const MAX_REGIONS: usize = 3;

type Store = FaultyStore<MemStore>;

/// A live region and its model.
struct Slot {
    region: Region,
    m: Model,
}

/// What a region must hold, and what it reported.
struct Model {
    id: usize,
    ps: usize,
    store: Arc<Store>,
    /// What the region's bytes must be.
    model: Vec<u8>,
    /// Pages poisoned by an injected read failure (never touched again: they raise SIGBUS).
    poisoned: HashSet<usize>,
    /// The transient read failure rule of a page, if any (at most one per page: two would
    /// make 4 failures in a row, more than a fault retries, and poison the page under a load).
    transient: HashMap<usize, FaultId>,
    /// Every error taken from the region so far.
    reported: Vec<RegionError>,
}

impl Model {
    /// Whether `[off, off + len)` touches a poisoned page.
    fn touches_poison(&self, off: usize, len: usize) -> bool {
        let ps = self.ps;
        (off / ps..(off + len).div_ceil(ps)).any(|p| self.poisoned.contains(&p))
    }

    /// Asserts that the store holds the model's bytes for the pages overlapping
    /// `[off, off + len)`.
    fn check_store(&self, off: usize, len: usize, what: &str) {
        let ps = self.ps;
        let start = off / ps * ps;
        let end = ((off + len).div_ceil(ps) * ps).min(self.model.len());
        let got = self.store.inner().to_vec();
        if got[start..end] != self.model[start..end] {
            let i = (start..end).find(|&i| got[i] != self.model[i]).unwrap();
            panic!(
                "region {}: after {what}, store byte {i} is {:#04x}, the model says {:#04x}",
                self.id, got[i], self.model[i]
            );
        }
    }

    /// Asserts that every injected permanent write failure of this store is among the
    /// reported errors.
    fn check_writes_reported(&self) {
        let ps = self.ps as u64;
        for inj in self.store.injected() {
            if inj.op != Op::Write || inj.is_transient() {
                continue;
            }
            let found = self.reported.iter().any(|r| {
                r.kind == ErrorKind::Write
                    && r.store_offset == inj.offset
                    && r.len == inj.len
                    && r.errno == Some(inj.errno)
            });
            assert!(
                found,
                "region {}: injected {inj:?} (page {}) was not reported; reported: {:?}",
                self.id,
                inj.offset / ps,
                self.reported
            );
        }
    }
}

fn seconds() -> u64 {
    match std::env::var("UMAP_SOAK_SECS") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("UMAP_SOAK_SECS={s:?} is not a number of seconds")),
        Err(_) => 30,
    }
}

#[test]
fn soak() {
    soak_with(PS, false, false, seconds());
}

/// The same with page recycling on (`Config::recycle_pages`), which needs pages of 64 KiB or
/// more: a third of the time.
#[test]
fn soak_with_page_recycling() {
    soak_with(64 * 1024, true, false, seconds().div_ceil(3));
}

/// The same with faults served on the faulting thread (`Config::signal_faults`): a third of
/// the time. No page is poisoned (a load of one would be fatal, and a system call no longer
/// reads the store), so the system-call step checks `EFAULT` or the bytes instead.
#[test]
fn soak_with_signal_faults() {
    soak_with(PS, false, true, seconds().div_ceil(3));
}

/// Runs the soak for `secs` seconds with umap pages of `base_ps` bytes (regions use 1, 2 or 4 times
/// that), page recycling on or off, and faults served by fillers or in a signal handler.
fn soak_with(base_ps: usize, recycle: bool, signals: bool, secs: u64) {
    let seed = match std::env::var("UMAP_SOAK_SEED") {
        Ok(s) => s.parse().expect("UMAP_SOAK_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    println!(
        "soak: {secs} s, pages of {base_ps} bytes, recycling {recycle}, signal faults \
         {signals}, UMAP_SOAK_SEED={seed}"
    );
    let mut rng = Rng::new(seed);
    let umap = Umap::builder()
        .buffer_size(BUFFER_PAGES * base_ps)
        .page_size(base_ps)
        .fillers(2)
        .evictors(1)
        .recycle_pages(recycle)
        .signal_faults(signals)
        .start()
        .unwrap_or_else(|e| panic!("the engine needs userfaultfd: {e}"));

    let mut slots: Vec<Slot> = Vec::new();
    // Regions dropped while their store failed: (model, store), written by a later flush.
    let mut leaked: Vec<(usize, Vec<u8>, Arc<Store>)> = Vec::new();
    let mut next_id = 0;
    // The probabilistic permanent write failure rule, per store, while a failure phase lasts.
    let mut write_rules: Vec<(Arc<Store>, FaultId)> = Vec::new();
    let mut ops = [0u64; 11];
    let mut failed_flushes = 0u64;
    let mut failed_prefetches = 0u64;
    let mut poisoned_pages = 0u64;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_NONBLOCK) },
        0
    );

    while Instant::now() < deadline {
        if slots.is_empty() {
            slots.push(new_slot(&umap, base_ps, &mut rng, &mut next_id));
        }
        let op = rng.below(100);
        let i = rng.below(slots.len() as u64) as usize;
        let Slot { region, m: slot } = &mut slots[i];
        let len = slot.model.len();
        let ps = slot.ps;
        match op {
            // Write a few bytes to a few pages.
            0..=29 => {
                ops[0] += 1;
                let off = rng.below(len as u64) as usize;
                let n = (1 + rng.below(3 * ps as u64) as usize).min(len - off);
                if slot.touches_poison(off, n) {
                    continue;
                }
                let mut bytes = vec![0u8; n];
                for b in &mut bytes {
                    *b = rng.next_u64() as u8;
                }
                region.as_mut_slice().unwrap()[off..off + n].copy_from_slice(&bytes);
                slot.model[off..off + n].copy_from_slice(&bytes);
            }
            // Read and compare.
            30..=54 => {
                ops[1] += 1;
                let off = rng.below(len as u64) as usize;
                let n = (1 + rng.below(8 * ps as u64) as usize).min(len - off);
                if slot.touches_poison(off, n) {
                    continue;
                }
                let got = &region.as_slice()[off..off + n];
                if got != &slot.model[off..off + n] {
                    let k = (0..n).find(|&k| got[k] != slot.model[off + k]).unwrap();
                    panic!(
                        "region {}: byte {} reads {:#04x}, the model says {:#04x} (seed {seed})",
                        slot.id,
                        off + k,
                        got[k],
                        slot.model[off + k]
                    );
                }
            }
            // Flush a range or the whole region.
            55..=62 => {
                ops[2] += 1;
                let (off, n) = if rng.below(2) == 0 {
                    (0, len)
                } else {
                    let off = rng.below(len as u64) as usize;
                    (off, (1 + rng.below(16 * ps as u64) as usize).min(len - off))
                };
                match region.flush_range(off, n) {
                    Ok(()) => slot.check_store(off, n, "a flush"),
                    Err(e) => {
                        failed_flushes += 1;
                        assert!(matches!(e, umap::Error::Store(_)), "{e}");
                    }
                }
            }
            // Prefetch, sometimes with a page whose store read fails.
            63..=69 => {
                ops[3] += 1;
                let off = rng.below(len as u64) as usize;
                let n = (1 + rng.below(16 * ps as u64) as usize).min(len - off);
                let rule = (rng.below(3) == 0).then(|| {
                    let p = (off + rng.below(n as u64) as usize) / ps;
                    slot.store
                        .inject(Fault::on(Op::Read).range(page_range(p, ps)))
                });
                let before = injected_reads(&slot.store);
                let result = region.prefetch(off, n).unwrap().wait();
                if let Some(rule) = rule {
                    slot.store.remove(rule);
                }
                let after = injected_reads(&slot.store);
                if after.0 > before.0 {
                    failed_prefetches += 1;
                    assert!(result.is_err(), "a failed prefetch read was not reported");
                }
                if let Err(e) = result {
                    // A permanent failure, or three transient ones in a row.
                    assert!(
                        after.1 > before.1,
                        "the prefetch failed with nothing injected: {e}"
                    );
                }
            }
            // With faults served on the faulting thread, a system call gets EFAULT for a page
            // that is not resident (and reads nothing from the store), or the page's bytes.
            70..=72 if signals => {
                ops[4] += 1;
                let p = rng.below(region.len().div_ceil(ps) as u64) as usize;
                let n = (len - p * ps).min(64);
                let before = injected_reads(&slot.store);
                // SAFETY: reads n bytes of the live region (or fails with EFAULT).
                let rc =
                    unsafe { libc::write(pipe[1], region.as_ptr().add(p * ps) as *const _, n) };
                let err = std::io::Error::last_os_error();
                if rc < 0 {
                    assert_eq!(err.raw_os_error(), Some(libc::EFAULT), "{err}");
                    assert_eq!(injected_reads(&slot.store), before, "EFAULT after a read");
                } else {
                    assert_eq!(rc as usize, n);
                    let mut back = vec![0u8; n];
                    // SAFETY: reads the bytes just written into the pipe.
                    let got = unsafe { libc::read(pipe[0], back.as_mut_ptr() as *mut _, n) };
                    assert_eq!(got as usize, n);
                    assert_eq!(back, slot.model[p * ps..p * ps + n]);
                }
            }
            // A system call reads a page whose store read fails (if it is not resident): the
            // page is poisoned, the call gets EFAULT, the error is recorded.
            70..=72 => {
                ops[4] += 1;
                let p = rng.below(region.len().div_ceil(ps) as u64) as usize;
                if slot.poisoned.contains(&p) {
                    continue;
                }
                let rule = slot
                    .store
                    .inject(Fault::on(Op::Read).range(page_range(p, ps)));
                let before = injected_reads(&slot.store);
                let n = (len - p * ps).min(64);
                // SAFETY: reads n bytes of the live region (the kernel's access is served by
                // the engine or fails with EFAULT).
                let rc =
                    unsafe { libc::write(pipe[1], region.as_ptr().add(p * ps) as *const _, n) };
                let err = std::io::Error::last_os_error();
                slot.store.remove(rule);
                let after = injected_reads(&slot.store);
                if rc < 0 {
                    assert_eq!(err.raw_os_error(), Some(libc::EFAULT), "{err}");
                    assert!(after.1 > before.1, "EFAULT without an injected failure");
                    slot.poisoned.insert(p);
                    poisoned_pages += 1;
                    slot.reported.extend(region.take_errors());
                    assert!(
                        slot.reported.iter().any(|r| r.kind == ErrorKind::Read
                            && r.offset == p * ps
                            && matches!(r.errno, Some(libc::EIO | libc::EAGAIN))),
                        "the poisoned page {p} was not recorded: {:?}",
                        slot.reported
                    );
                } else {
                    assert_eq!(rc as usize, n);
                    assert_eq!(after.0, before.0, "a read failed but the call succeeded");
                    let mut back = vec![0u8; n];
                    // SAFETY: reads the bytes just written into the pipe.
                    let got = unsafe { libc::read(pipe[0], back.as_mut_ptr() as *mut _, n) };
                    assert_eq!(got as usize, n);
                    assert_eq!(back, slot.model[p * ps..p * ps + n]);
                }
            }
            // Transient read failures on a page: retried, never seen.
            73..=75 => {
                ops[5] += 1;
                let p = rng.below(region.len().div_ceil(ps) as u64) as usize;
                let id = slot.store.inject(
                    Fault::on(Op::Read)
                        .range(page_range(p, ps))
                        .transient()
                        .times(2),
                );
                if let Some(old) = slot.transient.insert(p, id) {
                    slot.store.remove(old);
                }
            }
            // Drop a range (writes back what is dirty).
            76..=80 => {
                ops[6] += 1;
                let off = rng.below(len as u64) as usize;
                let n = (1 + rng.below(16 * ps as u64) as usize).min(len - off);
                match region.advise(off, n, Advice::DontNeed) {
                    Ok(()) => slot.check_store(off, n, "dropping a range"),
                    Err(e) => assert!(matches!(e, umap::Error::Store(_)), "{e}"),
                }
            }
            // Start or end a phase of permanent write failures on this store.
            81..=86 => {
                ops[7] += 1;
                if let Some(k) = write_rules
                    .iter()
                    .position(|(s, _)| Arc::ptr_eq(s, &slot.store))
                {
                    let (store, id) = write_rules.swap_remove(k);
                    store.remove(id);
                } else {
                    let id = slot.store.inject(Fault::on(Op::Write).probability(0.3));
                    write_rules.push((slot.store.clone(), id));
                }
            }
            // Map another region.
            87..=90 => {
                ops[8] += 1;
                if slots.len() < MAX_REGIONS {
                    slots.push(new_slot(&umap, base_ps, &mut rng, &mut next_id));
                }
            }
            // Unmap a region: on a write-back failure it comes back; then the store recovers.
            91..=96 => {
                // Regions live for a few hundred operations.
                if rng.below(8) != 0 {
                    continue;
                }
                ops[9] += 1;
                let Slot {
                    region,
                    m: mut slot,
                } = slots.swap_remove(i);
                slot.reported.extend(region.take_errors());
                match region.unmap() {
                    Ok(()) => {}
                    Err(e) => {
                        assert!(matches!(e.error(), umap::Error::Store(_)), "{e}");
                        let mut region = e.into_region().expect("the region comes back");
                        slot.reported.extend(region.take_errors());
                        stop_failing(&mut write_rules, &slot.store);
                        // The store's transient failures stay on (1 in 10 writes): a run can
                        // still meet three in a row, which is reported like any failure.
                        let mut tries = 0;
                        while let Err(e) = region.unmap() {
                            tries += 1;
                            assert!(
                                tries < 10 && e.to_string().contains("temporarily"),
                                "unmap once the store works: {e}"
                            );
                            region = e.into_region().expect("the region comes back");
                            slot.reported.extend(region.take_errors());
                        }
                    }
                }
                // Failures met after the last take_errors, kept by the engine.
                slot.reported.extend(umap.take_errors());
                slot.check_store(0, slot.model.len(), "unmap");
                slot.check_writes_reported();
            }
            // Drop a region while its store fails: it stays mapped until a flush writes it.
            _ => {
                if rng.below(8) != 0 {
                    continue;
                }
                ops[10] += 1;
                let Slot {
                    region,
                    m: mut slot,
                } = slots.swap_remove(i);
                let dirty = region.dirty_bytes() > 0;
                let leaked_before = umap.leaked_regions();
                slot.reported.extend(region.take_errors());
                drop(region);
                if umap.leaked_regions() > leaked_before {
                    // (Pages being written back by an evictor are not counted as dirty.)
                    let failed = slot.store.injected().iter().any(|i| i.op == Op::Write);
                    assert!(
                        dirty || failed,
                        "leaked, with no dirty page nor failed write"
                    );
                    leaked.push((slot.id, slot.model, slot.store));
                } else {
                    slot.reported.extend(umap.take_errors());
                    slot.check_store(0, slot.model.len(), "drop");
                    slot.check_writes_reported();
                }
            }
        }
        for slot in &mut slots {
            slot.m.reported.extend(slot.region.take_errors());
        }
    }

    // The end: the stores recover; everything is flushed and unmapped, and must be there.
    for (store, id) in write_rules.drain(..) {
        store.remove(id);
    }
    for slot in &slots {
        slot.m.store.clear();
    }
    for (_, _, store) in &leaked {
        store.clear();
    }
    umap.flush().expect("a flush once the stores work");
    assert_eq!(
        umap.leaked_regions(),
        0,
        "the flush unmapped the leaked regions"
    );
    for (id, model, store) in &leaked {
        assert!(
            store.inner().to_vec() == *model,
            "leaked region {id}: the store differs after the flush"
        );
    }
    let regions = slots.len();
    for Slot {
        region,
        m: mut slot,
    } in slots
    {
        slot.check_store(0, slot.model.len(), "the final flush");
        slot.reported.extend(region.take_errors());
        let (store, model) = (slot.store.clone(), std::mem::take(&mut slot.model));
        region.unmap().expect("unmap");
        slot.reported.extend(umap.take_errors());
        slot.check_writes_reported();
        assert!(store.inner().to_vec() == model);
    }
    assert_eq!(umap.region_count(), 0);
    let stats = umap.stats();
    println!(
        "soak: ops {ops:?} (write, read, flush, prefetch, syscall read, transient reads, \
         drop range, failure phase, map, unmap, leak); {next_id} regions, {regions} left at the \
         end, {} leaked and recovered; {failed_flushes} failed flushes, {failed_prefetches} \
         failed prefetches, {poisoned_pages} poisoned pages\n{stats}",
        leaked.len()
    );
    assert!(
        stats.write_errors > 0 || secs < 5,
        "no write failure was injected"
    );
    assert!(
        !recycle || stats.recycled_bytes > 0,
        "recycling was on but no page was recycled"
    );
    assert_eq!(
        stats.signal_faults > 0,
        signals,
        "faults served in the handler: {stats:?}"
    );
}

/// The store range of page `p`.
fn page_range(p: usize, ps: usize) -> std::ops::Range<u64> {
    (p * ps) as u64..((p + 1) * ps) as u64
}

/// Injected read failures so far: (permanent ones, all).
fn injected_reads(store: &Store) -> (usize, usize) {
    let injected = store.injected();
    let reads = injected.iter().filter(|i: &&Injected| i.op == Op::Read);
    (
        reads.clone().filter(|i| !i.is_transient()).count(),
        reads.count(),
    )
}

/// Ends the failure phase of `store`, if one is on.
fn stop_failing(rules: &mut Vec<(Arc<Store>, FaultId)>, store: &Arc<Store>) {
    rules.retain(|(s, id)| {
        let this = Arc::ptr_eq(s, store);
        if this {
            s.remove(*id);
        }
        !this
    });
}

/// A new writable region of 16 to 256 pages of 4, 8 or 16 KiB over a patterned store, with
/// transient write failures (retried) always on.
fn new_slot(umap: &Umap, base_ps: usize, rng: &mut Rng, next_id: &mut usize) -> Slot {
    let id = *next_id;
    *next_id += 1;
    let ps = base_ps << rng.below(3);
    let pages = 16 + rng.below(241) as usize;
    // Not a multiple of the page size, sometimes.
    let len = pages * ps - rng.below(2) as usize * rng.below(ps as u64) as usize;
    let seed = rng.next_u64();
    let data = common::pattern(seed, 0, len);
    let store = Arc::new(FaultyStore::new(MemStore::from_vec(data.clone()), seed));
    store.inject(Fault::on(Op::Write).probability(0.1).transient());
    let region = umap
        .map_shared(
            store.clone(),
            MapOptions::new().page_size(ps).writable(true),
        )
        .unwrap();
    Slot {
        region,
        m: Model {
            id,
            ps,
            store,
            model: data,
            poisoned: HashSet::new(),
            transient: HashMap::new(),
            reported: Vec::new(),
        },
    }
}
