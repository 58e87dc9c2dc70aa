//! The real `trellis-ca` under a small open-file limit (set on the spawned binary with
//! `prlimit`, so the CA cannot raise it): its HTTP port is flooded with idle connections,
//! many more than the CA has descriptors. The HTTP port holds only its share, the gRPC port
//! still serves admin calls, `accept` never runs out of descriptors, and the refusals are
//! counted and logged once, not once each.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use trellis_e2e::bin::{binary, command};
use trellis_e2e::ca::parse_listening;
use trellis_e2e::process::Process;
use trellis_e2e::run::run;

/// The CA's open-file limit: with it, a reserve of 256, 32 HTTP connections, 224 gRPC.
const OPEN_FILES: u32 = 512;
/// Idle connections the test opens to the HTTP port: more than the CA could hold.
const FLOOD: usize = 700;

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text
}

#[test]
fn a_flooded_http_port_cannot_take_the_cas_descriptors() {
    let dir = tempfile::tempdir().expect("dir");
    let http = free_port();
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={OPEN_FILES}:{OPEN_FILES}"))
        .arg("--")
        .arg(binary("trellis-ca"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            &http.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("ca"));
    // Drop the developer's TRELLIS_* settings, as `command` does for the binaries.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRELLIS_") {
            cmd.env_remove(&key);
        }
    }
    let mut ca = Process::spawn("trellis-ca", cmd, dir.path());
    let line = ca.wait_for_line(Duration::from_secs(60), |l| {
        l.starts_with("trellis-ca listening on ")
    });
    let listening = parse_listening(&line).expect("listening line");
    let admin_dir = listening.admin_dir.clone();

    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(http).expect("the kernel accepts the connection"));
    }
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

    let metrics = get(http, "/metrics");
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
