//! The CA's error type, and the one place where errors become gRPC status codes.

use tonic::{Code, Status};

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

impl From<sled::Error> for CaError {
    fn from(e: sled::Error) -> Self {
        CaError::store("nothing was done", e)
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
