//! The CA's private keys, sealed by `crate::keys` before they get here: written once,
//! read by name.

use std::sync::Arc;

use super::Db;
use crate::store::StoreError;

/// Inserts sealed key `name` unless one is stored; whether it was inserted.
pub(super) async fn put(db: Arc<Db>, name: String, sealed: Vec<u8>) -> Result<bool, StoreError> {
    let client = db.client().await?;
    let inserted = client
        .execute(
            "INSERT INTO sealed_keys (name, sealed) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &sealed],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(inserted == 1)
}

/// The sealed key `name`, if stored.
pub(super) async fn get(db: Arc<Db>, name: String) -> Result<Option<Vec<u8>>, StoreError> {
    let client = db.client().await?;
    let row = client
        .query_opt("SELECT sealed FROM sealed_keys WHERE name = $1", &[&name])
        .await
        .map_err(|e| db.err(e))?;
    Ok(row.map(|r| r.get(0)))
}
