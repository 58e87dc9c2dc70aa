//! Retention at the CA: records expired for longer than `certificate_retention` go (with
//! their index entries), the rest stay, `/metrics` counts what went and what is live, and
//! a retention of 0 keeps everything.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use tokio_util::sync::CancellationToken;
use trellis_ca::store::{CertRecord, Store};
use trellis_identity::clock::{Clock, ManualClock};

const HOUR: u64 = 3600;

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Writes `count` records expiring at `not_after`, returning their serials.
fn fill(store: &dyn Store, tag: u8, count: u32, not_after: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut serial = vec![tag; 12];
            serial.extend_from_slice(&i.to_be_bytes());
            let record = CertRecord {
                serial: trellis_identity::hex::encode(&serial),
                spiffe_id: format!("spiffe://cluster.local/ns/r/sa/w{}", i % 7),
                dns_names: Vec::new(),
                not_before: not_after - HOUR,
                not_after,
                issued_at: not_after - HOUR,
                issued_at_ns: 0,
                root_id: "bulk".into(),
                intermediate_id: "bulk".into(),
                issued_via: "renewal".into(),
            };
            store
                .record_issuance(&record, &[0x30; 500], &serial, None, &[])
                .expect("record");
            serial
        })
        .collect()
}

/// The serials of every record the store keeps, archived ones included.
fn kept(store: &dyn Store) -> std::collections::HashSet<Vec<u8>> {
    let mut serials = std::collections::HashSet::new();
    store
        .for_each_certificate(&mut |r| {
            serials.insert(trellis_identity::hex::decode(&r.serial).expect("hex serial"));
            true
        })
        .expect("walk the store");
    serials
}

async fn records_past_retention_go_and_the_rest_stay(backend: Backend) {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ca = TestCa::start_on(backend, clock.clone(), |c| {
        // The background task removes nothing: this test runs the pass itself, and counts
        // it. (It may archive, which moves records but keeps them.)
        c.certificate_retention = None;
        c.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let store = ca.running().store();
    let now = unix(clock.now());
    let old = fill(&**store, 0xa1, 30, now - 2 * HOUR);
    let recent = fill(&**store, 0xa2, 10, now - HOUR / 2);
    let live = fill(&**store, 0xa3, 5, now + HOUR);
    let issued_before = store.issued_total().expect("open");

    let stop = CancellationToken::new();
    let retention = Duration::from_secs(HOUR);
    let removed = trellis_ca::retention::prune_pass(store, now, retention, &stop)
        .await
        .expect("prune");
    assert_eq!(removed, 30);
    let left = kept(&**store);
    for serial in &old {
        assert!(!left.contains(serial));
    }
    for serial in recent.iter().chain(&live) {
        assert!(left.contains(serial));
    }
    let text = metrics(&ca).await;
    assert!(
        text.contains("trellis_ca_store_pruned_total 30\n"),
        "{text}"
    );
    assert!(
        text.contains("trellis_ca_certificates_live{root=\"bulk\"} 5\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "trellis_ca_certificates_issued_total {issued_before}\n"
        )),
        "pruning does not uncount: {text}"
    );

    // An hour later the recent ones are past retention too; the live ones have expired but
    // are within it.
    clock.advance(Duration::from_secs(HOUR + 60));
    let removed = trellis_ca::retention::prune_pass(store, unix(clock.now()), retention, &stop)
        .await
        .expect("prune");
    assert_eq!(removed, 10);
    let left = kept(&**store);
    for serial in &live {
        assert!(left.contains(serial));
    }
    let text = metrics(&ca).await;
    assert!(
        !text.contains("trellis_ca_certificates_live{root=\"bulk\"}"),
        "expired ones are not live: {text}"
    );
}

async fn a_retention_of_zero_keeps_every_record(backend: Backend) {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ca = TestCa::start_on(backend, clock.clone(), |c| {
        c.certificate_retention = None;
    })
    .await;
    let store = ca.running().store();
    let now = unix(clock.now());
    let old = fill(&**store, 0xb1, 20, now - 1000 * HOUR);
    // Stopped before it starts, the task makes one pass (archiving, for sled) and ends.
    let stop = CancellationToken::new();
    stop.cancel();
    tokio::time::timeout(
        Duration::from_secs(5),
        trellis_ca::retention::run(store.clone(), clock, None, stop),
    )
    .await
    .expect("one pass, then the task ends");
    let left = kept(&**store);
    assert!(
        old.iter().all(|s| left.contains(s)),
        "every old record is kept"
    );
    // sled keeps them in its archive, out of the database its start-up reads.
    let archived = old
        .iter()
        .all(|s| store.certificate(s).expect("read").is_none());
    assert_eq!(archived, backend == Backend::Sled);
    assert_eq!(store.pruned_total(), 0);
}

on_both_stores!(
    records_past_retention_go_and_the_rest_stay,
    a_retention_of_zero_keeps_every_record,
);
