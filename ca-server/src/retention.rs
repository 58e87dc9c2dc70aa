//! Retention: expired certificate records (with their index entries and revocation
//! records) are removed once they have been expired for `certificate_retention`, so the
//! store holds the live certificates and a bounded history. The audit log is not touched:
//! it keeps the issuance and revocation events for its own retention.
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
/// How often a pass starts.
const EVERY: Duration = Duration::from_secs(60);
/// The pause between two batches of one pass, leaving the store to issuance.
const PAUSE: Duration = Duration::from_millis(5);

/// Runs a pass at start and every [`EVERY`] until stopped; nothing if retention is off
/// (`None`, what `[store] certificate_retention = "0"` gives).
pub async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Option<Duration>,
    stop: CancellationToken,
) {
    let Some(retention) = retention else {
        return;
    };
    loop {
        match prune_pass(&store, unix(clock.now()), retention, &stop).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(
                removed,
                retention = %trellis_identity::duration::format(retention),
                "removed expired certificate records"
            ),
            Err(e) => tracing::warn!(error = %e, "removing expired certificate records failed"),
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
    let mut removed = 0u64;
    loop {
        let store = store.clone();
        let batch = tokio::task::spawn_blocking(move || store.prune_expired(through, BATCH))
            .await
            .map_err(|e| StoreError::Storage(format!("retention task: {e}")))??;
        removed += batch as u64;
        if batch < BATCH || stop.is_cancelled() {
            return Ok(removed);
        }
        tokio::time::sleep(PAUSE).await;
    }
}
