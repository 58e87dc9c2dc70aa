//! Compaction: copying the database into a fresh folder, so that what opening it reads
//! follows the live certificates, not everything the CA ever wrote.
//!
//! sled 0.34 reuses the log space of records removed soon after they were written, but it
//! never shrinks its log file, and opening a database reads that file. A store whose log
//! once held much more than it does now (the whole history, in stores from before the
//! archive in `history.rs`; a live set that shrank) would pay for its past at every start,
//! in time and memory. The database itself holds little more than the live certificates,
//! so a copy of it is small. A checkpoint (`checkpoint.rs`), which already has the database
//! paused, flushed and to itself, copies it when its log has grown past [`CompactWhen`];
//! besides the checkpoints after certificates, an archiving pass that reaches its end
//! starts one when the log is due (`Live::compact_if_due`), which is when the copy is
//! smallest.
//!
//! Layout: until the first compaction sled's files are in the store's own folder, as older
//! releases left them; after it, in a subfolder `sled-<n>` that the file [`CURRENT`] names.
//! The swap survives a crash at any point:
//! 1. every tree is copied into `sled-<n+1>`, flushed, and its files and folder synced;
//! 2. `CURRENT` is written under another name, synced, renamed, and the store's folder
//!    synced: from here on the copy is the database;
//! 3. the next opening removes what is no longer named: a copy that never became current
//!    (a crash before 2), or the previous database (a crash after it, or none).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::live::Trees;

/// Names the folder that holds the database, once it has been compacted.
pub const CURRENT: &str = "CURRENT";
const CURRENT_PARTIAL: &str = "CURRENT.partial";
/// A compacted database's folder: this, then its number.
const COPY_PREFIX: &str = "sled-";
/// The files sled 0.34 keeps in its folder (besides `snap.<lsn>` snapshots).
const SLED_FILES: [&str; 3] = ["db", "conf", "blobs"];
/// Keys copied per batch: bounds the memory of a copy, not its atomicity (nobody reads the
/// copy before it is complete).
const COPY_BATCH: usize = 10_000;

/// When a checkpoint compacts: once sled's log is larger than `floor` bytes and than
/// `growth` times what the last copy wrote.
#[derive(Debug, Clone, Copy)]
pub struct CompactWhen {
    pub floor: u64,
    pub growth: u64,
}

impl CompactWhen {
    /// A log of 1 GiB opens in about a second. Past it, four times the last copy bounds
    /// what opening reads to a few times the live data, while a store whose log stays
    /// near its data (sled reuses the space of records removed soon enough) is never
    /// copied, and so never paused for it.
    pub const DEFAULT: Self = Self {
        floor: 1 << 30,
        growth: 4,
    };

    /// Whether the opening `trees`, whose log is `log_len` bytes, is due for a copy.
    pub fn due(&self, log_len: u64, trees: &Trees) -> bool {
        log_len > self.floor && log_len > trees.copied_len.saturating_mul(self.growth)
    }
}

/// Where the database's files are, and how large its log was when it was copied there (0
/// before the first compaction).
#[derive(Debug)]
pub struct Location {
    pub dir: PathBuf,
    pub copied_len: u64,
}

/// The folder the database of the store in `store_dir` is in: the store's own until the
/// first compaction, then the one [`CURRENT`] names.
pub fn locate(store_dir: &Path) -> std::io::Result<Location> {
    let text = match std::fs::read_to_string(store_dir.join(CURRENT)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Location {
                dir: store_dir.to_path_buf(),
                copied_len: 0,
            });
        }
        Err(e) => return Err(e),
    };
    let damaged = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: {why}; restore the store's folder from a backup",
                store_dir.join(CURRENT).display()
            ),
        )
    };
    let mut fields = text.split_whitespace();
    let name = fields.next().unwrap_or_default();
    let copied_len = fields.next().and_then(|n| n.parse().ok());
    let (Some(copied_len), true) = (copied_len, copy_number(name).is_some()) else {
        return Err(damaged(format!(
            "expected `{COPY_PREFIX}<number> <bytes>`, found {:?}",
            text.trim()
        )));
    };
    let dir = store_dir.join(name);
    if !dir.join("db").is_file() {
        return Err(damaged(format!("it names {name}, which holds no database")));
    }
    Ok(Location { dir, copied_len })
}

fn copy_number(name: &str) -> Option<u64> {
    name.strip_prefix(COPY_PREFIX)?.parse().ok()
}

/// Removes what a compaction left behind in `store_dir` that is not the database in
/// `current`: a copy that never became current, an unfinished `CURRENT`, and the database
/// a finished copy replaced. Called with sled's lock on `current` held, so no other process
/// is compacting this store.
pub fn remove_leftovers(store_dir: &Path, current: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(store_dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let replaced_database = current != store_dir
            && (SLED_FILES.contains(&name.as_ref()) || name.starts_with("snap."));
        let stale = (copy_number(&name).is_some() && path != current)
            || name == CURRENT_PARTIAL
            || replaced_database;
        if !stale {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        tracing::info!(file = %path.display(), "removed what a store compaction left behind");
    }
    Ok(())
}

/// Copies every tree of `from` (paused and flushed: nothing writes to it) into a new
/// folder beside it and makes that the database. Returns the copy's log length. On an error
/// before the copy is current, the copy is removed and the database is as it was.
pub fn copy(store_dir: &Path, from: &Trees) -> Result<u64, sled::Error> {
    let number = from
        .dir
        .file_name()
        .and_then(|n| copy_number(&n.to_string_lossy()))
        .unwrap_or(0)
        + 1;
    let name = format!("{COPY_PREFIX}{number}");
    let dir = store_dir.join(&name);
    let written = write_copy(from, &dir).and_then(|len| {
        write_current(store_dir, &format!("{name} {len}\n")).map_err(sled::Error::Io)?;
        Ok(len)
    });
    if written.is_err() && locate(store_dir).is_ok_and(|l| l.dir != dir) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    written
}

fn write_copy(from: &Trees, dir: &Path) -> Result<u64, sled::Error> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    {
        let to = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        for name in from.db.tree_names() {
            let source = from.db.open_tree(&name)?;
            let target = to.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for pair in source.iter() {
                let (key, value) = pair?;
                batch.insert(key, value);
                in_batch += 1;
                if in_batch == COPY_BATCH {
                    target.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
            target.apply_batch(batch)?;
        }
        to.flush()?;
        sync_tree(dir)?;
    }
    Ok(std::fs::metadata(dir.join("db"))?.len())
}

/// Syncs every file under `dir`, then the folders themselves.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

fn write_current(store_dir: &Path, text: &str) -> std::io::Result<()> {
    let partial = store_dir.join(CURRENT_PARTIAL);
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, store_dir.join(CURRENT))?;
    std::fs::File::open(store_dir)?.sync_all()
}
