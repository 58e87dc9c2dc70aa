//! The data path end to end, in process: real certificates from a real CA hierarchy, real
//! TLS 1.3 on 127.0.0.1, sidecars wired as in production (app → outbound → mTLS → inbound
//! → app).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, SystemTime};

use common::*;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use trellis_identity::IdMatcher;
use trellis_sidecar::config::PolicyMode;
use trellis_sidecar::metrics::Direction;

/// A client sidecar (outbound) and a server sidecar (inbound) in front of `app`.
struct Pair {
    client: Sidecar,
    server: Sidecar,
    /// The client app connects here (the client sidecar's outbound listener).
    outbound: std::net::SocketAddr,
    /// The server sidecar's inbound listener.
    inbound: std::net::SocketAddr,
    client_serial: String,
    server_serial: String,
}

const CLIENT: &str = "/ns/shop/sa/web";
const SERVER: &str = "/ns/shop/sa/db";

async fn pair(
    pki: &Pki,
    app: std::net::SocketAddr,
    server_timeouts: trellis_sidecar::config::Timeouts,
) -> Pair {
    let (client_creds, client_serial) = pki.credentials(CLIENT);
    let (server_creds, server_serial) = pki.credentials(SERVER);
    let mut server = Sidecar::new(Some(server_creds), server_timeouts);
    let inbound = server.strict_inbound(app).await;
    let mut client = Sidecar::new(Some(client_creds), timeouts());
    let outbound = client.outbound(inbound, IdMatcher::exact(id(SERVER))).await;
    Pair {
        client,
        server,
        outbound,
        inbound,
        client_serial,
        server_serial,
    }
}

#[tokio::test]
async fn payloads_cross_the_mesh_unchanged() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let p = pair(&pki, app.addr, timeouts()).await;
    for len in [1, 64 * 1024, 16 * 1024 * 1024] {
        let data = payload(len);
        let back = within("echo", send_and_collect(p.outbound, data.clone()))
            .await
            .unwrap();
        assert_eq!(back.len(), len, "length for {len}");
        assert!(back == data, "payload of {len} bytes changed on the way");
    }
    let total: u64 = (1 + 64 * 1024 + 16 * 1024 * 1024) as u64;
    // Every connection authenticated both ways, and the bytes were counted on both sides.
    assert_eq!(p.client.handshakes(false, true, ""), 3);
    eventually("server counts", || {
        let c = p.server.metrics.dir(Direction::Inbound);
        c.bytes_received.load(Relaxed) == total
            && c.bytes_sent.load(Relaxed) == total
            && c.closed.load(Relaxed) == 3
    })
    .await;
    assert_eq!(p.server.handshakes(true, true, ""), 3);
    let c = p.client.metrics.dir(Direction::Outbound);
    eventually("client closed", || c.closed.load(Relaxed) == 3).await;
    assert_eq!(c.bytes_received.load(Relaxed), total);
    assert_eq!(c.bytes_sent.load(Relaxed), total);
    assert_eq!(c.active.load(Relaxed), 0);
    assert!(p.server.registry.is_empty() && p.client.registry.is_empty());
}

#[tokio::test]
async fn half_close_travels_both_ways() {
    init_tracing();
    let pki = Pki::new();
    // The app answers only after it saw EOF, so the answer proves the client's half-close
    // arrived and that the other direction kept working afterwards.
    let app = count_then_reply_app().await;
    let p = pair(&pki, app.addr, timeouts()).await;
    let back = within("reply", send_and_collect(p.outbound, payload(100_000)))
        .await
        .unwrap();
    assert_eq!(String::from_utf8(back).unwrap(), "got 100000 bytes");
    // Nothing sent: EOF right away, the reply still comes back.
    let back = within("reply", send_and_collect(p.outbound, Vec::new()))
        .await
        .unwrap();
    assert_eq!(String::from_utf8(back).unwrap(), "got 0 bytes");
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_refused() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (creds, _) = pki.credentials(SERVER);
    let mut server = Sidecar::new(Some(creds), timeouts());
    let inbound = server.strict_inbound(app.addr).await;

    // Sanity: a client with a certificate from this CA gets through.
    let good = pki.issue(CLIENT).identity();
    let echoed = within(
        "good client",
        tls_exchange(inbound, client_config(&pki.bundle, Some(&good)), b"ping"),
    )
    .await
    .unwrap();
    assert_eq!(echoed, b"ping");

    let other_ca = Pki::new();
    let expired = pki.issue_at(
        CLIENT,
        SystemTime::now() - Duration::from_secs(7200),
        Duration::from_secs(600),
    );
    let cases = [
        ("no certificate", None, "no_client_cert"),
        ("self-signed", Some(self_signed(CLIENT)), "unknown_issuer"),
        (
            "another CA",
            Some(other_ca.issue(CLIENT).identity()),
            "unknown_issuer",
        ),
        ("expired", Some(expired.identity()), "expired"),
    ];
    for (what, identity, reason) in cases {
        let before = server.handshakes(true, false, reason);
        let config = client_config(&pki.bundle, identity.as_ref());
        let result = within(what, tls_exchange(inbound, config, b"ping")).await;
        assert!(
            result.as_ref().map_or(true, |b| b.is_empty()),
            "{what}: got {result:?}"
        );
        eventually(what, || {
            server.handshakes(true, false, reason) == before + 1
        })
        .await;
    }
    assert_eq!(
        app.accepted.load(SeqCst),
        1,
        "only the good client reached the app"
    );
    assert_eq!(server.handshakes(true, true, ""), 1);
}

#[tokio::test]
async fn deny_mode_admits_only_listed_identities() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (creds, _) = pki.credentials(SERVER);
    let mut server = Sidecar::new(Some(creds), timeouts());
    let allow = IdMatcher(vec!["spiffe://test.local/ns/shop/*".parse().unwrap()]);
    let inbound = server
        .inbound(app.addr, PolicyMode::Deny, allow, false, 100)
        .await;

    let listed = pki.issue("/ns/shop/sa/web").identity();
    let echoed = within(
        "listed",
        tls_exchange(inbound, client_config(&pki.bundle, Some(&listed)), b"hi"),
    )
    .await
    .unwrap();
    assert_eq!(echoed, b"hi");

    let unlisted = pki.issue("/ns/other/sa/web").identity();
    let result = within(
        "unlisted",
        tls_exchange(inbound, client_config(&pki.bundle, Some(&unlisted)), b"hi"),
    )
    .await;
    assert!(result.is_err(), "unlisted identity got {result:?}");
    eventually("denial counted", || {
        server.metrics.policy_denials[Direction::Inbound as usize].load(Relaxed) == 1
    })
    .await;
    // The handshake itself succeeded: the refusal is the policy's.
    assert_eq!(server.handshakes(true, true, ""), 2);
    assert_eq!(app.accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn outbound_sends_nothing_to_an_upstream_with_the_wrong_identity() {
    init_tracing();
    let pki = Pki::new();
    let impostor = pki.issue("/ns/shop/sa/impostor");
    let upstream = raw_tls_server(&impostor.identity(), &pki.bundle).await;
    let (creds, _) = pki.credentials(CLIENT);
    let mut client = Sidecar::new(Some(creds), timeouts());
    let wrong = client
        .outbound(upstream.addr, IdMatcher::exact(id(SERVER)))
        .await;
    let right = client
        .outbound(upstream.addr, IdMatcher::exact(impostor.id.clone()))
        .await;

    // The app writes before the sidecar has even finished its handshake.
    let mut app_side = TcpStream::connect(wrong).await.unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(&mut app_side, b"secret data").await;
    assert!(within("closed", closed_by_peer(&mut app_side)).await);
    eventually("refusal counted", || {
        client.handshakes(false, false, "wrong_identity") == 1
    })
    .await;
    assert_eq!(
        client.metrics.policy_denials[Direction::Outbound as usize].load(Relaxed),
        1
    );
    eventually("upstream saw the aborted handshake", || {
        upstream.handshakes_failed.load(SeqCst) == 1
    })
    .await;
    assert_eq!(upstream.handshakes_ok.load(SeqCst), 0);
    assert_eq!(
        upstream.app_bytes.load(SeqCst),
        0,
        "a byte reached the wrong upstream"
    );

    // The same upstream through a listener that allows its identity: bytes do arrive,
    // so the zero above is not an accident of the test server.
    let back = within("allowed", send_and_collect(right, b"hello".to_vec()))
        .await
        .unwrap();
    assert_eq!(back, b"hello");
    assert_eq!(upstream.app_bytes.load(SeqCst), 5);
}

#[tokio::test]
async fn permissive_mode_forwards_plaintext_and_strict_refuses_it() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (creds, _) = pki.credentials(SERVER);
    let mut server = Sidecar::new(Some(creds), timeouts());
    let permissive = server
        .inbound(
            app.addr,
            PolicyMode::Strict,
            IdMatcher::default(),
            true,
            100,
        )
        .await;
    let strict = server.strict_inbound(app.addr).await;

    let back = within(
        "plaintext",
        send_and_collect(permissive, b"GET / HTTP/1.0\r\n\r\n".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(back, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(server.metrics.plaintext_accepted.load(Relaxed), 1);
    // TLS still works on the permissive listener.
    let good = pki.issue(CLIENT).identity();
    let echoed = within(
        "tls",
        tls_exchange(permissive, client_config(&pki.bundle, Some(&good)), b"tls"),
    )
    .await
    .unwrap();
    assert_eq!(echoed, b"tls");

    let back = send_and_collect(strict, b"GET / HTTP/1.0\r\n\r\n".to_vec()).await;
    assert!(back.map_or(true, |b| b.is_empty()));
    eventually("not_tls counted", || {
        server.handshakes(true, false, "not_tls") == 1
    })
    .await;
    assert_eq!(server.metrics.plaintext_accepted.load(Relaxed), 1);
    assert_eq!(app.accepted.load(SeqCst), 2);
}

#[tokio::test]
async fn nothing_is_accepted_before_the_first_certificate() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let mut server = Sidecar::new(None, timeouts());
    let inbound = server.strict_inbound(app.addr).await;
    let mut client = Sidecar::new(None, timeouts());
    let outbound = client.outbound(inbound, IdMatcher::exact(id(SERVER))).await;

    let good = pki.issue(CLIENT).identity();
    let result = tls_exchange(inbound, client_config(&pki.bundle, Some(&good)), b"x").await;
    assert!(result.is_err(), "got {result:?}");
    eventually("inbound refusal", || {
        server.handshakes(true, false, "no_certificate_yet") == 1
    })
    .await;
    let back = send_and_collect(outbound, b"x".to_vec()).await;
    assert!(back.map_or(true, |b| b.is_empty()));
    eventually("outbound refusal", || {
        client.handshakes(false, false, "no_certificate_yet") == 1
    })
    .await;
    assert_eq!(app.accepted.load(SeqCst), 0);

    // The first certificates arrive: the same listeners now work.
    server.publish(pki.credentials(SERVER).0);
    client.publish(pki.credentials(CLIENT).0);
    let back = within("after", send_and_collect(outbound, b"now".to_vec()))
        .await
        .unwrap();
    assert_eq!(back, b"now");
}

#[tokio::test]
async fn rotation_drops_none_of_100_live_connections() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let p = pair(&pki, app.addr, timeouts()).await;

    let mut set = JoinSet::new();
    for i in 0..100u32 {
        let addr = p.outbound;
        set.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let msg = format!("before {i}");
            assert_eq!(
                round_trip(&mut s, msg.as_bytes()).await.unwrap(),
                msg.as_bytes()
            );
            (i, s)
        });
    }
    let mut conns = within("100 connections", set.join_all()).await;
    conns.sort_by_key(|(i, _)| *i);
    assert_eq!(p.server.registry.count_serial(&p.client_serial), 100);
    assert_eq!(p.client.registry.count_serial(&p.server_serial), 100);

    // Both sides rotate while the connections are open.
    let (new_client, new_client_serial) = pki.credentials(CLIENT);
    let (new_server, new_server_serial) = pki.credentials(SERVER);
    p.client.publish(new_client);
    p.server.publish(new_server);

    for (i, s) in conns.iter_mut() {
        let msg = format!("after {i}");
        let back = within("echo after rotation", round_trip(s, msg.as_bytes()))
            .await
            .unwrap_or_else(|e| panic!("connection {i} broke by rotation: {e}"));
        assert_eq!(back, msg.as_bytes());
    }
    // A new connection authenticates with the new certificates, both ways.
    let mut fresh = TcpStream::connect(p.outbound).await.unwrap();
    assert_eq!(round_trip(&mut fresh, b"fresh").await.unwrap(), b"fresh");
    assert_eq!(p.server.registry.count_serial(&new_client_serial), 1);
    assert_eq!(p.client.registry.count_serial(&new_server_serial), 1);
    assert_eq!(p.server.registry.count_serial(&p.client_serial), 100);
    assert_eq!(p.server.handshakes(true, true, ""), 101);
    assert_eq!(
        p.server
            .metrics
            .dir(Direction::Inbound)
            .active
            .load(Relaxed),
        101
    );
    let _ = p.inbound;
}

#[tokio::test]
async fn close_peer_serial_closes_exactly_that_peers_connections() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (creds, _) = pki.credentials(SERVER);
    let mut server = Sidecar::new(Some(creds), timeouts());
    let inbound = server.strict_inbound(app.addr).await;
    let mut revoked_client = Sidecar::new(None, timeouts());
    let (creds, revoked_serial) = pki.credentials("/ns/shop/sa/revoked");
    revoked_client.publish(creds);
    let mut other_client = Sidecar::new(None, timeouts());
    let (creds, other_serial) = pki.credentials("/ns/shop/sa/fine");
    other_client.publish(creds);
    let via_revoked = revoked_client
        .outbound(inbound, IdMatcher::exact(id(SERVER)))
        .await;
    let via_other = other_client
        .outbound(inbound, IdMatcher::exact(id(SERVER)))
        .await;

    let mut revoked = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(via_revoked).await.unwrap();
        assert_eq!(round_trip(&mut s, b"r").await.unwrap(), b"r");
        revoked.push(s);
    }
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(via_other).await.unwrap();
        assert_eq!(round_trip(&mut s, b"o").await.unwrap(), b"o");
        others.push(s);
    }
    assert_eq!(server.registry.count_serial(&revoked_serial), 3);

    assert_eq!(
        server
            .registry
            .close_peer_serial(&revoked_serial.to_uppercase()),
        3
    );
    for s in revoked.iter_mut() {
        assert!(within("revoked connection closed", closed_by_peer(s)).await);
    }
    for s in others.iter_mut() {
        assert_eq!(
            within("other", round_trip(s, b"still")).await.unwrap(),
            b"still"
        );
    }
    assert_eq!(server.registry.count_serial(&revoked_serial), 0);
    assert_eq!(server.registry.count_serial(&other_serial), 2);
    assert_eq!(server.registry.close_peer_serial("00ff00ff"), 0);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let idle = Duration::from_millis(300);
    let p = pair(
        &pki,
        app.addr,
        trellis_sidecar::config::Timeouts { idle, ..timeouts() },
    )
    .await;
    let mut s = TcpStream::connect(p.outbound).await.unwrap();
    assert_eq!(round_trip(&mut s, b"a").await.unwrap(), b"a");
    let last_byte = Instant::now();
    assert!(within("idle close", closed_by_peer(&mut s)).await);
    let waited = last_byte.elapsed();
    assert!(
        waited >= idle - Duration::from_millis(50),
        "closed after {waited:?}"
    );
    eventually("server side closed", || {
        p.server
            .metrics
            .dir(Direction::Inbound)
            .active
            .load(Relaxed)
            == 0
    })
    .await;
}

#[tokio::test]
async fn a_silent_client_cannot_hold_a_slot() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let (creds, _) = pki.credentials(SERVER);
    let handshake = Duration::from_millis(300);
    let mut server = Sidecar::new(
        Some(creds),
        trellis_sidecar::config::Timeouts {
            handshake,
            ..timeouts()
        },
    );
    // One slot only.
    let inbound = server
        .inbound(app.addr, PolicyMode::Strict, IdMatcher::default(), false, 1)
        .await;
    let mut silent = TcpStream::connect(inbound).await.unwrap();
    eventually("silent client accepted", || {
        server.metrics.dir(Direction::Inbound).opened.load(Relaxed) == 1
    })
    .await;
    // A real client waits in the backlog until the silent one is timed out.
    let good = pki.issue(CLIENT).identity();
    let echoed = within(
        "served after the timeout",
        tls_exchange(inbound, client_config(&pki.bundle, Some(&good)), b"ok"),
    )
    .await
    .unwrap();
    assert_eq!(echoed, b"ok");
    assert_eq!(server.handshakes(true, false, "timeout"), 1);
    assert!(within("silent closed", closed_by_peer(&mut silent)).await);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_until_the_deadline() {
    init_tracing();
    let pki = Pki::new();
    let app = echo_app().await;
    let drain = Duration::from_secs(2);
    let mut p = pair(
        &pki,
        app.addr,
        trellis_sidecar::config::Timeouts {
            drain,
            ..timeouts()
        },
    )
    .await;
    let mut s = TcpStream::connect(p.outbound).await.unwrap();
    assert_eq!(round_trip(&mut s, b"1").await.unwrap(), b"1");

    p.server.shutdown.cancel();
    let triggered = Instant::now();
    let inbound = p.inbound;
    let mut refused = false;
    for _ in 0..2000 {
        if TcpStream::connect(inbound).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the inbound listener still accepts after shutdown");
    // The live connection keeps working during the drain ...
    assert_eq!(round_trip(&mut s, b"2").await.unwrap(), b"2");
    // ... and is closed at the deadline, after which the listener task ends.
    assert!(within("closed at the deadline", closed_by_peer(&mut s)).await);
    assert!(triggered.elapsed() >= drain - Duration::from_millis(100));
    let task = p.server.tasks.remove(0);
    within("serve_inbound returned", task).await.unwrap();
}

#[tokio::test]
async fn admin_endpoint_reports_health_metrics_and_identity() {
    init_tracing();
    let pki = Pki::new();
    let mut sidecar = Sidecar::new(None, timeouts());
    let admin = sidecar.admin().await;

    let (status, _, body) = http_get(admin, "/live").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http_get(admin, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("no certificate"), "{body}");
    let (status, _, body) = http_get(admin, "/identity").await;
    assert_eq!(status, 503);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("no certificate"));

    let leaf = pki.issue(SERVER);
    sidecar.publish(leaf.credentials(&pki.bundle));
    let (status, _, _) = http_get(admin, "/ready").await;
    assert_eq!(status, 200);
    let (status, headers, body) = http_get(admin, "/identity").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json"))
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["spiffe_id"], leaf.id.as_str());
    assert_eq!(json["serial"], leaf.serial.as_str());
    assert!(json["not_after"].as_str().unwrap().ends_with('Z'));
    assert!(json["not_before"].as_str().unwrap().ends_with('Z'));
    let left = json["seconds_left"].as_u64().unwrap();
    assert!(left > 3000 && left <= 3600, "seconds_left {left}");
    assert_eq!(json["bundle"]["trust_domain"], TD);
    assert_eq!(json["bundle"]["version"], 1);
    let roots = json["bundle"]["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0]["id"], pki.bundle.root_ids()[0].as_str());
    let fp = roots[0]["spki_sha256"].as_str().unwrap();
    assert_eq!(fp.len(), 64);
    assert!(fp.starts_with(roots[0]["id"].as_str().unwrap()));
    // No key material, in any encoding.
    let key_pem = leaf.key.to_pem();
    let key_line = key_pem.lines().nth(1).unwrap();
    assert!(
        !body.contains("PRIVATE") && !body.contains(&key_line[..20]),
        "{body}"
    );

    sidecar
        .metrics
        .dir(Direction::Inbound)
        .opened
        .fetch_add(7, Relaxed);
    sidecar
        .metrics
        .handshake(Direction::Inbound, false, "unknown_issuer");
    let (status, headers, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == trellis_proto::metrics::PROMETHEUS_TEXT),
        "{headers:?}"
    );
    assert!(
        body.contains("trellis_sidecar_connections_opened_total{direction=\"inbound\"} 7"),
        "{body}"
    );
    assert!(body.contains(
        "trellis_sidecar_handshakes_total{direction=\"inbound\",result=\"failed\",reason=\"unknown_issuer\"} 1"
    ));

    let (status, _, _) = http_get(admin, "/nope").await;
    assert_eq!(status, 404);
    // Shutting down stops the endpoint.
    sidecar.shutdown.cancel();
    let task = sidecar.tasks.remove(0);
    within("admin stopped", task).await.unwrap();
}

#[tokio::test]
async fn expired_credentials_make_the_sidecar_unready() {
    init_tracing();
    let pki = Pki::new();
    let clock = Arc::new(trellis_identity::clock::ManualClock::new(SystemTime::now()));
    let leaf = pki.issue(SERVER);
    let creds = trellis_sidecar::credentials::Credentials::new(
        leaf.chain.clone(),
        leaf.key.private_key_der(),
        &leaf.key.public_key_der(),
        pki.bundle.clone(),
        None,
        clock.clone(),
        trellis_identity::tls::KeyExchange::default(),
    )
    .unwrap();
    let mut sidecar = Sidecar::new(Some(Arc::new(creds)), timeouts());
    let admin = sidecar.admin().await;
    assert_eq!(http_get(admin, "/ready").await.0, 200);
    clock.advance(Duration::from_secs(2 * 3600));
    let (status, _, body) = http_get(admin, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("expired"), "{body}");
    let (_, _, body) = http_get(admin, "/identity").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["seconds_left"], 0);
}
