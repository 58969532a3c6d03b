use umap::{MapOptions, MemStore, Umap};

#[test]
fn smoke() {
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let umap = Umap::builder()
        .buffer_size(1 << 20)
        .page_size(4096)
        .fillers(2)
        .start()
        .unwrap();
    let region = umap
        .map(MemStore::from_vec(data.clone()), MapOptions::new())
        .unwrap();
    assert_eq!(region.as_slice(), &data[..]);
    let s = umap.stats();
    println!("{s}");
    assert!(s.resident_bytes <= 1 << 20);
    region.unmap().unwrap();
}
