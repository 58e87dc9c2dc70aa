//! The real CA and real identity agents in one process, sharing one manual clock, so tests
//! move time instead of waiting for it. Real TLS on 127.0.0.1 and a real sled directory.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use trellis_ca::{Config as CaConfig, RunningCa};
use trellis_identity::clock::{Clock, ManualClock};
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{IdMatcher, pem};
use trellis_proto::admin::v1::CreateJoinTokenRequest;
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_sidecar::agent::{Agent, Pacing, renew_at};
use trellis_sidecar::config::{CaFile, Config, FileConfig};
use trellis_sidecar::credentials::{Credentials, CredentialsRx};
use trellis_sidecar::join_token::{JoinToken, TokenSource};
use trellis_sidecar::metrics::Metrics;

/// Agent pacing for tests: notice a moved clock within 20 ms, retry quickly.
pub const FAST: Pacing = Pacing {
    tick: Duration::from_millis(20),
    backoff_base: Duration::from_millis(50),
    backoff_cap: Duration::from_millis(400),
    stream_backoff_cap: Duration::from_millis(400),
    call_timeout: Duration::from_secs(5),
};

/// A running agent: its published credentials, metrics, and the flag that stops it.
pub struct RunningAgent {
    pub creds: CredentialsRx,
    pub metrics: Arc<Metrics>,
    /// Stops the agent when dropped.
    pub stop: DropGuard,
    /// Its `[ca]` settings (what the Workload API's JWT-SVIDs are minted through).
    pub ca: trellis_sidecar::config::CaConfig,
}

/// A CA on a manual clock, and what agents need to reach it.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub clock: Arc<ManualClock>,
    ca: Option<RunningCa>,
    pub addr: SocketAddr,
}

async fn start_ca(
    data_dir: &Path,
    listen: SocketAddr,
    clock: Arc<ManualClock>,
    edit: &dyn Fn(&mut CaConfig),
) -> RunningCa {
    let mut config = CaConfig::for_data_dir(data_dir.to_path_buf());
    config.listen = listen;
    config.shutdown_grace = Duration::from_secs(1);
    edit(&mut config);
    trellis_ca::start_with_clock(config, clock)
        .await
        .expect("CA starts")
}

impl Mesh {
    pub async fn start() -> Self {
        Self::start_configured(|_| {}).await
    }

    /// [`Mesh::start`] with the CA's configuration adjusted by `edit`.
    pub async fn start_configured(edit: impl Fn(&mut CaConfig)) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let data_dir = dir.path().join("ca");
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let ca = start_ca(
            &data_dir,
            "127.0.0.1:0".parse().expect("addr"),
            clock.clone(),
            &edit,
        )
        .await;
        let addr = ca.addr;
        Self {
            dir,
            data_dir,
            clock,
            ca: Some(ca),
            addr,
        }
    }

    pub fn ca(&self) -> &RunningCa {
        self.ca.as_ref().expect("CA running")
    }

    pub async fn stop_ca(&mut self) {
        self.ca
            .take()
            .expect("running")
            .shutdown()
            .await
            .expect("shutdown");
    }

    /// Starts the CA again on the same address and data directory.
    /// A second replica of the same CA (same trust domain, roots, signing key and records
    /// so far) on a copy of its data directory, listening on `listen`; the first CA keeps
    /// serving on its address. Records made after the copy are not shared: it stands in for
    /// replicas on one database only for what was issued before.
    pub async fn start_replica(&mut self, listen: SocketAddr) -> RunningCa {
        self.stop_ca().await;
        let copy = self.dir.path().join("replica");
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&self.data_dir)
            .arg(&copy)
            .status()
            .expect("cp runs");
        assert!(status.success(), "copying the CA's data directory failed");
        self.restart_ca().await;
        start_ca(&copy, listen, self.clock.clone(), &|_| {}).await
    }

    pub async fn restart_ca(&mut self) {
        self.ca = Some(start_ca(&self.data_dir, self.addr, self.clock.clone(), &|_| {}).await);
    }

    /// The admin API, with the admin credentials the CA wrote.
    pub async fn admin(&self) -> AdminClient<tonic::transport::Channel> {
        let admin_dir = self.data_dir.join("admin");
        let read = |name: &str| std::fs::read(admin_dir.join(name)).expect("admin file");
        let identity = Identity {
            chain: pem::certs_from_pem(&read("admin.pem")).expect("pem"),
            key: pem::private_key_from_pem(&read("admin.key.pem")).expect("pem"),
        };
        let bundle = self.ca().bundle();
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
    }

    /// A fresh join token for `spiffe://<the CA's trust domain><path>`, through the admin API.
    pub async fn token(&self, path: &str) -> String {
        let td = self.ca().trust_domain().to_string();
        self.admin()
            .await
            .create_join_token(CreateJoinTokenRequest {
                spiffe_id: format!("spiffe://{td}{path}"),
                ttl_seconds: 0,
            })
            .await
            .expect("token")
            .into_inner()
            .token
    }

    /// Starts an agent that bootstraps with a fresh token for `path`, trusting the CA's
    /// bundle file; `edit` adjusts its `[ca]` settings.
    pub async fn agent_with(&self, path: &str, edit: impl FnOnce(&mut CaFile)) -> RunningAgent {
        self.agent_paced(path, edit, FAST).await
    }

    /// [`Mesh::agent_with`] with `pacing` instead of [`FAST`] (e.g. production's).
    pub async fn agent_paced(
        &self,
        path: &str,
        edit: impl FnOnce(&mut CaFile),
        pacing: Pacing,
    ) -> RunningAgent {
        let token = self.token(path).await;
        let mut ca = CaFile {
            address: Some(self.addr.to_string()),
            trust_bundle: Some(self.data_dir.join("bundle.pem")),
            ..CaFile::default()
        };
        edit(&mut ca);
        let config = Config::build(FileConfig {
            ca,
            trust_domain: Some(self.ca().trust_domain().to_string()),
            ..FileConfig::default()
        })
        .expect("config");
        let (creds_tx, creds) = watch::channel(None);
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let clock: Arc<dyn Clock> = self.clock.clone();
        let agent = Agent::new(
            &config,
            clock,
            Arc::new(JoinToken::new(TokenSource::Value(token))),
            creds_tx,
            metrics.clone(),
            pacing,
        );
        tokio::spawn(agent.run(stop.clone()));
        RunningAgent {
            creds,
            metrics,
            stop: stop.drop_guard(),
            ca: config.ca.clone(),
        }
    }

    /// [`Mesh::agent_with`] with default settings.
    pub async fn agent(&self, path: &str) -> RunningAgent {
        self.agent_with(path, |_| {}).await
    }

    /// Moves the clock just past `creds`' renewal point.
    pub fn pass_renewal_point(&self, creds: &Credentials) {
        let due = renew_at(creds);
        self.clock.advance(
            due.duration_since(self.clock.now()).unwrap_or_default() + Duration::from_secs(1),
        );
    }
}

/// The agent's first certificate, which it should have within 10 s of starting.
pub async fn first_certificate(creds: &mut CredentialsRx) -> Arc<Credentials> {
    wait_for(creds, Duration::from_secs(10), "first certificate", |c| {
        c.is_some()
    })
    .await
    .expect("certificate")
}

/// Waits (real time, bounded) until the published credentials satisfy `done`.
pub async fn wait_for(
    creds: &mut CredentialsRx,
    within: Duration,
    what: &str,
    done: impl Fn(Option<&Credentials>) -> bool,
) -> Option<Arc<Credentials>> {
    let deadline = Instant::now() + within;
    loop {
        let current = creds.borrow_and_update().clone();
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

/// A raw Workload API client on the Unix socket at `path` (for what the `spiffe` crate
/// does not expose: the security header, raw maps, refusals).
pub async fn raw_workload_client(
    path: &Path,
) -> trellis_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    let path = path.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connects over the Unix socket");
    trellis_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        channel,
    )
}

/// `message` with the Workload API's security header, as every SPIFFE client sends it.
pub fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        trellis_sidecar::workload_api::SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}
