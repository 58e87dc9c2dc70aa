//! The CA's error type, and the one place where errors become gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::limits::{PUSHBACK_TRAILER, Refusal};

/// Why a request was refused or failed. The message names the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The request itself is malformed or unacceptable (a bad CSR, a bad SPIFFE ID).
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller has no valid credential (missing, unknown, expired or used).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's credential does not grant what it asked for.
    #[error("{0}")]
    PermissionDenied(String),
    /// What the caller named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation would break something now (a root rotation safety check).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something the CA needs (its store, a key file, the cluster's JWKS) cannot be used
    /// right now. The message says what was not done and why; see [`CaError::store`].
    #[error("{0}")]
    Unavailable(String),
    /// Refused before any work because of load (`crate::limits`), with when to retry.
    #[error("{}", .0.message())]
    ResourceExhausted(Refusal),
    /// A bug or an impossible state; details are logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CaError {
    /// The store could not record or read something: `not_done` says what did not happen
    /// (e.g. "nothing was issued", "the join token was not created"), `why` names the
    /// cause and its fix.
    pub fn store(not_done: &str, why: impl std::fmt::Display) -> Self {
        CaError::Unavailable(format!("certificate store unavailable, {not_done}: {why}"))
    }
}

impl From<CaError> for Status {
    fn from(e: CaError) -> Self {
        let code = match &e {
            // The retry hint goes three ways: the message, google.rpc.RetryInfo, and the
            // trailer gRPC retry policies read.
            CaError::ResourceExhausted(refusal) => {
                let mut status = Status::with_error_details(
                    Code::ResourceExhausted,
                    refusal.message(),
                    ErrorDetails::with_retry_info(Some(refusal.retry_after)),
                );
                if let Ok(value) = refusal.retry_after.as_millis().to_string().parse() {
                    status.metadata_mut().insert(PUSHBACK_TRAILER, value);
                }
                return status;
            }
            CaError::InvalidArgument(_) => Code::InvalidArgument,
            CaError::Unauthenticated(_) => Code::Unauthenticated,
            CaError::PermissionDenied(_) => Code::PermissionDenied,
            CaError::NotFound(_) => Code::NotFound,
            CaError::FailedPrecondition(_) => Code::FailedPrecondition,
            CaError::Unavailable(_) => Code::Unavailable,
            CaError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        CaError::ResourceExhausted(r).into()
    }
}

impl From<trellis_identity::profile::ProfileError> for CaError {
    fn from(e: trellis_identity::profile::ProfileError) -> Self {
        use trellis_identity::profile::ProfileError;
        match e {
            ProfileError::InvalidName(m) => CaError::InvalidArgument(m),
            ProfileError::SignerExpired => CaError::Unavailable(format!("nothing was issued: {e}")),
            ProfileError::Internal(m) => CaError::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_status_carries_the_hint_three_ways() {
        let status = Status::from(Refusal {
            what: "the CA is busy".into(),
            retry_after: Duration::from_millis(2500),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            status
                .metadata()
                .get(PUSHBACK_TRAILER)
                .and_then(|v| v.to_str().ok()),
            Some("2500")
        );
        assert!(
            status.message().contains("retry in 2.5s"),
            "{}",
            status.message()
        );
    }
}
