//! Hostile input at the inbound listener that `data_path.rs` does not cover: bytes that are
//! not TLS (or only look like it), a ClientHello that stops half-way, client certificates
//! that are not valid yet or revoked, and a planted symlink in the SVID directory. Each
//! refusal is counted under its reason, nothing reaches the app, and good clients are
//! still served.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, SystemTime};

use common::*;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use trellis_identity::{IdMatcher, WorkloadKey};
use trellis_sidecar::config::PolicyMode;

const SERVER: &str = "/ns/prod/sa/server";
const CLIENT: &str = "/ns/prod/sa/client";

/// Sends `bytes` on a fresh connection and waits until the sidecar closes it.
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A refusal may close the socket before everything is written.
    let _ = stream.write_all(bytes).await;
    assert!(
        within("closed by the sidecar", closed_by_peer(&mut stream)).await,
        "the sidecar kept the connection open"
    );
    stream
}

/// A real ClientHello for the inbound listener at `addr`.
fn client_hello(pki: &Pki, addr: std::net::SocketAddr) -> Vec<u8> {
    let good = pki.issue(CLIENT).identity();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut conn =
        rustls::ClientConnection::new(client_config(&pki.bundle, Some(&good)), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

async fn good_client_gets_through(pki: &Pki, inbound: std::net::SocketAddr) {
    let good = pki.issue(CLIENT).identity();
    let echoed = within(
        "good client",
        tls_exchange(inbound, client_config(&pki.bundle, Some(&good)), b"ok"),
    )
    .await
    .unwrap();
    assert_eq!(echoed, b"ok");
}

#[tokio::test]
async fn garbage_and_fake_tls_records_are_refused_and_never_reach_the_app() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (creds, _) = pki.credentials(SERVER);
    let mut server = Sidecar::new(Some(creds), timeouts());
    let inbound = server.strict_inbound(app.addr).await;

    send_raw(inbound, &payload(4096)).await;
    eventually("not_tls counted", || {
        server.handshakes(true, false, "not_tls") == 1
    })
    .await;
    // Starts like a TLS handshake record, then junk: refused by the TLS layer.
    let fake = [&[0x16, 0x03, 0x01, 0x00, 0x40][..], &payload(64)].concat();
    send_raw(inbound, &fake).await;
    eventually("bad_message counted", || {
        server.handshakes(true, false, "bad_message") == 1
    })
    .await;
    // A record header announcing more than TLS allows (RFC 8446 §5.1: at most 2^14 + 256).
    send_raw(inbound, &[0x16, 0x03, 0x03, 0xFF, 0xFF, 0x01]).await;
    eventually("oversized record refused", || {
        server
            .metrics
            .dir(trellis_sidecar::metrics::Direction::Inbound)
            .closed
            .load(SeqCst)
            >= 3
    })
    .await;
    assert_eq!(app.accepted.load(SeqCst), 0, "nothing reached the app");
    good_client_gets_through(&pki, inbound).await;
    assert_eq!(app.accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn a_client_hello_that_stops_half_way_is_timed_out() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (creds, _) = pki.credentials(SERVER);
    let mut server = Sidecar::new(
        Some(creds),
        trellis_sidecar::config::Timeouts {
            handshake: Duration::from_millis(300),
            ..timeouts()
        },
    );
    let inbound = server.strict_inbound(app.addr).await;
    let hello = client_hello(&pki, inbound);
    let mut partial = TcpStream::connect(inbound).await.unwrap();
    partial.write_all(&hello[..hello.len() / 2]).await.unwrap();
    // Served meanwhile.
    good_client_gets_through(&pki, inbound).await;
    assert!(within("partial closed", closed_by_peer(&mut partial)).await);
    eventually("timeout counted", || {
        server.handshakes(true, false, "timeout") == 1
    })
    .await;
    assert_eq!(app.accepted.load(SeqCst), 1, "only the good client");
}

#[tokio::test]
async fn not_yet_valid_and_revoked_client_certificates_are_refused() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let revoked = pki.issue(CLIENT);
    let (creds, _) = pki.credentials(SERVER);
    let creds = creds
        .with_revoked(Arc::new(HashSet::from([revoked.serial.clone()])))
        .unwrap();
    let mut server = Sidecar::new(Some(Arc::new(creds)), timeouts());
    let inbound = server.strict_inbound(app.addr).await;

    let early = pki.issue_at(
        CLIENT,
        SystemTime::now() + Duration::from_secs(7200),
        Duration::from_secs(3600),
    );
    for (what, leaf, reason) in [
        ("not yet valid", early, "not_yet_valid"),
        ("revoked", revoked, "revoked"),
    ] {
        let config = client_config(&pki.bundle, Some(&leaf.identity()));
        let result = within(what, tls_exchange(inbound, config, b"ping")).await;
        assert!(
            result.as_ref().map_or(true, |b| b.is_empty()),
            "{what}: got {result:?}"
        );
        eventually(what, || server.handshakes(true, false, reason) == 1).await;
    }
    assert_eq!(app.accepted.load(SeqCst), 0);
    good_client_gets_through(&pki, inbound).await;
}

#[tokio::test]
async fn deny_mode_refuses_a_valid_certificate_with_the_wrong_identity() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (creds, _) = pki.credentials(SERVER);
    let mut server = Sidecar::new(Some(creds), timeouts());
    let allow = IdMatcher(vec![id(CLIENT).as_str().parse().unwrap()]);
    let inbound = server
        .inbound(app.addr, PolicyMode::Deny, allow, false, 100)
        .await;
    let other = pki.issue("/ns/prod/sa/intruder").identity();
    let result = within(
        "wrong identity",
        tls_exchange(inbound, client_config(&pki.bundle, Some(&other)), b"ping"),
    )
    .await;
    assert!(result.as_ref().map_or(true, |b| b.is_empty()), "{result:?}");
    eventually("policy denial counted", || {
        server.metrics.policy_denials[trellis_sidecar::metrics::Direction::Inbound as usize]
            .load(SeqCst)
            == 1
    })
    .await;
    assert_eq!(app.accepted.load(SeqCst), 0);
    good_client_gets_through(&pki, inbound).await;
}

/// `svid_dir` is written through a random O_EXCL temp file and a rename: a symlink planted
/// where the key goes is replaced, never written through, and the key file is 0600.
/// An existing directory keeps its mode (`svid_dir = "/tmp"` must not make /tmp 0700).
#[test]
fn a_symlink_planted_in_the_svid_directory_is_replaced_not_followed() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let svid_dir = dir.path().join("svid");
    std::fs::create_dir(&svid_dir).unwrap();
    std::fs::set_permissions(&svid_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    for name in ["svid_key.pem", "svid.pem", "bundle.pem"] {
        std::os::unix::fs::symlink(&victim, svid_dir.join(name)).unwrap();
    }
    let leaf = pki.issue(SERVER);
    let creds = leaf.credentials(&pki.bundle);
    // The key the files describe: any P-256 key will do for the file layout.
    let key = WorkloadKey::generate().unwrap();
    trellis_sidecar::svid_files::write(&svid_dir, &creds, &key).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    let key_meta = std::fs::symlink_metadata(svid_dir.join("svid_key.pem")).unwrap();
    assert!(key_meta.file_type().is_file(), "the symlink was replaced");
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);
    // The operator's directory keeps its mode; one the sidecar creates is private.
    assert_eq!(
        std::fs::metadata(&svid_dir).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let created = dir.path().join("created");
    trellis_sidecar::svid_files::write(&created, &creds, &key).unwrap();
    assert_eq!(
        std::fs::metadata(&created).unwrap().permissions().mode() & 0o777,
        0o700
    );
}
