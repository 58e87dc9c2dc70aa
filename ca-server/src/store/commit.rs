//! Group commit: many writers, one fsync.
//!
//! A writer applies its change to sled (in memory), then waits on [`Committer::durable`].
//! A single task collects every waiter that arrived while the previous flush ran, flushes
//! once, and releases them together. A waiter is released only by a flush that started
//! after it asked, so its own write is always covered.

use tokio::sync::{mpsc, oneshot};

/// A waiter and a handle to the database it wrote to. The task holds database handles only
/// while a flush is pending, so dropping the store really closes the database (and releases
/// its lock) once the last request is answered.
type Waiter = (oneshot::Sender<Result<(), String>>, sled::Db);

/// Hands out durability for writes already applied to the database.
#[derive(Debug, Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Waiter>,
}

impl Committer {
    /// Starts the flushing task. Needs a tokio runtime.
    pub fn start() -> Self {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = waiting.try_recv() {
                    batch.push(more);
                }
                let db = batch[0].1.clone();
                let result = tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
                for (waiter, _db) in batch {
                    // A waiter that gave up (its request was cancelled) needs no answer.
                    let _ = waiter.send(result.clone());
                }
            }
        });
        Self { queue }
    }

    /// Returns once everything written before this call is on disk.
    pub async fn durable(&self, db: &sled::Db) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((tx, db.clone()))
            .map_err(|_| "the commit task has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the commit task has stopped".to_owned())?
    }
}
