//! The server as a whole: trust-bundle streaming, gRPC health, interoperability with
//! openssl, post-quantum key exchange, listing, and the real binary's configuration
//! handling.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use trellis_identity::tls::{self, Versions, kx_group_name};
use trellis_identity::{IdMatcher, TrustBundle, pem};
use trellis_proto::admin::v1::{
    GetStatusRequest, IssueCertificateRequest, ListCertificatesRequest,
};
use trellis_proto::ca::v1::{GetTrustBundleRequest, WatchTrustBundleRequest};

#[tokio::test]
async fn watch_sends_the_bundle_at_once_and_again_on_every_change() {
    let ca = TestCa::start().await;
    let mut client = ca.workload(None).await;
    let mut stream = client
        .watch_trust_bundle(WatchTrustBundleRequest {})
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("ok").expect("first message");
    let direct = client
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("get")
        .into_inner();
    assert_eq!(first, direct);

    // Publish a bundle with a second root (another CA's) through the CA's test hook.
    let other = TestCa::start().await;
    let mut roots = ca.bundle().roots().to_vec();
    roots.extend(other.bundle().roots().iter().cloned());
    ca.running()
        .publish_bundle(TrustBundle::new(ca.trust_domain(), 2, roots).expect("bundle"));
    let second = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("change arrives within 2 s")
        .expect("ok")
        .expect("message");
    assert_eq!(second.version, 2);
    assert_eq!(second.root_certificates_der.len(), 2);
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let ca = TestCa::start().await;
    let mut health = HealthClient::new(ca.channel(None).await);
    for service in ["", "trellis.ca.v1.WorkloadCA", "trellis.admin.v1.Admin"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
}

#[tokio::test]
async fn openssl_verifies_issued_chains_and_connects_to_the_ca() {
    let ca = TestCa::start().await;
    let (_, issued) = ca.bootstrap("/ns/a/sa/interop").await;
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, certs: &[Vec<u8>]| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem::certs_to_pem(certs)).expect("write");
        path
    };
    let leaf = write("leaf.pem", &issued.chain_der[..1]);
    let intermediate = write("intermediate.pem", &issued.chain_der[1..]);
    let bundle = write(
        "bundle.pem",
        &ca.bundle()
            .roots()
            .iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>(),
    );
    let output = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&bundle)
        .arg("-untrusted")
        .arg(&intermediate)
        .arg("-purpose")
        .arg("sslclient")
        .arg(&leaf)
        .output()
        .expect("openssl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(": OK"),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Key usages as openssl reads them (X509-SVID, section 4.3): a signing certificate
    // signs certificates and CRLs only; digitalSignature is the leaf's.
    let key_usage = |file: &std::path::Path| {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "keyUsage", "-in"])
            .arg(file)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().skip(1).map(str::trim).collect::<String>()
    };
    let root = write(
        "root.pem",
        &ca.bundle().roots()[..1]
            .iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>(),
    );
    assert_eq!(key_usage(&root), "Certificate Sign, CRL Sign");
    assert_eq!(key_usage(&intermediate), "Certificate Sign, CRL Sign");
    assert_eq!(key_usage(&leaf), "Digital Signature");

    // openssl as a TLS client verifies the CA's serving chain by host name (127.0.0.1).
    let addr = ca.running().addr;
    let output = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-alpn",
                "h2",
                "-verify_return_error",
                "-verify_ip",
                "127.0.0.1",
            ])
            .arg("-CAfile")
            .arg(&bundle)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    assert!(stdout.contains("ALPN protocol: h2"), "{stdout}");
    // An openssl without ML-KEM (before 3.5) falls back to X25519; pinned to the groups
    // OpenSSL 3.0 offers first, so that this holds on any version.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string(), "-alpn", "h2"])
            .args(["-groups", "X25519:P-256:P-384"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Server Temp Key: X25519"), "{stdout}");
}

#[tokio::test]
async fn the_cli_and_sidecar_client_config_negotiates_the_hybrid_post_quantum_group_with_the_ca() {
    let ca = TestCa::start().await;
    let admin = ca.admin_identity();
    // As `trellis` (cli/src/client.rs) and the sidecar's agent build it.
    let config = tls::client_config(
        ca.bundle(),
        IdMatcher::exact(ca.id("/trellis/ca")),
        Some(&admin),
        Versions::Tls13,
        &[trellis_proto::channel::ALPN_H2],
    )
    .expect("client config");
    let tcp = TcpStream::connect(ca.running().addr)
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake with the CA");
    let (_, conn) = tls.get_ref();
    let group = conn.negotiated_key_exchange_group().expect("a group");
    assert_eq!(kx_group_name(group.name()), "X25519MLKEM768");
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn listing_filters_by_identity_expiry_and_root() {
    let ca = TestCa::start().await;
    let mut admin = ca.admin().await;
    let issue = |path: &str, ttl: u32| IssueCertificateRequest {
        csr_der: trellis_identity::WorkloadKey::generate()
            .expect("key")
            .csr_der(None)
            .expect("csr"),
        spiffe_id: ca.id(path).to_string(),
        dns_names: vec!["api.internal".into()],
        ttl_seconds: ttl,
    };
    let short = admin
        .issue_certificate(issue("/ns/a/sa/short", 300))
        .await
        .expect("issue")
        .into_inner();
    admin
        .issue_certificate(issue("/ns/a/sa/long", 7200))
        .await
        .expect("issue");
    let lister = admin.clone();
    let list = |filter: ListCertificatesRequest| {
        let mut admin = lister.clone();
        async move {
            admin
                .list_certificates(filter)
                .await
                .expect("list")
                .into_inner()
                .certificates
        }
    };
    let by_id = list(ListCertificatesRequest {
        spiffe_id: short.spiffe_id.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].serial, short.serial);
    assert_eq!(by_id[0].dns_names, vec!["api.internal".to_owned()]);
    assert_eq!(by_id[0].issued_via, "admin");
    let expiring = list(ListCertificatesRequest {
        expiring_within_seconds: 600,
        ..Default::default()
    })
    .await;
    assert!(expiring.iter().any(|c| c.serial == short.serial));
    assert!(expiring.iter().all(|c| !c.spiffe_id.ends_with("/long")));
    let status = admin
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let root_id = status.roots[0].id.clone();
    assert_eq!(status.roots[0].state, "active");
    let by_root = list(ListCertificatesRequest {
        root_id,
        ..Default::default()
    })
    .await;
    assert!(by_root.len() >= 2);
    let by_other_root = list(ListCertificatesRequest {
        root_id: "0000000000000000".into(),
        ..Default::default()
    })
    .await;
    assert!(by_other_root.is_empty());
    // The DNS name is really in the certificate.
    let info = trellis_identity::CertInfo::parse(&by_id[0].certificate_der).expect("parses");
    assert_eq!(info.dns_names, vec!["api.internal".to_owned()]);
}

#[test]
fn the_binary_rejects_bad_configuration_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("ca.toml");
    std::fs::write(&config, "trust_domain = \"Not Valid\"\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_trellis-ca"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("trust_domain"), "{stderr}");

    std::fs::write(
        &config,
        "trust_domain = \"example.org\"\nmax_ttl = \"2h\"\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_trellis-ca"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .expect("binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("example.org"));
    // Flags and environment override the file.
    let output = Command::new(env!("CARGO_BIN_EXE_trellis-ca"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .env("TRELLIS_TRUST_DOMAIN", "from-env.org")
        .output()
        .expect("binary runs");
    assert!(String::from_utf8_lossy(&output.stdout).contains("from-env.org"));
}

#[test]
fn the_annotated_example_config_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/ca.example.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_trellis-ca"))
        .arg("--config")
        .arg(example)
        .arg("--check-config")
        .output()
        .expect("binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
