//! The expiry index, the counters, retention and acknowledgements against a real sled
//! directory, including what survives closing and reopening it.

use super::*;

pub(super) fn cert(serial: u8, spiffe_id: &str, root: &str, not_after: u64) -> CertRecord {
    CertRecord {
        serial: trellis_identity::hex::encode(&[serial; 9]),
        spiffe_id: spiffe_id.into(),
        dns_names: Vec::new(),
        not_before: 1,
        not_after,
        issued_at: 1,
        issued_at_ns: u128::from(serial),
        root_id: root.into(),
        intermediate_id: "inter".into(),
        issued_via: "renewal".into(),
    }
}

pub(super) fn record(store: &SledStore, c: &CertRecord) {
    let serial = trellis_identity::hex::decode(&c.serial).unwrap();
    store
        .record_issuance(c, b"der", &serial, None, &[])
        .unwrap();
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn live_serials(store: &SledStore, now: u64) -> Vec<String> {
    let mut out = Vec::new();
    store
        .for_each_live(now, &mut |r| out.push(r.serial))
        .unwrap();
    out
}

#[tokio::test]
async fn counters_follow_issuance_and_expiry_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.issued_total(), Some(0));
        assert_eq!(store.live_by_root(1000), None, "unknown before counting");
        store.start_counting(1000).unwrap();
        record(&store, &cert(1, "spiffe://td/a", "r1", 2000));
        record(&store, &cert(2, "spiffe://td/b", "r1", 3000));
        record(&store, &cert(3, "spiffe://td/c", "r2", 2500));
        record(&store, &cert(4, "spiffe://td/d", "r1", 500)); // already expired
        assert_eq!(store.issued_total(), Some(4));
        assert_eq!(
            store.live_by_root(1000),
            Some(counts(&[("r1", 2), ("r2", 1)]))
        );
        assert_eq!(
            store.live_by_root(2000),
            Some(counts(&[("r1", 1), ("r2", 1)]))
        );
        assert_eq!(store.live_by_root(2600), Some(counts(&[("r1", 1)])));
        // A clock that goes back does not count anything twice.
        assert_eq!(store.live_by_root(1500), Some(counts(&[("r1", 1)])));
        assert_eq!(store.live_by_root(3000), Some(counts(&[])));
        store.flush_now().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.issued_total(), Some(4), "issued_total is durable");
    store.start_counting(1000).unwrap();
    assert_eq!(
        store.live_by_root(1000),
        Some(counts(&[("r1", 2), ("r2", 1)]))
    );
    assert_eq!(
        live_serials(&store, 1000),
        ["01", "03", "02"]
            .iter()
            .map(|s| s.repeat(9))
            .collect::<Vec<_>>(),
        "in expiry order"
    );
}

/// What a crash between the expiry entry and the certificate leaves: an entry without a
/// certificate, never acknowledged. Counting at start-up removes it.
#[tokio::test]
async fn an_index_entry_without_its_certificate_is_not_counted_and_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    record(&store, &cert(1, "spiffe://td/a", "r1", 2000));
    let orphan = cert(2, "spiffe://td/b", "r1", 2000);
    let t = store.trees().unwrap();
    let orphan_key = index::expiry_key(2000, &[2; 9]);
    t.by_expiry.insert(&orphan_key, encode(&orphan)).unwrap();
    store.start_counting(1000).unwrap();
    assert_eq!(store.live_by_root(1000), Some(counts(&[("r1", 1)])));
    assert!(!t.by_expiry.contains_key(&orphan_key).unwrap());
    assert_eq!(live_serials(&store, 1000), vec!["01".repeat(9)]);
}

#[tokio::test]
async fn retention_removes_expired_records_with_their_entries_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.start_counting(50).unwrap();
    for i in 0..10u8 {
        record(
            &store,
            &cert(i + 1, "spiffe://td/old", "r1", 100 + u64::from(i)),
        );
    }
    record(&store, &cert(20, "spiffe://td/live", "r1", 10_000));
    let revoked = |serial: u8| RevocationRecord {
        serial: trellis_identity::hex::encode(&[serial; 9]),
        spiffe_id: "spiffe://td/old".into(),
        revoked_at: 60,
        reason: "test".into(),
        not_after: 100,
        intermediate_id: "inter".into(),
        reason_code: None,
    };
    assert!(store.revoke(&revoked(1), &audit()).unwrap());
    assert!(store.revoke(&revoked(20), &audit()).unwrap());

    // The counts stand at 50: nothing they still count as live may go.
    assert_eq!(store.prune_expired(200, 1000).unwrap(), 0);

    store.live_by_root(200);
    // Up to 104 (five records), in batches of two.
    let mut removed = Vec::new();
    loop {
        let n = store.prune_expired(104, 2).unwrap();
        assert!(n <= 2);
        removed.push(n);
        if n < 2 {
            break;
        }
    }
    assert_eq!(removed.iter().sum::<usize>(), 5, "{removed:?}");
    assert_eq!(store.pruned_total(), 5);
    for i in 1..=5u8 {
        assert!(store.certificate(&[i; 9]).unwrap().is_none(), "{i}");
    }
    assert!(
        store.revocation(&[1; 9]).unwrap().is_none(),
        "with its revocation"
    );
    assert!(
        store.revocation(&[20; 9]).unwrap().is_some(),
        "a live one's stays"
    );
    for i in 6..=10u8 {
        assert!(store.certificate(&[i; 9]).unwrap().is_some(), "{i}");
    }
    assert_eq!(store.certificates_of("spiffe://td/old").unwrap().len(), 5);
    assert_eq!(store.certificates_of("spiffe://td/live").unwrap().len(), 1);
    assert_eq!(
        store.issued_total(),
        Some(11),
        "pruning does not uncount issuance"
    );
    assert_eq!(live_serials(&store, 200), vec!["14".repeat(9)]);
}

#[tokio::test]
async fn the_expiring_listing_pages_with_a_cursor_in_expiry_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    // Expired, expiring within 10 (five of them), later.
    for i in 1..=20u8 {
        record(&store, &cert(i, "spiffe://td/a", "r1", 95 + u64::from(i)));
    }
    let mut listed = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = store
            .expiring_page(100, Some(110), after.as_deref(), 3, 100, &|_| true)
            .unwrap();
        pages += 1;
        assert!(page.certificates.len() <= 3);
        listed.extend(page.certificates.into_iter().map(|(r, _)| r.not_after));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, (101..=110).collect::<Vec<u64>>());
    assert_eq!(pages, 4);
    // A scan bound shorter than the page stops early, with a cursor, and resumes.
    let page = store
        .expiring_page(100, None, None, 10, 2, &|r| r.not_after % 2 == 0)
        .unwrap();
    assert_eq!(page.certificates.len(), 1);
    let next = store
        .expiring_page(100, None, page.next.as_deref(), 10, 2, &|r| {
            r.not_after % 2 == 0
        })
        .unwrap();
    assert_eq!(next.certificates[0].0.not_after, 104);
}

#[tokio::test]
async fn acknowledgements_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.put_ack("spiffe://td/a", 3, 100).unwrap();
        store.put_ack("spiffe://td/b", 1, 90).unwrap();
        store.put_ack("spiffe://td/a", 4, 110).unwrap();
        store.flush_now().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let mut acks = store.acks().unwrap();
    acks.sort();
    assert_eq!(
        acks,
        vec![
            ("spiffe://td/a".to_owned(), 4, 110),
            ("spiffe://td/b".to_owned(), 1, 90)
        ]
    );
}

/// A database from before the index: the first opening builds it and `issued_total`.
#[tokio::test]
async fn a_database_from_before_the_index_gets_it_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        record(&store, &cert(1, "spiffe://td/a", "r1", 2000));
        record(&store, &cert(2, "spiffe://td/b", "r2", 500));
        let t = store.trees().unwrap();
        t.by_expiry.clear().unwrap();
        t.meta.remove(index::META_EXPIRY_INDEX).unwrap();
        t.meta.remove(index::META_ISSUED_TOTAL).unwrap();
        store.flush_now().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.issued_total(), Some(2));
    store.start_counting(1000).unwrap();
    assert_eq!(store.live_by_root(1000), Some(counts(&[("r1", 1)])));
    assert_eq!(
        store.prune_expired(1000, 10).unwrap(),
        1,
        "the old one is indexed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_passes_that_meet_count_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
    for i in 0..200u32 {
        let serial = [&[0xb0u8][..], &i.to_be_bytes()].concat();
        let record = CertRecord {
            serial: trellis_identity::hex::encode(&serial),
            issued_at_ns: u128::from(i),
            ..cert(0, &format!("spiffe://td/w{i}"), "root", 10)
        };
        store
            .record_issuance(&record, b"der", &serial, None, &[])
            .unwrap();
    }
    store.start_counting(1_000).unwrap();
    let a = store.clone();
    let b = store.clone();
    let first = std::thread::spawn(move || a.prune_expired(500, 1_000).unwrap());
    let second = std::thread::spawn(move || b.prune_expired(500, 1_000).unwrap());
    let removed = first.join().unwrap() + second.join().unwrap();
    assert_eq!(removed, 200);
    assert_eq!(store.pruned_total(), 200);
}

pub(super) fn audit() -> AuditRecord {
    AuditRecord {
        time: 60,
        kind: "certificate_revoked".into(),
        spiffe_id: "spiffe://td/old".into(),
        serial: String::new(),
        actor: "test".into(),
        detail: String::new(),
    }
}
