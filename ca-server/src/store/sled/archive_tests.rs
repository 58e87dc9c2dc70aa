//! The archive of expired certificates against a real sled directory and real files:
//! what moves, what listings still find, what a crash between the two steps leaves, and
//! what retention removes.

use super::index_tests::{audit, cert, record};
use super::*;

const DAY: u64 = 86_400;

/// Ten certificates of `spiffe://td/old` expiring either side of the first midnight (so in
/// two days of the archive), one of them revoked, and one live certificate.
fn filled() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    for i in 1..=10u8 {
        record(
            &store,
            &cert(i, "spiffe://td/old", "r1", DAY - 5 + u64::from(i)),
        );
    }
    record(&store, &cert(20, "spiffe://td/live", "r1", 10 * DAY));
    let revocation = RevocationRecord {
        serial: hex::encode(&[3; 9]),
        spiffe_id: "spiffe://td/old".into(),
        revoked_at: 60,
        reason: "key compromise".into(),
        not_after: DAY - 2,
        intermediate_id: "inter".into(),
        reason_code: None,
    };
    assert!(store.revoke(&revocation, &audit()).unwrap());
    (dir, store)
}

/// Archives everything expired by `through` in batches of three; how many moved.
fn archive_all(store: &SledStore, through: u64) -> usize {
    let mut moved = 0;
    loop {
        let n = store.archive_expired(through, 3).unwrap();
        moved += n;
        if n < 3 {
            return moved;
        }
    }
}

/// Every certificate's serial, the archive's included, sorted.
pub(super) fn all_serials(store: &SledStore) -> Vec<String> {
    let mut out = Vec::new();
    store
        .for_each_certificate(&mut |r| {
            out.push(r.serial);
            true
        })
        .unwrap();
    out.sort();
    out
}

/// Every page of an identity listing, following its tokens.
fn list_all(store: &SledStore, spiffe_id: Option<&str>, max: usize) -> Vec<(CertRecord, Vec<u8>)> {
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = store
            .certificates_page(
                Listing::ByIdentity {
                    spiffe_id,
                    expired: true,
                    now: 2 * DAY,
                },
                after.as_ref(),
                max,
                4,
                &|_| true,
            )
            .unwrap();
        assert!(page.certificates.len() <= max);
        out.extend(page.certificates);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
    panic!("the listing never ended");
}

#[tokio::test]
async fn expired_certificates_leave_the_database_and_listings_still_find_them() {
    let (dir, store) = filled();
    let before = all_serials(&store);
    store.start_counting(0).unwrap();
    assert_eq!(
        store.archive_expired(2 * DAY, 100).unwrap(),
        0,
        "nothing the live counts still count moves"
    );
    store.live_by_root(2 * DAY);
    assert_eq!(archive_all(&store, 2 * DAY), 10);

    // Out of the database: not found by serial, not in its trees.
    for i in 1..=10u8 {
        assert!(store.certificate(&[i; 9]).unwrap().is_none(), "{i}");
    }
    assert!(store.revocation(&[3; 9]).unwrap().is_none());
    let t = store.trees().unwrap();
    assert_eq!(t.certs.len(), 1, "only the live one is left");
    assert_eq!((t.by_expiry.len(), t.by_identity.len()), (1, 1));
    drop(t);
    assert!(store.certificate(&[20; 9]).unwrap().is_some());
    let days: Vec<_> = std::fs::read_dir(dir.path().join(HISTORY_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(days.len(), 2, "one folder per day of expiry: {days:?}");

    // Still kept: every record, once, in the walk and in the listings.
    assert_eq!(all_serials(&store), before);
    let listed = list_all(&store, None, 4);
    let mut serials: Vec<_> = listed.iter().map(|(r, _)| r.serial.clone()).collect();
    serials.sort();
    assert_eq!(serials, before, "database then archive, each once");
    assert!(listed.iter().all(|(_, der)| der == b"der"), "with its DER");
    let old = list_all(&store, Some("spiffe://td/old"), 3);
    assert_eq!(old.len(), 10);
    assert!(old.iter().all(|(r, _)| r.spiffe_id == "spiffe://td/old"));
    let expiries: Vec<_> = old.iter().map(|(r, _)| r.not_after).collect();
    assert!(expiries.is_sorted(), "the archive is in expiry order");

    // A listing that wants no expired certificate does not read the archive.
    let unexpired = Listing::ByIdentity {
        spiffe_id: Some("spiffe://td/old"),
        expired: false,
        now: 2 * DAY,
    };
    let page = store
        .certificates_page(unexpired, None, 10, 100, &|_| true)
        .unwrap();
    assert!(
        page.certificates.is_empty() && page.next.is_none(),
        "{page:?}"
    );

    // The revocation went with its certificate.
    let mut revoked = Vec::new();
    store
        .history
        .walk(None, usize::MAX, usize::MAX, &mut |a| {
            a.revocation.is_some()
        })
        .unwrap()
        .0
        .into_iter()
        .for_each(|a| revoked.push((a.record.serial, a.revocation.unwrap().reason)));
    assert_eq!(
        revoked,
        [(hex::encode(&[3; 9]), "key compromise".to_owned())]
    );

    // A token that names no place in the archive is refused.
    let bad = PageToken(format!("{}../x/1", archive::EXPIRED_TOKEN));
    let short = PageToken(format!("{}5.0102", archive::EXPIRED_TOKEN));
    let err = store
        .certificates_page(
            Listing::ByIdentity {
                spiffe_id: None,
                expired: true,
                now: 2 * DAY,
            },
            Some(&short),
            3,
            3,
            &|_| true,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::BadPageToken(_)), "{err:?}");
    let err = store
        .certificates_page(
            Listing::ByIdentity {
                spiffe_id: None,
                expired: true,
                now: 2 * DAY,
            },
            Some(&bad),
            3,
            3,
            &|_| true,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::BadPageToken(_)), "{err:?}");
}

/// What a crash between writing a batch and removing its records leaves: both. The next
/// pass (after a restart, which finds the watermark in the newest batch) only removes them.
#[tokio::test]
async fn a_crash_between_archiving_and_removing_archives_nothing_twice() {
    let (dir, store) = filled();
    let t = store.trees().unwrap();
    let written: Vec<history::Archived> = t
        .by_expiry
        .range::<Vec<u8>, _>(..index::expiry_key(DAY, &[]))
        .map(|entry| {
            let (key, _) = entry.unwrap();
            let (_, serial) = index::split_key(&key).unwrap();
            let (record, der) = decode_certificate(&t.certs.get(serial).unwrap().unwrap()).unwrap();
            history::Archived {
                key: key.to_vec(),
                record,
                der,
                revocation: None,
            }
        })
        .collect();
    assert_eq!(written.len(), 4);
    store.history.insert(&written).unwrap();
    drop(t);
    store.flush_now().unwrap();
    drop(store);
    // And a batch a crash cut short before its rename.
    let newest_day = dir.path().join(HISTORY_DIR).join(format!("{:08}", 0));
    std::fs::write(newest_day.join("ff.batch.partial"), b"half a batch").unwrap();

    let store = SledStore::open(dir.path()).unwrap();
    assert!(!newest_day.join("ff.batch.partial").exists());
    store.start_counting(2 * DAY).unwrap();
    assert_eq!(archive_all(&store, 2 * DAY), 10);
    let serials = all_serials(&store);
    assert_eq!(serials.len(), 11, "each once: {serials:?}");
    assert_eq!(store.trees().unwrap().certs.len(), 1);
}

/// Retention removes what expired by its cut-off and nothing later, even inside a batch
/// (rewritten), and a day's folder once all of the day is past.
#[tokio::test]
async fn retention_removes_archived_records_exactly_at_their_cut_off() {
    let (dir, store) = filled();
    store.start_counting(2 * DAY).unwrap();
    assert_eq!(archive_all(&store, 2 * DAY), 10);
    let folders = || {
        std::fs::read_dir(dir.path().join(HISTORY_DIR))
            .unwrap()
            .count()
    };
    // A listing that stopped inside the first batch (serials 1 to 3, expiring DAY - 4 to
    // DAY - 2) goes on where it was after retention rewrote that batch.
    let listing = Listing::ByIdentity {
        spiffe_id: Some("spiffe://td/old"),
        expired: true,
        now: 2 * DAY,
    };
    let first = store
        .certificates_page(listing, None, 2, 100, &|_| true)
        .unwrap();
    let serial_of = |page: &CertPage| -> Vec<String> {
        page.certificates
            .iter()
            .map(|(r, _)| r.serial.clone())
            .collect()
    };
    assert_eq!(
        serial_of(&first),
        [hex::encode(&[1; 9]), hex::encode(&[2; 9])]
    );
    assert_eq!(store.prune_expired(DAY - 4, 1000).unwrap(), 1);
    let rest = store
        .certificates_page(listing, first.next.as_ref(), 100, 100, &|_| true)
        .unwrap();
    let expected: Vec<_> = (3..=10u8).map(|i| hex::encode(&[i; 9])).collect();
    assert_eq!(serial_of(&rest), expected, "nothing skipped, nothing again");
    assert_eq!(store.prune_expired(DAY - 3, 1000).unwrap(), 1);
    assert_eq!(store.prune_expired(DAY - 3, 1000).unwrap(), 0);
    let left = all_serials(&store);
    assert_eq!(left.len(), 9);
    assert!(
        left.contains(&hex::encode(&[3; 9])),
        "the rest of the batch stays"
    );
    assert_eq!(folders(), 2);
    // Through the last second of day 0: its folder goes.
    assert_eq!(store.prune_expired(DAY - 1, 1000).unwrap(), 2);
    assert_eq!(folders(), 1);
    assert_eq!(store.prune_expired(DAY + 2, 1000).unwrap(), 3);
    assert_eq!(store.prune_expired(2 * DAY - 1, 1000).unwrap(), 3);
    assert_eq!(store.pruned_total(), 10);
    assert_eq!(all_serials(&store), vec![hex::encode(&[20; 9])]);
    assert_eq!(folders(), 0, "both days' folders are gone");
    // And the listing that reads the archive finds nothing left in it.
    assert_eq!(list_all(&store, Some("spiffe://td/old"), 5).len(), 0);
}

fn audit_at(time: u64) -> AuditRecord {
    AuditRecord { time, ..audit() }
}

/// Old audit entries leave the database (all but the newest), and a crash between writing
/// their batch and removing them reads each entry once after the restart.
#[tokio::test]
async fn old_audit_entries_leave_the_database_and_are_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.set_trust_domain("td").unwrap();
    for n in 1..=30 {
        store.append_audit(&audit_at(n)).unwrap();
    }
    let before = store.audit_raw_after(0, 100).unwrap();
    // What a crash leaves: entries 1 to 4 archived and still in the database.
    store.audit_history.append(&before[..4]).unwrap();
    assert_eq!(store.audit_raw_after(0, 100).unwrap(), before);
    store.flush_now().unwrap();
    drop(store);

    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.audit_raw_after(0, 100).unwrap(), before);
    assert_eq!(store.archive_expired(u64::MAX, 1000).unwrap(), 29);
    assert_eq!(store.trees().unwrap().audit.len(), 1, "the newest stays");
    assert_eq!(store.audit_raw_after(0, 100).unwrap(), before);
    assert_eq!(store.audit_chain_head().unwrap().sequence, 30);
    store.append_audit(&audit_at(31)).unwrap();
    assert_eq!(store.audit_raw_after(29, 10).unwrap().len(), 2);
}

/// A certificate that reaches the archive after later ones did (the clock stepped back) is
/// merged into the batch whose range holds it, or a new batch before a day's first: kept
/// once, and listings stay in expiry order.
#[tokio::test]
async fn a_certificate_archived_late_is_merged_in_order() {
    let (_dir, store) = filled();
    store.start_counting(2 * DAY).unwrap();
    assert_eq!(archive_all(&store, 2 * DAY), 10);
    // A listing first, so that the batches merging adds must reach the names it read.
    assert_eq!(list_all(&store, Some("spiffe://td/old"), 4).len(), 10);
    // Inside the first batch's range, and before everything archived.
    record(&store, &cert(0x55, "spiffe://td/old", "r1", DAY - 3));
    record(&store, &cert(0x66, "spiffe://td/old", "r1", DAY - 100));
    assert_eq!(archive_all(&store, 2 * DAY), 2);
    let listed = list_all(&store, Some("spiffe://td/old"), 4);
    let keys: Vec<_> = listed
        .iter()
        .map(|(r, _)| (r.not_after, r.serial.clone()))
        .collect();
    assert_eq!(keys.len(), 12, "each once: {keys:?}");
    assert!(keys.is_sorted(), "in expiry order: {keys:?}");
    // And archiving the same records again (what a crash leaves) adds nothing.
    let again: Vec<history::Archived> = store
        .history
        .walk(None, 3, usize::MAX, &mut |_| true)
        .unwrap()
        .0;
    store.history.insert(&again).unwrap();
    assert_eq!(list_all(&store, Some("spiffe://td/old"), 4).len(), 12);
}

/// Late certificates past the end of a full batch start a batch of their own instead of
/// growing (and rewriting) that one on every pass.
#[tokio::test]
async fn late_certificates_past_a_full_batch_start_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let at = |n: u32, not_after: u64| {
        let serial = [&[0xc0u8][..], &n.to_be_bytes()].concat();
        let record = CertRecord {
            serial: hex::encode(&serial),
            ..cert(0, "spiffe://td/w", "r1", not_after)
        };
        store
            .record_issuance(&record, b"der", &serial, None, &[])
            .unwrap();
    };
    for n in 0..1000 {
        at(n, 100 + u64::from(n));
    }
    assert_eq!(store.archive_expired(DAY - 1, 1000).unwrap(), 1000);
    at(5000, 50_000);
    assert_eq!(store.archive_expired(DAY - 1, 1000).unwrap(), 1);
    // Below the watermark (50,000), past the full batch's end (1,099).
    at(6000, 2_000);
    at(6001, 2_001);
    assert_eq!(store.archive_expired(DAY - 1, 1000).unwrap(), 2);
    let day = dir.path().join(HISTORY_DIR).join(format!("{:08}", 0));
    let batches = std::fs::read_dir(&day).unwrap().count();
    assert_eq!(
        batches, 3,
        "the full batch, the one at 50,000, the late one"
    );
    let mut expiries = Vec::new();
    store
        .for_each_certificate(&mut |r| {
            expiries.push(r.not_after);
            true
        })
        .unwrap();
    assert_eq!(expiries.len(), 1003);
    assert!(expiries.is_sorted(), "the archive stays in expiry order");
}

/// Archiving while a listing pages through moves records from the database to the archive
/// under its feet; each is still listed exactly once.
#[tokio::test]
async fn a_listing_while_archiving_runs_lists_each_once() {
    let (_dir, store) = filled();
    store.start_counting(2 * DAY).unwrap();
    let listing = Listing::ByIdentity {
        spiffe_id: None,
        expired: true,
        now: 2 * DAY,
    };
    let mut listed = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = store
            .certificates_page(listing, after.as_ref(), 2, 100, &|_| true)
            .unwrap();
        listed.extend(page.certificates.into_iter().map(|(r, _)| r.serial));
        // Between pages, three more leave the database.
        store.archive_expired(2 * DAY, 3).unwrap();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(store.trees().unwrap().certs.len(), 1, "all moved meanwhile");
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, all_serials(&store), "each once: {listed:?}");
}
