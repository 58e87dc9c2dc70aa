//! The Trellis gRPC APIs, generated from `proto/trellis/**/v1/*.proto`.
//!
//! - [`ca::v1`]: the workload API every sidecar uses (certify, trust bundle, watch).
//! - [`admin::v1`]: the admin API, callable only with an admin client certificate.
//! - [`spiffe::workload`]: the standard SPIFFE Workload API (`proto/spiffe/workload/`),
//!   which the sidecar serves to SPIFFE-aware workloads over a Unix domain socket.
//!
//! Beside them, what both binaries' clients and servers share: [`channel`] (a tonic channel
//! over TLS), [`listen`] (connection budgets, accept back-off, bounded HTTP/1),
//! [`metrics`] (`/metrics` in the OpenMetrics format) and [`logging`] (the servers' log set-up).

/// `trellis.ca.*`: the workload-facing certificate authority API.
pub mod ca {
    /// Version 1 of the workload API.
    pub mod v1 {
        #![allow(missing_docs, missing_debug_implementations, clippy::all)]
        tonic::include_proto!("trellis.ca.v1");
    }
}

/// `trellis.admin.*`: the operator-facing admin API.
pub mod admin {
    /// Version 1 of the admin API.
    pub mod v1 {
        #![allow(missing_docs, missing_debug_implementations, clippy::all)]
        tonic::include_proto!("trellis.admin.v1");
    }
}

/// Standard SPIFFE APIs, wire-compatible with every SPIFFE client.
pub mod spiffe {
    /// The SPIFFE Workload API (service `SpiffeWorkloadAPI`, no protobuf package).
    pub mod workload {
        #![allow(missing_docs, missing_debug_implementations, clippy::all)]
        tonic::include_proto!("_");

        use std::fmt;

        // Hand-written Debug impls (build.rs skips the derived ones): a private key or a
        // bearer token must never reach a log.
        const REDACTED: &str = "[redacted]";

        impl fmt::Debug for X509svid {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("X509svid")
                    .field("spiffe_id", &self.spiffe_id)
                    .field("x509_svid_len", &self.x509_svid.len())
                    .field("x509_svid_key", &REDACTED)
                    .field("bundle_len", &self.bundle.len())
                    .field("hint", &self.hint)
                    .finish()
            }
        }

        impl fmt::Debug for Jwtsvid {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("Jwtsvid")
                    .field("spiffe_id", &self.spiffe_id)
                    .field("svid", &REDACTED)
                    .field("hint", &self.hint)
                    .finish()
            }
        }

        impl fmt::Debug for ValidateJwtsvidRequest {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("ValidateJwtsvidRequest")
                    .field("audience", &self.audience)
                    .field("svid", &REDACTED)
                    .finish()
            }
        }

        #[cfg(test)]
        mod tests {
            use super::*;

            #[test]
            fn debug_never_shows_keys_or_tokens() {
                let svid = X509svid {
                    spiffe_id: "spiffe://td/w".into(),
                    x509_svid: vec![1, 2, 3],
                    x509_svid_key: b"SECRET-KEY".to_vec(),
                    bundle: vec![4],
                    hint: String::new(),
                };
                let response = X509svidResponse {
                    svids: vec![svid],
                    ..Default::default()
                };
                let jwt = JwtsvidResponse {
                    svids: vec![Jwtsvid {
                        spiffe_id: "spiffe://td/w".into(),
                        svid: "SECRET-TOKEN".into(),
                        hint: String::new(),
                    }],
                };
                let validate = ValidateJwtsvidRequest {
                    audience: "aud".into(),
                    svid: "SECRET-TOKEN".into(),
                };
                let shown = format!("{response:?} {jwt:?} {validate:?}");
                assert!(shown.contains("spiffe://td/w"), "{shown}");
                // Bytes show as numbers in a derived Debug: b'S' = 83, b'E' = 69.
                assert!(
                    !shown.contains("SECRET") && !shown.contains("83, 69"),
                    "{shown}"
                );
            }
        }
    }
}

pub mod channel;
pub mod listen;
pub mod logging;
pub mod metrics;
mod redact;
pub mod signals;
