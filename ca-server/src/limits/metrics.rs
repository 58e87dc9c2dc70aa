//! The limiter's families in the CA's `/metrics`.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

use trellis_proto::metrics::{Families, Labels, label};

use super::Limits;

/// Writes the limiter's counters and gauges.
pub fn collect(limits: &Limits, f: &mut Families<'_>) -> fmt::Result {
    let c = &limits.counters;
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    f.gauge(
        "trellis_ca_issuance_in_flight",
        "Issuance requests being handled now.",
        [(Labels::new(), as_i64(limits.in_flight() as u64))],
    )?;
    f.gauge(
        "trellis_ca_issuance_concurrency_limit",
        "limits.max_concurrent_issuance.",
        [(
            Labels::new(),
            as_i64(u64::from(limits.config().max_concurrent_issuance)),
        )],
    )?;
    f.counter(
        "trellis_ca_issuance_admitted_total",
        "Issuance requests admitted by the limiter.",
        [(Labels::new(), c.admitted.load(Relaxed))],
    )?;
    f.counter(
        "trellis_ca_issuance_refused_total",
        "Issuance requests refused with RESOURCE_EXHAUSTED, by limit.",
        [
            ("concurrency", &c.refused_busy),
            ("renewal_rate", &c.refused_renewal_rate),
            ("bootstrap_rate", &c.refused_bootstrap_rate),
        ]
        .map(|(limit, n)| (label("limit", limit), n.load(Relaxed))),
    )?;
    let (identities, addresses) = limits.tracked_clients();
    f.gauge(
        "trellis_ca_rate_limited_clients",
        "Clients with a rate-limit bucket, by kind.",
        [
            (label("kind", "identity"), as_i64(identities as u64)),
            (label("kind", "source_address"), as_i64(addresses as u64)),
        ],
    )
}
