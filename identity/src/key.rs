//! Workload keys: generated where they are used, never leaving the process except as a CSR
//! (or, when an operator asks for it, as a 0600 file written by the caller).

use std::fmt;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::spiffe::SpiffeId;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[error("workload key: {0}")]
pub struct KeyError(String);

/// An ECDSA P-256 private key. `Debug` never shows key material.
pub struct WorkloadKey {
    pair: KeyPair,
}

impl WorkloadKey {
    /// Generates a fresh P-256 key from the system's secure random source.
    pub fn generate() -> Result<Self, KeyError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(|pair| Self { pair })
            .map_err(|e| KeyError(e.to_string()))
    }

    /// Loads a PKCS#8 PEM P-256 key.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pair = KeyPair::from_pem(pem).map_err(|e| KeyError(e.to_string()))?;
        if pair.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(KeyError("only ECDSA P-256 keys are supported".into()));
        }
        Ok(Self { pair })
    }

    /// A DER PKCS#10 CSR signed by this key. With `id`, the CSR carries it as its only URI
    /// SAN; the CA decides the identity either way, so `None` is fine for Trellis CAs.
    pub fn csr_der(&self, id: Option<&SpiffeId>) -> Result<Vec<u8>, KeyError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Trellis workload");
        params.distinguished_name = name;
        if let Some(id) = id {
            let uri = id
                .as_str()
                .to_owned()
                .try_into()
                .map_err(|e: rcgen::Error| KeyError(e.to_string()))?;
            params.subject_alt_names = vec![SanType::URI(uri)];
        }
        params
            .serialize_request(&self.pair)
            .map(|csr| csr.der().to_vec())
            .map_err(|e| KeyError(e.to_string()))
    }

    /// The key in PKCS#8 DER form, for rustls. Keep it in an [`crate::tls::Identity`] (wiped
    /// on drop) or wrap it in `Zeroizing`.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pair.serialize_der()))
    }

    /// The key as PKCS#8 PEM, wiped from memory when dropped. Write it only to 0600 files.
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.pair.serialize_pem())
    }

    /// The DER SubjectPublicKeyInfo of the key.
    pub fn public_key_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        self.pair.subject_public_key_info()
    }

    /// The underlying rcgen key pair, for signing certificates with it (CAs only).
    pub fn key_pair(&self) -> &KeyPair {
        &self.pair
    }
}

/// rcgen keeps a DER copy of the key beside aws-lc's (which aws-lc wipes when it frees it);
/// wipe that copy too.
impl Drop for WorkloadKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pair);
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkloadKey(ECDSA P-256, redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_material() {
        let key = WorkloadKey::generate().expect("key");
        let debug = format!("{key:?}");
        assert!(debug.contains("redacted"));
        let pem = key.to_pem();
        let body: String = pem
            .lines()
            .nth(1)
            .expect("pem body")
            .chars()
            .take(20)
            .collect();
        assert!(!debug.contains(&body));
    }

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let key = WorkloadKey::generate().expect("key");
        let again = WorkloadKey::from_pem(&key.to_pem()).expect("reload");
        assert_eq!(key.public_key_der(), again.public_key_der());
    }
}
