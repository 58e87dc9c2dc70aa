//! The identity agent against a real CA that is overloaded: it waits out the CA's retry
//! hint (plus jitter) on the injected clock instead of retrying on its own short backoff,
//! keeps its current certificate meanwhile, and then renews. One manual clock for CA and
//! agent; real TLS on 127.0.0.1 and a real sled directory.

mod agent_support;

use std::time::{Duration, Instant, UNIX_EPOCH};

use agent_support::{Mesh, first_certificate};
use trellis_ca::limits::ClientKey;
use trellis_identity::clock::Clock;
use trellis_identity::hex;

const HINT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn waits_the_hinted_delay_keeping_its_certificate_then_renews() {
    let mesh = Mesh::start_configured(|c| {
        c.limits.max_concurrent_issuance = 1;
        c.limits.busy_retry_after = HINT;
    })
    .await;
    let agent = mesh.agent("/ns/demo/sa/patient").await;
    let (mut creds, metrics) = (agent.creds.clone(), agent.metrics.clone());
    let first = first_certificate(&mut creds).await;
    let ca = mesh.ca();

    // The CA is busy (its one issuance slot taken) when the renewal comes due.
    let slot = ca
        .limits()
        .admit(&ClientKey::Admin, mesh.clock.now())
        .expect("slot");
    mesh.pass_renewal_point(&first);
    let refused_at = mesh.clock.now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.renewals("throttled") == 0 {
        assert!(
            Instant::now() < deadline,
            "no throttled renewal: {}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From here on a retry would succeed: only the agent's own waiting holds it back.
    drop(slot);
    let held = creds
        .borrow()
        .clone()
        .expect("keeps serving while throttled");
    assert_eq!(held.svid.serial, first.svid.serial);

    // Move time one second per step; an agent on its own short backoff (50–400 ms of real
    // time) would renew within the first few steps, long before the hint is over.
    let deadline = Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        if let Some(c) = creds.borrow_and_update().clone()
            && c.svid.serial != first.svid.serial
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal after the hint: {}",
            metrics.render()
        );
        mesh.clock.advance(Duration::from_secs(1));
        let _ = tokio::time::timeout(Duration::from_millis(50), creds.changed()).await;
    };
    let (record, _) = ca
        .store()
        .certificate(&hex::decode(&renewed.svid.serial).expect("hex"))
        .expect("store")
        .expect("the renewal is on record");
    let issued_at = UNIX_EPOCH + Duration::from_nanos(record.issued_at_ns as u64);
    let waited = issued_at
        .duration_since(refused_at)
        .expect("after the refusal");
    assert!(
        waited >= HINT,
        "renewed {waited:?} after the refusal, before the {HINT:?} hint was over"
    );
    assert!(
        waited <= HINT * 3 / 2 + Duration::from_secs(10),
        "jitter adds at most half the hint: waited {waited:?}"
    );
    assert_eq!(renewed.svid.spiffe_id, first.svid.spiffe_id);
    assert_eq!(metrics.renewals("throttled"), 1, "{}", metrics.render());
    assert_eq!(
        metrics.renewals("error"),
        0,
        "a throttled renewal is not a failure"
    );
    assert_eq!(
        metrics
            .ca_retry_hints_honoured
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        ca.limits()
            .counters
            .refused_busy
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "exactly one refused attempt reached the CA"
    );
}
