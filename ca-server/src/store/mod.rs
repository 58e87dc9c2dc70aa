//! The CA's durable state in one sled database: issued certificates (by serial, and an index
//! by identity), trust roots, intermediates, join-token hashes, the audit log and metadata.
//!
//! Architecture invariant: a certificate is recorded, and that record flushed to disk, before
//! the reply that carries it is sent. [`Store::record_issuance`] writes the records, then
//! [`Store::durable`] waits for a (shared) fsync.
//!
//! Why no sled transactions: in sled 0.34 a transaction (or `apply_batch`) takes a
//! process-wide write lock that serialises every other operation; plain `insert` and
//! `compare_and_swap` do not. So an issuance is a short sequence of single-key atomic writes,
//! ordered so that any prefix of it (all a crash can leave, since every tree shares one
//! ordered log, and nothing is acknowledged before the flush) is harmless:
//! 1. consume the join token (`compare_and_swap` on its record: single use is atomic);
//! 2. write the identity index entry (an entry without a certificate is skipped on read);
//! 3. write the certificate, meta and DER in one value, with `compare_and_swap` from
//!    absent, which is also what guarantees a serial is never used twice;
//! 4. append the audit entries.
//!
//! A crash after step 1 burns the token without a certificate: it fails closed.

mod commit;
pub mod records;

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use commit::Committer;
pub use records::{
    AuditRecord, CertRecord, IntermediateRecord, RevocationRecord, RootRecord, RootState,
    TokenRecord,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt record in tree {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}

/// Why an issuance could not be recorded. Nothing was written in every case.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("serial number already used")]
    SerialTaken,
    #[error("join token refused: {0}")]
    Token(TokenRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a join token cannot be redeemed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("unknown join token (never issued by this CA, or mistyped)")]
    Unknown,
    #[error("join token was already used (at unix time {at}); each token works once")]
    Used { at: u64 },
    #[error("join token expired (at unix time {at})")]
    Expired { at: u64 },
}

/// A token to consume as part of an issuance.
#[derive(Debug, Clone, Copy)]
pub struct TokenUse {
    pub hash: [u8; 32],
    pub now: u64,
}

const META_TRUST_DOMAIN: &[u8] = b"trust_domain";
const META_BUNDLE_VERSION: &[u8] = b"bundle_version";
const META_ACTIVE_INTERMEDIATE: &[u8] = b"active_intermediate";

/// The CA's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    certs: sled::Tree,
    by_identity: sled::Tree,
    roots: sled::Tree,
    intermediates: sled::Tree,
    tokens: sled::Tree,
    revocations: sled::Tree,
    audit: sled::Tree,
    meta: sled::Tree,
    committer: Committer,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records are plain data and always serialise")
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    })
}

/// A certificate value: 4-byte big-endian length of the JSON metadata, the metadata, the DER.
fn encode_certificate(record: &CertRecord, der: &[u8]) -> Vec<u8> {
    let meta = encode(record);
    let len = u32::try_from(meta.len()).expect("certificate metadata is far below 4 GiB");
    let mut value = Vec::with_capacity(4 + meta.len() + der.len());
    value.extend_from_slice(&len.to_be_bytes());
    value.extend_from_slice(&meta);
    value.extend_from_slice(der);
    value
}

fn decode_certificate(value: &[u8]) -> Result<(CertRecord, Vec<u8>), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        tree: "certs",
        reason: reason.to_owned(),
    };
    let len_bytes: [u8; 4] = value
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt("value shorter than its length prefix"))?;
    let meta_end = 4 + u32::from_be_bytes(len_bytes) as usize;
    let meta = value
        .get(4..meta_end)
        .ok_or_else(|| corrupt("metadata length exceeds the value"))?;
    Ok((decode("certs", meta)?, value[meta_end..].to_vec()))
}

fn identity_key(spiffe_id: &str, serial: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(spiffe_id.len() + 1 + serial.len());
    key.extend_from_slice(spiffe_id.as_bytes());
    key.push(0);
    key.extend_from_slice(serial);
    key
}

impl Store {
    /// Opens (creating if needed) the database in `dir`. Needs a tokio runtime (for the
    /// group-commit task).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let tree = |name: &str| db.open_tree(name);
        Ok(Self {
            certs: tree("certs")?,
            by_identity: tree("by_identity")?,
            roots: tree("roots")?,
            intermediates: tree("intermediates")?,
            tokens: tree("tokens")?,
            revocations: tree("revocations")?,
            audit: tree("audit")?,
            meta: tree("meta")?,
            committer: Committer::start(),
            db,
        })
    }

    /// Waits until every write made before this call is on disk (shared with concurrent
    /// callers: group commit).
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.committer
            .durable(&self.db)
            .await
            .map_err(StoreError::Storage)
    }

    /// Flushes synchronously (start-up and shutdown paths).
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    // --- metadata ---

    /// The trust domain this database belongs to, if initialised.
    pub fn trust_domain(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get(META_TRUST_DOMAIN)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the trust domain (once, at initialisation).
    pub fn set_trust_domain(&self, td: &str) -> Result<(), StoreError> {
        self.meta.insert(META_TRUST_DOMAIN, td.as_bytes())?;
        Ok(())
    }

    /// The trust-bundle version (0 before initialisation).
    pub fn bundle_version(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(META_BUNDLE_VERSION)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Sets the trust-bundle version.
    pub fn set_bundle_version(&self, version: u64) -> Result<(), StoreError> {
        self.meta
            .insert(META_BUNDLE_VERSION, &version.to_be_bytes())?;
        Ok(())
    }

    // --- roots and intermediates ---

    /// Every root, in id order.
    pub fn roots(&self) -> Result<Vec<RootRecord>, StoreError> {
        self.roots
            .iter()
            .values()
            .map(|v| decode("roots", &v?))
            .collect()
    }

    /// Inserts or replaces a root.
    pub fn put_root(&self, root: &RootRecord) -> Result<(), StoreError> {
        self.roots.insert(root.id.as_bytes(), encode(root))?;
        Ok(())
    }

    /// Inserts an intermediate and makes it the signing one.
    pub fn activate_intermediate(&self, record: &IntermediateRecord) -> Result<(), StoreError> {
        self.intermediates
            .insert(record.id.as_bytes(), encode(record))?;
        self.meta
            .insert(META_ACTIVE_INTERMEDIATE, record.id.as_bytes())?;
        Ok(())
    }

    /// The signing intermediate, if the CA is initialised.
    pub fn active_intermediate(&self) -> Result<Option<IntermediateRecord>, StoreError> {
        let Some(id) = self.meta.get(META_ACTIVE_INTERMEDIATE)? else {
            return Ok(None);
        };
        self.intermediates
            .get(id)?
            .map(|v| decode("intermediates", &v))
            .transpose()
    }

    // --- join tokens ---

    /// Stores a new token under the hash of its secret.
    pub fn put_token(&self, hash: &[u8; 32], token: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(hash, encode(token))?;
        Ok(())
    }

    /// Looks a token up by hash, checking it is redeemable at `now` (read only).
    pub fn check_token(&self, hash: &[u8; 32], now: u64) -> Result<TokenRecord, RecordError> {
        let bytes = self
            .tokens
            .get(hash)
            .map_err(StoreError::from)?
            .ok_or(RecordError::Token(TokenRefusal::Unknown))?;
        let token: TokenRecord = decode("tokens", &bytes)?;
        redeemable(&token, now).map_err(RecordError::Token)?;
        Ok(token)
    }

    // --- certificates ---

    /// Records an issued certificate, its index entry and audit entries, consuming the join
    /// token first if one is given (see the module docs for the order and why). Call
    /// [`Store::durable`] after.
    pub fn record_issuance(
        &self,
        record: &CertRecord,
        der: &[u8],
        serial: &[u8],
        token: Option<TokenUse>,
        audit: &[AuditRecord],
    ) -> Result<(), RecordError> {
        if self.certs.contains_key(serial).map_err(StoreError::from)? {
            return Err(RecordError::SerialTaken);
        }
        if let Some(use_) = token {
            self.consume_token(&use_, &record.serial)?;
        }
        self.by_identity
            .insert(identity_key(&record.spiffe_id, serial), &[])
            .map_err(StoreError::from)?;
        let value = encode_certificate(record, der);
        let swapped = self
            .certs
            .compare_and_swap(serial, None as Option<&[u8]>, Some(value))
            .map_err(StoreError::from)?;
        if swapped.is_err() {
            return Err(RecordError::SerialTaken);
        }
        for entry in audit {
            self.append_audit(entry)?;
        }
        Ok(())
    }

    fn consume_token(&self, use_: &TokenUse, serial: &str) -> Result<(), RecordError> {
        let current = self
            .tokens
            .get(use_.hash)
            .map_err(StoreError::from)?
            .ok_or(RecordError::Token(TokenRefusal::Unknown))?;
        let mut token: TokenRecord = decode("tokens", &current)?;
        redeemable(&token, use_.now).map_err(RecordError::Token)?;
        token.used_at = Some(use_.now);
        token.used_for_serial = Some(serial.to_owned());
        let swapped = self
            .tokens
            .compare_and_swap(use_.hash, Some(current), Some(encode(&token)))
            .map_err(StoreError::from)?;
        match swapped {
            Ok(()) => Ok(()),
            // Someone redeemed it between our read and our write: report what they left.
            Err(conflict) => {
                let now_used = conflict
                    .current
                    .and_then(|v| decode::<TokenRecord>("tokens", &v).ok())
                    .and_then(|t| t.used_at)
                    .unwrap_or(use_.now);
                Err(RecordError::Token(TokenRefusal::Used { at: now_used }))
            }
        }
    }

    /// A certificate's record and DER, by serial bytes.
    pub fn certificate(&self, serial: &[u8]) -> Result<Option<(CertRecord, Vec<u8>)>, StoreError> {
        self.certs
            .get(serial)?
            .map(|value| decode_certificate(&value))
            .transpose()
    }

    /// Records of every certificate issued to `spiffe_id`.
    pub fn certificates_of(&self, spiffe_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        let prefix = identity_key(spiffe_id, &[]);
        let mut out = Vec::new();
        for key in self.by_identity.scan_prefix(&prefix).keys() {
            let key = key?;
            if let Some(value) = self.certs.get(&key[prefix.len()..])? {
                out.push(decode_certificate(&value)?.0);
            }
        }
        Ok(out)
    }

    /// Visits every certificate record; stop early by returning `false`.
    pub fn for_each_certificate(
        &self,
        mut visit: impl FnMut(CertRecord) -> bool,
    ) -> Result<(), StoreError> {
        for value in self.certs.iter().values() {
            if !visit(decode_certificate(&value?)?.0) {
                break;
            }
        }
        Ok(())
    }

    /// Number of certificates ever issued.
    pub fn certificate_count(&self) -> usize {
        self.certs.len()
    }

    // --- revocations ---

    /// Records a revocation (idempotent: an existing record is kept, and `false` returned).
    pub fn put_revocation(&self, record: &RevocationRecord) -> Result<bool, StoreError> {
        let serial = trellis_identity::hex::decode(&record.serial).unwrap_or_default();
        let swapped = self.revocations.compare_and_swap(
            serial,
            None as Option<&[u8]>,
            Some(encode(record)),
        )?;
        Ok(swapped.is_ok())
    }

    /// The revocation of a certificate, if it was revoked.
    pub fn revocation(&self, serial: &[u8]) -> Result<Option<RevocationRecord>, StoreError> {
        self.revocations
            .get(serial)?
            .map(|v| decode("revocations", &v))
            .transpose()
    }

    /// Every revocation ever recorded.
    pub fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.revocations
            .iter()
            .values()
            .map(|v| decode("revocations", &v?))
            .collect()
    }

    /// Every intermediate ever used.
    pub fn intermediates(&self) -> Result<Vec<IntermediateRecord>, StoreError> {
        self.intermediates
            .iter()
            .values()
            .map(|v| decode("intermediates", &v?))
            .collect()
    }

    // --- audit log ---

    fn next_audit_key(&self) -> Result<[u8; 8], StoreError> {
        // generate_id is monotonic across restarts; +1 so sequences start at 1.
        Ok((self.db.generate_id()? + 1).to_be_bytes())
    }

    /// Appends audit entries outside an issuance.
    pub fn append_audit(&self, entry: &AuditRecord) -> Result<(), StoreError> {
        self.audit.insert(self.next_audit_key()?, encode(entry))?;
        Ok(())
    }

    /// Audit entries with sequence greater than `after`, oldest first, at most `limit`.
    pub fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        self.audit
            .range(start..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                let seq = <[u8; 8]>::try_from(k.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        tree: "audit",
                        reason: "key is not 8 bytes".into(),
                    })?;
                Ok((seq, decode("audit", &v)?))
            })
            .collect()
    }
}

fn redeemable(token: &TokenRecord, now: u64) -> Result<(), TokenRefusal> {
    if let Some(at) = token.used_at {
        return Err(TokenRefusal::Used { at });
    }
    if now >= token.expires_at {
        return Err(TokenRefusal::Expired {
            at: token.expires_at,
        });
    }
    Ok(())
}
