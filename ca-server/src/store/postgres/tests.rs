//! The PostgreSQL store against a real server (`trellis_e2e::Postgres`: Debian's package, a
//! fresh cluster in a temp dir on a loopback port, stopped with the test): the store
//! contract, the schema's migration and its refusal of a newer one, and a lost database.

use std::sync::Arc;

use trellis_e2e::Postgres;

use super::config::{PasswordSource, PostgresConfig, UrlSource};
use super::*;

pub(super) fn config(db: &Postgres) -> PostgresConfig {
    PostgresConfig::parse(&db.url(), UrlSource::Flag, PasswordSource::default(), None)
        .expect("the harness's URL parses")
}

/// The store contract (`crate::store::conformance`), each check on a server of its own.
mod conformance {
    use super::*;
    use crate::store::conformance::{Harness, conformance_tests};

    #[derive(Default)]
    struct Pg {
        server: Option<Postgres>,
    }

    impl Harness for Pg {
        fn create(&mut self) -> Arc<dyn Store> {
            let server = Postgres::start();
            let store = PostgresStore::open(&config(&server)).expect("open a new store");
            self.server = Some(server);
            Arc::new(store)
        }

        fn reopen(&mut self) -> Arc<dyn Store> {
            let server = self.server.as_ref().expect("create comes first");
            Arc::new(PostgresStore::open(&config(server)).expect("reopen the store"))
        }
    }

    conformance_tests!(Pg::default());
}

/// A plain client on the side, as an operator's psql would be.
pub(super) fn side_client(db: &Postgres) -> (tokio::runtime::Runtime, tokio_postgres::Client) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    });
    (runtime, client)
}

#[test]
fn replicas_starting_at_once_migrate_the_schema_once() {
    let db = Postgres::start();
    // Someone holds the migration lock: every opening waits for it, none touches the schema.
    let (runtime, side) = side_client(&db);
    runtime
        .block_on(side.execute("SELECT pg_advisory_lock($1)", &[&schema::MIGRATION_LOCK]))
        .unwrap();
    let openings: Vec<_> = (0..4)
        .map(|_| {
            let config = config(&db);
            std::thread::spawn(move || PostgresStore::open(&config).map(|_| ()))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let history = runtime
        .block_on(side.query_one("SELECT to_regclass('refinery_schema_history')::text", &[]))
        .unwrap()
        .get::<_, Option<String>>(0);
    assert_eq!(history, None, "nobody migrated while the lock was held");
    runtime
        .block_on(side.execute("SELECT pg_advisory_unlock($1)", &[&schema::MIGRATION_LOCK]))
        .unwrap();
    for opening in openings {
        opening.join().unwrap().expect("every replica opens");
    }
    let applied: i64 = runtime
        .block_on(side.query_one("SELECT count(*) FROM refinery_schema_history", &[]))
        .unwrap()
        .get(0);
    assert_eq!(
        applied,
        schema::known_version(),
        "each version applied once"
    );
}

#[test]
fn a_schema_newer_than_this_build_is_refused_naming_both_versions() {
    let db = Postgres::start();
    drop(PostgresStore::open(&config(&db)).expect("first opening migrates"));
    let (runtime, side) = side_client(&db);
    let newer = schema::known_version() + 1;
    runtime
        .block_on(side.execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES ($1::int4, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
            &[&i32::try_from(newer).unwrap()],
        ))
        .unwrap();
    let refused = PostgresStore::open(&config(&db)).unwrap_err().to_string();
    assert!(
        refused.contains(&format!("schema version {newer}"))
            && refused.contains("newer than this trellis-ca")
            && refused.contains(&config(&db).name().to_owned()),
        "{refused}"
    );
}

#[test]
fn an_unreachable_database_is_named_at_opening() {
    let mut db = Postgres::start();
    let config = config(&db);
    db.stop();
    let refused = PostgresStore::open(&config).unwrap_err();
    assert_eq!(refused.kind(), crate::store::ErrorKind::Unavailable);
    let text = refused.to_string();
    assert!(
        text.contains(config.name()) && text.contains("unreachable"),
        "{text}"
    );
}

/// The database lost while serving: calls fail as unavailable, naming it, and
/// [`Store::failure`] says so; once it is back, the next call succeeds and nothing
/// committed before is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_is_unavailable_then_resumes_by_itself() {
    let mut db = Postgres::start();
    let store = PostgresStore::open(&config(&db)).unwrap();
    store.set_trust_domain("td").unwrap();
    store.put_ack("spiffe://td/a", 1, 10).unwrap();
    assert_eq!(store.failure(), None);

    db.stop();
    let lost = store.put_ack("spiffe://td/b", 1, 11).unwrap_err();
    assert_eq!(lost.kind(), crate::store::ErrorKind::Unavailable);
    assert!(lost.to_string().contains(config(&db).name()), "{lost}");
    let failure = store.failure().expect("the failure is remembered");
    assert!(
        failure.to_string().contains("reconnects by itself"),
        "{failure}"
    );
    assert_eq!(store.issued_total(), None, "unknown while unreachable");

    db.restart();
    eventually(|| store.put_ack("spiffe://td/b", 1, 11).is_ok());
    assert_eq!(store.failure(), None, "cleared by the first success");
    assert_eq!(
        store.acks().unwrap(),
        vec![
            ("spiffe://td/a".to_owned(), 1, 10),
            ("spiffe://td/b".to_owned(), 1, 11)
        ]
    );
}

/// Retries `check` for up to 10 s (a pool's broken connections are replaced one use at a
/// time).
pub(super) fn eventually(mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "still failing after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A CA certificate (PEM) and a server chain and key for 127.0.0.1 signed by it.
fn server_tls() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn tls_to_the_database_is_verified_against_the_ca_file() {
    let (ca, chain, key) = server_tls();
    let db = Postgres::start_tls(&chain, &key);
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("db-ca.pem");
    std::fs::write(&trusted, &ca).unwrap();
    let with = |ca_file: &std::path::Path| {
        PostgresConfig::parse(
            &db.url(),
            UrlSource::Flag,
            PasswordSource::default(),
            Some(ca_file.to_owned()),
        )
        .unwrap()
    };
    let store = PostgresStore::open(&with(&trusted)).expect("TLS verified by the CA file");
    let db_ = store.db();
    let encrypted: bool = store
        .run(async move {
            let client = db_.client().await?;
            let row = client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(|e| db_.err(e))?;
            Ok::<_, StoreError>(row.get(0))
        })
        .unwrap();
    assert!(encrypted, "the store's connections use TLS");
    store.set_trust_domain("td").unwrap();

    // A server the CA file does not vouch for is refused, and the error names the database.
    let (stranger, _, _) = server_tls();
    let untrusted = dir.path().join("other-ca.pem");
    std::fs::write(&untrusted, &stranger).unwrap();
    let refused = PostgresStore::open(&with(&untrusted))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!("127.0.0.1:{}", db.port)) && refused.contains("certificate"),
        "{refused}"
    );
}

/// The synchronous calls work from every kind of caller: a current-thread runtime (where
/// `block_in_place` would panic), the blocking pool, and a worker of a multi-thread one.
#[tokio::test(flavor = "current_thread")]
async fn a_current_thread_runtime_can_call_the_store() {
    let db = Postgres::start();
    let store = Arc::new(PostgresStore::open(&config(&db)).unwrap());
    store.set_trust_domain("td").unwrap();
    let blocking = store.clone();
    tokio::task::spawn_blocking(move || blocking.put_ack("spiffe://td/a", 1, 2).unwrap())
        .await
        .unwrap();
    assert_eq!(store.trust_domain().unwrap().as_deref(), Some("td"));
    assert_eq!(store.acks().unwrap().len(), 1);
}

/// Two replicas issuing at once from several threads each: every audit entry is chained
/// exactly once, numbered without gaps, each linked to the one before, and the counters
/// (split in shards) add up.
#[test]
fn replicas_writing_at_once_build_one_gapless_chain() {
    const THREADS: usize = 6;
    const EACH: usize = 25;
    let db = Postgres::start();
    let replicas = [
        Arc::new(PostgresStore::open(&config(&db)).unwrap()),
        Arc::new(PostgresStore::open(&config(&db)).unwrap()),
    ];
    replicas[0].set_trust_domain("td").unwrap();
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = replicas[t % 2].clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let serial = vec![t as u8 + 1, i as u8, 0x5a, i as u8];
                    let record = CertRecord {
                        serial: trellis_identity::hex::encode(&serial),
                        spiffe_id: format!("spiffe://td/w{t}"),
                        dns_names: Vec::new(),
                        not_before: 1,
                        not_after: 4_000_000_000,
                        issued_at: 1,
                        issued_at_ns: 1,
                        root_id: "r1".into(),
                        intermediate_id: "i1".into(),
                        issued_via: "renewal".into(),
                    };
                    let entry = AuditRecord {
                        time: 1,
                        kind: "certificate_issued".into(),
                        spiffe_id: record.spiffe_id.clone(),
                        serial: record.serial.clone(),
                        actor: "test".into(),
                        detail: String::new(),
                    };
                    store
                        .record_issuance(&record, b"der", &serial, None, &[entry])
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let total = THREADS * EACH;
    let chain = replicas[1].audit_chain_after(0, total + 10).unwrap();
    assert_eq!(chain.len(), total);
    let mut serials = std::collections::BTreeSet::new();
    for (n, entry) in chain.iter().enumerate() {
        assert_eq!(entry.sequence, n as u64 + 1, "no gaps");
        if n > 0 {
            assert_eq!(entry.prev, chain[n - 1].hash, "linked");
        }
        let record: AuditRecord = decode("audit", &entry.body).unwrap();
        assert!(serials.insert(record.serial), "each entry chained once");
    }
    assert_eq!(
        replicas[0].audit_chain_head().unwrap().sequence,
        total as u64
    );
    assert_eq!(replicas[0].issued_total(), Some(total as u64));
    replicas[0].start_counting(2).unwrap();
    assert_eq!(
        replicas[0]
            .live_by_root(2)
            .and_then(|c| c.get("r1").copied()),
        Some(total as u64)
    );
}

/// Sealed keys are written once, read by name, survive a reopening, and a replica sealing
/// a key another replica made under the same KEK opens it (`crate::keys`).
#[test]
fn a_sealed_key_is_written_once_and_read_by_every_replica() {
    use crate::keys::{self, Kek};
    let db = Postgres::start();
    let a = PostgresStore::open(&config(&db)).expect("open");
    let b = PostgresStore::open(&config(&db)).expect("open a second replica");
    let kek = Kek::from_bytes([9; keys::KEK_LEN]);
    let sealed = keys::seal(&kek, "example.org", "root-r1.key.pem", b"the key").unwrap();
    assert_eq!(a.sealed_key("root-r1.key.pem").unwrap(), None);
    assert!(a.put_sealed_key("root-r1.key.pem", &sealed).unwrap());
    let other = keys::seal(&kek, "example.org", "root-r1.key.pem", b"another").unwrap();
    assert!(
        !b.put_sealed_key("root-r1.key.pem", &other).unwrap(),
        "a sealed key is never replaced"
    );
    let read = b.sealed_key("root-r1.key.pem").unwrap().expect("stored");
    assert_eq!(read, sealed);
    assert_eq!(
        keys::open(&kek, "example.org", "root-r1.key.pem", &read)
            .unwrap()
            .as_slice(),
        b"the key"
    );
    drop((a, b));
    let reopened = PostgresStore::open(&config(&db)).expect("reopen");
    assert_eq!(
        reopened.sealed_key("root-r1.key.pem").unwrap(),
        Some(sealed)
    );
}

/// Two stores on one database, as two replicas hold them.
fn two_replicas(db: &Postgres) -> [PostgresStore; 2] {
    [(); 2].map(|_| PostgresStore::open(&config(db)).expect("open"))
}

#[test]
fn replicas_taking_crl_numbers_at_once_never_take_the_same_one() {
    let db = Postgres::start();
    let stores = two_replicas(&db).map(Arc::new);
    const EACH: usize = 25;
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let store = stores[i % 2].clone();
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|_| store.next_crl_number("i1", 1_700_000_000).expect("take"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut taken: Vec<u64> = takers
        .into_iter()
        .flat_map(|t| t.join().expect("taker"))
        .collect();
    taken.sort_unstable();
    let all = taken.len();
    taken.dedup();
    assert_eq!(taken.len(), all, "a number was taken twice");
    assert_eq!(
        (taken[0], taken[all - 1]),
        (1_700_000_000, 1_700_000_000 + all as u64 - 1),
        "one after the other from the one asked for"
    );
}

/// Revocation `n` (all at one second) and its audit entry.
fn revocation(n: u8) -> (RevocationRecord, AuditRecord) {
    let record = RevocationRecord {
        serial: trellis_identity::hex::encode(&[n; 16]),
        spiffe_id: "spiffe://td/r".into(),
        revoked_at: 1_700_000_000,
        reason: "test".into(),
        not_after: 1_800_000_000,
        intermediate_id: "i1".into(),
        reason_code: None,
    };
    let audit = AuditRecord {
        time: record.revoked_at,
        kind: "certificate_revoked".into(),
        spiffe_id: record.spiffe_id.clone(),
        serial: record.serial.clone(),
        actor: "test".into(),
        detail: String::new(),
    };
    (record, audit)
}

#[test]
fn a_revocation_through_one_replica_changes_the_marker_the_other_reads() {
    let db = Postgres::start();
    let [a, b] = two_replicas(&db);
    let before = b.revocations_marker().expect("marker");
    assert_eq!(before.0, 0);
    let mut seen = vec![before];
    for n in 1..=3 {
        // Same second every time: the marker must not rest on revocation times.
        let (record, audit) = revocation(n);
        assert!(a.revoke(&record, &audit).expect("revoke"));
        let now = b.revocations_marker().expect("marker");
        assert!(!seen.contains(&now), "{now:?} after {seen:?}");
        assert_eq!(b.revocations_marker().expect("marker"), now, "stable");
        seen.push(now);
    }
    assert_eq!(seen.last().map(|m| m.0), Some(3));
}

#[test]
fn a_replica_changing_the_bundle_keeps_the_others_waiting_until_it_is_done() {
    let db = Postgres::start();
    let [a, b] = two_replicas(&db);
    let held = a.bundle_change_guard().expect("A takes the lock");
    let (taken, took) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let guard = b.bundle_change_guard().expect("B takes the lock");
        taken.send(()).expect("send");
        drop(guard);
    });
    assert!(
        took.recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "B changed the bundle while A was"
    );
    drop(held);
    took.recv_timeout(std::time::Duration::from_secs(10))
        .expect("B goes on once A is done");
    waiter.join().expect("waiter");
}

/// A revocation and a bundle change written through one replica are announced to the
/// other through `LISTEN/NOTIFY`, which is what wakes its follower before its periodic check.
#[test]
fn changes_through_one_replica_are_announced_to_the_other() {
    let db = Postgres::start();
    let [a, b] = two_replicas(&db);
    let mut announced = b.announced_changes().expect("PostgreSQL announces changes");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut next = |what: &str| {
        let wait = std::time::Duration::from_secs(20);
        runtime
            .block_on(async { tokio::time::timeout(wait, announced.changed()).await })
            .unwrap_or_else(|_| panic!("{what} was never announced"))
            .expect("the listener runs");
    };
    // The listening connection counts its own start: nothing may have been missed before.
    next("the listener's start");

    let (revocation, audit) = revocation(9);
    assert!(a.revoke(&revocation, &audit).expect("revoke"));
    next("a revocation");

    a.apply(&Change {
        bundle_version: Some(2),
        ..Change::default()
    })
    .expect("bundle change");
    next("a bundle change");
}

/// A revocation committing while a renewal of the same certificate is being recorded
/// through another replica: the renewal waits for it and is refused, never recorded
/// beside it (the check and the write are one step).
#[test]
fn a_renewal_racing_a_revocation_of_its_certificate_is_refused() {
    let db = Postgres::start();
    let [a, b] = two_replicas(&db);
    let now = 1_700_000_000;
    let record = move |n: u8| CertRecord {
        serial: trellis_identity::hex::encode(&[n; 16]),
        spiffe_id: "spiffe://td/raced".into(),
        dns_names: Vec::new(),
        not_before: now,
        not_after: now + 3600,
        issued_at: now,
        issued_at_ns: u128::from(n),
        root_id: "r1".into(),
        intermediate_id: "i1".into(),
        issued_via: "renewal".into(),
    };
    a.record_issuance(&record(1), b"first", &[1; 16], None, &[])
        .expect("the first certificate");

    // Another replica's revocation, written and not yet committed, as `revoke` writes it.
    let (runtime, mut side) = side_client(&db);
    let (revocation, _) = revocation(1);
    let tx = runtime
        .block_on(side.transaction())
        .expect("side transaction");
    runtime
        .block_on(tx.execute(
            "SELECT 1 FROM certificates WHERE serial = $1 FOR UPDATE",
            &[&vec![1u8; 16]],
        ))
        .expect("lock the certificate");
    runtime
        .block_on(tx.execute(
            "INSERT INTO revocations (serial, record) VALUES ($1, $2)",
            &[&vec![1u8; 16], &encode(&revocation)],
        ))
        .expect("revocation written");

    let renewal = std::thread::spawn(move || {
        b.record_renewal(&record(2), b"second", &[2; 16], &[1; 16], &[])
    });
    // The renewal waits for the revocation's row lock while the revocation is open.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !renewal.is_finished(),
        "the renewal did not wait for the revocation"
    );
    runtime
        .block_on(tx.commit())
        .expect("the revocation commits");
    let refused = renewal.join().expect("renewal thread");
    assert!(matches!(refused, Err(RecordError::Revoked)), "{refused:?}");
    assert_eq!(
        a.certificate(&[2; 16]).unwrap(),
        None,
        "nothing of it recorded"
    );
}
