//! Federated trust domains: where to fetch each one's bundle and the last bundle that
//! verified, kept so that a restart (or an endpoint that stays down) serves the last good one.

use super::SledStore;
use crate::store::{FederationRecord, StoreError, decode};

impl SledStore {
    /// Every federation, by trust domain.
    pub(super) fn federations(&self) -> Result<Vec<FederationRecord>, StoreError> {
        self.all("federations", |t| &t.federations)
    }

    /// One federation.
    pub(super) fn federation(
        &self,
        trust_domain: &str,
    ) -> Result<Option<FederationRecord>, StoreError> {
        let t = self.trees()?;
        t.federations
            .get(trust_domain.as_bytes())
            .map_err(self.err(&t))?
            .map(|v| decode("federations", &v))
            .transpose()
    }
}
