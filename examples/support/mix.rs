//! The SplitMix64 finaliser, shared by the examples and the benches that generate and check
//! data (each includes this file with `#[path = ...] mod mix;`).

/// The SplitMix64 finaliser: a bijective mix of a 64-bit value.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
