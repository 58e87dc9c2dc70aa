//! JWT-SVID signing keys: one record per key, by `kid`, in the `jwt_keys` tree. The private
//! key is a file in `<data>/keys/` (0600), like the intermediates'; the record names it.

use serde::{Deserialize, Serialize};

use super::{RootState, Store, StoreError, decode, encode};

/// A JWT-SVID signing key. It moves through the same states as a root: pending (in the
/// bundle, not signing), active (signing), retiring (in the bundle, no longer signing),
/// retired (out of the bundle).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JwtKeyRecord {
    /// The `kid` header of the tokens it signs.
    pub kid: String,
    pub state: RootState,
    pub created_at: u64,
    /// The uncompressed P-256 public point (0x04, X, Y).
    pub public_key: Vec<u8>,
    /// The PKCS#8 private key's file name in `<data>/keys/`.
    pub key_file: String,
    /// The bundle version that first carried the key.
    pub added_in_bundle_version: u64,
    /// When it stopped signing (another key was activated); no token it signed was issued
    /// later than this.
    #[serde(default)]
    pub deactivated_at: Option<u64>,
}

impl Store {
    /// Every JWT-SVID key, oldest first.
    pub fn jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
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

    /// Inserts or replaces a JWT-SVID key.
    pub fn put_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError> {
        let t = self.trees()?;
        t.jwt_keys
            .insert(key.kid.as_bytes(), encode(key))
            .map_err(self.err(&t))?;
        Ok(())
    }
}
