//! The real `trellis-ca` on a real PostgreSQL (`--store postgres://…`): the database down
//! at start, lost and back while serving, and a password where it must not be.

mod crash_support;

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

/// Three `trellis-ca` processes on one database serve one CA: the others get the first's
/// keys as a copy of its data directory (as a Secret mounted into every pod would give
/// them), never through the database.
mod replicas {
    use tokio::sync::Barrier;
    use tonic::Code;
    use trellis_e2e::{Ca, Postgres, run};
    use trellis_identity::WorkloadKey;
    use trellis_proto::ca::v1::CertifyRequest;
    use trellis_proto::ca::v1::certify_request::Credential;

    use super::{TIMEOUT, issue};
    use crate::crash_support::CaAccess;

    /// Rounds of one token redeemed through every replica at once.
    const ROUNDS: usize = 8;

    #[test]
    fn replicas_on_one_database_issue_as_one_ca_and_a_join_token_works_once() {
        let db = Postgres::start();
        let a = Ca::start_with(&["--store", &db.url()]);
        let b = a.replica();
        let c = a.replica();
        assert_eq!(
            std::fs::read(a.bundle_pem()).expect("A's bundle"),
            std::fs::read(b.bundle_pem()).expect("B's bundle"),
            "one trust bundle"
        );

        // Issued through A, recorded where B reads it.
        let serial = issue(&a, &a.scratch().join("svid")).success().json()["serial"]
            .as_str()
            .expect("serial")
            .to_owned();
        let shown = run(
            b.admin_command(&["cert", "show", &serial, "-o", "json"]),
            TIMEOUT,
        )
        .success()
        .json();
        assert_eq!(shown["spiffe_id"], "spiffe://cluster.local/web", "{shown}");

        // One join token, redeemed through the three replicas at the same moment: once.
        let access = [&a, &b, &c].map(|ca| CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir));
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        for round in 0..ROUNDS {
            let id = format!("spiffe://cluster.local/joiner-{round}");
            let token = std::fs::read_to_string(a.token_file(&id)).expect("token file");
            let start = Barrier::new(3);
            let (through_a, through_b, through_c) = runtime.block_on(async {
                tokio::join!(
                    redeem(&access[0], &token, &start),
                    redeem(&access[1], &token, &start),
                    redeem(&access[2], &token, &start)
                )
            });
            let outcomes = [through_a, through_b, through_c];
            let won = outcomes.iter().filter(|o| o.is_ok()).count();
            assert_eq!(won, 1, "round {round}: {outcomes:?}");
            for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
                assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
                assert!(refused.message().contains("already used"), "{refused:?}");
            }
        }
    }

    /// Redeems `token` through `ca` once both attempts are ready.
    async fn redeem(
        ca: &CaAccess,
        token: &str,
        start: &Barrier,
    ) -> Result<tonic::Response<trellis_proto::ca::v1::CertifyResponse>, tonic::Status> {
        let mut client = ca.workload(None).await.expect("connect");
        let csr = WorkloadKey::generate()
            .expect("key")
            .csr_der(None)
            .expect("csr");
        start.wait().await;
        client
            .certify(CertifyRequest {
                csr_der: csr,
                credential: Some(Credential::JoinToken(token.to_owned())),
                ..Default::default()
            })
            .await
    }
}

/// Two replicas with empty data directories started at once on an empty database: one
/// initialises the CA, the other waits for it and then refuses to run without its keys,
/// saying so, instead of making a second root.
#[test]
fn replicas_starting_at_once_on_an_empty_database_initialise_it_once() {
    let db = Postgres::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut started: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let ready = trellis_e2e::ready_path(dir.path(), name);
            let mut cmd = command("trellis-ca");
            cmd.args(["--listen", "127.0.0.1:0", "--store", &db.url()])
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .arg("--ready-file")
                .arg(&ready);
            (trellis_e2e::Process::spawn(name, cmd, dir.path()), ready)
        })
        .collect();
    let serving = retry_until(TIMEOUT, "both replicas settle", || {
        let mut serving = 0;
        for (process, ready) in &mut started {
            if ready.exists() {
                serving += 1;
            } else if process.is_running() {
                return Err("a replica is still starting");
            }
        }
        Ok(serving)
    });
    assert_eq!(serving, 1, "one replica serves, the other stopped");
    let (loser, _) = started
        .iter_mut()
        .find(|(_, ready)| !ready.exists())
        .expect("the replica that did not start");
    assert!(
        loser.stderr().contains("initialised by another CA"),
        "{}",
        loser.stderr()
    );
    let roots = std::process::Command::new("psql")
        .arg(db.url())
        .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM roots"])
        .output()
        .expect("psql runs");
    assert_eq!(
        String::from_utf8_lossy(&roots.stdout).trim(),
        "1",
        "one root"
    );
}
