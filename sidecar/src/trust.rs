//! The initial trust bundle: from a PEM file, or fetched from the CA and pinned by the
//! SHA-256 of a root's SubjectPublicKeyInfo (like `kubeadm join --discovery-token-ca-cert-hash`),
//! so a join can start from just the CA address, a token and a fingerprint.

use std::sync::{Arc, Mutex};

use rustls::ClientConfig;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use trellis_identity::bundle::{Usage, spki_sha256};
use trellis_identity::clock::Clock;
use trellis_identity::{SpiffeId, TrustBundle, TrustDomain, hex};
use trellis_proto::ca::v1::GetTrustBundleRequest;
use trellis_proto::ca::v1::workload_ca_client::WorkloadCaClient;

use crate::config::{CaReplicas, TrustSource};

/// Why the initial bundle could not be established.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trust bundle file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("cannot fetch the trust bundle from the CA at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "the CA at {addr} is not the one pinned: {reason} (check --trust-fingerprint against \
         `trellis ca status`)"
    )]
    PinMismatch { addr: String, reason: String },
}

impl TrustError {
    /// Worth retrying later (the CA may come up), as opposed to a configuration error.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// Resolves the initial bundle.
pub async fn initial_bundle(
    source: &TrustSource,
    trust_domain: &TrustDomain,
    replicas: &CaReplicas,
    ca_id: &SpiffeId,
    clock: &Arc<dyn Clock>,
) -> Result<TrustBundle, TrustError> {
    match source {
        TrustSource::BundleFile(path) => {
            let file_err = |reason: String| TrustError::File {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
            TrustBundle::from_pem(trust_domain.clone(), 0, &pem)
                .map_err(|e| file_err(e.to_string()))
        }
        TrustSource::Fingerprint(fingerprint) => {
            // The first replica that answers; a pin mismatch is final, not a reason to try
            // another (they serve the same bundle).
            let mut last = None;
            for (index, addr) in replicas.in_order() {
                match fetch_pinned(fingerprint, trust_domain, addr, ca_id, clock).await {
                    Err(e @ TrustError::Unreachable { .. }) => last = Some(e),
                    other => {
                        replicas.answered(index);
                        return other;
                    }
                }
            }
            Err(last.expect("a CA has at least one address"))
        }
    }
}

/// Fetches the bundle over a TLS connection whose server chain is recorded rather than
/// checked, then accepts the bundle only if (a) it contains the pinned root and (b) the
/// chain the server presented, and proved possession of in the handshake, verifies against
/// that root with the CA's SPIFFE ID. Nothing secret is sent on this connection.
async fn fetch_pinned(
    fingerprint: &[u8; 32],
    trust_domain: &TrustDomain,
    addr: &str,
    ca_id: &SpiffeId,
    clock: &Arc<dyn Clock>,
) -> Result<TrustBundle, TrustError> {
    let recorder = Arc::new(RecordingVerifier::default());
    let mut config = ClientConfig::builder_with_provider(trellis_identity::tls::provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| TrustError::Unreachable {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![trellis_proto::channel::ALPN_H2.to_vec()];
    let unreachable = |reason: String| TrustError::Unreachable {
        addr: addr.to_owned(),
        reason,
    };
    let channel = trellis_proto::channel::connect_to(addr, Arc::new(config))
        .await
        .map_err(|e| unreachable(format!("{e}")))?;
    let response = WorkloadCaClient::new(channel)
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .map_err(|e| unreachable(e.message().to_owned()))?
        .into_inner();
    let mismatch = |reason: String| TrustError::PinMismatch {
        addr: addr.to_owned(),
        reason,
    };
    let roots: Vec<CertificateDer<'static>> = response
        .root_certificates_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let pinned: Vec<CertificateDer<'static>> = roots
        .iter()
        .filter(|r| spki_sha256(r).is_ok_and(|fp| &fp == fingerprint))
        .cloned()
        .collect();
    if pinned.is_empty() {
        return Err(mismatch(format!(
            "no root in its bundle has SPKI SHA-256 {}",
            hex::encode(fingerprint)
        )));
    }
    let presented = recorder
        .chain
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| mismatch("no server certificate was recorded".into()))?;
    let pinned_only =
        TrustBundle::new(trust_domain.clone(), 0, pinned).map_err(|e| mismatch(e.to_string()))?;
    let verified = pinned_only
        .verify(&presented, clock.now(), Usage::Server)
        .map_err(|e| {
            mismatch(format!(
                "its certificate does not chain to the pinned root: {e}"
            ))
        })?;
    if &verified.spiffe_id != ca_id {
        return Err(mismatch(format!(
            "it presented {}, expected {ca_id}",
            verified.spiffe_id
        )));
    }
    TrustBundle::new(trust_domain.clone(), response.version, roots)
        .map_err(|e| mismatch(e.to_string()))
}

/// Records the server's chain and checks only the handshake signature (key possession); the
/// chain itself is judged after the fact by [`fetch_pinned`].
#[derive(Debug)]
struct RecordingVerifier {
    chain: Mutex<Option<Vec<CertificateDer<'static>>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Default for RecordingVerifier {
    fn default() -> Self {
        Self {
            chain: Mutex::new(None),
            algorithms: rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = Some(chain);
        Ok(ServerCertVerified::assertion())
    }

    trellis_identity::handshake_signatures!();
}
