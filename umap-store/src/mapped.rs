//! A read-only mapping of a [`FileStore`](crate::FileStore)'s file that the pager copies
//! sequential runs from, with a thread that maps the file ahead of each stream.
//!
//! Kernel `mmap` reads a file faster than `read` does on some machines (its fault read-around
//! keeps larger requests in flight), and a copy straight from the page cache saves the copy
//! into a scratch buffer. So for a run that continues a sequential stream, the store offers
//! the pager a pointer into a shared read-only mapping of the file, and the pager installs the
//! run with one `UFFDIO_COPY` from there (see [`Store::copy_source`](crate::Store)). A helper
//! thread keeps each stream's next pages mapped ahead of it (`MADV_POPULATE_READ`, so the disk
//! works while the pager copies) and unmaps the pages behind it (`MADV_DONTNEED`: they stay in
//! the page cache, but leave the process's resident set).
//!
//! Only a run that continues a stream upwards gets a pointer; any other read, including a
//! stream's first, goes through `pread` as before. So random reads never map anything, and
//! what is mapped at any time is bounded: at most [`MAX_STREAMS`] streams, each with at most
//! [`MAX_AHEAD`] mapped ahead of it and [`BEHIND`] (plus the runs in flight) behind.
//!
//! The mapping covers the file's length when the store was opened. If the file shrinks later,
//! or a page cannot be read, a copy from the mapping fails with `EFAULT` (the kernel copy
//! does not raise `SIGBUS`), and the pager falls back to `pread`, which reports the store's
//! usual result (zeros past the end, or the I/O error).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

/// Streams followed at once; a new one replaces the least recently used (whose mapped pages
/// are unmapped).
pub(crate) const MAX_STREAMS: usize = 4;
/// The most a stream has mapped ahead of its last run. Its window is [`FIRST_AHEAD`] after
/// the first run that continues it, and doubles with every further one.
pub(crate) const MAX_AHEAD: u64 = 16 << 20;
/// A stream's window once a run has continued it (a stream of one run maps nothing ahead:
/// random reads must not read ahead).
const FIRST_AHEAD: u64 = 2 << 20;
/// How much the helper maps in one call.
const STEP: u64 = 1 << 20;
/// How far below a stream's end a run may start and still continue it (several threads serve
/// one stream's faults, so its runs arrive a little out of order).
const SLACK: u64 = 2 << 20;
/// How far beyond a stream's end a run may start and still continue it.
const GAP: u64 = 64 << 10;
/// The kernel may map a whole page-cache folio when one page of it is touched, and folios
/// reach 2 MiB: every range mapped or unmapped here is widened to these blocks. On Linux 6.18
/// a 2 MiB folio is mapped by one PMD, which any partial `MADV_DONTNEED` unmaps whole, so the
/// widening matters there only for [`BEHIND`]; it is kept for kernels that map a large folio
/// whole through PTEs, which no test here can observe.
const BLOCK: u64 = 2 << 20;
/// How far below a stream's end its pages stay mapped: the runs that may still continue it
/// ([`SLACK`]), and the block they lie in.
pub(crate) const BEHIND: u64 = SLACK + BLOCK;
/// A copy is made some time after its pointer was handed out (a thread may be preempted in
/// between) and maps its block again if the helper had unmapped it meanwhile. So each unmap
/// behind covers this much below the last one again (quick where nothing is mapped), and a
/// replaced stream is unmapped from its [`floor`](Stream::floor). A copy later than this, on
/// a stream never replaced, stays mapped until the store is dropped.
const LATE: u64 = 8 << 20;

/// See the module documentation.
pub(crate) struct FileMapping {
    shared: Arc<Shared>,
    helper: Option<JoinHandle<()>>,
    /// The process that started the helper: a child forked since has the mapping but not the
    /// thread (nor, perhaps, a usable lock).
    pid: u32,
}

struct Shared {
    /// The mapping's address and length (the file's length when mapped).
    base: usize,
    len: u64,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    streams: Vec<Stream>,
    /// Ranges to unmap: those of streams replaced by newer ones.
    zap: Vec<(u64, u64)>,
    /// Counts calls, for least-recently-used replacement.
    tick: u64,
    stop: bool,
    /// `MADV_POPULATE_READ` is refused (a kernel before 5.14): unmap behind only.
    no_populate: bool,
}

/// One stream: a sequence of adjacent runs. Runs above it continue it upwards and get the
/// mapping; runs below it (a descending scan) continue it too, so that they do not replace the
/// streams that use the mapping, but they are read with `pread`.
struct Stream {
    /// The lowest offset of its runs.
    start: u64,
    /// The highest end of its runs.
    end: u64,
    /// Mapped by the helper up to here.
    mapped_to: u64,
    /// Unmapped below here, by the helper (a multiple of [`BLOCK`]); a copy handed out
    /// before may still map a block below it (see [`LATE`]).
    unmapped_to: u64,
    /// Where the stream's blocks begin: `unmapped_to` when it started. Nothing of it was
    /// ever mapped below.
    floor: u64,
    /// How far ahead of `end` to map (0 until a run continues the stream).
    ahead: u64,
    /// A run continued it, so its runs may have been copied from the mapping (and its window
    /// mapped): only then is there anything to unmap when it is replaced. A stream of one
    /// run (a random read) mapped nothing.
    copied: bool,
    last_used: u64,
}

impl FileMapping {
    /// Maps the first `len` bytes of `file` (at least 1) read-only and starts the helper
    /// thread. `file` must be open for reading.
    pub(crate) fn new(file: &File, len: u64) -> io::Result<FileMapping> {
        let map_len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a new shared read-only mapping at an address the kernel chooses; `file` is
        // an open descriptor for the duration of the call (the mapping holds its own
        // reference). Nothing in this process writes through it, and it is only read by the
        // kernel (`UFFDIO_COPY`, `madvise`), which turns a page that cannot be read into an
        // error instead of a signal.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let shared = Arc::new(Shared {
            base: base as usize,
            len,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let helper = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("umap-map-ahead".into())
                .spawn(move || shared.run())
        };
        match helper {
            Ok(helper) => Ok(FileMapping {
                shared,
                helper: Some(helper),
                pid: std::process::id(),
            }),
            Err(e) => {
                // SAFETY: the mapping made above, used by nobody else (the thread never ran).
                unsafe { libc::munmap(base, map_len) };
                Err(e)
            }
        }
    }

    /// Where to copy `offset..offset + len` from, if that run continues a stream upwards;
    /// notes the run either way (a run that continues no stream starts a new one).
    pub(crate) fn source(&self, offset: u64, len: usize) -> Option<NonNull<u8>> {
        let end = offset.checked_add(len as u64)?;
        if len == 0 || end > self.shared.len {
            return None;
        }
        let noted = self.shared.state.lock().note(offset, end);
        if noted.new_work {
            // Only then: a random read must not wake the helper for nothing.
            self.shared.wake.notify_one();
        }
        if !noted.continues {
            return None;
        }
        // `offset + len <= self.len`, the mapping's length, so this stays inside it.
        NonNull::new((self.shared.base + offset as usize) as *mut u8)
    }
}

/// What [`State::note`] made of a run.
struct Noted {
    /// The run continues a stream upwards: it is copied from the mapping.
    continues: bool,
    /// The helper has something new to map or unmap.
    new_work: bool,
}

impl State {
    /// Notes the run `offset..end`: it continues a stream upwards (from at most [`SLACK`]
    /// below its end, as its runs arrive a little out of order, to [`GAP`] past it) or
    /// downwards (the same below its start), or starts a new stream, replacing the least
    /// recently used one if the table is full.
    fn note(&mut self, offset: u64, end: u64) -> Noted {
        self.tick += 1;
        let tick = self.tick;
        let upwards = self
            .streams
            .iter_mut()
            .find(|s| offset >= s.start && offset + SLACK >= s.end && offset <= s.end + GAP);
        if let Some(stream) = upwards {
            stream.last_used = tick;
            stream.copied = true;
            // Only progress widens the window (a late run of the stream does not).
            let progressed = end > stream.end;
            if progressed {
                stream.end = end;
                stream.ahead = (stream.ahead * 2).clamp(FIRST_AHEAD, MAX_AHEAD);
            }
            return Noted {
                continues: true,
                new_work: progressed,
            };
        }
        let downwards = self
            .streams
            .iter_mut()
            .find(|s| offset < s.start && end <= s.start + SLACK && end + GAP >= s.start);
        if let Some(stream) = downwards {
            stream.start = stream.start.min(offset);
            stream.last_used = tick;
            return Noted {
                continues: false,
                new_work: false,
            };
        }
        let mut new_work = false;
        if self.streams.len() >= MAX_STREAMS {
            let oldest = (0..self.streams.len())
                .min_by_key(|&i| self.streams[i].last_used)
                .expect("the table is full, so not empty");
            let old = self.streams.swap_remove(oldest);
            // Up to the end of the block its last mapped page lies in.
            let mapped_to = align_up(old.mapped_to.max(old.end), BLOCK);
            if old.copied && mapped_to > old.floor {
                self.zap.push((old.floor, mapped_to));
                new_work = true;
            }
        }
        // A later run's block may reach down to here.
        let floor = align_down(offset.saturating_sub(SLACK), BLOCK);
        self.streams.push(Stream {
            start: offset,
            end,
            mapped_to: end,
            unmapped_to: floor,
            floor,
            ahead: 0,
            copied: false,
            last_used: tick,
        });
        Noted {
            continues: false,
            new_work,
        }
    }
}

impl Drop for FileMapping {
    fn drop(&mut self) {
        // In a forked child there is no helper to stop, and the lock may have been held by a
        // thread of the parent at the fork: only the mapping is released.
        if std::process::id() == self.pid {
            self.shared.state.lock().stop = true;
            self.shared.wake.notify_one();
            if let Some(helper) = self.helper.take() {
                // The helper catches nothing: if it panicked, there is nothing left to stop.
                let _ = helper.join();
            }
        }
        // SAFETY: the mapping made in `new`, of that length; the helper has ended, and the
        // store that owned this mapping hands out no more pointers into it (it is being
        // dropped, and the pager holds the store while it copies).
        unsafe {
            libc::munmap(
                self.shared.base as *mut libc::c_void,
                self.shared.len as usize,
            )
        };
    }
}

impl Shared {
    /// The helper thread: maps ahead of the streams and unmaps behind them until stopped.
    fn run(&self) {
        loop {
            let (from, to, populate) = {
                let mut state = self.state.lock();
                loop {
                    if state.stop {
                        return;
                    }
                    if let Some(work) = self.next_work(&mut state) {
                        break work;
                    }
                    self.wake.wait(&mut state);
                }
            };
            let start = align_down(from, page_size());
            let end = to.min(self.len);
            if end <= start {
                continue;
            }
            let advice = if populate {
                libc::MADV_POPULATE_READ
            } else {
                libc::MADV_DONTNEED
            };
            // SAFETY: `start..end` lies inside the mapping (`end <= len`, `start` rounded
            // down to a page inside it). Populating reads the file into the page cache and
            // maps it; unmapping a shared read-only mapping's pages loses nothing (they stay
            // in the page cache), and a copy from them afterwards maps them again.
            let res = unsafe {
                libc::madvise(
                    (self.base + start as usize) as *mut libc::c_void,
                    (end - start) as usize,
                    advice,
                )
            };
            if res != 0 && populate {
                let error = io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::EINVAL) {
                    // An older kernel: stop populating; unmapping behind still bounds what
                    // the copies map.
                    self.state.lock().no_populate = true;
                }
                // Otherwise (the file shrank, a read failed): the copy will fail the same
                // way and the pager falls back to `pread`, which reports it.
            }
        }
    }

    /// The next range to unmap (`false`) or to map (`true`), updating the streams as if it
    /// were done; `None` if there is nothing to do.
    fn next_work(&self, state: &mut State) -> Option<(u64, u64, bool)> {
        if let Some((from, to)) = state.zap.pop() {
            return Some((from, to, false));
        }
        for stream in state.streams.iter_mut() {
            let keep_from = align_down(stream.end.saturating_sub(BEHIND), BLOCK);
            if stream.unmapped_to + BLOCK <= keep_from {
                let from = stream.unmapped_to.saturating_sub(LATE).max(stream.floor);
                stream.unmapped_to = keep_from;
                return Some((from, keep_from, false));
            }
        }
        if state.no_populate {
            return None;
        }
        for stream in state.streams.iter_mut() {
            stream.mapped_to = stream.mapped_to.max(stream.end);
            let target = (stream.end + stream.ahead).min(self.len);
            if stream.mapped_to < target {
                let from = stream.mapped_to;
                let to = (from + STEP).min(target);
                stream.mapped_to = to;
                return Some((from, to, true));
            }
        }
        None
    }
}

fn align_down(x: u64, to: u64) -> u64 {
    x & !(to - 1)
}

fn align_up(x: u64, to: u64) -> u64 {
    x.next_multiple_of(to)
}

/// The system page size, as an offset.
fn page_size() -> u64 {
    crate::file::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;

    /// A file of `len` bytes, byte `i` being `i % 251`, opened for reading.
    fn pattern_file(dir: &tempfile::TempDir, len: u64) -> File {
        let path = dir.path().join("data");
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        File::open(&path).unwrap()
    }

    /// Bytes of `mapping` mapped in this process (its `Rss` in `/proc/self/smaps`).
    fn mapped_bytes(mapping: &FileMapping) -> u64 {
        let start = format!("{:x}-", mapping.shared.base);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        assert!(lines.next().is_some(), "the mapping is not in smaps");
        let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
        rss.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    /// Reads one byte per 4 KiB of the run at `ptr`, as the kernel's copy would (it maps the
    /// pages it reads); checks them against the pattern at `offset`.
    fn copy_from(ptr: NonNull<u8>, offset: u64, len: u64) {
        for i in (0..len).step_by(4096) {
            // SAFETY: the run lies inside the mapping of an intact file.
            let byte = unsafe { ptr.as_ptr().add(i as usize).read_volatile() };
            assert_eq!(byte, ((offset + i) % 251) as u8, "byte at {}", offset + i);
        }
    }

    /// Waits until `done` holds, for at most 10 s.
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !done() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn only_runs_that_continue_an_ascending_stream_get_the_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let file = pattern_file(&dir, 16 * MIB);
        let mapping = FileMapping::new(&file, 16 * MIB).unwrap();
        // A stream's first run is read with pread.
        assert_eq!(mapping.source(MIB, MIB as usize), None);
        // The next one comes from the mapping, at its offset, holding the file's bytes.
        let next = mapping
            .source(2 * MIB, MIB as usize)
            .expect("a continuing run");
        assert_eq!(
            next.as_ptr() as usize,
            mapping.shared.base + 2 * MIB as usize
        );
        copy_from(next, 2 * MIB, MIB);
        // A run arriving a little out of order still continues it.
        assert!(mapping.source(2 * MIB + 65536, 65536).is_some());
        // A run far from every stream starts a new one; below a stream (a descending scan)
        // continues it without the mapping.
        assert_eq!(mapping.source(12 * MIB, 65536), None);
        assert_eq!(mapping.source(12 * MIB - 65536, 65536), None);
        assert_eq!(mapping.source(12 * MIB - 131072, 65536), None);
        // Nothing past the file, nothing empty.
        assert_eq!(mapping.source(16 * MIB - 4096, 8192), None);
        assert_eq!(mapping.source(3 * MIB, 0), None);
        assert_eq!(mapping.source(u64::MAX - 10, 100), None);
    }

    #[test]
    fn random_runs_map_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = pattern_file(&dir, 64 * MIB);
        let mapping = FileMapping::new(&file, 64 * MIB).unwrap();
        // Scattered 64 KiB runs, 5 MiB apart: each starts a stream of its own, which maps
        // nothing ahead (the reads would be wasted).
        for k in 0..12 {
            assert_eq!(mapping.source(k * 5 * MIB, 65536), None);
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(mapped_bytes(&mapping), 0);
    }

    #[test]
    fn random_runs_give_the_helper_no_work() {
        // However many replace one another in the table: none was continued, so none mapped
        // anything, and none wakes the helper.
        let mut state = State::default();
        for k in 0..100 {
            let offset = (k * 37 % 101) * 5 * MIB;
            let noted = state.note(offset, offset + 65536);
            assert!(!noted.continues && !noted.new_work, "run {k} at {offset}");
        }
        assert!(state.zap.is_empty());
        // A stream that was continued is unmapped when replaced.
        assert!(!state.note(1000 * MIB, 1001 * MIB).continues);
        let noted = state.note(1001 * MIB, 1002 * MIB);
        assert!(noted.continues && noted.new_work);
        for k in 0..MAX_STREAMS as u64 {
            state.note((2000 + 10 * k) * MIB, (2000 + 10 * k) * MIB + 65536);
        }
        assert_eq!(state.zap.len(), 1);
    }

    #[test]
    fn a_stream_is_mapped_ahead_and_unmapped_behind_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let len = 96 * MIB;
        let file = pattern_file(&dir, len);
        let mapping = FileMapping::new(&file, len).unwrap();
        assert_eq!(mapping.source(0, MIB as usize), None);
        // A few runs: the helper maps ahead of the stream, pages nobody copied yet.
        for k in 1..4 {
            let ptr = mapping.source(k * MIB, MIB as usize).unwrap();
            copy_from(ptr, k * MIB, MIB);
        }
        eventually("pages mapped ahead of the stream", || {
            mapped_bytes(&mapping) >= 4 * MIB + 4 * MIB
        });
        // The whole file, one run at a time: what stays mapped is bounded by the window
        // ahead, the margin behind and the blocks they round to, however long the stream.
        let bound = MAX_AHEAD + BEHIND + 2 * BLOCK + MIB;
        let mut peak = 0;
        for k in 4..len / MIB {
            let ptr = mapping.source(k * MIB, MIB as usize).unwrap();
            copy_from(ptr, k * MIB, MIB);
            // Let the helper keep up, as it does while the pager copies.
            std::thread::sleep(Duration::from_millis(1));
            peak = peak.max(mapped_bytes(&mapping));
        }
        eventually("the pages behind the stream unmapped", || {
            mapped_bytes(&mapping) <= bound
        });
        assert!(peak <= bound + 4 * MIB, "{peak} bytes mapped at the peak");
        // New streams, away from it, replace it: its pages are unmapped, and theirs map
        // nothing.
        for k in 0..MAX_STREAMS as u64 {
            assert_eq!(mapping.source((k * 10 + 5) * MIB, 65536), None);
        }
        eventually("the replaced stream unmapped", || {
            mapped_bytes(&mapping) == 0
        });
    }

    #[test]
    fn a_late_copy_is_unmapped_by_the_next_unmap_behind_or_when_its_stream_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let len = 96 * MIB;
        let file = pattern_file(&dir, len);
        let mapping = FileMapping::new(&file, len).unwrap();
        assert_eq!(mapping.source(0, MIB as usize), None);
        // A filler takes the pointer for run 1 and is preempted; other threads carry the
        // stream on, and the helper unmaps behind them.
        let late = mapping.source(MIB, MIB as usize).unwrap();
        for k in 2..12 {
            mapping.source(k * MIB, MIB as usize).unwrap();
        }
        eventually("the blocks behind the stream unmapped", || {
            mapping.shared.state.lock().streams[0].unmapped_to >= 6 * MIB
        });
        // The late copy maps its block again, below what the helper unmapped.
        copy_from(late, MIB, MIB);
        assert!(mapped_bytes(&mapping) > 0);
        // The stream goes on: its next unmap behind covers the late block again.
        for k in 12..16 {
            mapping.source(k * MIB, MIB as usize).unwrap();
        }
        eventually("the late block unmapped behind the stream", || {
            let state = mapping.shared.state.lock();
            state.streams[0].unmapped_to >= 10 * MIB && state.zap.is_empty()
        });
        std::thread::sleep(Duration::from_millis(50));
        let mut late_mapped = 0;
        for page in (0..2 * MIB).step_by(4096) {
            late_mapped += u64::from(is_mapped(&mapping, page));
        }
        assert_eq!(late_mapped, 0, "pages of the late block still mapped");
        // And a stream replaced after a late copy is unmapped from its floor.
        let again = mapping.source(16 * MIB, MIB as usize).unwrap();
        for k in 17..40 {
            mapping.source(k * MIB, MIB as usize).unwrap();
        }
        eventually("the stream unmapped behind", || {
            mapping.shared.state.lock().streams[0].unmapped_to >= 30 * MIB
        });
        copy_from(again, 16 * MIB, MIB);
        for k in 0..MAX_STREAMS as u64 {
            assert_eq!(mapping.source((k * 3 + 50) * MIB, 65536), None);
        }
        eventually("the replaced stream unmapped from its floor", || {
            mapped_bytes(&mapping) == 0
        });
    }

    /// Whether the page at `offset` of `mapping` is mapped in this process (`mincore` says
    /// whether it is cached, so ask `/proc/self/pagemap`: bit 63, present).
    fn is_mapped(mapping: &FileMapping, offset: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let page = page_size();
        let vpn = (mapping.shared.base as u64 + offset) / page;
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let mut entry = [0u8; 8];
        pagemap.read_exact_at(&mut entry, vpn * 8).unwrap();
        u64::from_ne_bytes(entry) >> 63 == 1
    }

    #[test]
    fn a_forked_child_drops_the_mapping_without_the_parents_helper() {
        let dir = tempfile::tempdir().unwrap();
        let file = pattern_file(&dir, 8 * MIB);
        let mapping = FileMapping::new(&file, 8 * MIB).unwrap();
        // SAFETY: the child only drops the mapping (getpid, munmap, freeing memory: glibc's
        // allocator is fork-safe) and exits with `_exit`, running no other code of the test
        // harness.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", io::Error::last_os_error());
        if child == 0 {
            // A panic must not unwind into the test harness's copy in the child.
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(mapping)));
            // SAFETY: ends the child at once, as fork's child should.
            unsafe { libc::_exit(i32::from(dropped.is_err())) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's drop failed: status {status:#x}"
        );
        // The parent's mapping and helper are untouched.
        assert_eq!(mapping.source(0, MIB as usize), None);
        assert!(mapping.source(MIB, MIB as usize).is_some());
    }

    #[test]
    fn an_empty_or_unreadable_file_is_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let file = pattern_file(&dir, MIB);
        assert!(FileMapping::new(&file, 0).is_err());
        let path = dir.path().join("write-only");
        std::fs::write(&path, [1u8; 4096]).unwrap();
        let write_only = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(FileMapping::new(&write_only, 4096).is_err());
    }
}
