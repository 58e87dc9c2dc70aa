//! Debug impls for messages that carry secrets (join tokens, service-account tokens):
//! everything but the secret.

use std::fmt;

use crate::admin::v1::CreateJoinTokenResponse;
use crate::ca::v1::certify_request::Credential;
use crate::ca::v1::{CertifyRequest, MintJwtSvidResponse};

const REDACTED: &str = "[redacted]";

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::JoinToken(_) => f.debug_tuple("JoinToken").field(&REDACTED).finish(),
            Credential::ServiceAccountToken(_) => f
                .debug_tuple("ServiceAccountToken")
                .field(&REDACTED)
                .finish(),
        }
    }
}

impl fmt::Debug for CertifyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifyRequest")
            .field("csr_der_len", &self.csr_der.len())
            .field("credential", &self.credential)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("bundle_version", &self.bundle_version)
            .finish()
    }
}

impl fmt::Debug for CreateJoinTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateJoinTokenResponse")
            .field("token", &REDACTED)
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl fmt::Debug for MintJwtSvidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintJwtSvidResponse")
            .field("token", &REDACTED)
            .field("spiffe_id", &self.spiffe_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_token() {
        let secret = "trellis-jt-0123456789abcdef";
        let request = CertifyRequest {
            credential: Some(Credential::JoinToken(secret.into())),
            ..Default::default()
        };
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let sa_request = CertifyRequest {
            credential: Some(Credential::ServiceAccountToken(jwt.into())),
            ..Default::default()
        };
        let text = format!("{sa_request:?}");
        assert!(!text.contains(jwt) && text.contains(REDACTED), "{text}");
        let response = CreateJoinTokenResponse {
            token: secret.into(),
            ..Default::default()
        };
        let minted = MintJwtSvidResponse {
            token: jwt.into(),
            ..Default::default()
        };
        let text = format!("{minted:?}");
        assert!(!text.contains(jwt) && text.contains(REDACTED), "{text}");
        for text in [format!("{request:?}"), format!("{response:?}")] {
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains(REDACTED), "{text}");
        }
    }
}
