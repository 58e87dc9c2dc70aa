//! What replicas sharing the database read of each other: a cheap marker of the
//! revocations (polled often by every replica) and CRL numbers that two replicas can never
//! both take.

use std::sync::Arc;

use super::{Client, Db, int, uint};
use crate::store::StoreError;

/// The advisory lock a CA holds while it changes the trust bundle (any key other than the
/// migration's and the start-up's).
const BUNDLE_CHANGE_LOCK: i64 = 0x0074_7265_6c6c_6973 + 2;

/// A connection of its own holding the bundle-change lock: dropping it closes the
/// connection, which releases the lock (also when the CA dies).
pub(super) async fn bundle_change_lock(
    db: Arc<Db>,
) -> Result<deadpool_postgres::ClientWrapper, StoreError> {
    let client: Client = db.client().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&BUNDLE_CHANGE_LOCK])
        .await
        .map_err(|e| db.err(e))?;
    Ok(deadpool_postgres::Object::take(client))
}

/// How many revocations are kept and the newest writing transaction among them: any
/// revocation recorded or removed changes it. One scan of a table that holds only the
/// revocations retention keeps, without decoding a record.
pub(super) async fn revocations_marker(db: Arc<Db>) -> Result<(u64, u64), StoreError> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT count(*), coalesce(max(xmin::text::bigint), 0) FROM revocations",
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok((uint(row.get(0)), uint(row.get(1))))
}

/// Takes the number of intermediate `id`'s next CRL in one statement: `at_least`, or one
/// more than the last number taken if that is not above it. The row lock orders replicas
/// taking a number at the same moment, so each gets its own.
pub(super) async fn next_crl_number(
    db: Arc<Db>,
    id: String,
    at_least: u64,
) -> Result<u64, StoreError> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "INSERT INTO crl_numbers (intermediate_id, number) VALUES ($1, $2) \
             ON CONFLICT (intermediate_id) DO UPDATE \
             SET number = GREATEST(crl_numbers.number + 1, excluded.number) \
             RETURNING number",
            &[&id, &int(at_least)],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(uint(row.get(0)))
}
