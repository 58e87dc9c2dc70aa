//! The highly available store: [`PostgresStore`], the CA's state in a PostgreSQL database
//! that any number of CA replicas share. Nothing outside this folder names tokio-postgres.
//!
//! Every invariant that spans records is one transaction, committed before the call
//! returns, so [`Store::durable`] has nothing left to wait for:
//! - issuances are written in batches (group commit, `batch.rs`): the issuances that
//!   arrive together are one call of the SQL function `record_issuances`
//!   (`migrations/V4__issuances_in_one_commit.sql`: one round trip, one transaction, one
//!   commit). For each it inserts the certificate under its serial (the primary key: a
//!   serial is never used twice), consumes its join token with one conditional `UPDATE ...
//!   WHERE used_at IS NULL AND expires_at > now` (under READ COMMITTED a concurrent
//!   redeemer waits for the row and then finds it used: exactly once, across connections
//!   and replicas), counts it and records its audit entries. A refusal (serial taken,
//!   token refused) is its item's alone and writes nothing of it; any other failure undoes
//!   the batch and fails every caller in it;
//! - audit entries are written in the transaction of what they record and chained (numbered
//!   1, 2, 3, ... without gaps, whichever replica wrote them) by a step of their own that
//!   takes the one row of `audit_head` (`audit.rs`), so issuances never wait for each
//!   other; counters are split in 16 rows (a batch adds to one) for the same reason;
//! - a revocation, a new token, a rotation step ([`Change`]) are one transaction each.
//!
//! Nothing that a request or a scrape reads scans the history: certificates are indexed by
//! identity and by expiry, `issued_total` is a row, and the live counts by root are kept per
//! minute of expiry (`live_counts`), so a count is a sum over at most a day of minutes plus
//! an index range over the current one.
//!
//! The [`Store`] trait is synchronous (sled answers from memory) and is called on the CA's
//! async workers, so the client runs on a small runtime of the store's own
//! ([`Runner`]), and a call waits for its answer with `block_in_place` (the worker's other
//! tasks move to another thread meanwhile; see ARCHITECTURE.md, Decisions).

mod audit;
mod batch;
#[cfg(test)]
mod batch_tests;
mod certs;
mod changes;
pub mod config;
mod replicas;
mod runner;
pub mod schema;
mod sealed_keys;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use trellis_identity::audit_log::{Checkpoint, Head};

use super::{
    AuditRecord, Cause, CertPage, CertRecord, Change, Failure, FederationRecord,
    IntermediateRecord, JwtKeyRecord, Listing, Mark, PageToken, RecordError, RevocationRecord,
    RootRecord, Store, StoreError, StoreFuture, TokenRecord, TokenRefusal, TokenUse, decode,
    encode, redeemable,
};
pub use config::PostgresConfig;
use runner::Runner;

/// Connections each CA keeps to the database at most.
const POOL_SIZE: usize = 16;
/// How long a call waits for a connection (a free one, a new one, or a check of an old one).
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The advisory lock a starting CA holds (any key other than the migration's).
const START_UP_LOCK: i64 = schema::MIGRATION_LOCK + 1;

const META_TRUST_DOMAIN: &str = "trust_domain";
const META_BUNDLE_VERSION: &str = "bundle_version";
const META_ACTIVE_INTERMEDIATE: &str = "active_intermediate";

/// The CA's store in a PostgreSQL database.
#[derive(Debug)]
pub struct PostgresStore {
    db: Arc<Db>,
    runner: Runner,
    /// Issuances wait here for the next batch (group commit, `batch.rs`).
    issuances: batch::Batcher,
    /// Set by [`Store::start_counting`]: the live counts are known from then on.
    counting: AtomicBool,
    pruned: AtomicU64,
    /// Counts the changes other replicas announced (`changes.rs`).
    changes: tokio::sync::watch::Receiver<u64>,
}

/// The pool and what the store knows of the database's health.
#[derive(Debug)]
struct Db {
    pool: Pool,
    name: String,
    /// The last connection failure, until an operation succeeds again.
    failure: Mutex<Option<Failure>>,
    failing: AtomicBool,
}

/// A pooled connection.
type Client = deadpool_postgres::Object;

/// A Postgres bigint for a stored number (Unix seconds, versions, sequences), saturating.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored bigint back as the number it was.
fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl Db {
    async fn client(&self) -> Result<Client, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.err(e),
            other => self.unreachable(other.to_string()),
        })
    }

    /// Maps a client error: a lost or refused connection makes the store unavailable (and
    /// is remembered for [`Store::failure`]), anything else is the engine's failure.
    fn err(&self, e: tokio_postgres::Error) -> StoreError {
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            let text = format!("{} ({})", db.message(), code.code());
            return if code.code().starts_with("08")
                || code.code().starts_with("57P")
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            {
                self.unreachable(text)
            } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
            {
                StoreError::Retry(format!(
                    "database {}: {text}; nothing was recorded, retry",
                    self.name
                ))
            } else {
                StoreError::Storage(format!("database {}: {text}", self.name))
            };
        }
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        self.unreachable(text)
    }

    fn unreachable(&self, error: String) -> StoreError {
        let failure = Failure::new(
            Cause::Database {
                name: self.name.clone(),
                error,
            },
            std::path::Path::new(""),
        );
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure.clone());
        self.failing.store(true, Ordering::Release);
        StoreError::Unavailable(failure)
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(database = %self.name, "the database answers again");
        }
    }

    async fn meta(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| r.get(0)))
    }
}

impl PostgresStore {
    /// Connects to the database, creates or migrates its schema (refusing one newer than
    /// this build knows), and opens a pool of connections. Fails, naming the database, if
    /// it cannot be reached.
    pub fn open(config: &PostgresConfig) -> Result<Self, StoreError> {
        let runner = Runner::start()?;
        let name = config.name().to_owned();
        let connector = tls::connector(config)
            .map_err(|e| StoreError::Storage(format!("database {name}: {e}")))?;
        let manager = tls::manager(config, &connector);
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            // A database that hangs rather than refuses fails the call too, not forever.
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| StoreError::Storage(format!("database {name}: {e}")))?;
        let db = Arc::new(Db {
            pool,
            name: name.clone(),
            failure: Mutex::new(None),
            failing: AtomicBool::new(false),
        });
        let (signal, changes) = tokio::sync::watch::channel(0);
        let client = config.client.clone();
        match connector {
            tls::Connector::Plain => {
                runner.spawn(changes::listen(client, tokio_postgres::NoTls, signal));
            }
            tls::Connector::Tls(tls) => runner.spawn(changes::listen(client, tls, signal)),
        }
        let issuances = batch::Batcher::start(&runner, db.clone());
        let store = Self {
            db,
            runner,
            issuances,
            counting: AtomicBool::new(false),
            pruned: AtomicU64::new(0),
            changes,
        };
        let db = store.db.clone();
        let applied = store.run(async move {
            let mut client = db.client().await?;
            schema::migrate(&mut client).await.map_err(|e| match e {
                schema::SchemaError::Database(e) => db.err(e),
                other => StoreError::Storage(format!("database {}: {other}", db.name)),
            })
        })?;
        if !applied.is_empty() {
            tracing::info!(database = %name, versions = ?applied, "database schema migrated");
        }
        store.runner.spawn(audit::keep_chaining(store.db()));
        Ok(store)
    }

    /// Runs `work` on the store's runtime and waits for it (see the module docs). A
    /// success clears a remembered connection failure.
    fn run<T, E>(&self, work: impl Future<Output = Result<T, E>> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + 'static + From<StoreError>,
    {
        let result = self.runner.block(work);
        if result.is_ok() {
            self.db.recovered();
        }
        result
    }

    fn db(&self) -> Arc<Db> {
        self.db.clone()
    }
}

mod tls {
    //! TLS to the database on rustls (aws-lc-rs), verifying the server's chain against
    //! the configured CA file and its name against the host connected to.

    use std::sync::Arc;

    use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
    use tokio_postgres_rustls::MakeRustlsConnect;

    use super::PostgresConfig;

    /// How connections are made: plain without a CA file (TLS is never attempted then),
    /// TLS verified against it with one.
    pub(super) enum Connector {
        Plain,
        Tls(MakeRustlsConnect),
    }

    /// The pool's connection maker.
    pub(super) fn manager(config: &PostgresConfig, connector: &Connector) -> Manager {
        // A broken connection is noticed when it is used, and replaced at the next checkout.
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let client = config.client.clone();
        match connector {
            Connector::Plain => Manager::from_config(client, tokio_postgres::NoTls, recycling),
            Connector::Tls(tls) => Manager::from_config(client, tls.clone(), recycling),
        }
    }

    /// The connector `config` asks for (its CA file read and checked now).
    pub(super) fn connector(config: &PostgresConfig) -> Result<Connector, String> {
        let Some(path) = config.ca_file() else {
            return Ok(Connector::Plain);
        };
        let pem = std::fs::read(path).map_err(|e| format!("CA file {}: {e}", path.display()))?;
        let certs = trellis_identity::pem::certs_from_pem(&pem)
            .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("CA file {} holds no certificate", path.display()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector::Tls(MakeRustlsConnect::new(tls)))
    }
}

/// A whole-table read: every record of `table`'s `record` column, in `order`.
async fn all<T: serde::de::DeserializeOwned>(
    db: Arc<Db>,
    table: &'static str,
    order: &'static str,
) -> Result<Vec<T>, StoreError> {
    let client = db.client().await?;
    let rows = client
        .query(&format!("SELECT record FROM {table} ORDER BY {order}"), &[])
        .await
        .map_err(|e| db.err(e))?;
    rows.iter()
        .map(|row| decode(table, &row.get::<_, Vec<u8>>(0)))
        .collect()
}

/// Writes a [`Change`] in one transaction.
async fn apply(db: Arc<Db>, change: ChangeOwned) -> Result<(), StoreError> {
    let e = |e| db.err(e);
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(e)?;
    for root in &change.roots {
        tx.execute(
            "INSERT INTO roots (id, record) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            &[&root.id, &encode(root)],
        )
        .await
        .map_err(e)?;
    }
    for key in &change.jwt_keys {
        tx.execute(
            "INSERT INTO jwt_keys (kid, record) VALUES ($1, $2) \
             ON CONFLICT (kid) DO UPDATE SET record = excluded.record",
            &[&key.kid, &encode(key)],
        )
        .await
        .map_err(e)?;
    }
    if let Some(record) = &change.intermediate {
        tx.execute(
            "INSERT INTO intermediates (id, record) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            &[&record.id, &encode(record)],
        )
        .await
        .map_err(e)?;
        put_meta(&db, &*tx, META_ACTIVE_INTERMEDIATE, &record.id).await?;
    }
    for record in &change.federations {
        tx.execute(
            "INSERT INTO federations (trust_domain, record) VALUES ($1, $2) \
             ON CONFLICT (trust_domain) DO UPDATE SET record = excluded.record",
            &[&record.trust_domain, &encode(record)],
        )
        .await
        .map_err(e)?;
    }
    for trust_domain in &change.removed_federations {
        tx.execute(
            "DELETE FROM federations WHERE trust_domain = $1",
            &[trust_domain],
        )
        .await
        .map_err(e)?;
    }
    if let Some(version) = change.bundle_version {
        put_meta(&db, &*tx, META_BUNDLE_VERSION, &version.to_string()).await?;
    }
    audit::append(&db, &tx, &change.audit).await?;
    changes::notify(&tx).await.map_err(e)?;
    tx.commit().await.map_err(e)
}

async fn put_meta(
    db: &Db,
    client: &impl tokio_postgres::GenericClient,
    key: &'static str,
    value: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(())
}

/// A [`Change`] the store's runtime can own.
struct ChangeOwned {
    roots: Vec<RootRecord>,
    jwt_keys: Vec<JwtKeyRecord>,
    intermediate: Option<IntermediateRecord>,
    federations: Vec<FederationRecord>,
    removed_federations: Vec<String>,
    bundle_version: Option<u64>,
    audit: Vec<AuditRecord>,
}

impl From<&Change> for ChangeOwned {
    fn from(c: &Change) -> Self {
        Self {
            roots: c.roots.clone(),
            jwt_keys: c.jwt_keys.clone(),
            intermediate: c.intermediate.clone(),
            federations: c.federations.clone(),
            removed_federations: c.removed_federations.clone(),
            bundle_version: c.bundle_version,
            audit: c.audit.clone(),
        }
    }
}

fn token_of(row: &tokio_postgres::Row) -> TokenRecord {
    TokenRecord {
        spiffe_id: row.get(0),
        created_at: uint(row.get(1)),
        expires_at: uint(row.get(2)),
        created_by: row.get(3),
        used_at: row.get::<_, Option<i64>>(4).map(uint),
        used_for_serial: row.get(5),
    }
}

impl Store for PostgresStore {
    // --- durability: every write is a committed transaction when it returns ---

    fn mark(&self) -> Mark {
        Mark(0)
    }

    fn durable(&self, _mark: Mark) -> StoreFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn flush_now(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The last connection failure, until an operation succeeds again.
    fn failure(&self) -> Option<Failure> {
        if !self.db.failing.load(Ordering::Acquire) {
            return None;
        }
        self.db
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Issuance batches committed (each one transaction: one WAL flush of the server);
    /// other writes commit on their own.
    fn flushes(&self) -> u64 {
        self.issuances.commits()
    }

    /// A session advisory lock on a connection taken out of the pool: dropping the guard
    /// closes the connection, which releases the lock (also if the CA dies holding it).
    fn start_up_guard(&self) -> Result<super::StartUpGuard, StoreError> {
        let db = self.db();
        let connection = self.run(async move {
            let client = db.client().await?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&START_UP_LOCK])
                .await
                .map_err(|e| db.err(e))?;
            Ok::<_, StoreError>(deadpool_postgres::Object::take(client))
        })?;
        Ok(super::StartUpGuard(Box::new(connection)))
    }

    // --- metadata ---

    fn trust_domain(&self) -> Result<Option<String>, StoreError> {
        let db = self.db();
        self.run(async move { db.meta(META_TRUST_DOMAIN).await })
    }

    fn set_trust_domain(&self, td: &str) -> Result<(), StoreError> {
        let (db, td) = (self.db(), td.to_owned());
        self.run(async move {
            let client = db.client().await?;
            put_meta(&db, &**client, META_TRUST_DOMAIN, &td).await
        })
    }

    fn bundle_version(&self) -> Result<u64, StoreError> {
        let db = self.db();
        let value = self.run(async move { db.meta(META_BUNDLE_VERSION).await })?;
        value
            .map(|v| {
                v.parse().map_err(|_| StoreError::Corrupt {
                    table: "meta",
                    reason: format!("bundle_version {v:?} is not a number"),
                })
            })
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn crl_number(&self, id: &str) -> Result<u64, StoreError> {
        let (db, id) = (self.db(), id.to_owned());
        self.run(async move {
            let client = db.client().await?;
            let row = client
                .query_opt(
                    "SELECT number FROM crl_numbers WHERE intermediate_id = $1",
                    &[&id],
                )
                .await
                .map_err(|e| db.err(e))?;
            Ok(row.map(|r| uint(r.get(0))).unwrap_or(0))
        })
    }

    fn set_crl_number(&self, id: &str, number: u64) -> Result<(), StoreError> {
        let (db, id) = (self.db(), id.to_owned());
        self.run(async move {
            let client = db.client().await?;
            client
                .execute(
                    "INSERT INTO crl_numbers (intermediate_id, number) VALUES ($1, $2) \
                     ON CONFLICT (intermediate_id) DO UPDATE SET number = excluded.number",
                    &[&id, &int(number)],
                )
                .await
                .map_err(|e| db.err(e))?;
            Ok(())
        })
    }

    fn next_crl_number(&self, id: &str, at_least: u64) -> Result<u64, StoreError> {
        self.run(replicas::next_crl_number(
            self.db(),
            id.to_owned(),
            at_least,
        ))
    }

    // --- roots and intermediates ---

    fn roots(&self) -> Result<Vec<RootRecord>, StoreError> {
        self.run(all(self.db(), "roots", "id"))
    }

    fn apply(&self, change: &Change) -> Result<(), StoreError> {
        self.run(apply(self.db(), ChangeOwned::from(change)))
    }

    fn active_intermediate(&self) -> Result<Option<IntermediateRecord>, StoreError> {
        let db = self.db();
        self.run(async move {
            let client = db.client().await?;
            let row = client
                .query_opt(
                    "SELECT i.record FROM meta m JOIN intermediates i ON i.id = m.value \
                     WHERE m.key = $1",
                    &[&META_ACTIVE_INTERMEDIATE],
                )
                .await
                .map_err(|e| db.err(e))?;
            row.map(|r| decode("intermediates", &r.get::<_, Vec<u8>>(0)))
                .transpose()
        })
    }

    fn intermediates(&self) -> Result<Vec<IntermediateRecord>, StoreError> {
        self.run(all(self.db(), "intermediates", "id"))
    }

    // --- join tokens ---

    fn create_token(
        &self,
        hash: &[u8; 32],
        token: &TokenRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let (db, hash, token, audit) = (self.db(), hash.to_vec(), token.clone(), audit.clone());
        self.run(async move {
            let e = |e| db.err(e);
            let mut client = db.client().await?;
            let tx = client.transaction().await.map_err(e)?;
            tx.execute(
                "INSERT INTO tokens (hash, spiffe_id, created_at, expires_at, created_by, \
                 used_at, used_for_serial) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (hash) DO UPDATE SET spiffe_id = excluded.spiffe_id, \
                 created_at = excluded.created_at, expires_at = excluded.expires_at, \
                 created_by = excluded.created_by, used_at = excluded.used_at, \
                 used_for_serial = excluded.used_for_serial",
                &[
                    &hash,
                    &token.spiffe_id,
                    &int(token.created_at),
                    &int(token.expires_at),
                    &token.created_by,
                    &token.used_at.map(int),
                    &token.used_for_serial,
                ],
            )
            .await
            .map_err(e)?;
            audit::append(&db, &tx, std::slice::from_ref(&audit)).await?;
            tx.commit().await.map_err(e)
        })
    }

    fn check_token(&self, hash: &[u8; 32], now: u64) -> Result<TokenRecord, RecordError> {
        let (db, hash) = (self.db(), hash.to_vec());
        let token = self.run(async move {
            let client = db.client().await?;
            let row = client
                .query_opt(
                    "SELECT spiffe_id, created_at, expires_at, created_by, used_at, \
                     used_for_serial FROM tokens WHERE hash = $1",
                    &[&hash],
                )
                .await
                .map_err(|e| db.err(e))?;
            Ok::<_, StoreError>(row.as_ref().map(token_of))
        })?;
        let token = token.ok_or(RecordError::Token(TokenRefusal::Unknown))?;
        redeemable(&token, now).map_err(RecordError::Token)?;
        Ok(token)
    }

    // --- certificates ---

    fn record_issuance(
        &self,
        record: &CertRecord,
        der: &[u8],
        serial: &[u8],
        token: Option<TokenUse>,
        audit: &[AuditRecord],
    ) -> Result<(), RecordError> {
        self.issuances
            .record(batch::Queued::new(record, der, serial, token, None, audit))
    }

    fn record_renewal(
        &self,
        record: &CertRecord,
        der: &[u8],
        serial: &[u8],
        renewing: &[u8],
        audit: &[AuditRecord],
    ) -> Result<(), RecordError> {
        self.issuances.record(batch::Queued::new(
            record,
            der,
            serial,
            None,
            Some(renewing),
            audit,
        ))
    }

    fn certificate(&self, serial: &[u8]) -> Result<Option<(CertRecord, Vec<u8>)>, StoreError> {
        self.run(certs::certificate(self.db(), serial.to_vec()))
    }

    fn certificates_of(&self, spiffe_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        self.run(certs::certificates_of(self.db(), spiffe_id.to_owned()))
    }

    fn certificates_page(
        &self,
        listing: Listing<'_>,
        after: Option<&PageToken>,
        max: usize,
        scan: usize,
        keep: &dyn Fn(&CertRecord) -> bool,
    ) -> Result<CertPage, StoreError> {
        let bad = || StoreError::BadPageToken(after.map(|t| t.0.clone()).unwrap_or_default());
        let cursor = after
            .map(|token| certs::Cursor::parse(token).ok_or_else(bad))
            .transpose()?;
        let filter = match listing {
            Listing::ByIdentity { spiffe_id: id, .. } => {
                match (&cursor, id) {
                    (None, _) => {}
                    (Some(certs::Cursor::Identity(at, _)), Some(id)) if at == id => {}
                    (Some(certs::Cursor::Identity(..)), None) => {}
                    _ => return Err(bad()),
                }
                certs::PageFilter::Identity(id.map(str::to_owned))
            }
            Listing::Expiring { now, until } => {
                if !matches!(cursor, None | Some(certs::Cursor::Expiry(..))) {
                    return Err(bad());
                }
                certs::PageFilter::Expiring { now, until }
            }
        };
        let query = certs::PageQuery {
            after: cursor,
            max,
            scan,
        };
        certs::page(&query, keep, |cursor, limit| {
            self.run(certs::fetch_page(self.db(), filter.clone(), cursor, limit))
        })
    }

    fn for_each_live(&self, now: u64, visit: &mut dyn FnMut(CertRecord)) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            let batch = self.run(certs::live_batch(self.db(), now, after.take()))?;
            let full = batch.len() as i64 >= certs::BATCH;
            for (record, not_after, serial) in batch {
                visit(record);
                after = Some((not_after, serial));
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn for_each_certificate(
        &self,
        visit: &mut dyn FnMut(CertRecord) -> bool,
    ) -> Result<(), StoreError> {
        let mut after = Vec::new();
        loop {
            let batch = self.run(certs::all_batch(self.db(), std::mem::take(&mut after)))?;
            let full = batch.len() as i64 >= certs::BATCH;
            for (record, serial) in batch {
                if !visit(record) {
                    return Ok(());
                }
                after = serial;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// The live counts are queries (see the module docs); this only says they may be read.
    fn start_counting(&self, _now: u64) -> Result<(), StoreError> {
        self.counting.store(true, Ordering::Release);
        Ok(())
    }

    fn issued_total(&self) -> Option<u64> {
        self.run(certs::issued_total(self.db())).ok()
    }

    fn live_by_root(&self, now: u64) -> Option<BTreeMap<String, u64>> {
        if !self.counting.load(Ordering::Acquire) {
            return None;
        }
        self.run(certs::live_by_root(self.db(), now)).ok()
    }

    fn prune_expired(&self, through: u64, max: usize) -> Result<usize, StoreError> {
        let removed = self.run(certs::prune_expired(self.db(), through, max))?;
        self.pruned.fetch_add(removed as u64, Ordering::Relaxed);
        Ok(removed)
    }

    fn pruned_total(&self) -> u64 {
        self.pruned.load(Ordering::Relaxed)
    }

    // --- revocations ---

    fn revoke(&self, record: &RevocationRecord, audit: &AuditRecord) -> Result<bool, StoreError> {
        let serial = trellis_identity::hex::decode(&record.serial).unwrap_or_default();
        let (db, record, audit) = (self.db(), record.clone(), audit.clone());
        self.run(async move {
            let e = |e| db.err(e);
            let mut client = db.client().await?;
            let tx = client.transaction().await.map_err(e)?;
            // Held until the commit: a renewal of this certificate waits for it, then sees
            // the revocation (`record_issuances`, migrations/V5).
            tx.execute(
                "SELECT 1 FROM certificates WHERE serial = $1 FOR UPDATE",
                &[&serial],
            )
            .await
            .map_err(e)?;
            let inserted = tx
                .execute(
                    "INSERT INTO revocations (serial, record) VALUES ($1, $2) \
                     ON CONFLICT (serial) DO NOTHING",
                    &[&serial, &encode(&record)],
                )
                .await
                .map_err(e)?;
            if inserted == 0 {
                return Ok(false);
            }
            audit::append(&db, &tx, std::slice::from_ref(&audit)).await?;
            changes::notify(&tx).await.map_err(e)?;
            tx.commit().await.map_err(e)?;
            Ok(true)
        })
    }

    fn revocation(&self, serial: &[u8]) -> Result<Option<RevocationRecord>, StoreError> {
        let (db, serial) = (self.db(), serial.to_vec());
        self.run(async move {
            let client = db.client().await?;
            let row = client
                .query_opt(
                    "SELECT record FROM revocations WHERE serial = $1",
                    &[&serial],
                )
                .await
                .map_err(|e| db.err(e))?;
            row.map(|r| decode("revocations", &r.get::<_, Vec<u8>>(0)))
                .transpose()
        })
    }

    fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.run(all(self.db(), "revocations", "serial"))
    }

    fn bundle_change_guard(&self) -> Result<super::BundleChangeGuard, StoreError> {
        let connection = self.run(replicas::bundle_change_lock(self.db()))?;
        Ok(super::BundleChangeGuard(Box::new(connection)))
    }

    fn revocations_marker(&self) -> Result<(u64, u64), StoreError> {
        self.run(replicas::revocations_marker(self.db()))
    }

    fn announced_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.clone())
    }

    // --- bundle acknowledgements ---

    fn put_ack(&self, spiffe_id: &str, version: u64, at: u64) -> Result<(), StoreError> {
        let (db, spiffe_id) = (self.db(), spiffe_id.to_owned());
        self.run(async move {
            let client = db.client().await?;
            client
                .execute(
                    "INSERT INTO acks (spiffe_id, version, at) VALUES ($1, $2, $3) \
                     ON CONFLICT (spiffe_id) DO UPDATE SET version = excluded.version, \
                     at = excluded.at",
                    &[&spiffe_id, &int(version), &int(at)],
                )
                .await
                .map_err(|e| db.err(e))?;
            Ok(())
        })
    }

    fn acks(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let db = self.db();
        self.run(async move {
            let client = db.client().await?;
            let rows = client
                .query(
                    "SELECT spiffe_id, version, at FROM acks ORDER BY spiffe_id",
                    &[],
                )
                .await
                .map_err(|e| db.err(e))?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), uint(r.get(1)), uint(r.get(2))))
                .collect())
        })
    }

    // --- audit log ---

    fn append_audit(&self, entry: &AuditRecord) -> Result<(), StoreError> {
        self.run(audit::append_alone(self.db(), entry.clone()))
    }

    fn audit_chain_head(&self) -> Result<Head, StoreError> {
        self.run(audit::chain_head(self.db()))
    }

    fn audit_raw_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.run(audit::raw_after(self.db(), after, limit))
    }

    fn put_audit_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.run(audit::put_checkpoint(self.db(), checkpoint.clone()))
    }

    fn audit_checkpoints_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        self.run(audit::checkpoints_after(self.db(), after, limit))
    }

    fn latest_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.run(audit::latest_checkpoint(self.db()))
    }

    fn prune_audit(&self, cutoff: u64, max_batches: usize) -> Result<u64, StoreError> {
        self.run(audit::prune(self.db(), cutoff, max_batches))
    }

    // --- JWT-SVID keys ---

    fn jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        self.run(all(self.db(), "jwt_keys", "position"))
    }

    // --- federation ---

    fn put_sealed_key(&self, name: &str, sealed: &[u8]) -> Result<bool, StoreError> {
        self.run(sealed_keys::put(
            self.db(),
            name.to_owned(),
            sealed.to_vec(),
        ))
    }

    fn sealed_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(sealed_keys::get(self.db(), name.to_owned()))
    }

    fn federations(&self) -> Result<Vec<FederationRecord>, StoreError> {
        self.run(all(self.db(), "federations", "trust_domain"))
    }

    fn federation(&self, trust_domain: &str) -> Result<Option<FederationRecord>, StoreError> {
        let (db, trust_domain) = (self.db(), trust_domain.to_owned());
        self.run(async move {
            let client = db.client().await?;
            let row = client
                .query_opt(
                    "SELECT record FROM federations WHERE trust_domain = $1",
                    &[&trust_domain],
                )
                .await
                .map_err(|e| db.err(e))?;
            row.map(|r| decode("federations", &r.get::<_, Vec<u8>>(0)))
                .transpose()
        })
    }
}
