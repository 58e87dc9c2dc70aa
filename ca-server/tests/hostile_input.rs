//! Hostile input at the CA's TLS port and APIs that `refusals.rs` does not cover: bytes that
//! are not TLS, handshakes that never finish, a renewal certificate that is not valid yet,
//! CSRs with huge extensions, and oversized admin requests. Each case checks that the
//! server refuses, frees the connection, and keeps serving everyone else.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use trellis_identity::profile::LeafSpec;
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{CertInfo, IdMatcher, WorkloadKey};
use trellis_proto::admin::v1::AddRootRequest;
use trellis_proto::ca::v1::GetTrustBundleRequest;

/// Longer than the CA's TLS handshake timeout (10 s, `server.rs`), with room for a loaded
/// machine; a connection still open after this was not cut off.
const CUT_OFF: Duration = Duration::from_secs(30);

/// Reads until the server closes the connection; `None` if it is still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut received)).await {
        Err(_) => None,
        // A reset also ends the connection.
        Ok(_) => Some(received),
    }
}

/// The CA still answers a real client.
async fn still_serving(ca: &TestCa) {
    ca.workload(None)
        .await
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("the CA keeps serving");
}

/// The first flight of a real TLS 1.3 client (a ClientHello for the CA's name).
fn client_hello(ca: &TestCa) -> Vec<u8> {
    let config = tls::client_config(
        ca.bundle(),
        IdMatcher::exact(ca.id("/trellis/ca")),
        None,
        Versions::Tls13,
        &[trellis_proto::channel::ALPN_H2],
    )
    .expect("client config");
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello");
    assert!(hello.len() > 100, "a ClientHello: {} bytes", hello.len());
    hello
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("TCP connect")
}

#[tokio::test]
async fn garbage_and_plaintext_on_the_tls_port_are_dropped_and_the_ca_keeps_serving() {
    let ca = TestCa::start().await;
    let addr = ca.running().addr;
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "HTTP/1.1",
            b"GET /crl.pem HTTP/1.1\r\nHost: ca\r\n\r\n".to_vec(),
        ),
        (
            "plaintext HTTP/2 (h2c) preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        (
            "a TLS record header announcing 16 KiB of junk",
            [&[0x16, 0x03, 0x01, 0x40, 0x00][..], &[0xAB; 300]].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut stream = connect(addr).await;
        // The server may close before it has read everything; that is a refusal too.
        let _ = stream.write_all(&bytes).await;
        let received = read_until_closed(&mut stream, CUT_OFF)
            .await
            .unwrap_or_else(|| panic!("{what}: the CA kept the connection open"));
        // At most a TLS alert comes back; never an HTTP or gRPC answer.
        assert!(
            received.is_empty() || received[0] == 0x15,
            "{what}: got {:?}",
            String::from_utf8_lossy(&received)
        );
        still_serving(&ca).await;
    }
}

#[tokio::test]
async fn handshakes_that_never_finish_are_cut_off_while_others_are_served() {
    let ca = TestCa::start().await;
    let addr = ca.running().addr;
    let hello = client_hello(&ca);
    // A client that connects and sends nothing, one that sends half a ClientHello, and
    // one that sends a whole ClientHello and then never answers the server.
    let mut silent = connect(addr).await;
    let mut partial = connect(addr).await;
    partial
        .write_all(&hello[..hello.len() / 2])
        .await
        .expect("send half a ClientHello");
    let mut stalled = connect(addr).await;
    stalled.write_all(&hello).await.expect("send a ClientHello");
    // While they hang, everyone else is served.
    for _ in 0..3 {
        still_serving(&ca).await;
        ca.bootstrap("/ns/a/sa/meanwhile").await;
    }
    for (what, stream) in [
        ("silent", &mut silent),
        ("partial ClientHello", &mut partial),
        ("stalled after ClientHello", &mut stalled),
    ] {
        assert!(
            read_until_closed(stream, CUT_OFF).await.is_some(),
            "{what}: the CA did not free the connection after its handshake timeout"
        );
    }
    still_serving(&ca).await;
}

#[tokio::test]
async fn a_renewal_certificate_that_is_not_valid_yet_is_unauthenticated() {
    let ca = TestCa::start().await;
    // Signed by the CA's own intermediate, but with a NotBefore two hours from now.
    let key = WorkloadKey::generate().expect("key");
    let spki = key.public_key_der();
    let spec = LeafSpec {
        spiffe_id: ca.id("/ns/a/sa/early"),
        dns_names: Vec::new(),
        public_point: spki[spki.len() - 65..].to_vec(),
        lifetime: Duration::from_secs(3600),
    };
    let signer = intermediate_of(&ca);
    let leaf = signer
        .sign_leaf(&spec, SystemTime::now() + Duration::from_secs(2 * 3600))
        .expect("signed");
    let identity = Identity {
        chain: vec![leaf.der, signer.cert.clone()],
        key: key.private_key_der(),
    };
    let status = ca
        .workload(Some(&identity))
        .await
        .certify(renewal_request(key.csr_der(None).expect("csr")))
        .await
        .expect_err("not-yet-valid certificate refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("not valid until"),
        "{}",
        status.message()
    );
    still_serving(&ca).await;
}

fn csr_with_extension(size: usize) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    // An unknown private-arc extension: OCTET STRING of `size` bytes.
    let mut content = vec![0x04, 0x82, (size >> 8) as u8, size as u8];
    content.extend(std::iter::repeat_n(0x41, size));
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 55555, 1],
        content,
    )];
    csr_from(params, &key)
}

#[tokio::test]
async fn csrs_with_huge_extensions_are_refused_and_large_ones_are_not_copied() {
    let ca = TestCa::start().await;
    let token = ca.token("/ns/a/sa/ext").await;
    let mut client = ca.workload(None).await;

    // Over the CSR limit (8 KiB) but under the gRPC message limit: InvalidArgument.
    let status = client
        .certify(token_request(csr_with_extension(40_000), token.clone()))
        .await
        .expect_err("huge CSR refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("limit"), "{}", status.message());

    // A large unknown extension within the limit: the CA applies its own profile and does
    // not copy it into the certificate. The token survived the refusal above.
    let issued = client
        .certify(token_request(csr_with_extension(6_000), token))
        .await
        .expect("issued")
        .into_inner();
    let leaf = &issued.chain_der[0];
    assert!(leaf.len() < 2_000, "leaf is {} bytes", leaf.len());
    assert!(
        !leaf.windows(64).any(|w| w.iter().all(|&b| b == 0x41)),
        "the requested extension was copied into the certificate"
    );
    let info = CertInfo::parse(leaf).expect("leaf parses");
    assert_eq!(
        info.spiffe_id().expect("SPIFFE ID"),
        ca.id("/ns/a/sa/ext"),
        "the CA decided the identity"
    );
}

#[tokio::test]
async fn an_oversized_admin_request_is_refused_and_the_admin_api_keeps_serving() {
    let ca = TestCa::start().await;
    let mut admin = ca.admin().await;
    let status = admin
        .add_root(AddRootRequest {
            certificate_pem: vec![b'A'; 200 * 1024],
            ..Default::default()
        })
        .await
        .expect_err("oversized refused");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    ca.token("/ns/a/sa/after").await;
}
