//! The Kubernetes bootstrap credential: the pod's projected service-account token, minted by
//! the kubelet for the CA's audience and mounted as a file (by `trellis inject`, at
//! `/var/run/secrets/trellis/token`). The kubelet rewrites the file before the token
//! expires, so it is read afresh on every use, and it is never "spent": the CA accepts it
//! for as long as it is valid.

use std::fmt;
use std::path::PathBuf;

use trellis_proto::ca::v1::certify_request::Credential;

use crate::join_token::BootstrapCredential;

/// Tokens are about 1 KiB; a file much larger than that is not a token.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// A projected service-account token file.
pub struct ServiceAccountToken {
    path: PathBuf,
}

impl ServiceAccountToken {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl fmt::Debug for ServiceAccountToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the path: the token itself never reaches a log.
        f.debug_struct("ServiceAccountToken")
            .field("path", &self.path)
            .finish()
    }
}

impl BootstrapCredential for ServiceAccountToken {
    fn credential(&self) -> Result<Option<Credential>, String> {
        let read = |e: std::io::Error| {
            format!(
                "cannot read the service-account token {}: {e} (is the projected token volume \
                 mounted?)",
                self.path.display()
            )
        };
        let size = std::fs::metadata(&self.path).map_err(read)?.len();
        if size > MAX_TOKEN_FILE {
            return Err(format!(
                "{} is {size} bytes, too large for a service-account token",
                self.path.display()
            ));
        }
        let token = std::fs::read_to_string(&self.path).map_err(read)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!(
                "the service-account token file {} is empty",
                self.path.display()
            ));
        }
        Ok(Some(Credential::ServiceAccountToken(token.to_owned())))
    }

    /// Nothing to record: the token stays valid until it expires, and the kubelet renews it.
    fn accepted(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_read_fresh_each_time_and_never_spent() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        let credential = ServiceAccountToken::new(path.clone());
        let e = credential.credential().expect_err("no file yet");
        assert!(e.contains("projected token volume"), "{e}");

        std::fs::write(&path, "eyJ.first.sig\n").expect("write");
        assert!(matches!(
            credential.credential(),
            Ok(Some(Credential::ServiceAccountToken(t))) if t == "eyJ.first.sig"
        ));
        credential.accepted();
        // The kubelet rotated it.
        std::fs::write(&path, "eyJ.second.sig").expect("write");
        assert!(matches!(
            credential.credential(),
            Ok(Some(Credential::ServiceAccountToken(t))) if t == "eyJ.second.sig"
        ));
        assert!(!format!("{credential:?}").contains("eyJ"));
    }

    #[test]
    fn empty_and_oversized_files_are_errors() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "  \n").expect("write");
        let credential = ServiceAccountToken::new(path.clone());
        assert!(
            credential
                .credential()
                .expect_err("empty")
                .contains("empty")
        );
        std::fs::write(&path, vec![b'a'; 100_000]).expect("write");
        assert!(
            credential
                .credential()
                .expect_err("big")
                .contains("too large")
        );
    }
}
