//! The audit log's signed checkpoints and its retention. The chain itself is in
//! `store/sled/audit.rs` (storage, behind the `Store` trait) and
//! `trellis_identity::audit_log` (hashing, verification).
//!
//! The CA signs a checkpoint of the chain's head with its signing intermediate every
//! `[audit] checkpoint_interval` when the log grew, on every root change and at shutdown.
//! Entries older than `[audit] retention` are removed only up to a checkpoint, which stays
//! as the start of what remains, so the rest still verifies.

pub mod offline;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use trellis_identity::audit_log::Checkpoint;
use trellis_identity::duration;

use crate::bootstrap::store_err;
use crate::config::ConfigError;
use crate::error::CaError;
use crate::state::Core;

/// Checkpoint batches retention removes per pass (1000 entries each), so a pass is short.
const PRUNE_BATCHES_PER_PASS: usize = 50;

/// The `[audit]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    pub checkpoint_interval: Option<String>,
    pub retention: Option<String>,
}

/// How the audit log is checkpointed and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// How often a checkpoint is signed while the log grows.
    pub checkpoint_interval: Duration,
    /// How long entries are kept; `None` keeps everything.
    pub retention: Option<Duration>,
}

impl AuditFile {
    pub fn build(self) -> Result<AuditConfig, ConfigError> {
        let parse = |name: &str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => {
                duration::parse(&text).map_err(|e| ConfigError(format!("audit.{name}: {e}")))
            }
        };
        let checkpoint_interval = parse(
            "checkpoint_interval",
            self.checkpoint_interval,
            Duration::from_secs(300),
        )?;
        if checkpoint_interval < Duration::from_secs(1) {
            return Err(ConfigError(
                "audit.checkpoint_interval must be at least 1s".into(),
            ));
        }
        let retention = parse(
            "retention",
            self.retention,
            Duration::from_secs(90 * 86_400),
        )?;
        Ok(AuditConfig {
            checkpoint_interval,
            retention: (!retention.is_zero()).then_some(retention),
        })
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditFile::default()
            .build()
            .expect("the built-in defaults are valid")
    }
}

/// The audit service: checkpoints and retention of the log the store keeps.
#[derive(Debug)]
pub(crate) struct Audit {
    core: Arc<Core>,
}

impl Audit {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Signs a checkpoint of the audit chain's head if the log grew since the last one;
    /// returns the entry it covers. The caller makes it durable (with its other writes).
    pub(crate) fn checkpoint(&self) -> Result<Option<u64>, CaError> {
        let core = &self.core;
        let head = core.store.audit_chain_head().map_err(store_err)?;
        let latest = core.store.latest_audit_checkpoint().map_err(store_err)?;
        if head.sequence == 0 || latest.is_some_and(|c| c.sequence >= head.sequence) {
            return Ok(None);
        }
        let signer = core.signer();
        let checkpoint = Checkpoint::sign(
            core.config.trust_domain.as_str(),
            head,
            core.now(),
            signer.key(),
            &signer.cert,
        )
        .map_err(|e| CaError::Internal(format!("signing an audit checkpoint: {e}")))?;
        core.store
            .put_audit_checkpoint(&checkpoint)
            .map_err(store_err)?;
        Ok(Some(head.sequence))
    }

    /// One pass of checkpointing and retention, durably.
    async fn maintain_pass(&self) -> Result<(), CaError> {
        let store = &self.core.store;
        let mark = store.mark();
        let signed = self.checkpoint()?;
        let mut pruned = 0;
        if let Some(retention) = self.core.config.audit.retention {
            let cutoff = self.core.now_unix().saturating_sub(retention.as_secs());
            pruned = store
                .prune_audit(cutoff, PRUNE_BATCHES_PER_PASS)
                .map_err(store_err)?;
        }
        if signed.is_some() || pruned > 0 {
            store.durable(mark).await.map_err(store_err)?;
        }
        if pruned > 0 {
            tracing::info!(entries = pruned, "audit entries past retention removed");
        }
        Ok(())
    }
}

/// Checkpoints and prunes the audit log until `stop`; signs a last checkpoint then.
pub(crate) async fn maintain(audit: Arc<Audit>, stop: CancellationToken) {
    let interval = audit.core.config.audit.checkpoint_interval;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = stop.cancelled() => true,
        };
        // Off the async workers: retention may walk and remove many entries.
        let pass = audit.clone();
        let result = tokio::task::spawn_blocking(move || {
            tokio::runtime::Handle::current().block_on(pass.maintain_pass())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "audit checkpoint or retention failed"),
            Err(e) => tracing::warn!(error = %e, "audit maintenance task failed"),
        }
        if stopping {
            return;
        }
    }
}
