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

/// A JWT-SVID signing key. It moves through the same states as a root: pending (in the
/// bundle, not signing), active (signing), retiring (in the bundle, no longer signing),
/// retired (out of the bundle).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JwtKeyRecord {
    /// The `kid` header of the tokens it signs.
    pub kid: String,
    pub state: RootState,
    pub created_at: u64,
    /// The uncompressed P-256 public point (0x04, X, Y).
    pub public_key: Vec<u8>,
    /// The PKCS#8 private key's file name in `<data>/keys/`.
    pub key_file: String,
    /// The bundle version that first carried the key.
    pub added_in_bundle_version: u64,
    /// When it stopped signing (another key was activated); no token it signed was issued
    /// later than this.
    #[serde(default)]
    pub deactivated_at: Option<u64>,
}

/// One federated trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationRecord {
    pub trust_domain: String,
    pub endpoint_url: String,
    pub endpoint_spiffe_id: String,
    /// The bundle in force, in the SPIFFE bundle format.
    pub bundle_json: String,
    /// Unix seconds: when the bundle in force was fetched or given, and the last attempt.
    pub refreshed_at: u64,
    pub last_attempt_at: u64,
    /// Why the last attempt failed; `None` after a success.
    pub last_error: Option<String>,
    pub added_at: u64,
    pub added_by: String,
}
