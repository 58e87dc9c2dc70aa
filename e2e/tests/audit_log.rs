//! The audit log as an auditor checks it: `trellis audit verify` against the running CA,
//! `trellis-ca audit verify --data` on a copy of its data directory, and both again after
//! the copy's database was edited the way someone holding the files could.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trellis_e2e::{Ca, command, run};

const TIMEOUT: Duration = Duration::from_secs(60);

fn offline_verify(data: &Path, json: bool) -> trellis_e2e::Outcome {
    let mut cmd = command("trellis-ca");
    cmd.args(["audit", "verify", "--data"]).arg(data);
    if json {
        cmd.arg("--json");
    }
    run(cmd, TIMEOUT)
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(status.success(), "copying {} failed", from.display());
}

#[test]
fn an_edited_entry_is_named_online_and_offline() {
    let mut ca = Ca::start();
    for i in 0..5 {
        ca.token_file(&format!("spiffe://cluster.local/ns/prod/sa/web-{i}"));
    }
    // A root change is signed into the log at once.
    run(ca.admin_command(&["root", "add"]), TIMEOUT).success();
    let online = run(ca.admin_command(&["audit", "verify"]), TIMEOUT).success();
    assert!(online.stdout.contains("intact"), "{}", online.stdout);
    let json = run(
        ca.admin_command(&["audit", "verify", "-o", "json"]),
        TIMEOUT,
    )
    .success()
    .json();
    assert_eq!(json["intact"], true, "{json}");
    assert!(json["entries"].as_u64().expect("entries") >= 6, "{json}");
    assert!(json["last_checkpoint_entry"].as_u64().is_some(), "{json}");

    // Stopped (SIGTERM signs the last entries), the data directory verifies offline.
    ca.stop();
    let offline = offline_verify(&ca.data_dir, true).success().json();
    assert_eq!(offline["intact"], true, "{offline}");
    assert_eq!(
        offline["entries_after_last_checkpoint"], 0,
        "a clean stop signs a checkpoint: {offline}"
    );

    // One byte of entry 3 changed in a copy.
    let copy = ca.scratch().join("copy");
    copy_dir(&ca.data_dir, &copy);
    {
        let db = sled::open(copy.join("db")).expect("open the copy's database");
        let audit = db.open_tree("audit_chain").expect("audit tree");
        let mut value = audit
            .get(3u64.to_be_bytes())
            .expect("read")
            .expect("entry 3")
            .to_vec();
        let last = value.len() - 2;
        value[last] ^= 0x01;
        audit.insert(3u64.to_be_bytes(), value).expect("write");
        db.flush().expect("flush");
    }
    // sled lets go of its lock shortly after the last handle is dropped.
    let found = trellis_e2e::retry_until(TIMEOUT, "opening the tampered copy", || {
        let out = offline_verify(&copy, true);
        match out.code {
            Some(2) => Err(out.stderr),
            _ => Ok(out),
        }
    });
    assert_eq!(found.code, Some(1), "{}", found.stderr);
    let report = found.json();
    assert_eq!(report["intact"], false, "{report}");
    assert_eq!(report["problem_entry"], 3, "{report}");
    let human = offline_verify(&copy, false);
    assert_eq!(human.code, Some(1), "{}", human.stderr);
    assert!(
        human.stdout.contains("entry 3 was altered"),
        "{}",
        human.stdout
    );

    // A CA serving the tampered copy: the admin API's verification names it too.
    let tampered = Ca::start_at(&copy, &[] as &[&str]);
    let online = run(tampered.admin_command(&["audit", "verify"]), TIMEOUT);
    let line = online.failure(1);
    assert!(line.contains("entry 3"), "{line}");
    assert!(
        online.stdout.contains("entry 3 was altered"),
        "stdout: {}\nstderr: {}",
        online.stdout,
        online.stderr
    );

    // `trellis check` fails the audit-log check and exits 2.
    let checked = run(tampered.admin_command(&["check", "-o", "json"]), TIMEOUT);
    assert_eq!(checked.code, Some(2), "{}", checked.stdout);
    let report = checked.json();
    let audit = report["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|v| v["check"] == "audit log")
        .cloned()
        .expect("an audit log verdict");
    assert_eq!(audit["level"], "fail", "{audit}");
    assert!(
        audit["detail"]
            .as_str()
            .is_some_and(|d| d.contains("entry 3")),
        "{audit}"
    );
}
