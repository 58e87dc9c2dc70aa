//! The real `trellis-ca` on a full or read-only data directory (a small tmpfs this test
//! mounts; it needs root): issuance is refused with `UNAVAILABLE` naming the cause and the
//! fix rather than handing out certificates that are not on disk, everything else keeps
//! being served, issuance resumes by itself when space returns, and a start on a full or
//! read-only directory fails with one clear line.

mod crash_support;

use std::time::Duration;

use crash_support::{CaAccess, Held, Received, check_recorded};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use trellis_e2e::{Ca, Tmpfs, command, run};
use trellis_identity::WorkloadKey;
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_proto::admin::v1::{CreateJoinTokenRequest, IssueCertificateRequest};
use trellis_proto::ca::v1::certify_request::Credential;
use trellis_proto::ca::v1::{CertifyRequest, GetTrustBundleRequest};

/// Big enough for the CA to start; small enough to fill in a blink.
const DISK: &str = "32m";
/// How long the CA may take to notice space is back (it reopens its store every 500 ms).
const RECOVERY: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn admin_issue(
    admin: &mut AdminClient<Channel>,
    spiffe_id: &str,
    round: usize,
) -> Result<Received, Status> {
    let key = WorkloadKey::generate().expect("key");
    let reply = admin
        .issue_certificate(IssueCertificateRequest {
            csr_der: key.csr_der(None).expect("csr"),
            spiffe_id: spiffe_id.to_owned(),
            ..Default::default()
        })
        .await?;
    Ok(Received::from_response(reply.get_ref(), "admin", round))
}

/// Bootstraps `spiffe_id` with a join token; returns what it holds.
async fn bootstrap(ca: &CaAccess, spiffe_id: &str) -> (Held, Received) {
    let mut admin = ca.admin().await.expect("admin");
    let token = admin
        .create_join_token(CreateJoinTokenRequest {
            spiffe_id: spiffe_id.to_owned(),
            ttl_seconds: 0,
        })
        .await
        .expect("token")
        .into_inner()
        .token;
    let key = WorkloadKey::generate().expect("key");
    let reply = ca
        .workload(None)
        .await
        .expect("connect")
        .certify(CertifyRequest {
            csr_der: key.csr_der(None).expect("csr"),
            credential: Some(Credential::JoinToken(token)),
            ..Default::default()
        })
        .await
        .expect("bootstrap")
        .into_inner();
    let received = Received::from_response(&reply, "join_token", 0);
    (
        Held {
            chain: reply.chain_der,
            key,
        },
        received,
    )
}

async fn renew(ca: &CaAccess, held: &Held) -> Result<(Held, Received), Status> {
    let key = WorkloadKey::generate().expect("key");
    let reply = ca
        .workload(Some(&held.identity()))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?
        .certify(CertifyRequest {
            csr_der: key.csr_der(None).expect("csr"),
            ..Default::default()
        })
        .await?
        .into_inner();
    let received = Received::from_response(&reply, "renewal", 0);
    Ok((
        Held {
            chain: reply.chain_der,
            key,
        },
        received,
    ))
}

#[track_caller]
fn assert_refused_for(status: &Status, cause: &str, fix: &str) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(
        message.contains(cause)
            && message.contains(fix)
            // "done": an admin call is refused before its handler, whatever it asked for.
            && (message.contains("nothing was issued") || message.contains("nothing was done")),
        "the refusal should name the cause ({cause:?}) and the fix ({fix:?}): {message:?}"
    );
}

async fn serves_bundle_and_health(ca: &CaAccess) {
    let bundle = ca
        .workload(None)
        .await
        .expect("connect")
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .expect("the trust bundle is served from memory while the store cannot write");
    assert!(!bundle.get_ref().root_certificates_der.is_empty());
    let health = HealthClient::new(ca.channel(None).await.expect("connect"))
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers while the store cannot write");
    assert_eq!(
        health.get_ref().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

async fn all_recorded(ca: &CaAccess, given: &[Received]) {
    let mut admin = ca.admin().await.expect("admin");
    for received in given {
        if let Err(problem) = check_recorded(&mut admin, received).await {
            panic!("{problem}");
        }
    }
}

#[test]
fn a_full_disk_refuses_issuance_and_the_ca_resumes_by_itself_when_space_returns() {
    // Declared first, so it is unmounted after the CA is gone.
    let disk = Tmpfs::mount(DISK);
    let mut ca = Ca::start_at(&disk.path().join("ca"), &[] as &[&str]);
    let pid = ca.process.id();
    let rt = runtime();
    let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
    let id = format!("spiffe://{}/disk/admin-issued", ca.trust_domain);
    let mut given = Vec::new();

    let (held, first) = rt.block_on(bootstrap(
        &access,
        &format!("spiffe://{}/disk/w", ca.trust_domain),
    ));
    given.push(first);
    let filler = disk.fill("filler");

    let (refusal, held) = rt.block_on(async {
        let mut admin = access.admin().await.expect("admin");
        // Writes may still fit in pages sled already has; issue until the disk says no.
        for _ in 0..2_000 {
            match admin_issue(&mut admin, &id, 1).await {
                Ok(received) => given.push(received),
                Err(status) => return (status, held),
            }
        }
        panic!("2000 certificates issued on a full disk: they cannot all be on it");
    });
    assert_refused_for(&refusal, "disk full", "free space");
    eprintln!(
        "refused after {} certificates on the full disk: {}",
        given.len() - 1,
        refusal.message()
    );

    rt.block_on(async {
        // While full: every kind of issuance is refused, and nothing else stops.
        let renewal = renew(&access, &held)
            .await
            .err()
            .expect("renewal on a full disk");
        assert_refused_for(&renewal, "disk full", "free space");
        let mut admin = access.admin().await.expect("admin");
        let again = admin_issue(&mut admin, &id, 1)
            .await
            .expect_err("issue on a full disk");
        assert_refused_for(&again, "disk full", "free space");
        serves_bundle_and_health(&access).await;
    });

    std::fs::remove_file(&filler).expect("free the space");
    let held = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + RECOVERY;
        loop {
            match renew(&access, &held).await {
                Ok((held, received)) => {
                    given.push(received);
                    return held;
                }
                Err(status) if tokio::time::Instant::now() < deadline => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("issuance did not resume within {RECOVERY:?}: {status:?}"),
            }
        }
    });
    assert!(
        ca.process.is_running(),
        "the CA must recover without exiting"
    );
    assert_eq!(ca.process.id(), pid);
    rt.block_on(async {
        let mut admin = access.admin().await.expect("admin");
        given.push(
            admin_issue(&mut admin, &id, 2)
                .await
                .expect("issue after recovery"),
        );
        let (_, received) = renew(&access, &held).await.expect("renewal after recovery");
        given.push(received);
        all_recorded(&access, &given).await;
    });

    // What was given is on disk, not only in the CA's memory: it survives SIGKILL.
    ca.kill();
    ca.restart();
    let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
    rt.block_on(all_recorded(&access, &given));
}

/// A join token that cannot be stored is not handed out, and the refusal says so (not
/// "nothing was issued", which is about certificates).
#[test]
fn a_join_token_refused_on_a_full_disk_says_no_token_was_created() {
    let disk = Tmpfs::mount(DISK);
    let ca = Ca::start_at(&disk.path().join("ca"), &[] as &[&str]);
    let rt = runtime();
    let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
    let _filler = disk.fill("filler");
    let refusal = rt.block_on(async {
        let mut admin = access.admin().await.expect("admin");
        // Writes may still fit in pages sled already has; create until the disk says no.
        for _ in 0..2_000 {
            let created = admin
                .create_join_token(CreateJoinTokenRequest {
                    spiffe_id: format!("spiffe://{}/disk/token", ca.trust_domain),
                    ttl_seconds: 0,
                })
                .await;
            if let Err(status) = created {
                return status;
            }
        }
        panic!("2000 join tokens created on a full disk: they cannot all be on it");
    });
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    let message = refusal.message();
    assert!(
        message.contains("no join token was created")
            && message.contains("disk full")
            && message.contains("free space"),
        "{message}"
    );
    assert!(!message.contains("issued"), "{message}");
}

/// Runs `trellis-ca` on `data_dir` expecting it to refuse to start; returns its last line.
fn failed_start(data_dir: &std::path::Path) -> String {
    let mut cmd = command("trellis-ca");
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    let outcome = run(cmd, Duration::from_secs(60));
    assert!(
        matches!(outcome.code, Some(code) if code != 0),
        "trellis-ca should exit non-zero: {outcome:?}"
    );
    let last = outcome.stderr.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("trellis-ca: "), "{outcome:?}");
    last
}

#[test]
fn the_ca_refuses_to_start_on_a_full_or_read_only_data_directory_and_says_why() {
    let disk = Tmpfs::mount(DISK);
    let data_dir = disk.path().join("ca");
    let mut ca = Ca::start_at(&data_dir, &[] as &[&str]);
    let rt = runtime();
    let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
    let id = format!("spiffe://{}/disk/before", ca.trust_domain);
    let before = rt.block_on(async {
        let mut admin = access.admin().await.expect("admin");
        admin_issue(&mut admin, &id, 0).await.expect("issue")
    });
    // Linux refuses to make a filesystem read-only while a process has a file open for
    // writing on it (sled keeps its log open), so a read-only directory can only be met at
    // start-up here; at run time EROFS takes the same path as ENOSPC (see
    // docs/crash-safety.md).
    let busy = disk
        .remount("ro")
        .expect_err("remount ro while the CA writes there");
    assert!(busy.contains("busy"), "{busy}");
    ca.stop();

    disk.remount("ro")
        .expect("remount read-only once the CA has stopped");
    let line = failed_start(&data_dir);
    assert!(
        line.contains("read-only") && line.contains("remount it read-write"),
        "{line}"
    );
    disk.remount("rw").expect("remount read-write");

    let filler = disk.fill("filler");
    let line = failed_start(&data_dir);
    assert!(
        line.contains("disk full") && line.contains("free space"),
        "{line}"
    );
    std::fs::remove_file(&filler).expect("free the space");

    ca.restart();
    let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
    rt.block_on(all_recorded(&access, &[before]));
}

/// Unfinished sled snapshots (`snap.<lsn>.generating`) in the CA's database directory.
fn unfinished_snapshots(data_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("db"))
        .expect("read the database directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("snap.") && name.ends_with(".generating"))
        .collect()
}

/// A start refused on a full disk must not leave anything that stops the next start: sled
/// 0.34 writes its snapshot while it opens, and an opening that runs out of space leaves
/// an empty `snap.<lsn>.generating`, which sled would read as a corrupted snapshot on every
/// later start. Once space is back, the CA starts and has every certificate it issued, after
/// a SIGKILL and after a clean SIGTERM alike.
#[test]
fn a_start_refused_on_a_full_disk_does_not_stop_the_next_one() {
    let disk = Tmpfs::mount(DISK);
    let data_dir = disk.path().join("ca");
    let mut ca = Ca::start_at(&data_dir, &[] as &[&str]);
    let rt = runtime();
    let id = format!("spiffe://{}/disk/survivor", ca.trust_domain);
    let mut given = Vec::new();
    let mut left_behind = 0;
    for (round, how) in ["SIGKILL", "SIGTERM"].into_iter().enumerate() {
        let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
        rt.block_on(async {
            let mut admin = access.admin().await.expect("admin");
            // Enough log for the next start to have a newer snapshot to write.
            for _ in 0..20 {
                given.push(admin_issue(&mut admin, &id, round).await.expect("issue"));
            }
        });
        match how {
            "SIGKILL" => drop(ca.kill()),
            _ => ca.stop(),
        }

        let filler = disk.fill("filler");
        let line = failed_start(&data_dir);
        assert!(
            line.contains("disk full") && line.contains("free space"),
            "{line}"
        );
        let unfinished = unfinished_snapshots(&data_dir);
        eprintln!("after the refused start ({how}): unfinished snapshots {unfinished:?}");
        left_behind += unfinished.len();
        std::fs::remove_file(&filler).expect("free the space");

        ca.restart();
        let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
        rt.block_on(all_recorded(&access, &given));
        assert!(
            unfinished_snapshots(&data_dir).is_empty(),
            "the start that succeeded leaves no unfinished snapshot"
        );
    }
    // Without this, the test would not have staged what it is about.
    assert!(
        left_behind > 0,
        "no refused start left an unfinished snapshot: the test did not stage the failure"
    );
}

/// The store's own promise, without the server around it: a write made to a database that
/// then failed is never acknowledged, not even after the store has reopened it and could
/// flush again (the write may not have reached the disk).
#[tokio::test(flavor = "multi_thread")]
async fn the_store_never_acknowledges_a_write_made_before_it_was_reopened() {
    use trellis_ca::store::AuditRecord;
    let disk = Tmpfs::mount("8m");
    let store = trellis_ca::store::open(&disk.path().join("db")).expect("open the store");
    let entry = AuditRecord {
        time: 1,
        kind: "test".into(),
        spiffe_id: String::new(),
        serial: String::new(),
        actor: "test".into(),
        detail: "x".repeat(512),
    };
    let mut acknowledged = 0;
    let filler = disk.fill("filler");
    let (stale, error) = loop {
        let mark = store.mark();
        let written = match store.append_audit(&entry) {
            Ok(()) => store.durable(mark).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => acknowledged += 1,
            Err(e) => break (mark, e),
        }
        assert!(
            acknowledged < 10_000,
            "10000 writes acknowledged on a full disk"
        );
    };
    assert!(error.to_string().contains("disk full"), "{error}");
    assert!(store.failure().is_some());

    std::fs::remove_file(&filler).expect("free the space");
    trellis_e2e::retry_until(RECOVERY, "the store reopens once space is back", || {
        store.failure().map_or(Ok(()), Err)
    });
    let refused = store
        .durable(stale)
        .await
        .expect_err("a write from before the reopen must not be acknowledged");
    assert!(refused.to_string().contains("reopened"), "{refused}");
    let mark = store.mark();
    store.append_audit(&entry).expect("write after recovery");
    store.durable(mark).await.expect("durable after recovery");
}
