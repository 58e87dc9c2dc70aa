//! Certificate profiles and signing: creating roots and intermediates, and issuing X.509-SVID
//! leaves under a signing CA (profile per the SPIFFE X509-SVID standard, §4). Used by
//! the CA server and by `trellis ca init`.

use std::time::{Duration, SystemTime};

use crate::crl_reason::CrlReason;
use crate::{SpiffeId, TrustDomain, hex};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use x509_cert::Certificate;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectKeyIdentifier;

/// Why a certificate could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The request names something that cannot go into a certificate.
    #[error("{0}")]
    InvalidName(String),
    /// The signing CA has expired.
    #[error("the signing intermediate has expired; rotate the CA's roots")]
    SignerExpired,
    /// The key, certificate or random source is unusable.
    #[error("{0}")]
    Internal(String),
}

/// How far NotBefore is backdated, at most, for peers whose clocks run a little behind.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// The backdate for a leaf of `lifetime`: [`BACKDATE`], but never more than a tenth of the
/// lifetime, so short-lived certificates are not mostly "past" (renewal is scheduled at
/// about half of NotBefore..NotAfter, and a large backdate would pull it to issue time).
pub fn leaf_backdate(lifetime: Duration) -> Duration {
    BACKDATE.min(lifetime / 10)
}

/// Serial numbers are 16 random bytes with the top bit clear (positive) and the next bit set
/// (so the DER integer is always 16 bytes): 126 bits of randomness, never reused because
/// the store refuses a serial it has seen.
pub fn random_serial() -> Result<[u8; 16], ProfileError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial)
        .map_err(|_| ProfileError::Internal("system random source failed".into()))?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn internal(context: &str) -> impl Fn(rcgen::Error) -> ProfileError + '_ {
    move |e| ProfileError::Internal(format!("{context}: {e}"))
}

/// A freshly made CA certificate and its key.
#[derive(Debug)]
pub struct NewCa {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
}

fn ca_params(
    common_name: String,
    trust_domain: &TrustDomain,
    now: SystemTime,
    lifetime: Duration,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Trellis");
    dn.push(DnType::OrganizationalUnitName, trust_domain.as_str());
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = to_offset(now - BACKDATE);
    params.not_after = to_offset(now + lifetime);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    // X509-SVID, section 4.3: signing certificates carry keyCertSign (and cRLSign, for the
    // CRLs they sign) and nothing else; digitalSignature is for leaves.
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params
}

/// Creates a self-signed root for `trust_domain`.
pub fn new_root(
    trust_domain: &TrustDomain,
    now: SystemTime,
    lifetime: Duration,
) -> Result<NewCa, ProfileError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(internal("root key"))?;
    let mut params = ca_params(
        format!("Trellis Root CA {}", key_id(&key)),
        trust_domain,
        now,
        lifetime,
        None,
    );
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.use_authority_key_identifier_extension = false;
    let cert = params
        .self_signed(&key)
        .map_err(internal("root certificate"))?;
    Ok(NewCa {
        cert: cert.der().clone(),
        key,
    })
}

/// Creates an intermediate signed by `root`, never outliving it.
pub fn new_intermediate(
    trust_domain: &TrustDomain,
    root: &SigningCa,
    now: SystemTime,
    lifetime: Duration,
) -> Result<NewCa, ProfileError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(internal("intermediate key"))?;
    let mut params = ca_params(
        format!("Trellis Intermediate CA {}", key_id(&key)),
        trust_domain,
        now,
        lifetime,
        Some(0),
    );
    if params.not_after > to_offset(root.not_after) {
        params.not_after = to_offset(root.not_after);
    }
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let cert = params
        .signed_by(&key, &root.issuer)
        .map_err(internal("intermediate certificate"))?;
    Ok(NewCa {
        cert: cert.der().clone(),
        key,
    })
}

/// The short id of a key (first 16 hex digits of its SPKI SHA-256), the same id `root list`
/// shows. Putting it in the CA's name keeps names unique: two CAs with equal names would
/// make path building pick the wrong issuer.
fn key_id(key: &KeyPair) -> String {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key.subject_public_key_info());
    hex::encode(&digest.as_ref()[..8])
}

/// A CA certificate with its key, able to sign.
#[derive(Debug)]
pub struct SigningCa {
    /// The short id: first 16 hex digits of the SPKI SHA-256.
    pub id: String,
    /// The root this CA chains to (its own id for a root).
    pub root_id: String,
    pub cert: CertificateDer<'static>,
    pub not_after: SystemTime,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl SigningCa {
    /// Pairs a CA certificate with its key, checking that they belong together.
    pub fn new(cert: CertificateDer<'static>, key: KeyPair) -> Result<Self, ProfileError> {
        let parsed = Certificate::from_der(&cert)
            .map_err(|e| ProfileError::Internal(format!("CA certificate is not valid DER: {e}")))?;
        let tbs = &parsed.tbs_certificate;
        let cert_point = tbs.subject_public_key_info.subject_public_key.raw_bytes();
        if cert_point != key.der_bytes() {
            return Err(ProfileError::Internal(
                "CA private key does not match its certificate".into(),
            ));
        }
        let distinguished_name = rcgen_name(&tbs.subject)?;
        // The leaf's authority key identifier must equal this certificate's subject key
        // identifier, whatever method made it, so reuse it as is.
        let key_identifier_method = match tbs.get::<SubjectKeyIdentifier>() {
            Ok(Some((_, ski))) => KeyIdMethod::PreSpecified(ski.0.as_bytes().to_vec()),
            _ => KeyIdMethod::Sha256,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name;
        params.key_identifier_method = key_identifier_method;
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let id =
            crate::bundle::root_id(&cert).map_err(|e| ProfileError::Internal(e.to_string()))?;
        Ok(Self {
            root_id: id.clone(),
            id,
            not_after: tbs.validity.not_after.to_system_time(),
            issuer: rcgen::Issuer::new(params, key),
            cert,
        })
    }

    /// The signing key.
    pub fn key(&self) -> &KeyPair {
        self.issuer.key()
    }

    /// Issues an X.509-SVID for `leaf`.
    pub fn sign_leaf(&self, leaf: &LeafSpec, now: SystemTime) -> Result<SignedLeaf, ProfileError> {
        let serial = random_serial()?;
        let not_before = now - leaf_backdate(leaf.lifetime);
        let not_after = (now + leaf.lifetime).min(self.not_after);
        if not_after <= now {
            return Err(ProfileError::SignerExpired);
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trellis");
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let uri = leaf
            .spiffe_id
            .as_str()
            .to_owned()
            .try_into()
            .map_err(internal("SPIFFE ID as URI SAN"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in &leaf.dns_names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(|_| {
                    ProfileError::InvalidName(format!("invalid DNS name {name:?}"))
                })?),
            };
            params.subject_alt_names.push(san);
        }
        let public_key = P256PublicKey(&leaf.public_point);
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(internal("leaf certificate"))?;
        Ok(SignedLeaf {
            der: cert.der().clone(),
            serial,
            not_before,
            not_after,
        })
    }
}

/// What to put in a leaf.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub spiffe_id: SpiffeId,
    /// DNS names (and, for the CA's own certificate, IP addresses) to add as SANs.
    pub dns_names: Vec<String>,
    /// The uncompressed P-256 point from the checked CSR.
    pub public_point: Vec<u8>,
    pub lifetime: Duration,
}

/// A signed leaf.
#[derive(Debug, Clone)]
pub struct SignedLeaf {
    pub der: CertificateDer<'static>,
    pub serial: [u8; 16],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl SignedLeaf {
    /// Lowercase hex serial.
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }
}

/// A P-256 public key taken from a CSR, in the form rcgen signs for.
struct P256PublicKey<'a>(&'a [u8]);

impl PublicKeyData for P256PublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Rebuilds an X.509 name as rcgen's, attribute by attribute with the same string types, so
/// that leaves' issuer names match the CA's subject byte for byte (as path building needs).
fn rcgen_name(name: &x509_cert::name::Name) -> Result<DistinguishedName, ProfileError> {
    let mut dn = DistinguishedName::new();
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            let arcs: Vec<u64> = atv.oid.arcs().map(u64::from).collect();
            let text = || {
                std::str::from_utf8(atv.value.value())
                    .map(str::to_owned)
                    .map_err(|_| ProfileError::Internal("CA name attribute is not text".into()))
            };
            let value = match atv.value.tag() {
                Tag::Utf8String => DnValue::Utf8String(text()?),
                Tag::PrintableString => DnValue::PrintableString(
                    text()?
                        .try_into()
                        .map_err(internal("CA name PrintableString"))?,
                ),
                Tag::Ia5String => {
                    DnValue::Ia5String(text()?.try_into().map_err(internal("CA name IA5String"))?)
                }
                other => {
                    return Err(ProfileError::Internal(format!(
                        "CA name attribute has unsupported string type {other}"
                    )));
                }
            };
            dn.push(DnType::from_oid(&arcs), value);
        }
    }
    Ok(dn)
}

/// One entry of a CRL.
#[derive(Debug, Clone)]
pub struct CrlEntry {
    pub serial: Vec<u8>,
    pub revoked_at: SystemTime,
    /// The reasonCode entry extension, if a reason was given (RFC 5280, section 5.3.1).
    pub reason: Option<CrlReason>,
}

fn rcgen_reason(reason: CrlReason) -> rcgen::RevocationReason {
    use rcgen::RevocationReason as R;
    match reason {
        CrlReason::KeyCompromise => R::KeyCompromise,
        CrlReason::CaCompromise => R::CaCompromise,
        CrlReason::AffiliationChanged => R::AffiliationChanged,
        CrlReason::Superseded => R::Superseded,
        CrlReason::CessationOfOperation => R::CessationOfOperation,
        CrlReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        CrlReason::AaCompromise => R::AaCompromise,
    }
}

impl SigningCa {
    /// Signs an X.509 v2 CRL (RFC 5280 §5) listing `entries`, valid from `now` until
    /// `next_update`, with CRL number `number` (must increase for each new CRL).
    pub fn sign_crl(
        &self,
        entries: &[CrlEntry],
        now: SystemTime,
        next_update: SystemTime,
        number: u64,
    ) -> Result<Vec<u8>, ProfileError> {
        let params = rcgen::CertificateRevocationListParams {
            this_update: to_offset(now),
            next_update: to_offset(next_update),
            crl_number: SerialNumber::from_slice(minimal_be(number.max(1)).as_slice()),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|e| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&e.serial),
                    revocation_time: to_offset(e.revoked_at),
                    reason_code: e.reason.map(rcgen_reason),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: self.key_identifier_method(),
        };
        let crl = params.signed_by(&self.issuer).map_err(internal("CRL"))?;
        Ok(crl.der().to_vec())
    }

    fn key_identifier_method(&self) -> KeyIdMethod {
        match trellis_ski(&self.cert) {
            Some(ski) => KeyIdMethod::PreSpecified(ski),
            None => KeyIdMethod::Sha256,
        }
    }
}

fn trellis_ski(cert: &[u8]) -> Option<Vec<u8>> {
    let parsed = Certificate::from_der(cert).ok()?;
    let (_, ski) = parsed
        .tbs_certificate
        .get::<SubjectKeyIdentifier>()
        .ok()??;
    Some(ski.0.as_bytes().to_vec())
}

/// A positive integer's big-endian bytes without leading zeros (DER INTEGERs are minimal).
fn minimal_be(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    let mut out = bytes[first..].to_vec();
    if out[0] & 0x80 != 0 {
        out.insert(0, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use x509_cert::ext::pkix::{KeyUsage, KeyUsages};

    use super::*;

    fn key_usage(der: &[u8]) -> KeyUsage {
        let cert = Certificate::from_der(der).expect("certificate");
        let (critical, usage) = cert
            .tbs_certificate
            .get::<KeyUsage>()
            .expect("parses")
            .expect("has keyUsage");
        assert!(critical, "keyUsage is critical");
        usage
    }

    #[test]
    fn signing_certificates_sign_certificates_and_crls_only() {
        let td = TrustDomain::new("example.org").expect("trust domain");
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let root = new_root(&td, now, day).expect("root");
        let root_der = root.cert.clone();
        let signer = SigningCa::new(root.cert, root.key).expect("signer");
        let intermediate = new_intermediate(&td, &signer, now, day).expect("intermediate");
        for der in [&root_der[..], &intermediate.cert[..]] {
            let usage = key_usage(der).0;
            assert_eq!(usage, KeyUsages::KeyCertSign | KeyUsages::CRLSign);
            assert!(!usage.contains(KeyUsages::DigitalSignature));
        }
    }

    #[test]
    fn short_lifetimes_are_backdated_proportionally() {
        assert_eq!(leaf_backdate(Duration::from_secs(3600)), BACKDATE);
        assert_eq!(
            leaf_backdate(Duration::from_secs(60)),
            Duration::from_secs(6)
        );
        // Half of NotBefore..NotAfter stays well after issue time for a one-minute leaf.
        let lifetime = Duration::from_secs(60);
        let span = lifetime + leaf_backdate(lifetime);
        assert!(span / 2 > leaf_backdate(lifetime) + Duration::from_secs(20));
    }
}
