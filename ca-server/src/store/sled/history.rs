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
//!
//! Crash safety: a batch is on disk before its records leave the database. A crash in
//! between leaves them in both; the next pass finds them at or below the watermark and
//! only removes them from the database, so none is archived twice.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use trellis_identity::hex;

use crate::store::{CertRecord, RevocationRecord, StoreError, decode, encode};

/// What starts every batch file (and names its format).
const MAGIC: &[u8] = b"trellis-history-1\n";
const SECONDS_PER_DAY: u64 = 86_400;

/// One archived certificate.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Archived {
    /// The expiry index key it had (not-after + serial).
    pub key: Vec<u8>,
    pub record: CertRecord,
    pub der: Vec<u8>,
    pub revocation: Option<RevocationRecord>,
}

/// Where a walk of the archive is: a batch file and the records of it already read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Position {
    pub day: String,
    pub file: String,
    pub skip: usize,
}

impl Position {
    /// As text, for a page token: `<day>/<file>/<skip>`.
    pub fn encode(&self) -> String {
        format!("{}/{}/{}", self.day, self.file, self.skip)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let (day, file, skip) = (parts.next()?, parts.next()?, parts.next()?);
        // Names as the archive writes them, nothing else (no path can be smuggled in).
        let batch_name = |name: &str| {
            name.strip_suffix(".batch")
                .is_some_and(|key| !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        (parts.next().is_none() && is_day(day) && batch_name(file)).then_some(())?;
        Some(Self {
            day: day.to_owned(),
            file: file.to_owned(),
            skip: skip.parse().ok()?,
        })
    }
}

/// The archive folder and its watermark.
#[derive(Debug)]
pub(super) struct History {
    dir: PathBuf,
    /// The largest key archived: the newest batch's last record (`None` when empty). Held
    /// while batches are written or days removed, so that the two never meet in a folder.
    watermark: Mutex<Option<Vec<u8>>>,
}

fn io(what: &str, path: &Path) -> impl Fn(std::io::Error) -> StoreError {
    let place = format!("{what} {}", path.display());
    move |e| StoreError::Storage(format!("certificate archive: {place}: {e}"))
}

fn corrupt(path: &Path, reason: &str) -> StoreError {
    StoreError::Corrupt {
        table: "history",
        reason: format!("{}: {reason}", path.display()),
    }
}

fn day_name(not_after: u64) -> String {
    format!("{:08}", not_after / SECONDS_PER_DAY)
}

/// Names in `dir` (sorted) that `keep` accepts; none if `dir` does not exist.
fn sorted_names(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.map_err(io("listing", dir))?.file_name();
        if let Some(name) = name.to_str().filter(|n| keep(n)) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn is_day(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

fn is_batch(name: &str) -> bool {
    name.ends_with(".batch")
}

impl History {
    /// The archive in `dir` (created on first write); reads only the newest batch.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        let history = Self {
            dir,
            watermark: Mutex::new(None),
        };
        let days = sorted_names(&history.dir, is_day)?;
        // A batch a crash interrupted before its rename was never counted as archived.
        for day in &days {
            let folder = history.dir.join(day);
            for partial in sorted_names(&folder, |n| n.ends_with(".partial"))? {
                let path = folder.join(partial);
                fs::remove_file(&path).map_err(io("removing", &path))?;
            }
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

    /// The largest key archived.
    pub fn watermark(&self) -> Option<Vec<u8>> {
        self.watermark.lock().expect("watermark lock").clone()
    }

    /// Writes `batch` (in key order, every key above the watermark) durably, one file per
    /// day of expiry.
    pub fn append(&self, batch: &[Archived]) -> Result<(), StoreError> {
        let mut watermark = self.watermark.lock().expect("watermark lock");
        let mut start = 0;
        while start < batch.len() {
            let day = day_name(batch[start].record.not_after);
            let len = batch[start..]
                .iter()
                .take_while(|a| day_name(a.record.not_after) == day)
                .count();
            self.write_batch(&day, &batch[start..start + len])?;
            start += len;
        }
        if let Some(last) = batch.last() {
            *watermark = Some(last.key.clone());
        }
        Ok(())
    }

    fn write_batch(&self, day: &str, batch: &[Archived]) -> Result<(), StoreError> {
        self.write_file(day, &format!("{}.batch", hex::encode(&batch[0].key)), batch)
    }

    /// Writes `batch` to `day`/`name` (replacing what is there) durably and atomically.
    fn write_file(&self, day: &str, name: &str, batch: &[Archived]) -> Result<(), StoreError> {
        let folder = self.dir.join(day);
        fs::create_dir_all(&folder).map_err(io("creating", &folder))?;
        let mut bytes = MAGIC.to_vec();
        for archived in batch {
            put(&mut bytes, &archived.key);
            put(
                &mut bytes,
                &super::encode_certificate(&archived.record, &archived.der),
            );
            put(
                &mut bytes,
                &archived.revocation.as_ref().map(encode).unwrap_or_default(),
            );
        }
        let temporary = folder.join(format!("{name}.partial"));
        let mut file = fs::File::create(&temporary).map_err(io("creating", &temporary))?;
        file.write_all(&bytes).map_err(io("writing", &temporary))?;
        file.sync_all().map_err(io("syncing", &temporary))?;
        let path = folder.join(name);
        fs::rename(&temporary, &path).map_err(io("renaming", &temporary))?;
        // The rename (and a new day's folder) last only once their folders are synced.
        for dir in [&folder, &self.dir] {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", dir))?;
        }
        Ok(())
    }

    fn read_batch(&self, day: &str, file: &str) -> Result<Vec<Archived>, StoreError> {
        let path = self.dir.join(day).join(file);
        let bytes = fs::read(&path).map_err(io("reading", &path))?;
        let mut rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| corrupt(&path, "not a certificate archive batch"))?;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let mut take = || take(&mut rest).ok_or_else(|| corrupt(&path, "truncated record"));
            let key = take()?.to_vec();
            let (record, der) = super::decode_certificate(take()?)?;
            let revocation = match take()? {
                [] => None,
                json => Some(decode("history", json)?),
            };
            out.push(Archived {
                key,
                record,
                der,
                revocation,
            });
        }
        Ok(out)
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
        let days = sorted_names(&self.dir, is_day)?;
        for day in days.iter().filter(|d| from.is_none_or(|p| **d >= p.day)) {
            let files = sorted_names(&self.dir.join(day), is_batch)?;
            let files = files
                .iter()
                .filter(|f| from.is_none_or(|p| (day, *f) >= (&p.day, &p.file)));
            for file in files {
                let skip = match from {
                    Some(p) if p.day == *day && p.file == *file => p.skip,
                    _ => 0,
                };
                let records = match self.read_batch(day, file) {
                    // Retention removed it since the listing began: go on with the next.
                    Err(StoreError::Storage(_)) if !self.dir.join(day).join(file).exists() => {
                        continue;
                    }
                    other => other?,
                };
                for (index, archived) in records.into_iter().enumerate().skip(skip) {
                    if scanned == scan || out.len() == max {
                        let position = Position {
                            day: day.clone(),
                            file: file.clone(),
                            skip: index,
                        };
                        return Ok((out, Some(position)));
                    }
                    scanned += 1;
                    if keep(&archived) {
                        out.push(archived);
                    }
                }
            }
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
                fs::remove_file(&path).map_err(io("removing", &path))?;
            }
            if last_second > through {
                return Ok(removed);
            }
            fs::remove_dir_all(&folder).map_err(io("removing", &folder))?;
        }
        Ok(removed)
    }
}

/// Appends `value` with its 4-byte big-endian length.
fn put(bytes: &mut Vec<u8>, value: &[u8]) {
    let len = u32::try_from(value.len()).expect("an archived value is far below 4 GiB");
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(value);
}

/// Takes one length-prefixed value off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let value = rest.get(4..4 + len)?;
    *rest = &rest[4 + len..];
    Some(value)
}
