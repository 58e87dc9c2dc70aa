//! Verdicts (shared with `trellis-sidecar check`, in `trellis_identity::check`) and how
//! an expiry reads in one.

use std::time::SystemTime;

pub use trellis_identity::check::*;

use crate::timefmt;

/// "expires in 9d23h (2026-01-31T12:00:00Z)" or "expired 3m ago (…)".
pub fn expiry_detail(not_after: SystemTime, now: SystemTime) -> String {
    let when = timefmt::expiry(not_after, now);
    let when = if when.starts_with("expired") {
        when
    } else {
        format!("expires {when}")
    };
    format!("{when} ({})", timefmt::rfc3339(not_after))
}
