//! The real binaries under a small open-file limit (set on the spawned binary with
//! `prlimit`, so it cannot raise it), with a plain-HTTP port flooded by idle connections,
//! many more than the process has descriptors: the CA's HTTP port (its gRPC port must
//! still serve admin calls) and a sidecar's admin port (its mesh traffic must still flow).
//! The flooded port holds only its share, `accept` never runs out of descriptors, and the
//! refusals are counted and logged once, not once each.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use mesh_support::{Echo, id, metric, round_trip, sidecar, sidecar_with_open_files};
use trellis_e2e::ca::Listening;
use trellis_e2e::{Ca, Process, command, command_with_open_files, run};

mod mesh_support;

/// The open-file limit. The CA's split: a reserve of 256, 32 HTTP connections, 224 gRPC;
/// the sidecar's: a reserve of 128, 48 admin connections (16 per address), 168 proxied.
const OPEN_FILES: u64 = 512;
/// Idle connections the test opens to the flooded port: more than the process could hold.
const FLOOD: usize = 700;

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Opens [`FLOOD`] idle connections to `addr`. Each must complete: a listener at its bound
/// accepts and closes at once, so its backlog never fills; one that ran out of descriptors
/// stops accepting, and connecting then times out.
fn flood(addr: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(FLOOD);
    for n in 0..FLOOD {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => held.push(stream),
            Err(e) => panic!("{addr} stopped accepting after {n} connections: {e}"),
        }
    }
    held
}

#[test]
fn a_flooded_http_port_cannot_take_the_cas_descriptors() {
    let dir = tempfile::tempdir().expect("dir");
    let http = free_port();
    let ready_file = trellis_e2e::ready_path(dir.path(), "trellis-ca");
    let mut cmd = command_with_open_files("trellis-ca", OPEN_FILES);
    cmd.arg("--ready-file")
        .arg(&ready_file)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            &http.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("ca"));
    let mut ca = Process::spawn("trellis-ca", cmd, dir.path());
    let ready = ca.wait_for_ready(&ready_file, Duration::from_secs(60));
    let listening = Listening::from_ready(&ready, &dir.path().join("ca")).expect("ready file");
    let admin_dir = listening.admin_dir.clone();

    let flood = flood(http);
    // Once the CA has gone through its backlog, an admin call on the gRPC port succeeds.
    let status = |timeout| {
        let mut cli = command("trellis");
        let arg = |p: &str| admin_dir.join(p).to_string_lossy().into_owned();
        cli.args([
            "ca",
            "status",
            "-o",
            "json",
            "--ca-addr",
            &listening.addr.to_string(),
            "--bundle",
            &arg("bundle.pem"),
            "--admin-cert",
            &arg("admin.pem"),
            "--admin-key",
            &arg("admin.key.pem"),
        ]);
        run(cli, timeout)
    };
    let outcome = status(Duration::from_secs(30)).success();
    assert_eq!(outcome.json()["health"], "serving", "{}", outcome.stdout);
    drop(flood);

    let (_, metrics) = trellis_e2e::http::http_get(http, "/metrics").expect("CA metrics");
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trellis_ca_connections_refused_total{listener=\"http\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no HTTP refusal count in:\n{metrics}"));
    assert!(
        refused >= (FLOOD - 32) as u64,
        "{refused} refusals for {FLOOD} connections to a port bounded at 32"
    );
    assert!(
        metrics.contains("trellis_ca_connections_max{listener=\"http\"} 32"),
        "{metrics}"
    );
    let log = ca.stderr();
    assert!(
        !log.contains("Too many open files"),
        "the CA ran out of descriptors:\n{log}"
    );
    let refusal_lines = log.matches("connection refused:").count();
    assert!(
        (1..=3).contains(&refusal_lines),
        "{refusal_lines} log lines for {refused} refusals (expected at most one per 10 s)"
    );
    ca.terminate(Duration::from_secs(10));
}

#[test]
fn a_flooded_admin_port_cannot_take_the_sidecars_descriptors() {
    let ca = Ca::start();
    let echo = Echo::start();
    let backend = sidecar_with_open_files(
        &ca,
        "backend",
        &id("/ns/demo/sa/backend"),
        "",
        &format!(
            "[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{}\"\n",
            echo.addr
        ),
        Some(OPEN_FILES),
    );
    let frontend = sidecar(
        &ca,
        "frontend",
        &id("/ns/demo/sa/frontend"),
        "",
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"{}\"]\n",
            backend.inbound.expect("backend inbound"),
            id("/ns/demo/sa/backend")
        ),
    );
    let flood = flood(backend.admin);
    // New mesh connections, through the frontend's outbound and the backend's inbound
    // listener, while the backend's admin port is flooded.
    for round in 0..3 {
        let message = format!("round {round} under an admin flood");
        let reply = round_trip(frontend.outbound[0], message.as_bytes()).expect("round trip");
        assert_eq!(reply, message.as_bytes());
    }
    drop(flood);
    let refused = metric(
        backend.admin,
        "trellis_sidecar_listener_connections_refused_total{listener=\"admin\"}",
    );
    assert!(
        refused >= (FLOOD - 16) as u64,
        "{refused} refusals for {FLOOD} connections from one address (16 allowed)"
    );
    let log = backend.process.stderr();
    assert!(
        !log.contains("Too many open files"),
        "the sidecar ran out of descriptors:\n{log}"
    );
    assert!(
        log.matches("connection refused:").count() <= 3,
        "refusals were logged once each:\n{log}"
    );
}
