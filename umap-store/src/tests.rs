//! The [`Store`] contract, checked the same way against every backend through `dyn Store`.

use std::sync::Arc;

use crate::file::tests::direct_dir;
use crate::{FileStore, MemStore, Store, StoreError};

/// Makes a writable store holding `contents`.
type Factory<'a> = &'a dyn Fn(&[u8]) -> Arc<dyn Store>;

fn check_contract(make: Factory<'_>) {
    // Reads fill the whole buffer; bytes past the end are zeros.
    let store = make(b"hello");
    assert_eq!(store.len(), 5);
    assert!(!store.is_empty());
    let mut buf = [0xffu8; 8];
    store.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"hello\0\0\0");
    let mut buf = [0xffu8; 4];
    store.read_at(&mut buf, 3).unwrap();
    assert_eq!(&buf, b"lo\0\0", "read straddling the end");
    let mut buf = [0xffu8; 4];
    store.read_at(&mut buf, 5).unwrap();
    assert_eq!(buf, [0; 4], "read starting at the end");
    let mut buf = [0xffu8; 4];
    store.read_at(&mut buf, 1 << 40).unwrap();
    assert_eq!(buf, [0; 4], "read starting far past the end");
    store.read_at(&mut [], 1).unwrap();

    // Writes then reads; writes past the end grow the store with a zero gap.
    store.write_at(b"J", 0).unwrap();
    store.write_at(b"world", 8).unwrap();
    assert_eq!(store.len(), 13);
    let mut buf = [0xffu8; 16];
    store.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"Jello\0\0\0world\0\0\0");
    store.sync().unwrap();
    assert!(!store.is_read_only());
    assert!(store.preferred_alignment().is_power_of_two());

    // A large write across many pages, read back in odd pieces.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    store.write_at(&big, 3).unwrap();
    assert_eq!(store.len(), 100_003);
    let mut back = vec![0u8; 100_000];
    for (i, piece) in back.chunks_mut(4099).enumerate() {
        store.read_at(piece, 3 + (i * 4099) as u64).unwrap();
    }
    assert_eq!(back, big);

    // Usable through every forwarding impl.
    fn through<S: Store>(store: S) -> u64 {
        store.len()
    }
    assert_eq!(through(Arc::clone(&store)), 100_003);
    assert_eq!(through(&*store), 100_003);
    assert_eq!(through(&store), 100_003);
    let boxed: Box<dyn Store> = Box::new(Arc::clone(&store));
    assert_eq!(through(boxed), 100_003);

    // Shared between threads as `Arc<dyn Store>`.
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let chunk = [t + 1; 1000];
                let offset = 200_000 + t as u64 * 1000;
                store.write_at(&chunk, offset).unwrap();
                let mut back = [0u8; 1000];
                store.read_at(&mut back, offset).unwrap();
                assert_eq!(back, chunk);
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(store.len(), 208_000);
    let mut gap = vec![0xffu8; 100_000 - 3];
    store.read_at(&mut gap, 100_003).unwrap();
    assert!(gap.iter().all(|&b| b == 0));
}

fn check_read_only(store: Arc<dyn Store>) {
    assert!(store.is_read_only());
    assert!(matches!(store.write_at(b"x", 0), Err(StoreError::ReadOnly)));
    let mut buf = [0u8; 3];
    store.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"abc");
}

#[test]
fn mem_store_keeps_the_contract() {
    check_contract(&|contents| Arc::new(MemStore::from_vec(contents.to_vec())));
    check_read_only(Arc::new(MemStore::from_vec(b"abc".to_vec()).read_only()));
}

#[test]
fn file_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let make = |contents: &[u8]| -> Arc<dyn Store> {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("f{n}"));
        std::fs::write(&path, contents).unwrap();
        Arc::new(FileStore::open(&path).unwrap())
    };
    check_contract(&make);
    let path = dir.path().join("ro");
    std::fs::write(&path, b"abc").unwrap();
    check_read_only(Arc::new(FileStore::open_read_only(&path).unwrap()));
}

#[test]
fn direct_file_store_keeps_the_contract() {
    let dir = direct_dir();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let make = |contents: &[u8]| -> Arc<dyn Store> {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("f{n}"));
        std::fs::write(&path, contents).unwrap();
        let store = FileStore::options().direct(true).open(&path).unwrap();
        assert!(store.is_direct());
        Arc::new(store)
    };
    check_contract(&make);
    let path = dir.path().join("ro");
    std::fs::write(&path, b"abc").unwrap();
    let store = FileStore::options()
        .direct(true)
        .read_only(true)
        .open(&path)
        .unwrap();
    check_read_only(Arc::new(store));
}
