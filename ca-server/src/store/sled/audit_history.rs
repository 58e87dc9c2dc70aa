//! The archive of old audit entries: what keeps the audit log's retention (90 days by
//! default, millions of entries in a large mesh) out of the sled database, whose opening
//! reads its whole page table.
//!
//! Entries recorded more than a few minutes ago, all but the newest, move into batch files
//! (`batch_file.rs`) named by their first sequence number (16 hex digits, so names sort in
//! order): each record is the sequence (8 bytes, big-endian) and the entry exactly as
//! stored, so the chain verifies across the move. A batch is on disk before its entries
//! leave the database; the newest batch's last sequence is the watermark, and a pass a
//! crash interrupted only removes what is at or below it. Readers take the archive up to
//! the watermark, then the database after it, so an entry in both places is read once.
//! They find the batch to start in from the archive's catalogue (`catalogue.rs`), not by
//! listing the folder, which a long audit retention fills with hundreds of thousands.

use std::ops::Bound::{Excluded, Unbounded};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::batch_file::{self, Fields, is_batch, sorted_names};
use super::catalogue::{Catalogue, Names};
use crate::store::StoreError;

const MAGIC: &[u8] = b"trellis-audit-history-1\n";

/// An entry: its sequence number and its stored value.
pub(super) type Entry = (u64, Vec<u8>);

#[derive(Debug)]
pub(super) struct AuditHistory {
    dir: PathBuf,
    /// The last sequence archived (`None` when empty). Held while batches are written or
    /// removed.
    watermark: Mutex<Option<u64>>,
    /// Every batch as (first sequence, file name), in order.
    catalogue: Catalogue<(u64, String)>,
}

fn first_of(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_suffix(".batch")?, 16).ok()
}

/// The entries of a batch read from `path`.
fn decode_entries(path: &Path, records: Vec<Fields>) -> Result<Vec<Entry>, StoreError> {
    records
        .into_iter()
        .map(|fields| {
            let [sequence, value] = <[Vec<u8>; 2]>::try_from(fields)
                .expect("batch_file::read returns the fields asked for");
            let sequence = <[u8; 8]>::try_from(sequence.as_slice())
                .map_err(|_| batch_file::corrupt(path, "sequence is not 8 bytes"))?;
            Ok((u64::from_be_bytes(sequence), value))
        })
        .collect()
}

impl AuditHistory {
    /// The archive in `dir` (created on first write); reads only the newest batch.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        batch_file::remove_partials(&dir)?;
        let history = Self {
            dir,
            watermark: Mutex::new(None),
            catalogue: Catalogue::new(),
        };
        let last = match history.files()?.last() {
            Some(newest) => history.read(newest)?.last().map(|(sequence, _)| *sequence),
            None => None,
        };
        *history.watermark.lock().expect("watermark lock") = last;
        Ok(history)
    }

    /// The last sequence archived.
    pub fn watermark(&self) -> Option<u64> {
        *self.watermark.lock().expect("watermark lock")
    }

    fn files(&self) -> Result<Vec<String>, StoreError> {
        sorted_names(&self.dir, |n| is_batch(n) && first_of(n).is_some())
    }

    /// Every batch on disk, by first sequence.
    fn catalogue(&self) -> Result<Names<'_, (u64, String)>, StoreError> {
        self.catalogue.names(&self.watermark, || {
            Ok(self
                .files()?
                .into_iter()
                .filter_map(|name| Some((first_of(&name)?, name)))
                .collect())
        })
    }

    fn read(&self, file: &str) -> Result<Vec<Entry>, StoreError> {
        let path = self.dir.join(file);
        decode_entries(&path, batch_file::read(&path, MAGIC, 2)?)
    }

    /// [`AuditHistory::read`], or `None` if retention removed the file meanwhile.
    fn read_unless_removed(&self, file: &str) -> Result<Option<Vec<Entry>>, StoreError> {
        let path = self.dir.join(file);
        batch_file::read_unless_removed(&path, MAGIC, 2)?
            .map(|fields| decode_entries(&path, fields))
            .transpose()
    }

    /// Writes a batch (the watermark held).
    fn write(&self, file: &str, entries: &[Entry]) -> Result<(), StoreError> {
        let records = entries.iter().map(|(sequence, value)| -> Fields {
            vec![sequence.to_be_bytes().to_vec(), value.clone()]
        });
        let written = batch_file::write(&self.dir, None, file, MAGIC, records);
        self.catalogue.changed(written.is_ok(), |c| {
            if let Some(first) = first_of(file) {
                c.insert((first, file.to_owned()));
            }
        });
        written
    }

    /// Writes `entries` (in order, every one above the watermark) as one batch, durably.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(&(first, _)) = entries.first() else {
            return Ok(());
        };
        let mut watermark = self.watermark.lock().expect("watermark lock");
        self.write(&format!("{first:016x}.batch"), entries)?;
        *watermark = entries.last().map(|(sequence, _)| *sequence);
        Ok(())
    }

    /// At most `limit` entries with sequence above `after`, in order.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        // The batch holding `after + 1` is the last one named at or below it (the first if
        // none is).
        let wanted = after.saturating_add(1);
        let mut batch = {
            let catalogue = self.catalogue()?;
            let at_or_below = match wanted.checked_add(1) {
                Some(above) => catalogue.range(..(above, String::new())).next_back(),
                None => catalogue.last(),
            };
            at_or_below.or_else(|| catalogue.first()).cloned()
        };
        let mut out = Vec::new();
        while let Some(current) = batch {
            batch = self
                .catalogue()?
                .range((Excluded(current.clone()), Unbounded))
                .next()
                .cloned();
            let Some(entries) = self.read_unless_removed(&current.1)? else {
                continue;
            };
            for entry in entries
                .into_iter()
                .filter(|(sequence, _)| *sequence > after)
            {
                if out.len() == limit {
                    return Ok(out);
                }
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The entry numbered `sequence`, if it is archived.
    pub fn get(&self, sequence: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .after(sequence.saturating_sub(1), 1)?
            .into_iter()
            .find(|(s, _)| *s == sequence)
            .map(|(_, value)| value))
    }

    /// Removes the archived entries numbered `cut` or below: whole batches, and the older
    /// part of the one `cut` falls inside (rewritten under its name). Returns how many.
    pub fn remove_through(&self, cut: u64) -> Result<u64, StoreError> {
        let _writing = self.watermark.lock().expect("watermark lock");
        let mut removed = 0;
        for file in self.files()? {
            let mut entries = self.read(&file)?;
            let gone = entries.iter().take_while(|(s, _)| *s <= cut).count();
            removed += gone as u64;
            if gone < entries.len() {
                if gone > 0 {
                    entries.drain(..gone);
                    self.write(&file, &entries)?;
                }
                return Ok(removed);
            }
            let path = self.dir.join(&file);
            let gone = std::fs::remove_file(&path);
            self.catalogue.changed(gone.is_ok(), |c| {
                if let Some(first) = first_of(&file) {
                    c.remove(&(first, file.clone()));
                }
            });
            gone.map_err(batch_file::io("removing", &path))?;
        }
        Ok(removed)
    }
}
