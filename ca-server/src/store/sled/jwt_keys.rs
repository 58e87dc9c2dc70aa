//! JWT-SVID signing keys: one record per key, by `kid`, in the `jwt_keys` tree. The private
//! key is a file in `<data>/keys/` (0600), like the intermediates'; the record names it.

use super::SledStore;
use crate::store::{JwtKeyRecord, StoreError, decode};

impl SledStore {
    /// Every JWT-SVID key, oldest first.
    pub(super) fn jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        let t = self.trees()?;
        let mut keys = t
            .jwt_keys
            .iter()
            .values()
            .map(|v| decode("jwt_keys", &v.map_err(self.err(&t))?))
            .collect::<Result<Vec<JwtKeyRecord>, StoreError>>()?;
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
