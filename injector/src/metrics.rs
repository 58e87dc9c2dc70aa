//! The injector's `/metrics`: requests by outcome, their latency, failed TLS handshakes
//! and serving-certificate reloads.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use trellis_inject::webhook::Outcome;
use trellis_proto::metrics::{Families, Histogram, Labels, Source, label};

/// Outcome labels in the order of [`Metrics::requests`]; `bad_request` is a body that is
/// not an AdmissionReview.
const OUTCOMES: [&str; 5] = ["patched", "skipped", "refused", "ignored", "bad_request"];

/// Counters shared by the server and the certificate resolver.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; OUTCOMES.len()],
    latency: Histogram,
    handshake_failures: AtomicU64,
    certificate_reloads: AtomicU64,
}

impl Metrics {
    /// Counts one answered AdmissionReview.
    pub fn answered(&self, outcome: &Outcome, took: Duration) {
        self.count(outcome.label(), took);
    }

    /// Counts one request that was not an AdmissionReview.
    pub fn bad_request(&self, took: Duration) {
        self.count("bad_request", took);
    }

    fn count(&self, label: &str, took: Duration) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == label) {
            self.requests[i].fetch_add(1, Relaxed);
        }
        self.latency.observe(took);
    }

    /// Counts a TLS handshake that failed or timed out.
    pub fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Relaxed);
    }

    /// Counts a serving certificate picked up from changed files.
    pub fn certificate_reloaded(&self) {
        self.certificate_reloads.fetch_add(1, Relaxed);
    }
}

impl Source for Metrics {
    fn collect(&self, f: &mut Families<'_>) -> fmt::Result {
        f.counter(
            "trellis_injector_requests_total",
            "AdmissionReview requests by outcome: patched, skipped (allowed unchanged), refused \
             (injection asked for but impossible), ignored (not a pod creation), bad_request (not \
             an AdmissionReview).",
            OUTCOMES
                .iter()
                .zip(&self.requests)
                .map(|(outcome, n)| (label("outcome", *outcome), n.load(Relaxed))),
        )?;
        f.histogram(
            "trellis_injector_request_duration_seconds",
            "Time to answer an AdmissionReview, from the body read to the response.",
            [(Labels::new(), &self.latency)],
        )?;
        f.counter(
            "trellis_injector_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
            [(Labels::new(), self.handshake_failures.load(Relaxed))],
        )?;
        f.counter(
            "trellis_injector_certificate_reloads_total",
            "Serving certificates loaded again because their files changed.",
            [(Labels::new(), self.certificate_reloads.load(Relaxed))],
        )
    }
}
