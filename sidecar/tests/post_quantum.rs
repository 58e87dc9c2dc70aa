//! Post-quantum key exchange on the data path, with real peers: two sidecars negotiate the
//! hybrid X25519MLKEM768 by default, `openssl s_client` (no ML-KEM before OpenSSL 3.5) still
//! gets through with X25519, and with `tls.require_post_quantum` a peer without it is
//! refused either way and counted with its reason.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::mpsc;

use common::*;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use trellis_identity::tls::{KeyExchange, SpiffeClientVerifier, kx_group_name};
use trellis_identity::{IdMatcher, pem};
use trellis_sidecar::credentials::ALPN_TRELLIS;
use trellis_sidecar::metrics::Direction;

const CLIENT: &str = "/ns/shop/sa/web";
const SERVER: &str = "/ns/shop/sa/db";
const HYBRID: &str = "X25519MLKEM768";

/// The groups of a TLS stack without ML-KEM, the first three OpenSSL 3.0 offers by
/// default; named explicitly so that a test means "a peer without ML-KEM" on any OpenSSL.
const CLASSICAL_GROUPS: &str = "X25519:P-256:P-384";

/// The group a Trellis client (the identity crate's config, as every Trellis part builds
/// it) negotiates with the inbound listener at `addr`, read on the client's own side; the
/// session must also carry bytes to the app and back.
async fn group_seen_by_a_trellis_client(addr: SocketAddr, pki: &Pki) -> String {
    let leaf = pki.issue(CLIENT);
    let config = client_config(&pki.bundle, Some(&leaf.identity()));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = within("handshake", TlsConnector::from(config).connect(name, tcp))
        .await
        .unwrap();
    tls.write_all(b"hybrid?").await.unwrap();
    let mut back = [0u8; 7];
    within("echo", tls.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"hybrid?");
    let group = tls.get_ref().1.negotiated_key_exchange_group().unwrap();
    kx_group_name(group.name()).to_owned()
}

/// A leaf's chain, key and the bundle as PEM files in `dir`, for openssl.
fn write_pem_files(dir: &Path, pki: &Pki, leaf: &Leaf) {
    std::fs::write(dir.join("chain.pem"), pem::certs_to_pem(&leaf.chain)).unwrap();
    std::fs::write(dir.join("key.pem"), leaf.key.to_pem().as_bytes()).unwrap();
    std::fs::write(dir.join("bundle.pem"), pki.bundle.to_pem()).unwrap();
}

/// What one `openssl s_client` run saw.
struct Openssl {
    /// The line sent came back through the sidecar and the echo app.
    echoed: bool,
    /// stdout and stderr.
    output: String,
}

/// `openssl s_client` with the certificate in `dir` and ALPN `trellis/1`, plus `extra`
/// arguments: sends one line and waits (up to [`DEADLINE`]) for it to come back. Blocking:
/// call it on a blocking thread, the sidecar runs on the test's runtime.
fn openssl_s_client(addr: SocketAddr, dir: &Path, extra: &[&str]) -> Openssl {
    let chain = dir.join("chain.pem");
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(dir.join("bundle.pem"))
        .arg("-cert")
        .arg(&chain)
        .arg("-cert_chain")
        .arg(&chain)
        .arg("-key")
        .arg(dir.join("key.pem"))
        .args(["-alpn", "trellis/1"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs (scripts/install-test-deps.sh)");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (echo_tx, echo_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim() == "ping-pq" {
                let _ = echo_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // A lower-case first letter: s_client reads a line starting with Q, R, k or K as a
    // command.
    let _ = stdin.write_all(b"ping-pq\n");
    let echoed = echo_rx.recv_timeout(DEADLINE).is_ok();
    // End of input: s_client closes the connection and exits.
    drop(stdin);
    let stdout = reader.join().unwrap();
    let out = child.wait_with_output().unwrap();
    Openssl {
        echoed,
        output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

async fn openssl(addr: SocketAddr, dir: &Path, extra: &'static [&'static str]) -> Openssl {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || openssl_s_client(addr, &dir, extra))
        .await
        .unwrap()
}

#[tokio::test]
async fn two_sidecars_negotiate_the_hybrid_post_quantum_group_by_default() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (server_creds, _) = pki.credentials(SERVER);
    let (client_creds, _) = pki.credentials(CLIENT);
    let mut server = Sidecar::new(Some(server_creds), timeouts());
    let inbound = server.strict_inbound(app.addr).await;
    let admin = server.admin().await;
    let mut client = Sidecar::new(Some(client_creds), timeouts());
    let outbound = client.outbound(inbound, IdMatcher::exact(id(SERVER))).await;

    let data = payload(10_000);
    let back = within("through the pair", send_and_collect(outbound, data.clone()))
        .await
        .unwrap();
    assert_eq!(back, data);
    eventually("both sides counted the session", || {
        client.metrics.tls_sessions(Direction::Outbound, HYBRID) == 1
            && server.metrics.tls_sessions(Direction::Inbound, HYBRID) == 1
    })
    .await;
    assert_eq!(
        client.metrics.tls_sessions(Direction::Outbound, "x25519"),
        0
    );
    assert_eq!(server.metrics.tls_sessions(Direction::Inbound, "x25519"), 0);

    // The client's own view of a session with the inbound listener agrees.
    assert_eq!(group_seen_by_a_trellis_client(inbound, &pki).await, HYBRID);
    let (status, _, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    // Labelled by group and by cipher suite (a TLS 1.3 one, between two sidecars).
    assert!(
        text.lines().any(|l| l.starts_with(
            "trellis_sidecar_tls_sessions_total{direction=\"inbound\",group=\"X25519MLKEM768\",cipher_suite=\"TLS13_"
        ) && l.ends_with("\"} 2")),
        "{text}"
    );
}

#[tokio::test]
async fn openssl_without_ml_kem_still_gets_through_with_x25519() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (server_creds, _) = pki.credentials(SERVER);
    let mut server = Sidecar::new(Some(server_creds), timeouts());
    let inbound = server.strict_inbound(app.addr).await;
    let dir = tempfile::tempdir().unwrap();
    write_pem_files(dir.path(), &pki, &pki.issue(CLIENT));

    let run = openssl(inbound, dir.path(), &["-groups", CLASSICAL_GROUPS]).await;
    assert!(
        run.echoed,
        "openssl without ML-KEM was not let through: {}",
        run.output
    );
    // openssl's own account of the key exchange.
    assert!(
        run.output.contains("Server Temp Key: X25519"),
        "{}",
        run.output
    );
    eventually("the session counted as x25519", || {
        server.metrics.tls_sessions(Direction::Inbound, "x25519") == 1
    })
    .await;
    assert_eq!(server.metrics.tls_sessions(Direction::Inbound, HYBRID), 0);

    // The installed openssl with its own defaults, as a person would run it.
    let run = openssl(inbound, dir.path(), &[]).await;
    assert!(run.echoed, "openssl with its defaults: {}", run.output);
}

/// A TLS 1.3 server without ML-KEM (X25519 and P-256 only), presenting `leaf`.
fn classical_server_config(pki: &Pki, leaf: &Leaf) -> ServerConfig {
    let provider = CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let identity = leaf.identity();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(pki.bundle.clone())))
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![ALPN_TRELLIS.to_vec()];
    config
}

#[tokio::test]
async fn requiring_post_quantum_refuses_a_peer_without_it_and_counts_why() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let server_leaf = pki.issue(SERVER);
    let required = KeyExchange::PostQuantumRequired;
    let mut server = Sidecar::new(
        Some(server_leaf.credentials_with(&pki.bundle, required)),
        timeouts(),
    );
    let inbound = server.strict_inbound(app.addr).await;
    let dir = tempfile::tempdir().unwrap();
    write_pem_files(dir.path(), &pki, &pki.issue(CLIENT));

    // Inbound: openssl without ML-KEM, with a valid certificate, is refused and counted.
    let run = openssl(inbound, dir.path(), &["-groups", CLASSICAL_GROUPS]).await;
    assert!(!run.echoed, "accepted without ML-KEM: {}", run.output);
    eventually("the refusal counted with its reason", || {
        server.handshakes(true, false, "no_shared_kx_group") == 1
    })
    .await;
    assert_eq!(app.accepted.load(SeqCst), 0, "the app saw a connection");
    assert_eq!(server.metrics.tls_sessions(Direction::Inbound, "x25519"), 0);

    // A Trellis peer has it: through, with the hybrid group.
    assert_eq!(group_seen_by_a_trellis_client(inbound, &pki).await, HYBRID);
    assert_eq!(server.metrics.tls_sessions(Direction::Inbound, HYBRID), 1);

    // Outbound: an upstream without ML-KEM is refused before a byte is sent to it.
    let upstream = raw_tls_server_with(classical_server_config(&pki, &server_leaf)).await;
    let client_leaf = pki.issue(CLIENT);
    let mut client = Sidecar::new(
        Some(client_leaf.credentials_with(&pki.bundle, required)),
        timeouts(),
    );
    let outbound = client
        .outbound(upstream.addr, IdMatcher::exact(id(SERVER)))
        .await;
    let back = within("refused", send_and_collect(outbound, b"secret".to_vec())).await;
    assert!(back.map_or(true, |b| b.is_empty()), "bytes came back");
    eventually("the outbound refusal counted", || {
        client.handshakes(false, false, "peer_alert") == 1
    })
    .await;
    assert_eq!(upstream.handshakes_ok.load(SeqCst), 0);
    assert_eq!(upstream.app_bytes.load(SeqCst), 0);
}
