//! A full trust-root rotation driven through the CLI: list → add → activate → retire, with
//! the CA's safety refusals and `--force` warnings on the way.

use std::path::Path;

use serde_json::Value;

use crate::common::{CLI_TIMEOUT, User, certs, issue, path_str};
use trellis_e2e::{Ca, run};
use trellis_identity::pem;

/// `trellis root list -o json`.
fn roots(user: &User) -> Value {
    user.trellis(&["root", "list", "-o", "json"])
        .success()
        .json()
}

/// The listed root with `id`.
fn root<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no root {id} in {list}"))
}

/// Writes the root certificate with `id` from the CA's published bundle to `out`, alone.
fn write_root(ca: &Ca, id: &str, out: &Path) {
    let root = certs(&ca.bundle_pem())
        .into_iter()
        .find(|der| trellis_identity::bundle::root_id(der).expect("root id") == id)
        .unwrap_or_else(|| panic!("root {id} is not in the CA's bundle"));
    std::fs::write(out, pem::certs_to_pem(&[root])).expect("write root");
}

/// `openssl verify` of a leaf + intermediate chain file against `ca_file` alone.
fn openssl_verifies(chain_file: &Path, ca_file: &Path, dir: &Path) -> bool {
    let chain = certs(chain_file);
    let leaf = dir.join("leaf.pem");
    let inter = dir.join("intermediate.pem");
    std::fs::write(&leaf, pem::certs_to_pem(&chain[..1])).expect("write leaf");
    std::fs::write(&inter, pem::certs_to_pem(&chain[1..])).expect("write inter");
    let mut openssl = std::process::Command::new("openssl");
    openssl
        .arg("verify")
        .arg("-CAfile")
        .arg(ca_file)
        .arg("-untrusted")
        .arg(&inter)
        .arg(&leaf);
    run(openssl, CLI_TIMEOUT).code == Some(0)
}

#[test]
fn a_rotation_add_activate_retire_with_its_safety_refusals() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);

    // One active root to start with.
    let before = roots(&user);
    let listed = before["roots"].as_array().expect("roots");
    assert_eq!(listed.len(), 1, "{before}");
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[0]["late_in_life"], false);
    assert!(listed[0]["workloads_using"].as_u64().expect("count") >= 1);
    let old = listed[0]["id"].as_str().expect("id").to_owned();
    let version = before["bundle_version"].as_u64().expect("version");
    assert_eq!(before["live_workloads"], 0);
    let human = user.trellis(&["root", "list"]).success().stdout;
    assert!(human.starts_with("ROOT "), "{human}");
    let row = human
        .lines()
        .find(|l| l.starts_with(&old))
        .expect("root row");
    assert!(row.contains(" active "), "{row}");
    assert!(
        row.contains(listed[0]["spki_sha256"].as_str().expect("fp")),
        "{row}"
    );
    assert!(
        human.contains(&format!("Bundle version  {version}\n")),
        "{human}"
    );

    // A workload on the old root that will hold up its retirement.
    let legacy = "spiffe://cluster.local/ext/legacy";
    let legacy_cert = issue(&user, legacy, &user.path("legacy"));
    assert_eq!(legacy_cert["root_id"], old.as_str());

    // Add: a second root, pending, in the next bundle version.
    let added = user
        .trellis(&["root", "add", "-o", "json"])
        .success()
        .json();
    assert_eq!(added["action"], "added");
    assert_eq!(added["root"]["state"], "pending");
    let new = added["root"]["id"].as_str().expect("id").to_owned();
    assert_ne!(new, old);
    let after_add = roots(&user);
    assert_eq!(after_add["roots"].as_array().expect("roots").len(), 2);
    assert_eq!(root(&after_add, &new)["state"], "pending");
    assert_eq!(root(&after_add, &old)["state"], "active");
    assert_eq!(after_add["bundle_version"], version + 1);
    assert_eq!(
        root(&after_add, &new)["added_in_bundle_version"],
        version + 1
    );
    let human = user.trellis(&["root", "list"]).success().stdout;
    let row = human
        .lines()
        .find(|l| l.starts_with(&new))
        .expect("new root row");
    assert!(row.contains(" pending "), "{row}");
    assert!(row.ends_with(&format!("v{}", version + 1)), "{row}");

    // Activate: no workload has reported a bundle version, so nothing holds it up.
    let activated = user.trellis(&["root", "activate", &new]).success();
    assert!(
        activated
            .stdout
            .starts_with(&format!("Root {new} is active")),
        "{}",
        activated.stdout
    );
    assert!(activated.stderr.is_empty(), "{}", activated.stderr);
    let after_activate = roots(&user);
    assert_eq!(root(&after_activate, &new)["state"], "active");
    assert_eq!(root(&after_activate, &old)["state"], "retiring");

    // New certificates chain to the new root, and to it alone.
    let fresh = issue(
        &user,
        "spiffe://cluster.local/ext/fresh",
        &user.path("fresh"),
    );
    assert_eq!(fresh["root_id"], new.as_str());
    let new_root = user.path("new-root.pem");
    write_root(&ca, &new, &new_root);
    let fresh_svid = user.path("fresh/svid.pem");
    let inspected = user
        .trellis(&[
            "inspect",
            path_str(&fresh_svid),
            "--bundle",
            path_str(&new_root),
            "-o",
            "json",
        ])
        .success()
        .json();
    assert_eq!(inspected["verification"]["result"], "verifies");
    assert_eq!(inspected["verification"]["root_id"], new.as_str());
    assert!(openssl_verifies(
        &fresh_svid,
        &new_root,
        &user.path("fresh")
    ));
    let legacy_svid = user.path("legacy/svid.pem");
    assert!(
        !openssl_verifies(&legacy_svid, &new_root, &user.path("legacy")),
        "the legacy certificate still chains to the old root only"
    );

    // Retire: never the active root; not the old one while a workload still uses it.
    let line = user.trellis(&["root", "retire", &new]).failure(1);
    assert!(line.contains("active"), "{line}");
    let refused = user.trellis(&["root", "retire", &old]);
    let line = refused.failure(1);
    assert!(line.starts_with("trellis: 1 workload"), "{line}");
    assert!(
        line.contains(legacy),
        "the refusal names the identity: {line}"
    );
    assert!(line.contains("--force"), "{line}");
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    assert_eq!(root(&roots(&user), &old)["state"], "retiring");

    // --force retires it, after a warning that says what breaks.
    let forced = user.trellis(&["root", "retire", &old, "--force"]).success();
    let warning = forced.stderr.trim_end();
    assert_eq!(warning.lines().count(), 1, "{warning}");
    assert!(
        warning.starts_with("trellis: warning: --force:"),
        "{warning}"
    );
    assert!(
        warning.contains("will fail handshakes with peers until they renew (1 workload now)"),
        "{warning}"
    );
    assert!(
        forced.stdout.starts_with(&format!("Root {old} is retired")),
        "{}",
        forced.stdout
    );
    let after_retire = roots(&user);
    assert_eq!(root(&after_retire, &old)["state"], "retired");
    assert_eq!(after_retire["bundle_version"], version + 2);
    let human = user.trellis(&["root", "list"]).success().stdout;
    let row = human
        .lines()
        .find(|l| l.starts_with(&old))
        .expect("old root row");
    assert!(row.contains(" retired "), "{row}");
    // The published bundle holds only the new root, and the CLI still reaches the CA.
    assert_eq!(certs(&ca.bundle_pem()), certs(&new_root));
    let status = user
        .trellis(&["ca", "status", "-o", "json"])
        .success()
        .json();
    assert_eq!(status["intermediate"]["root_id"], new.as_str());
    assert_eq!(status["intermediate"]["late_in_life"], false);

    // A retired root cannot come back; an unknown one is named.
    let line = user.trellis(&["root", "activate", &old]).failure(1);
    assert!(line.contains("retired"), "{line}");
    let line = user
        .trellis(&["root", "activate", "ffffffffffffffff"])
        .failure(1);
    assert!(line.contains("no root \"ffffffffffffffff\""), "{line}");

    // Forcing an activation warns what breaks, even when nothing is known to.
    let third = user
        .trellis(&["root", "add", "-o", "json"])
        .success()
        .json()["root"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let forced = user
        .trellis(&["root", "activate", &third, "--force", "-o", "json"])
        .success();
    assert!(
        forced.stderr.starts_with("trellis: warning: --force:")
            && forced
                .stderr
                .contains("will refuse peers with certificates from it until they do"),
        "{}",
        forced.stderr
    );
    let json = forced.json();
    assert_eq!(json["action"], "activated");
    assert_eq!(json["forced"], true);
    assert_eq!(json["root"]["state"], "active");
}

#[test]
fn ca_status_shows_time_to_expiry_of_every_root_and_the_intermediate() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let status = user
        .trellis(&["ca", "status", "-o", "json"])
        .success()
        .json();
    let day = 86_400;
    let root_left = status["roots"][0]["seconds_left"].as_i64().expect("secs");
    assert!(
        (3649 * day..=3650 * day).contains(&root_left),
        "ten years: {status}"
    );
    let inter_left = status["intermediate"]["seconds_left"]
        .as_i64()
        .expect("secs");
    assert!((364 * day..=365 * day).contains(&inter_left), "{status}");
    assert_eq!(status["roots"][0]["late_in_life"], false);
    assert_eq!(status["intermediate"]["late_in_life"], false);
    let human = user.trellis(&["ca", "status"]).success().stdout;
    assert!(human.contains("(in 364d"), "{human}");
    assert!(human.contains("in 3649d"), "{human}");
    assert!(!human.contains("last 20% of life"), "{human}");
}
