//! Moving expired certificates out of the database into the archive (`history.rs`), and
//! the listings that go on into it.

use std::ops::Bound;

use super::history::{Archived, Position};
use super::{SledStore, decode_certificate, identity_key, index, live};
use crate::store::{CertPage, CertRecord, PageToken, StoreError, decode};

/// What starts a page token of the archive part of an identity listing.
pub(super) const HISTORY_TOKEN: &str = "h";

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

    /// The archive part of an identity listing: from `from` (its start if `None`), at most
    /// `max` certificates of `spiffe_id` (all if `None`) that `keep` accepts, reading at
    /// most `scan` records.
    pub(super) fn history_page(
        &self,
        spiffe_id: Option<&str>,
        from: Option<&Position>,
        max: usize,
        scan: usize,
        keep: &dyn Fn(&CertRecord) -> bool,
    ) -> Result<CertPage, StoreError> {
        let mut wanted =
            |a: &Archived| spiffe_id.is_none_or(|id| a.record.spiffe_id == id) && keep(&a.record);
        let (found, next) = self.history.walk(from, max, scan, &mut wanted)?;
        Ok(CertPage {
            certificates: found.into_iter().map(|a| (a.record, a.der)).collect(),
            next: next.map(|p| PageToken(format!("{HISTORY_TOKEN}{}", p.encode()))),
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
