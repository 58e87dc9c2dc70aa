//! The contract of [`Store`] as tests that any implementation must pass.
//!
//! An implementation provides a [`Harness`] (how to make an empty store, and how to open
//! the same one again) and runs every check with [`conformance_tests!`], which makes one
//! `#[tokio::test]` per check, named after it. The checks use only the trait.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use trellis_identity::audit_log::Checkpoint;

use super::{
    AuditRecord, CertRecord, Change, ErrorKind, FederationRecord, IntermediateRecord, JwtKeyRecord,
    Listing, PageToken, RecordError, RevocationRecord, RootRecord, RootState, Store, TokenRecord,
    TokenRefusal, TokenUse,
};

/// Makes stores for the checks.
pub(crate) trait Harness: Send {
    /// A new, empty store.
    fn create(&mut self) -> Arc<dyn Store>;
    /// Opens again the store [`Harness::create`] made last, once every handle to it is gone.
    fn reopen(&mut self) -> Arc<dyn Store>;
}

/// One `#[tokio::test]` per check, each with a harness made by `$harness`.
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::store::conformance::conformance_tests!(
            $harness;
            metadata_is_kept_and_read_back,
            roots_and_the_signing_intermediate_are_kept,
            a_rotation_step_is_applied_whole,
            a_token_is_checked_without_being_consumed,
            a_token_is_consumed_exactly_once_under_concurrent_callers,
            a_serial_is_recorded_once_and_a_refusal_writes_nothing,
            an_issuance_is_found_by_serial_identity_and_expiry_with_its_audit,
            counters_follow_issuance_and_expiry_and_survive_reopening,
            acknowledgements_are_replaced_and_survive_reopening,
            identity_paging_continues_past_records_inserted_between_pages,
            expiry_paging_is_in_expiry_order_and_restarts_when_time_overtakes_it,
            a_page_bounds_its_scan_and_refuses_foreign_page_tokens,
            pruning_removes_expired_records_in_batches_and_keeps_the_rest,
            a_revocation_is_recorded_once,
            a_renewal_of_a_revoked_certificate_is_refused_and_writes_nothing,
            the_audit_chain_links_entries_and_survives_reopening,
            audit_pruning_stops_at_a_checkpoint_that_stays,
            archived_audit_entries_read_and_prune_as_before,
            jwt_keys_come_back_in_the_order_they_were_added,
            federations_are_kept_replaced_and_removed,
        );
    };
    ($harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let mut harness = $harness;
                $crate::store::conformance::$check(&mut harness).await;
            }
        )*
    };
}
pub(crate) use conformance_tests;

const NOW: u64 = 1_000_000;

fn cert(serial: &[u8], spiffe_id: &str, root: &str, not_after: u64) -> CertRecord {
    CertRecord {
        serial: trellis_identity::hex::encode(serial),
        spiffe_id: spiffe_id.into(),
        dns_names: vec!["a.example".into()],
        not_before: not_after.saturating_sub(3600),
        not_after,
        issued_at: not_after.saturating_sub(3600),
        issued_at_ns: u128::from(not_after) * 1_000_000_000,
        root_id: root.into(),
        intermediate_id: format!("inter-{root}"),
        issued_via: "renewal".into(),
    }
}

/// A 16-byte serial whose first byte is `n` (so serial order is `n` order).
fn serial(n: u8) -> Vec<u8> {
    let mut s = vec![0x55; 16];
    s[0] = n;
    s
}

fn audit(time: u64, kind: &str, serial: &str) -> AuditRecord {
    AuditRecord {
        time,
        kind: kind.into(),
        spiffe_id: "spiffe://td/w".into(),
        serial: serial.into(),
        actor: "test".into(),
        detail: String::new(),
    }
}

/// A new store whose audit log holds 30 entries, entry n recorded at time n.
fn with_thirty_audit_entries(h: &mut dyn Harness) -> Arc<dyn Store> {
    let store = h.create();
    store.set_trust_domain("td").unwrap();
    for n in 1..=30 {
        store
            .append_audit(&audit(n, "certificate_issued", ""))
            .unwrap();
    }
    store
}

/// A checkpoint at entry `sequence`, signed (as far as the store can tell) at `sequence`.
fn checkpoint(sequence: u64) -> Checkpoint {
    Checkpoint {
        trust_domain: "td".into(),
        sequence,
        head: [sequence as u8; 32],
        time: sequence,
        signer: vec![1, 2],
        signature: vec![3, 4],
    }
}

fn created() -> AuditRecord {
    audit(NOW - 10, "join_token_created", "")
}

fn revoked(c: &CertRecord) -> AuditRecord {
    audit(NOW - 200, "certificate_revoked", &c.serial)
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

/// Records `c` durably (mark, write, wait), as the CA does.
async fn issue(store: &dyn Store, c: &CertRecord) {
    let mark = store.mark();
    let serial = trellis_identity::hex::decode(&c.serial).expect("hex serial");
    store
        .record_issuance(c, &der_of(c), &serial, None, &[])
        .expect("record");
    store.durable(mark).await.expect("durable");
}

fn der_of(c: &CertRecord) -> Vec<u8> {
    format!("DER of {}", c.serial).into_bytes()
}

fn serials(records: impl IntoIterator<Item = CertRecord>) -> Vec<String> {
    records.into_iter().map(|r| r.serial).collect()
}

pub(crate) async fn metadata_is_kept_and_read_back(h: &mut dyn Harness) {
    let store = h.create();
    assert_eq!(store.trust_domain().unwrap(), None);
    assert_eq!(store.bundle_version().unwrap(), 0);
    assert_eq!(store.crl_number("i1").unwrap(), 0);
    let mark = store.mark();
    store.set_trust_domain("example.org").unwrap();
    store
        .apply(&Change {
            bundle_version: Some(7),
            ..Change::default()
        })
        .unwrap();
    store.set_crl_number("i1", 1_700_000_000).unwrap();
    store.durable(mark).await.unwrap();
    drop(store);
    let store = h.reopen();
    assert_eq!(
        store.trust_domain().unwrap().as_deref(),
        Some("example.org")
    );
    assert_eq!(store.bundle_version().unwrap(), 7);
    assert_eq!(store.crl_number("i1").unwrap(), 1_700_000_000);
    assert_eq!(
        store.crl_number("i2").unwrap(),
        0,
        "numbers are per intermediate"
    );
    // Taking a number: the one asked for, or one more than the last if that is not above it.
    let mark = store.mark();
    assert_eq!(store.next_crl_number("i1", 5).unwrap(), 1_700_000_001);
    assert_eq!(
        store.next_crl_number("i1", 1_800_000_000).unwrap(),
        1_800_000_000
    );
    assert_eq!(store.next_crl_number("i2", 9).unwrap(), 9);
    store.durable(mark).await.unwrap();
    drop(store);
    let store = h.reopen();
    assert_eq!(store.crl_number("i1").unwrap(), 1_800_000_000);
}

pub(crate) async fn roots_and_the_signing_intermediate_are_kept(h: &mut dyn Harness) {
    let store = h.create();
    assert!(store.roots().unwrap().is_empty());
    assert_eq!(store.active_intermediate().unwrap(), None);
    let root = |id: &str, state| RootRecord {
        id: id.into(),
        cert_der: id.as_bytes().to_vec(),
        state,
        added_at: NOW,
        key_file: Some(format!("root-{id}.key.pem")),
        added_in_bundle_version: 1,
    };
    let put_root = |r: RootRecord| {
        let change = Change {
            roots: vec![r],
            ..Change::default()
        };
        store.apply(&change).unwrap();
    };
    put_root(root("r2", RootState::Pending));
    put_root(root("r1", RootState::Active));
    put_root(root("r2", RootState::Retiring));
    assert_eq!(
        store.roots().unwrap(),
        vec![
            root("r1", RootState::Active),
            root("r2", RootState::Retiring)
        ],
        "in id order, a put replaces"
    );
    let inter = |id: &str, root: &str| IntermediateRecord {
        id: id.into(),
        root_id: root.into(),
        cert_der: id.as_bytes().to_vec(),
        key_file: format!("intermediate-{id}.key.pem"),
    };
    for (id, root) in [("i2", "r1"), ("i1", "r2")] {
        let change = Change {
            intermediate: Some(inter(id, root)),
            ..Change::default()
        };
        store.apply(&change).unwrap();
    }
    assert_eq!(
        store.active_intermediate().unwrap(),
        Some(inter("i1", "r2"))
    );
    assert_eq!(
        store.intermediates().unwrap(),
        vec![inter("i1", "r2"), inter("i2", "r1")]
    );
}

pub(crate) async fn a_rotation_step_is_applied_whole(h: &mut dyn Harness) {
    let store = h.create();
    let root = |id: &str, state| RootRecord {
        id: id.into(),
        cert_der: id.as_bytes().to_vec(),
        state,
        added_at: NOW,
        key_file: None,
        added_in_bundle_version: 2,
    };
    let key = |kid: &str, state| JwtKeyRecord {
        kid: kid.into(),
        state,
        created_at: NOW,
        public_key: vec![4; 65],
        key_file: format!("jwt-{kid}.key.pem"),
        added_in_bundle_version: 2,
        deactivated_at: None,
    };
    let intermediate = IntermediateRecord {
        id: "i2".into(),
        root_id: "r2".into(),
        cert_der: vec![2],
        key_file: "intermediate-i2.key.pem".into(),
    };
    let first = Change {
        roots: vec![root("r1", RootState::Active)],
        bundle_version: Some(2),
        ..Change::default()
    };
    store.apply(&first).unwrap();
    let change = Change {
        roots: vec![
            root("r1", RootState::Retiring),
            root("r2", RootState::Active),
        ],
        jwt_keys: vec![key("k1", RootState::Pending)],
        intermediate: Some(intermediate.clone()),
        bundle_version: Some(3),
        audit: vec![
            audit(NOW, "root_activated", "r2"),
            audit(NOW, "bundle_changed", "r2"),
        ],
        ..Change::default()
    };
    let mark = store.mark();
    store.apply(&change).unwrap();
    store.durable(mark).await.unwrap();
    drop(store);
    let store = h.reopen();
    assert_eq!(store.roots().unwrap(), change.roots);
    assert_eq!(store.jwt_keys().unwrap(), change.jwt_keys);
    assert_eq!(store.active_intermediate().unwrap(), Some(intermediate));
    assert_eq!(store.bundle_version().unwrap(), 3);
    let entries: Vec<_> = store
        .audit_after(0, 10)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(entries, change.audit, "in order");
    // An empty change writes nothing.
    store.apply(&Change::default()).unwrap();
    assert_eq!(store.bundle_version().unwrap(), 3);
    assert_eq!(store.audit_chain_head().unwrap().sequence, 2);
}

pub(crate) async fn a_token_is_checked_without_being_consumed(h: &mut dyn Harness) {
    let store = h.create();
    let unknown = store.check_token(&[1; 32], NOW).unwrap_err();
    assert!(
        matches!(unknown, RecordError::Token(TokenRefusal::Unknown)),
        "{unknown:?}"
    );
    assert_eq!(unknown.kind(), ErrorKind::NotFound);
    store
        .create_token(&[2; 32], &token(NOW + 600), &created())
        .unwrap();
    for _ in 0..2 {
        assert_eq!(store.check_token(&[2; 32], NOW).unwrap(), token(NOW + 600));
    }
    let expired = store.check_token(&[2; 32], NOW + 600).unwrap_err();
    assert!(
        matches!(expired, RecordError::Token(TokenRefusal::Expired { at }) if at == NOW + 600),
        "{expired:?}"
    );
    assert_eq!(expired.kind(), ErrorKind::Conflict);
    // An expired token is refused by an issuance too, and nothing is recorded.
    let c = cert(&serial(1), "spiffe://td/joiner", "r1", NOW + 3600);
    let refused = store
        .record_issuance(
            &c,
            b"der",
            &serial(1),
            Some(TokenUse {
                hash: [2; 32],
                now: NOW + 601,
            }),
            &[],
        )
        .unwrap_err();
    assert!(matches!(
        refused,
        RecordError::Token(TokenRefusal::Expired { .. })
    ));
    assert_eq!(store.certificate(&serial(1)).unwrap(), None);
}

pub(crate) async fn a_token_is_consumed_exactly_once_under_concurrent_callers(h: &mut dyn Harness) {
    const CALLERS: u8 = 16;
    let store = h.create();
    let hash = [9u8; 32];
    store
        .create_token(&hash, &token(NOW + 600), &created())
        .unwrap();
    let start = Arc::new(Barrier::new(usize::from(CALLERS)));
    let callers: Vec<_> = (0..CALLERS)
        .map(|n| {
            let (store, start) = (store.clone(), start.clone());
            std::thread::spawn(move || {
                let c = cert(&serial(n), "spiffe://td/joiner", "r1", NOW + 3600);
                start.wait();
                store
                    .record_issuance(
                        &c,
                        b"der",
                        &serial(n),
                        Some(TokenUse { hash, now: NOW }),
                        &[audit(NOW, "certificate_issued", &c.serial)],
                    )
                    .map(|()| c.serial)
            })
        })
        .collect();
    let mut won = Vec::new();
    for caller in callers {
        match caller.join().expect("caller thread") {
            Ok(serial) => won.push(serial),
            Err(RecordError::Token(TokenRefusal::Used { at })) => assert_eq!(at, NOW),
            Err(other) => panic!("a losing caller must see the token used, not {other:?}"),
        }
    }
    assert_eq!(
        won.len(),
        1,
        "exactly one caller redeems the token: {won:?}"
    );
    let used = store.check_token(&hash, NOW).unwrap_err();
    assert!(matches!(
        used,
        RecordError::Token(TokenRefusal::Used { at: NOW })
    ));
    assert_eq!(used.kind(), ErrorKind::Conflict);
    assert_eq!(
        serials(store.certificates_of("spiffe://td/joiner").unwrap()),
        won,
        "only the winner's certificate is recorded"
    );
    assert_eq!(store.issued_total(), Some(1));
    let kinds: Vec<_> = store
        .audit_after(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, e)| (e.kind, e.serial))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("join_token_created".to_owned(), String::new()),
            ("certificate_issued".to_owned(), won[0].clone()),
        ]
    );
}

pub(crate) async fn a_serial_is_recorded_once_and_a_refusal_writes_nothing(h: &mut dyn Harness) {
    let store = h.create();
    let first = cert(&serial(4), "spiffe://td/a", "r1", NOW + 3600);
    issue(&*store, &first).await;
    let hash = [3u8; 32];
    store
        .create_token(&hash, &token(NOW + 600), &created())
        .unwrap();
    let second = cert(&serial(4), "spiffe://td/b", "r1", NOW + 7200);
    let refused = store
        .record_issuance(
            &second,
            b"second",
            &serial(4),
            Some(TokenUse { hash, now: NOW }),
            &[audit(NOW, "certificate_issued", &second.serial)],
        )
        .unwrap_err();
    assert!(matches!(refused, RecordError::SerialTaken), "{refused:?}");
    assert_eq!(refused.kind(), ErrorKind::Conflict);
    assert_eq!(
        store.certificate(&serial(4)).unwrap(),
        Some((first.clone(), der_of(&first)))
    );
    assert!(store.certificates_of("spiffe://td/b").unwrap().is_empty());
    assert!(
        store.check_token(&hash, NOW).is_ok(),
        "the token stays unused"
    );
    assert_eq!(store.issued_total(), Some(1));
    assert_eq!(
        store.audit_after(0, 10).unwrap(),
        vec![(1, created())],
        "only the token's creation is in the audit log"
    );
    let mut live = Vec::new();
    store.for_each_live(NOW, &mut |r| live.push(r)).unwrap();
    assert_eq!(live, vec![first]);
}

pub(crate) async fn an_issuance_is_found_by_serial_identity_and_expiry_with_its_audit(
    h: &mut dyn Harness,
) {
    let store = h.create();
    let a1 = cert(&serial(2), "spiffe://td/a", "r1", NOW + 300);
    let a2 = cert(&serial(1), "spiffe://td/a", "r1", NOW - 10);
    let b = cert(&serial(3), "spiffe://td/b", "r2", NOW + 100);
    let mark = store.mark();
    for c in [&a1, &a2, &b] {
        let entries = [
            audit(NOW, "certificate_issued", &c.serial),
            audit(NOW, "join_token_used", &c.serial),
        ];
        let s = trellis_identity::hex::decode(&c.serial).unwrap();
        store
            .record_issuance(c, &der_of(c), &s, None, &entries)
            .unwrap();
    }
    store.durable(mark).await.unwrap();
    assert_eq!(
        store.certificate(&serial(3)).unwrap(),
        Some((b.clone(), der_of(&b)))
    );
    assert_eq!(store.certificate(&serial(9)).unwrap(), None);
    assert_eq!(
        store.certificates_of("spiffe://td/a").unwrap(),
        vec![a2.clone(), a1.clone()],
        "expired ones included, in serial order"
    );
    assert!(
        store.certificates_of("spiffe://td/").unwrap().is_empty(),
        "no prefix match"
    );
    let mut live = Vec::new();
    store.for_each_live(NOW, &mut |r| live.push(r)).unwrap();
    assert_eq!(
        live,
        vec![b.clone(), a1.clone()],
        "unexpired, in expiry order"
    );
    let mut all = BTreeSet::new();
    store
        .for_each_certificate(&mut |r| {
            all.insert(r.serial);
            true
        })
        .unwrap();
    assert_eq!(all.len(), 3);
    let kinds: Vec<_> = store
        .audit_after(0, 100)
        .unwrap()
        .into_iter()
        .map(|(seq, e)| (seq, e.kind, e.serial))
        .collect();
    assert_eq!(kinds.len(), 6);
    assert_eq!(
        kinds[0],
        (1, "certificate_issued".into(), a1.serial.clone())
    );
    assert_eq!(kinds[5], (6, "join_token_used".into(), b.serial.clone()));
}

pub(crate) async fn counters_follow_issuance_and_expiry_and_survive_reopening(h: &mut dyn Harness) {
    let store = h.create();
    assert_eq!(store.issued_total(), Some(0));
    assert_eq!(store.live_by_root(NOW), None, "unknown before counting");
    store.start_counting(NOW).unwrap();
    assert_eq!(store.live_by_root(NOW), Some(Default::default()));
    issue(&*store, &cert(&serial(1), "spiffe://td/a", "r1", NOW + 100)).await;
    issue(&*store, &cert(&serial(2), "spiffe://td/b", "r1", NOW + 200)).await;
    issue(&*store, &cert(&serial(3), "spiffe://td/c", "r2", NOW + 300)).await;
    issue(&*store, &cert(&serial(4), "spiffe://td/d", "r2", NOW - 1)).await;
    let counts =
        |pairs: &[(&str, u64)]| Some(pairs.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect());
    assert_eq!(store.issued_total(), Some(4));
    assert_eq!(store.live_by_root(NOW), counts(&[("r1", 2), ("r2", 1)]));
    assert_eq!(
        store.live_by_root(NOW + 100),
        counts(&[("r1", 1), ("r2", 1)])
    );
    assert_eq!(store.live_by_root(NOW + 250), counts(&[("r2", 1)]));
    drop(store);

    let store = h.reopen();
    assert_eq!(store.issued_total(), Some(4), "the total is durable");
    assert_eq!(store.live_by_root(NOW), None);
    store.start_counting(NOW + 150).unwrap();
    assert_eq!(
        store.live_by_root(NOW + 150),
        counts(&[("r1", 1), ("r2", 1)])
    );
    issue(&*store, &cert(&serial(5), "spiffe://td/e", "r3", NOW + 900)).await;
    assert_eq!(store.issued_total(), Some(5));
    assert_eq!(
        store.live_by_root(NOW + 150),
        counts(&[("r1", 1), ("r2", 1), ("r3", 1)])
    );
}

pub(crate) async fn acknowledgements_are_replaced_and_survive_reopening(h: &mut dyn Harness) {
    let store = h.create();
    assert!(store.acks().unwrap().is_empty());
    let mark = store.mark();
    store.put_ack("spiffe://td/b", 3, NOW).unwrap();
    store.put_ack("spiffe://td/a", 2, NOW + 1).unwrap();
    store.put_ack("spiffe://td/b", 4, NOW + 2).unwrap();
    store.durable(mark).await.unwrap();
    let expected = vec![
        ("spiffe://td/a".to_owned(), 2, NOW + 1),
        ("spiffe://td/b".to_owned(), 4, NOW + 2),
    ];
    assert_eq!(store.acks().unwrap(), expected);
    drop(store);
    let store = h.reopen();
    assert_eq!(
        store.acks().unwrap(),
        expected,
        "durable once `durable` returned"
    );
}

/// Every page of `listing`, with `between` called after each page but the last.
fn page_through(
    store: &dyn Store,
    listing: Listing<'_>,
    max: usize,
    mut between: impl FnMut(usize),
) -> Vec<String> {
    let mut listed = Vec::new();
    let mut after: Option<PageToken> = None;
    for page_number in 0.. {
        let page = store
            .certificates_page(listing, after.as_ref(), max, 1000, &|_| true)
            .unwrap();
        assert!(page.certificates.len() <= max);
        for (record, der) in page.certificates {
            assert_eq!(der, der_of(&record));
            listed.push(record.serial);
        }
        match page.next {
            Some(next) => {
                between(page_number);
                after = Some(next);
            }
            None => break,
        }
    }
    listed
}

pub(crate) async fn identity_paging_continues_past_records_inserted_between_pages(
    h: &mut dyn Harness,
) {
    let store = h.create();
    for n in [10, 20, 30, 40, 50] {
        issue(&*store, &cert(&serial(n), "spiffe://td/m", "r1", NOW - 5)).await;
    }
    issue(&*store, &cert(&serial(1), "spiffe://td/n", "r1", NOW + 5)).await;
    let inserted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listed = {
        let store2 = store.clone();
        let inserted = inserted.clone();
        page_through(
            &*store,
            Listing::ByIdentity {
                spiffe_id: Some("spiffe://td/m"),
                expired: true,
                now: NOW,
            },
            2,
            move |page| {
                if page == 0 {
                    // One before the cursor (never listed), one after it (listed once).
                    // Expired like the rest, so that a store listing the expired ones in
                    // expiry order sorts them by serial too.
                    for n in [15, 45] {
                        let c = cert(&serial(n), "spiffe://td/m", "r1", NOW - 5);
                        let s = serial(n);
                        store2
                            .record_issuance(&c, &der_of(&c), &s, None, &[])
                            .unwrap();
                        inserted.lock().unwrap().push(c.serial);
                    }
                }
            },
        )
    };
    let hex = |n| trellis_identity::hex::encode(&serial(n));
    assert_eq!(
        listed,
        vec![hex(10), hex(20), hex(30), hex(40), hex(45), hex(50)],
        "expired included, in serial order, an insertion after the cursor once"
    );
    assert_eq!(inserted.lock().unwrap().len(), 2);
    let everyone = page_through(
        &*store,
        Listing::ByIdentity {
            spiffe_id: None,
            expired: true,
            now: NOW,
        },
        3,
        |_| {},
    );
    // (Unexpired ones first or not is the store's choice: one with an archive lists those
    // expired by the listing's start last, in expiry order.)
    let unique: std::collections::BTreeSet<_> = everyone.iter().collect();
    assert_eq!(unique.len(), 8, "all identities, each once: {everyone:?}");
    assert!(unique.contains(&hex(1)));
}

pub(crate) async fn expiry_paging_is_in_expiry_order_and_restarts_when_time_overtakes_it(
    h: &mut dyn Harness,
) {
    let store = h.create();
    // Serial order is the reverse of expiry order, so the order checked is expiry's.
    for (n, expires) in [(9, 10), (8, 20), (7, 30), (6, 40), (5, 50), (1, 0)] {
        issue(
            &*store,
            &cert(&serial(n), "spiffe://td/x", "r1", NOW + expires),
        )
        .await;
    }
    let hex = |n| trellis_identity::hex::encode(&serial(n));
    let store2 = store.clone();
    let listed = page_through(
        &*store,
        Listing::Expiring {
            now: NOW,
            until: Some(NOW + 40),
        },
        2,
        move |page| {
            if page == 0 {
                for (n, expires) in [(20, 15), (21, 35), (22, 45)] {
                    let c = cert(&serial(n), "spiffe://td/y", "r1", NOW + expires);
                    store2
                        .record_issuance(&c, &der_of(&c), &serial(n), None, &[])
                        .unwrap();
                }
            }
        },
    );
    assert_eq!(
        listed,
        vec![hex(9), hex(8), hex(7), hex(21), hex(6)],
        "unexpired only, up to `until` inclusive, in expiry order; inserted before the \
         cursor not listed, after it once, past `until` not at all"
    );
    // A cursor that time has overtaken starts again from now.
    let first = store
        .certificates_page(
            Listing::Expiring {
                now: NOW,
                until: None,
            },
            None,
            1,
            100,
            &|_| true,
        )
        .unwrap();
    assert_eq!(
        serials(first.certificates.into_iter().map(|(r, _)| r)),
        vec![hex(9)]
    );
    let later = store
        .certificates_page(
            Listing::Expiring {
                now: NOW + 35,
                until: None,
            },
            first.next.as_ref(),
            10,
            100,
            &|_| true,
        )
        .unwrap();
    assert_eq!(
        serials(later.certificates.into_iter().map(|(r, _)| r)),
        vec![hex(6), hex(22), hex(5)]
    );
    assert_eq!(later.next, None);
}

pub(crate) async fn a_page_bounds_its_scan_and_refuses_foreign_page_tokens(h: &mut dyn Harness) {
    let store = h.create();
    for n in 1..=6 {
        issue(
            &*store,
            &cert(&serial(n), "spiffe://td/s", "r1", NOW + u64::from(n)),
        )
        .await;
    }
    // A filter that rejects everything still costs one page's scan, and says where to go on.
    let by_id = Listing::ByIdentity {
        spiffe_id: Some("spiffe://td/s"),
        expired: true,
        now: NOW,
    };
    let page = store
        .certificates_page(by_id, None, 10, 4, &|_| false)
        .unwrap();
    assert!(page.certificates.is_empty());
    let next = page.next.expect("a scan that stopped early goes on");
    let rest = store
        .certificates_page(by_id, Some(&next), 10, 4, &|r| r.not_after > NOW + 4)
        .unwrap();
    assert_eq!(rest.certificates.len(), 2);
    assert_eq!(rest.next, None);

    let expiring = Listing::Expiring {
        now: NOW,
        until: None,
    };
    let expiry_token = store
        .certificates_page(expiring, None, 1, 10, &|_| true)
        .unwrap()
        .next
        .expect("more than one page");
    let identity_token = store
        .certificates_page(by_id, None, 1, 10, &|_| true)
        .unwrap()
        .next
        .expect("more than one page");
    for (listing, token) in [
        (by_id, &expiry_token),
        (expiring, &identity_token),
        (
            Listing::ByIdentity {
                spiffe_id: Some("spiffe://td/other"),
                expired: true,
                now: NOW,
            },
            &identity_token,
        ),
        (by_id, &PageToken("not a token".into())),
        (expiring, &PageToken("x".into())),
    ] {
        match store.certificates_page(listing, Some(token), 10, 10, &|_| true) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Invalid, "{listing:?} {token:?}: {e}"),
            Ok(page) => panic!("{listing:?} accepted {token:?}: {page:?}"),
        }
    }
}

pub(crate) async fn pruning_removes_expired_records_in_batches_and_keeps_the_rest(
    h: &mut dyn Harness,
) {
    let store = h.create();
    let mut expired = Vec::new();
    for n in 0..25u8 {
        let c = cert(
            &serial(n),
            &format!("spiffe://td/p{}", n % 3),
            "r1",
            NOW - 100 + u64::from(n),
        );
        issue(&*store, &c).await;
        expired.push(c);
    }
    let live = cert(&serial(200), "spiffe://td/p0", "r1", NOW + 100);
    issue(&*store, &live).await;
    let revocation = |c: &CertRecord| RevocationRecord {
        serial: c.serial.clone(),
        spiffe_id: c.spiffe_id.clone(),
        revoked_at: NOW - 200,
        reason: "test".into(),
        not_after: c.not_after,
        intermediate_id: c.intermediate_id.clone(),
        reason_code: None,
    };
    store
        .revoke(&revocation(&expired[3]), &revoked(&expired[3]))
        .unwrap();
    store.revoke(&revocation(&live), &revoked(&live)).unwrap();
    store.start_counting(NOW).unwrap();
    let _ = store.live_by_root(NOW);

    // Only what expired at or before the cut-off goes, at most a batch per call.
    assert_eq!(store.prune_expired(NOW - 100 + 4, 3).unwrap(), 3);
    assert_eq!(store.prune_expired(NOW - 100 + 4, 3).unwrap(), 2);
    assert_eq!(store.prune_expired(NOW - 100 + 4, 3).unwrap(), 0);
    assert!(store.certificate(&serial(5)).unwrap().is_some());
    let mut batches = Vec::new();
    loop {
        let removed = store.prune_expired(NOW, 10).unwrap();
        batches.push(removed);
        if removed < 10 {
            break;
        }
    }
    assert_eq!(batches, vec![10, 10, 0]);
    assert_eq!(store.pruned_total(), 25);
    for c in &expired {
        let s = trellis_identity::hex::decode(&c.serial).unwrap();
        assert_eq!(store.certificate(&s).unwrap(), None, "{}", c.serial);
        assert_eq!(store.revocation(&s).unwrap(), None);
    }
    assert_eq!(
        store.certificates_of("spiffe://td/p0").unwrap(),
        vec![live.clone()]
    );
    assert!(store.certificates_of("spiffe://td/p1").unwrap().is_empty());
    assert_eq!(store.revocations().unwrap(), vec![revocation(&live)]);
    assert_eq!(
        page_through(
            &*store,
            Listing::ByIdentity {
                spiffe_id: None,
                expired: true,
                now: NOW,
            },
            10,
            |_| {}
        ),
        vec![live.serial.clone()]
    );
    assert_eq!(
        store.issued_total(),
        Some(26),
        "the total counts pruned records"
    );
    assert_eq!(
        store.live_by_root(NOW).and_then(|c| c.get("r1").copied()),
        Some(1)
    );
}

pub(crate) async fn a_revocation_is_recorded_once(h: &mut dyn Harness) {
    let store = h.create();
    let record = |reason: &str| RevocationRecord {
        serial: trellis_identity::hex::encode(&serial(7)),
        spiffe_id: "spiffe://td/r".into(),
        revoked_at: NOW,
        reason: reason.into(),
        not_after: NOW + 60,
        intermediate_id: "i1".into(),
        reason_code: Some(1),
    };
    assert_eq!(store.revocation(&serial(7)).unwrap(), None);
    let entry = audit(NOW, "certificate_revoked", &record("first").serial);
    assert!(store.revoke(&record("first"), &entry).unwrap());
    assert!(!store.revoke(&record("second"), &entry).unwrap());
    assert_eq!(store.revocation(&serial(7)).unwrap(), Some(record("first")));
    assert_eq!(store.revocations().unwrap(), vec![record("first")]);
    let entries = store.audit_after(0, 10).unwrap();
    assert_eq!(
        entries,
        vec![(1, entry)],
        "one audit entry, with the revocation that was recorded"
    );
}

pub(crate) async fn a_renewal_of_a_revoked_certificate_is_refused_and_writes_nothing(
    h: &mut dyn Harness,
) {
    let store = h.create();
    let first = cert(&serial(1), "spiffe://td/w", "r1", NOW + 3600);
    issue(&*store, &first).await;
    let second = cert(&serial(2), "spiffe://td/w", "r1", NOW + 3600);
    store
        .record_renewal(&second, &der_of(&second), &serial(2), &serial(1), &[])
        .expect("a renewal of a certificate in good standing is recorded");
    let revocation = RevocationRecord {
        serial: second.serial.clone(),
        spiffe_id: second.spiffe_id.clone(),
        revoked_at: NOW,
        reason: "key compromise".into(),
        not_after: second.not_after,
        intermediate_id: second.intermediate_id.clone(),
        reason_code: Some(1),
    };
    assert!(store.revoke(&revocation, &revoked(&second)).unwrap());
    let third = cert(&serial(3), "spiffe://td/w", "r1", NOW + 3600);
    let refused = store.record_renewal(&third, &der_of(&third), &serial(3), &serial(2), &[]);
    assert!(matches!(refused, Err(RecordError::Revoked)), "{refused:?}");
    assert_eq!(
        store.certificate(&serial(3)).unwrap(),
        None,
        "nothing of it written"
    );
    assert_eq!(store.certificates_of("spiffe://td/w").unwrap().len(), 2);
}

pub(crate) async fn the_audit_chain_links_entries_and_survives_reopening(h: &mut dyn Harness) {
    let store = h.create();
    store.set_trust_domain("td").unwrap();
    let empty = store.audit_chain_head().unwrap();
    assert_eq!(empty.sequence, 0);
    let mark = store.mark();
    for n in 1..=5 {
        store.append_audit(&audit(n, "token_created", "")).unwrap();
    }
    store.durable(mark).await.unwrap();
    let entries = store.audit_chain_after(0, 100).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(entries[0].prev, empty.hash);
    for pair in entries.windows(2) {
        assert_eq!(
            pair[1].prev, pair[0].hash,
            "each entry links to the one before"
        );
    }
    assert_eq!(store.audit_after(3, 1).unwrap()[0].0, 4);
    let raw = store.audit_raw_after(4, 10).unwrap();
    assert_eq!(raw, vec![(5, entries[4].encode())]);
    let head = store.audit_chain_head().unwrap();
    assert_eq!((head.sequence, head.hash), (5, entries[4].hash));
    drop(store);

    let store = h.reopen();
    assert_eq!(store.audit_chain_head().unwrap().sequence, 5);
    store.append_audit(&audit(6, "token_created", "")).unwrap();
    let sixth = store.audit_chain_after(5, 10).unwrap();
    assert_eq!(sixth.len(), 1);
    assert_eq!((sixth[0].sequence, sixth[0].prev), (6, entries[4].hash));
}

pub(crate) async fn audit_pruning_stops_at_a_checkpoint_that_stays(h: &mut dyn Harness) {
    let store = with_thirty_audit_entries(h);
    assert_eq!(store.latest_audit_checkpoint().unwrap(), None);
    for sequence in [10, 20, 30] {
        store.put_audit_checkpoint(&checkpoint(sequence)).unwrap();
    }
    assert_eq!(
        store.latest_audit_checkpoint().unwrap(),
        Some(checkpoint(30))
    );
    assert_eq!(
        store.audit_checkpoints_after(10, 1).unwrap(),
        vec![checkpoint(20)]
    );
    // Nothing older than the cut-off ends at a checkpoint yet.
    assert_eq!(store.prune_audit(10, 100).unwrap(), 0);
    // The newest checkpoint older than the cut-off (20; never the newest entry's) is the cut.
    assert_eq!(store.prune_audit(29, 100).unwrap(), 20);
    let left = store.audit_chain_after(0, 100).unwrap();
    assert_eq!(left.first().map(|e| e.sequence), Some(21));
    assert_eq!(left.len(), 10);
    assert_eq!(
        store.audit_checkpoints_after(0, 10).unwrap(),
        vec![checkpoint(20), checkpoint(30)],
        "the cut's checkpoint stays as the start of what remains"
    );
    assert_eq!(
        store.prune_audit(u64::MAX, 100).unwrap(),
        0,
        "never the newest entry"
    );
    store
        .append_audit(&audit(31, "certificate_issued", ""))
        .unwrap();
    assert_eq!(store.audit_chain_head().unwrap().sequence, 31);
}

/// Archiving (sled moves old entries out of its database; PostgreSQL keeps them in place)
/// changes nothing a reader of the chain sees, across a reopening and a pruning.
pub(crate) async fn archived_audit_entries_read_and_prune_as_before(h: &mut dyn Harness) {
    let store = with_thirty_audit_entries(h);
    let before = store.audit_raw_after(0, 100).unwrap();
    assert_eq!(before.len(), 30);
    // Entries recorded by 25, seven at a time.
    let mut moved = 0;
    loop {
        let n = store.archive_expired(25, 7).unwrap();
        moved += n;
        if n < 7 {
            break;
        }
    }
    assert!(
        matches!(moved, 0 | 25),
        "all recorded by then, or none: {moved}"
    );
    let read = |store: &Arc<dyn Store>, after: u64, limit: usize| {
        store.audit_raw_after(after, limit).unwrap()
    };
    assert_eq!(read(&store, 0, 100), before);
    assert_eq!(read(&store, 5, 3), before[5..8]);
    assert_eq!(
        read(&store, 23, 4),
        before[23..27],
        "across the archive's end"
    );
    drop(store);
    let store = h.reopen();
    assert_eq!(read(&store, 0, 100), before);
    for sequence in [10, 20, 30] {
        store.put_audit_checkpoint(&checkpoint(sequence)).unwrap();
    }
    assert_eq!(store.prune_audit(29, 100).unwrap(), 20);
    assert_eq!(read(&store, 0, 100), before[20..]);
    store
        .append_audit(&audit(31, "certificate_issued", ""))
        .unwrap();
    let last = store.audit_chain_after(29, 10).unwrap();
    assert_eq!(
        last.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [30, 31]
    );
    assert_eq!(
        last[1].prev, last[0].hash,
        "the chain goes on from the newest entry"
    );
}

pub(crate) async fn jwt_keys_come_back_in_the_order_they_were_added(h: &mut dyn Harness) {
    let store = h.create();
    let key = |kid: &str, version: u64, state| JwtKeyRecord {
        kid: kid.into(),
        state,
        created_at: NOW,
        public_key: vec![4; 65],
        key_file: format!("jwt-{kid}.key.pem"),
        added_in_bundle_version: version,
        deactivated_at: None,
    };
    let put = |k: JwtKeyRecord| {
        let change = Change {
            jwt_keys: vec![k],
            ..Change::default()
        };
        store.apply(&change).unwrap();
    };
    put(key("zz", 1, RootState::Active));
    put(key("aa", 2, RootState::Pending));
    put(key("zz", 1, RootState::Retiring));
    assert_eq!(
        store.jwt_keys().unwrap(),
        vec![
            key("zz", 1, RootState::Retiring),
            key("aa", 2, RootState::Pending)
        ]
    );
}

pub(crate) async fn federations_are_kept_replaced_and_removed(h: &mut dyn Harness) {
    let store = h.create();
    let federation = |td: &str, error: Option<&str>| FederationRecord {
        trust_domain: td.into(),
        endpoint_url: format!("https://{td}/bundle"),
        endpoint_spiffe_id: format!("spiffe://{td}/bundle"),
        bundle_json: "{}".into(),
        refreshed_at: NOW,
        last_attempt_at: NOW,
        last_error: error.map(str::to_owned),
        added_at: NOW,
        added_by: "test".into(),
    };
    assert_eq!(store.federation("b.org").unwrap(), None);
    let put = |records: Vec<FederationRecord>, removed: Vec<String>| {
        store
            .apply(&Change {
                federations: records,
                removed_federations: removed,
                ..Change::default()
            })
            .unwrap()
    };
    put(
        vec![federation("b.org", None), federation("a.org", None)],
        vec![],
    );
    put(vec![federation("b.org", Some("down"))], vec![]);
    assert_eq!(
        store.federations().unwrap(),
        vec![federation("a.org", None), federation("b.org", Some("down"))]
    );
    assert_eq!(
        store.federation("b.org").unwrap(),
        Some(federation("b.org", Some("down")))
    );
    put(vec![], vec!["a.org".into()]);
    // Removing what is not there changes nothing.
    put(vec![], vec!["a.org".into()]);
    assert_eq!(
        store.federations().unwrap(),
        vec![federation("b.org", Some("down"))]
    );
}
