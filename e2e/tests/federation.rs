//! Federation as an operator sets it up, with the real binaries: two CAs of different trust
//! domains on loopback, each serving its SPIFFE bundle endpoint; `trellis federation` on one
//! trusts the other, follows a root the other adds, and keeps the last good bundle when the
//! endpoint goes away. curl fetches the endpoint as any SPIFFE implementation would. Then
//! sidecars of the two trust domains, federated both ways, talk mTLS where their policies
//! name each other and are refused where they do not, through a root rotation on one side.

mod mesh_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mesh_support::{Echo, Sidecar, SteadyTraffic, metric, round_trip, sidecar_in, within};
use trellis_e2e::{Ca, run};

const TIMEOUT: Duration = Duration::from_secs(60);

fn ca(trust_domain: &str) -> Ca {
    Ca::start_with(&[
        "--trust-domain",
        trust_domain,
        "--bundle-endpoint-listen",
        "127.0.0.1:0",
    ])
}

fn endpoint(ca: &Ca) -> String {
    let addr = ca
        .bundle_endpoint
        .expect("the ready file names the bundle endpoint");
    format!("https://127.0.0.1:{}/", addr.port())
}

#[test]
fn a_federated_bundle_is_added_refreshed_and_kept_through_an_outage() {
    let mut partner = ca("partner.example");
    let home = ca("home.example");

    // curl, with only the partner's bundle.pem, reads its bundle endpoint.
    let mut curl = std::process::Command::new("curl");
    curl.args(["--silent", "--show-error", "--fail", "--cacert"])
        .arg(partner.bundle_pem())
        .arg(endpoint(&partner));
    let document = run(curl, TIMEOUT).success().json();
    assert_eq!(document["keys"][0]["use"], "x509-svid", "{document}");
    assert!(document["spiffe_sequence"].as_u64().is_some(), "{document}");

    let added = run(
        home.admin_command(&[
            "federation",
            "add",
            "partner.example",
            "--endpoint",
            &endpoint(&partner),
            "--endpoint-spiffe-id",
            "spiffe://partner.example/trellis/ca",
            "--initial-bundle",
            &partner.bundle_pem().display().to_string(),
            "-o",
            "json",
        ]),
        TIMEOUT,
    )
    .success()
    .json();
    assert_eq!(added["trust_domain"], "partner.example", "{added}");
    assert_eq!(added["roots"].as_array().map(Vec::len), Some(1), "{added}");

    let refreshed = run(
        home.admin_command(&["federation", "refresh", "partner.example", "-o", "json"]),
        TIMEOUT,
    )
    .success()
    .json();
    assert_eq!(
        refreshed["last_error"],
        serde_json::Value::Null,
        "{refreshed}"
    );

    // The partner adds a root; the next refresh brings it.
    run(partner.admin_command(&["root", "add"]), TIMEOUT).success();
    let rotated = run(
        home.admin_command(&["federation", "refresh", "partner.example", "-o", "json"]),
        TIMEOUT,
    )
    .success()
    .json();
    assert_eq!(
        rotated["roots"].as_array().map(Vec::len),
        Some(2),
        "{rotated}"
    );

    // The partner's endpoint goes away: the refresh fails with one line, the last good
    // bundle stays in force and `show` says what failed.
    partner.stop();
    let failed = run(
        home.admin_command(&["federation", "refresh", "partner.example"]),
        TIMEOUT,
    );
    let line = failed.failure(1);
    assert!(line.contains("last good one stays in force"), "{line}");
    let shown = run(
        home.admin_command(&["federation", "show", "partner.example", "-o", "json"]),
        TIMEOUT,
    )
    .success()
    .json();
    assert_eq!(shown["roots"].as_array().map(Vec::len), Some(2), "{shown}");
    assert!(shown["last_error"].as_str().is_some(), "{shown}");
    let human = run(home.admin_command(&["federation", "list"]), TIMEOUT)
        .success()
        .stdout;
    assert!(
        human.contains("failing (last good bundle in force)"),
        "{human}"
    );
    // `trellis check` warns while it fails (and fails once the bundle is a day old).
    let checked = run(home.admin_command(&["check", "-o", "json"]), TIMEOUT).json();
    let federated = checked["verdicts"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["check"] == "federated bundles"))
        .unwrap_or_else(|| panic!("a federated bundles verdict: {checked}"));
    assert_eq!(federated["level"], "warn", "{federated}");
    let detail = federated["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("partner.example: refresh failing"),
        "{federated}"
    );
    assert!(
        federated["hint"]
            .as_str()
            .is_some_and(|h| h.contains("trellis federation refresh partner.example")),
        "{federated}"
    );

    run(
        home.admin_command(&["federation", "remove", "partner.example"]),
        TIMEOUT,
    )
    .success();
    let none = run(home.admin_command(&["federation", "list"]), TIMEOUT)
        .success()
        .stdout;
    assert!(none.contains("No federated trust domains"), "{none}");
}

const HOME: &str = "home.example";
const PARTNER: &str = "partner.example";

/// `of` trusts `other`'s trust domain, starting from its bundle.pem, read at once.
fn federate(of: &Ca, other: &Ca, other_domain: &str) {
    let ca_id = format!("spiffe://{other_domain}/trellis/ca");
    let bundle = other.bundle_pem().display().to_string();
    run(
        of.admin_command(&[
            "federation",
            "add",
            other_domain,
            "--endpoint",
            &endpoint(other),
            "--endpoint-spiffe-id",
            &ca_id,
            "--initial-bundle",
            &bundle,
        ]),
        TIMEOUT,
    )
    .success();
    refresh(of, other_domain);
}

fn refresh(of: &Ca, other_domain: &str) {
    run(
        of.admin_command(&["federation", "refresh", other_domain]),
        TIMEOUT,
    )
    .success();
}

/// `trellis root list -o json` of `ca`.
fn roots(ca: &Ca) -> serde_json::Value {
    run(ca.admin_command(&["root", "list", "-o", "json"]), TIMEOUT)
        .success()
        .json()
}

/// Waits until every live workload of `ca` holds its current bundle.
fn converged(ca: &Ca, what: &str) {
    within(Duration::from_secs(20), what, || {
        let list = roots(ca);
        list["live_workloads"].as_u64() >= Some(1)
            && list["unconverged_workloads"]
                .as_array()
                .is_some_and(Vec::is_empty)
    });
}

/// Waits until `of` holds `count` roots of `other_domain`, fetched by its own poller.
fn federated_roots(of: &Ca, other_domain: &str, count: usize) {
    within(
        Duration::from_secs(40),
        &format!("{other_domain}'s bundle with {count} roots, by the poller"),
        || {
            let shown = run(
                of.admin_command(&["federation", "show", other_domain, "-o", "json"]),
                TIMEOUT,
            )
            .success()
            .json();
            shown["roots"].as_array().map(Vec::len) == Some(count)
        },
    );
}

fn echoes(addr: std::net::SocketAddr, message: &[u8]) -> bool {
    round_trip(addr, message).is_ok_and(|reply| reply == message)
}

/// `name` in `trust_domain` with one outbound listener per `(upstream, allow)`.
fn client(
    ca: &Ca,
    trust_domain: &str,
    path: &str,
    outbound: &[(std::net::SocketAddr, &str)],
) -> Sidecar {
    let tables: String = outbound
        .iter()
        .map(|(upstream, allow)| {
            format!(
                "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nallow = [\"{allow}\"]\n\n"
            )
        })
        .collect();
    let name = path.rsplit('/').next().expect("a path");
    sidecar_in(
        ca,
        trust_domain,
        name,
        &format!("spiffe://{trust_domain}{path}"),
        "",
        &tables,
    )
}

#[test]
fn sidecars_of_federated_trust_domains_talk_where_policy_names_them_through_a_root_rotation() {
    let home = ca(HOME);
    // The partner advertises a 10 s refresh hint, so home's poller follows it quickly.
    let config = tempfile::tempdir().expect("dir");
    let partner_config = config.path().join("partner.toml");
    std::fs::write(&partner_config, "bundle_refresh_hint = \"10s\"\n").expect("config");
    let partner = Ca::start_with(&[
        "--trust-domain",
        PARTNER,
        "--bundle-endpoint-listen",
        "127.0.0.1:0",
        "--config",
        &partner_config.display().to_string(),
    ]);
    federate(&home, &partner, PARTNER);
    federate(&partner, &home, HOME);

    // The partner's billing API: only home's shop frontend may call it; its strict
    // neighbour accepts its own trust domain, and nothing foreign by default.
    let echo = Echo::start();
    let billing = sidecar_in(
        &partner,
        PARTNER,
        "billing",
        "spiffe://partner.example/ns/billing/sa/api",
        "ttl = \"1m\"",
        &format!(
            "[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{}\"\npolicy = \"deny\"\n\
             allow = [\"spiffe://home.example/ns/shop/sa/frontend\"]\n",
            echo.addr
        ),
    );
    let strict = sidecar_in(
        &partner,
        PARTNER,
        "ledger",
        "spiffe://partner.example/ns/billing/sa/ledger",
        "ttl = \"1m\"",
        &format!(
            "[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{}\"\npolicy = \"strict\"\n",
            echo.addr
        ),
    );
    let billing_in = billing.inbound.expect("inbound");
    let strict_in = strict.inbound.expect("inbound");
    let frontend = client(
        &home,
        HOME,
        "/ns/shop/sa/frontend",
        &[
            (billing_in, "spiffe://partner.example/ns/billing/*"),
            // The own trust domain as a whole does not name a foreign server.
            (billing_in, "spiffe://home.example/*"),
            (strict_in, "spiffe://partner.example/ns/billing/*"),
        ],
    );
    let other = client(
        &home,
        HOME,
        "/ns/shop/sa/other",
        &[(billing_in, "spiffe://partner.example/ns/billing/*")],
    );
    let [to_billing, to_billing_own_only, to_strict] = frontend.outbound[..] else {
        panic!("three outbound listeners: {:?}", frontend.outbound);
    };

    assert!(echoes(to_billing, b"named both ways"), "allowed both ways");
    assert_eq!(
        metric(frontend.admin, "trellis_sidecar_federated_trust_domains "),
        1
    );
    let partner_root = roots(&partner)["roots"][0]["id"].clone();
    let identity = mesh_support::http_get(frontend.admin, "/identity")
        .expect("identity")
        .1;
    let identity: serde_json::Value = serde_json::from_str(&identity).expect("JSON");
    assert_eq!(
        identity["bundle"]["federated"][0]["trust_domain"], PARTNER,
        "{identity}"
    );
    assert_eq!(
        identity["bundle"]["federated"][0]["roots"][0], partner_root,
        "{identity}"
    );
    assert!(
        !echoes(to_billing_own_only, b"x"),
        "client policy names only its domain"
    );
    assert!(
        !echoes(to_strict, b"x"),
        "strict does not take a foreign domain"
    );
    assert!(
        !echoes(other.outbound[0], b"x"),
        "server policy names another identity"
    );

    // The partner rotates its root under steady traffic from home.
    // Bounded: at most 5 minutes of requests.
    let traffic = SteadyTraffic::start(to_billing, Duration::from_secs(300));
    let old_root = roots(&partner)["roots"][0]["id"]
        .as_str()
        .expect("root id")
        .to_owned();
    let added = run(
        partner.admin_command(&["root", "add", "-o", "json"]),
        TIMEOUT,
    )
    .success()
    .json();
    let new_root = added["root"]["id"].as_str().expect("root id").to_owned();
    // Home's poller reads the new root from the partner's endpoint within the partner's
    // refresh hint (10 s), and home's sidecars hold it before the partner signs with it.
    federated_roots(&home, PARTNER, 2);
    converged(&home, "home's sidecars take the partner's new root");
    converged(&partner, "the partner's sidecars take the new root");
    // The partner serves its bundle endpoint, so it signs with the new root only once a
    // refresh hint (10 s) has passed since the root was added: its partners may not have
    // read it before. Until then it refuses, saying so.
    within(
        Duration::from_secs(30),
        "the partner activates its new root",
        || {
            let outcome = run(
                partner.admin_command(&["root", "activate", &new_root]),
                TIMEOUT,
            );
            if outcome.code != Some(0) {
                let refusal = outcome.failure(1);
                assert!(refusal.contains("bundle_refresh_hint"), "{refusal}");
                std::thread::sleep(Duration::from_millis(500));
            }
            outcome.code == Some(0)
        },
    );
    within(
        Duration::from_secs(90),
        "the partner's sidecars renew onto the new root",
        || {
            roots(&partner)["roots"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["id"] == old_root.as_str()))
                .is_some_and(|r| r["workloads_using"] == 0)
        },
    );
    run(
        partner.admin_command(&["root", "retire", &old_root]),
        TIMEOUT,
    )
    .success();
    federated_roots(&home, PARTNER, 1);
    converged(&home, "home's sidecars drop the partner's old root");
    let after = traffic.ok();
    within(Duration::from_secs(10), "requests keep flowing", || {
        traffic.ok() >= after + 20
    });
    let (ok, failed) = traffic.stop();
    eprintln!("through the partner's rotation: {ok} requests answered, {failed} failed");
    assert_eq!(failed, 0, "{ok} requests succeeded, some failed");
    // A new connection now verifies the partner only against its new root.
    assert!(echoes(to_billing, b"after the rotation"));
    let shown = run(
        home.admin_command(&["federation", "show", PARTNER, "-o", "json"]),
        TIMEOUT,
    )
    .success()
    .json();
    assert_eq!(shown["roots"].as_array().map(Vec::len), Some(1), "{shown}");
    assert_eq!(shown["roots"][0], new_root.as_str(), "{shown}");

    // Home ends the federation: a live connection to the partner is closed within
    // seconds, as for a revocation, and new ones are refused.
    let mut live = TcpStream::connect(to_billing).expect("connect");
    live.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    live.write_all(b"ping").expect("write");
    let mut echoed = [0u8; 4];
    live.read_exact(&mut echoed).expect("echo while federated");
    run(
        home.admin_command(&["federation", "remove", PARTNER]),
        TIMEOUT,
    )
    .success();
    let removed = Instant::now();
    let mut rest = Vec::new();
    let ended = live.read_to_end(&mut rest);
    let still_open = matches!(
        &ended,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    );
    assert!(
        !still_open,
        "the connection is closed, not left open: {ended:?}"
    );
    assert!(
        removed.elapsed() < Duration::from_secs(5),
        "{:?}",
        removed.elapsed()
    );
    assert!(
        rest.is_empty(),
        "nothing more arrives on the closed connection"
    );
    within(
        Duration::from_secs(5),
        "the live connection is counted as closed",
        || {
            metric(
                frontend.admin,
                "trellis_sidecar_untrusted_domain_connections_closed_total",
            ) >= 1
        },
    );
    assert!(!echoes(to_billing, b"after the federation ended"));
}
