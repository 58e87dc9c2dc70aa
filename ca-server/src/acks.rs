//! Bundle acknowledgements: the last trust-bundle version each workload reported, and when.
//! Read from the store at start-up and written through, durably, so that the rotation
//! checks (`roots.rs`) answer after a restart as they did before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::state::Core;
use crate::store::StoreError;

/// The acknowledgements service.
#[derive(Debug)]
pub(crate) struct BundleAcks {
    core: Arc<Core>,
    /// The bundle version each workload last reported.
    reported: Mutex<HashMap<String, u64>>,
}

impl BundleAcks {
    /// Reads the acknowledgements the store holds.
    pub(crate) fn load(core: Arc<Core>) -> Result<Self, StoreError> {
        let reported = core
            .store
            .acks()?
            .into_iter()
            .map(|(spiffe_id, version, _reported_at)| (spiffe_id, version))
            .collect();
        Ok(Self {
            core,
            reported: Mutex::new(reported),
        })
    }

    /// Records, durably, that `spiffe_id` holds bundle `version`. Writes only when the
    /// version changes, so renewals that repeat it cost nothing.
    pub(crate) async fn report(&self, spiffe_id: &str, version: u64) -> Result<(), StoreError> {
        let known = self
            .reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(spiffe_id)
            .copied();
        if known == Some(version) {
            return Ok(());
        }
        let store = &self.core.store;
        let mark = store.mark();
        store.put_ack(spiffe_id, version, self.core.now_unix())?;
        store.durable(mark).await?;
        self.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spiffe_id.to_owned(), version);
        Ok(())
    }

    /// The bundle version each workload last reported, as the store holds it: through
    /// this CA or any replica sharing the store, so that one convergence check covers every
    /// replica's sidecars. If the store cannot be read, what this CA recorded itself.
    pub(crate) fn all(&self) -> HashMap<String, u64> {
        let stored = self.core.store.acks();
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        match stored {
            Ok(stored) => {
                *reported = stored
                    .into_iter()
                    .map(|(spiffe_id, version, _reported_at)| (spiffe_id, version))
                    .collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the bundle acknowledgements failed; using this replica's own");
            }
        }
        reported.clone()
    }
}
