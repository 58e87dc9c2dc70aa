//! Issuance through the real server: token bootstrap, renewal, the X.509-SVID profile field
//! by field, durability across restarts, and 1,000 concurrent issuances.

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use common::*;
use rustls_pki_types::CertificateDer;
use tonic::Code;
use trellis_identity::WorkloadKey;
use trellis_identity::bundle::Usage;
use trellis_proto::admin::v1::{
    GetCertificateRequest, GetStatusRequest, IssueCertificateRequest, ListAuditEventsRequest,
};
use trellis_proto::ca::v1::GetTrustBundleRequest;
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};

const SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
const CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";

#[tokio::test]
async fn token_bootstrap_issues_a_conforming_x509_svid() {
    let ca = TestCa::start().await;
    let before = SystemTime::now();
    let (key, response) = ca.bootstrap("/ns/prod/sa/web").await;
    let id = ca.id("/ns/prod/sa/web");
    assert_eq!(response.spiffe_id, id.to_string());
    assert_eq!(response.chain_der.len(), 2, "leaf + intermediate");

    let leaf = Certificate::from_der(&response.chain_der[0]).expect("leaf parses");
    let tbs = &leaf.tbs_certificate;
    assert_eq!(tbs.version, x509_cert::Version::V3);

    // Exactly one URI SAN, the SPIFFE ID; no other names.
    let (_, san) = tbs
        .get::<SubjectAltName>()
        .expect("SAN decodes")
        .expect("SAN present");
    let uris: Vec<String> = san
        .0
        .iter()
        .filter_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![id.to_string()]);
    assert_eq!(san.0.len(), 1);

    // CA=false, present and critical.
    let (critical, bc) = tbs
        .get::<BasicConstraints>()
        .expect("decodes")
        .expect("present");
    assert!(critical && !bc.ca);
    // Key usage: digitalSignature only, critical.
    let (critical, ku) = tbs.get::<KeyUsage>().expect("decodes").expect("present");
    assert!(critical);
    assert!(ku.0.contains(KeyUsages::DigitalSignature));
    assert!(!ku.0.contains(KeyUsages::KeyCertSign) && !ku.0.contains(KeyUsages::CRLSign));
    // EKU: serverAuth + clientAuth.
    let (_, eku) = tbs
        .get::<ExtendedKeyUsage>()
        .expect("decodes")
        .expect("present");
    let ekus: HashSet<String> = eku.0.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        ekus,
        HashSet::from([SERVER_AUTH.to_owned(), CLIENT_AUTH.to_owned()])
    );

    // Serial: positive, at least 64 bits.
    let serial = tbs.serial_number.as_bytes();
    assert!(serial.len() >= 8, "serial has {} bytes", serial.len());
    assert!(serial[0] & 0x80 == 0, "serial is positive");
    assert_eq!(trellis_identity::hex::encode(serial), response.serial);

    // Validity: NotBefore backdated, lifetime the 1 h default.
    let not_before = tbs.validity.not_before.to_system_time();
    let not_after = tbs.validity.not_after.to_system_time();
    assert!(not_before < before, "NotBefore is backdated");
    assert!(before.duration_since(not_before).expect("order") <= Duration::from_secs(120));
    let lifetime = not_after.duration_since(not_before).expect("order");
    assert_eq!(
        lifetime,
        Duration::from_secs(3600 + 60),
        "1 h plus the 60 s backdate"
    );

    // The key is the one the CSR proved possession of: ECDSA P-256.
    let info = trellis_identity::CertInfo::parse(&response.chain_der[0]).expect("parses");
    assert_eq!(info.key_algorithm, "ECDSA P-256");
    assert_eq!(info.spki_der, key.public_key_der());

    // The chain verifies against the bundle, and the intermediate is a CA.
    let chain: Vec<CertificateDer> = response
        .chain_der
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let verified = ca
        .bundle()
        .verify(&chain, SystemTime::now(), Usage::Client)
        .expect("verifies");
    assert_eq!(verified.spiffe_id, id);
    let intermediate = trellis_identity::CertInfo::parse(&response.chain_der[1]).expect("parses");
    assert!(intermediate.is_ca);

    // The bundle in the response is the CA's bundle.
    let bundle = response.bundle.expect("bundle");
    assert_eq!(bundle.trust_domain, "cluster.local");
    assert_eq!(
        bundle.root_certificates_der,
        ca.bundle()
            .roots()
            .iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn renewal_with_the_current_certificate_keeps_the_identity() {
    let ca = TestCa::start().await;
    let (key, first) = ca.bootstrap("/ns/a/sa/api").await;
    let identity = identity_of(&key, &first);
    let new_key = WorkloadKey::generate().expect("key");
    let renewed = ca
        .workload(Some(&identity))
        .await
        .certify(renewal_request(new_key.csr_der(None).expect("csr")))
        .await
        .expect("renewal succeeds")
        .into_inner();
    assert_eq!(renewed.spiffe_id, first.spiffe_id);
    assert_ne!(renewed.serial, first.serial);
    let info = trellis_identity::CertInfo::parse(&renewed.chain_der[0]).expect("parses");
    assert_eq!(
        info.spki_der,
        new_key.public_key_der(),
        "the new key is certified"
    );

    // The renewed certificate can itself renew.
    let again = ca
        .workload(Some(&identity_of(&new_key, &renewed)))
        .await
        .certify(renewal_request(new_key.csr_der(None).expect("csr")))
        .await
        .expect("second renewal")
        .into_inner();
    assert_eq!(again.spiffe_id, first.spiffe_id);
}

async fn a_join_token_works_once(backend: Backend) {
    let ca = TestCa::start_with_store(backend).await;
    let token = ca.token("/ns/a/sa/once").await;
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_der(None).expect("csr");
    let mut client = ca.workload(None).await;
    client
        .certify(token_request(csr.clone(), token.clone()))
        .await
        .expect("first use succeeds");
    let issued_after_first = status_total(&ca).await;
    let (code, message) = code_and_message(
        client
            .certify(token_request(csr, token))
            .await
            .expect_err("second use refused"),
    );
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("already used"), "{message}");
    assert_eq!(
        status_total(&ca).await,
        issued_after_first,
        "nothing written"
    );
}

async fn status_total(ca: &TestCa) -> u64 {
    ca.admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .issued_total
}

async fn restart_keeps_roots_certificates_and_renewability(backend: Backend) {
    let mut ca = TestCa::start_with_store(backend).await;
    let bundle_before = ca.bundle().roots().to_vec();
    let (key, issued) = ca.bootstrap("/ns/a/sa/durable").await;
    ca.restart().await;
    assert_eq!(
        ca.bundle().roots(),
        bundle_before.as_slice(),
        "same roots after restart"
    );
    let record = ca
        .admin()
        .await
        .get_certificate(GetCertificateRequest {
            serial: issued.serial.clone(),
        })
        .await
        .expect("certificate still recorded")
        .into_inner();
    assert_eq!(record.spiffe_id, issued.spiffe_id);
    assert_eq!(record.certificate_der, issued.chain_der[0]);
    assert_eq!(record.issued_via, "join_token");
    let renewed = ca
        .workload(Some(&identity_of(&key, &issued)))
        .await
        .certify(renewal_request(key.csr_der(None).expect("csr")))
        .await
        .expect("renewal after restart")
        .into_inner();
    assert_eq!(renewed.spiffe_id, issued.spiffe_id);
    let bundle = ca
        .workload(None)
        .await
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("bundle")
        .into_inner();
    assert_eq!(bundle.version, 1);
}

async fn a_thousand_concurrent_issuances_get_distinct_serials_that_survive_restart(
    backend: Backend,
) {
    let mut ca = TestCa::start_with_store(backend).await;
    let admin = ca.admin().await;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut admin = admin.clone();
        let spiffe_id = ca.id(&format!("/ns/load/sa/w{i}")).to_string();
        tasks.push(tokio::spawn(async move {
            let key = WorkloadKey::generate().expect("key");
            admin
                .issue_certificate(IssueCertificateRequest {
                    csr_der: key.csr_der(None).expect("csr"),
                    spiffe_id,
                    dns_names: vec![],
                    ttl_seconds: 0,
                })
                .await
                .expect("issuance succeeds")
                .into_inner()
                .serial
        }));
    }
    let mut serials = HashSet::new();
    for task in tasks {
        serials.insert(task.await.expect("task"));
    }
    assert_eq!(serials.len(), 1000, "every serial distinct");
    ca.restart().await;
    let mut admin = ca.admin().await;
    for serial in &serials {
        admin
            .get_certificate(GetCertificateRequest {
                serial: serial.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("serial {serial} lost after restart: {e}"));
    }
}

async fn every_issuance_and_token_use_is_audited(backend: Backend) {
    let ca = TestCa::start_with_store(backend).await;
    let (_, issued) = ca.bootstrap("/ns/a/sa/audited").await;
    let events = ca
        .admin()
        .await
        .list_audit_events(ListAuditEventsRequest {
            after_sequence: 0,
            limit: 0,
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    let kinds_for_serial: Vec<&str> = events
        .iter()
        .filter(|e| e.serial == issued.serial)
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        kinds_for_serial,
        vec!["certificate_issued", "join_token_used"]
    );
    assert!(events.iter().any(|e| e.kind == "join_token_created"
        && e.spiffe_id == issued.spiffe_id
        && e.actor.ends_with("/trellis/admin/default")));
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert!(
        events.iter().all(|e| !e.detail.contains("trellis-jt-")),
        "no token in the log"
    );
}

on_both_stores!(
    a_join_token_works_once,
    restart_keeps_roots_certificates_and_renewability,
    a_thousand_concurrent_issuances_get_distinct_serials_that_survive_restart,
    every_issuance_and_token_use_is_audited,
);
