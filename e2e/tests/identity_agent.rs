//! The sidecar's identity agent against the real CA, in one process with one manual clock:
//! bootstrap, rotations without a validity gap, surviving a CA outage, and bundle changes.
//! Real TLS on 127.0.0.1, a real sled directory; only time is moved instead of waited for.

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::{Mesh, first_certificate, wait_for};
use trellis_identity::WorkloadKey;
use trellis_identity::clock::Clock;
use trellis_identity::{TrustBundle, pem};
use trellis_proto::admin::v1::{IssueCertificateRequest, RevokeCertificateRequest};
use trellis_sidecar::agent::{Pacing, renew_at};

#[tokio::test]
async fn bootstraps_then_rotates_three_times_without_a_gap() {
    let mesh = Mesh::start().await;
    let agent = mesh.agent("/ns/demo/sa/web").await;
    let (mut creds, metrics) = (agent.creds.clone(), agent.metrics.clone());
    let mut previous = first_certificate(&mut creds).await;
    assert_eq!(
        previous.svid.spiffe_id.as_str(),
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    for rotation in 1..=3 {
        // Move the clock to just past this certificate's renewal point.
        let due = renew_at(&previous);
        let lifetime = previous
            .svid
            .not_after
            .duration_since(previous.not_before)
            .expect("order");
        let fraction = due
            .duration_since(previous.not_before)
            .expect("order")
            .as_secs_f64()
            / lifetime.as_secs_f64();
        assert!(
            (0.4..=0.6).contains(&fraction),
            "renewal at {fraction:.2} of the lifetime"
        );
        mesh.clock.advance(
            due.duration_since(mesh.clock.now()).unwrap_or_default() + Duration::from_secs(1),
        );
        let old_serial = previous.svid.serial.clone();
        let next = wait_for(&mut creds, Duration::from_secs(10), "rotation", |c| {
            c.is_some_and(|c| c.svid.serial != old_serial)
        })
        .await
        .expect("certificate");
        assert_eq!(
            next.svid.spiffe_id, previous.svid.spiffe_id,
            "rotation {rotation} keeps the identity"
        );
        assert!(
            next.not_before < previous.svid.not_after,
            "no gap in validity at rotation {rotation}"
        );
        assert!(next.svid.not_after > previous.svid.not_after);
        previous = next;
    }
    assert!(
        metrics
            .render()
            .contains("trellis_sidecar_renewals_total{result=\"ok\"} 4")
    );
}

#[tokio::test]
async fn keeps_its_certificate_through_a_ca_outage_and_renews_when_it_returns() {
    let mut mesh = Mesh::start().await;
    let agent = mesh.agent("/ns/demo/sa/api").await;
    let (mut creds, metrics) = (agent.creds.clone(), agent.metrics.clone());
    let first = first_certificate(&mut creds).await;
    mesh.stop_ca().await;
    // Past the renewal point, well before expiry: renewals fail while the CA is down.
    mesh.clock.advance(
        renew_at(&first)
            .duration_since(mesh.clock.now())
            .unwrap_or_default()
            + Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics
        .render()
        .contains("trellis_sidecar_renewals_total{result=\"error\"} 3")
    {
        assert!(
            Instant::now() < deadline,
            "expected failed renewals: {}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = creds
        .borrow()
        .clone()
        .expect("still holds a certificate during the outage");
    assert_eq!(
        held.svid.serial, first.svid.serial,
        "kept the current certificate"
    );
    let restarted = Instant::now();
    mesh.restart_ca().await;
    let renewed = wait_for(
        &mut creds,
        Duration::from_secs(5),
        "renewal after the CA returns",
        |c| c.is_some_and(|c| c.svid.serial != first.svid.serial),
    )
    .await
    .expect("certificate");
    assert_eq!(renewed.svid.spiffe_id, first.svid.spiffe_id);
    assert!(restarted.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn withdraws_an_expired_certificate_when_the_ca_stays_down() {
    let mut mesh = Mesh::start().await;
    let agent = mesh.agent("/ns/demo/sa/batch").await;
    let mut creds = agent.creds.clone();
    let first = first_certificate(&mut creds).await;
    mesh.stop_ca().await;
    mesh.clock.advance(
        first
            .svid
            .not_after
            .duration_since(mesh.clock.now())
            .unwrap_or_default()
            + Duration::from_secs(1),
    );
    // Fail closed: no certificate is published once it has expired (the token is spent).
    wait_for(&mut creds, Duration::from_secs(10), "withdrawal", |c| {
        c.is_none()
    })
    .await;
}

#[tokio::test]
async fn a_bundle_change_reaches_the_sidecar_within_two_seconds() {
    let mesh = Mesh::start().await;
    let agent = mesh.agent("/ns/demo/sa/bundle").await;
    let mut creds = agent.creds.clone();
    let first = first_certificate(&mut creds).await;
    // Add a second root (another CA's) to the published bundle through the CA's test hook.
    let other = Mesh::start().await;
    let ca = mesh.ca();
    let mut roots = ca.bundle().roots().to_vec();
    roots.extend(other.ca().bundle().roots().iter().cloned());
    let version = ca.bundle().version() + 1;
    let changed_at = Instant::now();
    ca.publish_bundle(
        TrustBundle::new(ca.bundle().trust_domain().clone(), version, roots).expect("bundle"),
    );
    let updated = wait_for(&mut creds, Duration::from_secs(2), "the new bundle", |c| {
        c.is_some_and(|c| c.bundle.version() == version)
    })
    .await
    .expect("certificate");
    assert!(changed_at.elapsed() < Duration::from_secs(2));
    assert_eq!(updated.bundle.roots().len(), 2);
    assert_eq!(
        updated.svid.serial, first.svid.serial,
        "same certificate, new bundle"
    );
}

/// With production pacing: a revocation made right after the CA comes back from an outage
/// long enough for the renewal backoff to reach its 15 s cap still reaches every sidecar
/// within 2 s (the streams reconnect within about 1 s and start with the complete list).
/// Several agents, so that the old behaviour (streams on the renewal backoff, each sidecar
/// waiting a random part of up to 15 s) cannot pass by luck.
#[tokio::test]
async fn a_revocation_right_after_a_ca_outage_reaches_every_sidecar_within_two_seconds() {
    const AGENTS: usize = 6;
    const OUTAGE: Duration = Duration::from_secs(20);
    let mut mesh = Mesh::start().await;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let agent = mesh
            .agent_paced(&format!("/ns/demo/sa/r{i}"), |_| {}, Pacing::default())
            .await;
        first_certificate(&mut agent.creds.clone()).await;
        agents.push(agent);
    }
    let peer = mesh
        .admin()
        .await
        .issue_certificate(IssueCertificateRequest {
            csr_der: WorkloadKey::generate()
                .expect("key")
                .csr_der(None)
                .expect("csr"),
            spiffe_id: "spiffe://cluster.local/ns/demo/sa/peer".into(),
            ..Default::default()
        })
        .await
        .expect("issue the peer's certificate")
        .into_inner()
        .serial;

    mesh.stop_ca().await;
    tokio::time::sleep(OUTAGE).await;
    mesh.restart_ca().await;
    mesh.admin()
        .await
        .revoke_certificate(RevokeCertificateRequest {
            serial: peer.clone(),
            reason: "key compromise".into(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    let acknowledged = Instant::now();
    for (i, agent) in agents.iter().enumerate() {
        let left = Duration::from_secs(2).saturating_sub(acknowledged.elapsed());
        wait_for(
            &mut agent.creds.clone(),
            left,
            &format!("agent {i} to learn of the revocation"),
            |c| c.is_some_and(|c| c.revoked.contains(&peer)),
        )
        .await;
    }
    eprintln!(
        "every agent had the revocation {:?} after it was acknowledged",
        acknowledged.elapsed()
    );
}

#[tokio::test]
async fn joins_with_only_a_pinned_root_fingerprint_and_refuses_a_wrong_pin() {
    let mesh = Mesh::start().await;
    let root = mesh.ca().bundle().roots()[0].clone();
    let fingerprint = trellis_identity::hex::encode(
        &trellis_identity::bundle::spki_sha256(&root).expect("fingerprint"),
    );
    let pinned = mesh
        .agent_with("/ns/demo/sa/pinned", |ca| {
            ca.trust_bundle = None;
            ca.trust_fingerprint = Some(fingerprint.clone());
        })
        .await;
    let mut creds = pinned.creds.clone();
    let got = wait_for(
        &mut creds,
        Duration::from_secs(10),
        "a certificate via the pin",
        |c| c.is_some(),
    )
    .await
    .expect("certificate");
    assert_eq!(
        got.bundle.roots(),
        mesh.ca().bundle().roots(),
        "bundle fetched from the CA"
    );

    // A pin that matches no root of this CA: the agent never gets a certificate.
    let mispinned = mesh
        .agent_with("/ns/demo/sa/mispinned", |ca| {
            ca.trust_bundle = None;
            ca.trust_fingerprint = Some("00".repeat(32));
        })
        .await;
    let mut wrong = mispinned.creds.clone();
    let outcome = tokio::time::timeout(Duration::from_secs(2), wrong.changed()).await;
    assert!(
        outcome.is_err() && wrong.borrow().is_none(),
        "a wrong pin must not yield a certificate"
    );
}

#[tokio::test]
async fn writes_svid_files_for_the_app_and_rewrites_them_on_rotation() {
    use std::os::unix::fs::PermissionsExt;
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let svid_dir = dir.path().join("svid");
    let agent = mesh
        .agent_with("/ns/demo/sa/files", |ca| {
            ca.svid_dir = Some(svid_dir.clone());
        })
        .await;
    let mut creds = agent.creds.clone();
    let first = first_certificate(&mut creds).await;
    let read_leaf = || {
        let chain =
            pem::certs_from_pem(&std::fs::read(svid_dir.join("svid.pem")).expect("svid.pem"))
                .expect("pem");
        trellis_identity::CertInfo::parse(&chain[0]).expect("leaf")
    };
    assert_eq!(read_leaf().serial, first.svid.serial);
    let key_mode = std::fs::metadata(svid_dir.join("svid_key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the key file is private");
    let key = trellis_identity::WorkloadKey::from_pem(
        &std::fs::read_to_string(svid_dir.join("svid_key.pem")).expect("key"),
    )
    .expect("a P-256 key");
    assert_eq!(
        key.public_key_der(),
        read_leaf().spki_der,
        "key and certificate match"
    );
    assert!(
        std::fs::read_to_string(svid_dir.join("bundle.pem"))
            .expect("bundle")
            .contains("BEGIN CERTIFICATE")
    );

    mesh.clock.advance(
        renew_at(&first)
            .duration_since(mesh.clock.now())
            .unwrap_or_default()
            + Duration::from_secs(1),
    );
    let next = wait_for(&mut creds, Duration::from_secs(10), "rotation", |c| {
        c.is_some_and(|c| c.svid.serial != first.svid.serial)
    })
    .await
    .expect("certificate");
    assert_eq!(
        read_leaf().serial,
        next.svid.serial,
        "files follow the rotation"
    );
}

#[tokio::test]
async fn renews_from_another_replica_when_the_one_it_used_stops_answering() {
    let mut mesh = Mesh::start().await;
    // The replica's address is in the list from the start, as a Service's would be.
    let replica_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let addresses = format!("{},{replica_addr}", mesh.addr);
    let agent = mesh
        .agent_with("/ns/demo/sa/ha", |ca| ca.address = Some(addresses))
        .await;
    let (mut creds, metrics) = (agent.creds.clone(), agent.metrics.clone());
    let first = first_certificate(&mut creds).await;
    let replica = mesh.start_replica(replica_addr).await;
    // The first replica goes away; the renewal goes to the other one.
    mesh.stop_ca().await;
    mesh.pass_renewal_point(&first);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let renewed = loop {
        let current = creds.borrow_and_update().clone().expect("certificate");
        if current.svid.serial != first.svid.serial {
            break current;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal from the replica; last failure: {:?}",
            metrics.last_failure()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), creds.changed()).await;
    };
    assert_eq!(renewed.svid.spiffe_id, first.svid.spiffe_id);
    let issued_by_replica = replica
        .store()
        .certificate(&trellis_identity::hex::decode(&renewed.svid.serial).expect("hex"))
        .expect("read");
    assert!(
        issued_by_replica.is_some(),
        "the replica recorded the renewed certificate"
    );
    assert!(
        metrics
            .render()
            .contains("trellis_sidecar_renewals_total{result=\"ok\"} 2"),
        "{}",
        metrics.render()
    );
    replica.shutdown().await.expect("replica stops");
}
