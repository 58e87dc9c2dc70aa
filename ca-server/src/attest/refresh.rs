//! The issuer's keys kept fresh by a background task, so that verifying a token never waits
//! on the network: the task re-reads the keys every `refresh`, sooner when a token names an
//! unknown key id (at most once per `min_refresh`), and keeps the last good set when a read
//! fails. A request waits only for a read, and at most `fetch_wait` in all: for the first
//! one after start, or the one it asked for because its key id was unknown or no read had
//! succeeded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::jwks::{self, KeySet, KeySource};

/// The longest a failing endpoint waits between attempts is `refresh`; the shortest is this
/// (or `min_refresh` if longer), doubling after each failure.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What the task last learned.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// The last good key set; None until a read has succeeded.
    keys: Option<Arc<KeySet>>,
    /// Reads finished, good or bad.
    reads: u64,
    /// When the last read started.
    started: Option<Instant>,
    /// Why the last read failed, if it did.
    error: Option<String>,
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct RefreshStats {
    /// Reads that failed since start.
    pub failures: AtomicU64,
    /// Keys in the set in force.
    pub keys: AtomicU64,
}

/// A handle on the refreshed keys; the task stops when the handle is dropped.
#[derive(Debug)]
pub struct KeyCache {
    snapshot: watch::Receiver<Snapshot>,
    wanted: Arc<Notify>,
    min_refresh: Duration,
    fetch_wait: Duration,
    stats: Arc<RefreshStats>,
}

/// Why no key set can be had now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoKeys(pub String);

impl KeyCache {
    /// Starts the refresh task (on the current Tokio runtime) with a first read at once.
    pub fn start(
        source: KeySource,
        refresh: Duration,
        min_refresh: Duration,
        fetch_wait: Duration,
    ) -> Self {
        let (tx, snapshot) = watch::channel(Snapshot::default());
        let wanted = Arc::new(Notify::new());
        let stats = Arc::new(RefreshStats::default());
        tokio::spawn(run(
            source,
            refresh,
            min_refresh,
            tx,
            wanted.clone(),
            stats.clone(),
        ));
        Self {
            snapshot,
            wanted,
            min_refresh,
            fetch_wait,
            stats,
        }
    }

    /// Counters for the metrics endpoint.
    pub fn stats(&self) -> &RefreshStats {
        &self.stats
    }

    /// When a request that starts now must stop waiting for reads.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.fetch_wait
    }

    /// The key set in force. Before the first read has finished, waits for it until
    /// `deadline`; when the reads so far all failed, asks for another at once (rate limited)
    /// rather than leave the request to the retry backoff, and waits for that one.
    pub async fn current(&self, deadline: Instant) -> Result<Arc<KeySet>, NoKeys> {
        let mut rx = self.snapshot.clone();
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(|s| s.reads > 0)).await;
        let (keys, reads) = {
            let s = rx.borrow();
            (s.keys.clone(), s.reads)
        };
        if let Some(keys) = keys {
            return Ok(keys);
        }
        if reads > 0
            && let Some(keys) = self.reread(deadline).await
        {
            return Ok(keys);
        }
        let error = self.snapshot.borrow().error.clone();
        Err(NoKeys(error.unwrap_or_else(|| {
            "the first read of the keys has not finished".into()
        })))
    }

    /// Asks for a re-read, because a token named a key id the set lacks (the issuer may have
    /// rotated its keys) or there is no set, and waits for it until `deadline`. Returns the newer set, or None
    /// when the rate limit allows no read now or none finished in time.
    pub async fn reread(&self, deadline: Instant) -> Option<Arc<KeySet>> {
        let mut rx = self.snapshot.clone();
        let seen = {
            let s = rx.borrow();
            if s.started.is_some_and(|t| t.elapsed() < self.min_refresh) {
                return None;
            }
            s.reads
        };
        self.wanted.notify_one();
        let newer = tokio::time::timeout_at(deadline, rx.wait_for(|s| s.reads > seen)).await;
        newer.ok()?.ok()?.keys.clone()
    }
}

async fn run(
    source: KeySource,
    refresh: Duration,
    min_refresh: Duration,
    tx: watch::Sender<Snapshot>,
    wanted: Arc<Notify>,
    stats: Arc<RefreshStats>,
) {
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        tx.send_modify(|s| s.started = Some(started));
        let result = tokio::select! {
            result = jwks::load(&source) => result,
            () = tx.closed() => return,
        };
        match result {
            Ok(set) => {
                if failures > 0 || tx.borrow().keys.is_none() {
                    tracing::info!(keys = set.len(), source = ?source, "service-account signing keys loaded");
                }
                failures = 0;
                stats.keys.store(set.len() as u64, Ordering::Relaxed);
                tx.send_modify(|s| {
                    s.keys = Some(Arc::new(set));
                    s.reads += 1;
                    s.error = None;
                });
            }
            Err(e) => {
                // Keep the keys we have: the issuer rotating keys is rare, an outage of the
                // endpoint is not, and refusing every pod during it helps nobody.
                tracing::warn!(error = %e, source = ?source, "cannot load service-account signing keys; the last good set stays in force");
                failures = failures.saturating_add(1);
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tx.send_modify(|s| {
                    s.reads += 1;
                    s.error = Some(e);
                });
            }
        }
        let wait = match failures {
            0 => refresh,
            n => FIRST_RETRY
                .max(min_refresh)
                .saturating_mul(2u32.saturating_pow(n - 1))
                .min(refresh),
        };
        let asked = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            () = wanted.notified() => true,
            () = tx.closed() => return,
        };
        if asked {
            tokio::select! {
                () = tokio::time::sleep_until(started + min_refresh) => {}
                () = tx.closed() => return,
            }
        }
    }
}
