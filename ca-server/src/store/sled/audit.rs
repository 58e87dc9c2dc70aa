//! The audit log in the store: entries chained by hash (`trellis_identity::audit_log`),
//! numbered 1, 2, … without gaps, and the checkpoints the CA signs.
//!
//! Appends are serialised by the head held with each opening of the database: the next
//! entry's number and link come from it, and it advances only once the write is made. A
//! reopened database (after a write failure) reads its head from disk again, because the
//! entries an unflushed opening wrote may be gone.
//!
//! Entries recorded more than a few minutes ago move to the archive (`audit_history.rs`);
//! reads take the archive up to its watermark, then the database.
//!
//! Data directories written before the chain existed hold plain JSON entries numbered by
//! sled's id generator in the tree `audit`; they are chained into `audit_chain`, numbered
//! from 1, on first use.

use std::sync::MutexGuard;

use serde::{Deserialize, Serialize};
use trellis_identity::audit_log::{Checkpoint, Head};
use trellis_identity::hex;

use super::SledStore;
use super::live::Trees;
use crate::store::{
    AuditRecord, Store, StoreError, decode, decode_audit_entry as decode_entry, encode,
};

/// Set once the entries of a pre-chain data directory are all in the chain.
const META_LEGACY_AUDIT_CHAINED: &[u8] = b"legacy_audit_chained";
/// How many entries retention deletes per batch (each batch a short burst of writes).
const PRUNE_BATCH: usize = 1000;

/// A checkpoint as stored (hex for the binary fields, so the tree stays readable).
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointRecord {
    trust_domain: String,
    sequence: u64,
    head: String,
    time: u64,
    signer: String,
    signature: String,
}

impl From<&Checkpoint> for CheckpointRecord {
    fn from(c: &Checkpoint) -> Self {
        Self {
            trust_domain: c.trust_domain.clone(),
            sequence: c.sequence,
            head: hex::encode(&c.head),
            time: c.time,
            signer: hex::encode(&c.signer),
            signature: hex::encode(&c.signature),
        }
    }
}

impl CheckpointRecord {
    fn into_checkpoint(self) -> Result<Checkpoint, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            table: "audit_checkpoints",
            reason: reason.to_owned(),
        };
        let bytes = |field: &str, value: &str| {
            hex::decode(value).ok_or_else(|| corrupt(&format!("{field} is not hex")))
        };
        Ok(Checkpoint {
            head: bytes("head", &self.head)?
                .try_into()
                .map_err(|_| corrupt("head is not 32 bytes"))?,
            signer: bytes("signer", &self.signer)?,
            signature: bytes("signature", &self.signature)?,
            trust_domain: self.trust_domain,
            sequence: self.sequence,
            time: self.time,
        })
    }
}

fn sequence_of(key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            table: "audit",
            reason: "key is not 8 bytes".into(),
        })
}

impl SledStore {
    /// Appends an audit entry outside an issuance.
    pub(super) fn append_audit(&self, entry: &AuditRecord) -> Result<(), StoreError> {
        let t = self.trees()?;
        self.append_audit_to(&t, entry)
    }

    pub(super) fn append_audit_to(&self, t: &Trees, entry: &AuditRecord) -> Result<(), StoreError> {
        let mut head = self.audit_head(t)?;
        let mut next = head.expect("audit_head loads the head");
        let chained = next.append(encode(entry));
        t.audit
            .insert(chained.sequence.to_be_bytes(), chained.encode())
            .map_err(self.err(t))?;
        *head = Some(next);
        Ok(())
    }

    /// The head of the chain, loaded (and old entries chained) on first use of an opening.
    fn audit_head<'t>(&self, t: &'t Trees) -> Result<MutexGuard<'t, Option<Head>>, StoreError> {
        let mut head = t.audit_head.lock().unwrap_or_else(|p| p.into_inner());
        if head.is_none() {
            *head = Some(self.load_audit_head(t)?);
        }
        Ok(head)
    }

    fn load_audit_head(&self, t: &Trees) -> Result<Head, StoreError> {
        let trust_domain = self.trust_domain()?.unwrap_or_default();
        self.chain_legacy_entries(t, &trust_domain)?;
        let last = match t.audit.last().map_err(self.err(t))? {
            Some((key, value)) => Some((sequence_of(&key)?, value.to_vec())),
            // Archiving keeps the newest entry here; this is for a database that lost it.
            None => match self.audit_history.watermark() {
                Some(sequence) => self.audit_history.get(sequence)?.map(|v| (sequence, v)),
                None => None,
            },
        };
        let Some((sequence, value)) = last else {
            return Ok(Head::empty(&trust_domain));
        };
        let entry = decode_entry(sequence, &value)?;
        Ok(Head {
            sequence,
            hash: entry.hash,
        })
    }

    /// Chains the entries of a data directory written before the chain existed.
    ///
    /// Crash-safe by order (sled's log keeps the order of writes): the chain is rebuilt from
    /// scratch until the flag that says it is complete is written; only then are the plain
    /// entries removed, and leftovers of an interrupted removal are removed on a later start.
    fn chain_legacy_entries(&self, t: &Trees, trust_domain: &str) -> Result<(), StoreError> {
        let err = self.err(t);
        if t.legacy_audit.is_empty() {
            return Ok(());
        }
        if t.meta
            .get(META_LEGACY_AUDIT_CHAINED)
            .map_err(&err)?
            .is_none()
        {
            t.audit.clear().map_err(&err)?;
            let mut head = Head::empty(trust_domain);
            for value in t.legacy_audit.iter().values() {
                let entry = head.append(value.map_err(&err)?.to_vec());
                t.audit
                    .insert(entry.sequence.to_be_bytes(), entry.encode())
                    .map_err(&err)?;
            }
            t.meta
                .insert(META_LEGACY_AUDIT_CHAINED, &[1])
                .map_err(&err)?;
            tracing::info!(
                entries = head.sequence,
                "audit log chained (written before the hash chain existed)"
            );
        }
        t.legacy_audit.clear().map_err(&err)?;
        Ok(())
    }

    /// The current head of the chain (what a checkpoint signs).
    pub(super) fn audit_chain_head(&self) -> Result<Head, StoreError> {
        let t = self.trees()?;
        let head = self.audit_head(&t)?;
        Ok(head.expect("audit_head loads the head"))
    }

    /// Audit values with sequence greater than `after` exactly as stored, for a verifier
    /// that must see damaged entries too. Plain entries of an older data directory are
    /// chained first.
    pub(super) fn audit_raw_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        // Archiving between reading the watermark and reading here would leave a gap.
        let _moving = self.moving.lock().expect("moving lock");
        let t = self.trees()?;
        drop(self.audit_head(&t)?);
        let watermark = self.audit_history.watermark();
        let mut out = match watermark {
            Some(archived) if after < archived => self.audit_history.after(after, limit)?,
            _ => Vec::new(),
        };
        // What the archive holds is read there only, even if a crash left it here too.
        let from = after.max(watermark.unwrap_or(0));
        let start = from.saturating_add(1).to_be_bytes();
        for kv in t.audit.range(start..).take(limit - out.len()) {
            let (k, v) = kv.map_err(self.err(&t))?;
            out.push((sequence_of(&k)?, v.to_vec()));
        }
        Ok(out)
    }

    /// Moves up to `max` entries recorded at or before `through` (Unix seconds), never the
    /// newest, to the archive; returns how many left the database.
    pub(super) fn archive_audit(&self, through: u64, max: usize) -> Result<usize, StoreError> {
        let _moving = self.moving.lock().expect("moving lock");
        let t = self.trees()?;
        let err = self.err(&t);
        drop(self.audit_head(&t)?);
        let Some((last_key, _)) = t.audit.last().map_err(&err)? else {
            return Ok(0);
        };
        let newest = sequence_of(&last_key)?;
        let watermark = self.audit_history.watermark().unwrap_or(0);
        let mut leaving = Vec::new();
        let mut moving = Vec::new();
        for kv in t.audit.iter().take(max) {
            let (key, value) = kv.map_err(&err)?;
            let sequence = sequence_of(&key)?;
            if sequence >= newest {
                break;
            }
            if sequence > watermark {
                let entry = decode_entry(sequence, &value)?;
                if decode::<AuditRecord>("audit", &entry.body)?.time > through {
                    break;
                }
                moving.push((sequence, value.to_vec()));
            }
            leaving.push(key);
        }
        self.audit_history.append(&moving)?;
        for key in &leaving {
            t.audit.remove(key).map_err(&err)?;
        }
        Ok(leaving.len())
    }

    /// Records a signed checkpoint.
    pub(super) fn put_audit_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let t = self.trees()?;
        t.audit_checkpoints
            .insert(
                checkpoint.sequence.to_be_bytes(),
                encode(&CheckpointRecord::from(checkpoint)),
            )
            .map_err(self.err(&t))?;
        Ok(())
    }

    /// Checkpoints at entries after `after`, oldest first, at most `limit`.
    pub(super) fn audit_checkpoints_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let t = self.trees()?;
        let start = after.saturating_add(1).to_be_bytes();
        t.audit_checkpoints
            .range(start..)
            .take(limit)
            .map(|kv| {
                let (_, v) = kv.map_err(self.err(&t))?;
                decode::<CheckpointRecord>("audit_checkpoints", &v)?.into_checkpoint()
            })
            .collect()
    }

    /// The newest checkpoint, if any.
    pub(super) fn latest_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let t = self.trees()?;
        t.audit_checkpoints
            .last()
            .map_err(self.err(&t))?
            .map(|(_, v)| decode::<CheckpointRecord>("audit_checkpoints", &v)?.into_checkpoint())
            .transpose()
    }

    /// Removes the oldest entries recorded before `cutoff` (unix seconds), only up to a
    /// checkpoint that stays as the start of what remains (the cut), and never the newest
    /// entry. At most `max_batches` batches. Returns how many entries were removed.
    pub(super) fn prune_audit(&self, cutoff: u64, max_batches: usize) -> Result<u64, StoreError> {
        let _moving = self.moving.lock().expect("moving lock");
        let t = self.trees()?;
        let err = self.err(&t);
        let Some((last_key, _)) = t.audit.last().map_err(&err)? else {
            return Ok(0);
        };
        let last = sequence_of(&last_key)?;
        // The newest checkpoint below the newest entry whose entry is older than `cutoff`.
        let mut cut = None;
        for kv in t.audit_checkpoints.iter() {
            let (key, _) = kv.map_err(&err)?;
            let sequence = sequence_of(&key)?;
            if sequence >= last {
                break;
            }
            let value = match t.audit.get(key).map_err(&err)? {
                Some(value) => value.to_vec(),
                None => match self.audit_history.get(sequence)? {
                    Some(value) => value,
                    // Already removed by an earlier cut: look further.
                    None => continue,
                },
            };
            let entry = decode_entry(sequence, &value)?;
            if decode::<AuditRecord>("audit", &entry.body)?.time >= cutoff {
                break;
            }
            cut = Some(sequence);
        }
        let Some(cut) = cut else { return Ok(0) };
        let mut removed = self.audit_history.remove_through(cut)?;
        for _ in 0..max_batches {
            let keys: Vec<_> = t
                .audit
                .range(..=cut.to_be_bytes())
                .keys()
                .take(PRUNE_BATCH)
                .collect::<Result<_, _>>()
                .map_err(&err)?;
            if keys.is_empty() {
                break;
            }
            for key in &keys {
                t.audit.remove(key).map_err(&err)?;
            }
            removed += keys.len() as u64;
        }
        // Checkpoints before the cut cover nothing that remains.
        let stale: Vec<_> = t
            .audit_checkpoints
            .range(..cut.to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        for key in stale {
            t.audit_checkpoints.remove(key).map_err(&err)?;
        }
        Ok(removed)
    }
}
