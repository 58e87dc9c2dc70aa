//! Reading X.509 certificates: the fields Trellis cares about, and the SPIFFE ID an
//! X.509-SVID carries (<https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md>).

use std::time::SystemTime;

use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, SubjectAltName};

use crate::hex;
use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate is not a usable X.509-SVID, or not valid for a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("certificate has no URI SAN, so it carries no SPIFFE ID")]
    NoSpiffeId,
    #[error("certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    SeveralUris(usize),
    #[error("certificate's URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    #[error("no certificate was presented")]
    Empty,
    #[error("certificate expired at {not_after}; renew it or bootstrap again with a join token")]
    Expired { not_after: String },
    #[error("certificate is not valid until {not_before}; check the clocks")]
    NotYetValid { not_before: String },
    #[error("certificate does not chain to a root in the trust bundle (issued by another CA?)")]
    UnknownIssuer,
    #[error("certificate is for trust domain {found:?}, expected {expected:?}")]
    WrongTrustDomain { found: String, expected: String },
    #[error("certificate chain is invalid: {0}")]
    Invalid(String),
}

/// The fields of a certificate that Trellis shows and decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex serial.
    pub serial: String,
    /// The subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// The issuer distinguished name.
    pub issuer: String,
    /// Every URI SAN (an X.509-SVID has exactly one, its SPIFFE ID).
    pub uris: Vec<String>,
    /// Every DNS SAN.
    pub dns_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Whether basicConstraints says CA=true.
    pub is_ca: bool,
    /// The public key algorithm, e.g. "ECDSA P-256".
    pub key_algorithm: String,
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, SvidError> {
        let cert = Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Some((_, san)) = tbs
            .get::<SubjectAltName>()
            .map_err(|e| SvidError::Malformed(e.to_string()))?
        {
            for name in san.0 {
                match name {
                    GeneralName::UniformResourceIdentifier(uri) => uris.push(uri.to_string()),
                    GeneralName::DnsName(dns) => dns_names.push(dns.to_string()),
                    _ => {}
                }
            }
        }
        let is_ca = tbs
            .get::<BasicConstraints>()
            .map_err(|e| SvidError::Malformed(e.to_string()))?
            .is_some_and(|(_, bc)| bc.ca);
        let spki_der = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|e| SvidError::Malformed(e.to_string()))?;
        Ok(Self {
            serial: hex::encode(tbs.serial_number.as_bytes()),
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            uris,
            dns_names,
            not_before: tbs.validity.not_before.to_system_time(),
            not_after: tbs.validity.not_after.to_system_time(),
            is_ca,
            key_algorithm: key_algorithm_name(&tbs.subject_public_key_info),
            spki_der,
        })
    }

    /// The SPIFFE ID: the single URI SAN, validated.
    pub fn spiffe_id(&self) -> Result<SpiffeId, SvidError> {
        match self.uris.as_slice() {
            [] => Err(SvidError::NoSpiffeId),
            [uri] => Ok(SpiffeId::new(uri)?),
            many => Err(SvidError::SeveralUris(many.len())),
        }
    }
}

/// The SPIFFE ID carried by a DER X.509-SVID.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, SvidError> {
    CertInfo::parse(der)?.spiffe_id()
}

/// Names a public key algorithm for people: "ECDSA P-256", "RSA 2048", ...
pub fn key_algorithm_name(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> String {
    const EC: &str = "1.2.840.10045.2.1";
    const RSA: &str = "1.2.840.113549.1.1.1";
    const ED25519: &str = "1.3.101.112";
    let curve = |oid: &str| match oid {
        "1.2.840.10045.3.1.7" => "P-256".to_owned(),
        "1.3.132.0.34" => "P-384".to_owned(),
        "1.3.132.0.35" => "P-521".to_owned(),
        other => format!("curve {other}"),
    };
    match spki.algorithm.oid.to_string().as_str() {
        EC => {
            let params = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok())
                .map(|oid| curve(&oid.to_string()))
                .unwrap_or_else(|| "unknown curve".to_owned());
            format!("ECDSA {params}")
        }
        RSA => format!("RSA {}", rsa_modulus_bits(spki).unwrap_or(0)),
        ED25519 => "Ed25519".to_owned(),
        other => format!("unknown ({other})"),
    }
}

/// The bit length of an RSA public key's modulus, read from its SPKI.
pub fn rsa_modulus_bits(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Option<usize> {
    use x509_cert::der::asn1::UintRef;
    use x509_cert::der::{Reader, SliceReader};
    let bytes = spki.subject_public_key.as_bytes()?;
    let mut reader = SliceReader::new(bytes).ok()?;
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017 A.1.1)
    let modulus = reader
        .sequence(|r| {
            let modulus = UintRef::decode(r)?;
            UintRef::decode(r)?;
            Ok(modulus)
        })
        .ok()?;
    let modulus = modulus.as_bytes();
    let first = *modulus.first()?;
    Some((modulus.len() - 1) * 8 + (8 - first.leading_zeros() as usize))
}
