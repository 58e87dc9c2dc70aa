//! The admin port (bound on 0.0.0.0 in the shipped manifests, so reachable from any pod)
//! cannot be held by a peer that opens connections and sends nothing or sends a request
//! head that never ends: it has a bound of its own, in total and per source address, and a
//! header timeout; the mesh keeps flowing while it is full. The bounds are lowered so a
//! handful of sockets reach them.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use trellis_identity::IdMatcher;
use trellis_sidecar::admin::{AdminLimits, serve_admin_limited};

const CLIENT: &str = "/ns/demo/sa/client";
const SERVER: &str = "/ns/demo/sa/server";

/// Reads until the peer closes; `None` if it is still open after [`DEADLINE`].
async fn closed_after(stream: &mut TcpStream) -> Option<Duration> {
    let start = Instant::now();
    tokio::time::timeout(DEADLINE, closed_by_peer(stream))
        .await
        .ok()
        .map(|_| start.elapsed())
}

/// `GET path` from the local address `from`; the response as text.
async fn get_from(from: &str, addr: SocketAddr, path: &str) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    within("admin response", stream.read_to_string(&mut text))
        .await
        .unwrap();
    text
}

#[tokio::test]
async fn a_flooded_admin_port_leaves_the_mesh_and_other_sources_served() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (client_creds, _) = pki.credentials(CLIENT);
    let (server_creds, _) = pki.credentials(SERVER);
    let mut server = Sidecar::new(Some(server_creds), timeouts());
    let inbound = server.strict_inbound(app.addr).await;
    let mut client = Sidecar::new(Some(client_creds), timeouts());
    let outbound = client.outbound(inbound, IdMatcher::exact(id(SERVER))).await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let limits = AdminLimits {
        max_connections: 6,
        max_connections_per_source: 5,
        header_timeout: Duration::from_secs(1),
    };
    server.tasks.push(tokio::spawn({
        let (creds, metrics, shutdown) = (
            server.ctx.creds.clone(),
            server.metrics.clone(),
            server.shutdown.clone(),
        );
        async move {
            serve_admin_limited(
                listener,
                limits,
                creds,
                metrics,
                shutdown,
                Default::default(),
            )
            .await
            .unwrap();
        }
    }));

    // 127.0.0.1 takes its whole share: four idle connections and one trickling a header.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(admin).await.unwrap());
    }
    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
        }
        slow
    });
    // The kernel hands connections to `accept` in order, so this one comes after the five.
    let mut sixth = TcpStream::connect(admin).await.unwrap();
    assert!(
        closed_after(&mut sixth).await.is_some(),
        "a sixth connection from the same address was kept"
    );

    // The mesh still carries traffic, both ways through both listeners.
    for round in 0..3 {
        let data = payload(64 * 1024);
        let back = within(
            "echo through the mesh",
            send_and_collect(outbound, data.clone()),
        )
        .await
        .unwrap();
        assert!(back == data, "round {round}: the payload changed");
    }
    // Another address (the kubelet's, say) still reaches the admin port.
    let live = get_from("127.0.0.2", admin, "/live").await;
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");

    // The idle connections and the never-ending header are closed by the header timeout.
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_after(stream).await.is_some(),
            "idle admin connection {i} still open after {DEADLINE:?}"
        );
    }
    let mut slow = trickle.await.unwrap();
    assert!(
        closed_after(&mut slow).await.is_some(),
        "a request head that never ends was kept open"
    );
    let metrics = get_from("127.0.0.1", admin, "/metrics").await;
    assert!(
        metrics
            .contains("trellis_sidecar_listener_connections_refused_total{listener=\"admin\"} 1"),
        "{metrics}"
    );
}
