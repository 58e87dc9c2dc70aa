//! Transparent inbound capture as it runs in a cluster: pods are network namespaces on a
//! bridge, the CA runs in the bridge's namespace like a cluster service, and the server pod
//! is set up exactly as an injected pod is (the real `trellis-sidecar init-network`, then
//! the sidecar with capture on and the probes injection hands it). The apps bind 0.0.0.0, as
//! apps do. A rogue pod with no sidecar tries to get around it; the kubelet's probes come
//! from outside the pod.
//!
//! Needs root, iproute2, iptables and openssl (scripts/install-test-deps.sh); where network
//! namespaces cannot be created the tests fail saying so.

mod mesh_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use mesh_support::*;
use serde_json::Value;
use trellis_e2e::{Ca, Lan, Netns, Pod, PodSidecar, command, run};

const INBOUND: u16 = 15006;
const ADMIN: u16 = 15020;
/// The default policy's port (only the frontend), the port with its own policy (only
/// reports), the port left out of capture, and the app's health endpoint.
const WEB: u16 = 8080;
const REPORTS: u16 = 8081;
const SKIPPED: u16 = 9090;
const HEALTH: u16 = 8082;

/// An echo app listening on 0.0.0.0:`port` inside `ns`.
fn app_in(ns: &Netns, port: u16) -> Echo {
    Echo::serve(ns.enter(|| TcpListener::bind(("0.0.0.0", port)).expect("bind app")))
}

/// A minimal HTTP app on 0.0.0.0:`port` inside `ns`: 200 for `GET /healthz`, 404 else.
fn health_app_in(ns: &Netns, port: u16) {
    let listener = ns.enter(|| TcpListener::bind(("0.0.0.0", port)).expect("bind health"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap_or(0);
            let status = if buf[..n].starts_with(b"GET /healthz ") {
                "200 OK"
            } else {
                "404 Not Found"
            };
            let _ = write!(conn, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        }
    });
}

/// Runs `trellis-sidecar init-network` in `ns` (optionally without NET_ADMIN).
fn init_network(ns: &Netns, without_net_admin: bool) -> trellis_e2e::Outcome {
    let mut init = command("trellis-sidecar");
    init.args([
        "init-network",
        "--inbound-port",
        &INBOUND.to_string(),
        "--admin-port",
        &ADMIN.to_string(),
        "--skip-inbound-ports",
        &SKIPPED.to_string(),
    ]);
    let init = if without_net_admin {
        let mut dropped = Command::new("setpriv");
        dropped
            .args([
                "--inh-caps=-net_admin",
                "--ambient-caps=-net_admin",
                "--bounding-set=-net_admin",
            ])
            .arg(init.get_program())
            .args(init.get_args());
        dropped
    } else {
        init
    };
    run(ns.wrap(&init), Duration::from_secs(60))
}

/// The pod's nat rules, without comments and counters.
fn nat_rules(ns: &Netns) -> String {
    let out = run(
        ns.wrap(&{
            let mut save = Command::new("iptables-save");
            save.args(["-t", "nat"]);
            save
        }),
        Duration::from_secs(30),
    )
    .success();
    out.stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends `data` from inside `ns` to `addr`, half-closes, reads to EOF (or an error).
fn exchange_in(ns: &Netns, addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    ns.enter(|| round_trip(addr, data))
}

/// What `trellis inject` does to a pod with an HTTP readiness probe and a TCP liveness
/// probe: the rewritten probes and the `TRELLIS_APP_PROBES` it hands the sidecar.
fn injected_probes() -> (Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pod = dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  \
             - name: app\n    image: app\n    ports: [{{name: health, containerPort: {HEALTH}}}]\n    \
             readinessProbe: {{httpGet: {{path: /healthz, port: health}}}}\n    \
             livenessProbe: {{tcpSocket: {{port: {WEB}}}}}\n    \
             startupProbe: {{httpGet: {{path: /missing, port: {HEALTH}}}}}\n"
        ),
    )
    .expect("write pod");
    let mut inject = command("trellis");
    inject.args(["inject", "-f"]).arg(&pod).args(["-o", "json"]);
    let out = run(inject, Duration::from_secs(60)).success();
    let pod: Value = serde_json::from_str(&out.stdout).expect("json");
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .find(|c| c["name"] == "trellis-sidecar")
        .expect("sidecar")
        .clone();
    let probes = sidecar["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "TRELLIS_APP_PROBES")
        .and_then(|e| e["value"].as_str())
        .expect("TRELLIS_APP_PROBES")
        .to_owned();
    (pod["spec"]["containers"][0].clone(), probes)
}

/// A plain HTTP/1.0 GET from inside `ns`: the status code.
fn http_status_in(ns: &Netns, addr: SocketAddr, path: &str) -> u16 {
    ns.enter(|| http_get(addr, path).map(|(status, _)| status))
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

fn metric_in(ns: &Netns, admin: SocketAddr, prefix: &str) -> u64 {
    let local = SocketAddr::from(([127, 0, 0, 1], admin.port()));
    ns.enter(|| metric(local, prefix))
}

#[test]
fn capture_puts_every_inbound_connection_of_the_pod_through_the_sidecar() {
    // Declared in drop order: processes before the namespaces they run in.
    let mut lan = Lan::new();
    let ca = Ca::start_in(&lan.bridge, lan.bridge_ip.into());
    let server = lan.pod("server");
    let client = lan.pod("client");
    let rogue = lan.pod("rogue");
    let web = app_in(&server.ns, WEB);
    let reports = app_in(&server.ns, REPORTS);
    let skipped = app_in(&server.ns, SKIPPED);
    health_app_in(&server.ns, HEALTH);
    let at = |pod: &Pod, port: u16| SocketAddr::from((pod.ip, port));

    // The init step, as the injected init container runs it; twice gives the same rules.
    let first = init_network(&server.ns, false).success();
    assert!(
        first.stdout.contains("now goes to the sidecar on 15006"),
        "{first:?}"
    );
    let rules = nat_rules(&server.ns);
    assert!(
        rules.contains("-A PREROUTING -p tcp -j TRELLIS_INBOUND")
            && rules.contains("--dport 9090 -j RETURN")
            && rules.contains("-j REDIRECT --to-ports 15006"),
        "{rules}"
    );
    init_network(&server.ns, false).success();
    assert_eq!(nat_rules(&server.ns), rules, "the init step is idempotent");
    let refused = init_network(&server.ns, true);
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(refused.stderr.contains("NET_ADMIN"), "{}", refused.stderr);
    assert_eq!(
        nat_rules(&server.ns),
        rules,
        "a refused run changes nothing"
    );

    let (app_container, probes) = injected_probes();
    let frontend = id("/ns/demo/sa/frontend");
    let reporter = id("/ns/demo/sa/reports");
    let server_sidecar = PodSidecar::start(
        &server.ns,
        &ca,
        "server",
        &id("/ns/demo/sa/server"),
        &format!(
            "[admin]\nlisten = \"0.0.0.0:{ADMIN}\"\n\n[inbound]\nlisten = \"0.0.0.0:{INBOUND}\"\n\
             capture = true\npolicy = \"deny\"\nallow = [\"{frontend}\"]\n\n\
             [[inbound.ports]]\nport = {REPORTS}\npolicy = \"deny\"\nallow = [\"{reporter}\"]\n"
        ),
        &[("TRELLIS_APP_PROBES", &probes)],
    );
    let outbound = |port| {
        format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"{}\"]\n",
            at(&server, port),
            id("/ns/demo/sa/server")
        )
    };
    let both = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        outbound(WEB),
        outbound(REPORTS)
    );
    let front = PodSidecar::start(&client.ns, &ca, "frontend", &frontend, &both, &[]);
    let report = PodSidecar::start(&client.ns, &ca, "reports", &reporter, &both, &[]);

    // The client pod's sidecar reaches the app on its own port, through capture.
    for len in [1, 64 * 1024, 16 * 1024 * 1024] {
        let data = payload(len);
        let reply = exchange_in(&client.ns, front.outbound[0], &data).expect("round trip");
        assert!(reply == data, "{len}-byte payload changed in transit");
    }
    // Half-close: the reply still arrives after the client shut its write side, then EOF.
    let half = exchange_in(&client.ns, front.outbound[0], b"half").expect("half-close");
    assert_eq!(half, b"half");

    // Each port enforces its own policy.
    let denied = |sidecar: &PodSidecar, i: usize| {
        exchange_in(&client.ns, sidecar.outbound[i], b"knock").map_or(true, |r| r.is_empty())
    };
    assert!(denied(&front, 1), "the frontend reached the reports port");
    assert_eq!(
        exchange_in(&client.ns, report.outbound[1], b"report").expect("reports port"),
        b"report"
    );
    assert!(denied(&report, 0), "reports reached the web port");
    assert!(reports.received.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert!(
        metric_in(
            &server.ns,
            server_sidecar.admin,
            "trellis_sidecar_policy_denials_total{direction=\"inbound\"}"
        ) >= 2
    );

    // The rogue pod, with no sidecar: plaintext to the app's port reaches nothing...
    for port in [WEB, REPORTS] {
        let reply = exchange_in(&rogue.ns, at(&server, port), b"GET / HTTP/1.0\r\n\r\n");
        assert!(
            reply.map_or(true, |r| r.is_empty()),
            "plaintext got an answer on {port}"
        );
    }
    // ...nor does TLS without a client certificate (openssl, a client nobody here wrote)...
    let mut s_client = Command::new("openssl");
    s_client
        .args(["s_client", "-quiet", "-no_ign_eof", "-connect"])
        .arg(at(&server, WEB).to_string());
    let tls = run(rogue.ns.wrap(&s_client), Duration::from_secs(30));
    assert!(!tls.stdout.contains("knock"), "{tls:?}");
    // ...and the app received nothing from beyond its own pod's loopback.
    for app in [&web, &reports] {
        assert_eq!(
            app.received_from_beyond_loopback
                .load(std::sync::atomic::Ordering::SeqCst),
            0,
            "bytes reached the app without passing the sidecar"
        );
    }
    within(Duration::from_secs(10), "the refusals are counted", || {
        metric_in(
            &server.ns,
            server_sidecar.admin,
            "trellis_sidecar_handshakes_total{direction=\"inbound\",result=\"failed\"",
        ) >= 3
    });
    let log = server_sidecar.process.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("refused") || l.contains("handshake failed"))
            && log.contains(&rogue.ip.to_string()),
        "refusals are logged with the rogue's address:\n{log}"
    );

    // A skipped port is reachable in plaintext, and only that one.
    assert_eq!(
        exchange_in(&rogue.ns, at(&server, SKIPPED), b"plain").expect("skipped port"),
        b"plain"
    );
    assert!(
        skipped
            .received_from_beyond_loopback
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );

    // The kubelet's probes, from outside the pod, through the probes injection rewrote.
    let readiness = &app_container["readinessProbe"]["httpGet"];
    let liveness = &app_container["livenessProbe"]["httpGet"];
    assert_eq!(readiness["port"], ADMIN);
    let path = |p: &Value| p["path"].as_str().expect("path").to_owned();
    let admin = at(&server, ADMIN);
    assert_eq!(http_status_in(&rogue.ns, admin, &path(readiness)), 200);
    assert_eq!(http_status_in(&rogue.ns, admin, &path(liveness)), 200);
    let startup = &app_container["startupProbe"]["httpGet"];
    assert_eq!(
        http_status_in(&rogue.ns, admin, &path(startup)),
        404,
        "the app's own answer is passed on"
    );

    drop((front, report, server_sidecar));
    drop(ca);
    drop((server, client, rogue));
}

#[test]
fn without_capture_an_app_open_beyond_loopback_is_reported() {
    let mut lan = Lan::new();
    let ca = Ca::start_in(&lan.bridge, lan.bridge_ip.into());
    let exposed = lan.pod("exposed");
    let private = lan.pod("private");
    // Both pods also run a second service on 0.0.0.0:9090. As a Kubernetes pod (the
    // kubelet's KUBERNETES_SERVICE_HOST set) every port is the pod's and counts; as a plain
    // host, only the inbound app's port is the sidecar's business.
    let _open_app = app_in(&exposed.ns, WEB);
    let _open_other = app_in(&exposed.ns, SKIPPED);
    let _private_other = app_in(&private.ns, SKIPPED);
    let _private_app = Echo::serve(
        private
            .ns
            .enter(|| TcpListener::bind(("127.0.0.1", WEB)).expect("bind")),
    );
    let tables = format!(
        "[admin]\nlisten = \"0.0.0.0:{ADMIN}\"\n\n[inbound]\nlisten = \"0.0.0.0:{INBOUND}\"\n\
         app = \"127.0.0.1:{WEB}\"\n"
    );
    let open = PodSidecar::start(
        &exposed.ns,
        &ca,
        "exposed",
        &id("/ns/a/sa/open"),
        &tables,
        &[("KUBERNETES_SERVICE_HOST", "198.18.0.1")],
    );
    let closed = PodSidecar::start(
        &private.ns,
        &ca,
        "private",
        &id("/ns/a/sa/closed"),
        &tables,
        &[],
    );

    let gauge = "trellis_sidecar_app_ports_exposed ";
    assert_eq!(metric_in(&exposed.ns, open.admin, gauge), 2);
    assert!(open.process.stderr().contains("UNPROTECTED"));
    let identity = |pod: &Pod| {
        let body = pod
            .ns
            .enter(|| http_get(SocketAddr::from(([127, 0, 0, 1], ADMIN)), "/identity"))
            .expect("identity")
            .1;
        serde_json::from_str::<Value>(&body).expect("json")["pod"].clone()
    };
    assert_eq!(
        identity(&exposed),
        serde_json::json!({"capture": false, "exposed_ports": [WEB, SKIPPED]})
    );

    assert_eq!(metric_in(&private.ns, closed.admin, gauge), 0);
    assert!(!closed.process.stderr().contains("UNPROTECTED"));
    assert_eq!(
        identity(&private),
        serde_json::json!({"capture": false, "exposed_ports": []})
    );
    drop((open, closed));
    drop(ca);
}
