//! A latency histogram in the Prometheus text format, shared by the CA's and the
//! sidecar's `/metrics` (both write the text themselves; this keeps one histogram).
//!
//! Buckets are fixed: [`LATENCY_BUCKETS`], a quarter millisecond to ten seconds, which
//! covers a TLS handshake on loopback as well as an issuance waiting for a busy disk.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (`+Inf` is implied).
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Observations counted per bucket; cheap enough for every handshake (atomics, no lock).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all observations in nanoseconds.
    sum_nanos: AtomicU64,
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

    /// Writes this histogram's samples as `name` with `labels` (`direction="inbound"`, or
    /// empty): the cumulative buckets, `_sum` and `_count`. The family's HELP and TYPE
    /// come first, from [`header`], once for all label sets.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = match LATENCY_BUCKETS.get(i) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The HELP and TYPE lines of a histogram family.
pub fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_with_inf_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(200));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        header(&mut out, "x_seconds", "Test.");
        h.render(&mut out, "x_seconds", "direction=\"inbound\"");
        assert!(out.starts_with("# HELP x_seconds Test.\n# TYPE x_seconds histogram\n"));
        assert!(out.contains("x_seconds_bucket{direction=\"inbound\",le=\"0.00025\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{direction=\"inbound\",le=\"0.0025\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{direction=\"inbound\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{direction=\"inbound\",le=\"10\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{direction=\"inbound\",le=\"+Inf\"} 3\n"));
        assert!(
            out.contains("x_seconds_sum{direction=\"inbound\"} 60.0032\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{direction=\"inbound\"} 3\n"));
        assert_eq!(h.count(), 3);
        let mut bare = String::new();
        Histogram::default().render(&mut bare, "y_seconds", "");
        assert!(bare.contains("y_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(bare.contains("y_seconds_count 0\n"));
    }
}
