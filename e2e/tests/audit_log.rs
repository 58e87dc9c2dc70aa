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

/// `trellis audit verify -o json` against the running CA: the report.
fn online_verify(ca: &Ca) -> serde_json::Value {
    run(
        ca.admin_command(&["audit", "verify", "-o", "json"]),
        TIMEOUT,
    )
    .success()
    .json()
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

/// A running CA whose audit log holds five join tokens (for `<service>-0` to `-4`) and a
/// root change, which is signed into the log at once.
fn with_entries(service: &str) -> Ca {
    let ca = Ca::start();
    for i in 0..5 {
        ca.token_file(&format!("spiffe://cluster.local/ns/prod/sa/{service}-{i}"));
    }
    run(ca.admin_command(&["root", "add"]), TIMEOUT).success();
    ca
}

#[test]
fn an_edited_entry_is_named_online_and_offline() {
    let mut ca = with_entries("web");
    let online = run(ca.admin_command(&["audit", "verify"]), TIMEOUT).success();
    assert!(online.stdout.contains("intact"), "{}", online.stdout);
    let json = online_verify(&ca);
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

/// Entries sled has archived (moved out of its database into batch files beside it, as the
/// CA's background task does some minutes after they are written) verify offline and
/// online like the rest, and an edit inside an archive file is named.
#[test]
fn archived_entries_verify_and_an_edit_in_the_archive_is_named() {
    let mut ca = with_entries("api");
    ca.stop();
    let before = offline_verify(&ca.data_dir, true).success().json();
    assert_eq!(before["intact"], true, "{before}");

    // What the background task does once the entries are old enough: everything up to now,
    // which leaves the live certificates (all unexpired) where they are.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let moved = trellis_e2e::retry_until(TIMEOUT, "opening the stopped CA's store", || {
        runtime.block_on(async {
            let store = trellis_ca::store::open(&ca.data_dir.join("db"))?;
            let moved = store.archive_expired(now, 100_000)?;
            store.flush_now()?;
            Ok::<_, trellis_ca::store::StoreError>(moved)
        })
    });
    assert!(
        moved >= 6,
        "the tokens' and the root's entries moved: {moved}"
    );
    let archive = ca.data_dir.join("db").join("audit-history");
    let batches: Vec<_> = std::fs::read_dir(&archive)
        .expect("the archive's folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(batches.len(), 1, "{batches:?}");

    let after = offline_verify(&ca.data_dir, true).success().json();
    assert_eq!(after, before, "the same report with the entries archived");
    ca.restart();
    let online = online_verify(&ca);
    assert_eq!(online["intact"], true, "{online}");
    ca.stop();

    // One byte of entry 3 changed inside the archive file of a copy. A record there is the
    // sequence and the stored entry, each after its 4-byte big-endian length.
    let copy = ca.scratch().join("copy");
    copy_dir(&ca.data_dir, &copy);
    let file = copy
        .join("db")
        .join("audit-history")
        .join(batches[0].file_name().expect("name"));
    let mut bytes = std::fs::read(&file).expect("read the batch");
    let mut at = b"trellis-audit-history-1\n".len();
    let field = |bytes: &[u8], at: usize| {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        (at + 4, at + 4 + len)
    };
    loop {
        let (sequence_start, sequence_end) = field(&bytes, at);
        let (value_start, value_end) = field(&bytes, sequence_end);
        if bytes[sequence_start..sequence_end] == 3u64.to_be_bytes() {
            assert!(value_end > value_start + 2);
            bytes[value_end - 2] ^= 0x01;
            break;
        }
        at = value_end;
    }
    std::fs::write(&file, bytes).expect("write the batch");
    let report = offline_verify(&copy, true);
    assert_eq!(report.code, Some(1), "{}", report.stderr);
    let report = report.json();
    assert_eq!(report["intact"], false, "{report}");
    assert_eq!(report["problem_entry"], 3, "{report}");
}
