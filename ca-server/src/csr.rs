//! Checking a PKCS#10 CSR (RFC 2986) before anything is signed: its signature (proof of
//! possession of the key), its key type, and what it asks for. The CSR never decides the
//! identity; it may only restate the one the credential grants.

use trellis_identity::svid::{key_algorithm_name, rsa_modulus_bits};
use x509_cert::der::Decode;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::ext::Extensions;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, SubjectAltName};
use x509_cert::request::CertReq;

use crate::error::CaError;

/// The largest CSR accepted. A P-256 CSR is about 300 bytes; anything near this is hostile.
pub const MAX_CSR_LEN: usize = 8 * 1024;

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EXTENSION_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
const SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

/// A CSR whose signature verified and whose key is acceptable.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// The uncompressed P-256 public point (65 bytes).
    pub public_point: Vec<u8>,
    /// The URI SAN the CSR asks for, if any.
    pub requested_uri: Option<String>,
}

fn bad(msg: impl Into<String>) -> CaError {
    CaError::InvalidArgument(msg.into())
}

/// The first element of the outer SEQUENCE (the CertificationRequestInfo), as sent.
fn signed_part(der: &[u8]) -> Option<&[u8]> {
    use x509_cert::der::{Decode as _, Header, Reader as _, SliceReader};
    let mut outer = SliceReader::new(der).ok()?;
    let header = Header::decode(&mut outer).ok()?;
    let body = outer.read_slice(header.length).ok()?;
    let mut inner = SliceReader::new(body).ok()?;
    let info = Header::decode(&mut inner).ok()?;
    let len = usize::try_from((inner.position() + info.length).ok()?).ok()?;
    body.get(..len)
}

/// Parses and checks a DER CSR.
pub fn check(der: &[u8]) -> Result<CheckedCsr, CaError> {
    if der.is_empty() {
        return Err(bad(
            "csr_der is empty: send a DER PKCS#10 CSR for an ECDSA P-256 key",
        ));
    }
    if der.len() > MAX_CSR_LEN {
        return Err(bad(format!(
            "CSR is {} bytes; the limit is {MAX_CSR_LEN} (a P-256 CSR is about 300 bytes)",
            der.len()
        )));
    }
    let csr =
        CertReq::from_der(der).map_err(|e| bad(format!("CSR is not valid DER PKCS#10: {e}")))?;
    let spki = &csr.info.public_key;
    let key_name = key_algorithm_name(spki);
    if spki.algorithm.oid == RSA {
        let bits = rsa_modulus_bits(spki).unwrap_or(0);
        return Err(bad(if bits < 2048 {
            format!("CSR key is RSA {bits} bits, which is too weak; use an ECDSA P-256 key")
        } else {
            format!("CSR key is RSA {bits}; Trellis issues ECDSA P-256 certificates only")
        }));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(P256) {
        return Err(bad(format!(
            "CSR key is {key_name}; Trellis issues ECDSA P-256 certificates only"
        )));
    }
    let public_point = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad("CSR public key bit string is not byte-aligned"))?
        .to_vec();

    let algorithm: &'static aws_lc_rs::signature::EcdsaVerificationAlgorithm =
        match csr.algorithm.oid {
            ECDSA_SHA256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            ECDSA_SHA384 => &aws_lc_rs::signature::ECDSA_P256_SHA384_ASN1,
            other => {
                return Err(bad(format!(
                    "CSR signature algorithm {other} is not supported; sign with ecdsa-with-SHA256"
                )));
            }
        };
    // The signature covers the CertificationRequestInfo exactly as sent: verify over those
    // bytes rather than a re-encoding of what was parsed.
    let signed = signed_part(der).ok_or_else(|| bad("CSR body cannot be located in the DER"))?;
    let signature = csr
        .signature
        .as_bytes()
        .ok_or_else(|| bad("CSR signature bit string is not byte-aligned"))?;
    aws_lc_rs::signature::UnparsedPublicKey::new(algorithm, &public_point)
        .verify(signed, signature)
        .map_err(|_| {
            bad("CSR signature does not verify: the CSR was not signed by the key it contains")
        })?;

    let requested_uri = requested_uri(&csr)?;
    Ok(CheckedCsr {
        public_point,
        requested_uri,
    })
}

/// Reads the extensionRequest attribute: refuses CA=true and any SAN but one URI.
fn requested_uri(csr: &CertReq) -> Result<Option<String>, CaError> {
    let mut uri = None;
    for attribute in csr.info.attributes.iter() {
        if attribute.oid != EXTENSION_REQUEST {
            continue;
        }
        for value in attribute.values.iter() {
            let extensions: Extensions = value
                .decode_as()
                .map_err(|e| bad(format!("CSR extensionRequest is malformed: {e}")))?;
            for ext in extensions {
                let bytes = ext.extn_value.as_bytes();
                if ext.extn_id == BASIC_CONSTRAINTS {
                    let bc = BasicConstraints::from_der(bytes)
                        .map_err(|e| bad(format!("CSR basicConstraints is malformed: {e}")))?;
                    if bc.ca {
                        return Err(bad(
                            "CSR asks for CA=true; Trellis issues only leaf certificates (CA=false)",
                        ));
                    }
                } else if ext.extn_id == SAN {
                    let san = SubjectAltName::from_der(bytes)
                        .map_err(|e| bad(format!("CSR subjectAltName is malformed: {e}")))?;
                    for name in san.0 {
                        match name {
                            GeneralName::UniformResourceIdentifier(u) if uri.is_none() => {
                                uri = Some(u.to_string());
                            }
                            GeneralName::UniformResourceIdentifier(_) => {
                                return Err(bad(
                                    "CSR asks for several URI SANs; an X.509-SVID has exactly one",
                                ));
                            }
                            other => {
                                return Err(bad(format!(
                                    "CSR asks for an extra SAN ({}); the CA decides the names: \
                                     send at most the one URI SAN of your SPIFFE ID",
                                    describe(&other)
                                )));
                            }
                        }
                    }
                }
                // Other requested extensions are ignored: the CA applies its own profile.
            }
        }
    }
    Ok(uri)
}

fn describe(name: &GeneralName) -> String {
    match name {
        GeneralName::DnsName(d) => format!("DNS name {d}"),
        GeneralName::IpAddress(_) => "IP address".into(),
        GeneralName::Rfc822Name(e) => format!("email {e}"),
        _ => "non-URI name".into(),
    }
}

#[cfg(test)]
mod tests {
    use x509_cert::der::Encode;

    use super::*;

    #[test]
    fn the_signed_part_is_the_request_info_as_sent() {
        let der = trellis_identity::WorkloadKey::generate()
            .unwrap()
            .csr_der(None)
            .unwrap();
        let info = CertReq::from_der(&der).unwrap().info.to_der().unwrap();
        assert_eq!(signed_part(&der), Some(info.as_slice()));
        assert!(check(&der).is_ok());
        for cut in [0, 1, 2, 10, der.len() / 2] {
            assert_eq!(signed_part(&der[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_changed_byte_in_the_signed_part_fails_the_signature() {
        let mut der = trellis_identity::WorkloadKey::generate()
            .unwrap()
            .csr_der(None)
            .unwrap();
        let point = CertReq::from_der(&der)
            .unwrap()
            .info
            .public_key
            .subject_public_key
            .raw_bytes()
            .to_vec();
        let at = der
            .windows(point.len())
            .position(|w| w == point.as_slice())
            .unwrap()
            + point.len()
            - 1;
        der[at] ^= 0x01;
        let refused = check(&der).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("does not verify"), "{refused}");
    }
}
