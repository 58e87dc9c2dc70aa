//! Bootstrap credentials: what the sidecar shows the CA when it has no valid certificate.
//! A join token (from a file or `TRELLIS_JOIN_TOKEN`, never a flag) today; a Kubernetes
//! service-account token plugs in behind the same trait.

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use trellis_proto::ca::v1::certify_request::Credential;

/// Something the sidecar can present to the CA to get its first certificate.
pub trait BootstrapCredential: Debug + Send + Sync + 'static {
    /// The credential to send now, or `Ok(None)` if there is none any more (a single-use
    /// token already spent). Read fresh on every call: files are rotated underneath us.
    fn credential(&self) -> Result<Option<Credential>, String>;
    /// Records that the CA accepted the credential (single-use ones are then spent).
    fn accepted(&self);
}

/// No bootstrap credential: the sidecar can only renew (or wait for a pinned identity).
#[derive(Debug, Default)]
pub struct NoCredential;

impl BootstrapCredential for NoCredential {
    fn credential(&self) -> Result<Option<Credential>, String> {
        Ok(None)
    }
    fn accepted(&self) {}
}

/// Where a join token comes from.
#[derive(Clone)]
pub enum TokenSource {
    File(PathBuf),
    /// The value of `TRELLIS_JOIN_TOKEN`, read once at start.
    Value(String),
}

impl Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::Value(_) => f.write_str("Value([redacted])"),
        }
    }
}

/// A single-use join token.
#[derive(Debug)]
pub struct JoinToken {
    source: TokenSource,
    spent: AtomicBool,
}

impl JoinToken {
    pub fn new(source: TokenSource) -> Self {
        Self {
            source,
            spent: AtomicBool::new(false),
        }
    }
}

impl BootstrapCredential for JoinToken {
    fn credential(&self) -> Result<Option<Credential>, String> {
        if self.spent.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let token = match &self.source {
            TokenSource::Value(v) => v.trim().to_owned(),
            TokenSource::File(path) => zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read join token file {}: {e}", path.display()))?,
            )
            .trim()
            .to_owned(),
        };
        if token.is_empty() {
            return Err("the join token is empty".into());
        }
        Ok(Some(Credential::JoinToken(token)))
    }

    fn accepted(&self) {
        self.spent.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_spent_once_accepted_and_never_shown_in_debug() {
        let token = JoinToken::new(TokenSource::Value("trellis-jt-secret".into()));
        assert!(
            matches!(token.credential(), Ok(Some(Credential::JoinToken(t))) if t == "trellis-jt-secret")
        );
        assert!(!format!("{token:?}").contains("secret"));
        token.accepted();
        assert!(matches!(token.credential(), Ok(None)));
    }

    #[test]
    fn a_token_file_is_read_fresh() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        let token = JoinToken::new(TokenSource::File(path.clone()));
        assert!(
            token
                .credential()
                .expect_err("missing file")
                .contains("cannot read")
        );
        std::fs::write(&path, "trellis-jt-1\n").expect("write");
        assert!(
            matches!(token.credential(), Ok(Some(Credential::JoinToken(t))) if t == "trellis-jt-1")
        );
    }
}
