//! The tamper-evident audit log: a real CA writes it (tokens, issuance, a root change, a
//! shutdown checkpoint) into a real sled directory; copies of that directory are then
//! tampered with through sled itself, as someone holding the files would, and the offline
//! verifier must name what was done.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use common::*;
use trellis_ca::audit::offline;
use trellis_ca::store::{AuditRecord, Store};
use trellis_identity::audit_log::{Checkpoint, Head, Tamper};
use trellis_identity::profile::{self, SigningCa};
use trellis_identity::{TrustDomain, pem};
use trellis_proto::admin::v1::{
    AddRootRequest, ListAuditCheckpointsRequest, ListAuditEventsRequest,
};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A CA's data directory with an audit log of a few dozen entries and checkpoints, stopped.
async fn written_log() -> (tempfile::TempDir, PathBuf) {
    let mut ca = TestCa::start().await;
    for i in 0..20 {
        ca.token(&format!("/ns/prod/sa/web-{i}")).await;
    }
    // A root change signs a checkpoint at once.
    ca.admin()
        .await
        .add_root(AddRootRequest::default())
        .await
        .expect("root added");
    let mut admin = ca.admin().await;
    let checkpoints = admin
        .list_audit_checkpoints(ListAuditCheckpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert!(!checkpoints.is_empty(), "a root change signs a checkpoint");
    let events = admin
        .list_audit_events(ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.first().map(|e| e.sequence), Some(1));
    assert!(
        events
            .iter()
            .all(|e| e.hash.len() == 32 && !e.body.is_empty())
    );
    for i in 20..30 {
        ca.token(&format!("/ns/prod/sa/web-{i}")).await;
    }
    let running = ca.running.take().unwrap();
    running.shutdown().await.expect("clean shutdown");
    let data = ca.data_dir();
    (ca.dir, data)
}

/// A copy of `data` with its sled database edited by `tamper`, then verified offline.
async fn tampered(
    data: &Path,
    tamper: impl FnOnce(&sled::Tree, &sled::Tree),
) -> Result<offline::Outcome, String> {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("ca");
    copy_dir(data, &copy);
    {
        let db = sled::open(copy.join("db")).unwrap();
        let audit = db.open_tree("audit_chain").unwrap();
        let checkpoints = db.open_tree("audit_checkpoints").unwrap();
        tamper(&audit, &checkpoints);
        db.flush().unwrap();
    }
    verify_when_free(&copy, None).await
}

/// Verifies offline, waiting for sled to release the database a test just closed (its
/// background flusher lets go of the lock shortly after the last handle is dropped).
async fn verify_when_free(data: &Path, anchors: Option<&Path>) -> Result<offline::Outcome, String> {
    for _ in 0..100 {
        match offline::verify(data, anchors).await {
            Err(offline::OfflineError::Open { .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other.map(|(_, r)| r).map_err(|e| e.to_string()),
        }
    }
    Err("the database stayed locked".into())
}

fn key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

#[tokio::test]
async fn every_kind_of_tampering_is_found_and_named() {
    let (_keep, data) = written_log().await;
    let intact = tampered(&data, |_, _| {}).await.unwrap().expect("intact");
    assert_eq!(intact.first, 1);
    assert!(intact.entries >= 30, "{intact:?}");
    assert_eq!(
        intact.last_checkpoint.map(|c| c.0),
        Some(intact.last),
        "shutdown signs the last entries"
    );
    let last = intact.last;

    // One byte of one entry's content.
    let found = tampered(&data, |audit, _| {
        let mut value = audit.get(key(5)).unwrap().unwrap().to_vec();
        value[70] ^= 1;
        audit.insert(key(5), value).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(found, Err(Tamper::Altered { sequence: 5 }));

    // One entry deleted.
    let found = tampered(&data, |audit, _| {
        audit.remove(key(7)).unwrap();
    })
    .await
    .unwrap();
    assert!(
        matches!(found, Err(Tamper::Missing { sequence: 7, .. })),
        "{found:?}"
    );

    // Two entries swapped.
    let found = tampered(&data, |audit, _| {
        let a = audit.get(key(3)).unwrap().unwrap();
        let b = audit.get(key(9)).unwrap().unwrap();
        audit.insert(key(3), b).unwrap();
        audit.insert(key(9), a).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(found, Err(Tamper::Altered { sequence: 3 }));

    // The tail removed behind the last checkpoint.
    let found = tampered(&data, |audit, _| {
        for sequence in 11..=last {
            audit.remove(key(sequence)).unwrap();
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(found, Err(Tamper::Truncated { last: 10, .. })),
        "{found:?}"
    );

    // An entry rewritten with every later hash recomputed, and a checkpoint forged over
    // the new head with a key of another CA.
    let found = tampered(&data, |audit, checkpoints| {
        let rewritten = rewrite_from(audit, 4, b"{\"forged\":true}");
        let td = TrustDomain::new("cluster.local").unwrap();
        let now = SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let root = profile::new_root(&td, now, 10 * day).unwrap();
        let root = SigningCa::new(root.cert, root.key).unwrap();
        let inter = profile::new_intermediate(&td, &root, now, 5 * day).unwrap();
        let stranger = SigningCa::new(inter.cert, inter.key).unwrap();
        let forged = Checkpoint::sign(
            "cluster.local",
            rewritten,
            now,
            stranger.key(),
            &stranger.cert,
        )
        .unwrap();
        let (last_key, last_value) = checkpoints.last().unwrap().unwrap();
        let mut record: serde_json::Value = serde_json::from_slice(&last_value).unwrap();
        record["head"] = hex(&forged.head).into();
        record["signer"] = hex(&forged.signer).into();
        record["signature"] = hex(&forged.signature).into();
        checkpoints
            .insert(last_key, serde_json::to_vec(&record).unwrap())
            .unwrap();
    })
    .await
    .unwrap();
    assert!(
        matches!(found, Err(Tamper::BadCheckpoint { .. })),
        "{found:?}"
    );

    // The same rewrite left under the genuine checkpoints.
    let found = tampered(&data, |audit, _| {
        rewrite_from(audit, 4, b"{\"forged\":true}");
    })
    .await
    .unwrap();
    assert!(
        matches!(found, Err(Tamper::CheckpointMismatch { .. })),
        "{found:?}"
    );
}

fn hex(bytes: &[u8]) -> String {
    trellis_identity::hex::encode(bytes)
}

/// Replaces entry `from`'s body and recomputes its hash and every later one, as someone who
/// can write the store but cannot sign would; returns the new head.
fn rewrite_from(audit: &sled::Tree, from: u64, body: &[u8]) -> Head {
    let prev = audit.get(key(from - 1)).unwrap().unwrap();
    let mut head = Head {
        sequence: from - 1,
        hash: prev[32..64].try_into().unwrap(),
    };
    let later: Vec<_> = audit.range(key(from)..).map(|kv| kv.unwrap()).collect();
    for (k, v) in later {
        let sequence = u64::from_be_bytes(k.as_ref().try_into().unwrap());
        let new_body = if sequence == from {
            body.to_vec()
        } else {
            v[64..].to_vec()
        };
        let entry = head.append(new_body);
        audit.insert(k, entry.encode()).unwrap();
    }
    head
}

fn event(time: u64, n: u64) -> AuditRecord {
    AuditRecord {
        time,
        kind: "join_token_created".into(),
        spiffe_id: format!("spiffe://cluster.local/ns/prod/sa/web-{n}"),
        serial: String::new(),
        actor: "spiffe://cluster.local/trellis/admin/test".into(),
        detail: String::new(),
    }
}

/// A store with the layout of a data directory, and a CA key to sign its checkpoints.
struct SignedStore {
    _dir: tempfile::TempDir,
    data: PathBuf,
    anchors: PathBuf,
    store: std::sync::Arc<dyn Store>,
    signer: SigningCa,
}

impl SignedStore {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("ca");
        let store = trellis_ca::store::open(&data.join("db")).unwrap();
        store.set_trust_domain("cluster.local").unwrap();
        let td = TrustDomain::new("cluster.local").unwrap();
        let now = SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let root = profile::new_root(&td, now, 10 * day).unwrap();
        let root = SigningCa::new(root.cert, root.key).unwrap();
        let inter = profile::new_intermediate(&td, &root, now, 5 * day).unwrap();
        let anchors = dir.path().join("anchors.pem");
        std::fs::write(
            &anchors,
            pem::certs_to_pem(std::slice::from_ref(&root.cert)),
        )
        .unwrap();
        Self {
            data,
            anchors,
            store,
            signer: SigningCa::new(inter.cert, inter.key).unwrap(),
            _dir: dir,
        }
    }

    fn checkpoint(&self) {
        let head = self.store.audit_chain_head().unwrap();
        let checkpoint = Checkpoint::sign(
            "cluster.local",
            head,
            SystemTime::now(),
            self.signer.key(),
            &self.signer.cert,
        )
        .unwrap();
        self.store.put_audit_checkpoint(&checkpoint).unwrap();
    }

    /// Closes the store (verification opens the directory itself) and verifies.
    async fn verify(self) -> (Result<offline::Outcome, String>, Self) {
        let SignedStore {
            _dir,
            data,
            anchors,
            store,
            signer,
        } = self;
        store.flush_now().unwrap();
        drop(store);
        let result = verify_when_free(&data, Some(&anchors)).await;
        let store = loop {
            match trellis_ca::store::open(&data.join("db")) {
                Ok(store) => break store,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        (
            result,
            SignedStore {
                _dir,
                data,
                anchors,
                store,
                signer,
            },
        )
    }
}

#[tokio::test]
async fn a_log_of_100_000_entries_verifies() {
    let log = SignedStore::new();
    for n in 0..100_000 {
        log.store.append_audit(&event(1_000 + n, n)).unwrap();
        if n % 10_000 == 9_999 {
            log.checkpoint();
        }
    }
    let (result, _) = log.verify().await;
    let verified = result.unwrap().expect("intact");
    assert_eq!((verified.first, verified.last), (1, 100_000));
    assert_eq!(verified.checkpoints, 10);
    assert_eq!(verified.unsigned_tail, 0);
}

#[tokio::test]
async fn retention_cuts_at_a_checkpoint_and_what_remains_verifies() {
    let log = SignedStore::new();
    // Entries 1..=100 at times 1000..1099, checkpoints after 40, 80 and 100.
    for n in 0..100 {
        log.store.append_audit(&event(1_000 + n, n)).unwrap();
        if [39, 79, 99].contains(&n) {
            log.checkpoint();
        }
    }
    // Entries before time 1090 may go: the newest checkpoint among them is at 80.
    let removed = log.store.prune_audit(1_090, 10).unwrap();
    assert_eq!(removed, 80);
    let (result, log) = log.verify().await;
    let verified = result.unwrap().expect("what remains verifies from the cut");
    assert_eq!((verified.first, verified.last), (81, 100));
    // Nothing older than the cutoff beyond the last checkpoint below the newest entry.
    assert_eq!(log.store.prune_audit(u64::MAX, 10).unwrap(), 0);
    log.store.append_audit(&event(2_000, 101)).unwrap();
    assert_eq!(log.store.prune_audit(u64::MAX, 10).unwrap(), 20);
    let (result, _) = log.verify().await;
    let verified = result.unwrap().expect("intact after a second cut");
    assert_eq!((verified.first, verified.last), (101, 101));
}

#[tokio::test]
async fn a_log_written_before_the_chain_is_chained_in_order_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    {
        // The old layout: plain JSON under sled-generated, gappy ids.
        let db = sled::open(&db_dir).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("trust_domain", "cluster.local")
            .unwrap();
        let old = db.open_tree("audit").unwrap();
        for (id, n) in [(1u64, 0u64), (5, 1), (1_000_003, 2)] {
            old.insert(
                id.to_be_bytes(),
                serde_json::to_vec(&event(10 + n, n)).unwrap(),
            )
            .unwrap();
        }
        db.flush().unwrap();
    }
    let store = trellis_ca::store::open(&db_dir).unwrap();
    let entries = store.audit_after(0, 100).unwrap();
    let numbered: Vec<_> = entries.iter().map(|(seq, e)| (*seq, e.time)).collect();
    assert_eq!(numbered, vec![(1, 10), (2, 11), (3, 12)]);
    store.append_audit(&event(13, 3)).unwrap();
    assert_eq!(store.audit_chain_head().unwrap().sequence, 4);
}
