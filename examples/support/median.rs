//! Medians and ranges of repeated measurements: the throughput bench's `--repeat` and the sort
//! example's `--versus-mmap` (both include this file).

#![allow(dead_code)] // each includer uses its own subset.

/// The median of `values`: the middle one, or the mean of the two middle ones for an even
/// count; `None` if there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The smallest and the largest of `values`; `None` if there are none.
pub fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let first = *values.first()?;
    Some(
        values
            .iter()
            .fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v))),
    )
}
