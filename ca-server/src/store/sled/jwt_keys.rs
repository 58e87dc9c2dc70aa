//! JWT-SVID signing keys: one record per key, by `kid`, in the `jwt_keys` tree. The private
//! key is a file in `<data>/keys/` (0600), like the intermediates'; the record names it.

use super::SledStore;
use crate::store::{JwtKeyRecord, StoreError};

impl SledStore {
    /// Every JWT-SVID key, oldest first.
    pub(super) fn jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        let mut keys: Vec<JwtKeyRecord> = self.all("jwt_keys", |t| &t.jwt_keys)?;
        // Each added key enters a new bundle version, so this is the order of addition.
        keys.sort_by(|a, b| {
            (a.added_in_bundle_version, a.created_at, &a.kid).cmp(&(
                b.added_in_bundle_version,
                b.created_at,
                &b.kid,
            ))
        });
        Ok(keys)
    }
}
