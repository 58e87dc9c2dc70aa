//! The embedded store: [`SledStore`], the CA's durable state in one sled database
//! (issued certificates by serial, indexes by identity and by expiry, roots, intermediates,
//! join-token hashes, revocations, acknowledgements, the audit log and metadata). Nothing
//! outside this folder names sled.
//!
//! Why no sled transactions: in sled 0.34 a transaction (or `apply_batch`) takes a
//! process-wide write lock that serialises every other operation; plain `insert` and
//! `compare_and_swap` do not. So an issuance is a short sequence of single-key atomic writes,
//! ordered so that any prefix of it (all a crash can leave, since every tree shares one
//! ordered log, and nothing is acknowledged before the flush) is harmless:
//! 1. consume the join token (`compare_and_swap` on its record: single use is atomic);
//! 2. write the identity index entry (an entry without a certificate is skipped on read);
//! 3. write the expiry index entry (`index.rs`; one without a certificate is removed at
//!    start-up if unexpired, by retention otherwise);
//! 4. write the certificate, meta and DER in one value, with `compare_and_swap` from
//!    absent, which is also what guarantees a serial is never used twice;
//! 5. increment `issued_total` (one short after a crash here, for an issuance that was
//!    never acknowledged);
//! 6. append the audit entries.
//!
//! A crash after step 1 burns the token without a certificate: it fails closed.
//!
//! Durability is group commit (`commit.rs`): [`Store::durable`] waits for a shared flush
//! that started after the write. A full or read-only disk is the same as a crash for what
//! was not yet flushed: the failed database is closed and reopened (`live.rs`), and nothing
//! written to it since the last good flush is acknowledged.
//!
//! Nothing that a request or a scrape reads scans the history: the census, "expiring
//! within" and retention walk the expiry index from "now" or up to a cut-off, and the
//! counters are kept as they change (`index.rs`). Retention removes expired records in
//! small batches, index entries last.
//!
//! Nor does opening the store: expired certificates and old audit entries move to archive
//! files (`history.rs`, `audit_history.rs`), so sled's log stays near the live data; where
//! it has grown well past it, a checkpoint copies the database into a fresh folder
//! (`compact.rs`).

mod archive;
#[cfg(test)]
mod archive_tests;
mod audit;
mod audit_history;
mod batch_file;
mod catalogue;
mod checkpoint;
mod commit;
mod compact;
#[cfg(test)]
mod compact_tests;
mod federation;
mod history;
mod index;
#[cfg(test)]
mod index_tests;
mod jwt_keys;
mod live;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use trellis_identity::audit_log::{Checkpoint, Head};
use trellis_identity::hex;

use super::{
    AuditRecord, CertPage, CertRecord, Change, Failure, FederationRecord, IntermediateRecord,
    JwtKeyRecord, Listing, Mark, PageToken, RecordError, RevocationRecord, RootRecord, Store,
    StoreError, StoreFuture, TokenRecord, TokenRefusal, TokenUse, decode, encode, redeemable,
};
use commit::Committer;

/// Where an index key keeps the certificate's serial.
type SerialOf<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>, StoreError>;

const META_TRUST_DOMAIN: &[u8] = b"trust_domain";
const META_BUNDLE_VERSION: &[u8] = b"bundle_version";
const META_ACTIVE_INTERMEDIATE: &[u8] = b"active_intermediate";
/// Followed by an intermediate's id: the number of the last CRL it signed.
const META_CRL_NUMBER: &str = "crl_number/";

/// A page as an index yields it: the records, and the index key to continue after.
#[derive(Debug, Default)]
struct KeyPage {
    certificates: Vec<(CertRecord, Vec<u8>)>,
    next: Option<Vec<u8>>,
}

/// The archives' folders, inside the database's (sled leaves names it does not use alone).
const HISTORY_DIR: &str = "history";
const AUDIT_HISTORY_DIR: &str = "audit-history";

/// What starts a page token of the expiry index (no token of the identity index, which is
/// hex, does).
const EXPIRY_TOKEN: &str = "x";

/// The CA's store in a sled database.
#[derive(Debug)]
pub struct SledStore {
    live: Arc<live::Live>,
    committer: Committer,
    counters: Arc<index::Counters>,
    /// Certificates expired for a while, out of the database (`history.rs`).
    history: history::History,
    /// Audit entries recorded a while ago, out of the database (`audit_history.rs`).
    audit_history: audit_history::AuditHistory,
    /// Held by archiving and pruning: a record between the archive and its removal from the
    /// database must not be pruned (and counted) in both places.
    moving: std::sync::Mutex<()>,
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
        table: "certs",
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

impl SledStore {
    /// Opens (creating if needed) the database in `dir`. Needs a tokio runtime (for the
    /// group-commit task and for reopening after a write failure).
    /// A database written before the expiry index existed gets it here (once, O(history)).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_checkpointing(
            dir,
            checkpoint::CHECKPOINT_EVERY,
            compact::CompactWhen::DEFAULT,
        )
    }

    /// [`SledStore::open`], with a checkpoint (`checkpoint.rs`) after every `every`
    /// certificates, which compacts (`compact.rs`) as `compact_when` says.
    fn open_checkpointing(
        dir: &Path,
        every: u64,
        compact_when: compact::CompactWhen,
    ) -> Result<Self, StoreError> {
        let store = Self {
            live: live::Live::open(dir, every, compact_when)?,
            committer: Committer::start(),
            counters: Arc::default(),
            history: history::History::open(dir.join(HISTORY_DIR))?,
            audit_history: audit_history::AuditHistory::open(dir.join(AUDIT_HISTORY_DIR))?,
            moving: std::sync::Mutex::default(),
        };
        let t = store.trees()?;
        index::build_if_missing(&t).map_err(store.err(&t))?;
        Ok(store)
    }

    /// The current opening of the database (or why there is none).
    fn trees(&self) -> Result<Arc<live::Trees>, StoreError> {
        self.live.trees()
    }

    /// Every record of the table `tree` picks, decoded, in key order.
    fn all<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        tree: impl Fn(&live::Trees) -> &sled::Tree,
    ) -> Result<Vec<T>, StoreError> {
        let t = self.trees()?;
        tree(&t)
            .iter()
            .values()
            .map(|v| decode(table, &v.map_err(self.err(&t))?))
            .collect()
    }

    /// Maps an error of `trees`'s generation; an I/O error starts a reopen.
    fn err<'a>(&'a self, trees: &live::Trees) -> impl Fn(sled::Error) -> StoreError + 'a {
        let generation = trees.generation;
        move |e| self.live.fail(generation, e)
    }

    fn consume_token(
        &self,
        t: &live::Trees,
        use_: &TokenUse,
        serial: &str,
    ) -> Result<(), RecordError> {
        let current = t
            .tokens
            .get(use_.hash)
            .map_err(self.err(t))?
            .ok_or(RecordError::Token(TokenRefusal::Unknown))?;
        let mut token: TokenRecord = decode("tokens", &current)?;
        redeemable(&token, use_.now).map_err(RecordError::Token)?;
        token.used_at = Some(use_.now);
        token.used_for_serial = Some(serial.to_owned());
        let swapped = t
            .tokens
            .compare_and_swap(use_.hash, Some(current), Some(encode(&token)))
            .map_err(self.err(t))?;
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

    /// One page of certificates in index order (SPIFFE ID, then serial): those under
    /// `prefix` (of [`identity_key`], or empty for all) whose index key comes after
    /// `after` (the `next` of the page before), at most `max` of those `keep`
    /// accepts. At most `scan` index entries are read, so a filter that rejects most records
    /// still costs one page's work: the page may then be short, or empty, with a `next`.
    fn identity_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        max: usize,
        scan: usize,
        keep: &dyn Fn(&CertRecord) -> bool,
    ) -> Result<KeyPage, StoreError> {
        let t = self.trees()?;
        let err = self.err(&t);
        let start = match after {
            Some(key) => Bound::Excluded(key.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let keys = t
            .by_identity
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .map(|entry| entry.map(|(key, _)| key).map_err(&err))
            .take_while(|key| key.as_ref().map_or(true, |k| k.starts_with(prefix)));
        // An index key is the SPIFFE ID (which has no NUL), a NUL, the serial.
        let serial_of = |key: &[u8]| -> Result<Vec<u8>, StoreError> {
            key.iter()
                .position(|&b| b == 0)
                .map(|nul| key[nul + 1..].to_vec())
                .ok_or_else(|| StoreError::Corrupt {
                    table: "by_identity",
                    reason: "key without a NUL after the SPIFFE ID".into(),
                })
        };
        self.page_of(&t, keys, &serial_of, max, scan, keep)
    }

    /// One page of the certificates unexpired at `now` that expire at or before `until`
    /// (all unexpired if `None`), in expiry order, after the [`KeyPage::next`] of the
    /// page before; `max` and `scan` as in [`Store::certificates_page`].
    fn expiring_page(
        &self,
        now: u64,
        until: Option<u64>,
        after: Option<&[u8]>,
        max: usize,
        scan: usize,
        keep: &dyn Fn(&CertRecord) -> bool,
    ) -> Result<KeyPage, StoreError> {
        let t = self.trees()?;
        let err = self.err(&t);
        // A cursor that time has overtaken starts again from now (what it skips expired).
        let start = match (after, index::live_from(now)) {
            (Some(key), Bound::Included(floor)) if key >= floor.as_slice() => {
                Bound::Excluded(key.to_vec())
            }
            (_, floor) => floor,
        };
        let end = until.map_or(Bound::Unbounded, index::expired_until);
        let keys = t
            .by_expiry
            .range::<Vec<u8>, _>((start, end))
            .map(|entry| entry.map(|(key, _)| key).map_err(&err));
        let serial_of = |key: &[u8]| index::split_key(key).map(|(_, serial)| serial.to_vec());
        self.page_of(&t, keys, &serial_of, max, scan, keep)
    }

    /// Reads index `keys` in order into a page: each one's certificate (an index entry
    /// without its certificate is what a crash between the two writes leaves, see the
    /// module docs, and is skipped), at most `max` that `keep` accepts, at most `scan` keys.
    fn page_of(
        &self,
        t: &live::Trees,
        keys: impl Iterator<Item = Result<sled::IVec, StoreError>>,
        serial_of: SerialOf<'_>,
        max: usize,
        scan: usize,
        keep: &dyn Fn(&CertRecord) -> bool,
    ) -> Result<KeyPage, StoreError> {
        let err = self.err(t);
        let mut page = KeyPage::default();
        for (scanned, key) in keys.enumerate() {
            let key = key?;
            let serial = serial_of(&key)?;
            if let Some(value) = t.certs.get(serial.as_slice()).map_err(&err)? {
                let (record, der) = decode_certificate(&value)?;
                if keep(&record) {
                    page.certificates.push((record, der));
                }
            }
            if page.certificates.len() >= max || scanned + 1 >= scan {
                page.next = Some(key.to_vec());
                return Ok(page);
            }
        }
        Ok(page)
    }
}

impl Store for SledStore {
    /// Counts the certificates live at `now` (O(live)); until this runs, the live counts
    /// are unknown. Call it once, before serving: a certificate recorded while it runs may
    /// be counted twice.
    fn start_counting(&self, now: u64) -> Result<(), StoreError> {
        let t = self.trees()?;
        self.counters.start(&t, now).map_err(self.err(&t))
    }

    /// Group-commit flushes so far (see [`Committer::flushes`]).
    fn flushes(&self) -> u64 {
        self.committer.flushes()
    }

    fn local_files(&self) -> Option<crate::store::LocalFiles> {
        let (compactions, failed_compactions) = self.live.compaction_counts();
        Some(crate::store::LocalFiles {
            log_bytes: self.live.log_len_now(),
            compactions,
            failed_compactions,
        })
    }

    /// Take this before writing; pass it to [`Store::durable`] after.
    fn mark(&self) -> Mark {
        self.live.mark()
    }

    /// Waits until every write made since `mark` is on disk (shared with concurrent
    /// callers: group commit). Fails if the database was reopened after a write failure
    /// since the mark: those writes may be lost. Checkpoints in between are no reason:
    /// each flushed its generation as it closed it.
    fn durable(&self, mark: Mark) -> StoreFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let trees = self.trees()?;
            if !self.live.closed_clean_between(mark.0, trees.generation) {
                return Err(StoreError::Retry(
                    "the database was reopened after a write failure while this request was \
                     being recorded; nothing was acknowledged, retry"
                        .into(),
                ));
            }
            self.committer
                .durable(trees.generation, trees.flushable())
                .await
                .map_err(self.err(&trees))
        })
    }

    /// Flushes synchronously (start-up and shutdown paths).
    fn flush_now(&self) -> Result<(), StoreError> {
        let trees = self.trees()?;
        trees.flushable().flush().map_err(self.err(&trees))?;
        Ok(())
    }

    /// Why the database cannot write right now, if it cannot.
    fn failure(&self) -> Option<Failure> {
        match self.trees() {
            Err(StoreError::Unavailable(failure)) => Some(failure),
            _ => None,
        }
    }

    // --- metadata ---

    /// The trust domain this database belongs to, if initialised.
    fn trust_domain(&self) -> Result<Option<String>, StoreError> {
        let t = self.trees()?;
        Ok(t.meta
            .get(META_TRUST_DOMAIN)
            .map_err(self.err(&t))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the trust domain (once, at initialisation).
    fn set_trust_domain(&self, td: &str) -> Result<(), StoreError> {
        let t = self.trees()?;
        t.meta
            .insert(META_TRUST_DOMAIN, td.as_bytes())
            .map_err(self.err(&t))?;
        Ok(())
    }

    /// The trust-bundle version (0 before initialisation).
    fn bundle_version(&self) -> Result<u64, StoreError> {
        let t = self.trees()?;
        Ok(t.meta
            .get(META_BUNDLE_VERSION)
            .map_err(self.err(&t))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// The number of the last CRL intermediate `id` signed (0 before its first).
    fn crl_number(&self, id: &str) -> Result<u64, StoreError> {
        let t = self.trees()?;
        Ok(t.meta
            .get(format!("{META_CRL_NUMBER}{id}"))
            .map_err(self.err(&t))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Records the number of the CRL intermediate `id` is about to sign.
    fn set_crl_number(&self, id: &str, number: u64) -> Result<(), StoreError> {
        let t = self.trees()?;
        t.meta
            .insert(format!("{META_CRL_NUMBER}{id}"), &number.to_be_bytes())
            .map_err(self.err(&t))?;
        Ok(())
    }

    // --- roots and intermediates ---

    /// Every root, in id order.
    fn roots(&self) -> Result<Vec<RootRecord>, StoreError> {
        self.all("roots", |t| &t.roots)
    }

    fn apply(&self, change: &Change) -> Result<(), StoreError> {
        let t = self.trees()?;
        let err = self.err(&t);
        for root in &change.roots {
            t.roots
                .insert(root.id.as_bytes(), encode(root))
                .map_err(&err)?;
        }
        for key in &change.jwt_keys {
            t.jwt_keys
                .insert(key.kid.as_bytes(), encode(key))
                .map_err(&err)?;
        }
        if let Some(record) = &change.intermediate {
            t.intermediates
                .insert(record.id.as_bytes(), encode(record))
                .map_err(&err)?;
            t.meta
                .insert(META_ACTIVE_INTERMEDIATE, record.id.as_bytes())
                .map_err(&err)?;
        }
        for record in &change.federations {
            t.federations
                .insert(record.trust_domain.as_bytes(), encode(record))
                .map_err(&err)?;
        }
        for trust_domain in &change.removed_federations {
            t.federations
                .remove(trust_domain.as_bytes())
                .map_err(&err)?;
        }
        if let Some(version) = change.bundle_version {
            t.meta
                .insert(META_BUNDLE_VERSION, &version.to_be_bytes())
                .map_err(&err)?;
        }
        for entry in &change.audit {
            self.append_audit_to(&t, entry)?;
        }
        Ok(())
    }

    /// The signing intermediate, if the CA is initialised.
    fn active_intermediate(&self) -> Result<Option<IntermediateRecord>, StoreError> {
        let t = self.trees()?;
        let Some(id) = t.meta.get(META_ACTIVE_INTERMEDIATE).map_err(self.err(&t))? else {
            return Ok(None);
        };
        t.intermediates
            .get(id)
            .map_err(self.err(&t))?
            .map(|v| decode("intermediates", &v))
            .transpose()
    }

    // --- join tokens ---

    /// Stores a new token under the hash of its secret.
    fn create_token(
        &self,
        hash: &[u8; 32],
        token: &TokenRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let t = self.trees()?;
        t.tokens.insert(hash, encode(token)).map_err(self.err(&t))?;
        self.append_audit_to(&t, audit)
    }

    /// Looks a token up by hash, checking it is redeemable at `now` (read only).
    fn check_token(&self, hash: &[u8; 32], now: u64) -> Result<TokenRecord, RecordError> {
        let t = self.trees()?;
        let bytes = t
            .tokens
            .get(hash)
            .map_err(self.err(&t))?
            .ok_or(RecordError::Token(TokenRefusal::Unknown))?;
        let token: TokenRecord = decode("tokens", &bytes)?;
        redeemable(&token, now).map_err(RecordError::Token)?;
        Ok(token)
    }

    // --- certificates ---

    /// Records an issued certificate, its index entry and audit entries, consuming the join
    /// token first if one is given (see the module docs for the order and why). Take a
    /// [`Store::mark`] before and call [`Store::durable`] after.
    fn record_issuance(
        &self,
        record: &CertRecord,
        der: &[u8],
        serial: &[u8],
        token: Option<TokenUse>,
        audit: &[AuditRecord],
    ) -> Result<(), RecordError> {
        let t = self.trees()?;
        let err = self.err(&t);
        // Looked up first so that a taken serial costs nothing: no token, no index entry
        // (the swap below still decides a race).
        if t.certs.contains_key(serial).map_err(&err)? {
            return Err(RecordError::SerialTaken);
        }
        if let Some(use_) = token {
            self.consume_token(&t, &use_, &record.serial)?;
        }
        t.by_identity
            .insert(identity_key(&record.spiffe_id, serial), &[])
            .map_err(&err)?;
        let expiry_key = index::expiry_key(record.not_after, serial);
        let meta = encode(record);
        t.by_expiry
            .insert(expiry_key.as_slice(), meta.as_slice())
            .map_err(&err)?;
        let value = encode_certificate(record, der);
        let swapped = t
            .certs
            .compare_and_swap(serial, None as Option<&[u8]>, Some(value))
            .map_err(&err)?;
        if swapped.is_err() {
            // Lost a race for the serial: our index entry goes (unless theirs replaced it).
            let _ = t
                .by_expiry
                .compare_and_swap(expiry_key, Some(meta), None as Option<&[u8]>)
                .map_err(&err)?;
            return Err(RecordError::SerialTaken);
        }
        t.meta
            .update_and_fetch(index::META_ISSUED_TOTAL, index::increment)
            .map_err(&err)?;
        self.counters.issued(record);
        for entry in audit {
            self.append_audit_to(&t, entry)?;
        }
        drop(t);
        self.live.wrote_certificate();
        Ok(())
    }

    /// A certificate's record and DER, by serial bytes.
    fn certificate(&self, serial: &[u8]) -> Result<Option<(CertRecord, Vec<u8>)>, StoreError> {
        let t = self.trees()?;
        t.certs
            .get(serial)
            .map_err(self.err(&t))?
            .map(|value| decode_certificate(&value))
            .transpose()
    }

    /// Records of every certificate issued to `spiffe_id`.
    fn certificates_of(&self, spiffe_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        let t = self.trees()?;
        let err = self.err(&t);
        let prefix = identity_key(spiffe_id, &[]);
        let mut out = Vec::new();
        for key in t.by_identity.scan_prefix(&prefix).keys() {
            let key = key.map_err(&err)?;
            if let Some(value) = t.certs.get(&key[prefix.len()..]).map_err(&err)? {
                out.push(decode_certificate(&value)?.0);
            }
        }
        Ok(out)
    }

    /// Visits every certificate unexpired at `now` (revoked ones included), in expiry
    /// order, reading only the expiry index: O(live), whatever the history.
    fn for_each_live(&self, now: u64, visit: &mut dyn FnMut(CertRecord)) -> Result<(), StoreError> {
        let t = self.trees()?;
        let range = (index::live_from(now), Bound::<Vec<u8>>::Unbounded);
        for entry in t.by_expiry.range(range) {
            let (_, value) = entry.map_err(self.err(&t))?;
            visit(decode("by_expiry", &value)?);
        }
        Ok(())
    }

    /// Removes up to `max` certificates that expired at or before `through`, with their
    /// index entries and revocation records; returns how many. Call it again while it
    /// returns `max`. The cut-off never passes what the live counts have been lowered to.
    fn prune_expired(&self, through: u64, max: usize) -> Result<usize, StoreError> {
        let _moving = self.moving.lock().expect("moving lock");
        let t = self.trees()?;
        let (through, batch) = self.expired_entries(&t, through, max)?;
        // Two passes may meet (the background task and an explicit one): each record counts
        // once, for the pass that removed its expiry entry.
        let mut removed = 0;
        for (key, value) in &batch {
            if self.remove_certificate(&t, key, value)? {
                removed += 1;
            }
        }
        // The archive goes a day at a time, once the database has nothing older left.
        if batch.len() < max {
            removed += self.history.remove_through(through)? as usize;
        }
        self.counters
            .pruned
            .fetch_add(removed as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(removed)
    }

    /// Moves up to `max` certificates expired, then audit entries recorded, at or before
    /// `through` to the archives.
    fn archive_expired(&self, through: u64, max: usize) -> Result<usize, StoreError> {
        let certificates = self.archive_batch(through, max)?;
        if certificates == max {
            return Ok(max);
        }
        let moved = certificates + self.archive_audit(through, max - certificates)?;
        if moved < max {
            // The pass reached its end: the database is as small as it gets.
            self.live.compact_if_due();
        }
        Ok(moved)
    }

    /// Certificate records retention removed since this store was opened.
    fn pruned_total(&self) -> u64 {
        self.counters
            .pruned
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Visits every certificate record ever kept; O(history), for tools and tests only.
    fn for_each_certificate(
        &self,
        visit: &mut dyn FnMut(CertRecord) -> bool,
    ) -> Result<(), StoreError> {
        let t = self.trees()?;
        for value in t.certs.iter().values() {
            if !visit(decode_certificate(&value.map_err(self.err(&t))?)?.0) {
                return Ok(());
            }
        }
        drop(t);
        self.for_each_archived(visit)
    }

    /// Number of certificates ever issued, pruned ones included (`None` while the database
    /// is being reopened). One read.
    fn issued_total(&self) -> Option<u64> {
        let t = self.trees().ok()?;
        t.meta
            .get(index::META_ISSUED_TOTAL)
            .ok()
            .map(index::u64_value)
    }

    /// Certificates unexpired at `now`, by root (`None` before [`Store::start_counting`] or
    /// while the database is being reopened). Reads only what expired since the last call.
    fn live_by_root(&self, now: u64) -> Option<BTreeMap<String, u64>> {
        let t = self.trees().ok()?;
        self.counters.live(&t, now).ok().flatten()
    }

    // --- revocations ---

    /// Records a revocation (idempotent: an existing record is kept, and `false` returned).
    fn revoke(&self, record: &RevocationRecord, audit: &AuditRecord) -> Result<bool, StoreError> {
        let t = self.trees()?;
        let serial = trellis_identity::hex::decode(&record.serial).unwrap_or_default();
        let swapped = t
            .revocations
            .compare_and_swap(serial, None as Option<&[u8]>, Some(encode(record)))
            .map_err(self.err(&t))?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.append_audit_to(&t, audit)?;
        Ok(true)
    }

    /// The revocation of a certificate, if it was revoked.
    fn revocation(&self, serial: &[u8]) -> Result<Option<RevocationRecord>, StoreError> {
        let t = self.trees()?;
        t.revocations
            .get(serial)
            .map_err(self.err(&t))?
            .map(|v| decode("revocations", &v))
            .transpose()
    }

    /// Every revocation ever recorded.
    fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.all("revocations", |t| &t.revocations)
    }

    /// Constant: an open sled database is this process's alone (its lock keeps any other
    /// out), so no one else records a revocation that the CA would have to notice.
    fn revocations_marker(&self) -> Result<(u64, u64), StoreError> {
        Ok((0, 0))
    }

    /// Every intermediate ever used.
    fn intermediates(&self) -> Result<Vec<IntermediateRecord>, StoreError> {
        self.all("intermediates", |t| &t.intermediates)
    }

    // --- bundle acknowledgements ---

    /// Records that `spiffe_id` acknowledged bundle `version` at `at` (Unix seconds).
    fn put_ack(&self, spiffe_id: &str, version: u64, at: u64) -> Result<(), StoreError> {
        let t = self.trees()?;
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&version.to_be_bytes());
        value[8..].copy_from_slice(&at.to_be_bytes());
        t.acks.insert(spiffe_id, &value).map_err(self.err(&t))?;
        Ok(())
    }

    /// Every identity's last acknowledgement: SPIFFE ID → (version, when).
    fn acks(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let t = self.trees()?;
        t.acks
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(self.err(&t))?;
                let corrupt = || StoreError::Corrupt {
                    table: "acks",
                    reason: "value is not two 8-byte numbers".into(),
                };
                let version = value.get(..8).ok_or_else(corrupt)?;
                let at = value.get(8..16).ok_or_else(corrupt)?;
                Ok((
                    String::from_utf8_lossy(&key).into_owned(),
                    index::u64_value(Some(version.into())),
                    index::u64_value(Some(at.into())),
                ))
            })
            .collect()
    }

    fn certificates_page(
        &self,
        listing: Listing<'_>,
        after: Option<&PageToken>,
        max: usize,
        scan: usize,
        keep: &dyn Fn(&CertRecord) -> bool,
    ) -> Result<CertPage, StoreError> {
        let bad = || StoreError::BadPageToken(after.map(|t| t.0.clone()).unwrap_or_default());
        match listing {
            // The database's certificates unexpired when the listing began, by identity;
            // then those expired by then, in expiry order, whether archived yet or not.
            Listing::ByIdentity {
                spiffe_id,
                expired,
                now,
            } => {
                if let Some(token) = after.filter(|t| t.0.starts_with(archive::EXPIRED_TOKEN)) {
                    let (since, from) = archive::parse_expired_token(&token.0).ok_or_else(bad)?;
                    return self.expired_page(spiffe_id, since, from.as_deref(), max, scan, keep);
                }
                let prefix = spiffe_id.map_or_else(Vec::new, |id| identity_key(id, &[]));
                let (since, after) = match after {
                    None => (now, None),
                    Some(token) => {
                        let (since, key) = token.0.split_once('.').ok_or_else(bad)?;
                        let key = hex::decode(key)
                            .filter(|key| key.starts_with(&prefix))
                            .ok_or_else(bad)?;
                        (since.parse().map_err(|_| bad())?, Some(key))
                    }
                };
                let unexpired = |r: &CertRecord| r.not_after > since && keep(r);
                let page = self.identity_page(&prefix, after.as_deref(), max, scan, &unexpired)?;
                let mut certificates = page.certificates;
                let next = match page.next {
                    Some(key) => Some(PageToken(format!("{since}.{}", hex::encode(&key)))),
                    None if !expired => None,
                    None if certificates.len() < max => {
                        let more = self.expired_page(
                            spiffe_id,
                            since,
                            None,
                            max - certificates.len(),
                            scan,
                            keep,
                        )?;
                        certificates.extend(more.certificates);
                        more.next
                    }
                    None => Some(archive::expired_token(since, None)),
                };
                Ok(CertPage { certificates, next })
            }
            Listing::Expiring { now, until } => {
                let after = match after {
                    None => None,
                    Some(token) => Some(
                        token
                            .0
                            .strip_prefix(EXPIRY_TOKEN)
                            .and_then(hex::decode)
                            .filter(|key| index::split_key(key).is_ok())
                            .ok_or_else(bad)?,
                    ),
                };
                let page = self.expiring_page(now, until, after.as_deref(), max, scan, keep)?;
                Ok(CertPage {
                    certificates: page.certificates,
                    next: page
                        .next
                        .map(|key| PageToken(format!("{EXPIRY_TOKEN}{}", hex::encode(&key)))),
                })
            }
        }
    }

    fn append_audit(&self, entry: &AuditRecord) -> Result<(), StoreError> {
        SledStore::append_audit(self, entry)
    }

    fn audit_chain_head(&self) -> Result<Head, StoreError> {
        SledStore::audit_chain_head(self)
    }

    fn audit_raw_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        SledStore::audit_raw_after(self, after, limit)
    }

    fn put_audit_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        SledStore::put_audit_checkpoint(self, checkpoint)
    }

    fn audit_checkpoints_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        SledStore::audit_checkpoints_after(self, after, limit)
    }

    fn latest_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        SledStore::latest_audit_checkpoint(self)
    }

    fn prune_audit(&self, cutoff: u64, max_batches: usize) -> Result<u64, StoreError> {
        SledStore::prune_audit(self, cutoff, max_batches)
    }

    fn jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        SledStore::jwt_keys(self)
    }

    fn federations(&self) -> Result<Vec<FederationRecord>, StoreError> {
        SledStore::federations(self)
    }

    fn federation(&self, trust_domain: &str) -> Result<Option<FederationRecord>, StoreError> {
        SledStore::federation(self, trust_domain)
    }
}
