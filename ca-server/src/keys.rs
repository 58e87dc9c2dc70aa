//! The CA's own private keys (roots kept online, intermediates, JWT-SVID signing keys):
//! the one place they are saved and loaded.
//!
//! With sled they are files in `<data>/keys/` (0600, refused if group or others can read
//! them). With PostgreSQL every replica must sign with every key, whichever replica made
//! it, so they live in the database, sealed: AES-256-GCM under the key-encryption key
//! (KEK) every replica reads from `--key-encryption-key-file`, the key's name and the
//! trust domain bound as associated data, so that one sealed key cannot stand in for
//! another. Whoever reads the database without the KEK cannot sign (SECURITY.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use rcgen::KeyPair;
use trellis_identity::files;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::error::CaError;
use crate::store::{Store, StoreConfig};

/// The first byte of a sealed key: the format (AES-256-GCM, 96-bit random nonce).
const SEALED_V1: u8 = 1;
/// The KEK's length: an AES-256 key.
pub const KEK_LEN: usize = 32;
/// How to make a KEK, for messages.
const MAKE_ONE: &str = "make one with `head -c 32 /dev/urandom | base64 > kek && chmod 600 kek` \
     and give every replica the same file";

/// The key-encryption key. Its bytes never reach `Debug` or logs and are wiped on drop.
pub struct Kek(Zeroizing<[u8; KEK_LEN]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// Reads a KEK file: 32 bytes, base64 (surrounding whitespace ignored) or raw; refused
    /// if group or others can read it.
    pub fn read(path: &Path) -> Result<Self, CaError> {
        let refuse = |why: String| {
            CaError::InvalidArgument(format!("key-encryption key {}: {why}", path.display()))
        };
        let bytes = Zeroizing::new(files::read_secret(path).map_err(|e| {
            refuse(if e.kind() == std::io::ErrorKind::NotFound {
                format!("{e}; {MAKE_ONE}")
            } else {
                e.to_string()
            })
        })?);
        let text = String::from_utf8_lossy(&bytes);
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .unwrap_or_else(|_| bytes.to_vec()),
        );
        let key: [u8; KEK_LEN] = decoded.as_slice().try_into().map_err(|_| {
            refuse(format!(
                "it must hold {KEK_LEN} random bytes, base64-encoded (it holds {} bytes); \
                 {MAKE_ONE}",
                decoded.len()
            ))
        })?;
        Ok(Self(Zeroizing::new(key)))
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; KEK_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &*self.0).expect("an AES-256 key is 32 bytes"),
        )
    }
}

/// The KEK a PostgreSQL store's keys are sealed under (none for sled, which keeps files),
/// read from the configured file; refused, naming the fix, if PostgreSQL has none.
pub fn key_encryption_key(config: &Config) -> Result<Option<Kek>, CaError> {
    match (&config.store, &config.key_encryption_key_file) {
        (StoreConfig::Sled, Some(path)) => {
            tracing::warn!(file = %path.display(), "the key-encryption key is unused with the sled store: keys stay files in the data directory");
            Ok(None)
        }
        (StoreConfig::Sled, None) => Ok(None),
        (StoreConfig::Postgres(_), Some(path)) => Kek::read(path).map(Some),
        (StoreConfig::Postgres(_), None) => Err(CaError::InvalidArgument(
            "the PostgreSQL store needs a key-encryption key: the CA's private keys are kept \
             in the database sealed under it, so that every replica can sign; give every \
             replica the same file with --key-encryption-key-file (or [store] \
             key_encryption_key_file, TRELLIS_KEY_ENCRYPTION_KEY_FILE), made once with \
             `head -c 32 /dev/urandom | base64 > kek && chmod 600 kek`"
                .into(),
        )),
    }
}

/// What a sealed key is bound to besides its bytes: its name and the trust domain.
fn associated_data(trust_domain: &str, name: &str) -> Vec<u8> {
    let mut aad = b"trellis-ca sealed key v1\0".to_vec();
    aad.extend_from_slice(trust_domain.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Seals `secret` as key `name` of `trust_domain`: format byte, nonce, ciphertext and tag.
pub fn seal(kek: &Kek, trust_domain: &str, name: &str, secret: &[u8]) -> Result<Vec<u8>, CaError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| CaError::Internal("no randomness for a nonce".into()))?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + secret.len() + AES_256_GCM.tag_len());
    sealed.push(SEALED_V1);
    sealed.extend_from_slice(&nonce);
    let mut body = Zeroizing::new(secret.to_vec());
    kek.aead()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(trust_domain, name)),
            &mut *body,
        )
        .map_err(|_| CaError::Internal(format!("sealing key {name} failed")))?;
    sealed.extend_from_slice(&body);
    Ok(sealed)
}

/// Opens what [`seal`] made for the same KEK, trust domain and name; anything else (another
/// KEK, another name, an altered blob) is refused.
pub fn open(
    kek: &Kek,
    trust_domain: &str,
    name: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CaError> {
    let refuse = || {
        CaError::Internal(format!(
            "the sealed key {name} in the database cannot be opened: it was sealed under \
             another key-encryption key (every replica needs the same \
             --key-encryption-key-file), or the stored value was altered or belongs to \
             another key"
        ))
    };
    let (&format, rest) = sealed.split_first().ok_or_else(refuse)?;
    if format != SEALED_V1 || rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(refuse());
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refuse())?;
    let mut body = Zeroizing::new(body.to_vec());
    let len = kek
        .aead()
        .open_in_place(
            nonce,
            Aad::from(associated_data(trust_domain, name)),
            &mut body,
        )
        .map_err(|_| refuse())?
        .len();
    body.truncate(len);
    Ok(body)
}

/// Where the CA's private keys are kept.
#[derive(Debug, Clone)]
pub(crate) enum Keys {
    /// Files in the keys directory (sled).
    Files(PathBuf),
    /// Sealed in the shared store (PostgreSQL).
    Sealed {
        store: Arc<dyn Store>,
        kek: Arc<Kek>,
        trust_domain: String,
    },
}

impl Keys {
    /// Saves a new key `name` (PEM). A sealed key is written once: a second one of the same
    /// name is refused.
    pub(crate) fn save(&self, name: &str, pem: &str) -> Result<(), CaError> {
        match self {
            Self::Files(dir) => files::write_secret(&dir.join(name), pem.as_bytes())
                .map_err(crate::bootstrap::io(format!("writing key {name}"))),
            Self::Sealed {
                store,
                kek,
                trust_domain,
            } => {
                let sealed = seal(kek, trust_domain, name, pem.as_bytes())?;
                let stored = store.put_sealed_key(name, &sealed).map_err(|e| {
                    CaError::Unavailable(format!("storing the sealed key {name}: {e}"))
                })?;
                if !stored {
                    return Err(CaError::FailedPrecondition(format!(
                        "the database already holds a key named {name}"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Loads key `name`; `what` names it in errors ("intermediate key", "root key").
    pub(crate) fn load(&self, name: &str, what: &str) -> Result<KeyPair, CaError> {
        let (pem, place) = match self {
            Self::Files(dir) => {
                let path = dir.join(name);
                let pem = files::read_secret(&path)
                    .map_err(|e| CaError::Unavailable(format!("{what} {}: {e}", path.display())))?;
                (Zeroizing::new(pem), path.display().to_string())
            }
            Self::Sealed {
                store,
                kek,
                trust_domain,
            } => {
                let sealed = store
                    .sealed_key(name)
                    .map_err(|e| CaError::Unavailable(format!("reading the {what} {name}: {e}")))?
                    .ok_or_else(|| {
                        CaError::Unavailable(format!(
                            "{what} {name} is not in the database; it was made by a CA that \
                             kept its keys as files: import it, or rotate to a root made here"
                        ))
                    })?;
                (
                    open(kek, trust_domain, name, &sealed)?,
                    format!("{name} (sealed)"),
                )
            }
        };
        KeyPair::from_pem(&String::from_utf8_lossy(&pem))
            .map_err(|e| CaError::Internal(format!("{what} {place}: {e}")))
    }

    /// Whether key `name` is at hand (a file, or a sealed key in the database).
    pub(crate) fn holds(&self, name: &str) -> Result<bool, CaError> {
        match self {
            Self::Files(dir) => Ok(dir.join(name).exists()),
            Self::Sealed { store, .. } => store
                .sealed_key(name)
                .map(|k| k.is_some())
                .map_err(crate::bootstrap::store_err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn kek(byte: u8) -> Kek {
        Kek::from_bytes([byte; KEK_LEN])
    }

    const PEM: &[u8] = b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n";

    #[test]
    fn a_sealed_key_opens_with_its_kek_name_and_trust_domain() {
        let sealed = seal(&kek(1), "example.org", "root-a.key.pem", PEM).unwrap();
        assert!(
            !sealed.windows(PEM.len()).any(|w| w == PEM),
            "sealed holds the plaintext"
        );
        let opened = open(&kek(1), "example.org", "root-a.key.pem", &sealed).unwrap();
        assert_eq!(opened.as_slice(), PEM);
        // Two seals of the same key differ (fresh nonce).
        assert_ne!(
            sealed,
            seal(&kek(1), "example.org", "root-a.key.pem", PEM).unwrap()
        );
    }

    #[test]
    fn another_kek_name_trust_domain_or_an_altered_blob_is_refused() {
        let sealed = seal(&kek(1), "example.org", "root-a.key.pem", PEM).unwrap();
        let refused = |result: Result<Zeroizing<Vec<u8>>, CaError>| {
            let e = result.expect_err("must be refused").to_string();
            assert!(e.contains("cannot be opened"), "{e}");
            assert!(e.contains("--key-encryption-key-file"), "{e}");
        };
        refused(open(&kek(2), "example.org", "root-a.key.pem", &sealed));
        refused(open(
            &kek(1),
            "example.org",
            "intermediate-b.key.pem",
            &sealed,
        ));
        refused(open(&kek(1), "other.org", "root-a.key.pem", &sealed));
        for at in [0, 5, sealed.len() / 2, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[at] ^= 0x01;
            refused(open(&kek(1), "example.org", "root-a.key.pem", &tampered));
        }
        refused(open(
            &kek(1),
            "example.org",
            "root-a.key.pem",
            &sealed[..20],
        ));
        refused(open(&kek(1), "example.org", "root-a.key.pem", &[]));
    }

    fn write(dir: &Path, contents: &[u8], mode: u32) -> PathBuf {
        let path = dir.join("kek");
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_kek_file_is_32_bytes_base64_or_raw_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let from_b64 = Kek::read(&write(dir.path(), format!("{b64}\n").as_bytes(), 0o600)).unwrap();
        let raw = Kek::read(&write(dir.path(), &[7u8; 32], 0o400)).unwrap();
        let sealed = seal(&from_b64, "td", "k", b"secret").unwrap();
        assert_eq!(
            open(&raw, "td", "k", &sealed).unwrap().as_slice(),
            b"secret"
        );
        assert_eq!(format!("{raw:?}"), "Kek(<redacted>)");

        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let e = Kek::read(&write(dir.path(), short.as_bytes(), 0o600))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("32 random bytes") && e.contains("holds 16 bytes"),
            "{e}"
        );
        assert!(e.contains("head -c 32 /dev/urandom | base64"), "{e}");

        let e = Kek::read(&write(dir.path(), b64.as_bytes(), 0o640))
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");

        let e = Kek::read(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("head -c 32 /dev/urandom"), "{e}");
    }
}
