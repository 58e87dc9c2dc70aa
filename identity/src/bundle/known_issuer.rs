//! A verification shortcut for an issuer the verifier holds itself, such as the CA server's
//! own signing intermediate. Its signature by a root of the bundle is checked once, when it
//! is loaded; a chain of leaf + that issuer then needs only the leaf's signature checked,
//! which halves the public-key work of every renewal at the CA.

use std::fmt;
use std::time::SystemTime;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::{CertificateDer, TrustAnchor};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};

use super::{TrustBundle, Usage, VerifiedSvid, format_time};
use crate::svid::SvidError;

pub(crate) const ECDSA_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// A CA certificate known to be signed by a root of the bundle it was checked against.
#[derive(Clone)]
pub struct KnownIssuer {
    der: CertificateDer<'static>,
    anchor: TrustAnchor<'static>,
    root_id: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl KnownIssuer {
    /// Checks that `issuer` is signed by one of `bundle`'s roots (ECDSA P-256 or P-384, the
    /// keys Trellis roots have); any other issuer is refused, and callers verify in full.
    pub fn new(issuer: CertificateDer<'static>, bundle: &TrustBundle) -> Result<Self, SvidError> {
        let malformed = |e: &dyn fmt::Display| SvidError::Malformed(e.to_string());
        let cert = Certificate::from_der(&issuer).map_err(|e| malformed(&e))?;
        let signed = cert.tbs_certificate.to_der().map_err(|e| malformed(&e))?;
        let signature = cert
            .signature
            .as_bytes()
            .ok_or_else(|| malformed(&"signature is not byte-aligned"))?;
        let root_index = bundle
            .roots()
            .iter()
            .position(|root| {
                signed_by(root, cert.signature_algorithm.oid, &signed, signature).unwrap_or(false)
            })
            .ok_or(SvidError::UnknownIssuer)?;
        let anchor = webpki::anchor_from_trusted_cert(&issuer)
            .map_err(|e| SvidError::Malformed(format!("{e:?}")))?
            .to_owned();
        let validity = &cert.tbs_certificate.validity;
        Ok(Self {
            anchor,
            root_id: bundle.root_ids()[root_index].clone(),
            not_before: validity.not_before.to_system_time(),
            not_after: validity.not_after.to_system_time(),
            der: issuer,
        })
    }

    /// Whether a chain presenting `presented` as its issuer may take the shortcut now.
    fn applies(
        &self,
        bundle: &TrustBundle,
        presented: &CertificateDer<'_>,
        now: SystemTime,
    ) -> bool {
        presented.as_ref() == self.der.as_ref()
            && bundle.root_ids().contains(&self.root_id)
            && self.not_before <= now
            && now <= self.not_after
    }
}

/// Whether `root`'s key made `signature` over `signed` with the algorithm `algorithm`.
pub(crate) fn signed_by(
    root: &CertificateDer<'_>,
    algorithm: ObjectIdentifier,
    signed: &[u8],
    signature: &[u8],
) -> Result<bool, x509_cert::der::Error> {
    let root = Certificate::from_der(root)?;
    let spki = &root.tbs_certificate.subject_public_key_info;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let verifier: &'static dyn VerificationAlgorithm = match (curve, algorithm) {
        (Some(P256), ECDSA_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
        (Some(P256), ECDSA_SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
        (Some(P384), ECDSA_SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
        (Some(P384), ECDSA_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
        _ => return Ok(false),
    };
    let point = spki.subject_public_key.raw_bytes();
    Ok(UnparsedPublicKey::new(verifier, point)
        .verify(signed, signature)
        .is_ok())
}

impl TrustBundle {
    /// Like [`verify`](Self::verify), but a chain of exactly leaf + `known` (byte for byte)
    /// is checked against `known` as its anchor: one signature instead of two. `known` is
    /// used only while its root is in this bundle and it is within its own validity; any
    /// other chain takes the full path.
    pub fn verify_with_known(
        &self,
        known: &KnownIssuer,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
        usage: Usage,
    ) -> Result<VerifiedSvid, SvidError> {
        match chain {
            [leaf, issuer] if known.applies(self, issuer, now) => self.verify_path(
                leaf,
                &[],
                std::slice::from_ref(&known.anchor),
                now,
                usage,
                |_| known.root_id.clone(),
            ),
            _ => self.verify(chain, now, usage),
        }
    }
}

impl fmt::Debug for KnownIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KnownIssuer")
            .field("root_id", &self.root_id)
            .field("not_after", &format_time(self.not_after))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::WorkloadKey;
    use crate::profile::{self, LeafSpec, SigningCa};
    use crate::spiffe::TrustDomain;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A root and an intermediate under it, and a bundle of that root.
    fn hierarchy(td: &TrustDomain, now: SystemTime) -> (TrustBundle, SigningCa) {
        let root = profile::new_root(td, now, 24 * HOUR).unwrap();
        let root = SigningCa::new(root.cert, root.key).unwrap();
        let inter = profile::new_intermediate(td, &root, now, 12 * HOUR).unwrap();
        let inter = SigningCa::new(inter.cert, inter.key).unwrap();
        let bundle = TrustBundle::new(td.clone(), 1, vec![root.cert.clone()]).unwrap();
        (bundle, inter)
    }

    fn leaf(signer: &SigningCa, td: &TrustDomain, now: SystemTime) -> CertificateDer<'static> {
        let key = WorkloadKey::generate().unwrap();
        let spec = LeafSpec {
            spiffe_id: td.id("/ns/prod/sa/web").unwrap(),
            dns_names: Vec::new(),
            public_point: key.key_pair().public_key_raw().to_vec(),
            lifetime: HOUR,
        };
        signer.sign_leaf(&spec, now).unwrap().der
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn gives_the_same_answer_as_the_full_path() {
        let (td, now) = (td(), SystemTime::now());
        let (bundle, inter) = hierarchy(&td, now);
        let known = KnownIssuer::new(inter.cert.clone(), &bundle).unwrap();
        let chain = [leaf(&inter, &td, now), inter.cert.clone()];
        let full = bundle.verify(&chain, now, Usage::Client).unwrap();
        let short = bundle
            .verify_with_known(&known, &chain, now, Usage::Client)
            .unwrap();
        assert_eq!(full, short);
        assert_eq!(short.root_id, bundle.root_ids()[0]);
        // The leaf's own checks still apply on the shortcut.
        assert!(matches!(
            bundle.verify_with_known(&known, &chain, now + 2 * HOUR, Usage::Client),
            Err(SvidError::Expired { .. })
        ));
    }

    #[test]
    fn does_not_vouch_for_a_leaf_it_did_not_sign() {
        let (td, now) = (td(), SystemTime::now());
        let (bundle, inter) = hierarchy(&td, now);
        let (_, rogue) = hierarchy(&td, now);
        let known = KnownIssuer::new(inter.cert.clone(), &bundle).unwrap();
        // A leaf from another CA, presented with our intermediate as its issuer.
        let forged = [leaf(&rogue, &td, now), inter.cert.clone()];
        assert!(matches!(
            bundle.verify_with_known(&known, &forged, now, Usage::Client),
            Err(SvidError::UnknownIssuer)
        ));
    }

    #[test]
    fn refuses_an_issuer_no_root_of_the_bundle_signed() {
        let (td, now) = (td(), SystemTime::now());
        let (bundle, _) = hierarchy(&td, now);
        let (_, foreign) = hierarchy(&td, now);
        assert!(matches!(
            KnownIssuer::new(foreign.cert.clone(), &bundle),
            Err(SvidError::UnknownIssuer)
        ));
    }

    #[test]
    fn is_ignored_once_its_root_leaves_the_bundle() {
        let (td, now) = (td(), SystemTime::now());
        let (bundle, inter) = hierarchy(&td, now);
        let (other_bundle, _) = hierarchy(&td, now);
        let known = KnownIssuer::new(inter.cert.clone(), &bundle).unwrap();
        let chain = [leaf(&inter, &td, now), inter.cert.clone()];
        assert!(matches!(
            other_bundle.verify_with_known(&known, &chain, now, Usage::Client),
            Err(SvidError::UnknownIssuer)
        ));
    }
}
