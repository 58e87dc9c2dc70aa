//! The real `trellis-ca` on a real PostgreSQL (`--store postgres://…`): the database down
//! at start, lost and back while serving, and a password where it must not be.

use std::time::Duration;

use trellis_e2e::postgres::{DATABASE, USER};
use trellis_e2e::{Ca, Postgres, command, retry_until, run};

const TIMEOUT: Duration = Duration::from_secs(60);

/// How the CA names the database in its messages.
fn name(db: &Postgres) -> String {
    format!("{USER}@127.0.0.1:{}/{DATABASE}", db.port)
}

/// `trellis-ca` with `args` in a fresh data directory, run to its exit.
fn ca_exits(args: &[&str]) -> trellis_e2e::Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = command("trellis-ca");
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("ca"))
        .args(args);
    run(cmd, TIMEOUT)
}

#[test]
fn a_ca_whose_database_is_down_exits_non_zero_naming_it() {
    let mut db = Postgres::start();
    db.stop();
    let out = ca_exits(&["--store", &db.url()]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&name(&db)) && out.stderr.contains("unreachable"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_password_on_the_command_line_is_refused_before_anything_starts() {
    let out = ca_exits(&[
        "--store",
        "postgres://trellis:s3cret-pw@127.0.0.1:1/trellis",
    ]);
    let line = out.failure(2);
    assert!(
        line.contains("--store-password-file") && line.contains("TRELLIS_STORE_PASSWORD"),
        "{line}"
    );
    assert!(!out.stderr.contains("s3cret-pw"), "{}", out.stderr);
}

/// `trellis cert issue` for one workload through `ca`, as JSON.
fn issue(ca: &Ca, out: &std::path::Path) -> trellis_e2e::Outcome {
    run(
        ca.admin_command(&[
            "cert",
            "issue",
            "--spiffe-id",
            "spiffe://cluster.local/web",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--force",
            "-o",
            "json",
        ]),
        TIMEOUT,
    )
}

#[test]
fn a_ca_that_loses_its_database_answers_unavailable_naming_it_and_resumes_by_itself() {
    let mut db = Postgres::start();
    let mut ca = Ca::start_with(&["--store", &db.url()]);
    let out = ca.scratch().join("svid");
    let before = issue(&ca, &out).success().json()["serial"]
        .as_str()
        .expect("serial")
        .to_owned();

    db.stop();
    let refused = issue(&ca, &out);
    let line = refused.failure(1);
    assert!(
        line.contains("cannot serve") && line.contains(&name(&db)) && line.contains("unreachable"),
        "{line}"
    );
    assert!(ca.process.is_running(), "the CA keeps serving what it can");

    db.restart();
    let after = retry_until(
        Duration::from_secs(30),
        "issuance once the database is back",
        || {
            let outcome = issue(&ca, &out);
            match outcome.code {
                Some(0) => Ok(outcome.json()["serial"]
                    .as_str()
                    .expect("serial")
                    .to_owned()),
                _ => Err(outcome.stderr),
            }
        },
    );
    // Nothing acknowledged before the outage was lost, and the CA never restarted.
    for serial in [&before, &after] {
        run(ca.admin_command(&["cert", "show", serial]), TIMEOUT).success();
    }
    assert!(ca.process.is_running());
    ca.stop();
}
