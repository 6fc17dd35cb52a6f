//! How figures are rounded for the JSON, percentiles of sorted samples, and
//! the progress line on stderr.

use std::io::Write;
use std::time::Instant;

/// Rates and byte counts: whole units.
pub fn round(x: f64) -> f64 {
    x.round()
}

/// Ratios, seconds and milliseconds: three decimals.
pub fn ratio(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn progress(label: &str, done: usize, total: usize, started: Instant) {
    eprint!(
        "\r  {label}: {done}/{total} ({:.0}/s)   ",
        done as f64 / started.elapsed().as_secs_f64().max(1e-9)
    );
    let _ = std::io::stderr().flush();
}

/// The `p` quantile (0.0 to 1.0) of `sorted`, nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
