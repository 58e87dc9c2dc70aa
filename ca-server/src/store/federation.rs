//! Federated trust domains: where to fetch each one's bundle and the last bundle that
//! verified, kept so that a restart (or an endpoint that stays down) serves the last good one.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};

/// One federated trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationRecord {
    pub trust_domain: String,
    pub endpoint_url: String,
    pub endpoint_spiffe_id: String,
    /// The bundle in force, in the SPIFFE bundle format.
    pub bundle_json: String,
    /// Unix seconds: when the bundle in force was fetched or given, and the last attempt.
    pub refreshed_at: u64,
    pub last_attempt_at: u64,
    /// Why the last attempt failed; `None` after a success.
    pub last_error: Option<String>,
    pub added_at: u64,
    pub added_by: String,
}

impl Store {
    /// Inserts or replaces a federation.
    pub fn put_federation(&self, record: &FederationRecord) -> Result<(), StoreError> {
        let t = self.trees()?;
        t.federations
            .insert(record.trust_domain.as_bytes(), encode(record))
            .map_err(self.err(&t))?;
        Ok(())
    }

    /// Every federation, by trust domain.
    pub fn federations(&self) -> Result<Vec<FederationRecord>, StoreError> {
        let t = self.trees()?;
        t.federations
            .iter()
            .values()
            .map(|v| decode("federations", &v.map_err(self.err(&t))?))
            .collect()
    }

    /// One federation.
    pub fn federation(&self, trust_domain: &str) -> Result<Option<FederationRecord>, StoreError> {
        let t = self.trees()?;
        t.federations
            .get(trust_domain.as_bytes())
            .map_err(self.err(&t))?
            .map(|v| decode("federations", &v))
            .transpose()
    }

    /// Removes a federation; `false` if there was none.
    pub fn remove_federation(&self, trust_domain: &str) -> Result<bool, StoreError> {
        let t = self.trees()?;
        Ok(t.federations
            .remove(trust_domain.as_bytes())
            .map_err(self.err(&t))?
            .is_some())
    }
}
