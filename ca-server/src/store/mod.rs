//! What the CA needs from storage, as one interface: [`Store`]. The CA holds an
//! `Arc<dyn Store>` and nothing else of its storage; the embedded default is sled
//! ([`sled::SledStore`]), the shared one for several replicas PostgreSQL
//! ([`postgres::PostgresStore`]), either opened by [`open`].
//!
//! Architecture invariant: a certificate is recorded, and that record durable, before the
//! reply that carries it is sent. A writer takes a [`Store::mark`], writes, then awaits
//! [`Store::durable`] with the mark; an implementation whose writes are durable when they
//! return (a SQL transaction that committed) answers at once.
//!
//! Every invariant that spans records is one call, so that an implementation can make it
//! one transaction: [`Store::record_issuance`] consumes the join token, records the
//! certificate under a serial never used before, counts it and appends its audit entries;
//! it does all of that or nothing an acknowledgement could depend on.
//!
//! The interface is in the CA's terms (serial numbers, SPIFFE IDs, expiry instants, opaque
//! page tokens), never in an implementation's (trees, keys, transactions), and its errors are
//! [`StoreError`]s whose [`ErrorKind`] says what a caller can do: nothing found, a conflict
//! with what is stored, retry later, or damaged data.
//!
//! Methods are synchronous and may block on I/O: reads that walk many records (the census,
//! listings, pruning) are called off the async workers (`crate::state::off_runtime`); single
//! writes are expected to be cheap (sled applies them in memory) and the wait for the disk
//! is [`Store::durable`], which is async and shared by concurrent writers (group commit).

mod failure;
pub mod postgres;
pub mod records;
pub mod sled;

#[cfg(test)]
pub(crate) mod conformance;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use trellis_identity::audit_log::{ChainedEntry, Checkpoint, Head};

pub use failure::{Cause, Failure};
pub use records::{
    AuditRecord, CertRecord, FederationRecord, IntermediateRecord, JwtKeyRecord, RevocationRecord,
    RootRecord, RootState, TokenRecord,
};

/// Which store the CA keeps its state in.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    /// The embedded sled database in the data directory (the default).
    #[default]
    Sled,
    /// A PostgreSQL database that any number of CA replicas share.
    Postgres(Box<postgres::PostgresConfig>),
}

impl StoreConfig {
    /// Where the store is, for messages: the sled directory, or the database's name.
    pub fn location(&self, sled_dir: &Path) -> String {
        match self {
            Self::Sled => format!("in {}", sled_dir.display()),
            Self::Postgres(config) => format!("PostgreSQL {}", config.name()),
        }
    }
}

/// Opens (creating if needed) the embedded store in `dir`. Needs a tokio runtime (for the
/// group-commit task and for reopening after a write failure).
pub fn open(dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(sled::SledStore::open(dir)?))
}

/// Opens the configured store: sled in `sled_dir` ([`open`]), or a PostgreSQL database
/// (its schema created or migrated first).
pub fn open_configured(
    config: &StoreConfig,
    sled_dir: &Path,
) -> Result<Arc<dyn Store>, StoreError> {
    match config {
        StoreConfig::Sled => open(sled_dir),
        StoreConfig::Postgres(config) => Ok(Arc::new(postgres::PostgresStore::open(config)?)),
    }
}

/// A future a [`Store`] returns (boxed, so that the trait can be used as `dyn Store`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a caller can do about a [`StoreError`] or a [`RecordError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// What the request named is not stored (an unknown join token).
    NotFound,
    /// The write contradicts what is stored (a serial already used, a join token already
    /// used or expired); retrying the same write cannot succeed.
    Conflict,
    /// The caller passed something the store never produced (a page token of another
    /// listing).
    Invalid,
    /// The store cannot serve now (disk full, read-only, connection lost, reopened while
    /// the write was in flight); nothing was acknowledged, a retry later may succeed.
    Unavailable,
    /// Stored data cannot be read back; it needs an operator (restore from a backup).
    Corrupt,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The storage cannot write (disk full, read-only, I/O error) and is being reopened.
    #[error("{0}")]
    Unavailable(Failure),
    /// A transient failure other than the disk's (says what to do).
    #[error("{0}")]
    Retry(String),
    /// A failure of the storage engine that is neither the disk's nor the data's.
    #[error("storage: {0}")]
    Storage(String),
    /// A page token that this listing did not return.
    #[error("page token {0:?} is not one this listing returned")]
    BadPageToken(String),
    /// A stored record that does not decode.
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// The storage's own files cannot be read (unfinished snapshots, which an interrupted
    /// start leaves, are removed before opening, so this is real damage).
    #[error(
        "the database in {dir} is damaged and cannot be opened ({detail}); restore that \
         directory from a backup of the data directory"
    )]
    Damaged {
        dir: std::path::PathBuf,
        detail: String,
    },
}

impl StoreError {
    /// What a caller can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable(_) | Self::Retry(_) | Self::Storage(_) => ErrorKind::Unavailable,
            Self::BadPageToken(_) => ErrorKind::Invalid,
            Self::Corrupt { .. } | Self::Damaged { .. } => ErrorKind::Corrupt,
        }
    }
}

/// Why an issuance could not be recorded. Nothing was written in every case.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("serial number already used")]
    SerialTaken,
    #[error("join token refused: {0}")]
    Token(TokenRefusal),
    /// The certificate a renewal presented is revoked ([`Store::record_renewal`]).
    #[error("the certificate presented for renewal is revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RecordError {
    /// What a caller can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::SerialTaken => ErrorKind::Conflict,
            Self::Token(TokenRefusal::Unknown) => ErrorKind::NotFound,
            Self::Token(_) | Self::Revoked => ErrorKind::Conflict,
            Self::Store(e) => e.kind(),
        }
    }
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

/// Whether `token` can be redeemed at `now`.
pub fn redeemable(token: &TokenRecord, now: u64) -> Result<(), TokenRefusal> {
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

/// A token to consume as part of an issuance.
#[derive(Debug, Clone, Copy)]
pub struct TokenUse {
    /// The SHA-256 of the token's secret.
    pub hash: [u8; 32],
    pub now: u64,
}

/// Held while a CA starts up; see [`Store::start_up_guard`].
pub struct StartUpGuard(pub Box<dyn Send>);

impl std::fmt::Debug for StartUpGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartUpGuard")
    }
}

/// Held while a CA changes the trust bundle; see [`Store::bundle_change_guard`].
pub struct BundleChangeGuard(pub Box<dyn Send>);

impl std::fmt::Debug for BundleChangeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BundleChangeGuard")
    }
}

/// Where the writes that follow it go; see [`Store::durable`]. An implementation without
/// generations returns any value and ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(pub u64);

/// Records that change together, written by [`Store::apply`] as one unit: the CA's
/// initialisation or a step of root or JWT-key rotation (the roots or keys, the signing
/// intermediate, the bundle version that publishes them and the audit entries that record
/// it). Roots, keys, intermediates and the bundle version are written only this way.
#[derive(Debug, Default)]
pub struct Change {
    /// Roots to insert or replace.
    pub roots: Vec<RootRecord>,
    /// JWT-SVID keys to insert or replace.
    pub jwt_keys: Vec<JwtKeyRecord>,
    /// An intermediate to insert and make the signing one.
    pub intermediate: Option<IntermediateRecord>,
    /// Federations to insert or replace (a federated bundle given, fetched, or failing).
    pub federations: Vec<FederationRecord>,
    /// Trust domains whose federation ends.
    pub removed_federations: Vec<String>,
    /// The new trust-bundle version.
    pub bundle_version: Option<u64>,
    /// Audit entries to append, in order.
    pub audit: Vec<AuditRecord>,
}

/// Which certificates a listing walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing<'a> {
    /// Ordered by SPIFFE ID then serial (for a store with an archive: those unexpired at
    /// `now` so, then those expired by then in expiry order, archived or not, so that one
    /// moved while the listing runs is listed once); only those of one SPIFFE ID if given.
    ByIdentity {
        spiffe_id: Option<&'a str>,
        /// Whether expired ones are wanted: if not (the filter refuses them), a store need
        /// not read its archive of expired certificates.
        expired: bool,
        /// When the listing begins (Unix seconds); later pages keep the first page's.
        now: u64,
    },
    /// Those unexpired at `now` that expire at or before `until` (all unexpired if `None`),
    /// ordered by expiry.
    Expiring { now: u64, until: Option<u64> },
}

/// What an embedded store's files hold ([`Store::local_files`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalFiles {
    /// The database's log, which every start reads (`None` while it is being reopened).
    pub log_bytes: Option<u64>,
    /// Copies of the database into a fresh folder since start (compactions), and those
    /// that failed.
    pub compactions: u64,
    pub failed_compactions: u64,
}

/// Where a listing goes on: opaque to the caller, who hands it back unchanged (it travels
/// to clients as a gRPC page token, so it is text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken(pub String);

/// A page of [`Store::certificates_page`].
#[derive(Debug, Default)]
pub struct CertPage {
    /// The records and their DER, in the listing's order.
    pub certificates: Vec<(CertRecord, Vec<u8>)>,
    /// Where to continue, if the listing may go on.
    pub next: Option<PageToken>,
}

/// The CA's durable state: everything the CA keeps across restarts goes through this.
pub trait Store: Send + Sync + std::fmt::Debug {
    // --- durability ---

    /// Take this before writing; pass it to [`Store::durable`] after.
    fn mark(&self) -> Mark;

    /// Resolves once every write made since `mark` is durable (one wait shared by
    /// concurrent callers). Fails if those writes may have been lost (the storage was
    /// reopened after a write failure since the mark): nothing may be acknowledged then.
    fn durable(&self, mark: Mark) -> StoreFuture<'_, Result<(), StoreError>>;

    /// Makes every write so far durable, blocking (start-up and shutdown).
    fn flush_now(&self) -> Result<(), StoreError>;

    /// Why the store cannot write right now, if it cannot.
    fn failure(&self) -> Option<Failure>;

    /// Group commits so far (sled: flushes of the disk; PostgreSQL: issuance batches, each
    /// one transaction); with the number of certificates issued it tells how many writers
    /// one commit covers.
    fn flushes(&self) -> u64;

    /// The store's own files on this host, for `/metrics`: `None` where the data lives
    /// elsewhere (PostgreSQL).
    fn local_files(&self) -> Option<LocalFiles> {
        None
    }

    /// Keeps every other CA sharing this store out of its start-up (the check whether the
    /// CA is initialised, and its initialisation) until the guard is dropped, so that
    /// replicas starting at once on an empty database initialise it once. A store only one
    /// CA opens (sled locks its directory) needs nothing.
    fn start_up_guard(&self) -> Result<StartUpGuard, StoreError> {
        Ok(StartUpGuard(Box::new(())))
    }

    /// Waits until no other CA sharing the store is changing the trust bundle, and keeps
    /// them waiting until the guard is dropped, so that replicas changing it at once never
    /// give two bundles one version. A store only one CA opens needs nothing.
    fn bundle_change_guard(&self) -> Result<BundleChangeGuard, StoreError> {
        Ok(BundleChangeGuard(Box::new(())))
    }

    // --- metadata ---

    /// The trust domain this store belongs to, if initialised.
    fn trust_domain(&self) -> Result<Option<String>, StoreError>;
    /// Records the trust domain (once, at initialisation).
    fn set_trust_domain(&self, td: &str) -> Result<(), StoreError>;
    /// The trust-bundle version (0 before initialisation).
    fn bundle_version(&self) -> Result<u64, StoreError>;
    /// The number of the last CRL intermediate `id` signed (0 before its first).
    fn crl_number(&self, id: &str) -> Result<u64, StoreError>;
    /// Records the number of the CRL intermediate `id` is about to sign.
    fn set_crl_number(&self, id: &str, number: u64) -> Result<(), StoreError>;
    /// Takes the number of intermediate `id`'s next CRL: `at_least`, or one more than the
    /// last number taken if that is not above it, so numbers increase strictly per issuer.
    /// A store that several CAs share takes it atomically (two replicas never sign two
    /// CRLs under one number); the default reads then writes, which suffices for a store
    /// one process owns and whose callers take numbers one at a time.
    fn next_crl_number(&self, id: &str, at_least: u64) -> Result<u64, StoreError> {
        let number = at_least.max(self.crl_number(id)?.saturating_add(1));
        self.set_crl_number(id, number)?;
        Ok(number)
    }

    // --- roots and intermediates ---

    /// Every root, in id order.
    fn roots(&self) -> Result<Vec<RootRecord>, StoreError>;
    /// Writes every record of `change` as one unit (an implementation with transactions
    /// makes it one); in the order roots, JWT keys, intermediate, bundle version, audit
    /// entries, so that without transactions a prefix of it is what a crash can leave.
    fn apply(&self, change: &Change) -> Result<(), StoreError>;
    /// The signing intermediate, if the CA is initialised.
    fn active_intermediate(&self) -> Result<Option<IntermediateRecord>, StoreError>;
    /// Every intermediate ever used, in id order.
    fn intermediates(&self) -> Result<Vec<IntermediateRecord>, StoreError>;

    // --- join tokens ---

    /// Stores a new token under the hash of its secret, with the audit entry of its creation.
    fn create_token(
        &self,
        hash: &[u8; 32],
        token: &TokenRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;
    /// Looks a token up by hash, checking it is redeemable at `now` (read only; only
    /// [`Store::record_issuance`] consumes it).
    fn check_token(&self, hash: &[u8; 32], now: u64) -> Result<TokenRecord, RecordError>;

    // --- certificates ---

    /// Records an issued certificate (`serial` is its serial's bytes, `record.serial` their
    /// hex), in one step: consumes the join token if one is given (exactly once, whatever
    /// the concurrency), refuses a serial already recorded, indexes the certificate by
    /// identity and expiry, counts it (issued total, live by root) and appends `audit`.
    /// On an error nothing was recorded that a later call could see, except that a token
    /// may be consumed if the storage failed part-way (it fails closed).
    fn record_issuance(
        &self,
        record: &CertRecord,
        der: &[u8],
        serial: &[u8],
        token: Option<TokenUse>,
        audit: &[AuditRecord],
    ) -> Result<(), RecordError>;

    /// [`Store::record_issuance`] of a renewal, refused with [`RecordError::Revoked`] if
    /// `renewing` (the serial bytes of the certificate presented) is revoked. The check and
    /// the write are as close together as the store can make them; a store shared by
    /// replicas makes them one step, so that a renewal never slips past a revocation
    /// recorded at the same moment through another replica.
    fn record_renewal(
        &self,
        record: &CertRecord,
        der: &[u8],
        serial: &[u8],
        renewing: &[u8],
        audit: &[AuditRecord],
    ) -> Result<(), RecordError> {
        if self.revocation(renewing)?.is_some() {
            return Err(RecordError::Revoked);
        }
        self.record_issuance(record, der, serial, None, audit)
    }

    /// A certificate's record and DER, by serial.
    fn certificate(&self, serial: &[u8]) -> Result<Option<(CertRecord, Vec<u8>)>, StoreError>;

    /// Records of every certificate kept for `spiffe_id` (expired ones until retention
    /// removes them or [`Store::archive_expired`] moves them), in serial order.
    fn certificates_of(&self, spiffe_id: &str) -> Result<Vec<CertRecord>, StoreError>;

    /// One page of `listing`, continuing after `after` (the [`CertPage::next`] of the page
    /// before): at most `max` records that `keep` accepts, reading at most `scan` records,
    /// so that a filter that rejects most costs one page's work (the page is then short, or
    /// empty, with a `next`). Records inserted between pages appear if they sort after the
    /// cursor; none is listed twice. An Expiring cursor that time has overtaken starts again
    /// from `now`. A token another listing returned is [`StoreError::BadPageToken`].
    fn certificates_page(
        &self,
        listing: Listing<'_>,
        after: Option<&PageToken>,
        max: usize,
        scan: usize,
        keep: &dyn Fn(&CertRecord) -> bool,
    ) -> Result<CertPage, StoreError>;

    /// Visits every certificate unexpired at `now` (revoked ones included), in expiry
    /// order: O(live), whatever the history.
    fn for_each_live(&self, now: u64, visit: &mut dyn FnMut(CertRecord)) -> Result<(), StoreError>;

    /// Visits every certificate record kept until `visit` returns false; O(history), for
    /// tools and tests only.
    fn for_each_certificate(
        &self,
        visit: &mut dyn FnMut(CertRecord) -> bool,
    ) -> Result<(), StoreError>;

    /// Counts the certificates live at `now` (O(live)); until this runs, [`Store::live_by_root`]
    /// is unknown. Call it once, before serving.
    fn start_counting(&self, now: u64) -> Result<(), StoreError>;

    /// Certificates ever recorded, pruned ones included, kept durably across restarts
    /// (`None` while the store is unavailable). Never a scan.
    fn issued_total(&self) -> Option<u64>;

    /// Certificates unexpired at `now`, by root (`None` before [`Store::start_counting`] or
    /// while the store is unavailable). Never a scan of the history.
    fn live_by_root(&self, now: u64) -> Option<BTreeMap<String, u64>>;

    /// Removes up to `max` certificates that expired at or before `through`, with their
    /// index entries and revocation records; returns how many. Call it again while it
    /// returns `max`. Never removes what the live counts still count.
    fn prune_expired(&self, through: u64, max: usize) -> Result<usize, StoreError>;

    /// Moves up to `max` certificates expired at or before `through` (never what the live
    /// counts still count), then audit entries recorded by then (never the newest), out of
    /// what the store reads at start-up, into archives that only listings with expired
    /// certificates, audit reads and retention read; returns how many moved. Call it again
    /// while it returns `max`. Archived certificates are no longer found by serial
    /// ([`Store::certificate`]). Stores whose start-up does not depend on their size
    /// (PostgreSQL) keep everything in place: the default moves nothing.
    fn archive_expired(&self, _through: u64, _max: usize) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Certificate records [`Store::prune_expired`] removed since this store was opened.
    fn pruned_total(&self) -> u64;

    // --- revocations ---

    /// Records a revocation with its audit entry. Idempotent: a certificate already revoked
    /// keeps its first record, gets no second entry, and `false` is returned.
    fn revoke(&self, record: &RevocationRecord, audit: &AuditRecord) -> Result<bool, StoreError>;
    /// The revocation of a certificate, if it was revoked.
    fn revocation(&self, serial: &[u8]) -> Result<Option<RevocationRecord>, StoreError>;
    /// Every revocation kept (retention removes those of removed certificates).
    fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError>;
    /// A value that changes whenever a revocation is recorded or removed, cheaper to read
    /// than [`Store::revocations`]: what a replica polls to notice others' revocations. The
    /// default is the count and the newest revocation time.
    fn revocations_marker(&self) -> Result<(u64, u64), StoreError> {
        let all = self.revocations()?;
        let newest = all.iter().map(|r| r.revoked_at).max().unwrap_or(0);
        Ok((all.len() as u64, newest))
    }

    /// Counts the changes other CAs sharing the store announced (revocations, bundle,
    /// signing keys), for a follower to wake on at once; `None` if the store cannot tell,
    /// and then the follower's periodic check alone finds them.
    fn announced_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    // --- bundle acknowledgements ---

    /// Records that `spiffe_id` acknowledged bundle `version` at `at` (Unix seconds),
    /// replacing its earlier acknowledgement.
    fn put_ack(&self, spiffe_id: &str, version: u64, at: u64) -> Result<(), StoreError>;
    /// Every identity's last acknowledgement: (SPIFFE ID, version, when), by SPIFFE ID.
    fn acks(&self) -> Result<Vec<(String, u64, u64)>, StoreError>;

    // --- audit log ---

    /// Appends an audit entry outside an issuance (chained after the head).
    fn append_audit(&self, entry: &AuditRecord) -> Result<(), StoreError>;
    /// The current head of the chain (what a checkpoint signs).
    fn audit_chain_head(&self) -> Result<Head, StoreError>;
    /// Audit values with sequence greater than `after` exactly as stored, oldest first, at
    /// most `limit`, for a verifier that must see damaged entries too.
    fn audit_raw_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Records a signed checkpoint.
    fn put_audit_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;
    /// Checkpoints at entries after `after`, oldest first, at most `limit`.
    fn audit_checkpoints_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Checkpoint>, StoreError>;
    /// The newest checkpoint, if any.
    fn latest_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;
    /// Removes the oldest entries recorded before `cutoff` (Unix seconds), only up to a
    /// checkpoint that stays as the start of what remains, and never the newest entry; at
    /// most `max_batches` batches. Returns how many entries were removed.
    fn prune_audit(&self, cutoff: u64, max_batches: usize) -> Result<u64, StoreError>;

    /// Audit entries with sequence greater than `after` with their links, oldest first, at
    /// most `limit`. A value too short for its links is reported as corrupt.
    fn audit_chain_after(&self, after: u64, limit: usize) -> Result<Vec<ChainedEntry>, StoreError> {
        self.audit_raw_after(after, limit)?
            .into_iter()
            .map(|(sequence, value)| decode_audit_entry(sequence, &value))
            .collect()
    }

    /// Audit entries with sequence greater than `after`, oldest first, at most `limit`,
    /// decoded.
    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        self.audit_chain_after(after, limit)?
            .into_iter()
            .map(|entry| Ok((entry.sequence, decode("audit", &entry.body)?)))
            .collect()
    }

    // --- JWT-SVID keys ---

    /// Every JWT-SVID key, in the order they were added.
    fn jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError>;

    // --- federation ---

    /// Every federation, by trust domain (written through [`Store::apply`]).
    fn federations(&self) -> Result<Vec<FederationRecord>, StoreError>;
    /// One federation.
    fn federation(&self, trust_domain: &str) -> Result<Option<FederationRecord>, StoreError>;

    // --- the CA's private keys, sealed (`crate::keys`) ---

    /// Stores sealed key `name` unless one of that name is stored; `false` if one was (a
    /// sealed key is written once, never replaced). Only stores that several replicas
    /// share keep keys; the others keep them as files and refuse this.
    fn put_sealed_key(&self, name: &str, sealed: &[u8]) -> Result<bool, StoreError> {
        let _ = (name, sealed);
        Err(StoreError::Storage(
            "this store keeps no keys: they are files in <data>/keys/".into(),
        ))
    }
    /// The sealed key `name`, if stored.
    fn sealed_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = name;
        Err(StoreError::Storage(
            "this store keeps no keys: they are files in <data>/keys/".into(),
        ))
    }
}

/// Records as every implementation stores them: JSON.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records are plain data and always serialise")
}

/// Decodes a record of `table`.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        reason: e.to_string(),
    })
}

/// A stored audit entry with its links; a value too short for them is corrupt, named by
/// sequence.
pub(crate) fn decode_audit_entry(sequence: u64, value: &[u8]) -> Result<ChainedEntry, StoreError> {
    ChainedEntry::decode(sequence, value).ok_or_else(|| StoreError::Corrupt {
        table: "audit",
        reason: format!("entry {sequence} is shorter than its two hashes"),
    })
}
