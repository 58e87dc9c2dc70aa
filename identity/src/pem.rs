//! PEM reading and writing for certificates and private keys.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::pem::LineEnding;

/// Why PEM text could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("no {0} found in PEM input (expected a \"-----BEGIN {0}-----\" block)")]
    Missing(&'static str),
    #[error("malformed PEM: {0}")]
    Malformed(String),
}

/// Reads every `CERTIFICATE` block, in order. Fails if there is none.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::Missing("CERTIFICATE"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1).
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::Missing("PRIVATE KEY"),
        other => PemError::Malformed(other.to_string()),
    })
}

/// Writes certificates as consecutive `CERTIFICATE` blocks.
pub fn certs_to_pem<C: AsRef<[u8]>>(certs: &[C]) -> String {
    certs
        .iter()
        .map(|der| encode("CERTIFICATE", der.as_ref()))
        .collect()
}

/// Writes one PEM block with the given label.
pub fn encode(label: &str, der: &[u8]) -> String {
    // Encoding into a String cannot fail for a valid label and in-memory input.
    x509_cert::der::pem::encode_string(label, LineEnding::LF, der)
        .expect("PEM encoding of in-memory bytes with a static label cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_round_trip() {
        let a = encode("CERTIFICATE", b"first");
        let b = encode("CERTIFICATE", b"second");
        let parsed = certs_from_pem(format!("{a}{b}").as_bytes()).expect("parses");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].as_ref(), b"first");
        assert_eq!(certs_to_pem(&parsed), format!("{a}{b}"));
    }

    #[test]
    fn missing_certificate_is_named() {
        let err = certs_from_pem(b"hello").unwrap_err();
        assert!(err.to_string().contains("CERTIFICATE"), "{err}");
    }
}
