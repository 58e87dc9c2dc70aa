//! The open database, reopening it after a write failure, and pausing it while it is
//! reopened to bound its recovery (`checkpoint.rs`).
//!
//! sled 0.34 turns the first failed log write (ENOSPC, EROFS, EIO; from our flush or from
//! its own background flusher) into a sticky "global error": every later write and flush of
//! that `Db` fails, even once space is back. Only opening the database again clears it
//! (`PageCache::start` resets the error), and a second opening waits for the first to be
//! closed (sled holds an exclusive `flock` on its file).
//!
//! So on an I/O error the store drops its handles, and every request gets `Unavailable`
//! naming the cause and the fix, while a background task reopens the database every
//! [`RETRY`] and keeps it only if a probe write can be flushed. Nothing else in the CA stops:
//! the trust bundle, revocation list and health are served from memory.
//!
//! Each opening is a *generation*. A writer takes a [`Mark`] before it writes, and
//! [`crate::store::Store::durable`] acknowledges only if the database it flushed is still the
//! generation the mark names. A write made to a generation that failed may or may not be on
//! disk after the reopen, so it is never acknowledged; since generations only grow and a
//! failed generation refuses every write, "same generation at the mark and at the flush"
//! means every write in between went to the database that was flushed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::commit::Flushable;
use super::compact::{self, CompactWhen};
use crate::store::{Cause, Failure, Mark, StoreError};

/// How often a failed database is reopened.
pub const RETRY: Duration = Duration::from_millis(500);
/// Log a still-failing reopen once per this many attempts (every 30 s).
const LOG_EVERY: u64 = 60;
/// The key of the write that proves a reopened database can write again.
const PROBE_KEY: &[u8] = b"write_probe";

/// One opening of the database and its trees.
#[derive(Debug)]
pub(super) struct Trees {
    pub generation: u64,
    /// The folder sled's files are in (`compact.rs`).
    pub dir: PathBuf,
    /// How large the log was when it was copied into `dir` (0 if it never was).
    pub copied_len: u64,
    pub db: sled::Db,
    /// sled's log file, opened by us for `fdatasync` (see `commit.rs`).
    log: Arc<std::fs::File>,
    pub certs: sled::Tree,
    pub by_identity: sled::Tree,
    /// Not-after (8 bytes, big-endian) + serial → the certificate's metadata (`index.rs`).
    pub by_expiry: sled::Tree,
    pub roots: sled::Tree,
    pub intermediates: sled::Tree,
    pub tokens: sled::Tree,
    pub revocations: sled::Tree,
    /// SPIFFE ID → the last bundle version it acknowledged (`acks.rs`).
    pub acks: sled::Tree,
    /// The audit chain (see `audit.rs`).
    pub audit: sled::Tree,
    /// Audit entries written before the chain existed, chained into `audit` on first use.
    pub legacy_audit: sled::Tree,
    pub audit_checkpoints: sled::Tree,
    pub federations: sled::Tree,
    /// The audit chain's head in this opening, loaded on first use (see `audit.rs`).
    pub audit_head: Mutex<Option<trellis_identity::audit_log::Head>>,
    pub meta: sled::Tree,
    pub jwt_keys: sled::Tree,
}

impl Trees {
    /// Opens the database of the store in `store_dir`, wherever compaction put it.
    fn open(store_dir: &Path, generation: u64) -> Result<Self, sled::Error> {
        let location = compact::locate(store_dir)?;
        let dir = location.dir;
        remove_unfinished_snapshots(&dir).map_err(sled::Error::Io)?;
        let db = sled::Config::new()
            .path(&dir)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        // Only now, with sled's lock held: no other process is compacting this store.
        if let Err(e) = compact::remove_leftovers(store_dir, &dir) {
            tracing::warn!(error = %e, "cannot remove what a store compaction left behind");
        }
        // sled's log file, which its `Config::path` puts at `<dir>/db`. Opened for writing
        // only because some systems refuse `fsync` on a read-only descriptor; never written.
        let log = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("db"))
            .map_err(sled::Error::Io)?;
        let tree = |name: &str| db.open_tree(name);
        Ok(Self {
            generation,
            dir,
            copied_len: location.copied_len,
            log: Arc::new(log),
            certs: tree("certs")?,
            by_identity: tree("by_identity")?,
            by_expiry: tree("by_expiry")?,
            roots: tree("roots")?,
            intermediates: tree("intermediates")?,
            tokens: tree("tokens")?,
            revocations: tree("revocations")?,
            audit: tree("audit_chain")?,
            legacy_audit: tree("audit")?,
            audit_checkpoints: tree("audit_checkpoints")?,
            federations: tree("federations")?,
            audit_head: Mutex::new(None),
            acks: tree("acks")?,
            meta: tree("meta")?,
            jwt_keys: tree("jwt_keys")?,
            db,
        })
    }

    /// Opens and proves that a write can be flushed (space is back, the filesystem is
    /// writable). Dropping a failed opening closes it again.
    fn open_writable(dir: &Path, generation: u64) -> Result<Self, sled::Error> {
        let trees = Self::open(dir, generation)?;
        trees.meta.insert(PROBE_KEY, &generation.to_be_bytes())?;
        trees.flushable().flush()?;
        Ok(trees)
    }

    /// The length of sled's log file now, in bytes (0 if it cannot be read).
    pub fn log_len(&self) -> u64 {
        self.log.metadata().map_or(0, |m| m.len())
    }

    /// This opening as the group-commit task flushes it.
    pub fn flushable(&self) -> Flushable {
        Flushable {
            db: self.db.clone(),
            log: self.log.clone(),
        }
    }
}

/// Removes snapshot files that sled 0.34 began to write and never finished.
///
/// sled writes a snapshot only while it opens a database (`read_snapshot_or_default` →
/// `advance_snapshot` → `write_snapshot` in `pagecache/snapshot.rs`): it replays the log
/// from the newest finished snapshot `snap.<lsn>`, writes the result to
/// `snap.<lsn>.generating`, syncs it, renames it to `snap.<lsn>`, and only then deletes the
/// older snapshots. An opening that fails part-way (ENOSPC on a full disk, a crash) leaves
/// the `.generating` file behind, often empty. Nothing else refers to it, and everything in
/// it is recomputed from what is still there (the older `snap.*`, or none, and the log),
/// exactly as that opening did; so it is safe to delete. Left in place it is fatal: sled
/// reads the snapshot file whose name sorts last, which is the `.generating` one, and refuses
/// to open ("Read corrupted data") on every start that follows.
fn remove_unfinished_snapshots(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            tracing::warn!(
                file = %entry.path().display(),
                "removed an unfinished database snapshot left by an interrupted start; \
                 sled rebuilds it from the log"
            );
        }
    }
    Ok(())
}

/// Classifies a sled error; `None` if it is not an I/O failure (corruption, a bug). sled
/// keeps an I/O error's kind when it clones it, not the OS error number.
pub(super) fn cause_of(e: &sled::Error) -> Option<Cause> {
    match e {
        sled::Error::Io(io) => Some(Cause::of_io(io)),
        _ => None,
    }
}

#[derive(Debug)]
enum State {
    Open(Arc<Trees>),
    Failed(Failure),
    /// Closed on purpose and being opened again (`checkpoint.rs`): callers wait.
    Checkpointing,
}

/// The current opening of the database, or why there is none.
#[derive(Debug)]
pub(super) struct Live {
    dir: PathBuf,
    state: Mutex<State>,
    /// Signalled when a checkpoint ends, whichever way.
    resumed: Condvar,
    runtime: tokio::runtime::Handle,
    /// Certificates recorded since the database was last opened.
    written: AtomicU64,
    /// How many of them start a checkpoint (`u64::MAX`: never).
    checkpoint_every: u64,
    /// When a checkpoint also compacts.
    compact_when: CompactWhen,
    /// Until when [`Live::compact_if_due`] asks for no compaction, after one failed.
    compact_retry_after: Mutex<Option<Instant>>,
    /// Compactions since start that succeeded.
    compactions: AtomicU64,
    /// Compactions since start that failed.
    failed_compactions: AtomicU64,
    checkpointing: AtomicBool,
    /// Generations closed by a checkpoint with every write flushed (the newest few).
    closed_clean: Mutex<Vec<u64>>,
}

/// How long [`Live::compact_if_due`] waits after a failed compaction.
const COMPACT_RETRY: Duration = Duration::from_secs(600);
/// How long a caller waits for a checkpoint to reopen the database before it is told to
/// retry.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(10);
/// How many cleanly closed generations [`Live::closed_clean`] remembers: a write is
/// acknowledged within a few checkpoints of being made, or not at all.
const CLEAN_KEPT: usize = 8;

/// How long an opening waits for the database's lock: a predecessor (a CA restarting in the
/// same process, or one still exiting) releases it only once sled's background flusher has
/// let go of the files, a moment after the last handle is dropped.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// [`Trees::open`], retried while another opening still holds sled's exclusive lock.
pub(super) fn open_when_unlocked(dir: &Path, generation: u64) -> Result<Trees, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match Trees::open(dir, generation) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Live {
    /// Opens the database (generation 1). Needs a tokio runtime, for reopening. After every
    /// `checkpoint_every` certificates recorded, it is closed and opened again.
    pub fn open(
        dir: &Path,
        checkpoint_every: u64,
        compact_when: CompactWhen,
    ) -> Result<Arc<Self>, StoreError> {
        let trees = open_when_unlocked(dir, 1).map_err(|e| match cause_of(&e) {
            _ if matches!(e, sled::Error::Corruption { .. }) => StoreError::Damaged {
                dir: dir.to_path_buf(),
                detail: e.to_string(),
            },
            Some(Cause::Io(_)) | None => StoreError::Storage(e.to_string()),
            Some(cause) => StoreError::Unavailable(Failure::new(cause, dir)),
        })?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::Open(Arc::new(trees))),
            resumed: Condvar::new(),
            runtime: tokio::runtime::Handle::current(),
            written: AtomicU64::new(0),
            checkpoint_every,
            compact_when,
            compact_retry_after: Mutex::default(),
            compactions: AtomicU64::new(0),
            failed_compactions: AtomicU64::new(0),
            checkpointing: AtomicBool::new(false),
            closed_clean: Mutex::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current opening, or the failure that closed it; during a checkpoint, waits for
    /// the next opening.
    pub fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        // Read the clock only when there is something to wait for: this is every store call.
        let mut deadline = None;
        let mut state = self.lock();
        loop {
            match &*state {
                State::Open(trees) => return Ok(trees.clone()),
                State::Failed(failure) => return Err(StoreError::Unavailable(failure.clone())),
                State::Checkpointing => {
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + CHECKPOINT_WAIT);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(StoreError::Retry(
                            "the certificate store is being reopened to bound its recovery \
                             log and took longer than usual; retry"
                                .into(),
                        ));
                    }
                    let wait = || {
                        self.resumed
                            .wait_timeout(state, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    };
                    // On a runtime worker, its other tasks move to another thread while
                    // this one waits: the group-commit task among them must finish the
                    // flush that still holds the old opening, or it never closes.
                    state = match tokio::runtime::Handle::try_current() {
                        Ok(h)
                            if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                        {
                            tokio::task::block_in_place(wait)
                        }
                        _ => wait(),
                    };
                }
            }
        }
    }

    /// The generation a write starting now goes to (0, never a real generation, if none).
    pub fn mark(&self) -> Mark {
        self.trees().map_or(Mark(0), |trees| Mark(trees.generation))
    }

    /// Whether checkpoints closed every generation from `from` up to (not including)
    /// `current`, each with all its writes flushed: then a write made to any of them is
    /// durable once `current` is flushed.
    pub fn closed_clean_between(&self, from: u64, current: u64) -> bool {
        let clean = self.closed_clean.lock().unwrap_or_else(|p| p.into_inner());
        from != 0 && from <= current && (from..current).all(|g| clean.contains(&g))
    }

    /// Counts a certificate recorded; after `checkpoint_every` of them, starts a checkpoint
    /// on a thread of its own (unless one is running).
    pub fn wrote_certificate(self: &Arc<Self>) {
        let written = self.written.fetch_add(1, Ordering::Relaxed) + 1;
        if written >= self.checkpoint_every {
            self.start_checkpoint();
        }
    }

    /// Starts a checkpoint, which compacts, if sled's log has grown past what
    /// [`CompactWhen`] allows and no compaction failed lately. For when much has just left
    /// the database (an archiving pass that reached its end), which is when a copy is
    /// smallest: a store upgraded from before the archive gets its log back then, not only
    /// after its next `checkpoint_every` certificates.
    pub fn compact_if_due(self: &Arc<Self>) {
        let Some(trees) = self.open_now() else {
            return;
        };
        let log_len = trees.log_len();
        let retry_after = *self
            .compact_retry_after
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.compact_when.due(log_len, &trees) && retry_after.is_none_or(|t| Instant::now() >= t)
        {
            self.start_checkpoint();
        }
    }

    /// A compaction failed: [`Live::compact_if_due`] waits [`COMPACT_RETRY`] before it
    /// asks for another (a checkpoint after certificates still tries).
    pub(super) fn compaction_failed(&self) {
        self.failed_compactions.fetch_add(1, Ordering::Relaxed);
        *self
            .compact_retry_after
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + COMPACT_RETRY);
    }

    /// A compaction succeeded.
    pub(super) fn compacted(&self) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
    }

    /// Compactions since start: (succeeded, failed).
    pub(super) fn compaction_counts(&self) -> (u64, u64) {
        (
            self.compactions.load(Ordering::Relaxed),
            self.failed_compactions.load(Ordering::Relaxed),
        )
    }

    /// sled's log size in the current opening, without waiting for a checkpoint (`None`
    /// during one, or while the database is closed after a failure).
    pub(super) fn log_len_now(&self) -> Option<u64> {
        self.open_now().map(|trees| trees.log_len())
    }

    /// The current opening, if the database is open now: unlike [`Live::trees`], never
    /// waits for a checkpoint.
    fn open_now(&self) -> Option<Arc<Trees>> {
        match &*self.lock() {
            State::Open(trees) => Some(trees.clone()),
            State::Failed(_) | State::Checkpointing => None,
        }
    }

    /// Starts a checkpoint on a thread of its own, unless one is running.
    fn start_checkpoint(self: &Arc<Self>) {
        if self.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        let live = self.clone();
        let spawned = std::thread::Builder::new()
            .name("trellis-sled-checkpoint".into())
            .spawn(move || {
                super::checkpoint::run(&live);
                live.checkpointing.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the store checkpoint; trying again later");
            self.checkpointing.store(false, Ordering::Release);
        }
    }

    /// Turns an error of generation `generation` into a [`StoreError`]; an I/O error closes
    /// that generation and starts reopening.
    pub fn fail(self: &Arc<Self>, generation: u64, e: sled::Error) -> StoreError {
        let Some(cause) = cause_of(&e) else {
            return StoreError::Storage(e.to_string());
        };
        let failure = Failure::new(cause, &self.dir);
        let mut state = self.lock();
        // Only the generation that failed is closed; an older generation's error arriving
        // late says nothing about the current opening.
        if !matches!(&*state, State::Open(trees) if trees.generation == generation) {
            return StoreError::Unavailable(failure);
        }
        let old = match std::mem::replace(&mut *state, State::Failed(failure.clone())) {
            State::Open(old) => old,
            State::Failed(_) | State::Checkpointing => return StoreError::Unavailable(failure),
        };
        drop(state);
        tracing::error!(
            error = %failure,
            generation,
            "the certificate store cannot write; refusing to issue until it is reopened"
        );
        self.runtime
            .spawn(reopen(Arc::downgrade(self), Some(old), generation + 1));
        StoreError::Unavailable(failure)
    }

    fn note_reopen_failure(&self, e: &sled::Error) {
        // A lock conflict (the old opening not yet closed) says nothing new about the disk.
        let Some(cause @ (Cause::DiskFull | Cause::ReadOnly)) = cause_of(e) else {
            return;
        };
        if let State::Failed(failure) = &mut *self.lock() {
            failure.cause = cause;
        }
    }

    fn install(&self, trees: Trees) {
        *self.lock() = State::Open(Arc::new(trees));
        self.resumed.notify_all();
    }

    /// Takes the current opening out for a checkpoint; callers wait from now on. `None` if
    /// the database is not open.
    pub(super) fn pause(&self) -> Option<Arc<Trees>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Checkpointing) {
            State::Open(trees) => Some(trees),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Puts back the opening a checkpoint took out, unchanged.
    pub(super) fn resume(&self, trees: Arc<Trees>) {
        *self.lock() = State::Open(trees);
        self.resumed.notify_all();
    }

    /// Ends a checkpoint that flushed and closed `generation` and opened `next`.
    pub(super) fn checkpointed(&self, generation: u64, next: Trees) {
        {
            let mut clean = self.closed_clean.lock().unwrap_or_else(|p| p.into_inner());
            clean.push(generation);
            let excess = clean.len().saturating_sub(CLEAN_KEPT);
            clean.drain(..excess);
        }
        self.written.store(0, Ordering::Relaxed);
        self.install(next);
    }

    /// Ends a checkpoint that could not open the database again: as after a write failure,
    /// callers are refused and the database is reopened in the background.
    pub(super) fn checkpoint_failed(self: &Arc<Self>, next_generation: u64, e: &sled::Error) {
        let cause = cause_of(e).unwrap_or_else(|| Cause::Io(e.to_string()));
        let failure = Failure::new(cause, &self.dir);
        tracing::error!(error = %e, "reopening the certificate store after a checkpoint failed");
        *self.lock() = State::Failed(failure);
        self.resumed.notify_all();
        self.runtime
            .spawn(reopen(Arc::downgrade(self), None, next_generation));
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn compact_when(&self) -> CompactWhen {
        self.compact_when
    }
}

/// Closes `old` once nobody uses it, then reopens until a write can be flushed.
async fn reopen(live: Weak<Live>, old: Option<Arc<Trees>>, mut generation: u64) {
    // Closing blocks briefly (sled joins its flusher thread); never on a runtime worker.
    let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    let mut attempts = 0u64;
    loop {
        tokio::time::sleep(RETRY).await;
        let Some(dir) = live.upgrade().map(|l| l.dir.clone()) else {
            return; // the store was dropped
        };
        let opened = tokio::task::spawn_blocking(move || Trees::open_writable(&dir, generation))
            .await
            .unwrap_or_else(|e| Err(sled::Error::ReportableBug(format!("reopen task: {e}"))));
        let Some(live) = live.upgrade() else {
            return;
        };
        attempts += 1;
        match opened {
            Ok(trees) => {
                live.install(trees);
                tracing::info!(
                    generation,
                    attempts,
                    "certificate store reopened; issuing again"
                );
                return;
            }
            Err(e) => {
                live.note_reopen_failure(&e);
                if attempts % LOG_EVERY == 1 {
                    tracing::warn!(error = %e, attempts, "certificate store still cannot write");
                }
                generation += 1;
            }
        }
    }
}
