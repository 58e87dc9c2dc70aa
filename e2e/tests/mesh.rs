//! The data path with the real binaries: app → outbound sidecar → mTLS → inbound sidecar →
//! app, the refusals, openssl as a peer no one here wrote, and `trellis up --once`.

mod mesh_support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_support::*;
use trellis_e2e::http::http_get_with;
use trellis_e2e::{Ca, command, run};

struct Pair {
    ca: Ca,
    echo: Echo,
    backend: Sidecar,
    frontend: Sidecar,
}

/// A backend (inbound, deny policy allowing only the frontend) and a frontend (one outbound
/// bound to the backend's identity).
fn pair() -> Pair {
    pair_on(Ca::start())
}

/// [`pair`] with a CA started by the caller.
fn pair_on(ca: Ca) -> Pair {
    let echo = Echo::start();
    let backend = sidecar(
        &ca,
        "backend",
        &id("/ns/demo/sa/backend"),
        "",
        &format!(
            "[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{}\"\npolicy = \"deny\"\nallow = [\"{}\"]\n",
            echo.addr,
            id("/ns/demo/sa/frontend")
        ),
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
    Pair {
        ca,
        echo,
        backend,
        frontend,
    }
}

#[test]
fn payloads_of_every_size_travel_unchanged_and_half_close_is_honoured() {
    let mesh = pair();
    let outbound = mesh.frontend.outbound[0];
    for len in [1, 64 * 1024, 16 * 1024 * 1024] {
        let data = payload(len);
        let reply = round_trip(outbound, &data).expect("round trip");
        assert_eq!(reply.len(), data.len(), "{len} bytes");
        assert!(reply == data, "{len}-byte payload changed in transit");
    }
    // Half-close: the reply still arrives after our write side is shut, then EOF.
    let mut conn = TcpStream::connect(outbound).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(b"half").expect("write");
    conn.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).expect("read to EOF");
    assert_eq!(reply, b"half");

    // /metrics and /identity report what happened.
    let inbound_ok = metric(
        mesh.backend.admin,
        "trellis_sidecar_handshakes_total{direction=\"inbound\",result=\"ok\"",
    );
    assert!(inbound_ok >= 4, "{inbound_ok} inbound handshakes");
    assert!(
        metric(
            mesh.frontend.admin,
            "trellis_sidecar_sent_bytes_total{direction=\"outbound\"}"
        ) > 16_000_000
    );
    let (status, body) = http_get(mesh.backend.admin, "/identity").expect("identity");
    assert_eq!(status, 200);
    let identity: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(identity["spiffe_id"], id("/ns/demo/sa/backend"));
    assert_eq!(identity["bundle"]["trust_domain"], TD);
    assert!(identity["seconds_left"].as_u64().expect("seconds_left") > 3000);
}

/// openssl s_client against the inbound port offering ALPN `trellis/1`, as a sidecar does:
/// `files` is (certificate chain, key) or none.
fn openssl_to(
    addr: std::net::SocketAddr,
    ca: &Ca,
    files: Option<(&std::path::Path, &std::path::Path)>,
) -> (bool, String) {
    openssl_alpn(addr, ca, files, Some("trellis/1"))
}

/// What openssl sends; the echo server returns it.
const PING: &[u8] = b"ping-from-openssl\n";

/// openssl s_client offering `alpn` (none: no ALPN extension at all).
fn openssl_alpn(
    addr: std::net::SocketAddr,
    ca: &Ca,
    files: Option<(&std::path::Path, &std::path::Path)>,
    alpn: Option<&str>,
) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-quiet",
        // -quiet implies -ign_eof; without this s_client never exits on an open connection.
        "-no_ign_eof",
        "-connect",
        &addr.to_string(),
        "-CAfile",
    ])
    .arg(ca.bundle_pem());
    if let Some(alpn) = alpn {
        cmd.args(["-alpn", alpn]);
    }
    if let Some((chain, key)) = files {
        cmd.arg("-cert")
            .arg(chain)
            .arg("-cert_chain")
            .arg(chain)
            .arg("-key")
            .arg(key);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs (scripts/install-test-deps.sh)");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let _ = stdin.write_all(PING);
    // Read until the echo arrives or the server closes (a refusal), under a deadline; only
    // then end the input, which makes s_client exit.
    let (echoed, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            received.extend_from_slice(&buf[..n]);
            if received.windows(PING.len()).any(|w| w == PING) {
                let _ = echoed.send(());
            }
        }
        received
    });
    let _ = seen.recv_timeout(Duration::from_secs(20));
    drop(stdin);
    let out = child.wait_with_output().expect("openssl finishes");
    let stdout = String::from_utf8_lossy(&reader.join().expect("reader")).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        stdout.contains("ping-from-openssl"),
        format!("{stdout}{stderr}"),
    )
}

#[test]
fn strangers_are_refused_and_openssl_with_an_allowed_certificate_gets_through() {
    let mesh = pair();
    let inbound = mesh.backend.inbound.expect("inbound");
    let scratch = mesh.ca.scratch();

    // An allowed identity, issued by this CA, presented by openssl: echoed.
    let allowed = scratch.join("allowed");
    trellis(
        &mesh.ca,
        &[
            "cert",
            "issue",
            "--spiffe-id",
            &id("/ns/demo/sa/frontend"),
            "--out",
            allowed.to_str().expect("utf8"),
        ],
    )
    .success();
    let (echoed, out) = openssl_to(
        inbound,
        &mesh.ca,
        Some((&allowed.join("svid.pem"), &allowed.join("svid_key.pem"))),
    );
    assert!(
        echoed,
        "openssl with an allowed certificate should be echoed: {out}"
    );
    // The same certificate without ALPN, or offering another protocol: refused before the
    // handshake, as a client of some other TLS service pointed here would be.
    let allowed_files = (allowed.join("svid.pem"), allowed.join("svid_key.pem"));
    for alpn in [None, Some("h2"), Some("http/1.1")] {
        let files = Some((allowed_files.0.as_path(), allowed_files.1.as_path()));
        let (echoed, out) = openssl_alpn(inbound, &mesh.ca, files, alpn);
        assert!(!echoed, "ALPN {alpn:?} accepted: {out}");
    }

    // No certificate.
    let (echoed, out) = openssl_to(inbound, &mesh.ca, None);
    assert!(!echoed && out.contains("certificate required"), "{out}");

    // A self-signed certificate.
    let key = scratch.join("self.key");
    let cert = scratch.join("self.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=stranger",
            "-addext",
        ])
        .arg(format!("subjectAltName=URI:{}", id("/ns/demo/sa/frontend")))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl req");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (echoed, out) = openssl_to(inbound, &mesh.ca, Some((&cert, &key)));
    assert!(!echoed, "self-signed accepted: {out}");

    // A certificate for the allowed identity from a different Trellis CA.
    let other = Ca::start();
    let foreign = scratch.join("foreign");
    trellis(
        &other,
        &[
            "cert",
            "issue",
            "--spiffe-id",
            &id("/ns/demo/sa/frontend"),
            "--out",
            foreign.to_str().expect("utf8"),
        ],
    )
    .success();
    let (echoed, out) = openssl_to(
        inbound,
        &mesh.ca,
        Some((&foreign.join("svid.pem"), &foreign.join("svid_key.pem"))),
    );
    assert!(!echoed, "foreign CA accepted: {out}");

    // A valid certificate for an identity the policy does not allow.
    let stranger = scratch.join("stranger");
    trellis(
        &mesh.ca,
        &[
            "cert",
            "issue",
            "--spiffe-id",
            &id("/ns/other/sa/intruder"),
            "--out",
            stranger.to_str().expect("utf8"),
        ],
    )
    .success();
    let (echoed, out) = openssl_to(
        inbound,
        &mesh.ca,
        Some((&stranger.join("svid.pem"), &stranger.join("svid_key.pem"))),
    );
    assert!(!echoed, "disallowed identity accepted: {out}");

    // Plain TCP bytes: closed without a reply.
    let mut plain = TcpStream::connect(inbound).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "plaintext got an app reply: {reply:?}"
    );

    // Only the allowed openssl connection reached the app, and the sidecar counted why.
    assert_eq!(mesh.echo.received.load(Ordering::SeqCst), PING.len());
    let admin = mesh.backend.admin;
    within(Duration::from_secs(5), "refusals counted", || {
        metric(
            admin,
            "trellis_sidecar_handshakes_total{direction=\"inbound\",result=\"failed\"",
        ) >= 7
            && metric(
                admin,
                "trellis_sidecar_policy_denials_total{direction=\"inbound\"}",
            ) >= 1
    });
    let refused = |reason: &str| {
        metric(
            admin,
            &format!(
                "trellis_sidecar_handshakes_total{{direction=\"inbound\",result=\"failed\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!((refused("no_alpn"), refused("wrong_alpn")), (1, 2));
}

#[test]
fn an_outbound_listener_refuses_an_upstream_with_the_wrong_identity() {
    let mesh = pair();
    // A second frontend whose outbound expects a different identity than the backend has.
    let suspicious = sidecar(
        &mesh.ca,
        "suspicious",
        &id("/ns/demo/sa/frontend"),
        "",
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"{}\"]\n",
            mesh.backend.inbound.expect("inbound"),
            id("/ns/demo/sa/database")
        ),
    );
    let reply = round_trip(suspicious.outbound[0], b"secret request").unwrap_or_default();
    assert!(
        reply.is_empty(),
        "got a reply through a mismatched upstream: {reply:?}"
    );
    assert_eq!(
        mesh.echo.received.load(Ordering::SeqCst),
        0,
        "not a byte reached the app"
    );
    within(Duration::from_secs(5), "the refusal is counted", || {
        metric(
            suspicious.admin,
            "trellis_sidecar_handshakes_total{direction=\"outbound\",result=\"failed\"",
        ) >= 1
    });
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let mut mesh = pair();
    let outbound = mesh.frontend.outbound[0];
    let mut conn = TcpStream::connect(outbound).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(b"before").expect("write");
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf).expect("echo");
    let status = mesh.frontend.process.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "sidecar exit status after SIGTERM: {status:?}"
    );
    assert!(
        TcpStream::connect(outbound).is_err(),
        "listener closed after shutdown"
    );
}

#[test]
fn trellis_up_once_walks_through_a_working_mesh() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cmd = command("trellis");
    cmd.args(["up", "--once", "--data-dir"])
        .arg(dir.path().join("up"));
    let out = run(cmd, Duration::from_secs(120)).success();
    for expected in [
        "[1/6]",
        "root SPKI SHA-256",
        "spiffe://cluster.local/ns/demo/sa/backend  serial",
        "got \"backend got: hello from the frontend\"",
        "refused",
        "All 6 steps passed.",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stdout
        );
    }
}

/// A free port on 127.0.0.1 (bound, then released for the process that needs it).
fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// `/metrics` text parsed by the Prometheus client library's parser (Python
/// `prometheus_client`, in the test venv): (family name, type, samples).
fn prometheus_families(text: &str, openmetrics: bool) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, text).expect("write");
    let mut cmd = Command::new(trellis_e2e::python::python());
    cmd.arg(trellis_e2e::python::workspace().join("e2e/tests/metrics_py/parse.py"));
    if openmetrics {
        cmd.arg("--openmetrics");
    }
    cmd.arg(&file);
    let parsed = run(cmd, Duration::from_secs(60)).success().json();
    parsed.as_array().expect("a list of families").clone()
}

/// The real `/metrics` of a sidecar and of the CA parse as Prometheus text and keep its
/// naming rules: one prefix per program, counters end in `_total`, a unit (`seconds`,
/// `bytes`) comes last, and the latency histograms have samples after real traffic.
#[test]
fn metrics_parse_as_prometheus_text_and_follow_its_naming_rules() {
    let http = free_port();
    let mesh = pair_on(Ca::start_with(&["--http-listen", &http.to_string()]));
    let echoed = round_trip(mesh.frontend.outbound[0], b"metrics").expect("round trip");
    assert_eq!(echoed, b"metrics");
    let (frontend, backend) = (mesh.frontend.admin, mesh.backend.admin);
    within(Duration::from_secs(5), "handshakes timed", || {
        metric(
            backend,
            "trellis_sidecar_handshake_duration_seconds_count{direction=\"inbound\"}",
        ) >= 1
            && metric(
                frontend,
                "trellis_sidecar_handshake_duration_seconds_count{direction=\"outbound\"}",
            ) >= 1
    });

    let sidecar = http_get(frontend, "/metrics").expect("sidecar metrics").1;
    let (status, ca) = http_get(http, "/metrics").expect("CA metrics");
    assert_eq!(status, 200, "{ca}");
    // What Prometheus asks for: OpenMetrics, which the strict parser accepts.
    let accept = [("Accept", "application/openmetrics-text; version=1.0.0")];
    for addr in [frontend, http] {
        let (status, text) = http_get_with(addr, "/metrics", &accept).expect("OpenMetrics");
        assert_eq!(status, 200, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(prometheus_families(&text, true).len() > 5, "{text}");
    }
    for (text, prefix, histograms) in [
        (
            &sidecar,
            "trellis_sidecar_",
            &[
                "trellis_sidecar_handshake_duration_seconds",
                "trellis_sidecar_renewal_duration_seconds",
            ][..],
        ),
        (
            &ca,
            "trellis_ca_",
            &["trellis_ca_issuance_duration_seconds"][..],
        ),
    ] {
        let families = prometheus_families(text, false);
        assert!(families.len() > 5, "{text}");
        for family in &families {
            let name = family["name"].as_str().expect("name");
            let kind = family["type"].as_str().expect("type");
            assert!(name.starts_with(prefix), "{name}: not under {prefix}");
            let words: Vec<&str> = name.split('_').collect();
            for unit in ["seconds", "bytes"] {
                if words.contains(&unit) {
                    assert_eq!(words.last(), Some(&unit), "{name}: the unit comes last");
                }
            }
            for sample in family["samples"].as_array().expect("samples") {
                let sample_name = sample["name"].as_str().expect("sample name");
                if kind == "counter" {
                    assert!(sample_name.ends_with("_total"), "{sample_name}: a counter");
                }
            }
        }
        for histogram in histograms {
            let family = families
                .iter()
                .find(|f| f["name"] == *histogram)
                .unwrap_or_else(|| panic!("{histogram} missing:\n{text}"));
            assert_eq!(family["type"], "histogram", "{histogram}");
            let counted: f64 = family["samples"]
                .as_array()
                .expect("samples")
                .iter()
                .filter(|s| s["name"] == format!("{histogram}_count"))
                .map(|s| s["value"].as_f64().expect("value"))
                .sum();
            assert!(counted >= 1.0, "{histogram} has no sample:\n{text}");
        }
    }
    // The embedded store reports its log, which every start reads.
    let log_bytes = prometheus_families(&ca, false)
        .into_iter()
        .find(|f| f["name"] == "trellis_ca_store_log_bytes")
        .and_then(|f| f["samples"][0]["value"].as_f64())
        .unwrap_or_else(|| panic!("no trellis_ca_store_log_bytes:\n{ca}"));
    assert!(log_bytes > 0.0, "{log_bytes}");
}
