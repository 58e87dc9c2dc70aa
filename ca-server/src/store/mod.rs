//! The CA's durable state in one sled database: issued certificates (by serial, and an index
//! by identity), trust roots, intermediates, join-token hashes, the audit log and metadata.
//!
//! Architecture invariant: a certificate is recorded, and that record flushed to disk, before
//! the reply that carries it is sent. [`Store::record_issuance`] writes every tree an issuance
//! touches in one transaction; [`Store::durable`] then waits for a (shared) fsync.

mod commit;
pub mod records;

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

pub use commit::Committer;
pub use records::{
    AuditRecord, CertRecord, IntermediateRecord, RootRecord, RootState, TokenRecord,
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
    cert_der: sled::Tree,
    by_identity: sled::Tree,
    roots: sled::Tree,
    intermediates: sled::Tree,
    tokens: sled::Tree,
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
            cert_der: tree("cert_der")?,
            by_identity: tree("by_identity")?,
            roots: tree("roots")?,
            intermediates: tree("intermediates")?,
            tokens: tree("tokens")?,
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

    /// Records an issued certificate, its index entry and audit entries, and consumes the
    /// join token if one is given, all in one transaction. Call [`Store::durable`] after.
    pub fn record_issuance(
        &self,
        record: &CertRecord,
        der: &[u8],
        serial: &[u8],
        token: Option<TokenUse>,
        audit: &[AuditRecord],
    ) -> Result<(), RecordError> {
        let meta = encode(record);
        let index_key = identity_key(&record.spiffe_id, serial);
        let mut audit_entries = Vec::with_capacity(audit.len());
        for entry in audit {
            audit_entries.push((self.next_audit_key()?, encode(entry)));
        }
        let result = (
            &self.certs,
            &self.cert_der,
            &self.by_identity,
            &self.tokens,
            &self.audit,
        )
            .transaction(|(certs, cert_der, by_identity, tokens, audit_tree)| {
                if certs.get(serial)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(
                        RecordError::SerialTaken,
                    ));
                }
                if let Some(use_) = token {
                    let abort = |e| ConflictableTransactionError::Abort(e);
                    let bytes = tokens
                        .get(use_.hash)?
                        .ok_or_else(|| abort(RecordError::Token(TokenRefusal::Unknown)))?;
                    let mut tok: TokenRecord =
                        decode("tokens", &bytes).map_err(|e| abort(RecordError::Store(e)))?;
                    redeemable(&tok, use_.now).map_err(|r| abort(RecordError::Token(r)))?;
                    tok.used_at = Some(use_.now);
                    tok.used_for_serial = Some(record.serial.clone());
                    tokens.insert(&use_.hash, encode(&tok))?;
                }
                certs.insert(serial, meta.as_slice())?;
                cert_der.insert(serial, der)?;
                by_identity.insert(index_key.as_slice(), &[])?;
                for (key, value) in &audit_entries {
                    audit_tree.insert(key, value.as_slice())?;
                }
                Ok(())
            });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => RecordError::Store(e.into()),
        })
    }

    /// A certificate's record and DER, by serial bytes.
    pub fn certificate(&self, serial: &[u8]) -> Result<Option<(CertRecord, Vec<u8>)>, StoreError> {
        let Some(meta) = self.certs.get(serial)? else {
            return Ok(None);
        };
        let der = self
            .cert_der
            .get(serial)?
            .ok_or_else(|| StoreError::Corrupt {
                tree: "cert_der",
                reason: format!(
                    "no DER for serial {}",
                    trellis_identity::hex::encode(serial)
                ),
            })?;
        Ok(Some((decode("certs", &meta)?, der.to_vec())))
    }

    /// Records of every certificate issued to `spiffe_id`.
    pub fn certificates_of(&self, spiffe_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        let prefix = identity_key(spiffe_id, &[]);
        let mut out = Vec::new();
        for key in self.by_identity.scan_prefix(&prefix).keys() {
            let key = key?;
            if let Some(meta) = self.certs.get(&key[prefix.len()..])? {
                out.push(decode("certs", &meta)?);
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
            if !visit(decode("certs", &value?)?) {
                break;
            }
        }
        Ok(())
    }

    /// Number of certificates ever issued.
    pub fn certificate_count(&self) -> usize {
        self.certs.len()
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
