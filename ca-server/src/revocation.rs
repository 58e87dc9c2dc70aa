//! Revocation: recorded durably and audited before the reply, streamed to every sidecar
//! (the complete list of revoked, unexpired certificates, re-sent on every change), and
//! refused at renewal and at the admin API.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_identity::crl_reason::CrlReason;
use trellis_identity::{SpiffeId, hex};

use crate::bootstrap::store_err;
use crate::error::CaError;
use crate::state::Core;
use crate::store::{AuditRecord, RevocationRecord, StoreError};

/// The revoked, unexpired certificates, as streamed to sidecars.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RevocationList {
    pub(crate) version: u64,
    pub(crate) entries: Vec<RevocationRecord>,
}

/// What to revoke.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// One certificate, by serial bytes.
    Serial(Vec<u8>),
    /// Every unexpired certificate issued to an identity.
    Identity(SpiffeId),
}

/// The revocation service: records revocations and publishes the list.
#[derive(Debug)]
pub(crate) struct Revocations {
    core: Arc<Core>,
    list: watch::Sender<Arc<RevocationList>>,
}

impl Revocations {
    /// The service, with the list read from the store.
    pub(crate) fn load(core: Arc<Core>) -> Result<Self, CaError> {
        let revocations = Self {
            core,
            list: watch::Sender::new(Arc::new(RevocationList::default())),
        };
        revocations.refresh()?;
        Ok(revocations)
    }

    /// The current revocation list.
    pub(crate) fn current(&self) -> Arc<RevocationList> {
        self.list.borrow().clone()
    }

    /// Follows revocation-list changes.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<RevocationList>> {
        self.list.subscribe()
    }

    /// Revokes, durably; returns the serials newly revoked. `reason` is the audited text,
    /// `code` what the CRL entries say.
    pub(crate) async fn revoke(
        &self,
        target: RevokeTarget,
        reason: &str,
        code: Option<CrlReason>,
        actor: &str,
    ) -> Result<Vec<String>, CaError> {
        let store = &self.core.store;
        let now = self.core.now_unix();
        let unavailable = |e: crate::store::StoreError| {
            CaError::store(
                "the revocation was not recorded (revoking again is harmless)",
                e,
            )
        };
        let records = match &target {
            RevokeTarget::Serial(serial) => {
                let (record, _) =
                    store
                        .certificate(serial)
                        .map_err(unavailable)?
                        .ok_or_else(|| {
                            CaError::NotFound(format!(
                                "no certificate with serial {} is recorded by this CA (never \
                             issued here, or expired and archived: an expired certificate \
                             needs no revocation, every peer refuses it already)",
                                hex::encode(serial)
                            ))
                        })?;
                vec![record]
            }
            RevokeTarget::Identity(id) => {
                let mut records = store.certificates_of(id.as_str()).map_err(unavailable)?;
                records.retain(|r| r.not_after > now);
                if records.is_empty() {
                    return Err(CaError::NotFound(format!(
                        "{id} has no unexpired certificate to revoke"
                    )));
                }
                records
            }
        };
        let mut newly = Vec::new();
        let mark = store.mark();
        for record in records {
            let revocation = RevocationRecord {
                serial: record.serial.clone(),
                spiffe_id: record.spiffe_id.clone(),
                revoked_at: now,
                reason: reason.to_owned(),
                not_after: record.not_after,
                intermediate_id: record.intermediate_id.clone(),
                reason_code: code.map(CrlReason::code),
            };
            let audit = AuditRecord {
                time: now,
                kind: "certificate_revoked".into(),
                spiffe_id: record.spiffe_id.clone(),
                serial: record.serial.clone(),
                actor: actor.to_owned(),
                detail: reason.to_owned(),
            };
            if store.revoke(&revocation, &audit).map_err(unavailable)? {
                newly.push(record.serial);
            }
        }
        store.durable(mark).await.map_err(unavailable)?;
        self.refresh()?;
        tracing::info!(serials = ?newly, actor, reason, code = ?code, "certificates revoked");
        Ok(newly)
    }

    /// Rebuilds the published list from the store (dropping expired entries); publishes
    /// it if its entries changed.
    pub(crate) fn refresh(&self) -> Result<(), CaError> {
        let now = self.core.now_unix();
        let mut entries = self.core.store.revocations().map_err(store_err)?;
        entries.retain(|r| r.not_after > now);
        entries.sort_by(|a, b| a.serial.cmp(&b.serial));
        self.list.send_if_modified(|current| {
            if current.entries == entries {
                return false;
            }
            *current = Arc::new(RevocationList {
                version: current.version + 1,
                entries,
            });
            true
        });
        Ok(())
    }

    /// The revocation of a certificate, if any.
    pub(crate) fn of(&self, serial_hex: &str) -> Result<Option<RevocationRecord>, StoreError> {
        let serial = hex::decode(serial_hex).unwrap_or_default();
        self.core.store.revocation(&serial)
    }
}

/// Drops expired entries from the published list, once a minute.
pub(crate) async fn prune_expired(revocations: Arc<Revocations>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = revocations.refresh() {
            tracing::warn!(error = %e, "refreshing the revocation list failed");
        }
    }
}
