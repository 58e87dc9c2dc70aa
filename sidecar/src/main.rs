//! `trellis-sidecar` binary: configuration, logging, signals. Everything else is in the
//! library (`run::start`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use trellis_identity::clock::SystemClock;
use trellis_identity::ready::Ready;
use trellis_sidecar::agent::Pacing;
use trellis_sidecar::config::{Config, Flags};
use trellis_sidecar::join_token::{BootstrapCredential, JoinToken, NoCredential, TokenSource};
use trellis_sidecar::run::{self, Options};

/// The bootstrap credential: a token file, else `TRELLIS_JOIN_TOKEN`, else none. (The
/// variable stays in this process's environment: removing it needs `unsafe` in Rust 2024,
/// and the sidecar starts no child processes that could inherit it.)
fn bootstrap_credential(config: &Config) -> Arc<dyn BootstrapCredential> {
    if let Some(path) = &config.ca.service_account_token_file {
        return Arc::new(trellis_sidecar::k8s_token::ServiceAccountToken::new(
            path.clone(),
        ));
    }
    if let Some(path) = &config.ca.join_token_file {
        return Arc::new(JoinToken::new(TokenSource::File(path.clone())));
    }
    match std::env::var("TRELLIS_JOIN_TOKEN") {
        Ok(token) if !token.trim().is_empty() => {
            Arc::new(JoinToken::new(TokenSource::Value(token)))
        }
        _ => Arc::new(NoCredential),
    }
}

/// `trellis-sidecar init-network ...`: the capture init step, a separate entry point so that
/// the sidecar's own flags stay flat.
fn init_network() -> ExitCode {
    use trellis_sidecar::capture::init_network::{self, InitNetworkFlags};
    let flags = InitNetworkFlags::parse_from(std::env::args().skip(1));
    match init_network::run(&flags) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trellis-sidecar init-network: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `trellis-sidecar probe-ready`: the native sidecar's startup probe.
fn probe_ready() -> ExitCode {
    use trellis_sidecar::probe_ready::{self, ProbeReadyFlags};
    let (ready, said) = probe_ready::run(&ProbeReadyFlags::parse_from(std::env::args().skip(1)));
    println!("{said}");
    if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `trellis-sidecar check`: this pod's verdicts, as `trellis check` gives them for the mesh.
fn check() -> ExitCode {
    use trellis_sidecar::check::{self, CheckFlags};
    let (text, code) = check::run(&CheckFlags::parse_from(std::env::args().skip(1)));
    println!("{}", text.trim_end());
    ExitCode::from(code)
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("init-network") => return init_network(),
        Some("probe-ready") => return probe_ready(),
        Some("check") => return check(),
        _ => {}
    }
    let flags = Flags::parse();
    let check_only = flags.check_config;
    let ready_file = flags.ready_file.clone();
    let config = match Config::load(flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trellis-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("configuration OK: {config:#?}");
        return ExitCode::SUCCESS;
    }
    trellis_proto::logging::init(config.json_logs);
    trellis_sidecar::fd_limit::raise();
    // The main runtime runs the control plane and a share of the connections; with
    // `workers` above one, `run::start` adds that many threads minus one, each with a
    // runtime of its own (see `proxy/workers.rs`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(config, ready_file)),
        Err(e) => {
            eprintln!("trellis-sidecar: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the sidecar until SIGTERM or SIGINT, then drains.
async fn serve(config: Config, ready_file: Option<PathBuf>) -> ExitCode {
    let bootstrap = bootstrap_credential(&config);
    let spiffe_id = config
        .ca
        .expected_spiffe_id
        .as_ref()
        .map(ToString::to_string);
    let options = Options {
        clock: Arc::new(SystemClock),
        bootstrap,
        pacing: Pacing::default(),
    };
    let running = match run::start(config, options).await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("trellis-sidecar: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "trellis-sidecar admin on {}{}{}",
        running.admin_addr,
        running
            .inbound_addr
            .map(|a| format!(", inbound on {a}"))
            .unwrap_or_default(),
        running
            .outbound_addrs
            .iter()
            .map(|a| format!(", outbound on {a}"))
            .collect::<String>()
    );
    if let Some(path) = &ready_file {
        let mut ready = Ready::new("trellis-sidecar").listener("admin", running.admin_addr);
        if let Some(inbound) = running.inbound_addr {
            ready = ready.listener("inbound", inbound);
        }
        for (i, outbound) in running.outbound_addrs.iter().enumerate() {
            ready = ready.listener(format!("outbound.{i}"), *outbound);
        }
        ready.spiffe_id = spiffe_id;
        if let Err(e) = ready.write(path) {
            eprintln!(
                "trellis-sidecar: cannot write the ready file {}: {e}",
                path.display()
            );
            running.shutdown().await;
            return ExitCode::FAILURE;
        }
    }
    let signal = trellis_proto::signals::stop_requested().await;
    tracing::info!("{signal} received, draining");
    running.shutdown().await;
    ExitCode::SUCCESS
}
