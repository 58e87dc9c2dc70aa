//! Retention: expired certificate records (with their index entries and revocation
//! records) are removed once they have been expired for `certificate_retention`, so the
//! store holds the live certificates and a bounded history. Nothing is removed from the
//! audit log here: it keeps the issuance and revocation events for its own retention.
//!
//! Before that, certificates expired for [`ARCHIVE_AFTER`], and audit entries as old,
//! leave the embedded store's database for its archives (`Store::archive_expired`),
//! whatever the retention: the database then holds the live certificates and the last few
//! minutes of the rest, so its opening (which reads sled's whole page table) costs what the
//! live ones cost, not the history. The archives keep them for reading until retention
//! removes them.
//!
//! The work is done in batches of [`BATCH`] on the blocking pool, with a pause between
//! them, so that a large backlog (the first pass after an upgrade, or after a long
//! retention was shortened) never holds a runtime worker nor the store for long.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trellis_identity::clock::Clock;

use crate::state::unix;
use crate::store::{Store, StoreError};

/// Records removed per batch.
pub const BATCH: usize = 1_000;
/// How long an expired certificate stays in the database before it is archived: long
/// enough that the live counts have let it go, short enough that the database stays the
/// size of the live set.
pub const ARCHIVE_AFTER: Duration = Duration::from_secs(600);
/// How often a pass starts.
const EVERY: Duration = Duration::from_secs(60);
/// The pause between two batches of one pass, leaving the store to issuance.
const PAUSE: Duration = Duration::from_millis(5);

/// Runs a pass at start and every [`EVERY`] until stopped: archiving, then removing what
/// is past `retention` (nothing if it is `None`, what `[store] certificate_retention = "0"`
/// gives).
pub async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Option<Duration>,
    stop: CancellationToken,
) {
    loop {
        let now = unix(clock.now());
        match archive_pass(&store, now, &stop).await {
            Ok(0) => {}
            Ok(moved) => tracing::debug!(moved, "archived expired certificates"),
            Err(e) => tracing::warn!(error = %e, "archiving expired certificates failed"),
        }
        if let Some(retention) = retention {
            match prune_pass(&store, now, retention, &stop).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(
                    removed,
                    retention = %trellis_identity::duration::format(retention),
                    "removed expired certificate records"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "removing expired certificate records failed");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Removes every record expired for longer than `retention` at `now` (Unix seconds),
/// batch by batch; returns how many. Stops early (between batches) when `stop` is set.
pub async fn prune_pass(
    store: &Arc<dyn Store>,
    now: u64,
    retention: Duration,
    stop: &CancellationToken,
) -> Result<u64, StoreError> {
    // The live counts are brought to now first: retention removes only what they no
    // longer count (the store also holds the cut-off to that).
    let _ = store.live_by_root(now);
    let through = now.saturating_sub(retention.as_secs());
    in_batches(store, stop, move |store| {
        store.prune_expired(through, BATCH)
    })
    .await
}

/// Moves every certificate expired for longer than [`ARCHIVE_AFTER`] at `now` to the
/// store's archive, batch by batch; returns how many. Stops early when `stop` is set.
pub async fn archive_pass(
    store: &Arc<dyn Store>,
    now: u64,
    stop: &CancellationToken,
) -> Result<u64, StoreError> {
    let _ = store.live_by_root(now);
    let through = now.saturating_sub(ARCHIVE_AFTER.as_secs());
    in_batches(store, stop, move |store| {
        store.archive_expired(through, BATCH)
    })
    .await
}

/// Runs `batch` on the blocking pool until it returns less than [`BATCH`] (or `stop` is
/// set), pausing in between; returns the sum.
async fn in_batches(
    store: &Arc<dyn Store>,
    stop: &CancellationToken,
    batch: impl Fn(&dyn Store) -> Result<usize, StoreError> + Clone + Send + 'static,
) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let (store, batch) = (store.clone(), batch.clone());
        let done = tokio::task::spawn_blocking(move || batch(&*store))
            .await
            .map_err(|e| StoreError::Storage(format!("retention task: {e}")))??;
        total += done as u64;
        if done < BATCH || stop.is_cancelled() {
            return Ok(total);
        }
        tokio::time::sleep(PAUSE).await;
    }
}
