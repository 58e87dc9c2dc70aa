//! The archive of expired certificates: what keeps sled's opening cost (its page table,
//! read and held in memory whole) following the live certificates instead of the history.
//!
//! Certificates expired for longer than a short delay are moved out of the sled database
//! into immutable batch files, one folder per UTC day of expiry:
//! `history/<day>/<first key, hex>.batch`, where a key is the expiry index key (not-after,
//! big-endian, then serial), so names sort in key order and every batch's keys are above
//! the batch before's. A batch is written to a temporary name, synced, and renamed: it is
//! whole or absent. Nothing reads the archive at start-up but the newest batch's last key
//! (the watermark); listings of expired certificates and retention read it. Retention
//! removes whole days and batches, and rewrites (the same way, under the same name) the one
//! batch its cut-off falls inside, so a record goes when its retention ends, not later.
//! The first walk reads the batches' names into memory (the catalogue), which every write
//! and removal then keeps in step, so that a listing's page finds where to go on without
//! listing a folder of thousands of batches.
//!
//! Crash safety: a batch is on disk before its records leave the database. A crash in
//! between leaves them in both; the next pass finds them at or below the watermark (the
//! largest key archived), looks in the batch whose range holds them, finds them there and
//! only removes them from the database, so none is archived twice. A record that arrives
//! below the watermark without being archived (the clock stepped back) is merged into that
//! batch instead.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Mutex;

use trellis_identity::hex;

use super::batch_file::{self, Fields, io, is_batch, sorted_names};
use super::catalogue::Catalogue;
use crate::store::{CertRecord, RevocationRecord, StoreError, decode, encode};

/// What starts every batch file (and names its format).
const MAGIC: &[u8] = b"trellis-history-1\n";
const SECONDS_PER_DAY: u64 = 86_400;
/// Records a batch holds before merging stops adding to its end.
const FULL_BATCH: usize = 1_000;

/// One archived certificate.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Archived {
    /// The expiry index key it had (not-after + serial).
    pub key: Vec<u8>,
    pub record: CertRecord,
    pub der: Vec<u8>,
    pub revocation: Option<RevocationRecord>,
}

/// Where a walk of the archive is: the key of the last record it read. A key, not a place
/// in a file, so that retention rewriting a batch cannot make a walk skip what remains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Position(pub Vec<u8>);

impl Position {
    fn not_after(&self) -> u64 {
        u64::from_be_bytes(
            self.0[..8]
                .try_into()
                .expect("a position holds a whole key"),
        )
    }
}

/// The archive folder and its watermark.
#[derive(Debug)]
pub(super) struct History {
    dir: PathBuf,
    /// The largest key archived: the newest batch's last record (`None` when empty). Held
    /// while batches are written or days removed, so that the two never meet in a folder.
    watermark: Mutex<Option<Vec<u8>>>,
    /// Every batch as (day, file name), in walk order.
    catalogue: Catalogue<Batch>,
}

/// A batch: its day's folder and its file name.
type Batch = (String, String);

fn day_name(not_after: u64) -> String {
    format!("{:08}", not_after / SECONDS_PER_DAY)
}

/// The certificates of a batch as read.
fn decode_batch(records: Vec<Fields>) -> Result<Vec<Archived>, StoreError> {
    records
        .into_iter()
        .map(|fields| {
            let [key, certificate, revocation] = <[Vec<u8>; 3]>::try_from(fields)
                .expect("batch_file::read returns the fields asked for");
            let (record, der) = super::decode_certificate(&certificate)?;
            let revocation = match revocation.as_slice() {
                [] => None,
                json => Some(decode("history", json)?),
            };
            Ok(Archived {
                key,
                record,
                der,
                revocation,
            })
        })
        .collect()
}

/// Which of a day's batches (names in order) holds `key`: the last named at or below it
/// (`None`: it sorts before the first).
fn holding(files: &[String], key: &[u8]) -> Option<usize> {
    let bound = names_up_to(key);
    files.partition_point(|f| *f <= bound).checked_sub(1)
}

/// The largest name a batch holding `key` can have: a name is its first key's hex and
/// ".batch", and "/" sorts after "." and before every hex digit, so the names at or below
/// this are those of first keys at or below `key`.
fn names_up_to(key: &[u8]) -> String {
    format!("{}/", hex::encode(key))
}

/// Consecutive runs of `records` with the same day of expiry.
fn group_by_day<'a>(records: &'a [&'a Archived]) -> impl Iterator<Item = &'a [&'a Archived]> {
    records.chunk_by(|a, b| day_name(a.record.not_after) == day_name(b.record.not_after))
}

fn is_day(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

impl History {
    /// The archive in `dir` (created on first write); reads only the newest batch.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        let history = Self {
            dir,
            watermark: Mutex::new(None),
            catalogue: Catalogue::new(),
        };
        let days = sorted_names(&history.dir, is_day)?;
        for day in &days {
            batch_file::remove_partials(&history.dir.join(day))?;
        }
        for day in days.iter().rev() {
            let files = sorted_names(&history.dir.join(day), is_batch)?;
            if let Some(newest) = files.last() {
                let last = history.read_batch(day, newest)?.pop().map(|a| a.key);
                *history.watermark.lock().expect("watermark lock") = last;
                break;
            }
        }
        Ok(history)
    }

    /// Adds `batch` (in key order) durably, leaving out what the archive already holds.
    /// What sorts above everything archived (the usual case: archiving follows the clock)
    /// becomes new batches, one per day of expiry; anything else (a crash left it in both
    /// places, or the clock stepped back) is merged into the batch whose range holds it, or
    /// a new one before a day's first, so batches keep disjoint, ordered ranges.
    pub fn insert(&self, batch: &[Archived]) -> Result<(), StoreError> {
        let mut watermark = self.watermark.lock().expect("watermark lock");
        let (below, above): (Vec<&Archived>, Vec<&Archived>) = batch
            .iter()
            .partition(|a| watermark.as_ref().is_some_and(|w| a.key <= *w));
        for day in group_by_day(&below) {
            self.merge_into_day(day)?;
        }
        for part in group_by_day(&above) {
            self.write_batch(&day_name(part[0].record.not_after), part)?;
            // At once: a failure on the next day's file must not archive this part again.
            *watermark = part.last().map(|a| a.key.clone());
        }
        Ok(())
    }

    /// Merges `records` (of one day, in key order, all below the watermark) into that day's
    /// batches.
    fn merge_into_day(&self, records: &[&Archived]) -> Result<(), StoreError> {
        let day = day_name(records[0].record.not_after);
        let files = sorted_names(&self.dir.join(&day), is_batch)?;
        let mut by_file: BTreeMap<Option<usize>, Vec<&Archived>> = BTreeMap::new();
        for archived in records {
            by_file
                .entry(holding(&files, &archived.key))
                .or_default()
                .push(archived);
        }
        for (file, adding) in by_file {
            // Before the day's first batch: a batch of their own.
            let Some(index) = file else {
                self.write_batch(&day, &adding)?;
                continue;
            };
            let held = self.read_batch(&day, &files[index])?;
            // A full batch gets no more above its end: they start one of their own (late
            // records in order, a long clock step back, would otherwise grow one batch and
            // rewrite it every pass).
            let past_end = held.last().is_none_or(|last| adding[0].key > last.key);
            if past_end && held.len() >= FULL_BATCH {
                self.write_batch(&day, &adding)?;
                continue;
            }
            let mut all: BTreeMap<Vec<u8>, Archived> =
                held.into_iter().map(|a| (a.key.clone(), a)).collect();
            let before = all.len();
            for archived in adding {
                all.entry(archived.key.clone())
                    .or_insert_with(|| archived.clone());
            }
            // Nothing new: what a crash left in both places.
            if all.len() > before {
                let merged: Vec<Archived> = all.into_values().collect();
                self.write_file(&day, &files[index], &merged)?;
            }
        }
        Ok(())
    }

    fn write_batch<A: Borrow<Archived>>(&self, day: &str, batch: &[A]) -> Result<(), StoreError> {
        let name = format!("{}.batch", hex::encode(&batch[0].borrow().key));
        self.write_file(day, &name, batch)
    }

    /// Writes `batch` to `day`/`name` (replacing what is there) durably and atomically.
    fn write_file<A: Borrow<Archived>>(
        &self,
        day: &str,
        name: &str,
        batch: &[A],
    ) -> Result<(), StoreError> {
        let records = batch.iter().map(Borrow::borrow).map(|archived| -> Fields {
            vec![
                archived.key.clone(),
                super::encode_certificate(&archived.record, &archived.der),
                archived.revocation.as_ref().map(encode).unwrap_or_default(),
            ]
        });
        let written = batch_file::write(&self.dir.join(day), Some(&self.dir), name, MAGIC, records);
        self.catalogue.changed(written.is_ok(), |c| {
            c.insert((day.to_owned(), name.to_owned()));
        });
        written
    }

    /// Every batch on disk.
    fn catalogue(&self) -> Result<super::catalogue::Names<'_, Batch>, StoreError> {
        self.catalogue.names(&self.watermark, || {
            let mut batches = BTreeSet::new();
            for day in sorted_names(&self.dir, is_day)? {
                for file in sorted_names(&self.dir.join(&day), is_batch)? {
                    batches.insert((day.clone(), file));
                }
            }
            Ok(batches)
        })
    }

    /// The batch a walk from `from` starts in (the first if `None`): the one holding it,
    /// or the first after it if none of its day does.
    fn first_batch(&self, from: Option<&Position>) -> Result<Option<Batch>, StoreError> {
        let catalogue = self.catalogue()?;
        let Some(position) = from else {
            return Ok(catalogue.first().cloned());
        };
        let day = day_name(position.not_after());
        let bound = (day.clone(), names_up_to(&position.0));
        let holding = catalogue
            .range(..=bound)
            .next_back()
            .filter(|(d, _)| *d == day);
        Ok(holding
            .or_else(|| catalogue.range((day, String::new())..).next())
            .cloned())
    }

    /// The batch after `batch` in walk order.
    fn next_batch(&self, batch: &Batch) -> Result<Option<Batch>, StoreError> {
        Ok(self
            .catalogue()?
            .range((Bound::Excluded(batch.clone()), Bound::Unbounded))
            .next()
            .cloned())
    }

    fn read_batch(&self, day: &str, file: &str) -> Result<Vec<Archived>, StoreError> {
        decode_batch(batch_file::read(&self.dir.join(day).join(file), MAGIC, 3)?)
    }

    /// Reads on from `from` (the start if `None`) in key order, at most `scan` records,
    /// keeping at most `max` of those `keep` accepts; returns them and where to go on
    /// (`None` at the end).
    pub fn walk(
        &self,
        from: Option<&Position>,
        max: usize,
        scan: usize,
        keep: &mut dyn FnMut(&Archived) -> bool,
    ) -> Result<(Vec<Archived>, Option<Position>), StoreError> {
        let mut out = Vec::new();
        let mut scanned = 0;
        let mut batch = self.first_batch(from)?;
        while let Some(current) = batch {
            let (day, file) = &current;
            let path = self.dir.join(day).join(file);
            // None: retention removed it since the listing began; go on with the next.
            if let Some(records) = batch_file::read_unless_removed(&path, MAGIC, 3)? {
                let unread = decode_batch(records)?
                    .into_iter()
                    .filter(|a| from.is_none_or(|p| a.key > p.0));
                for archived in unread {
                    scanned += 1;
                    let key = archived.key.clone();
                    if keep(&archived) {
                        out.push(archived);
                    }
                    if scanned == scan || out.len() == max {
                        return Ok((out, Some(Position(key))));
                    }
                }
            }
            batch = self.next_batch(&current)?;
        }
        Ok((out, None))
    }

    /// Removes every archived certificate that expired at or before `through`: whole days,
    /// then whole batches, then the older part of the batch the cut-off falls inside (which
    /// is rewritten). Returns how many records went.
    pub fn remove_through(&self, through: u64) -> Result<u64, StoreError> {
        let _writing = self.watermark.lock().expect("watermark lock");
        let mut removed = 0;
        for day in sorted_names(&self.dir, is_day)? {
            let folder = self.dir.join(&day);
            let number: u64 = day.parse().unwrap_or(u64::MAX);
            let last_second = number.saturating_add(1).saturating_mul(SECONDS_PER_DAY) - 1;
            for file in sorted_names(&folder, is_batch)? {
                let mut records = self.read_batch(&day, &file)?;
                let gone = records
                    .iter()
                    .take_while(|a| a.record.not_after <= through)
                    .count();
                removed += gone as u64;
                if gone < records.len() {
                    // Keys only grow from here on: nothing later is due.
                    if gone > 0 {
                        records.drain(..gone);
                        self.write_file(&day, &file, &records)?;
                    }
                    return Ok(removed);
                }
                let path = folder.join(&file);
                let gone = fs::remove_file(&path);
                self.catalogue.changed(gone.is_ok(), |c| {
                    c.remove(&(day.clone(), file.clone()));
                });
                gone.map_err(io("removing", &path))?;
            }
            if last_second > through {
                return Ok(removed);
            }
            let gone = fs::remove_dir_all(&folder);
            self.catalogue
                .changed(gone.is_ok(), |c| c.retain(|(d, _)| *d != day));
            gone.map_err(io("removing", &folder))?;
        }
        Ok(removed)
    }
}
