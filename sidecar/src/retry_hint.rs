//! The CA's retry hint on RESOURCE_EXHAUSTED, and how long the agent waits for it.
//!
//! The CA sends the delay as a `google.rpc.RetryInfo` status detail and as the
//! `grpc-retry-pushback-ms` trailer (gRFC A6); the detail wins, the trailer is the fallback.
//! The agent waits the hint plus up to half of it again at random, so that a fleet refused
//! together does not come back together.

use std::time::Duration;

use tonic::Status;
use tonic_types::StatusExt;

/// The longest hint followed: a CA asking for more is treated as asking for this.
pub const MAX_HINT: Duration = Duration::from_secs(300);

const PUSHBACK_TRAILER: &str = "grpc-retry-pushback-ms";

/// The delay the CA asked for, if it sent one (capped at [`MAX_HINT`]).
pub fn retry_hint(status: &Status) -> Option<Duration> {
    let from_detail = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let from_trailer = || {
        status
            .metadata()
            .get(PUSHBACK_TRAILER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    from_detail.or_else(from_trailer).map(|d| d.min(MAX_HINT))
}

/// The hint plus a random 0–50 % of it.
pub fn with_jitter(hint: Duration) -> Duration {
    let mut bytes = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let fraction = f64::from(u16::from_le_bytes(bytes)) / f64::from(u16::MAX);
    hint + hint.mul_f64(0.5 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;
    use tonic_types::ErrorDetails;

    #[test]
    fn reads_the_detail_then_the_trailer() {
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "busy",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1200))),
        );
        assert_eq!(retry_hint(&status), Some(Duration::from_millis(1200)));
        let mut status = Status::resource_exhausted("busy");
        assert_eq!(retry_hint(&status), None);
        status
            .metadata_mut()
            .insert(PUSHBACK_TRAILER, "750".parse().expect("value"));
        assert_eq!(retry_hint(&status), Some(Duration::from_millis(750)));
        let huge = Status::with_error_details(
            Code::ResourceExhausted,
            "busy",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(86_400))),
        );
        assert_eq!(retry_hint(&huge), Some(MAX_HINT));
    }

    #[test]
    fn jitter_adds_up_to_half() {
        let hint = Duration::from_secs(2);
        let waits: Vec<Duration> = (0..200).map(|_| with_jitter(hint)).collect();
        assert!(waits.iter().all(|w| *w >= hint && *w <= hint * 3 / 2));
        // Spread, not one value for everyone.
        assert!(waits.iter().any(|w| *w != waits[0]));
    }
}
