//! The limiter's lines in the CA's `/metrics`.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::Limits;

/// Appends the limiter's counters and gauges in the Prometheus text format.
pub fn render(limits: &Limits, out: &mut String) {
    let c = &limits.counters;
    let _ = writeln!(
        out,
        "# HELP trellis_ca_issuance_in_flight Issuance requests being handled now.\n\
         # TYPE trellis_ca_issuance_in_flight gauge\n\
         trellis_ca_issuance_in_flight {}\n\
         # HELP trellis_ca_issuance_concurrency_limit limits.max_concurrent_issuance.\n\
         # TYPE trellis_ca_issuance_concurrency_limit gauge\n\
         trellis_ca_issuance_concurrency_limit {}\n\
         # HELP trellis_ca_issuance_admitted_total Issuance requests admitted by the limiter.\n\
         # TYPE trellis_ca_issuance_admitted_total counter\n\
         trellis_ca_issuance_admitted_total {}\n\
         # HELP trellis_ca_issuance_refused_total Issuance requests refused with RESOURCE_EXHAUSTED, by limit.\n\
         # TYPE trellis_ca_issuance_refused_total counter\n\
         trellis_ca_issuance_refused_total{{limit=\"concurrency\"}} {}\n\
         trellis_ca_issuance_refused_total{{limit=\"renewal_rate\"}} {}\n\
         trellis_ca_issuance_refused_total{{limit=\"bootstrap_rate\"}} {}\n\
         # HELP trellis_ca_rate_limited_clients Clients with a rate-limit bucket, by kind.\n\
         # TYPE trellis_ca_rate_limited_clients gauge\n\
         trellis_ca_rate_limited_clients{{kind=\"identity\"}} {}\n\
         trellis_ca_rate_limited_clients{{kind=\"source_address\"}} {}",
        limits.in_flight(),
        limits.config().max_concurrent_issuance,
        c.admitted.load(Relaxed),
        c.refused_busy.load(Relaxed),
        c.refused_renewal_rate.load(Relaxed),
        c.refused_bootstrap_rate.load(Relaxed),
        limits.tracked_clients().0,
        limits.tracked_clients().1,
    );
}
