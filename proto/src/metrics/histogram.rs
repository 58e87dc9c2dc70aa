//! A latency histogram, cheap enough for every handshake (atomics, no lock), with fixed
//! buckets: [`LATENCY_BUCKETS`], a quarter millisecond to ten seconds, which covers a TLS
//! handshake on loopback as well as an issuance waiting for a busy disk.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (`+Inf` is implied).
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Observations counted per bucket.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all observations in nanoseconds.
    sum_nanos: AtomicU64,
}

/// What the encoder needs: per-bucket counts (not cumulative) by upper bound, the last
/// one `+Inf` (as `f64::MAX`, the library's marker), the sum and the count.
pub(super) struct Snapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::MAX),
                    b.load(Relaxed),
                )
            })
            .collect();
        Snapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}
