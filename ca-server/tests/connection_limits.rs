//! An unauthenticated peer cannot hold the CA's listeners: idle TLS connections without a
//! client certificate are closed, the HTTP endpoint is bounded and closes connections that
//! never finish a request head, and a full HTTP endpoint leaves the gRPC port serving.
//! The bounds are lowered through the configuration so a handful of sockets reach them.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::TestCa;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use trellis_identity::IdMatcher;
use trellis_identity::clock::SystemClock;
use trellis_identity::tls::{self, Versions};
use trellis_proto::ca::v1::GetTrustBundleRequest;

/// Upper bound for anything these tests wait on.
const DEADLINE: Duration = Duration::from_secs(20);

/// Reads until the peer closes (EOF or reset); `None` if it is still open after `DEADLINE`.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut body = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut body))
        .await
        .expect("response in time")
        .expect("read");
    body
}

#[tokio::test]
async fn tls_connections_that_send_no_request_are_closed() {
    let ca = TestCa::start_configured(Arc::new(SystemClock), |c| {
        c.connections.first_request_timeout = Duration::from_secs(1);
    })
    .await;
    let config = tls::client_config(
        ca.bundle(),
        IdMatcher::exact(ca.id("/trellis/ca")),
        None,
        Versions::Tls13,
        &[trellis_proto::channel::ALPN_H2],
    )
    .expect("client config");
    let connector = TlsConnector::from(Arc::new(config));
    let mut idle = Vec::new();
    for _ in 0..8 {
        let tcp = TcpStream::connect(ca.running().addr)
            .await
            .expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let tls = tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake without a client certificate");
        idle.push(tls);
    }
    eventually("8 open gRPC connections", || {
        ca.running().listeners.grpc.open() == 8
    })
    .await;
    for (i, tls) in idle.iter_mut().enumerate() {
        assert!(
            closed_after(tls).await.is_some(),
            "idle TLS connection {i} still open after {DEADLINE:?}"
        );
    }
    eventually("the slots are given back", || {
        ca.running().listeners.grpc.open() == 0
    })
    .await;

    // A connection that has carried a request is not closed by this timeout.
    let mut client = ca.workload(None).await;
    client
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("bundle");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        ca.running().listeners.grpc.open(),
        1,
        "the used connection stays"
    );
    client
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("bundle again");
}

#[tokio::test]
async fn a_full_http_port_leaves_grpc_serving_and_idle_http_connections_are_closed() {
    let ca = TestCa::start_configured(Arc::new(SystemClock), |c| {
        c.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.connections.http_max = Some(4);
        c.connections.http_max_per_source = 4;
        c.connections.http_header_timeout = Duration::from_secs(1);
    })
    .await;
    let http = ca.running().http_addr.expect("http endpoint");
    let budget = ca.running().listeners.http.clone();

    // Fill the bound: three connections that send nothing and one whose headers never end.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(http).await.expect("connect"));
    }
    let mut slow = TcpStream::connect(http).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: ca\r\n")
        .await
        .expect("write");
    let trickle = tokio::spawn(async move {
        // One header byte at a time, for longer than the header timeout.
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
        }
        slow
    });
    eventually("the HTTP bound is full", || budget.open() == 4).await;

    // One more is closed at once, and counted.
    let mut extra = TcpStream::connect(http).await.expect("connect");
    assert!(
        closed_after(&mut extra).await.is_some(),
        "a connection over the bound was kept"
    );
    eventually("the refusal is counted", || budget.refused() == 1).await;

    // The gRPC port still serves: health, an admin call and an issuance.
    let channel = ca.channel(None).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check");
    assert_eq!(status.into_inner().status, 1, "SERVING");
    let (_, issued) = ca.bootstrap("/ns/demo/sa/under-flood").await;
    assert!(!issued.chain_der.is_empty(), "a certificate was issued");

    // Every idle connection and the slow one are closed by the header timeout.
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_after(stream).await.is_some(),
            "idle HTTP connection {i} still open after {DEADLINE:?}"
        );
    }
    let mut slow = trickle.await.expect("trickle task");
    assert!(
        closed_after(&mut slow).await.is_some(),
        "a request head that never ends was kept open"
    );
    eventually("the HTTP slots are given back", || budget.open() == 0).await;
    let metrics = get(http, "/metrics").await;
    assert!(
        metrics.contains("trellis_ca_connections_refused_total{listener=\"http\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trellis_ca_connections_max{listener=\"http\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn one_source_address_cannot_take_the_grpc_port() {
    let ca = TestCa::start_configured(Arc::new(SystemClock), |c| {
        c.connections.grpc_max_per_source = 3;
    })
    .await;
    let addr = ca.running().addr;
    let budget = ca.running().listeners.grpc.clone();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    eventually("three connections from 127.0.0.1", || budget.open() == 3).await;
    let mut fourth = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_after(&mut fourth).await.is_some(),
        "a fourth connection from the same address was kept"
    );
    // Another address (all of 127/8 is loopback) still gets in and is served.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut other = socket.connect(addr).await.expect("connect from 127.0.0.2");
    eventually("the other address is admitted", || budget.open() == 4).await;
    other.write_all(b"\x16\x03\x01").await.expect("write");
    assert_eq!(budget.refused(), 1);
    drop(held);
    let mut client = ca.workload(None).await;
    client
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("served once the address is under its bound");
}
