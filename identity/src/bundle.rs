//! Trust bundles: the roots a workload trusts, and verification of X.509-SVID chains
//! against them (RFC 5280 path validation by webpki, then the SPIFFE checks of
//! X509-SVID.md §5: exactly one SPIFFE ID, in the bundle's trust domain).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::hex;
use crate::pem;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{CertInfo, SvidError};

mod federated;
mod known_issuer;
pub use federated::{Federated, verify_federated};
pub use known_issuer::KnownIssuer;
pub(crate) use known_issuer::{ECDSA_SHA256, signed_by};

/// Why a set of roots cannot form a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("trust bundle has no roots")]
    Empty,
    #[error("root #{index} is not a usable trust anchor: {reason}")]
    BadRoot { index: usize, reason: String },
    #[error(transparent)]
    Pem(#[from] pem::PemError),
}

/// Which side of a connection a certificate must be valid for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The peer is a TLS server.
    Server,
    /// The peer is a TLS client.
    Client,
}

/// A chain that verified against the bundle: proof, as a type, that the checks passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    /// The SPIFFE ID of the leaf.
    pub spiffe_id: SpiffeId,
    /// Lowercase hex serial of the leaf.
    pub serial: String,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// The id (see [`root_id`]) of the root the chain ends at.
    pub root_id: String,
}

/// The roots of one trust domain, with a version that increases on every change.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    version: u64,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    root_ids: Vec<String>,
    jwt_keys: Vec<JwtKey>,
    federated: Federated,
}

/// A public key that signs the trust domain's JWT-SVIDs (ES256), as the bundle carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKey {
    /// The `kid` of the tokens it signs.
    pub key_id: String,
    /// The uncompressed P-256 point: 0x04, X (32 bytes), Y (32 bytes).
    pub public_key: Vec<u8>,
}

impl JwtKey {
    /// Length of an uncompressed P-256 point.
    pub const POINT_LEN: usize = 65;

    /// The X and Y coordinates, if the key is a well-formed uncompressed P-256 point.
    pub fn coordinates(&self) -> Option<(&[u8], &[u8])> {
        match self.public_key.as_slice() {
            [0x04, rest @ ..] if self.public_key.len() == Self::POINT_LEN => {
                Some(rest.split_at(32))
            }
            _ => None,
        }
    }
}

impl TrustBundle {
    /// Builds a bundle; every root must parse as a trust anchor.
    pub fn new(
        trust_domain: TrustDomain,
        version: u64,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut anchors = Vec::with_capacity(roots.len());
        let mut root_ids = Vec::with_capacity(roots.len());
        for (index, root) in roots.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(root)
                .map_err(|e| BundleError::BadRoot {
                    index,
                    reason: format!("{e:?}"),
                })?
                .to_owned();
            anchors.push(anchor);
            root_ids.push(root_id(root).map_err(|e| BundleError::BadRoot {
                index,
                reason: e.to_string(),
            })?);
        }
        Ok(Self {
            trust_domain,
            version,
            roots,
            anchors,
            root_ids,
            jwt_keys: Vec::new(),
            federated: Federated::default(),
        })
    }

    /// The same bundle with these JWT-SVID signing keys.
    pub fn with_jwt_keys(mut self, keys: Vec<JwtKey>) -> Self {
        self.jwt_keys = keys;
        self
    }

    /// The JWT-SVID signing keys.
    pub fn jwt_keys(&self) -> &[JwtKey] {
        &self.jwt_keys
    }

    /// The same bundle carrying the bundles of the trust domains it federates with. They
    /// travel with it (a change of them is a new version) but [`TrustBundle::verify`] never
    /// uses them: only a verifier built with `federating` does.
    pub fn with_federated(mut self, federated: Federated) -> Self {
        self.federated = federated;
        self
    }

    /// The federated trust domains' bundles.
    pub fn federated(&self) -> &Federated {
        &self.federated
    }

    /// Reads a bundle from PEM `CERTIFICATE` blocks.
    pub fn from_pem(
        trust_domain: TrustDomain,
        version: u64,
        pem: &[u8],
    ) -> Result<Self, BundleError> {
        Self::new(trust_domain, version, pem::certs_from_pem(pem)?)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The version number.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The root certificates, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The ids of the roots, in order.
    pub fn root_ids(&self) -> &[String] {
        &self.root_ids
    }

    /// True if a root with this SPKI SHA-256 fingerprint is in the bundle.
    pub fn contains_fingerprint(&self, spki_sha256_hex: &str) -> bool {
        let wanted = spki_sha256_hex.to_ascii_lowercase().replace(':', "");
        self.roots
            .iter()
            .any(|r| spki_sha256(r).is_ok_and(|fp| hex::encode(&fp) == wanted))
    }

    /// The roots as PEM.
    pub fn to_pem(&self) -> String {
        pem::certs_to_pem(&self.roots)
    }

    /// Verifies `chain` (leaf first, then intermediates) at time `now` for `usage`, and that
    /// the leaf is an X.509-SVID of this bundle's trust domain.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
        usage: Usage,
    ) -> Result<VerifiedSvid, SvidError> {
        let (leaf, intermediates) = chain.split_first().ok_or(SvidError::Empty)?;
        self.verify_path(
            leaf,
            intermediates,
            &self.anchors,
            now,
            usage,
            |anchor_spki| {
                self.anchors
                    .iter()
                    .position(|a| a.subject_public_key_info.as_ref() == anchor_spki)
                    .map(|i| self.root_ids[i].clone())
                    .unwrap_or_default()
            },
        )
    }

    /// RFC 5280 path validation of `leaf` to one of `anchors`, then the SPIFFE checks.
    fn verify_path(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        anchors: &[TrustAnchor<'_>],
        now: SystemTime,
        usage: Usage,
        root_of_anchor: impl Fn(&[u8]) -> String,
    ) -> Result<VerifiedSvid, SvidError> {
        let info = CertInfo::parse(leaf)?;
        let spiffe_id = info.spiffe_id()?;
        if spiffe_id.trust_domain_name() != self.trust_domain.as_str() {
            return Err(SvidError::WrongTrustDomain {
                found: spiffe_id.trust_domain_name().to_owned(),
                expected: self.trust_domain.to_string(),
            });
        }
        let end_entity =
            EndEntityCert::try_from(leaf).map_err(|e| SvidError::Malformed(format!("{e:?}")))?;
        let eku = match usage {
            Usage::Server => KeyUsage::server_auth(),
            Usage::Client => KeyUsage::client_auth(),
        };
        let path = end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                anchors,
                intermediates,
                unix_time(now),
                eku,
                None,
                None,
            )
            .map_err(|e| map_webpki_error(e, &info))?;
        Ok(VerifiedSvid {
            spiffe_id,
            serial: info.serial,
            not_after: info.not_after,
            root_id: root_of_anchor(path.anchor().subject_public_key_info.as_ref()),
        })
    }
}

fn unix_time(now: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("version", &self.version)
            .field("root_ids", &self.root_ids)
            .field(
                "jwt_key_ids",
                &self.jwt_keys.iter().map(|k| &k.key_id).collect::<Vec<_>>(),
            )
            .field("federated", &self.federated.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn map_webpki_error(e: webpki::Error, leaf: &CertInfo) -> SvidError {
    match e {
        webpki::Error::CertExpired { .. } => SvidError::Expired {
            not_after: format_time(leaf.not_after),
        },
        webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid {
            not_before: format_time(leaf.not_before),
        },
        // A signature mismatch means an issuer with the right name but another key: a
        // different CA, for every purpose the caller has.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            SvidError::UnknownIssuer
        }
        other => SvidError::Invalid(format!("{other:?}")),
    }
}

/// SHA-256 of a certificate's DER SubjectPublicKeyInfo: what `--trust-fingerprint` pins.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], SvidError> {
    let info = CertInfo::parse(cert_der)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &info.spki_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Ok(out)
}

/// A root's short id: the first 16 hex digits of its SPKI SHA-256.
pub fn root_id(cert_der: &[u8]) -> Result<String, SvidError> {
    Ok(hex::encode(&spki_sha256(cert_der)?[..8]))
}

/// Formats a time as RFC 3339 UTC (seconds precision), for messages and JSON.
pub fn format_time(t: SystemTime) -> String {
    let seconds = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    seconds
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| format!("(time out of range: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_434_245);
        assert_eq!(format_time(t), "2026-11-23T11:44:05Z");
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        // Seconds precision: a fraction is cut, never rounded up.
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::new(1_795_434_245, 999_999_999)),
            "2026-11-23T11:44:05Z"
        );
    }
}
