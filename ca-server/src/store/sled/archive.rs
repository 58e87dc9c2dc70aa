//! Moving expired certificates out of the database into the archive (`history.rs`), and
//! the listings that go on into it.

use std::collections::BTreeMap;
use std::ops::Bound;

use trellis_identity::hex;

use super::history::{Archived, Position};
use super::{SledStore, decode_certificate, identity_key, index, live};
use crate::store::{CertPage, CertRecord, PageToken, StoreError, decode};

/// What starts a page token of the expired part of an identity listing.
pub(super) const EXPIRED_TOKEN: &str = "h";

/// A page token of the expired part of a listing that began at `since`: `h<since>.<key>`.
pub(super) fn expired_token(since: u64, after: Option<&[u8]>) -> PageToken {
    PageToken(format!(
        "{EXPIRED_TOKEN}{since}.{}",
        after.map(hex::encode).unwrap_or_default()
    ))
}

/// The listing's start and the key to go on after, of an [`expired_token`].
pub(super) fn parse_expired_token(text: &str) -> Option<(u64, Option<Vec<u8>>)> {
    let (since, key) = text.strip_prefix(EXPIRED_TOKEN)?.split_once('.')?;
    let key = match key {
        "" => None,
        hex_key => Some(hex::decode(hex_key).filter(|k| index::split_key(k).is_ok())?),
    };
    Some((since.parse().ok()?, key))
}

impl SledStore {
    /// Moves up to `max` certificates that expired at or before `through` (never past what
    /// the live counts have been lowered to) to the archive, with their revocations;
    /// returns how many left the database.
    pub(super) fn archive_batch(&self, through: u64, max: usize) -> Result<usize, StoreError> {
        let _moving = self.moving.lock().expect("moving lock");
        let t = self.trees()?;
        let err = self.err(&t);
        let (_, batch) = self.expired_entries(&t, through, max)?;
        let mut moving = Vec::with_capacity(batch.len());
        for (key, _) in &batch {
            let (_, serial) = index::split_key(key)?;
            // An index entry without its certificate (see `index.rs`) has nothing to keep.
            let Some(value) = t.certs.get(serial).map_err(&err)? else {
                continue;
            };
            let (record, der) = decode_certificate(&value)?;
            let revocation = t
                .revocations
                .get(serial)
                .map_err(&err)?
                .map(|v| decode("revocations", &v))
                .transpose()?;
            moving.push(Archived {
                key: key.to_vec(),
                record,
                der,
                revocation,
            });
        }
        self.history.insert(&moving)?;
        for (key, value) in &batch {
            self.remove_certificate(&t, key, value)?;
        }
        Ok(batch.len())
    }

    /// Up to `max` expiry index entries of certificates that expired at or before `through`,
    /// oldest first, with the cut-off lowered to what the live counts have let go of (it is
    /// returned too).
    pub(super) fn expired_entries(
        &self,
        t: &live::Trees,
        through: u64,
        max: usize,
    ) -> Result<(u64, Vec<(sled::IVec, sled::IVec)>), StoreError> {
        let through = match self.counters.expired_through() {
            Some(counted) => through.min(counted),
            None => through,
        };
        let entries = t
            .by_expiry
            .range::<Vec<u8>, _>((Bound::Unbounded, index::expired_until(through)))
            .take(max)
            .collect::<Result<_, _>>()
            .map_err(self.err(t))?;
        Ok((through, entries))
    }

    /// Removes one certificate by its expiry index entry: the identity entry, the
    /// revocation, the certificate, and the expiry entry last (so that a crash part-way is
    /// finished by the next pass). Whether this call removed the expiry entry.
    pub(super) fn remove_certificate(
        &self,
        t: &live::Trees,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, StoreError> {
        let err = self.err(t);
        let (_, serial) = index::split_key(key)?;
        if let Ok(record) = crate::store::decode::<CertRecord>("by_expiry", value) {
            t.by_identity
                .remove(identity_key(&record.spiffe_id, serial))
                .map_err(&err)?;
        }
        t.revocations.remove(serial).map_err(&err)?;
        t.certs.remove(serial).map_err(&err)?;
        Ok(t.by_expiry.remove(key).map_err(&err)?.is_some())
    }

    /// The expired part of an identity listing: certificates of `spiffe_id` (all if `None`)
    /// that expired at or before `since` and that `keep` accepts, in expiry-key order after
    /// `from`, at most `max`, reading at most `scan` records on each side. Those not yet
    /// archived (the database's expiry index up to `since`) and the archive's are one
    /// sequence in key order, and archiving moves a record without changing its key, so a
    /// record moved while the listing runs is listed once.
    pub(super) fn expired_page(
        &self,
        spiffe_id: Option<&str>,
        since: u64,
        from: Option<&[u8]>,
        max: usize,
        scan: usize,
        keep: &dyn Fn(&CertRecord) -> bool,
    ) -> Result<CertPage, StoreError> {
        // Only those expired by the listing's start: the rest were in its first part.
        let wanted = |r: &CertRecord| {
            r.not_after <= since && spiffe_id.is_none_or(|id| r.spiffe_id == id) && keep(r)
        };
        let position = from.map(|key| Position(key.to_vec()));
        let (archived, archive_end) =
            self.history
                .walk(position.as_ref(), max, scan, &mut |a| wanted(&a.record))?;
        // The database's part of the same key range.
        let t = self.trees()?;
        let err = self.err(&t);
        let start = from.map_or(Bound::Unbounded, |key| Bound::Excluded(key.to_vec()));
        let mut end = match &archive_end {
            Some(Position(key)) => Bound::Included(key.clone()),
            None => index::expired_until(since),
        };
        // Never past what expired by the listing's start.
        if let (Bound::Included(key), Bound::Excluded(limit)) = (&end, index::expired_until(since))
            && *key >= limit
        {
            end = Bound::Excluded(limit);
        }
        let mut found: BTreeMap<Vec<u8>, (CertRecord, Vec<u8>)> = archived
            .into_iter()
            .map(|a| (a.key, (a.record, a.der)))
            .collect();
        let mut reached = archive_end.map(|p| p.0);
        for (scanned, entry) in t.by_expiry.range::<Vec<u8>, _>((start, end)).enumerate() {
            let (key, meta) = entry.map_err(&err)?;
            // The index holds the record: the certificate is read only for those wanted (and
            // an entry without one, see `index.rs`, is skipped).
            if wanted(&decode("by_expiry", &meta)?) {
                let (_, serial) = index::split_key(&key)?;
                if let Some(value) = t.certs.get(serial).map_err(&err)? {
                    found
                        .entry(key.to_vec())
                        .or_insert(decode_certificate(&value)?);
                }
            }
            if scanned + 1 >= scan {
                // The page covers keys up to here only; the archive's beyond wait.
                let key = key.to_vec();
                found.retain(|k, _| *k <= key);
                reached = Some(key);
                break;
            }
        }
        let mut certificates = Vec::new();
        let mut last = None;
        for (key, certificate) in found {
            if certificates.len() == max {
                reached = last;
                break;
            }
            last = Some(key);
            certificates.push(certificate);
        }
        Ok(CertPage {
            certificates,
            next: reached.map(|key| expired_token(since, Some(&key))),
        })
    }

    /// Visits every archived certificate until `visit` returns false.
    pub(super) fn for_each_archived(
        &self,
        visit: &mut dyn FnMut(CertRecord) -> bool,
    ) -> Result<(), StoreError> {
        let mut from = None;
        loop {
            let mut going = true;
            let mut each = |a: &Archived| {
                going = going && visit(a.record.clone());
                false
            };
            let (_, next) = self
                .history
                .walk(from.as_ref(), usize::MAX, 10_000, &mut each)?;
            match next {
                Some(position) if going => from = Some(position),
                _ => return Ok(()),
            }
        }
    }
}
