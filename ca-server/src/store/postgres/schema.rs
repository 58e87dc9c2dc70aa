//! The schema, created and migrated at start with refinery (versioned SQL files in
//! `migrations/`, applied in order, recorded in `refinery_schema_history`).
//!
//! Replicas that start at once take turns: the migration runs under a session advisory
//! lock, so exactly one of them creates the tables and the others find them made. A
//! database migrated by a newer CA (a schema version this one does not know) is refused
//! before anything is read or written.

use tokio_postgres::Client;

refinery::embed_migrations!("src/store/postgres/migrations");

/// The advisory lock the migration holds ("trellis" in ASCII): one key for every CA.
pub(super) const MIGRATION_LOCK: i64 = 0x0074_7265_6c6c_6973;

/// Why the schema could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database has schema version {found}, newer than this trellis-ca knows (up to \
         {known}): a newer trellis-ca migrated it; run that version (or newer) instead"
    )]
    Newer { found: i64, known: i64 },
    #[error("{0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("migration: {0}")]
    Migration(#[from] refinery::Error),
}

/// The newest schema version this build knows.
pub fn known_version() -> i64 {
    migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Brings the schema to [`known_version`], or refuses a newer one; returns the versions
/// applied now (empty if it was current).
pub async fn migrate(client: &mut Client) -> Result<Vec<i64>, SchemaError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client).await;
    // The session ends with the connection, which releases the lock too.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(client: &mut Client) -> Result<Vec<i64>, SchemaError> {
    let history: Option<String> = client
        .query_one("SELECT to_regclass('refinery_schema_history')::text", &[])
        .await?
        .get(0);
    let found: Option<i64> = match history {
        None => None,
        Some(_) => client
            .query_one(
                "SELECT max(version)::bigint FROM refinery_schema_history",
                &[],
            )
            .await?
            .get(0),
    };
    let known = known_version();
    if let Some(found) = found
        && found > known
    {
        return Err(SchemaError::Newer { found, known });
    }
    let report = migrations::runner()
        .set_grouped(true)
        .run_async(client)
        .await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .collect())
}
