//! The store's rules that no API test reaches: a serial collision, a leftover snapshot.

use std::sync::Arc;

use super::*;

fn record(serial: &[u8], spiffe_id: &str) -> CertRecord {
    CertRecord {
        serial: trellis_identity::hex::encode(serial),
        spiffe_id: spiffe_id.into(),
        dns_names: Vec::new(),
        not_before: 1,
        not_after: 2,
        issued_at: 1,
        issued_at_ns: 1,
        root_id: "root".into(),
        intermediate_id: "inter".into(),
        issued_via: "renewal".into(),
    }
}

#[tokio::test]
async fn a_taken_serial_is_refused_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let serial = [0x42u8; 9];
    let first = record(&serial, "spiffe://td/a");
    store
        .record_issuance(&first, b"first", &serial, None, &[])
        .unwrap();

    let second = record(&serial, "spiffe://td/b");
    let refused = store.record_issuance(&second, b"second", &serial, None, &[]);
    assert!(
        matches!(refused, Err(RecordError::SerialTaken)),
        "{refused:?}"
    );
    assert!(store.certificates_of("spiffe://td/b").unwrap().is_empty());
    let (kept, der) = store.certificate(&serial).unwrap().unwrap();
    assert_eq!(
        (kept.spiffe_id.as_str(), der.as_slice()),
        ("spiffe://td/a", &b"first"[..])
    );

    // With a join token, the collision costs the client nothing: the token stays unused.
    let hash = [7u8; 32];
    let token = TokenRecord {
        spiffe_id: "spiffe://td/b".into(),
        created_at: 0,
        expires_at: 100,
        created_by: "test".into(),
        used_at: None,
        used_for_serial: None,
    };
    let created = AuditRecord {
        time: 0,
        kind: "join_token_created".into(),
        spiffe_id: "spiffe://td/b".into(),
        serial: String::new(),
        actor: "test".into(),
        detail: String::new(),
    };
    store.create_token(&hash, &token, &created).unwrap();
    let refused = store.record_issuance(
        &second,
        b"second",
        &serial,
        Some(TokenUse { hash, now: 10 }),
        &[],
    );
    assert!(
        matches!(refused, Err(RecordError::SerialTaken)),
        "{refused:?}"
    );
    assert!(
        store.check_token(&hash, 10).is_ok(),
        "the token is still redeemable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_returns_after_a_flush_that_concurrent_writers_share() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    assert_eq!(store.flushes(), 0);
    let mark = store.mark();
    store
        .record_issuance(&record(&[1; 9], "spiffe://td/a"), b"a", &[1; 9], None, &[])
        .unwrap();
    store.durable(mark).await.unwrap();
    assert_eq!(store.flushes(), 1, "one writer, one flush");

    let writers: Vec<_> = (2..34u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mark = store.mark();
                store
                    .record_issuance(&record(&[i; 9], "spiffe://td/b"), b"b", &[i; 9], None, &[])
                    .unwrap();
                store.durable(mark).await.unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let flushes = store.flushes() - 1;
    assert!(
        (1..32).contains(&flushes),
        "32 concurrent writers took {flushes} flushes; they should share"
    );
}

/// What a start that ran out of space leaves (an empty `snap.<lsn>.generating`, whose name
/// sorts after every finished snapshot) does not stop the next opening, and the records
/// are all there. The e2e test `disk_full.rs` stages the real thing on a full tmpfs.
#[tokio::test]
async fn an_unfinished_snapshot_left_by_an_interrupted_start_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let serial = [0x17u8; 9];
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .record_issuance(
                &record(&serial, "spiffe://td/a"),
                b"der",
                &serial,
                None,
                &[],
            )
            .unwrap();
        store.flush_now().unwrap();
    }
    let leftover = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&leftover, b"").unwrap();
    // What sled 0.34 does with it when nobody removes it first.
    let bare = sled::Config::new().path(dir.path()).open();
    assert!(
        matches!(bare, Err(sled::Error::Corruption { .. })),
        "sled no longer trips over an unfinished snapshot: {:?}",
        bare.map(|_| ())
    );

    let store = SledStore::open(dir.path()).expect("opens despite the unfinished snapshot");
    assert!(!leftover.exists());
    let (kept, der) = store.certificate(&serial).unwrap().expect("still recorded");
    assert_eq!(kept.spiffe_id, "spiffe://td/a");
    assert_eq!(der, b"der");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opening_waits_for_the_one_before_it_to_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let first = SledStore::open(dir.path()).unwrap();
    first.set_trust_domain("td").unwrap();
    first.flush_now().unwrap();
    // The first opening goes away a little later, as a restarting CA's predecessor does.
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let second = SledStore::open(dir.path()).expect("opens once the first lets go");
    assert_eq!(second.trust_domain().unwrap().as_deref(), Some("td"));
    release.join().unwrap();
}

#[test]
fn an_io_error_keeps_its_kind_when_sled_clones_it() {
    let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
    let cloned = sled::Error::Io(full).clone();
    assert_eq!(live::cause_of(&cloned), Some(crate::store::Cause::DiskFull));
    assert_eq!(live::cause_of(&sled::Error::Unsupported("x".into())), None);
}

/// The store contract (`crate::store::conformance`) on sled, each check in a temp dir.
mod conformance {
    use std::sync::Arc;

    use crate::store::conformance::{Harness, conformance_tests};
    use crate::store::{Store, sled::SledStore};

    #[derive(Default)]
    struct Sled {
        dir: Option<tempfile::TempDir>,
    }

    impl Harness for Sled {
        fn create(&mut self) -> Arc<dyn Store> {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = SledStore::open(dir.path()).expect("open a new store");
            self.dir = Some(dir);
            Arc::new(store)
        }

        fn reopen(&mut self) -> Arc<dyn Store> {
            let dir = self.dir.as_ref().expect("create comes first");
            Arc::new(SledStore::open(dir.path()).expect("reopen the store"))
        }
    }

    conformance_tests!(Sled::default());
}

/// Checkpoints (closing and reopening the database so that sled writes a snapshot) while
/// 8 writers record 800 certificates on a two-worker runtime, as the CA does: every write is
/// acknowledged, none is refused, and all are there after the store is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_under_concurrent_writes_refuse_and_lose_nothing() {
    checkpoints_under_concurrent_writes(super::compact::CompactWhen::DEFAULT).await;
}

/// The same, with every checkpoint also copying the database into a fresh folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compactions_under_concurrent_writes_refuse_and_lose_nothing() {
    let dir = checkpoints_under_concurrent_writes(super::compact::CompactWhen {
        floor: 0,
        growth: 1,
    })
    .await;
    let current = std::fs::read_to_string(dir.path().join(super::compact::CURRENT)).unwrap();
    let copies: u64 = current
        .trim_start_matches("sled-")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(copies >= 5, "compacted {copies} times");
}

async fn checkpoints_under_concurrent_writes(
    compact_when: super::compact::CompactWhen,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open_checkpointing(dir.path(), 50, compact_when).unwrap());
    let writers: Vec<_> = (0..8u8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..100u8 {
                    let serial = [w, i, 1, 2, 3, 4, 5, 6, 7];
                    let mark = store.mark();
                    store
                        .record_issuance(
                            &record(&serial, "spiffe://td/c"),
                            b"c",
                            &serial,
                            None,
                            &[],
                        )
                        .expect("recorded");
                    store.durable(mark).await.expect("acknowledged");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let generation = store.trees().unwrap().generation;
    assert!(
        generation >= 5,
        "800 certificates at one checkpoint per 50 reopened the database {} times",
        generation - 1
    );
    drop(store);
    let reopened = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        reopened.certificates_of("spiffe://td/c").unwrap().len(),
        800
    );
    dir
}
