//! Replicas of one CA on one PostgreSQL, with the real binaries: a change made through one
//! replica reaches the sidecars of another within two seconds (a revocation, a root's
//! bundle, an activation's new signer), bundle acknowledgements through any replica feed
//! one convergence check, both replicas' CRLs agree, and issuance survives a replica
//! killed under load.

mod crash_support;
mod mesh_support;

use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crash_support::{CaAccess, Received, check_recorded};
use mesh_support::*;
use trellis_e2e::process::{Signal, send_signal};
use trellis_e2e::{Ca, Postgres};
use trellis_identity::WorkloadKey;
use trellis_proto::admin::v1::{
    ActivateRootRequest, AddRootRequest, GetStatusRequest, IssueCertificateRequest,
    ListRootsRequest,
};

/// The bound a change made through one replica must meet at every other replica's sidecars.
const PROPAGATION: Duration = Duration::from_secs(2);

/// A CA on a fresh PostgreSQL and a second replica of it, each serving CRLs.
fn two_replicas() -> (Postgres, Ca, Ca) {
    let db = Postgres::start();
    let mut args = db.ca_args();
    args.extend(["--http-listen".into(), "127.0.0.1:0".into()]);
    let a = Ca::start_with(&args);
    let b = a.replica();
    (db, a, b)
}

#[test]
fn a_revocation_through_one_replica_closes_a_connection_of_sidecars_on_another_within_two_seconds()
{
    let (_db, a, b) = two_replicas();
    let echo = Echo::start();
    // Both sidecars take their certificates and streams from replica B only.
    let (backend, frontend) = pair(&b, &echo, "");
    let mut live = live_connection(frontend.outbound[0]);

    let mut admin = Admin::connect(&a);
    let revoked_at = Instant::now();
    let serials = admin
        .revoke_identity(id("/ns/demo/sa/frontend"))
        .expect("revoke through A");
    assert_eq!(serials.len(), 1);

    live.set_read_timeout(Some(PROPAGATION + Duration::from_secs(3)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = live.read_to_end(&mut rest);
    let closed_after = revoked_at.elapsed();
    eprintln!("revocation through A closed the connection of B's sidecars after {closed_after:?}");
    assert!(rest.is_empty(), "nothing more came through");
    assert!(
        closed_after < PROPAGATION,
        "live connection closed after {closed_after:?}"
    );
    assert!(
        metric(
            backend.admin,
            "trellis_sidecar_revoked_connections_closed_total"
        ) >= 1
    );

    // Both replicas' CRLs list the revoked certificate, under numbers of their own.
    let crls = [&a, &b].map(|ca| crl(ca, &serials[0]));
    assert_ne!(crls[0], crls[1], "two CRLs under one number");
}

/// The number of the CRL `ca` serves for its signing intermediate (read by openssl), after
/// checking that it lists `serial` (hex).
fn crl(ca: &Ca, serial: &str) -> u64 {
    let (status, pem) =
        http_get(ca.http.expect("--http-listen"), "/crl.pem").expect("GET /crl.pem");
    assert_eq!(status, 200, "{pem}");
    let file = ca.scratch().join("crl.pem");
    std::fs::write(&file, pem).expect("write the CRL");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(["crl", "-noout"])
            .args(args)
            .arg("-in")
            .arg(&file)
            .output()
            .expect("openssl runs (scripts/install-test-deps.sh installs it)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = openssl(&["-text"]);
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("serial number: {}", serial.to_ascii_lowercase())),
        "{serial} not in {text}"
    );
    let number = openssl(&["-crlnumber"]);
    u64::from_str_radix(
        number
            .trim()
            .strip_prefix("crlNumber=0x")
            .unwrap_or_else(|| panic!("{number}")),
        16,
    )
    .expect("hex CRL number")
}

#[test]
fn a_root_added_through_one_replica_converges_on_another_replicas_sidecars_before_it_activates() {
    let (_db, a, b) = two_replicas();
    let echo = Echo::start();
    let (_backend, frontend) = pair(&b, &echo, "");
    let mut admin_a = Admin::connect(&a);
    // Connected before the rotation: B's serving certificate then moves under the new root,
    // which the bundle in B's admin directory (written at its first start) does not hold.
    let mut admin_b = Admin::connect(&b);
    let list = |admin: &mut Admin| {
        admin
            .call(|mut c| async move { c.list_roots(ListRootsRequest {}).await })
            .expect("list roots")
    };
    within(Duration::from_secs(10), "B's sidecars acknowledge", || {
        let roots = list(&mut admin_a);
        roots.live_workloads >= 2 && roots.unconverged_workloads.is_empty()
    });

    // The frontend's sidecar is held still: it cannot receive the new bundle.
    assert!(send_signal(frontend.process.id(), Signal::STOP));
    let added_at = Instant::now();
    let new_root = admin_a
        .call(|mut c| async move { c.add_root(AddRootRequest::default()).await })
        .expect("add through A")
        .id;
    let version = list(&mut admin_a).bundle_version;
    within(PROPAGATION, "B's running sidecar acknowledges", || {
        list(&mut admin_a).unconverged_workloads == vec![id("/ns/demo/sa/frontend")]
    });
    let backend_after = added_at.elapsed();
    let activate = |admin: &mut Admin| {
        let root_id = new_root.clone();
        admin.call(|mut c| async move {
            c.activate_root(ActivateRootRequest {
                root_id,
                force: false,
            })
            .await
        })
    };
    let refused = activate(&mut admin_a).expect_err("refused while a sidecar lacks the root");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("/ns/demo/sa/frontend")
            && !refused.message().contains("/ns/demo/sa/backend"),
        "{}",
        refused.message()
    );

    // Released, it receives the bundle from B and acknowledges there; A sees it.
    let resumed_at = Instant::now();
    assert!(send_signal(frontend.process.id(), Signal::CONT));
    within(PROPAGATION, "the held sidecar acknowledges", || {
        let roots = list(&mut admin_a);
        roots.bundle_version == version && roots.unconverged_workloads.is_empty()
    });
    let frontend_after = resumed_at.elapsed();
    eprintln!(
        "bundle version {version} made through A acknowledged through B after {backend_after:?} \
         (and {frontend_after:?} after the held sidecar resumed)"
    );
    let activated = activate(&mut admin_a).expect("activation once every sidecar has the root");
    assert_eq!(activated.id, new_root);

    // B signs with the new intermediate within the bound: A sealed its key into the
    // database, so B opens it there (no file is copied between replicas).
    let signing_root = |admin: &mut Admin| {
        admin
            .call(|mut c| async move { c.get_status(GetStatusRequest {}).await })
            .expect("status")
            .intermediate
            .expect("intermediate")
            .root_id
    };
    within(PROPAGATION, "B signs under the new root", || {
        signing_root(&mut admin_b) == new_root
    });
    drop(frontend);
}

/// Issuers spread over three replicas; one replica is killed mid-load in each round.
mod kill_a_replica {
    use super::*;

    const ISSUERS: usize = 32;
    const ROUNDS: usize = 10;
    /// Load before and after the kill, in each round.
    const BEFORE_KILL: Duration = Duration::from_millis(700);
    const AFTER_KILL: Duration = Duration::from_millis(1200);

    #[derive(Default)]
    struct Given {
        received: Vec<Received>,
        /// Certificates given after the kill.
        after_kill: usize,
        /// Failures other than the killed replica's (which the issuer moves past).
        errors: Vec<String>,
    }

    /// Issues through `replicas`, starting at the `index`th, moving to the next on any failure,
    /// until `stop` is set.
    async fn issuer(
        index: usize,
        round: usize,
        replicas: Vec<CaAccess>,
        killed: Arc<std::sync::atomic::AtomicBool>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        given: Arc<Mutex<Given>>,
    ) {
        use std::sync::atomic::Ordering;
        let mut at = index % replicas.len();
        let mut failures_in_a_row = 0;
        let mut connected = None;
        while !stop.load(Ordering::Relaxed) {
            let csr = WorkloadKey::generate()
                .expect("key")
                .csr_der(None)
                .expect("csr");
            let result = async {
                let admin = match &mut connected {
                    Some(admin) => admin,
                    None => {
                        connected.insert(replicas[at].admin().await.map_err(|e| e.to_string())?)
                    }
                };
                admin
                    .issue_certificate(IssueCertificateRequest {
                        csr_der: csr,
                        spiffe_id: format!("spiffe://cluster.local/issuer-{index}"),
                        dns_names: Vec::new(),
                        ttl_seconds: 0,
                    })
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
            }
            .await;
            match result {
                Ok(response) => {
                    failures_in_a_row = 0;
                    let mut given = given.lock().expect("lock");
                    given
                        .received
                        .push(Received::from_response(&response, "admin", round));
                    if killed.load(Ordering::Relaxed) {
                        given.after_kill += 1;
                    }
                }
                Err(e) => {
                    connected = None;
                    failures_in_a_row += 1;
                    if failures_in_a_row > replicas.len() {
                        given.lock().expect("lock").errors.push(e);
                    }
                    // The next replica, as the sidecar and the CLI fail over.
                    at = (at + 1) % replicas.len();
                }
            }
        }
    }

    #[test]
    fn sigkill_of_one_replica_under_load_loses_nothing_and_clients_continue_on_the_others() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let db = Postgres::start();
        let first = Ca::start_with(&db.ca_args());
        let mut replicas = [first.replica(), first.replica(), first];
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let mut all: Vec<Received> = Vec::new();
        let started = Instant::now();
        for round in 0..ROUNDS {
            let access: Vec<CaAccess> = replicas
                .iter()
                .map(|ca| CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir))
                .collect();
            let given = Arc::new(Mutex::new(Given::default()));
            let (killed, stop) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let tasks: Vec<_> = (0..ISSUERS)
                .map(|i| {
                    runtime.spawn(issuer(
                        i,
                        round,
                        access.clone(),
                        killed.clone(),
                        stop.clone(),
                        given.clone(),
                    ))
                })
                .collect();
            std::thread::sleep(BEFORE_KILL);
            let victim = round % replicas.len();
            replicas[victim].kill();
            killed.store(true, Ordering::Relaxed);
            std::thread::sleep(AFTER_KILL);
            stop.store(true, Ordering::Relaxed);
            runtime.block_on(async {
                for task in tasks {
                    task.await.expect("issuer");
                }
            });
            let given = std::mem::take(&mut *given.lock().expect("lock"));
            assert!(given.errors.is_empty(), "round {round}: {:?}", given.errors);
            assert!(
                given.after_kill > 0,
                "round {round}: nothing was issued after replica {victim} was killed"
            );
            eprintln!(
                "round {round}: {} certificates, {} after the kill",
                given.received.len(),
                given.after_kill
            );
            all.extend(given.received);
            replicas[victim].restart();
        }

        // Every acknowledged certificate is recorded, as given, and no serial twice.
        let check = CaAccess::new(
            replicas[0].addr,
            &replicas[0].trust_domain,
            &replicas[0].admin_dir,
        );
        let missing: Vec<String> = runtime.block_on(async {
            let mut admin = check.admin().await.expect("admin");
            let mut missing = Vec::new();
            for received in &all {
                if let Err(e) = check_recorded(&mut admin, received).await {
                    missing.push(e);
                }
            }
            missing
        });
        assert!(
            missing.is_empty(),
            "{} missing: {:?}",
            missing.len(),
            missing
        );
        let serials: HashSet<&str> = all.iter().map(|r| r.serial.as_str()).collect();
        assert_eq!(serials.len(), all.len(), "a serial was given twice");
        eprintln!(
            "{ROUNDS} rounds, {} certificates, all recorded, in {:?}",
            all.len(),
            started.elapsed()
        );
    }
}

#[test]
fn a_jwt_key_activated_through_one_replica_signs_on_another_within_two_seconds() {
    use trellis_proto::admin::v1::{ActivateJwtKeyRequest, AddJwtKeyRequest};
    use trellis_proto::ca::v1::MintJwtSvidRequest;
    let (_db, a, b) = two_replicas();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let through_b = CaAccess::new(b.addr, &b.trust_domain, &b.admin_dir);
    // A workload certificate from B, to mint JWT-SVIDs through B with.
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_der(None).expect("csr");
    let issued = runtime.block_on(async {
        let mut admin = through_b.admin().await.expect("admin on B");
        admin
            .issue_certificate(IssueCertificateRequest {
                csr_der: csr,
                spiffe_id: id("/minter"),
                dns_names: Vec::new(),
                ttl_seconds: 0,
            })
            .await
            .expect("issue through B")
            .into_inner()
    });
    let held = crash_support::Held {
        chain: issued.chain_der,
        key,
    };
    let kid_from_b = || {
        runtime.block_on(async {
            let mut workload = through_b
                .workload(Some(&held.identity()))
                .await
                .expect("connect to B");
            let token = workload
                .mint_jwt_svid(MintJwtSvidRequest {
                    audience: vec!["db".into()],
                    ttl_seconds: 0,
                })
                .await
                .expect("mint through B")
                .into_inner()
                .token;
            jsonwebtoken::decode_header(&token)
                .expect("JWS header")
                .kid
                .expect("kid")
        })
    };
    let old_kid = kid_from_b();

    let mut admin_a = Admin::connect(&a);
    let new_kid = admin_a
        .call(|mut c| async move { c.add_jwt_key(AddJwtKeyRequest {}).await })
        .expect("add through A")
        .key_id;
    let activate_kid = new_kid.clone();
    admin_a
        .call(|mut c| async move {
            c.activate_jwt_key(ActivateJwtKeyRequest {
                key_id: activate_kid,
                force: false,
            })
            .await
        })
        .expect("activate through A");
    assert_ne!(old_kid, new_kid);
    // A sealed the new key into the database, so B opens it there.
    within(PROPAGATION, "B signs with the new key", || {
        kid_from_b() == new_kid
    });
}
