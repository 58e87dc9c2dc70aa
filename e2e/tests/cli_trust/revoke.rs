//! Revocation by serial and by identity: what is printed, what `cert show` and `cert list`
//! say afterwards, and the refusals.

use std::collections::BTreeSet;

use crate::common::{User, issue};
use trellis_e2e::Ca;

fn serial_of(user: &User, id: &str, dir: &str) -> String {
    issue(user, id, &user.path(dir))["serial"]
        .as_str()
        .expect("serial")
        .to_owned()
}

#[test]
fn revoke_by_serial_shows_in_show_and_list_and_is_not_repeated() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let web = "spiffe://cluster.local/ext/web";
    let serial = serial_of(&user, web, "web");
    let other = serial_of(&user, web, "web-2");

    let human = user
        .trellis(&["cert", "revoke", &serial, "--reason", "key compromise"])
        .success()
        .stdout;
    assert!(human.starts_with("Revoked 1 certificate:\n"), "{human}");
    assert!(human.contains(&format!("\n  {serial}\n")), "{human}");
    assert!(human.contains("Reason: key compromise"), "{human}");
    assert!(
        human.contains("CRL reason code: keyCompromise (1)"),
        "the text names a reason: {human}"
    );
    assert!(!human.contains(&other), "only the one serial: {human}");

    // A second revocation changes nothing and says so, in both formats.
    let again = user
        .trellis(&["cert", "revoke", &serial, "-o", "json"])
        .success()
        .json();
    assert_eq!(again["serial"], serial.as_str());
    assert_eq!(again["revoked"], serde_json::json!([]));
    let again = user.trellis(&["cert", "revoke", &serial]).success().stdout;
    assert_eq!(
        again,
        format!("No certificate was newly revoked: certificate {serial} was already revoked.\n")
    );

    let shown = user.trellis(&["cert", "show", &serial]).success().stdout;
    let line = shown
        .lines()
        .find(|l| l.starts_with("Revoked"))
        .unwrap_or_else(|| panic!("no Revoked line:\n{shown}"));
    assert!(line.ends_with("ago): key compromise"), "{line}");
    let json = user
        .trellis(&["cert", "show", &serial, "-o", "json"])
        .success()
        .json();
    assert_eq!(json["revoked"], true);
    assert_eq!(json["revocation_reason"], "key compromise");
    assert!(
        json["revoked_at"].as_str().expect("time").ends_with('Z'),
        "{json}"
    );
    let untouched = user
        .trellis(&["cert", "show", &other, "-o", "json"])
        .success()
        .json();
    assert_eq!(untouched["revoked"], false);
    assert!(untouched.get("revoked_at").is_none(), "{untouched}");

    let listed = user
        .trellis(&["cert", "list", "--identity", web])
        .success()
        .stdout;
    let header = listed.lines().next().expect("header");
    assert!(header.ends_with("REVOKED"), "{listed}");
    let row = listed
        .lines()
        .find(|l| l.starts_with(&serial))
        .expect("revoked row");
    assert!(row.ends_with(" ago"), "{row}");
    let row = listed
        .lines()
        .find(|l| l.starts_with(&other))
        .expect("other row");
    assert!(row.ends_with("admin"), "nothing in REVOKED: {row}");
}

#[test]
fn revoke_by_identity_revokes_every_live_certificate_of_it_and_nothing_else() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let db = "spiffe://cluster.local/ext/db";
    let web = "spiffe://cluster.local/ext/web";
    let first = serial_of(&user, db, "db-1");
    let second = serial_of(&user, db, "db-2");
    let bystander = serial_of(&user, web, "web");

    let json = user
        .trellis(&[
            "cert",
            "revoke",
            "--identity",
            db,
            "--reason",
            "decommissioned",
            "--reason-code",
            "cessation-of-operation",
            "-o",
            "json",
        ])
        .success()
        .json();
    assert_eq!(json["spiffe_id"], db);
    assert_eq!(json["reason"], "decommissioned");
    assert_eq!(json["reason_code"], "cessationOfOperation (5)");
    let revoked: BTreeSet<&str> = json["revoked"]
        .as_array()
        .expect("serials")
        .iter()
        .map(|s| s.as_str().expect("serial"))
        .collect();
    assert_eq!(
        revoked,
        BTreeSet::from([first.as_str(), second.as_str()]),
        "{json}"
    );

    let again = user
        .trellis(&["cert", "revoke", "--identity", db])
        .success()
        .stdout;
    assert_eq!(
        again,
        format!(
            "No certificate was newly revoked: every unexpired certificate of {db} was already revoked.\n"
        )
    );
    let listed = user
        .trellis(&["cert", "list", "-o", "json"])
        .success()
        .json();
    for cert in listed["certificates"].as_array().expect("list") {
        let serial = cert["serial"].as_str().expect("serial");
        assert_eq!(
            cert["revoked"],
            serial == first || serial == second,
            "{serial}: {cert}"
        );
    }
    assert!(
        listed["certificates"]
            .as_array()
            .expect("list")
            .iter()
            .any(|c| c["serial"] == bystander.as_str()),
        "{listed}"
    );
}

#[test]
fn revocation_refusals_exit_1_or_2_in_one_line() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);

    let unknown = user.trellis(&["cert", "revoke", "0123456789abcdef"]);
    let line = unknown.failure(1);
    assert!(
        line.contains("no certificate with serial 0123456789abcdef"),
        "{line}"
    );
    let json_mode = user.trellis(&["cert", "revoke", "0123456789abcdef", "-o", "json"]);
    json_mode.failure(1);
    assert!(json_mode.stdout.is_empty(), "{}", json_mode.stdout);

    let line = user
        .trellis(&[
            "cert",
            "revoke",
            "--identity",
            "spiffe://cluster.local/ext/never-issued",
        ])
        .failure(1);
    assert!(line.contains("has no unexpired certificate"), "{line}");

    // Mistakes on the command line are usage errors, caught before anything is sent.
    let line = user.trellis(&["cert", "revoke", "not-hex"]).failure(2);
    assert!(line.contains("not hex"), "{line}");
    let line = user
        .trellis(&["cert", "revoke", "--identity", "http://cluster.local/web"])
        .failure(2);
    assert!(line.contains("--identity"), "{line}");
    // Exactly one of SERIAL and --identity (clap's own usage message, exit 2).
    let neither = user.trellis(&["cert", "revoke"]);
    assert_eq!(neither.code, Some(2), "{}", neither.stderr);
    let both = user.trellis(&[
        "cert",
        "revoke",
        "0123456789abcdef",
        "--identity",
        "spiffe://cluster.local/ext/web",
    ]);
    assert_eq!(both.code, Some(2), "{}", both.stderr);
    assert!(
        both.stderr.contains("cannot be used with"),
        "{}",
        both.stderr
    );
}
