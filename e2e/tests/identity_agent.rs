//! The sidecar's identity agent against the real CA, in one process with one manual clock:
//! bootstrap, rotations without a validity gap, surviving a CA outage, and bundle changes.
//! Real TLS on 127.0.0.1, a real sled directory; only time is moved instead of waited for.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use trellis_ca::{Config as CaConfig, RunningCa};
use trellis_identity::clock::{Clock, ManualClock};
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{IdMatcher, TrustBundle, pem};
use trellis_proto::admin::v1::CreateJoinTokenRequest;
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_sidecar::agent::{Agent, Pacing, renew_at};
use trellis_sidecar::config::{CaFile, Config, FileConfig};
use trellis_sidecar::credentials::{Credentials, CredentialsRx};
use trellis_sidecar::join_token::{JoinToken, TokenSource};
use trellis_sidecar::metrics::Metrics;

const FAST: Pacing = Pacing {
    tick: Duration::from_millis(20),
    backoff_base: Duration::from_millis(50),
    backoff_cap: Duration::from_millis(400),
    call_timeout: Duration::from_secs(5),
};

struct Mesh {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    clock: Arc<ManualClock>,
    ca: Option<RunningCa>,
    addr: SocketAddr,
}

impl Mesh {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let data_dir = dir.path().join("ca");
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let ca = start_ca(
            &data_dir,
            "127.0.0.1:0".parse().expect("addr"),
            clock.clone(),
        )
        .await;
        let addr = ca.addr;
        Self {
            _dir: dir,
            data_dir,
            clock,
            ca: Some(ca),
            addr,
        }
    }

    fn ca(&self) -> &RunningCa {
        self.ca.as_ref().expect("CA running")
    }

    async fn stop_ca(&mut self) {
        self.ca
            .take()
            .expect("running")
            .shutdown()
            .await
            .expect("shutdown");
    }

    async fn restart_ca(&mut self) {
        self.ca = Some(start_ca(&self.data_dir, self.addr, self.clock.clone()).await);
    }

    async fn token(&self, path: &str) -> String {
        let admin_dir = self.data_dir.join("admin");
        let identity = Identity {
            chain: pem::certs_from_pem(&std::fs::read(admin_dir.join("admin.pem")).expect("read"))
                .expect("pem"),
            key: pem::private_key_from_pem(
                &std::fs::read(admin_dir.join("admin.key.pem")).expect("read"),
            )
            .expect("pem"),
        };
        let bundle = self.ca().state.bundle();
        let ca_id = bundle.trust_domain().id("/trellis/ca").expect("id");
        let config = tls::client_config(
            bundle,
            IdMatcher::exact(ca_id),
            Some(&identity),
            Versions::Tls13,
            &[b"h2"],
        )
        .expect("config");
        let channel = trellis_proto::channel::connect(self.addr, Arc::new(config))
            .await
            .expect("connect");
        AdminClient::new(channel)
            .create_join_token(CreateJoinTokenRequest {
                spiffe_id: format!("spiffe://cluster.local{path}"),
                ttl_seconds: 0,
            })
            .await
            .expect("token")
            .into_inner()
            .token
    }

    /// Starts an agent bootstrapping with a fresh token for `path`.
    async fn agent(&self, path: &str) -> (CredentialsRx, Arc<Metrics>, watch::Sender<bool>) {
        let token = self.token(path).await;
        let config = Config::build(FileConfig {
            ca: CaFile {
                address: Some(self.addr.to_string()),
                trust_bundle: Some(self.data_dir.join("bundle.pem")),
                ..CaFile::default()
            },
            ..FileConfig::default()
        })
        .expect("config");
        let (creds_tx, creds_rx) = watch::channel(None);
        let metrics = Arc::new(Metrics::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let clock: Arc<dyn Clock> = self.clock.clone();
        let agent = Agent::new(
            &config,
            clock,
            Arc::new(JoinToken::new(TokenSource::Value(token))),
            creds_tx,
            metrics.clone(),
            FAST,
        );
        tokio::spawn(agent.run(stop_rx));
        (creds_rx, metrics, stop_tx)
    }
}

async fn start_ca(
    data_dir: &std::path::Path,
    listen: SocketAddr,
    clock: Arc<ManualClock>,
) -> RunningCa {
    let mut config = CaConfig::for_data_dir(data_dir.to_path_buf());
    config.listen = listen;
    config.shutdown_grace = Duration::from_secs(1);
    trellis_ca::start_with_clock(config, clock)
        .await
        .expect("CA starts")
}

/// Waits (real time, bounded) until the published credentials satisfy `done`.
async fn wait_for(
    creds: &mut CredentialsRx,
    within: Duration,
    what: &str,
    done: impl Fn(Option<&Credentials>) -> bool,
) -> Option<Arc<Credentials>> {
    let deadline = Instant::now() + within;
    loop {
        let current = creds.borrow().clone();
        if done(current.as_deref()) {
            return current;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {within:?} waiting for {what}; last: {current:?}"
        );
        let _ = tokio::time::timeout(left, creds.changed()).await;
    }
}

#[tokio::test]
async fn bootstraps_then_rotates_three_times_without_a_gap() {
    let mesh = Mesh::start().await;
    let (mut creds, metrics, _stop) = mesh.agent("/ns/demo/sa/web").await;
    let mut previous = wait_for(
        &mut creds,
        Duration::from_secs(10),
        "first certificate",
        |c| c.is_some(),
    )
    .await
    .expect("certificate");
    assert_eq!(
        previous.svid.spiffe_id.as_str(),
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    for rotation in 1..=3 {
        // Move the clock to just past this certificate's renewal point.
        let due = renew_at(&previous);
        let lifetime = previous
            .svid
            .not_after
            .duration_since(previous.not_before)
            .expect("order");
        let fraction = due
            .duration_since(previous.not_before)
            .expect("order")
            .as_secs_f64()
            / lifetime.as_secs_f64();
        assert!(
            (0.4..=0.6).contains(&fraction),
            "renewal at {fraction:.2} of the lifetime"
        );
        mesh.clock.advance(
            due.duration_since(mesh.clock.now()).unwrap_or_default() + Duration::from_secs(1),
        );
        let old_serial = previous.svid.serial.clone();
        let next = wait_for(&mut creds, Duration::from_secs(10), "rotation", |c| {
            c.is_some_and(|c| c.svid.serial != old_serial)
        })
        .await
        .expect("certificate");
        assert_eq!(
            next.svid.spiffe_id, previous.svid.spiffe_id,
            "rotation {rotation} keeps the identity"
        );
        assert!(
            next.not_before < previous.svid.not_after,
            "no gap in validity at rotation {rotation}"
        );
        assert!(next.svid.not_after > previous.svid.not_after);
        previous = next;
    }
    assert!(
        metrics
            .render()
            .contains("trellis_renewals_total{result=\"ok\"} 4")
    );
}

#[tokio::test]
async fn keeps_its_certificate_through_a_ca_outage_and_renews_when_it_returns() {
    let mut mesh = Mesh::start().await;
    let (mut creds, metrics, _stop) = mesh.agent("/ns/demo/sa/api").await;
    let first = wait_for(
        &mut creds,
        Duration::from_secs(10),
        "first certificate",
        |c| c.is_some(),
    )
    .await
    .expect("certificate");
    mesh.stop_ca().await;
    // Past the renewal point, well before expiry: renewals fail while the CA is down.
    mesh.clock.advance(
        renew_at(&first)
            .duration_since(mesh.clock.now())
            .unwrap_or_default()
            + Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics
        .render()
        .contains("trellis_renewals_total{result=\"error\"} 3")
    {
        assert!(
            Instant::now() < deadline,
            "expected failed renewals: {}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = creds
        .borrow()
        .clone()
        .expect("still holds a certificate during the outage");
    assert_eq!(
        held.svid.serial, first.svid.serial,
        "kept the current certificate"
    );
    let restarted = Instant::now();
    mesh.restart_ca().await;
    let renewed = wait_for(
        &mut creds,
        Duration::from_secs(5),
        "renewal after the CA returns",
        |c| c.is_some_and(|c| c.svid.serial != first.svid.serial),
    )
    .await
    .expect("certificate");
    assert_eq!(renewed.svid.spiffe_id, first.svid.spiffe_id);
    assert!(restarted.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn withdraws_an_expired_certificate_when_the_ca_stays_down() {
    let mut mesh = Mesh::start().await;
    let (mut creds, _metrics, _stop) = mesh.agent("/ns/demo/sa/batch").await;
    let first = wait_for(
        &mut creds,
        Duration::from_secs(10),
        "first certificate",
        |c| c.is_some(),
    )
    .await
    .expect("certificate");
    mesh.stop_ca().await;
    mesh.clock.advance(
        first
            .svid
            .not_after
            .duration_since(mesh.clock.now())
            .unwrap_or_default()
            + Duration::from_secs(1),
    );
    // Fail closed: no certificate is published once it has expired (the token is spent).
    wait_for(&mut creds, Duration::from_secs(10), "withdrawal", |c| {
        c.is_none()
    })
    .await;
}

#[tokio::test]
async fn a_bundle_change_reaches_the_sidecar_within_two_seconds() {
    let mesh = Mesh::start().await;
    let (mut creds, _metrics, _stop) = mesh.agent("/ns/demo/sa/bundle").await;
    let first = wait_for(
        &mut creds,
        Duration::from_secs(10),
        "first certificate",
        |c| c.is_some(),
    )
    .await
    .expect("certificate");
    // Add a second root (another CA's) to the published bundle through the CA's test hook.
    let other = Mesh::start().await;
    let state = &mesh.ca().state;
    let mut roots = state.bundle().roots().to_vec();
    roots.extend(other.ca().state.bundle().roots().iter().cloned());
    let version = state.bundle().version() + 1;
    let changed_at = Instant::now();
    state.publish_bundle(
        TrustBundle::new(state.bundle().trust_domain().clone(), version, roots).expect("bundle"),
    );
    let updated = wait_for(&mut creds, Duration::from_secs(2), "the new bundle", |c| {
        c.is_some_and(|c| c.bundle.version() == version)
    })
    .await
    .expect("certificate");
    assert!(changed_at.elapsed() < Duration::from_secs(2));
    assert_eq!(updated.bundle.roots().len(), 2);
    assert_eq!(
        updated.svid.serial, first.svid.serial,
        "same certificate, new bundle"
    );
}

/// An agent configured by `edit`, bootstrapping with a fresh token for `path`.
async fn agent_with(
    mesh: &Mesh,
    path: &str,
    edit: impl FnOnce(&mut CaFile),
) -> (CredentialsRx, watch::Sender<bool>) {
    let token = mesh.token(path).await;
    let mut ca = CaFile {
        address: Some(mesh.addr.to_string()),
        trust_bundle: Some(mesh.data_dir.join("bundle.pem")),
        ..CaFile::default()
    };
    edit(&mut ca);
    let config = Config::build(FileConfig {
        ca,
        ..FileConfig::default()
    })
    .expect("config");
    let (creds_tx, creds_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let clock: Arc<dyn Clock> = mesh.clock.clone();
    let agent = Agent::new(
        &config,
        clock,
        Arc::new(JoinToken::new(TokenSource::Value(token))),
        creds_tx,
        Arc::new(Metrics::default()),
        FAST,
    );
    tokio::spawn(agent.run(stop_rx));
    (creds_rx, stop_tx)
}

#[tokio::test]
async fn joins_with_only_a_pinned_root_fingerprint_and_refuses_a_wrong_pin() {
    let mesh = Mesh::start().await;
    let root = mesh.ca().state.bundle().roots()[0].clone();
    let fingerprint = trellis_identity::hex::encode(
        &trellis_identity::bundle::spki_sha256(&root).expect("fingerprint"),
    );
    let (mut creds, _stop) = agent_with(&mesh, "/ns/demo/sa/pinned", |ca| {
        ca.trust_bundle = None;
        ca.trust_fingerprint = Some(fingerprint.clone());
    })
    .await;
    let got = wait_for(
        &mut creds,
        Duration::from_secs(10),
        "a certificate via the pin",
        |c| c.is_some(),
    )
    .await
    .expect("certificate");
    assert_eq!(
        got.bundle.roots(),
        mesh.ca().state.bundle().roots(),
        "bundle fetched from the CA"
    );

    // A pin that matches no root of this CA: the agent never gets a certificate.
    let (mut wrong, _stop) = agent_with(&mesh, "/ns/demo/sa/mispinned", |ca| {
        ca.trust_bundle = None;
        ca.trust_fingerprint = Some("00".repeat(32));
    })
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(2), wrong.changed()).await;
    assert!(
        outcome.is_err() && wrong.borrow().is_none(),
        "a wrong pin must not yield a certificate"
    );
}

#[tokio::test]
async fn writes_svid_files_for_the_app_and_rewrites_them_on_rotation() {
    use std::os::unix::fs::PermissionsExt;
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let svid_dir = dir.path().join("svid");
    let (mut creds, _stop) = agent_with(&mesh, "/ns/demo/sa/files", |ca| {
        ca.svid_dir = Some(svid_dir.clone());
    })
    .await;
    let first = wait_for(
        &mut creds,
        Duration::from_secs(10),
        "first certificate",
        |c| c.is_some(),
    )
    .await
    .expect("certificate");
    let read_leaf = || {
        let chain =
            pem::certs_from_pem(&std::fs::read(svid_dir.join("svid.pem")).expect("svid.pem"))
                .expect("pem");
        trellis_identity::CertInfo::parse(&chain[0]).expect("leaf")
    };
    assert_eq!(read_leaf().serial, first.svid.serial);
    let key_mode = std::fs::metadata(svid_dir.join("svid_key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the key file is private");
    let key = trellis_identity::WorkloadKey::from_pem(
        &std::fs::read_to_string(svid_dir.join("svid_key.pem")).expect("key"),
    )
    .expect("a P-256 key");
    assert_eq!(
        key.public_key_der(),
        read_leaf().spki_der,
        "key and certificate match"
    );
    assert!(
        std::fs::read_to_string(svid_dir.join("bundle.pem"))
            .expect("bundle")
            .contains("BEGIN CERTIFICATE")
    );

    mesh.clock.advance(
        renew_at(&first)
            .duration_since(mesh.clock.now())
            .unwrap_or_default()
            + Duration::from_secs(1),
    );
    let next = wait_for(&mut creds, Duration::from_secs(10), "rotation", |c| {
        c.is_some_and(|c| c.svid.serial != first.svid.serial)
    })
    .await
    .expect("certificate");
    assert_eq!(
        read_leaf().serial,
        next.svid.serial,
        "files follow the rotation"
    );
}
