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
    let out = ca_exits(&db.ca_args().iter().map(String::as_str).collect::<Vec<_>>());
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

#[test]
fn a_ca_on_postgres_without_a_usable_key_encryption_key_refuses_to_start_naming_the_fix() {
    let db = Postgres::start();
    let missing = ca_exits(&["--store", &db.url()]);
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(
        missing.stderr.contains("--key-encryption-key-file")
            && missing.stderr.contains("head -c 32 /dev/urandom | base64"),
        "{}",
        missing.stderr
    );

    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let kek = dir.path().join("kek");
    let with = |contents: &[u8], mode: u32| {
        std::fs::write(&kek, contents).expect("write");
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let kek = kek.to_str().expect("utf-8 path");
        ca_exits(&["--store", &db.url(), "--key-encryption-key-file", kek])
    };
    // 32 bytes, base64, but readable by the group.
    let open = with(b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", 0o640);
    assert_eq!(open.code, Some(1), "{open:?}");
    assert!(open.stderr.contains("chmod 600"), "{}", open.stderr);
    let short = with(b"c2hvcnQ=\n", 0o600);
    assert_eq!(short.code, Some(1), "{short:?}");
    assert!(
        short.stderr.contains("32 random bytes") && short.stderr.contains("head -c 32"),
        "{}",
        short.stderr
    );
    let roots = std::process::Command::new("psql")
        .arg(db.url())
        .args(["-X", "-A", "-t", "-c", "SELECT to_regclass('roots')::text"])
        .output()
        .expect("psql runs");
    assert_eq!(
        String::from_utf8_lossy(&roots.stdout).trim(),
        "",
        "refused before the database was touched"
    );
}

#[test]
fn check_config_refuses_postgres_without_a_key_encryption_key() {
    let url = "postgres://trellis@127.0.0.1:1/trellis";
    let missing = ca_exits(&["--check-config", "--store", url]);
    let line = missing.failure(2);
    assert!(
        line.contains("--key-encryption-key-file") && line.contains("head -c 32"),
        "{line}"
    );
    let db = Postgres::start();
    let kek = db.kek_file();
    let given = ca_exits(&[
        "--check-config",
        "--store",
        url,
        "--key-encryption-key-file",
        kek.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(given.code, Some(0), "{given:?}");
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
    let mut ca = Ca::start_with(&db.ca_args());
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
    // What it holds in memory it still serves: the trust bundle.
    let access = crash_support::CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
    let bundle = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let mut client = access.workload(None).await.expect("connect");
            client
                .get_trust_bundle(trellis_proto::ca::v1::GetTrustBundleRequest {})
                .await
        })
        .expect("the bundle while the database is down");
    assert_eq!(bundle.get_ref().root_certificates_der.len(), 1);

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

/// Three `trellis-ca` processes on one database serve one CA, each with a data directory
/// of its own: the keys reach them sealed through the database, under the one KEK file.
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

    /// A second replica: its own empty data directory, the same database and KEK.
    fn second_replica(db: &Postgres) -> Ca {
        Ca::start_with(&db.ca_args())
    }

    #[test]
    fn replicas_on_one_database_issue_as_one_ca_and_a_join_token_works_once() {
        let db = Postgres::start();
        let a = Ca::start_with(&db.ca_args());
        let b = second_replica(&db);
        let c = second_replica(&db);
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
/// initialises the CA, storing its keys sealed in the same turn; the other waits for it,
/// finds them and serves the same CA. No private key is readable in a dump.
#[test]
fn replicas_starting_at_once_on_an_empty_database_initialise_it_once() {
    let db = Postgres::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut started: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let ready = trellis_e2e::ready_path(dir.path(), name);
            let mut cmd = command("trellis-ca");
            cmd.args(["--listen", "127.0.0.1:0"])
                .args(db.ca_args())
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .arg("--ready-file")
                .arg(&ready);
            (trellis_e2e::Process::spawn(name, cmd, dir.path()), ready)
        })
        .collect();
    retry_until(TIMEOUT, "both replicas serve", || {
        for (process, ready) in &mut started {
            if !ready.exists() {
                if !process.is_running() {
                    panic!("a replica stopped: {}", process.stderr());
                }
                return Err("a replica is still starting");
            }
        }
        Ok(())
    });
    let bundles: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| std::fs::read(dir.path().join(name).join("bundle.pem")).expect("bundle"))
        .collect();
    assert_eq!(bundles[0], bundles[1], "one trust bundle");
    let count = |table: &str| psql(&db, &format!("SELECT count(*) FROM {table}"));
    assert_eq!(count("roots"), "1", "one root");
    assert_eq!(count("intermediates"), "1", "one intermediate");
    assert_eq!(count("jwt_keys"), "1", "one JWT key");
    assert_eq!(count("sealed_keys"), "3", "their three keys, sealed");
    no_private_key_in_a_dump(&db);
}

/// `psql -c query` against the test database, its output trimmed.
fn psql(db: &Postgres, query: &str) -> String {
    let out = std::process::Command::new("psql")
        .arg(db.url())
        .args(["-X", "-A", "-t", "-c", query])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A `pg_dump` of the whole database holds no PEM private key, as text or as bytea hex.
fn no_private_key_in_a_dump(db: &Postgres) {
    let out = std::process::Command::new("pg_dump")
        .arg(db.url())
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(dump.contains("sealed_keys"), "the dump has the sealed keys");
    let pem_header = "-----BEGIN PRIVATE KEY";
    let as_hex: String = pem_header.bytes().map(|b| format!("{b:02x}")).collect();
    for needle in ["private key-----".to_owned(), as_hex] {
        assert!(!dump.contains(&needle), "the dump holds {needle:?}");
    }
}

/// Root and JWT-key rotation across replicas that share no files: the root and the JWT key
/// are added through A, activated through B (the intermediate made there), and both sign
/// with keys the other made.
#[test]
fn a_root_added_through_one_replica_and_activated_through_another_signs_on_both() {
    let db = Postgres::start();
    let mut a = Ca::start_with(&db.ca_args());
    let crl_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut b_args = db.ca_args();
    b_args.extend(["--http-listen".into(), format!("127.0.0.1:{crl_port}")]);
    let mut b = Ca::start_with(&b_args);
    let first_intermediate = psql(&db, "SELECT id FROM intermediates");
    // The root a certificate issued through `ca` chains to, as the store recorded it.
    let root_of_issued = |ca: &Ca| -> String {
        let serial = issue(ca, &ca.scratch().join("svid")).success().json()["serial"]
            .as_str()
            .expect("serial")
            .to_owned();
        run(
            ca.admin_command(&["cert", "show", &serial, "-o", "json"]),
            TIMEOUT,
        )
        .success()
        .json()["root_id"]
            .as_str()
            .expect("root_id")
            .to_owned()
    };
    let first = root_of_issued(&a);
    assert_eq!(root_of_issued(&b), first, "both sign under the first root");

    let added = run(a.admin_command(&["root", "add", "-o", "json"]), TIMEOUT)
        .success()
        .json();
    let new_root = added["root"]["id"].as_str().expect("root id").to_owned();
    let added_jwt = run(a.admin_command(&["jwt-key", "add", "-o", "json"]), TIMEOUT)
        .success()
        .json();
    let new_kid = added_jwt["key"]["key_id"].as_str().expect("kid").to_owned();
    // B learns of the new root in the bundle from the store (here by a restart); B holds no
    // file of A's: it reads the new root's key sealed from the database.
    b.restart();
    run(
        b.admin_command(&["root", "activate", &new_root, "--force"]),
        TIMEOUT,
    )
    .success();
    assert_eq!(root_of_issued(&b), new_root, "B signs under the new root");
    // B signs the CRL of the first intermediate, whose key A made, on request.
    let crl = http_get(crl_port, &format!("/crl/{first_intermediate}"));
    assert!(
        crl.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&crl)
    );
    let body = crl
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a body")
        + 4;
    assert_eq!(crl.get(body), Some(&0x30), "a DER CRL");
    // The JWT-SVID key A made, activated through B, which loads it to sign with.
    let activated = run(
        b.admin_command(&["jwt-key", "activate", &new_kid, "--force", "-o", "json"]),
        TIMEOUT,
    )
    .success()
    .json();
    assert_eq!(activated["key"]["state"], "active", "{activated}");

    // A restarted loads the intermediate B made, whose key only the database holds. It is
    // reached with B's admin credentials, which activation moved to the new root (A's own
    // were made under the first root, whose bundle alone does not accept A's new chain).
    a.restart();
    a.admin_dir = b.admin_dir.clone();
    assert_eq!(root_of_issued(&a), new_root, "A signs under the new root");
    // Two roots, two intermediates, two JWT keys.
    assert_eq!(psql(&db, "SELECT count(*) FROM sealed_keys"), "6");
    no_private_key_in_a_dump(&db);
}

/// A plain HTTP/1.1 GET to 127.0.0.1:`port`, the whole response.
fn http_get(port: u16, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response");
    response
}

/// PostgreSQL restarted while 8 clients issue through the CA as fast as they can: every
/// refusal meanwhile is UNAVAILABLE naming the database, issuance resumes by itself, and
/// every certificate a client was given is recorded with the DER it got.
#[test]
fn a_database_restart_under_issuance_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use crash_support::{CaAccess, Received, check_recorded};
    use trellis_identity::WorkloadKey;
    use trellis_proto::admin::v1::IssueCertificateRequest;

    const CLIENTS: usize = 8;
    let mut db = Postgres::start();
    let ca = Ca::start_with(&db.ca_args());
    let access = Arc::new(CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let given = Arc::new(Mutex::new(Vec::<Received>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (access, stop, given, count, refusals) = (
                access.clone(),
                stop.clone(),
                given.clone(),
                count.clone(),
                refusals.clone(),
            );
            runtime.spawn(async move {
                let mut admin = access.admin().await.expect("admin connection");
                while !stop.load(Ordering::SeqCst) {
                    let csr = WorkloadKey::generate()
                        .expect("key")
                        .csr_der(None)
                        .expect("csr");
                    let reply = admin
                        .issue_certificate(IssueCertificateRequest {
                            csr_der: csr,
                            spiffe_id: format!("spiffe://cluster.local/issuer-{n}"),
                            ..Default::default()
                        })
                        .await;
                    match reply {
                        Ok(r) => {
                            given.lock().expect("lock").push(Received::from_response(
                                r.get_ref(),
                                "admin",
                                0,
                            ));
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(status) => refusals.lock().expect("lock").push(format!(
                            "{:?}: {}",
                            status.code(),
                            status.message()
                        )),
                    }
                }
            })
        })
        .collect();
    let reach = |n: usize| {
        retry_until(Duration::from_secs(30), "issuance goes on", || {
            let done = count.load(Ordering::SeqCst);
            if done >= n { Ok(done) } else { Err(done) }
        })
    };
    let before = reach(50);
    db.restart();
    reach(before + 50);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        runtime.block_on(client).expect("client task");
    }

    for refusal in refusals.lock().expect("lock").iter() {
        assert!(
            refusal.starts_with("Unavailable") && refusal.contains(&name(&db)),
            "{refusal}"
        );
    }
    let given = given.lock().expect("lock").clone();
    runtime.block_on(async {
        let mut admin = access.admin().await.expect("admin connection");
        for received in &given {
            check_recorded(&mut admin, received)
                .await
                .expect("recorded");
        }
    });
    eprintln!(
        "{} certificates given, {} refusals while PostgreSQL restarted",
        given.len(),
        refusals.lock().expect("lock").len()
    );
    assert!(given.len() > before, "{} given", given.len());
}

/// `trellis-ca audit verify --store` reads the log of a PostgreSQL store while the replica
/// writing it runs, and names an entry edited in the database the way someone holding
/// its credentials could.
#[test]
fn the_audit_log_of_a_postgres_store_verifies_offline_and_names_an_edited_entry() {
    let db = Postgres::start();
    let ca = Ca::start_with(&db.ca_args());
    for i in 0..5 {
        ca.token_file(&format!("spiffe://cluster.local/ns/prod/sa/web-{i}"));
    }
    run(ca.admin_command(&["root", "add"]), TIMEOUT).success();
    let verify = |url: &str| {
        let mut cmd = command("trellis-ca");
        cmd.args(["audit", "verify", "--json", "--store", url]);
        run(cmd, TIMEOUT)
    };
    let intact = verify(&db.url()).success().json();
    assert_eq!(intact["intact"], true, "{intact}");
    assert!(
        intact["entries"].as_u64().expect("entries") >= 6,
        "{intact}"
    );
    assert!(
        intact["last_checkpoint_entry"].as_u64().is_some(),
        "{intact}"
    );

    psql(
        &db,
        "UPDATE audit SET value = set_byte(value, length(value) - 2, \
         get_byte(value, length(value) - 2) # 1) WHERE sequence = 3",
    );
    let found = verify(&db.url());
    assert_eq!(found.code, Some(1), "{}", found.stderr);
    assert_eq!(found.json()["problem_entry"], 3, "{}", found.stdout);
    let online = run(ca.admin_command(&["audit", "verify"]), TIMEOUT);
    assert!(online.failure(1).contains("entry 3"), "{online:?}");

    let unreachable = verify(&format!("postgres://{USER}@127.0.0.1:1/{DATABASE}"));
    let line = unreachable.failure(2);
    assert!(line.contains("cannot open PostgreSQL"), "{line}");
}
