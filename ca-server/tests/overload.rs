//! Overload protection against a real CA on 127.0.0.1 with tight limits and a manual clock
//! (so buckets refill only when the test moves time): bursts are refused with
//! RESOURCE_EXHAUSTED and a retry hint in all three forms, refusals are charged to the
//! right client, and the CA keeps serving everything else.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{TestCa, identity_of, metrics, renewal_request, token_request};
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::Code;
use tonic_types::StatusExt;
use trellis_ca::limits::{ClientKey, PUSHBACK_TRAILER};
use trellis_identity::WorkloadKey;
use trellis_identity::clock::{Clock, ManualClock};
use trellis_identity::tls::Identity;
use trellis_proto::ca::v1::GetTrustBundleRequest;

/// The hint of a RESOURCE_EXHAUSTED status, checked to agree in all three places.
fn hint_of(status: &tonic::Status) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let detail = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("google.rpc.RetryInfo with a delay");
    let pushback: u128 = status
        .metadata()
        .get(PUSHBACK_TRAILER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("grpc-retry-pushback-ms");
    assert_eq!(pushback, detail.as_millis());
    assert!(
        status.message().contains("retry in") && status.message().contains("nothing was issued"),
        "message says what happened and when to retry: {}",
        status.message()
    );
    detail
}

async fn tight(clock: Arc<ManualClock>) -> TestCa {
    TestCa::start_configured(clock, |c| {
        c.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.limits.renewals.burst = 3;
        c.limits.renewals.per_minute = 6; // one every 10 s
        c.limits.bootstraps.burst = 4;
        c.limits.bootstraps.per_minute = 6;
        c.limits.busy_retry_after = Duration::from_millis(1500);
    })
    .await
}

#[tokio::test]
async fn a_renewal_burst_is_refused_with_a_hint_and_the_ca_keeps_serving() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ca = tight(clock.clone()).await;
    let (key, first) = ca.bootstrap("/ns/demo/sa/storm").await;
    let identity = identity_of(&key, &first);
    let client = ca.workload(Some(&identity)).await;
    let csr = key.csr_der(None).expect("csr");
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let mut client = client.clone();
            let request = renewal_request(csr.clone());
            tokio::spawn(async move { client.certify(request).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in burst {
        results.push(task.await.expect("task"));
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let hints: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(hint_of)
        .collect();
    assert_eq!(ok, 3, "the burst allowance");
    assert_eq!(hints.len(), 7);
    for (status, hint) in results.iter().filter_map(|r| r.as_ref().err()).zip(&hints) {
        assert!(
            status
                .message()
                .contains("spiffe://cluster.local/ns/demo/sa/storm"),
            "{}",
            status.message()
        );
        // Empty bucket, one token per 10 s, clock not moved: exactly 10 s.
        assert_eq!(*hint, Duration::from_secs(10));
    }

    // Everything else still works: another identity, the bundle, health.
    let (other_key, other) = ca.bootstrap("/ns/demo/sa/calm").await;
    ca.workload(Some(&identity_of(&other_key, &other)))
        .await
        .certify(renewal_request(other_key.csr_der(None).expect("csr")))
        .await
        .expect("another identity renews");
    ca.workload(None)
        .await
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("bundle served");
    let text = metrics(&ca).await;
    assert!(
        text.contains("trellis_ca_issuance_refused_total{limit=\"renewal_rate\"} 7"),
        "{text}"
    );
    assert!(text.contains("trellis_ca_issuance_in_flight 0"), "{text}");

    // Waiting as told is enough.
    clock.advance(hints[0]);
    client
        .clone()
        .certify(renewal_request(csr.clone()))
        .await
        .expect("renewal after the hinted delay");
}

#[tokio::test]
async fn a_busy_ca_refuses_issuance_with_its_configured_hint() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ca = TestCa::start_configured(clock.clone(), |c| {
        c.limits.max_concurrent_issuance = 1;
        c.limits.busy_retry_after = Duration::from_millis(1500);
    })
    .await;
    let token = ca.token("/ns/demo/sa/busy").await;
    let key = WorkloadKey::generate().expect("key");
    // Occupy the one issuance slot, as a slow request in progress would.
    let slot = ca
        .running()
        .limits()
        .admit(&ClientKey::Admin, clock.now())
        .expect("slot");
    let refused = ca
        .workload(None)
        .await
        .certify(token_request(
            key.csr_der(None).expect("csr"),
            token.clone(),
        ))
        .await
        .expect_err("busy");
    assert_eq!(hint_of(&refused), Duration::from_millis(1500));
    assert!(refused.message().contains("busy"), "{}", refused.message());
    // Admin issuance shares the bound.
    let refused = ca
        .admin()
        .await
        .issue_certificate(trellis_proto::admin::v1::IssueCertificateRequest {
            spiffe_id: ca.id("/batch/job").to_string(),
            csr_der: key.csr_der(None).expect("csr"),
            ..Default::default()
        })
        .await
        .expect_err("busy");
    assert_eq!(hint_of(&refused), Duration::from_millis(1500));
    // Other RPCs are not issuance and are not limited.
    ca.workload(None)
        .await
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("bundle served while busy");
    drop(slot);
    // The refused bootstrap consumed nothing: the same token works now.
    ca.workload(None)
        .await
        .certify(token_request(key.csr_der(None).expect("csr"), token))
        .await
        .expect("issued once the slot is free");
}

#[tokio::test]
async fn bootstraps_are_limited_per_source_address_without_spending_tokens() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ca = tight(clock.clone()).await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(ca.token(&format!("/ns/demo/sa/b{i}")).await);
    }
    let mut client = ca.workload(None).await;
    for token in &tokens[..4] {
        let key = WorkloadKey::generate().expect("key");
        client
            .certify(token_request(
                key.csr_der(None).expect("csr"),
                token.clone(),
            ))
            .await
            .expect("within the burst");
    }
    let key = WorkloadKey::generate().expect("key");
    let refused = client
        .certify(token_request(
            key.csr_der(None).expect("csr"),
            tokens[4].clone(),
        ))
        .await
        .expect_err("over the burst");
    let hint = hint_of(&refused);
    assert!(
        refused.message().contains("127.0.0.1"),
        "{}",
        refused.message()
    );
    clock.advance(hint);
    client
        .certify(token_request(
            key.csr_der(None).expect("csr"),
            tokens[4].clone(),
        ))
        .await
        .expect("the same token works after the hint");
}

#[tokio::test]
async fn a_forged_certificate_cannot_spend_someone_elses_renewals() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ca = tight(clock.clone()).await;
    let (key, first) = ca.bootstrap("/ns/demo/sa/victim").await;
    // A self-signed certificate claiming the victim's ID (the attacker holds its key).
    let forged_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/demo/sa/victim"
            .try_into()
            .expect("uri"),
    )];
    let forged = params.self_signed(&forged_key).expect("self-signed");
    let forged_identity = Identity {
        chain: vec![forged.der().clone()],
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(forged_key.serialize_der().into()),
    };
    let attacker = ca.workload(Some(&forged_identity)).await;
    let mut codes = Vec::new();
    for _ in 0..10 {
        let status = attacker
            .clone()
            .certify(renewal_request(forged_key_csr()))
            .await
            .expect_err("a forged certificate gets nothing");
        codes.push(status.code());
    }
    // Charged to the attacker's address (bootstrap allowance), not to the victim.
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    let victim = ca.workload(Some(&identity_of(&key, &first))).await;
    for _ in 0..3 {
        victim
            .clone()
            .certify(renewal_request(key.csr_der(None).expect("csr")))
            .await
            .expect("the victim's allowance is intact");
    }
}

fn forged_key_csr() -> Vec<u8> {
    WorkloadKey::generate()
        .expect("key")
        .csr_der(None)
        .expect("csr")
}
