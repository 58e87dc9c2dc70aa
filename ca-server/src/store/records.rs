//! What the store keeps, one serde struct per kind of record. Times are Unix seconds.

use serde::{Deserialize, Serialize};

/// An issued certificate's metadata (its DER is kept beside it, under the same serial).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertRecord {
    /// Lowercase hex serial.
    pub serial: String,
    pub spiffe_id: String,
    pub dns_names: Vec<String>,
    pub not_before: u64,
    pub not_after: u64,
    pub issued_at: u64,
    /// Nanoseconds since the epoch at issuance: orders certificates issued within a second.
    #[serde(default)]
    pub issued_at_ns: u128,
    /// The root the certificate chains to.
    pub root_id: String,
    /// The intermediate that signed it.
    pub intermediate_id: String,
    /// "join_token", "renewal", "admin" or "ca".
    pub issued_via: String,
}

/// Where a root is in its life (see `roots.rs`, trust-root rotation).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RootState {
    /// In the bundle, not signing yet.
    Pending,
    /// In the bundle and signing.
    Active,
    /// In the bundle, no longer signing.
    Retiring,
    /// Out of the bundle.
    Retired,
}

impl RootState {
    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }

    /// True if roots in this state are in the trust bundle.
    pub fn in_bundle(self) -> bool {
        !matches!(self, Self::Retired)
    }
}

/// A trust root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootRecord {
    pub id: String,
    pub cert_der: Vec<u8>,
    pub state: RootState,
    pub added_at: u64,
    /// File name of its private key under the keys directory, if the CA holds it.
    pub key_file: Option<String>,
    /// The trust-bundle version that first included it.
    #[serde(default)]
    pub added_in_bundle_version: u64,
}

/// A signing intermediate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IntermediateRecord {
    pub id: String,
    pub root_id: String,
    pub cert_der: Vec<u8>,
    /// File name of its private key under the keys directory.
    pub key_file: String,
}

/// A join token, known only by the SHA-256 of its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub spiffe_id: String,
    pub created_at: u64,
    pub expires_at: u64,
    /// Who created it.
    pub created_by: String,
    /// When it was redeemed, and for which certificate.
    pub used_at: Option<u64>,
    pub used_for_serial: Option<String>,
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub time: u64,
    pub kind: String,
    pub spiffe_id: String,
    pub serial: String,
    pub actor: String,
    pub detail: String,
}

/// A revoked certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationRecord {
    pub serial: String,
    pub spiffe_id: String,
    pub revoked_at: u64,
    pub reason: String,
    /// The certificate's NotAfter: once past, the entry no longer needs publishing.
    pub not_after: u64,
    /// The intermediate that signed it (whose CRL lists it).
    pub intermediate_id: String,
    /// The RFC 5280 `CRLReason` code its CRL entry carries, if a reason was given (absent
    /// in records written before reasons were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<u8>,
}
