//! Group commit of issuances against a real server: batches are recorded whole, a refusal
//! is its own item's only, and a failure fails every caller of the batch.
//!
//! To know what a batch holds, a side session locks the counter rows: the first batches
//! the store writes at once (one issuance each, "blockers") wait for it inside
//! their transactions while everything issued after queues; once the lock goes, the queue
//! is one batch.

use std::sync::Arc;
use std::thread::JoinHandle;

use trellis_e2e::Postgres;

use super::tests::{config, eventually, side_client};
use super::*;

const NOW: u64 = 1_000_000;
/// Batches that block on the side session's lock before the one under test: as many as
/// the store writes at once.
const BLOCKERS: usize = super::batch::IN_FLIGHT;

fn cert(serial: &[u8], spiffe_id: &str) -> CertRecord {
    CertRecord {
        serial: trellis_identity::hex::encode(serial),
        spiffe_id: spiffe_id.into(),
        dns_names: Vec::new(),
        not_before: NOW - 60,
        not_after: NOW + 3600,
        issued_at: NOW - 60,
        issued_at_ns: 1,
        root_id: "r1".into(),
        intermediate_id: "i1".into(),
        issued_via: "renewal".into(),
    }
}

fn serial(n: u8) -> Vec<u8> {
    let mut s = vec![0x42; 16];
    s[0] = n;
    s
}

fn hex_serial(n: u8) -> String {
    trellis_identity::hex::encode(&serial(n))
}

fn issued(c: &CertRecord) -> AuditRecord {
    AuditRecord {
        time: NOW,
        kind: "certificate_issued".into(),
        spiffe_id: c.spiffe_id.clone(),
        serial: c.serial.clone(),
        actor: "test".into(),
        detail: String::new(),
    }
}

fn token(expires_at: u64) -> TokenRecord {
    TokenRecord {
        spiffe_id: "spiffe://td/joiner".into(),
        created_at: NOW - 10,
        expires_at,
        created_by: "test".into(),
        used_at: None,
        used_for_serial: None,
    }
}

fn created() -> AuditRecord {
    AuditRecord {
        time: NOW - 10,
        kind: "join_token_created".into(),
        spiffe_id: "spiffe://td/joiner".into(),
        serial: String::new(),
        actor: "test".into(),
        detail: String::new(),
    }
}

/// What a caller of `record_issuance` got.
type Outcome = Result<(), RecordError>;

/// One issuance to make: serial, identity, token.
type Ask = (Vec<u8>, &'static str, Option<[u8; 32]>);

/// Issues `ask` on a thread of its own, with its audit entry.
fn spawn_issue(store: &Arc<PostgresStore>, ask: Ask) -> JoinHandle<Result<(), RecordError>> {
    let store = store.clone();
    std::thread::spawn(move || {
        let (serial, spiffe_id, token) = ask;
        let c = cert(&serial, spiffe_id);
        store.record_issuance(
            &c,
            b"der",
            &serial,
            token.map(|hash| TokenUse { hash, now: NOW }),
            &[issued(&c)],
        )
    })
}

/// The counter rows locked by a side session until the returned release is called.
struct CounterLock {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl CounterLock {
    fn take(db: &Postgres) -> Self {
        let (runtime, client) = side_client(db);
        runtime
            .block_on(client.batch_execute("BEGIN; SELECT * FROM counters FOR UPDATE"))
            .expect("lock the counters");
        Self { runtime, client }
    }

    /// Sessions waiting for a lock now.
    fn waiters(&self) -> i64 {
        // Inside a transaction the activity view is read once and kept, unless cleared.
        self.runtime
            .block_on(self.client.execute("SELECT pg_stat_clear_snapshot()", &[]))
            .expect("clear the statistics snapshot");
        self.runtime
            .block_on(self.client.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            ))
            .expect("read pg_stat_activity")
            .get(0)
    }

    fn release(self) {
        self.runtime
            .block_on(self.client.batch_execute("COMMIT"))
            .expect("release the counters");
    }
}

/// Issues `asks` as one batch behind [`BLOCKERS`] blocked ones (serials 0xf0...), with
/// `lock` held until all have queued; `then` runs while they wait (the lock still held).
/// Returns the outcomes of the blockers and of `asks`, in their order.
fn batch_behind_blockers(
    lock: CounterLock,
    store: &Arc<PostgresStore>,
    asks: Vec<Ask>,
    then: impl FnOnce(CounterLock),
) -> (Vec<Outcome>, Vec<Outcome>) {
    // One at a time, or they would share a batch.
    let blockers: Vec<_> = (0..BLOCKERS)
        .map(|n| {
            let blocker = spawn_issue(store, (serial(0xf0 + n as u8), "spiffe://td/blocker", None));
            eventually(|| lock.waiters() == n as i64 + 1);
            blocker
        })
        .collect();
    let count = asks.len();
    let waiting: Vec<_> = asks.into_iter().map(|a| spawn_issue(store, a)).collect();
    eventually(|| store.issuances.waiting() == BLOCKERS + count);
    then(lock);
    let join = |threads: Vec<JoinHandle<_>>| {
        threads
            .into_iter()
            .map(|t| t.join().expect("issuer thread"))
            .collect()
    };
    (join(blockers), join(waiting))
}

fn spiffe_ids(store: &PostgresStore, id: &str) -> Vec<String> {
    store
        .certificates_of(id)
        .expect("read")
        .into_iter()
        .map(|r| r.serial)
        .collect()
}

#[test]
fn concurrent_issuances_share_one_commit_and_are_all_recorded() {
    const ISSUERS: u8 = 40;
    let db = Postgres::start();
    let store = Arc::new(PostgresStore::open(&config(&db)).expect("open"));
    store.set_trust_domain("td").expect("trust domain");
    let asks = (0..ISSUERS)
        .map(|n| (serial(n), "spiffe://td/w", None))
        .collect();
    let (blockers, outcomes) =
        batch_behind_blockers(CounterLock::take(&db), &store, asks, CounterLock::release);
    for outcome in blockers.into_iter().chain(outcomes) {
        outcome.expect("every issuance of the batch is recorded");
    }
    let total = u64::from(ISSUERS) + BLOCKERS as u64;
    assert_eq!(
        store.flushes(),
        BLOCKERS as u64 + 1,
        "the blockers' commits, then one for all the others"
    );
    // Committed: another replica (a store of its own) reads every one back.
    let other = PostgresStore::open(&config(&db)).expect("open another replica");
    assert_eq!(
        spiffe_ids(&other, "spiffe://td/w").len(),
        usize::from(ISSUERS)
    );
    for n in 0..ISSUERS {
        let (record, der) = other.certificate(&serial(n)).unwrap().expect("recorded");
        assert_eq!(
            (record, der),
            (cert(&serial(n), "spiffe://td/w"), b"der".to_vec())
        );
    }
    assert_eq!(other.issued_total(), Some(total));
    other.start_counting(NOW).unwrap();
    assert_eq!(
        other.live_by_root(NOW).and_then(|c| c.get("r1").copied()),
        Some(total)
    );
    let audited: std::collections::BTreeSet<String> = other
        .audit_after(0, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.serial)
        .collect();
    assert_eq!(audited.len(), total as usize, "one entry per issuance");
}

#[test]
fn a_serial_taken_in_a_batch_refuses_only_its_item() {
    let db = Postgres::start();
    let store = Arc::new(PostgresStore::open(&config(&db)).expect("open"));
    store.set_trust_domain("td").expect("trust domain");
    let first = cert(&serial(1), "spiffe://td/first");
    store
        .record_issuance(&first, b"first", &serial(1), None, &[issued(&first)])
        .expect("the first issuance");
    let hash = [7u8; 32];
    store
        .create_token(&hash, &token(NOW + 600), &created())
        .unwrap();
    let (_, outcomes) = batch_behind_blockers(
        CounterLock::take(&db),
        &store,
        vec![
            (serial(2), "spiffe://td/a", None),
            (serial(1), "spiffe://td/b", None),
            // A taken serial with a token: the token stays unused.
            (serial(1), "spiffe://td/joiner", Some(hash)),
            (serial(3), "spiffe://td/a", None),
            // The same new serial twice in one batch: the first is recorded.
            (serial(4), "spiffe://td/c", None),
            (serial(4), "spiffe://td/d", None),
        ],
        CounterLock::release,
    );
    let refused: Vec<bool> = outcomes
        .iter()
        .map(|o| matches!(o, Err(RecordError::SerialTaken)))
        .collect();
    assert_eq!(
        refused[..4],
        [false, true, true, false],
        "only the taken serial's items are refused: {outcomes:?}"
    );
    assert!(
        refused[4] != refused[5] && outcomes[4].is_ok() != outcomes[5].is_ok(),
        "exactly one of a serial twice in a batch: {outcomes:?}"
    );
    assert_eq!(
        store.flushes(),
        BLOCKERS as u64 + 2,
        "one batch after the blockers"
    );
    assert_eq!(
        store.certificate(&serial(1)).unwrap(),
        Some((first.clone(), b"first".to_vec()))
    );
    assert!(spiffe_ids(&store, "spiffe://td/b").is_empty());
    assert!(spiffe_ids(&store, "spiffe://td/joiner").is_empty());
    assert!(
        store.check_token(&hash, NOW).is_ok(),
        "the token stays unused"
    );
    assert_eq!(spiffe_ids(&store, "spiffe://td/a").len(), 2);
    let won = if outcomes[4].is_ok() { "c" } else { "d" };
    assert_eq!(
        spiffe_ids(&store, &format!("spiffe://td/{won}")),
        vec![hex_serial(4)]
    );
    // first, blockers, serials 2, 3 and one 4.
    let recorded = 1 + BLOCKERS as u64 + 3;
    assert_eq!(store.issued_total(), Some(recorded));
    let issued_entries = store
        .audit_after(0, 100)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.kind == "certificate_issued")
        .count();
    assert_eq!(
        issued_entries as u64, recorded,
        "no entry for a refused item"
    );
}

#[test]
fn a_refused_token_in_a_batch_refuses_only_its_item() {
    let db = Postgres::start();
    let store = Arc::new(PostgresStore::open(&config(&db)).expect("open"));
    store.set_trust_domain("td").expect("trust domain");
    let (used, fresh, contested, expired) = ([1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32]);
    for hash in [used, fresh, contested] {
        store
            .create_token(&hash, &token(NOW + 600), &created())
            .unwrap();
    }
    store
        .create_token(&expired, &token(NOW), &created())
        .unwrap();
    let c = cert(&serial(1), "spiffe://td/joiner");
    store
        .record_issuance(
            &c,
            b"der",
            &serial(1),
            Some(TokenUse {
                hash: used,
                now: NOW - 5,
            }),
            &[],
        )
        .expect("the token's first use");
    let (_, outcomes) = batch_behind_blockers(
        CounterLock::take(&db),
        &store,
        vec![
            (serial(2), "spiffe://td/w", None),
            (serial(3), "spiffe://td/joiner", Some(used)),
            (serial(4), "spiffe://td/joiner", Some(fresh)),
            (serial(5), "spiffe://td/joiner", Some([9; 32])),
            (serial(6), "spiffe://td/joiner", Some(expired)),
            (serial(7), "spiffe://td/joiner", Some(contested)),
            (serial(8), "spiffe://td/joiner", Some(contested)),
            (serial(9), "spiffe://td/w", None),
        ],
        CounterLock::release,
    );
    assert!(outcomes[0].is_ok() && outcomes[7].is_ok(), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Err(RecordError::Token(TokenRefusal::Used { at })) if at == NOW - 5),
        "{:?}",
        outcomes[1]
    );
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    assert!(
        matches!(outcomes[3], Err(RecordError::Token(TokenRefusal::Unknown))),
        "{:?}",
        outcomes[3]
    );
    assert!(
        matches!(outcomes[4], Err(RecordError::Token(TokenRefusal::Expired { at })) if at == NOW),
        "{:?}",
        outcomes[4]
    );
    let contested_won: Vec<usize> = [5, 6]
        .into_iter()
        .filter(|&i| outcomes[i].is_ok())
        .collect();
    assert_eq!(
        contested_won.len(),
        1,
        "one redemption of a token: {outcomes:?}"
    );
    let lost = 11 - contested_won[0];
    assert!(
        matches!(outcomes[lost], Err(RecordError::Token(TokenRefusal::Used { at })) if at == NOW),
        "{:?}",
        outcomes[lost]
    );
    assert_eq!(
        store.flushes(),
        BLOCKERS as u64 + 2,
        "one batch after the blockers"
    );
    // Item 5 is serial 7, item 6 serial 8.
    let winner = hex_serial(if contested_won[0] == 5 { 7 } else { 8 });
    let mut joined = spiffe_ids(&store, "spiffe://td/joiner");
    joined.sort();
    let mut expected = vec![hex_serial(1), hex_serial(4), winner.clone()];
    expected.sort();
    assert_eq!(joined, expected, "only the redeemed tokens' certificates");
    assert_eq!(spiffe_ids(&store, "spiffe://td/w").len(), 2);
    let token_of = |hash: [u8; 32]| {
        let db = store.db();
        store
            .run(async move {
                let client = db.client().await?;
                let row = client
                    .query_one(
                        "SELECT used_for_serial FROM tokens WHERE hash = $1",
                        &[&hash.to_vec()],
                    )
                    .await
                    .map_err(|e| db.err(e))?;
                Ok::<Option<String>, StoreError>(row.get(0))
            })
            .unwrap()
    };
    assert_eq!(token_of(fresh), Some(hex_serial(4)));
    assert_eq!(token_of(contested), Some(winner));
    assert_eq!(token_of(expired), None);
}

/// The database lost while a batch waits inside its transaction and more wait behind it:
/// a caller gets the store's error naming the database unless its issuance was committed
/// (which a fast shutdown still allows in its first moments, to any session it has not yet
/// stopped), what is recorded is exactly what was acknowledged, and the store records again
/// once the database is back.
#[test]
fn a_database_lost_mid_batch_fails_every_caller_of_it() {
    const ISSUERS: u8 = 12;
    let mut db = Postgres::start();
    let store = Arc::new(PostgresStore::open(&config(&db)).expect("open"));
    store.set_trust_domain("td").expect("trust domain");
    let name = config(&db).name().to_owned();
    let asks = (0..ISSUERS)
        .map(|n| (serial(n), "spiffe://td/w", None))
        .collect();
    let lock = CounterLock::take(&db);
    let server = &mut db;
    let (blockers, outcomes) = batch_behind_blockers(lock, &store, asks, |lock| {
        server.stop();
        drop(lock);
    });
    let mut batch_committed = Vec::new();
    for outcome in outcomes {
        match outcome {
            Err(RecordError::Store(e)) => {
                assert_eq!(e.kind(), crate::store::ErrorKind::Unavailable, "{e}");
                assert!(e.to_string().contains(&name), "{e}");
                batch_committed.push(false);
            }
            Ok(()) => batch_committed.push(true),
            other => panic!("a caller of a lost batch must get the store's error: {other:?}"),
        }
    }
    // A blocker may have committed while the server shut down (its lock freed first): then
    // it was acknowledged; either way its answer is what the database holds.
    let committed: Vec<bool> = blockers.iter().map(Result::is_ok).collect();
    let batch_acknowledged = batch_committed.iter().filter(|c| **c).count();
    if batch_acknowledged == 0 {
        assert_eq!(
            store.flushes(),
            committed.iter().filter(|c| **c).count() as u64,
            "commits are the acknowledged blockers' only"
        );
    }
    db.restart();
    let c = cert(&serial(0xee), "spiffe://td/after");
    eventually(|| {
        store
            .record_issuance(&c, b"der", &serial(0xee), None, &[])
            .is_ok()
    });
    assert_eq!(store.failure(), None);
    for (n, acknowledged) in batch_committed.iter().enumerate() {
        let recorded = store.certificate(&serial(n as u8)).unwrap().is_some();
        assert_eq!(
            recorded, *acknowledged,
            "issuer {n}: recorded iff acknowledged"
        );
    }
    for (n, committed) in committed.iter().enumerate() {
        let recorded = store
            .certificate(&serial(0xf0 + n as u8))
            .unwrap()
            .is_some();
        assert_eq!(
            recorded, *committed,
            "blocker {n}: recorded iff acknowledged"
        );
    }
    let acknowledged = (committed.iter().filter(|c| **c).count() + batch_acknowledged) as u64;
    assert_eq!(store.issued_total(), Some(1 + acknowledged));
}
