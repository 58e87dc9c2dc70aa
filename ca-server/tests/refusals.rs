//! Bad input gets the right gRPC code and a message naming the problem; nothing is written;
//! the server keeps serving.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, SanType,
};
use tonic::Code;
use trellis_identity::WorkloadKey;
use trellis_identity::clock::ManualClock;
use trellis_proto::admin::v1::{
    CreateJoinTokenRequest, GetCertificateRequest, GetStatusRequest, IssueCertificateRequest,
};
use trellis_proto::ca::v1::GetTrustBundleRequest;

async fn issued_total(ca: &TestCa) -> u64 {
    ca.admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .issued_total
}

fn p256_csr_with(edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    edit(&mut params);
    csr_from(params, &key)
}

fn openssl_csr(args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("csr.der");
    let status = Command::new("openssl")
        .args([
            "req", "-new", "-nodes", "-subj", "/O=test", "-outform", "DER", "-keyout",
        ])
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(&out)
        .args(args)
        .status()
        .expect("openssl is installed (scripts/install-test-deps.sh)");
    assert!(status.success(), "openssl req {args:?}");
    std::fs::read(out).expect("csr written")
}

/// Every malformed or unacceptable CSR is refused with InvalidArgument and a message that
/// names the problem; the token survives (it is consumed only by a successful issuance).
#[tokio::test]
async fn bad_csrs_are_refused_and_leave_the_token_usable() {
    let ca = TestCa::start().await;
    let token = ca.token("/ns/a/sa/csr").await;
    let mut client = ca.workload(None).await;
    let total_before = issued_total(&ca).await;

    let good = WorkloadKey::generate()
        .expect("key")
        .csr_der(None)
        .expect("csr");
    let mut bad_signature = good.clone();
    let last = bad_signature.len() - 3;
    bad_signature[last] ^= 0x55;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty"),
        ("garbage", b"definitely not DER".to_vec(), "not valid DER"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "not valid DER",
        ),
        ("bad signature", bad_signature, "signature does not verify"),
        (
            "P-384 key",
            csr_from(
                CertificateParams::default(),
                &KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("key"),
            ),
            "ECDSA P-384",
        ),
        (
            "RSA 1024",
            openssl_csr(&["-newkey", "rsa:1024"]),
            "too weak",
        ),
        (
            "RSA 2048",
            openssl_csr(&["-newkey", "rsa:2048"]),
            "ECDSA P-256 certificates only",
        ),
        (
            "CA=true",
            p256_csr_with(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            "CA=true",
        ),
        (
            "extra DNS SAN",
            p256_csr_with(|p| {
                p.subject_alt_names =
                    vec![SanType::DnsName("evil.example".try_into().expect("dns"))]
            }),
            "extra SAN",
        ),
        (
            "two URI SANs",
            p256_csr_with(|p| {
                p.subject_alt_names = vec![
                    SanType::URI(
                        "spiffe://cluster.local/ns/a/sa/csr"
                            .try_into()
                            .expect("uri"),
                    ),
                    SanType::URI("spiffe://cluster.local/ns/b/sa/x".try_into().expect("uri")),
                ]
            }),
            "several URI SANs",
        ),
        ("oversized", vec![0x30; 9000], "limit"),
    ];
    for (name, csr, expected) in cases {
        let status = client
            .certify(token_request(csr, token.clone()))
            .await
            .expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{name}: message {:?} should mention {expected:?}",
            status.message()
        );
    }
    assert_eq!(issued_total(&ca).await, total_before, "nothing was written");
    // The token was not consumed by any refused request.
    client
        .certify(token_request(good, token))
        .await
        .expect("the token still works after refusals");
}

#[tokio::test]
async fn a_csr_naming_another_identity_is_permission_denied() {
    let ca = TestCa::start().await;
    let token = ca.token("/ns/a/sa/honest").await;
    let csr = p256_csr_with(|p| {
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/a/sa/admin-db"
                .try_into()
                .expect("uri"),
        )]
    });
    let status = ca
        .workload(None)
        .await
        .certify(token_request(csr, token.clone()))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("/ns/a/sa/admin-db"),
        "{}",
        status.message()
    );
    // A CSR that restates the granted identity is fine.
    let honest = WorkloadKey::generate()
        .expect("key")
        .csr_der(Some(&ca.id("/ns/a/sa/honest")))
        .expect("csr");
    ca.workload(None)
        .await
        .certify(token_request(honest, token))
        .await
        .expect("matching URI SAN accepted");
}

#[tokio::test]
async fn missing_unknown_and_expired_credentials_are_unauthenticated() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ca = TestCa::start_with_clock(clock.clone()).await;
    let csr = || {
        WorkloadKey::generate()
            .expect("key")
            .csr_der(None)
            .expect("csr")
    };
    let mut client = ca.workload(None).await;

    let status = client
        .certify(renewal_request(csr()))
        .await
        .expect_err("no credential");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("no credential"),
        "{}",
        status.message()
    );

    let status = client
        .certify(token_request(csr(), "trellis-jt-00".into()))
        .await
        .expect_err("unknown token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("unknown join token"),
        "{}",
        status.message()
    );

    let token = ca.token("/ns/a/sa/late").await;
    clock.advance(Duration::from_secs(601));
    let status = client
        .certify(token_request(csr(), token))
        .await
        .expect_err("expired token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
}

#[tokio::test]
async fn expired_and_foreign_renewal_certificates_are_refused() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ca = TestCa::start_with_clock(clock.clone()).await;
    let other_ca = TestCa::start().await;

    // A certificate from another Trellis CA (same trust domain, different roots).
    let (foreign_key, foreign) = other_ca.bootstrap("/ns/a/sa/api").await;
    let status = ca
        .workload(Some(&identity_of(&foreign_key, &foreign)))
        .await
        .certify(renewal_request(foreign_key.csr_der(None).expect("csr")))
        .await
        .expect_err("foreign certificate refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("does not chain"),
        "{}",
        status.message()
    );

    // Our own certificate, once the clock has passed its NotAfter.
    let (key, issued) = ca.bootstrap("/ns/a/sa/api").await;
    clock.advance(Duration::from_secs(2 * 3600));
    let status = ca
        .workload(Some(&identity_of(&key, &issued)))
        .await
        .certify(renewal_request(key.csr_der(None).expect("csr")))
        .await
        .expect_err("expired certificate refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
}

#[tokio::test]
async fn malformed_and_reserved_spiffe_ids_are_invalid_arguments() {
    let ca = TestCa::start().await;
    let mut admin = ca.admin().await;
    let cases = [
        ("spiffe://cluster.local/ns//sa", "empty segment"),
        ("spiffe://Cluster.local/ns/a", "trust domain contains 'C'"),
        (
            "https://cluster.local/ns/a",
            "must start with \"spiffe://\"",
        ),
        ("spiffe://cluster.local/ns/a?x=1", "query"),
        (
            "spiffe://other.domain/ns/a",
            "not in this CA's trust domain",
        ),
        ("spiffe://cluster.local/trellis/admin/evil", "reserved"),
        ("spiffe://cluster.local", "has no path"),
    ];
    for (id, expected) in cases {
        let status = admin
            .create_join_token(CreateJoinTokenRequest {
                spiffe_id: id.into(),
                ttl_seconds: 0,
            })
            .await
            .expect_err(id);
        assert_eq!(status.code(), Code::InvalidArgument, "{id}");
        assert!(
            status.message().contains(expected),
            "{id}: {}",
            status.message()
        );
    }
    let status = admin
        .create_join_token(CreateJoinTokenRequest {
            spiffe_id: "spiffe://cluster.local/ns/a".into(),
            ttl_seconds: 100_000,
        })
        .await
        .expect_err("ttl too long");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn the_admin_api_needs_an_admin_certificate() {
    let ca = TestCa::start().await;
    let status = ca
        .admin_with(None)
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect_err("anonymous refused");
    assert_eq!(status.code(), Code::Unauthenticated);

    let (key, issued) = ca.bootstrap("/ns/a/sa/sneaky").await;
    let status = ca
        .admin_with(Some(&identity_of(&key, &issued)))
        .await
        .issue_certificate(IssueCertificateRequest {
            csr_der: key.csr_der(None).expect("csr"),
            spiffe_id: ca.id("/ns/a/sa/anything").to_string(),
            dns_names: vec![],
            ttl_seconds: 0,
        })
        .await
        .expect_err("workload certificate is not an admin");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("not an admin"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_server_keeps_serving() {
    let ca = TestCa::start().await;
    let mut client = ca.workload(None).await;
    let status = client
        .certify(token_request(vec![0u8; 200 * 1024], "x".into()))
        .await
        .expect_err("oversized refused");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    // Same client, same server: still serving.
    client
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("server still serves");
    ca.bootstrap("/ns/a/sa/after").await;
}

#[tokio::test]
async fn unknown_serials_are_not_found_and_bad_serials_invalid() {
    let ca = TestCa::start().await;
    let mut admin = ca.admin().await;
    let status = admin
        .get_certificate(GetCertificateRequest {
            serial: "00:11:22".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = admin
        .get_certificate(GetCertificateRequest {
            serial: "xyz".into(),
        })
        .await
        .expect_err("not hex");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn concurrent_redemptions_of_one_token_issue_exactly_one_certificate() {
    let ca = TestCa::start().await;
    let token = ca.token("/ns/a/sa/race").await;
    let client = ca.workload(None).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = client.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let csr = WorkloadKey::generate()
                .expect("key")
                .csr_der(None)
                .expect("csr");
            client.certify(token_request(csr, token)).await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert!(
                    status.message().contains("already used"),
                    "{}",
                    status.message()
                );
            }
        }
    }
    assert_eq!(ok, 1, "a join token is single use even under a race");
}

/// Signs an admin certificate with the CA's real intermediate key, read from its data
/// directory, as someone holding a copy of that key could: it verifies against the bundle,
/// but the CA never issued or recorded it.
fn forged_admin(ca: &TestCa) -> trellis_identity::tls::Identity {
    use trellis_identity::profile::{LeafSpec, SigningCa};
    let keys = ca.data_dir().join("keys");
    let key_file = std::fs::read_dir(&keys)
        .expect("keys directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("intermediate-"))
        })
        .expect("the intermediate key in the data directory");
    let key = KeyPair::from_pem(&std::fs::read_to_string(key_file).expect("read key"))
        .expect("intermediate key PEM");
    let intermediate = ca.admin_identity().chain[1].clone();
    let signer = SigningCa::new(intermediate.clone(), key).expect("the CA's intermediate");
    let forged_key = WorkloadKey::generate().expect("key");
    let leaf = signer
        .sign_leaf(
            &LeafSpec {
                spiffe_id: ca.id("/trellis/admin/default"),
                dns_names: Vec::new(),
                public_point: forged_key.key_pair().public_key_raw().to_vec(),
                lifetime: Duration::from_secs(3600),
            },
            SystemTime::now(),
        )
        .expect("sign");
    trellis_identity::tls::Identity {
        chain: vec![leaf.der, intermediate],
        key: forged_key.private_key_der(),
    }
}

#[tokio::test]
async fn an_admin_certificate_the_ca_never_recorded_is_refused() {
    let ca = TestCa::start().await;
    ca.admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("the admin certificate the CA wrote (and recorded) is accepted");

    let forged = forged_admin(&ca);
    let status = ca
        .admin_with(Some(&forged))
        .await
        .create_join_token(CreateJoinTokenRequest {
            spiffe_id: ca.id("/ns/a/sa/anything").to_string(),
            ttl_seconds: 0,
        })
        .await
        .expect_err("an admin certificate the CA never issued");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("not in this CA's records"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn an_expired_admin_certificate_is_told_how_to_get_a_new_one() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ca = TestCa::start_with_clock(clock.clone()).await;
    // Past the admin certificate's 90 days, within the intermediate's year.
    clock.advance(Duration::from_secs(91 * 86_400));
    let status = ca
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect_err("expired admin certificate");
    assert_eq!(status.code(), Code::Unauthenticated);
    let message = status.message();
    assert!(
        message.contains("admin certificate expired")
            && message.contains("new one")
            && message.contains("trellis login"),
        "{message}"
    );
    assert!(
        !message.contains("join token") && !message.contains("renew it"),
        "advice for workloads does not apply to admin certificates: {message}"
    );
}
