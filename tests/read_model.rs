//! A seeded randomized test of the read path: random page sizes (powers of two or not),
//! store lengths, offsets, region lengths (shorter or longer than the store), buffer sizes
//! and filler counts; every read is compared with a model built from the store's bytes.
//! Set `UMAP_MODEL_SEED` to replay one case, `UMAP_MODEL_CASES` to run more.

mod common;

use common::Rng;
use umap::{MapOptions, MemStore, Umap};

const PS: usize = 4096;

/// What the region must read as: the store's bytes from `offset` for `len` bytes, zeros past
/// the store's end.
fn model(store: &[u8], offset: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if offset < store.len() {
        let n = (store.len() - offset).min(len);
        out[..n].copy_from_slice(&store[offset..offset + n]);
    }
    out
}

fn run_case(seed: u64) {
    let mut rng = Rng::new(seed);
    let page_size = PS * (1 + rng.below(24) as usize);
    let store_len = 1 + rng.below(6 << 20) as usize;
    let offset = match rng.below(3) {
        0 => 0,
        1 => rng.below(store_len as u64) as usize,
        _ => PS * rng.below((store_len / PS + 1) as u64) as usize,
    };
    let len = match rng.below(3) {
        0 => store_len.saturating_sub(offset).max(1),
        1 => 1 + rng.below(8 << 20) as usize,
        _ => 1 + rng.below(page_size as u64 * 3) as usize,
    };
    // Three threads read at once, each access straddling up to two pages: two pages each.
    let buffer = page_size * (6 + rng.below(12) as usize);
    let fillers = 1 + rng.below(4) as usize;
    // Half the cases serve faults on the faulting thread (a bit of the seed, so the other
    // draws stay as they were).
    let signals = seed & (1 << 7) != 0;
    let case = format!(
        "seed {seed:#x}: page {page_size}, store {store_len}, offset {offset}, len {len}, \
         buffer {buffer}, fillers {fillers}, signal faults {signals}"
    );

    let bytes = common::pattern(seed, 0, store_len);
    let expected = model(&bytes, offset, len);
    let umap = Umap::builder()
        .buffer_size(buffer)
        .page_size(page_size)
        .fillers(fillers)
        .signal_faults(signals)
        .start()
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let region = umap
        .map(
            MemStore::from_vec(bytes),
            MapOptions::new().offset(offset as u64).len(len),
        )
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let data = region.as_slice();
    assert_eq!(data.len(), len, "{case}");
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (case, expected, mut rng) = (&case, &expected, Rng::new(seed ^ (t + 1)));
            s.spawn(move || {
                for _ in 0..200 {
                    let n = 1 + rng.below(len.min(3 * page_size) as u64) as usize;
                    let start = rng.below((len - n + 1) as u64) as usize;
                    if data[start..start + n] != expected[start..start + n] {
                        panic!("{case}: bytes {start}..{} differ", start + n);
                    }
                }
            });
        }
    });
    assert!(data == &expected[..], "{case}: full comparison");
    // The rest of the last page reads as zeros.
    let mapped = len.next_multiple_of(page_size);
    for i in (len..mapped).step_by(509) {
        // SAFETY: the region is mapped up to a whole page.
        let b = unsafe { region.as_ptr().add(i).read_volatile() };
        assert_eq!(b, 0, "{case}: tail byte {i}");
    }
    let stats = umap.stats();
    assert!(stats.resident_bytes as usize <= buffer, "{case}");
    assert_eq!(
        stats.signal_faults > 0,
        signals,
        "{case}: faults served in the handler: {stats:?}"
    );
    region.unmap().unwrap_or_else(|e| panic!("{case}: {e}"));
}

#[test]
fn random_regions_read_like_the_model() {
    if let Ok(seed) = std::env::var("UMAP_MODEL_SEED") {
        let seed = u64::from_str_radix(seed.trim_start_matches("0x"), 16)
            .expect("UMAP_MODEL_SEED is a hex number");
        run_case(seed);
        return;
    }
    let cases: u64 = std::env::var("UMAP_MODEL_CASES")
        .map(|s| s.parse().expect("UMAP_MODEL_CASES is a count"))
        .unwrap_or(40);
    let mut seeds = Rng::new(0x0ead_beef);
    for _ in 0..cases {
        run_case(seeds.next_u64());
    }
}
