//! The audit log in the database: entries chained by hash (`trellis_identity::audit_log`),
//! numbered without gaps, and the checkpoints the CA signs.
//!
//! A writer only inserts its entries into `audit_pending`, in the transaction of what they
//! record (an issuance, a revocation, a rotation step), so they are as durable as it and
//! concurrent writers never wait for each other. Chaining ([`chain`]) moves the committed
//! pending entries, in the order of their ids, to the end of the chain under the lock of
//! the one row of `audit_head` (so two replicas never chain after the same head), in the
//! transaction that deletes them from `audit_pending`: each is chained exactly once. It runs
//! before every read of the chain and every second in the background
//! ([`CHAIN_INTERVAL`]), so the chain trails the writes by at most about that.

use std::sync::Arc;

use trellis_identity::audit_log::{Checkpoint, Head};

use super::{Db, META_TRUST_DOMAIN, int, uint};
use crate::store::{AuditRecord, StoreError, encode};

/// How many entries retention deletes per statement.
const PRUNE_BATCH: i64 = 1000;
/// How many pending entries one chaining transaction takes.
const CHAIN_BATCH: i64 = 5000;
/// How often the background task chains what was written since.
pub(super) const CHAIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt {
        table: "audit_head",
        reason,
    }
}

/// The head as stored: `None` for the hash means an empty log, whose head is bound to the
/// trust domain recorded when it is first read.
async fn head_of(
    db: &Db,
    client: &impl tokio_postgres::GenericClient,
    sequence: i64,
    hash: Option<Vec<u8>>,
) -> Result<Head, StoreError> {
    match hash {
        Some(hash) => Ok(Head {
            sequence: uint(sequence),
            hash: hash
                .try_into()
                .map_err(|_| corrupt("the head's hash is not 32 bytes".into()))?,
        }),
        None => {
            let row = client
                .query_opt(
                    "SELECT value FROM meta WHERE key = $1",
                    &[&META_TRUST_DOMAIN],
                )
                .await
                .map_err(|e| db.err(e))?;
            let trust_domain: String = row.map(|r| r.get(0)).unwrap_or_default();
            Ok(Head::empty(&trust_domain))
        }
    }
}

/// Records `entries`, in order, within `tx`: they join the chain once `tx` has committed
/// and the next [`chain`] runs.
pub(super) async fn append(
    db: &Db,
    tx: &deadpool_postgres::Transaction<'_>,
    entries: &[AuditRecord],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let e = |e| db.err(e);
    let insert = tx
        .prepare_cached("INSERT INTO audit_pending (time, body) VALUES ($1, $2)")
        .await
        .map_err(e)?;
    for entry in entries {
        tx.execute(&insert, &[&int(entry.time), &encode(entry)])
            .await
            .map_err(e)?;
    }
    Ok(())
}

/// Chains every committed pending entry (see the module docs); returns how many.
pub(super) async fn chain(db: &Db) -> Result<u64, StoreError> {
    let e = |e| db.err(e);
    let mut client = db.client().await?;
    let mut chained = 0;
    loop {
        let tx = client.transaction().await.map_err(e)?;
        let pending = tx
            .query(
                "SELECT id, time, body FROM audit_pending ORDER BY id LIMIT $1",
                &[&CHAIN_BATCH],
            )
            .await
            .map_err(e)?;
        if pending.is_empty() {
            return Ok(chained);
        }
        // Taken after reading: entries committed meanwhile wait for the next batch. Another
        // chainer may have taken some of the same rows while this one waited: re-read.
        let row = tx
            .query_one(
                "SELECT sequence, hash FROM audit_head WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(e)?;
        let pending = tx
            .query(
                "SELECT id, time, body FROM audit_pending WHERE id <= $1 ORDER BY id",
                &[&pending.last().map(|r| r.get::<_, i64>(0)).unwrap_or(0)],
            )
            .await
            .map_err(e)?;
        let mut head = head_of(db, &*tx, row.get(0), row.get(1)).await?;
        let insert = tx
            .prepare_cached("INSERT INTO audit (sequence, time, value) VALUES ($1, $2, $3)")
            .await
            .map_err(e)?;
        let mut ids = Vec::with_capacity(pending.len());
        for row in &pending {
            let entry = head.append(row.get(2));
            tx.execute(
                &insert,
                &[&int(entry.sequence), &row.get::<_, i64>(1), &entry.encode()],
            )
            .await
            .map_err(e)?;
            ids.push(row.get::<_, i64>(0));
        }
        tx.execute("DELETE FROM audit_pending WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(e)?;
        tx.execute(
            "UPDATE audit_head SET sequence = $1, hash = $2 WHERE id = 1",
            &[&int(head.sequence), &head.hash.to_vec()],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
        chained += ids.len() as u64;
    }
}

/// Chains what was written since, every [`CHAIN_INTERVAL`], as long as the store is open
/// (a failure is retried at the next tick; readers chain first anyway).
pub(super) async fn keep_chaining(db: std::sync::Arc<Db>) {
    let mut tick = tokio::time::interval(CHAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = chain(&db).await {
            tracing::debug!(error = %e, "audit entries not chained yet");
        }
    }
}

/// Appends one entry in a transaction of its own.
pub(super) async fn append_alone(db: Arc<Db>, entry: AuditRecord) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(|e| db.err(e))?;
    append(&db, &tx, std::slice::from_ref(&entry)).await?;
    tx.commit().await.map_err(|e| db.err(e))
}

pub(super) async fn chain_head(db: Arc<Db>) -> Result<Head, StoreError> {
    chain(&db).await?;
    let client = db.client().await?;
    let row = client
        .query_one("SELECT sequence, hash FROM audit_head WHERE id = 1", &[])
        .await
        .map_err(|e| db.err(e))?;
    head_of(&db, &**client, row.get(0), row.get(1)).await
}

pub(super) async fn raw_after(
    db: Arc<Db>,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    chain(&db).await?;
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT sequence, value FROM audit WHERE sequence > $1 ORDER BY sequence LIMIT $2",
            &[&int(after), &int(limit as u64)],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(rows
        .iter()
        .map(|row| (uint(row.get(0)), row.get(1)))
        .collect())
}

pub(super) async fn put_checkpoint(db: Arc<Db>, c: Checkpoint) -> Result<(), StoreError> {
    let client = db.client().await?;
    client
        .execute(
            "INSERT INTO audit_checkpoints (sequence, trust_domain, head, time, signer, signature) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sequence) DO UPDATE SET \
             trust_domain = excluded.trust_domain, head = excluded.head, time = excluded.time, \
             signer = excluded.signer, signature = excluded.signature",
            &[
                &int(c.sequence),
                &c.trust_domain,
                &c.head.to_vec(),
                &int(c.time),
                &c.signer,
                &c.signature,
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(())
}

fn checkpoint_of(row: &tokio_postgres::Row) -> Result<Checkpoint, StoreError> {
    let head: Vec<u8> = row.get(2);
    Ok(Checkpoint {
        sequence: uint(row.get(0)),
        trust_domain: row.get(1),
        head: head.try_into().map_err(|_| StoreError::Corrupt {
            table: "audit_checkpoints",
            reason: "head is not 32 bytes".into(),
        })?,
        time: uint(row.get(3)),
        signer: row.get(4),
        signature: row.get(5),
    })
}

const CHECKPOINT_COLUMNS: &str = "sequence, trust_domain, head, time, signer, signature";

pub(super) async fn checkpoints_after(
    db: Arc<Db>,
    after: u64,
    limit: usize,
) -> Result<Vec<Checkpoint>, StoreError> {
    let client = db.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE sequence > $1 \
                 ORDER BY sequence LIMIT $2"
            ),
            &[&int(after), &int(limit as u64)],
        )
        .await
        .map_err(|e| db.err(e))?;
    rows.iter().map(checkpoint_of).collect()
}

pub(super) async fn latest_checkpoint(db: Arc<Db>) -> Result<Option<Checkpoint>, StoreError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY sequence DESC LIMIT 1"
            ),
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    row.as_ref().map(checkpoint_of).transpose()
}

/// Removes the oldest entries recorded before `cutoff`, up to the newest checkpoint whose
/// entry is older than it (never the newest entry's), which stays as the start of what
/// remains; at most `max_batches` batches.
pub(super) async fn prune(db: Arc<Db>, cutoff: u64, max_batches: usize) -> Result<u64, StoreError> {
    chain(&db).await?;
    let e = |e| db.err(e);
    let client = db.client().await?;
    let Some(last) = client
        .query_one("SELECT max(sequence) FROM audit", &[])
        .await
        .map_err(e)?
        .get::<_, Option<i64>>(0)
    else {
        return Ok(0);
    };
    // Checkpoints in order with their entry's time (none for entries already removed).
    let rows = client
        .query(
            "SELECT c.sequence, a.time FROM audit_checkpoints c \
             LEFT JOIN audit a ON a.sequence = c.sequence \
             WHERE c.sequence < $1 ORDER BY c.sequence",
            &[&last],
        )
        .await
        .map_err(e)?;
    let mut cut = None;
    for row in rows {
        let Some(time) = row.get::<_, Option<i64>>(1) else {
            continue;
        };
        if uint(time) >= cutoff {
            break;
        }
        cut = Some(row.get::<_, i64>(0));
    }
    let Some(cut) = cut else { return Ok(0) };
    let mut removed = 0;
    for _ in 0..max_batches {
        let n = client
            .execute(
                "DELETE FROM audit WHERE sequence IN (SELECT sequence FROM audit \
                 WHERE sequence <= $1 ORDER BY sequence LIMIT $2)",
                &[&cut, &PRUNE_BATCH],
            )
            .await
            .map_err(e)?;
        if n == 0 {
            break;
        }
        removed += n;
    }
    client
        .execute("DELETE FROM audit_checkpoints WHERE sequence < $1", &[&cut])
        .await
        .map_err(e)?;
    Ok(removed)
}
