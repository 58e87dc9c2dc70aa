//! Checkpoints: closing the database and opening it again, so that a start after a crash
//! replays a bounded log.
//!
//! sled 0.34 writes a snapshot of its page table only while it opens a database; between
//! openings its log grows, and the next opening replays all of it, crash or clean stop
//! alike. A CA that runs for weeks would take minutes to start. So after every
//! [`CHECKPOINT_EVERY`] certificates the store pauses (callers wait, as for a slow write),
//! waits for the calls already inside the database to finish, flushes it, closes it and
//! opens it again, which writes a snapshot. Writes made before the pause are acknowledged
//! as durable: the closing flush covered them (see `closed_clean` in `live.rs`). While it
//! has the database to itself, a checkpoint also copies it into a fresh folder once its log
//! has grown enough (`compact.rs`), and opens the copy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::compact;
use super::live::{Live, Trees, open_when_unlocked};

/// Certificates recorded between checkpoints: each replays in well under a second
/// at the next start, and a checkpoint pauses the store for about as long as a restart
/// opens it.
pub const CHECKPOINT_EVERY: u64 = 100_000;
/// How long a checkpoint waits for the calls already inside the database before giving up
/// (it tries again after the next certificate).
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// One checkpoint, on the calling thread (never a runtime worker: it blocks).
pub(super) fn run(live: &Arc<Live>) {
    let started = Instant::now();
    let Some(old) = live.pause() else { return };
    let deadline = started + DRAIN_WAIT;
    // Every call holds the opening (an `Arc`) while it reads or writes; once only ours is
    // left, every write to this generation has been made.
    while Arc::strong_count(&old) > 1 {
        if Instant::now() > deadline {
            tracing::warn!("store checkpoint skipped: a call held the database for 5 s");
            live.resume(old);
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let generation = old.generation;
    if let Err(e) = old.flushable().flush() {
        // Handled as any failed write: the opening is closed and reopened until it can write.
        live.resume(old);
        let _ = live.fail(generation, e);
        return;
    }
    let log_bytes = old.log_len();
    let compacted = copy_if_due(live, &old, log_bytes);
    drop(old);
    match open_when_unlocked(live.dir(), generation + 1) {
        Ok(next) => {
            live.checkpointed(generation, next);
            tracing::info!(
                generation = generation + 1,
                paused_ms = started.elapsed().as_millis() as u64,
                log_bytes,
                compacted = compacted.is_some(),
                "certificate store checkpointed (reopened to bound its recovery log)"
            );
        }
        Err(e) => live.checkpoint_failed(generation + 2, &e),
    }
}

/// Copies the paused, flushed opening `old` into a fresh folder if its log (`log_len`
/// bytes) has grown past what [`Live::compact_when`] allows (`compact.rs`); the next
/// opening is the copy. Returns the copy's log length, if it was made. A failed copy
/// leaves the database as it was, to be copied at a later checkpoint.
fn copy_if_due(live: &Live, old: &Trees, log_len: u64) -> Option<u64> {
    if !live.compact_when().due(log_len, old) {
        return None;
    }
    let started = Instant::now();
    match compact::copy(live.dir(), old) {
        Ok(copy_len) => {
            live.compacted();
            tracing::info!(
                log_bytes = log_len,
                copy_bytes = copy_len,
                took_ms = started.elapsed().as_millis() as u64,
                "certificate store compacted (copied into a fresh folder)"
            );
            Some(copy_len)
        }
        Err(e) => {
            live.compaction_failed();
            tracing::warn!(
                error = %e,
                "cannot compact the certificate store; trying again at a later checkpoint"
            );
            None
        }
    }
}
