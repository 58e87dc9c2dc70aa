//! Group commit of issuances: many callers, one transaction.
//!
//! Each committed transaction costs the server a WAL flush (an fsync) and the client a
//! round trip, so one issuance per transaction caps a CA at what one disk and one
//! connection's latency allow. Instead a caller queues its issuance and waits; one task
//! takes every issuance queued at that moment and writes them with one call of the SQL
//! function `record_issuances` (`migrations/V4`; `V5` adds renewals' revocation check):
//! one statement, one commit, then every
//! caller of the batch is answered. A lone issuance is written at once (its batch is one
//! item), so light load sees no added wait; under load a batch holds what arrived during
//! the previous one.
//!
//! Per item the semantics are those of [`crate::store::Store::record_issuance`]: the
//! function refuses a serial already used, a join token that cannot be redeemed or a
//! renewal of a revoked certificate ([`crate::store::Store::record_renewal`]) for that
//! item only (writing nothing of it), and the rest of the batch is recorded. Anything else
//! (the database lost, a statement failing) fails the whole transaction, and every caller of
//! the batch gets that error: none is acknowledged.
//!
//! [`IN_FLIGHT`] batches are written at once, on connections of their own, so that one
//! batch is gathered and sent while another waits for its commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;

use tokio::sync::{Semaphore, mpsc};

use super::runner::{self, Runner};
use super::{Db, int};
use crate::store::{
    AuditRecord, CertRecord, RecordError, StoreError, TokenRefusal, TokenUse, encode,
};

/// Batches written at once at most.
pub(super) const IN_FLIGHT: usize = 2;
/// Issuances in one batch at most (bounds one statement's size).
const MAX_BATCH: usize = 256;
/// How many times the gathering steps aside for callers still on their way.
const MAX_YIELDS: usize = 2;
/// The counter rows (`counters`, `live_counts`) are split in this many shards.
const SHARDS: u64 = 16;

/// One issuance as the batch writes it.
pub(super) struct Queued {
    pub record: CertRecord,
    pub der: Vec<u8>,
    pub serial: Vec<u8>,
    pub token: Option<TokenUse>,
    /// A renewal's presented certificate (serial bytes), refused if revoked.
    pub renewing: Option<Vec<u8>>,
    pub audit: Vec<AuditRecord>,
}

impl Queued {
    pub fn new(
        record: &CertRecord,
        der: &[u8],
        serial: &[u8],
        token: Option<TokenUse>,
        renewing: Option<&[u8]>,
        audit: &[AuditRecord],
    ) -> Self {
        Self {
            record: record.clone(),
            der: der.to_vec(),
            serial: serial.to_vec(),
            token,
            renewing: renewing.map(<[u8]>::to_vec),
            audit: audit.to_vec(),
        }
    }
}

type Reply = SyncSender<Result<(), RecordError>>;

/// The queue of issuances waiting for a batch.
#[derive(Debug)]
pub(super) struct Batcher {
    queue: mpsc::UnboundedSender<(Queued, Reply)>,
    commits: Arc<AtomicU64>,
    /// Callers queued or in a batch, not answered yet (counted once queued).
    waiting: AtomicUsize,
}

impl Batcher {
    /// Starts the task that writes the batches, on the store's runtime.
    pub fn start(runner: &Runner, db: Arc<Db>) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        runner.spawn(write_batches(db, waiting, commits.clone()));
        Self {
            queue,
            commits,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Queues `issuance` and waits (on this thread, as [`Runner::block`] does) until the
    /// batch holding it has committed or failed.
    pub fn record(&self, issuance: Queued) -> Result<(), RecordError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if self.queue.send((issuance, reply)).is_err() {
            return Err(RecordError::Store(StoreError::Storage(
                "the database task has stopped".into(),
            )));
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let result = runner::wait(&answer);
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// Callers waiting for their batch now.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Batches committed so far (each one transaction, one WAL flush of the server).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

async fn write_batches(
    db: Arc<Db>,
    mut waiting: mpsc::UnboundedReceiver<(Queued, Reply)>,
    commits: Arc<AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // Batches in flight at once take consecutive shards, so they never wait for each
    // other's counter rows; replicas start apart.
    let mut shard = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        gather(&mut waiting, &mut batch).await;
        shard = shard.wrapping_add(1);
        let (db, commits) = (db.clone(), commits.clone());
        let shard = i16::try_from(shard % SHARDS).unwrap_or(0);
        tokio::spawn(async move {
            let results = write(&db, &batch, shard).await;
            let results = match results {
                Ok(outcomes) => {
                    commits.fetch_add(1, Ordering::Relaxed);
                    db.recovered();
                    outcomes
                }
                Err(e) => batch
                    .iter()
                    .map(|_| Err(RecordError::Store(e.clone())))
                    .collect(),
            };
            for ((_, reply), result) in batch.into_iter().zip(results) {
                // A caller that stopped waiting needs no answer.
                let _ = reply.try_send(result);
            }
            drop(slot);
        });
    }
}

/// Adds every issuance already queued to `batch`, then, while that keeps bringing more,
/// lets other tasks run (one yield) and takes what they queued.
async fn gather(
    waiting: &mut mpsc::UnboundedReceiver<(Queued, Reply)>,
    batch: &mut Vec<(Queued, Reply)>,
) {
    for round in 0..=MAX_YIELDS {
        let before = batch.len();
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        if batch.len() >= MAX_BATCH || round == MAX_YIELDS || (round > 0 && batch.len() == before) {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Writes `batch` in one call of `record_issuances`; returns each item's outcome, in
/// the batch's order.
async fn write(
    db: &Db,
    batch: &[(Queued, Reply)],
    shard: i16,
) -> Result<Vec<Result<(), RecordError>>, StoreError> {
    // Token rows are locked first and in hash order by every batch (see the function), so
    // two batches redeeming the same tokens wait for each other instead of deadlocking.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| {
        let token = batch[i].0.token.map(|t| t.hash);
        (token.is_none(), token, i)
    });
    let items: Vec<&Queued> = order.iter().map(|&i| &batch[i].0).collect();
    let mut audit_items: Vec<i32> = Vec::new();
    let mut audit_times: Vec<i64> = Vec::new();
    let mut audit_bodies: Vec<Vec<u8>> = Vec::new();
    for (n, item) in items.iter().enumerate() {
        for entry in &item.audit {
            // SQL arrays count from 1.
            audit_items.push(i32::try_from(n + 1).unwrap_or(i32::MAX));
            audit_times.push(int(entry.time));
            audit_bodies.push(encode(entry));
        }
    }
    let serials: Vec<&[u8]> = items.iter().map(|i| i.serial.as_slice()).collect();
    let spiffe_ids: Vec<&str> = items.iter().map(|i| i.record.spiffe_id.as_str()).collect();
    let not_afters: Vec<i64> = items.iter().map(|i| int(i.record.not_after)).collect();
    let root_ids: Vec<&str> = items.iter().map(|i| i.record.root_id.as_str()).collect();
    let records: Vec<Vec<u8>> = items.iter().map(|i| encode(&i.record)).collect();
    let ders: Vec<&[u8]> = items.iter().map(|i| i.der.as_slice()).collect();
    let tokens: Vec<Option<&[u8]>> = items
        .iter()
        .map(|i| i.token.as_ref().map(|t| t.hash.as_slice()))
        .collect();
    let nows: Vec<i64> = items
        .iter()
        .map(|i| int(i.token.map_or(0, |t| t.now)))
        .collect();
    let serial_hexes: Vec<&str> = items.iter().map(|i| i.record.serial.as_str()).collect();
    let renewing: Vec<Option<&[u8]>> = items.iter().map(|i| i.renewing.as_deref()).collect();

    let client = db.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT record_issuances($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .await
        .map_err(|e| db.err(e))?;
    let row = client
        .query_one(
            &statement,
            &[
                &serials,
                &spiffe_ids,
                &not_afters,
                &root_ids,
                &records,
                &ders,
                &tokens,
                &nows,
                &serial_hexes,
                &shard,
                &audit_items,
                &audit_times,
                &audit_bodies,
                &renewing,
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    let outcomes: Vec<Option<String>> = row.try_get(0).map_err(|e| db.err(e))?;
    if outcomes.len() != items.len() {
        return Err(StoreError::Storage(format!(
            "database {}: record_issuances answered {} outcomes for {} issuances",
            db.name,
            outcomes.len(),
            items.len()
        )));
    }
    let mut results: Vec<(usize, Result<(), RecordError>)> = outcomes
        .into_iter()
        .zip(order)
        .map(|(outcome, i)| (i, outcome_of(db, outcome.as_deref())))
        .collect();
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, result)| result).collect())
}

/// What `record_issuances` answered for one item (see its definition).
fn outcome_of(db: &Db, outcome: Option<&str>) -> Result<(), RecordError> {
    match outcome {
        None => Ok(()),
        Some("serial") => Err(RecordError::SerialTaken),
        Some("revoked") => Err(RecordError::Revoked),
        Some(refusal) => Err(token_refusal(refusal)
            .map(RecordError::Token)
            .unwrap_or_else(|| {
                RecordError::Store(StoreError::Storage(format!(
                    "database {}: record_issuances answered {refusal:?}",
                    db.name
                )))
            })),
    }
}

/// A token's refusal as the SQL functions word it: "unknown", "used:<at>" or
/// "expired:<at>".
fn token_refusal(message: &str) -> Option<TokenRefusal> {
    match message.split_once(':') {
        None if message == "unknown" => Some(TokenRefusal::Unknown),
        Some(("used", at)) => Some(TokenRefusal::Used {
            at: at.parse().ok()?,
        }),
        Some(("expired", at)) => Some(TokenRefusal::Expired {
            at: at.parse().ok()?,
        }),
        _ => None,
    }
}
