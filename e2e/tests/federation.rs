//! Federation as an operator sets it up, with the real binaries: two CAs of different trust
//! domains on loopback, each serving its SPIFFE bundle endpoint; `trellis federation` on one
//! trusts the other, follows a root the other adds, and keeps the last good bundle when the
//! endpoint goes away. curl fetches the endpoint as any SPIFFE implementation would.

use std::time::Duration;

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
