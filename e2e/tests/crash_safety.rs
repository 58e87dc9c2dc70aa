//! Crash safety of the real `trellis-ca`: SIGKILL at random moments during 32-way concurrent
//! issuance, restart on the same data directory, and check that nothing acknowledged was
//! lost. The seed is printed; replay a failure with `TRELLIS_CRASH_SEED=<seed>`.
//!
//! Each round: 32 workloads issue as fast as they can (join-token bootstraps, renewals over
//! mTLS with the certificate they hold, admin issues), while an admin revokes certificates
//! and sometimes adds a trust root. Once a random number of certificates has been handed
//! out (plus a random few milliseconds), the CA is killed with SIGKILL and started again.
//! Then, for everything a client was *given* (a reply it received):
//! - every certificate is in the store (admin `GetCertificate`) with the same DER;
//! - no serial was ever handed out twice, across all rounds;
//! - every acknowledged revocation is still recorded; every acknowledged root is listed;
//! - every acknowledged join token still exists (redeemable, or used by an issuance);
//! - every workload can renew with the last certificate it was given;
//! - the store opens and the CA serves (it printed its listening line, answers calls).

mod crash_support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crash_support::{CaAccess, Held, Received, Rng, SEED_VAR, check_recorded};
use tokio::sync::Notify;
use tonic::Code;
use trellis_e2e::Ca;
use trellis_identity::WorkloadKey;
use trellis_proto::admin::v1::{
    AddRootRequest, CreateJoinTokenRequest, GetCertificateRequest, IssueCertificateRequest,
    ListRootsRequest, RevokeCertificateRequest,
};
use trellis_proto::ca::v1::certify_request::Credential;
use trellis_proto::ca::v1::{CertifyRequest, GetTrustBundleRequest};

const ROUNDS: usize = 20;
const WORKLOADS: usize = 32;
/// Every this-many workloads, one issues through the admin API instead of the workload API.
const ADMIN_EVERY: usize = 8;
/// How long one round may take to reach its kill point before the test gives up.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// What happened in one round, shared by its tasks.
struct Round {
    index: usize,
    stop: AtomicBool,
    given: Mutex<Vec<Received>>,
    count: AtomicUsize,
    progress: Notify,
    /// Serials of certificates whose revocation the CA acknowledged.
    revoked: Mutex<Vec<String>>,
    /// Ids of roots whose addition the CA acknowledged.
    roots: Mutex<Vec<String>>,
    /// Things that must not happen, found while the CA was still alive.
    violations: Mutex<Vec<String>>,
}

impl Round {
    fn new(index: usize) -> Arc<Self> {
        Arc::new(Self {
            index,
            stop: AtomicBool::new(false),
            given: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            progress: Notify::new(),
            revoked: Mutex::new(Vec::new()),
            roots: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn give(&self, received: Received) {
        self.given.lock().expect("lock").push(received);
        self.count.fetch_add(1, Ordering::SeqCst);
        self.progress.notify_waiters();
    }

    /// Records an error, unless the CA is being killed (then every error is expected).
    fn unexpected(&self, what: String) {
        if !self.stopped() {
            self.violations.lock().expect("lock").push(what);
        }
    }
}

/// One simulated workload, kept across rounds.
struct Workload {
    index: usize,
    spiffe_id: String,
    /// The certificate it holds, if any (it renews with it).
    held: Option<Held>,
    /// A join token the CA acknowledged and the workload has not redeemed yet.
    token: Option<String>,
}

impl Workload {
    fn is_admin_issued(&self) -> bool {
        self.index.is_multiple_of(ADMIN_EVERY)
    }
}

/// Issues until the round stops or the CA goes away; returns the workload's state.
async fn run_workload(ca: CaAccess, round: Arc<Round>, mut w: Workload, mut rng: Rng) -> Workload {
    let Ok(mut admin) = ca.admin().await else {
        round.unexpected(format!("{}: cannot connect as admin", w.spiffe_id));
        return w;
    };
    while !round.stopped() {
        let key = WorkloadKey::generate().expect("key");
        let csr = key.csr_der(None).expect("csr");
        if w.is_admin_issued() {
            let reply = admin
                .issue_certificate(IssueCertificateRequest {
                    csr_der: csr,
                    spiffe_id: w.spiffe_id.clone(),
                    ..Default::default()
                })
                .await;
            match reply {
                Ok(r) => round.give(Received::from_response(r.get_ref(), "admin", round.index)),
                Err(s) => {
                    round.unexpected(format!("admin issue for {}: {s:?}", w.spiffe_id));
                    return w;
                }
            }
            continue;
        }
        if let Some(token) = w.token.clone() {
            let Ok(mut client) = ca.workload(None).await else {
                round.unexpected(format!("{}: cannot connect", w.spiffe_id));
                return w;
            };
            let reply = client
                .certify(CertifyRequest {
                    csr_der: csr,
                    credential: Some(Credential::JoinToken(token)),
                    ..Default::default()
                })
                .await;
            match reply {
                Ok(r) => {
                    round.give(Received::from_response(
                        r.get_ref(),
                        "join_token",
                        round.index,
                    ));
                    w.held = Some(Held {
                        chain: r.into_inner().chain_der,
                        key,
                    });
                    w.token = None;
                }
                // Redeemed by an issuance whose reply the kill swallowed: that fails closed.
                Err(s) if s.code() == Code::Unauthenticated && s.message().contains("already") => {
                    w.token = None;
                }
                Err(s) => {
                    round.unexpected(format!("bootstrap of {}: {s:?}", w.spiffe_id));
                    return w;
                }
            }
            continue;
        }
        if w.held.is_none() || rng.chance(10) {
            match admin
                .create_join_token(CreateJoinTokenRequest {
                    spiffe_id: w.spiffe_id.clone(),
                    ttl_seconds: 0,
                })
                .await
            {
                Ok(r) => w.token = Some(r.into_inner().token),
                Err(s) => {
                    round.unexpected(format!("token for {}: {s:?}", w.spiffe_id));
                    return w;
                }
            }
            continue;
        }
        let held = w.held.as_ref().expect("checked above");
        let Ok(mut client) = ca.workload(Some(&held.identity())).await else {
            round.unexpected(format!(
                "{}: cannot connect with its certificate",
                w.spiffe_id
            ));
            return w;
        };
        let reply = client
            .certify(CertifyRequest {
                csr_der: csr,
                ..Default::default()
            })
            .await;
        match reply {
            Ok(r) => {
                round.give(Received::from_response(r.get_ref(), "renewal", round.index));
                w.held = Some(Held {
                    chain: r.into_inner().chain_der,
                    key,
                });
            }
            // The admin revoked it: bootstrap again.
            Err(s) if s.code() == Code::Unauthenticated && s.message().contains("revoked") => {
                w.held = None;
            }
            Err(s) => {
                round.unexpected(format!("renewal of {}: {s:?}", w.spiffe_id));
                return w;
            }
        }
    }
    w
}

/// Revokes a random certificate given so far every few issuances, and maybe adds a root.
async fn run_admin(ca: CaAccess, round: Arc<Round>, pool: Vec<String>, mut rng: Rng) {
    let Ok(mut admin) = ca.admin().await else {
        round.unexpected("revoker: cannot connect as admin".into());
        return;
    };
    let add_root_at = rng.chance(25).then(|| rng.between(1, 60) as usize);
    let mut next = rng.between(5, 40) as usize;
    loop {
        // Registered before the checks, so the wake-up at the kill cannot be missed.
        let notified = round.progress.notified();
        if round.stopped() {
            return;
        }
        if round.count.load(Ordering::SeqCst) < next {
            notified.await;
            continue;
        }
        next += rng.between(10, 60) as usize;
        if add_root_at.is_some_and(|at| next > at) && round.roots.lock().expect("lock").is_empty() {
            match admin.add_root(AddRootRequest::default()).await {
                Ok(r) => round.roots.lock().expect("lock").push(r.into_inner().id),
                Err(s) => round.unexpected(format!("add root: {s:?}")),
            }
            continue;
        }
        let serial = {
            let given = round.given.lock().expect("lock");
            let all = pool.len() + given.len();
            let pick = rng.between(0, all as u64 - 1) as usize;
            pool.get(pick)
                .cloned()
                .unwrap_or_else(|| given[pick - pool.len()].serial.clone())
        };
        let reply = admin
            .revoke_certificate(RevokeCertificateRequest {
                serial: serial.clone(),
                reason: "crash test".into(),
                ..Default::default()
            })
            .await;
        match reply {
            Ok(_) => round.revoked.lock().expect("lock").push(serial),
            Err(s) => round.unexpected(format!("revoke {serial}: {s:?}")),
        }
    }
}

/// Everything acknowledged before the kills so far.
#[derive(Default)]
struct Acknowledged {
    serials: HashSet<String>,
    given: Vec<Received>,
    revoked: Vec<String>,
    roots: Vec<String>,
}

/// Checks the restarted CA against what was acknowledged; returns the violations.
async fn verify(ca: &CaAccess, ack: &Acknowledged, new: &[Received]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut admin = match ca.admin().await {
        Ok(admin) => admin,
        Err(e) => return vec![format!("restarted CA refuses the admin connection: {e}")],
    };
    for received in new {
        if let Err(p) = check_recorded(&mut admin, received).await {
            problems.push(p);
        }
    }
    for serial in &ack.revoked {
        match admin
            .get_certificate(GetCertificateRequest {
                serial: serial.clone(),
            })
            .await
        {
            Ok(r) if r.get_ref().revoked_at.is_some() => {}
            Ok(_) => problems.push(format!("acknowledged revocation of {serial} was lost")),
            Err(s) => problems.push(format!("revoked certificate {serial} is gone: {s:?}")),
        }
    }
    match admin.list_roots(ListRootsRequest {}).await {
        Ok(r) => {
            let listed: HashSet<String> = r
                .into_inner()
                .roots
                .into_iter()
                .map(|root| root.id)
                .collect();
            for id in &ack.roots {
                if !listed.contains(id) {
                    problems.push(format!("acknowledged root {id} was lost"));
                }
            }
        }
        Err(s) => problems.push(format!("ListRoots after restart: {s:?}")),
    }
    match ca.workload(None).await {
        Ok(mut client) => match client.get_trust_bundle(GetTrustBundleRequest {}).await {
            Ok(b) if b.get_ref().root_certificates_der.len() > ack.roots.len() => {}
            Ok(b) => problems.push(format!(
                "trust bundle has {} roots, expected more than the {} added",
                b.get_ref().root_certificates_der.len(),
                ack.roots.len()
            )),
            Err(s) => problems.push(format!("GetTrustBundle after restart: {s:?}")),
        },
        Err(e) => problems.push(format!("workload connection after restart: {e}")),
    }
    problems
}

/// One renewal with the certificate `w` last received, or one bootstrap with its token.
async fn still_valid(ca: &CaAccess, w: &Workload) -> Result<(), String> {
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_der(None).expect("csr");
    let (identity, credential) = match (&w.held, &w.token) {
        (_, Some(token)) => (None, Some(Credential::JoinToken(token.clone()))),
        (Some(held), None) => (Some(held.identity()), None),
        (None, None) => return Ok(()),
    };
    let mut client = ca
        .workload(identity.as_ref())
        .await
        .map_err(|e| format!("{}: cannot connect: {e}", w.spiffe_id))?;
    let reply = client
        .certify(CertifyRequest {
            csr_der: csr,
            credential,
            ..Default::default()
        })
        .await;
    match reply {
        Ok(_) => Ok(()),
        Err(s)
            if s.code() == Code::Unauthenticated
                && (s.message().contains("revoked") || s.message().contains("already")) =>
        {
            Ok(())
        }
        Err(s) => Err(format!(
            "{} cannot use what it was last given: {s:?}",
            w.spiffe_id
        )),
    }
}

/// Fails the test, saying how to replay it.
fn fail(seed: u64, what: String) -> ! {
    panic!("{what}\nseed {seed}: replay with {SEED_VAR}={seed}")
}

#[test]
fn sigkill_during_concurrent_issuance_loses_nothing_acknowledged() {
    let seed = Rng::seed_from_env();
    eprintln!("crash-safety seed {seed} (replay with {SEED_VAR}={seed})");
    let mut rng = Rng::new(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut ca = Ca::start();
    let mut workloads: Vec<Workload> = (0..WORKLOADS)
        .map(|index| Workload {
            index,
            spiffe_id: format!("spiffe://{}/crash/w{index}", ca.trust_domain),
            held: None,
            token: None,
        })
        .collect();
    let mut ack = Acknowledged::default();
    let started = Instant::now();
    for index in 1..=ROUNDS {
        let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
        let round = Round::new(index);
        let kill_after = rng.between(8, 160) as usize;
        let jitter = Duration::from_micros(rng.between(0, 5_000));
        let tasks: Vec<_> = workloads
            .drain(..)
            .map(|w| runtime.spawn(run_workload(access.clone(), round.clone(), w, rng.fork())))
            .collect();
        let pool: Vec<String> = ack.given.iter().map(|r| r.serial.clone()).collect();
        let admin_task = runtime.spawn(run_admin(access.clone(), round.clone(), pool, rng.fork()));
        let reached = runtime.block_on(async {
            tokio::time::timeout(ROUND_TIMEOUT, async {
                loop {
                    let notified = round.progress.notified();
                    if round.count.load(Ordering::SeqCst) >= kill_after {
                        break;
                    }
                    notified.await;
                }
            })
            .await
            .is_ok()
        });
        if !reached {
            fail(
                seed,
                format!(
                    "round {index}: only {} certificates in {ROUND_TIMEOUT:?}; violations: {:?}",
                    round.count.load(Ordering::SeqCst),
                    round.violations.lock().expect("lock")
                ),
            );
        }
        // The crash moment: a random count of replies plus a random few milliseconds.
        std::thread::sleep(jitter);
        round.stop.store(true, Ordering::SeqCst);
        ca.kill();
        round.progress.notify_waiters();
        let joined = runtime.block_on(async {
            tokio::time::timeout(ROUND_TIMEOUT, async {
                let mut back = Vec::new();
                for task in tasks {
                    back.push(task.await.expect("workload task"));
                }
                let _ = admin_task.await;
                back
            })
            .await
        });
        workloads = joined.unwrap_or_else(|_| {
            fail(
                seed,
                format!("round {index}: clients still busy {ROUND_TIMEOUT:?} after the kill"),
            )
        });
        let violations = std::mem::take(&mut *round.violations.lock().expect("lock"));
        if !violations.is_empty() {
            fail(seed, format!("round {index}: {violations:#?}"));
        }
        ca.restart();
        let new = std::mem::take(&mut *round.given.lock().expect("lock"));
        for received in &new {
            if !ack.serials.insert(received.serial.clone()) {
                fail(
                    seed,
                    format!(
                        "round {index}: serial {} was handed out twice",
                        received.serial
                    ),
                );
            }
        }
        ack.revoked
            .extend(round.revoked.lock().expect("lock").drain(..));
        ack.roots
            .extend(round.roots.lock().expect("lock").drain(..));
        let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
        let problems = runtime.block_on(verify(&access, &ack, &new));
        if !problems.is_empty() {
            fail(
                seed,
                format!("after the kill in round {index}: {problems:#?}"),
            );
        }
        eprintln!(
            "round {index}: {} certificates given, killed (+{jitter:?} after the kill point); {} revocations, {} roots acknowledged so far; all present after restart",
            new.len(),
            ack.revoked.len(),
            ack.roots.len()
        );
        ack.given.extend(new);
    }
    // Nothing from an earlier round was lost by a later crash or recovery either, and every
    // workload can still renew with (or bootstrap from) what it was last given.
    let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
    let problems = runtime.block_on(async {
        let mut problems = Vec::new();
        let mut admin = access.admin().await.expect("admin after the last restart");
        for received in &ack.given {
            if let Err(p) = check_recorded(&mut admin, received).await {
                problems.push(p);
            }
        }
        for w in &workloads {
            if let Err(p) = still_valid(&access, w).await {
                problems.push(p);
            }
        }
        problems
    });
    if !problems.is_empty() {
        fail(seed, format!("final check: {problems:#?}"));
    }
    eprintln!(
        "{ROUNDS} rounds, {} certificates given and all recorded, {} revocations and {} roots kept, in {:?}",
        ack.given.len(),
        ack.revoked.len(),
        ack.roots.len(),
        started.elapsed()
    );
}
