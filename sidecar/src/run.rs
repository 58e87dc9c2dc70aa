//! Wiring: binds every listener first (so a bad address fails start-up with one line), then
//! starts the identity agent, the data path, the admin endpoint and the Workload API, all
//! stopped together by one `CancellationToken`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use trellis_identity::clock::Clock;

use crate::admin::PodState;
use crate::agent::{Agent, Pacing};
use crate::capture::exposure::{Exposure, Scope};
use crate::config::Config;
use crate::credentials::CredentialsRx;
use crate::join_token::BootstrapCredential;
use crate::metrics::Metrics;
use crate::proxy::{Context, Registry, Workers};
use crate::workload_api::{JwtSvids, WorkloadApiSocket};
use crate::{admin, inbound, outbound};
use tokio_util::sync::CancellationToken;

/// A running sidecar.
#[derive(Debug)]
pub struct Running {
    pub admin_addr: SocketAddr,
    pub inbound_addr: Option<SocketAddr>,
    pub outbound_addrs: Vec<SocketAddr>,
    pub creds: CredentialsRx,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    shutdown: CancellationToken,
    data_path: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

/// What the caller chooses besides the configuration.
#[derive(Debug)]
pub struct Options {
    pub clock: Arc<dyn Clock>,
    pub bootstrap: Arc<dyn BootstrapCredential>,
    pub pacing: Pacing,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Binds and starts everything.
pub async fn start(mut config: Config, options: Options) -> anyhow::Result<Running> {
    crate::fd_budget::fit_current(&mut config);
    let admin_listener = bind(config.admin_listen, "admin endpoint").await?;
    let inbound_listener = match &config.inbound {
        Some(inbound) => Some(bind(inbound.listen, "inbound listener").await?),
        None => None,
    };
    let mut outbound_listeners = Vec::with_capacity(config.outbound.len());
    for outbound in &config.outbound {
        outbound_listeners.push(bind(outbound.listen, "outbound listener").await?);
    }
    let workload_api = match &config.workload_api_socket {
        Some(path) => Some(
            WorkloadApiSocket::bind(path)
                .await
                .with_context(|| format!("Workload API socket {}", path.display()))?,
        ),
        None => None,
    };
    let local = |l: &TcpListener| l.local_addr().context("listener address");
    let admin_addr = local(&admin_listener)?;
    let inbound_addr = inbound_listener.as_ref().map(local).transpose()?;
    let outbound_addrs = outbound_listeners
        .iter()
        .map(local)
        .collect::<anyhow::Result<Vec<_>>>()?;

    let (creds_tx, creds) = watch::channel(None);
    let metrics = Arc::new(Metrics::default());
    let registry = Registry::new();
    let shutdown = CancellationToken::new();
    let agent = Agent::new(
        &config,
        options.clock.clone(),
        options.bootstrap,
        creds_tx,
        metrics.clone(),
        options.pacing,
    )
    .with_registry(registry.clone());
    let mut background = vec![tokio::spawn(agent.run(shutdown.clone()))];
    if let Some(socket) = workload_api {
        let jwt = JwtSvids::new(config.ca.clone(), options.clock.clone());
        let socket = socket.with_jwt_svids(Arc::new(jwt));
        let (creds, stop) = (creds.clone(), shutdown.clone());
        background.push(tokio::spawn(async move {
            if let Err(e) = socket.serve(creds, stop).await {
                tracing::error!(error = %e, "Workload API stopped");
            }
        }));
    }
    let capture = config.inbound.as_ref().is_some_and(|i| i.capture);
    // The sidecar's own listeners are not the app's; the outbound ones are loopback only.
    let own_ports = std::iter::once(admin_addr.port())
        .chain(inbound_addr.map(|a| a.port()))
        .collect();
    let app_ports = config
        .inbound
        .iter()
        .filter_map(|i| i.app.map(|a| a.port()))
        .collect();
    let pod = PodState {
        exposure: Arc::new(Exposure::new(capture, Scope::detect(own_ports, app_ports))),
        probes: Arc::new(config.app_probes.clone()),
    };
    pod.exposure.check(&metrics);
    background.push(tokio::spawn(
        pod.exposure
            .clone()
            .watch(metrics.clone(), shutdown.clone()),
    ));
    {
        let (creds, metrics, shutdown) = (creds.clone(), metrics.clone(), shutdown.clone());
        let limits = config.admin_limits;
        background.push(tokio::spawn(async move {
            let served =
                admin::serve_admin_limited(admin_listener, limits, creds, metrics, shutdown, pod);
            if let Err(e) = served.await {
                tracing::error!(error = %e, "admin endpoint stopped");
            }
        }));
    }
    let mut ctx = Context::new(
        config.timeouts,
        creds.clone(),
        metrics.clone(),
        registry.clone(),
        shutdown.clone(),
    );
    ctx.workers = Workers::start(config.workers).context("cannot start the worker threads")?;
    let mut data_path = Vec::new();
    if let (Some(listener), Some(inbound)) = (inbound_listener, config.inbound.clone()) {
        data_path.push(tokio::spawn(inbound::serve_inbound(
            listener,
            inbound,
            config.trust_domain.clone(),
            ctx.clone(),
        )));
    }
    for (listener, outbound) in outbound_listeners.into_iter().zip(config.outbound.clone()) {
        data_path.push(tokio::spawn(outbound::serve_outbound(
            listener,
            outbound,
            ctx.clone(),
        )));
    }
    tracing::info!(
        admin = %admin_addr,
        inbound = ?inbound_addr,
        outbound = ?outbound_addrs,
        ca = %config.ca.address,
        "trellis-sidecar started; not ready until the first certificate arrives"
    );
    Ok(Running {
        admin_addr,
        inbound_addr,
        outbound_addrs,
        creds,
        metrics,
        registry,
        shutdown,
        data_path,
        background,
    })
}

impl Running {
    /// Graceful stop: listeners stop accepting and drain (up to the configured deadline),
    /// then the agent, admin endpoint and Workload API stop.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.data_path {
            let _ = task.await;
        }
        // The agent, admin endpoint and Workload API stop on the same signal (the latter
        // removes its socket file); give them a moment, then stop them regardless.
        for mut task in self.background {
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}
