//! Revocation at the CA: durable, audited, streamed, refused at renewal, and published as a
//! standard CRL that curl fetches and openssl verifies.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tonic::Code;
use trellis_identity::clock::{ManualClock, SystemClock};
use trellis_identity::pem;
use trellis_proto::admin::v1::{
    GetCertificateRequest, ListAuditEventsRequest, RevokeCertificateRequest,
};
use trellis_proto::ca::v1::WatchRevocationsRequest;

fn revoke_serial(serial: &str) -> RevokeCertificateRequest {
    RevokeCertificateRequest {
        serial: serial.into(),
        spiffe_id: String::new(),
        reason: "key compromise".into(),
        reason_code: 0,
    }
}

async fn a_revoked_certificate_cannot_renew_and_is_streamed_and_audited(backend: Backend) {
    let ca = TestCa::start_with_store(backend).await;
    let (key, issued) = ca.bootstrap("/ns/a/sa/compromised").await;
    let mut stream = ca
        .workload(None)
        .await
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .expect("watch")
        .into_inner();
    let initial = stream.message().await.expect("ok").expect("first list");
    assert!(initial.revoked.is_empty());

    let revoked = ca
        .admin()
        .await
        .revoke_certificate(revoke_serial(&issued.serial))
        .await
        .expect("revoked")
        .into_inner()
        .serials;
    assert_eq!(revoked, vec![issued.serial.clone()]);

    let list = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("pushed within 2 s")
        .expect("ok")
        .expect("list");
    assert_eq!(list.revoked.len(), 1);
    assert_eq!(list.revoked[0].serial, issued.serial);
    assert_eq!(list.revoked[0].reason, "key compromise");
    assert!(list.version > initial.version);

    let status = ca
        .workload(Some(&identity_of(&key, &issued)))
        .await
        .certify(renewal_request(key.csr_der(None).expect("csr")))
        .await
        .expect_err("renewal refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{}", status.message());

    let mut admin = ca.admin().await;
    let record = admin
        .get_certificate(GetCertificateRequest {
            serial: issued.serial.clone(),
        })
        .await
        .expect("record")
        .into_inner();
    assert!(record.revoked_at.is_some());
    assert_eq!(record.revocation_reason, "key compromise");
    let events = admin
        .list_audit_events(ListAuditEventsRequest {
            after_sequence: 0,
            limit: 0,
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "certificate_revoked" && e.serial == issued.serial)
    );

    // Revoking again is idempotent: nothing new.
    let again = admin
        .revoke_certificate(revoke_serial(&issued.serial))
        .await
        .expect("idempotent")
        .into_inner()
        .serials;
    assert!(again.is_empty());
}

async fn revoking_an_identity_revokes_all_its_live_certificates_and_survives_restart(
    backend: Backend,
) {
    let mut ca = TestCa::start_with_store(backend).await;
    let (key, first) = ca.bootstrap("/ns/a/sa/many").await;
    let second = ca
        .workload(Some(&identity_of(&key, &first)))
        .await
        .certify(renewal_request(key.csr_der(None).expect("csr")))
        .await
        .expect("renewed")
        .into_inner();
    let mut serials = ca
        .admin()
        .await
        .revoke_certificate(RevokeCertificateRequest {
            serial: String::new(),
            spiffe_id: first.spiffe_id.clone(),
            reason: "decommissioned".into(),
            reason_code: 0,
        })
        .await
        .expect("revoked")
        .into_inner()
        .serials;
    serials.sort();
    let mut expected = vec![first.serial.clone(), second.serial.clone()];
    expected.sort();
    assert_eq!(serials, expected);

    ca.restart().await;
    let list = ca
        .workload(None)
        .await
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .expect("watch")
        .into_inner()
        .message()
        .await
        .expect("ok")
        .expect("list");
    assert_eq!(list.revoked.len(), 2, "revocations survive a restart");
}

#[tokio::test]
async fn bad_revocation_requests_are_refused() {
    let ca = TestCa::start().await;
    let mut admin = ca.admin().await;
    let cases = [
        (revoke_serial("00ff00ff"), Code::NotFound),
        (revoke_serial("not-hex"), Code::InvalidArgument),
        (RevokeCertificateRequest::default(), Code::InvalidArgument),
        (
            RevokeCertificateRequest {
                serial: "00".into(),
                spiffe_id: "spiffe://cluster.local/ns/a".into(),
                reason: String::new(),
                reason_code: 0,
            },
            Code::InvalidArgument,
        ),
        (
            RevokeCertificateRequest {
                serial: String::new(),
                spiffe_id: "spiffe://cluster.local/ns/nobody".into(),
                reason: String::new(),
                reason_code: 0,
            },
            Code::NotFound,
        ),
    ];
    for (request, code) in cases {
        let status = admin
            .revoke_certificate(request.clone())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{request:?}: {}", status.message());
    }
}

// Multi-threaded: curl and openssl block a thread while the in-process CA must answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crl_is_fetched_by_curl_and_verified_by_openssl() {
    let ca = TestCa::start_configured(Arc::new(SystemClock), |c| {
        c.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let (_, revoked) = ca.bootstrap("/ns/a/sa/bad").await;
    let (_, good) = ca.bootstrap("/ns/a/sa/good").await;
    let (_, retired) = ca.bootstrap("/ns/a/sa/retired").await;
    let (_, left) = ca.bootstrap("/ns/a/sa/left").await;
    let mut admin = ca.admin().await;
    admin
        .revoke_certificate(revoke_serial(&revoked.serial))
        .await
        .expect("revoked");
    // A code given as such; free text that names no reason gives no code.
    for (serial, reason, reason_code) in [
        (&retired.serial, "decommissioned", 5),
        (&left.serial, "left the company", 0),
    ] {
        admin
            .revoke_certificate(RevokeCertificateRequest {
                serial: serial.clone(),
                spiffe_id: String::new(),
                reason: reason.into(),
                reason_code,
            })
            .await
            .expect("revoked");
    }
    let refused = admin
        .revoke_certificate(RevokeCertificateRequest {
            serial: good.serial.clone(),
            spiffe_id: String::new(),
            reason: String::new(),
            reason_code: 6,
        })
        .await
        .expect_err("certificateHold is not offered");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    let http = ca.running().http_addr.expect("http endpoint");
    let dir = tempfile::tempdir().expect("dir");
    let crl = dir.path().join("crl.pem");
    let fetch = Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&crl)
        .arg(format!("http://{http}/crl.pem"))
        .output()
        .expect("curl runs");
    assert!(
        fetch.status.success(),
        "{}",
        String::from_utf8_lossy(&fetch.stderr)
    );
    let write = |name: &str, der: &[Vec<u8>]| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem::certs_to_pem(der)).expect("write");
        path
    };
    let roots = write(
        "roots.pem",
        &ca.bundle()
            .roots()
            .iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>(),
    );
    let intermediate = write("intermediate.pem", &revoked.chain_der[1..]);

    // The CRL's signature verifies against its issuer, and it lists the revoked serial.
    let text = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(&intermediate)
        .output()
        .expect("openssl runs");
    let plain = String::from_utf8_lossy(&text.stdout).into_owned();
    let out = plain.to_uppercase();
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(err.contains("verify OK"), "{err}");
    // Each entry's reason code as openssl reads it (RFC 5280, section 5.3.1).
    let entry = |serial: &str| -> String {
        plain
            .split("Serial Number: ")
            .find(|e| e.to_uppercase().starts_with(&serial.to_uppercase()))
            .unwrap_or_else(|| panic!("{serial} listed: {plain}"))
            .to_owned()
    };
    let reason_of = |serial: &str| -> Option<String> {
        let entry = entry(serial);
        let mut lines = entry.lines().map(str::trim);
        lines.find(|l| l.starts_with("X509v3 CRL Reason Code"))?;
        lines.next().map(str::to_owned)
    };
    assert_eq!(
        reason_of(&revoked.serial).as_deref(),
        Some("Key Compromise")
    );
    assert_eq!(
        reason_of(&retired.serial).as_deref(),
        Some("Cessation Of Operation")
    );
    assert_eq!(reason_of(&left.serial), None, "{}", entry(&left.serial));
    assert!(out.contains(&revoked.serial.to_uppercase()), "{out}");
    assert!(
        !out.contains(&good.serial.to_uppercase()),
        "only revoked serials are listed"
    );

    // openssl verify with CRL checking: the revoked leaf fails, the good one passes.
    let verify = |leaf_der: &[u8]| {
        let leaf = write("leaf.pem", &[leaf_der.to_vec()]);
        Command::new("openssl")
            .args(["verify", "-crl_check"])
            .arg("-CAfile")
            .arg(&roots)
            .arg("-untrusted")
            .arg(&intermediate)
            .arg("-CRLfile")
            .arg(&crl)
            .arg(&leaf)
            .output()
            .expect("openssl runs")
    };
    let bad = verify(&revoked.chain_der[0]);
    let bad_out = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(
        !bad.status.success() && bad_out.contains("revoked"),
        "{bad_out}"
    );
    let ok = verify(&good.chain_der[0]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // DER form too, with the standard media type.
    let der = Command::new("curl")
        .args(["-sSf", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://{http}/crl"))
        .output()
        .expect("curl runs");
    assert!(String::from_utf8_lossy(&der.stdout).contains("application/pkix-crl"));
}

/// The number of a CRL file, as openssl reads it.
fn crl_number(crl: &std::path::Path) -> u64 {
    let out = Command::new("openssl")
        .args(["crl", "-noout", "-crlnumber", "-in"])
        .arg(crl)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .trim()
        .strip_prefix("crlNumber=0x")
        .unwrap_or_else(|| panic!("a CRL number: {text}"));
    u64::from_str_radix(hex, 16).expect("hex")
}

/// CRL numbers increase strictly per issuer (RFC 5280, section 5.2.3), even for CRLs
/// signed within one second (the clock stands still here) and across a restart.
async fn crl_numbers_increase_within_a_second_and_across_restarts(backend: Backend) {
    let clock = Arc::new(ManualClock::new(std::time::SystemTime::now()));
    let with_http = |c: &mut trellis_ca::Config| {
        c.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    };
    let mut ca = TestCa::start_on(backend, clock, with_http).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut numbers = Vec::new();
    for round in 0..4 {
        if round == 2 {
            ca.restart_configured(with_http).await;
        }
        let (_, issued) = ca.bootstrap(&format!("/ns/a/sa/crl-{round}")).await;
        ca.admin()
            .await
            .revoke_certificate(revoke_serial(&issued.serial))
            .await
            .expect("revoked");
        let http = ca.running().http_addr.expect("http endpoint");
        let crl = dir.path().join(format!("crl-{round}.pem"));
        let fetch = Command::new("curl")
            .args(["-sSf", "-o"])
            .arg(&crl)
            .arg(format!("http://{http}/crl.pem"))
            .output()
            .expect("curl runs");
        assert!(
            fetch.status.success(),
            "{}",
            String::from_utf8_lossy(&fetch.stderr)
        );
        numbers.push(crl_number(&crl));
    }
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {numbers:?}"
    );
}

on_both_stores!(
    a_revoked_certificate_cannot_renew_and_is_streamed_and_audited,
    revoking_an_identity_revokes_all_its_live_certificates_and_survives_restart,
);

on_both_stores!(
    multi_thread:
    crl_numbers_increase_within_a_second_and_across_restarts,
);
