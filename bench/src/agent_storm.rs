//! A renewal storm: many real identity agents (the `trellis-sidecar` library's agent, in
//! this process, each with its own key, token and certificate) renewing short-lived
//! certificates against one real CA with tight overload limits. Counts renewals, the CA's
//! RESOURCE_EXHAUSTED answers and whether agents waited them out, and failed renewals: a
//! certificate that expired (or was withdrawn) before its successor arrived. A renewal that
//! succeeds after a hint is not a failure.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_ca::Config;
use trellis_identity::clock::{Clock, SystemClock};
use trellis_sidecar::agent::{Agent, Pacing};
use trellis_sidecar::config::{CaFile, Config as SidecarConfig, FileConfig};
use trellis_sidecar::credentials::CredentialsRx;
use trellis_sidecar::join_token::{JoinToken, TokenSource};
use trellis_sidecar::metrics::Metrics;

use crate::admin;

#[derive(clap::Args)]
pub struct Args {
    /// Identity agents, each with its own identity.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Seconds the run lasts once the agents are started.
    #[arg(long, default_value_t = 150)]
    seconds: u64,
    /// Certificate lifetime the agents ask for (the CA's minimum is 1m); they renew at
    /// 40–60 % of it.
    #[arg(long, default_value = "1m")]
    ttl: String,
    /// The CA's limits.max_concurrent_issuance (tight, so the storm meets it).
    #[arg(long, default_value_t = 8)]
    max_concurrent_issuance: u32,
    /// The CA's limits.busy_retry_after, e.g. 1s.
    #[arg(long, default_value = "1s")]
    busy_retry_after: String,
    /// Worker threads for the CA's runtime (the agents get their own runtime).
    #[arg(long, default_value_t = 1)]
    ca_threads: usize,
}

/// What one agent's certificate history looked like.
#[derive(Default)]
struct History {
    first: Option<Instant>,
    renewals: u64,
    /// Certificates that expired or were withdrawn before a successor arrived.
    failures: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let fds = crate::fds::raise_soft();
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_data_dir(dir.path().join("ca"));
    config.listen = "127.0.0.1:0".parse()?;
    config.limits.max_concurrent_issuance = args.max_concurrent_issuance;
    config.limits.busy_retry_after = trellis_identity::duration::parse(&args.busy_retry_after)?;
    // Every simulated agent connects from 127.0.0.1, which in production would be as many
    // addresses as pods: lift the per-address bootstrap limit so it does not stand in for
    // the concurrency limit under test. Per-identity renewal limits stay at their defaults.
    config.limits.bootstraps.burst = args.agents as u32 * 2;
    config.limits.bootstraps.per_minute = args.agents as u32 * 60;
    let limits = config.limits.clone();
    let ca_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.ca_threads)
        .enable_all()
        .build()?;
    let ca = ca_runtime.block_on(trellis_ca::start(config))?;
    let agents_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "agent storm: {} identity agents (trellis-sidecar's Agent, in-process) against one CA on {}; \
         ttl {}, run {} s; {} cores; open files {}",
        args.agents,
        ca.addr,
        args.ttl,
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        fds
    );
    println!(
        "CA limits: max_concurrent_issuance {}, busy_retry_after {:?}, renewals {}/min burst {} \
         per identity, bootstraps {}/min burst {} per address (lifted: all agents share 127.0.0.1)",
        limits.max_concurrent_issuance,
        limits.busy_retry_after,
        limits.renewals.per_minute,
        limits.renewals.burst,
        limits.bootstraps.per_minute,
        limits.bootstraps.burst
    );
    let result = agents_runtime.block_on(storm(&args, &ca));
    let limits = ca.limits().clone();
    ca_runtime.block_on(ca.shutdown())?;
    let (histories, metrics, elapsed) = result?;
    let c = &limits.counters;
    let sum = |f: &dyn Fn(&Metrics) -> u64| metrics.iter().map(|m| f(m)).sum::<u64>();
    let bootstrapped = histories.iter().filter(|h| h.first.is_some()).count();
    let renewals: u64 = histories.iter().map(|h| h.renewals).sum();
    let failures: Vec<&String> = histories.iter().flat_map(|h| &h.failures).collect();
    let received = sum(&|m| m.renewals("throttled"));
    let honoured = sum(&|m| m.ca_retry_hints_honoured.load(Relaxed));
    let errors = sum(&|m| m.renewals("error"));
    println!("ran {:.0} s", elapsed.as_secs_f64());
    println!(
        "  agents with a certificate        {bootstrapped} / {}",
        args.agents
    );
    println!("  renewals done                    {renewals}");
    println!(
        "  RESOURCE_EXHAUSTED received       {received} (CA refused: {} busy, {} renewal rate, {} bootstrap rate)",
        c.refused_busy.load(Relaxed),
        c.refused_renewal_rate.load(Relaxed),
        c.refused_bootstrap_rate.load(Relaxed)
    );
    println!(
        "  hints honoured (waited in full)   {honoured} ({} cut short by the end of the run)",
        received.saturating_sub(honoured)
    );
    println!("  other failed attempts (retried)   {errors}");
    println!("  failed renewals                   {}", failures.len());
    for f in failures.iter().take(10) {
        println!("    {f}");
    }
    if !failures.is_empty() || bootstrapped < args.agents {
        anyhow::bail!(
            "{} failed renewals, {} agents without a certificate",
            failures.len(),
            args.agents - bootstrapped
        );
    }
    Ok(())
}

type Outcome = (Vec<History>, Vec<Arc<Metrics>>, Duration);

async fn storm(args: &Args, ca: &trellis_ca::RunningCa) -> anyhow::Result<Outcome> {
    let bundle = ca.bundle();
    let data_dir = ca.data_dir().to_path_buf();
    let mut admin = admin::client(ca.addr, bundle.clone(), &data_dir.join("admin")).await?;
    let mut tokens = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        tokens.push(
            admin::token(
                &mut admin,
                &format!("spiffe://{}/bench/agent-{i}", bundle.trust_domain()),
            )
            .await?,
        );
    }
    let stop = CancellationToken::new();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut monitors = Vec::new();
    let mut all_metrics = Vec::new();
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    for token in tokens {
        let config = SidecarConfig::build(FileConfig {
            ca: CaFile {
                address: Some(ca.addr.to_string()),
                trust_bundle: Some(data_dir.join("bundle.pem")),
                ttl: Some(args.ttl.clone()),
                ..CaFile::default()
            },
            ..FileConfig::default()
        })
        .context("agent configuration")?;
        let (creds_tx, creds) = watch::channel(None);
        let metrics = Arc::new(Metrics::default());
        let agent = Agent::new(
            &config,
            clock.clone(),
            Arc::new(JoinToken::new(TokenSource::Value(token))),
            creds_tx,
            metrics.clone(),
            Pacing::default(),
        );
        tokio::spawn(agent.run(stop.clone()));
        monitors.push(tokio::spawn(monitor(creds, end)));
        all_metrics.push(metrics);
    }
    let mut histories = Vec::with_capacity(monitors.len());
    for m in monitors {
        histories.push(m.await?);
    }
    stop.cancel();
    Ok((histories, all_metrics, started.elapsed()))
}

/// Follows one agent's certificates until `end`: counts renewals, and records a failure
/// whenever a certificate expires or is withdrawn before its successor is published.
async fn monitor(mut creds: CredentialsRx, end: Instant) -> History {
    let mut history = History::default();
    let mut held: Option<(String, SystemTime)> = None;
    loop {
        let expiry = held.as_ref().map(|(_, not_after)| {
            let left = not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            Instant::now() + left
        });
        let wake = expiry.map_or(end, |e| e.min(end));
        tokio::select! {
            changed = creds.changed() => if changed.is_err() { return history },
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= end {
                    if let Some((serial, not_after)) = &held
                        && *not_after <= SystemTime::now()
                    {
                        history.failures.push(format!("certificate {serial} expired before renewal"));
                    }
                    if held.is_none() && history.first.is_some() {
                        history.failures.push("no certificate at the end of the run".into());
                    }
                    return history;
                }
                if let Some((serial, _)) = held.take() {
                    history.failures.push(format!("certificate {serial} expired before renewal"));
                }
                continue;
            }
        }
        let current = creds.borrow_and_update().clone();
        match current {
            Some(c) => {
                let serial = c.svid.serial.clone();
                if held.as_ref().is_some_and(|(s, _)| *s == serial) {
                    continue; // a bundle or revocation update of the same certificate
                }
                if history.first.is_none() {
                    history.first = Some(Instant::now());
                } else {
                    history.renewals += 1;
                }
                held = Some((serial, c.svid.not_after));
            }
            None => {
                if let Some((serial, _)) = held.take() {
                    history
                        .failures
                        .push(format!("certificate {serial} withdrawn before renewal"));
                }
            }
        }
    }
}
