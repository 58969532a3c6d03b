//! A store kept in memory.

use std::fmt;
use std::io;

use parking_lot::RwLock;

use crate::{Result, Store, StoreError};

/// A [`Store`] that keeps its bytes in a `Vec<u8>`: for tests, and for regions whose backing
/// should not outlive the process.
///
/// Reads share a read lock and run in parallel; writes take the write lock. Bytes past the
/// end read as zeros, and writing past the end grows the store, zero-filling any gap.
///
/// ```
/// use umap_store::{MemStore, Store};
///
/// let store = MemStore::new(4);
/// store.write_at(b"abc", 2)?;
/// assert_eq!(store.len(), 5);
/// assert_eq!(store.to_vec(), b"\0\0abc");
///
/// let frozen = MemStore::from_vec(store.to_vec()).read_only();
/// assert!(frozen.is_read_only());
/// assert!(frozen.write_at(b"x", 0).is_err());
/// # Ok::<(), umap_store::StoreError>(())
/// ```
pub struct MemStore {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemStore {
    /// A writable store of `len` zero bytes.
    pub fn new(len: usize) -> Self {
        Self::from_vec(vec![0; len])
    }

    /// A writable store holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemStore {
            data: RwLock::new(data),
            read_only: false,
        }
    }

    /// Makes the store read-only: it then refuses writes with [`StoreError::ReadOnly`].
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// A copy of the store's contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().clone()
    }
}

impl Store for MemStore {
    fn len(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let data = self.data.read();
        let avail = match usize::try_from(offset) {
            Ok(start) if start < data.len() => (data.len() - start).min(buf.len()),
            _ => 0,
        };
        if avail > 0 {
            let start = offset as usize;
            buf[..avail].copy_from_slice(&data[start..start + avail]);
        }
        buf[avail..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        if buf.is_empty() {
            return Ok(());
        }
        let out_of_range = || StoreError::OutOfRange {
            offset,
            len: buf.len(),
            reason: "a memory store cannot grow past isize::MAX bytes",
        };
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start
            .checked_add(buf.len())
            .filter(|&end| end <= isize::MAX as usize)
            .ok_or_else(out_of_range)?;
        let mut data = self.data.write();
        if end > data.len() {
            let additional = end - data.len();
            data.try_reserve(additional).map_err(|_| StoreError::Io {
                op: "write",
                offset,
                len: buf.len(),
                source: io::Error::from_raw_os_error(libc::ENOMEM),
            })?;
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl fmt::Debug for MemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStore")
            .field("len", &self.len())
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn new_is_zeroed_and_from_vec_keeps_data() {
        let store = MemStore::new(100);
        assert_eq!(store.len(), 100);
        assert_eq!(store.to_vec(), vec![0; 100]);
        assert!(!store.is_read_only());
        assert_eq!(store.preferred_alignment(), 1);
        assert!(MemStore::new(0).is_empty());

        let store = MemStore::from_vec(b"abc".to_vec());
        assert_eq!(store.len(), 3);
        assert_eq!(store.to_vec(), b"abc");
        let debug = format!("{store:?}");
        assert!(
            debug.contains("MemStore") && debug.contains("len: 3"),
            "{debug}"
        );
    }

    #[test]
    fn reads_past_end_are_zero() {
        let store = MemStore::from_vec(b"hello".to_vec());
        let mut buf = [0xffu8; 8];
        store.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello\0\0\0");
        let mut buf = [0xffu8; 6];
        store.read_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"lo\0\0\0\0");
        let mut buf = [0xffu8; 4];
        store.read_at(&mut buf, 5).unwrap();
        assert_eq!(buf, [0; 4]);
        store.read_at(&mut buf, u64::MAX).unwrap();
        assert_eq!(buf, [0; 4]);
        store.read_at(&mut [], 2).unwrap();
    }

    #[test]
    fn writes_grow_with_zero_gap() {
        let store = MemStore::new(2);
        store.write_at(b"xy", 6).unwrap();
        assert_eq!(store.len(), 8);
        assert_eq!(store.to_vec(), b"\0\0\0\0\0\0xy");
        store.write_at(b"ab", 1).unwrap();
        assert_eq!(store.to_vec(), b"\0ab\0\0\0xy");
        assert_eq!(store.len(), 8);
        store.write_at(b"", 100).unwrap();
        assert_eq!(store.len(), 8);
        store.sync().unwrap();
    }

    #[test]
    fn impossible_writes_fail_without_panicking() {
        let store = MemStore::new(0);
        let err = store.write_at(b"x", u64::MAX).unwrap_err();
        assert!(matches!(err, StoreError::OutOfRange { .. }), "{err:?}");
        let err = store.write_at(b"x", isize::MAX as u64).unwrap_err();
        assert!(matches!(err, StoreError::OutOfRange { .. }), "{err:?}");
        // Representable but far too large to allocate.
        let err = store.write_at(b"x", 1 << 62).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn read_only_refuses_writes_but_reads() {
        let store = MemStore::from_vec(b"data".to_vec()).read_only();
        assert!(store.is_read_only());
        let err = store.write_at(b"x", 0).unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly), "{err:?}");
        assert!(matches!(store.write_at(b"", 0), Err(StoreError::ReadOnly)));
        let mut buf = [0u8; 4];
        store.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"data");
        assert_eq!(store.to_vec(), b"data");
    }

    #[test]
    fn concurrent_disjoint_ranges() {
        const REGION: usize = 10_007;
        let store = Arc::new(MemStore::new(0));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let base = t as usize * REGION;
                    let data: Vec<u8> = (0..REGION).map(|i| (i as u8) ^ t).collect();
                    for round in 0..50 {
                        for (i, chunk) in data.chunks(1000).enumerate() {
                            store.write_at(chunk, (base + i * 1000) as u64).unwrap();
                        }
                        let mut back = vec![0u8; REGION];
                        store.read_at(&mut back, base as u64).unwrap();
                        assert_eq!(back, data, "thread {t} round {round}");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let all = store.to_vec();
        assert_eq!(all.len(), 8 * REGION);
        for (t, region) in all.chunks(REGION).enumerate() {
            assert!(region
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i as u8) ^ t as u8));
        }
    }
}
