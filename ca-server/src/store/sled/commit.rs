//! Group commit: many writers, one fsync.
//!
//! A flush is sled's own (its log writes end in `sync_file_range` on Linux, which pushes the
//! pages to the device but neither flushes the device's volatile write cache nor makes the
//! file's metadata durable) followed by an `fdatasync` of sled's log file, which does both:
//! an acknowledged certificate survives a power cut, not only a crash of the process.
//!
//! A writer applies its change to sled (in memory), then waits on [`Committer::durable`].
//! A single task collects every waiter that arrived while the previous flush ran, flushes
//! once, and releases them together. A waiter is released only by a flush that started
//! after it asked, so its own write is always covered. Waiters name the database (generation)
//! they wrote to; after a reopen (see `live.rs`) one batch may span two, and each is flushed.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::{mpsc, oneshot};

/// One opening of the database and its log file, as a flush needs them.
#[derive(Debug, Clone)]
pub struct Flushable {
    pub db: sled::Db,
    /// sled's log (`<dir>/db`), opened by us for `fdatasync`.
    pub log: Arc<File>,
}

impl Flushable {
    /// sled's flush, then the log file's data and size to stable storage.
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush()?;
        self.log.sync_data().map_err(sled::Error::Io)
    }
}

/// A waiter, and the generation and handles of the database it wrote to. The task holds
/// database handles only while a flush is pending, so dropping the store really closes the
/// database (and releases its lock) once the last request is answered.
type Waiter = (oneshot::Sender<Result<(), sled::Error>>, u64, Flushable);

/// Hands out durability for writes already applied to the database.
#[derive(Debug, Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Waiter>,
    flushes: Arc<AtomicU64>,
}

impl Committer {
    /// Starts the flushing task. Needs a tokio runtime.
    pub fn start() -> Self {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counted = flushes.clone();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut batch = vec![first];
                gather(&mut waiting, &mut batch).await;
                let mut dbs: Vec<(u64, Flushable)> = Vec::new();
                for (_, generation, db) in &batch {
                    if !dbs.iter().any(|(g, _)| g == generation) {
                        dbs.push((*generation, db.clone()));
                    }
                }
                let counted = counted.clone();
                let results = tokio::task::spawn_blocking(move || {
                    dbs.into_iter()
                        .map(|(generation, db)| {
                            let result = db.flush();
                            if result.is_ok() {
                                counted.fetch_add(1, Relaxed);
                            }
                            (generation, result)
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                for (waiter, generation, _db) in batch {
                    let result = results
                        .iter()
                        .find(|(g, _)| *g == generation)
                        .map(|(_, r)| r.clone())
                        .unwrap_or_else(|| {
                            Err(sled::Error::ReportableBug("the flush task failed".into()))
                        });
                    // A waiter that gave up (its request was cancelled) needs no answer.
                    let _ = waiter.send(result);
                }
            }
        });
        Self { queue, flushes }
    }

    /// Successful flushes so far (each one `fdatasync`); with the number of certificates
    /// issued it tells how many writers a flush covers.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Relaxed)
    }

    /// Returns once everything written to `db` (generation `generation`) before this call
    /// is on disk.
    pub async fn durable(&self, generation: u64, db: Flushable) -> Result<(), sled::Error> {
        let stopped = || sled::Error::ReportableBug("the commit task has stopped".into());
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((tx, generation, db))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// How many times the flushing task steps aside for writers still on their way.
const MAX_YIELDS: usize = 4;

/// Adds every waiter already queued to `batch`, then, while that keeps bringing more, lets
/// the other ready tasks run first (one yield) and takes what they queued. A lone writer is
/// flushed at once (the first look finds nothing new); under load one flush covers the
/// writers that were a few steps away, and fewer flushes leave more CPU for issuing.
async fn gather(waiting: &mut mpsc::UnboundedReceiver<Waiter>, batch: &mut Vec<Waiter>) {
    for round in 0..=MAX_YIELDS {
        let before = batch.len();
        while let Ok(more) = waiting.try_recv() {
            batch.push(more);
        }
        if round == MAX_YIELDS || (round > 0 && batch.len() == before) {
            return;
        }
        tokio::task::yield_now().await;
    }
}
