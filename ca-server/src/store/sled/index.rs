//! The expiry index and what it makes cheap: the live certificates (census, "expiring
//! within", listings), the counters, and retention.
//!
//! `by_expiry` maps not-after (8 bytes, big-endian) + serial to the certificate's metadata
//! (the [`CertRecord`] without its DER), so everything unexpired is one range read
//! starting at "now", and everything past retention one range read ending at the cut-off:
//! the cost follows the live certificates, never the history.
//!
//! Counters. `issued_total` is a meta key incremented (an atomic single-key update) right
//! after the certificate is written; a crash between the two leaves it one short for an
//! issuance that was never acknowledged, so it counts at least every acknowledged issuance.
//! The live counts by root are not kept on disk, because time changes them without any
//! write: they are recounted from the index at start-up ([`crate::store::Store::start_counting`],
//! O(live)), raised by each issuance and lowered by walking the index from the last
//! point counted to now ([`Counters`]), which reads only what expired in between. A crash
//! cannot leave them wrong, since nothing of them survives it.
//!
//! Order of the writes (see `mod.rs`): the index entry before the certificate, so a crash
//! between them leaves an entry without a certificate. Start-up removes such entries from
//! the live range (they were never acknowledged), and retention removes the others with
//! the rest of their record. Retention removes, per certificate, the identity index entry,
//! the revocation record, the certificate, and the expiry entry last: a crash part-way
//! leaves the expiry entry, and the next pass finishes the job.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use super::live::Trees;
use crate::store::{CertRecord, StoreError, decode, encode};

/// Set once the expiry index and `issued_total` cover every certificate record.
pub(super) const META_EXPIRY_INDEX: &[u8] = b"expiry_index";
pub(super) const META_ISSUED_TOTAL: &[u8] = b"issued_total";

/// The index key of a certificate.
pub(super) fn expiry_key(not_after: u64, serial: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + serial.len());
    key.extend_from_slice(&not_after.to_be_bytes());
    key.extend_from_slice(serial);
    key
}

/// Splits an index key into not-after and serial.
pub(super) fn split_key(key: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let not_after = key
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            table: "by_expiry",
            reason: "key shorter than its 8-byte expiry".into(),
        })?;
    Ok((not_after, &key[8..]))
}

/// Keys of certificates with `not_after > now` (unexpired at `now`).
pub(super) fn live_from(now: u64) -> Bound<Vec<u8>> {
    match now.checked_add(1) {
        Some(next) => Bound::Included(next.to_be_bytes().to_vec()),
        None => Bound::Excluded(vec![0xff; 64]),
    }
}

/// Keys of certificates with `not_after <= through`.
pub(super) fn expired_until(through: u64) -> Bound<Vec<u8>> {
    match through.checked_add(1) {
        Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    }
}

pub(super) fn u64_value(value: Option<sled::IVec>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

pub(super) fn increment(old: Option<&[u8]>) -> Option<Vec<u8>> {
    let n = old
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    Some(n.saturating_add(1).to_be_bytes().to_vec())
}

/// Builds the index and `issued_total` from the certificate records, once, for a
/// database written before they existed (O(history), at the first start after upgrading).
/// Idempotent, so a crash part-way is finished by the next start.
pub(super) fn build_if_missing(t: &Trees) -> Result<(), sled::Error> {
    if t.meta.contains_key(META_EXPIRY_INDEX)? {
        return Ok(());
    }
    let mut count = 0u64;
    for entry in t.certs.iter() {
        let (serial, value) = entry?;
        count += 1;
        let Ok((record, _)) = super::decode_certificate(&value) else {
            continue; // reported where it is read
        };
        t.by_expiry
            .insert(expiry_key(record.not_after, &serial), encode(&record))?;
    }
    if count > 0 {
        tracing::info!(
            certificates = count,
            "built the expiry index of a database from before it existed"
        );
    }
    t.meta.insert(META_ISSUED_TOTAL, &count.to_be_bytes())?;
    t.meta.insert(META_EXPIRY_INDEX, &[1])?;
    t.db.flush()?;
    Ok(())
}

/// Live certificates by root, kept in memory (see the module docs), and the records
/// retention removed since start.
#[derive(Debug, Default)]
pub(super) struct Counters {
    live: Mutex<Option<LiveCounts>>,
    pub pruned: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct LiveCounts {
    /// Certificates with `not_after <= expired_through` are not counted.
    expired_through: u64,
    by_root: BTreeMap<String, u64>,
}

impl Counters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<LiveCounts>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the certificates unexpired at `now`, removing index entries without a
    /// certificate (a crash between the two writes) on the way. O(live).
    pub fn start(&self, t: &Trees, now: u64) -> Result<(), sled::Error> {
        let mut counts = LiveCounts {
            expired_through: now,
            by_root: BTreeMap::new(),
        };
        for entry in t
            .by_expiry
            .range::<Vec<u8>, _>((live_from(now), Bound::Unbounded))
        {
            let (key, value) = entry?;
            let Ok((_, serial)) = split_key(&key) else {
                continue;
            };
            if !t.certs.contains_key(serial)? {
                t.by_expiry.remove(&key)?;
                continue;
            }
            if let Ok(record) = decode::<CertRecord>("by_expiry", &value) {
                *counts.by_root.entry(record.root_id).or_default() += 1;
            }
        }
        *self.lock() = Some(counts);
        Ok(())
    }

    /// Counts a certificate just recorded.
    pub fn issued(&self, record: &CertRecord) {
        if let Some(counts) = self.lock().as_mut()
            && record.not_after > counts.expired_through
        {
            *counts.by_root.entry(record.root_id.clone()).or_default() += 1;
        }
    }

    /// The live counts at `now` (`None` before [`Counters::start`]), reading only the index
    /// entries that expired since the last call. A clock that went back counts nothing
    /// twice: the counts stay where they were until it passes that point again.
    pub fn live(&self, t: &Trees, now: u64) -> Result<Option<BTreeMap<String, u64>>, sled::Error> {
        let mut guard = self.lock();
        let Some(counts) = guard.as_mut() else {
            return Ok(None);
        };
        if now > counts.expired_through {
            let range = (live_from(counts.expired_through), expired_until(now));
            for entry in t.by_expiry.range::<Vec<u8>, _>(range) {
                let (_, value) = entry?;
                if let Ok(record) = decode::<CertRecord>("by_expiry", &value)
                    && let Some(n) = counts.by_root.get_mut(&record.root_id)
                {
                    *n = n.saturating_sub(1);
                }
            }
            counts.by_root.retain(|_, n| *n > 0);
            counts.expired_through = now;
        }
        Ok(Some(counts.by_root.clone()))
    }

    /// The point the counts have been lowered to: retention must not remove entries past it.
    pub fn expired_through(&self) -> Option<u64> {
        self.lock().as_ref().map(|c| c.expired_through)
    }
}
