//! `trellis-ca` binary: configuration, logging, signals. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use trellis_ca::config::{Config, Flags};

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env("TRELLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    let check_only = flags.check_config;
    let config = match Config::load(flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trellis-ca: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("configuration OK: {config:#?}");
        return ExitCode::SUCCESS;
    }
    init_logging(config.json_logs);
    let running = match trellis_ca::start(config).await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("trellis-ca: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "trellis-ca listening on {} (trust domain {}); admin credentials in {}",
        running.addr,
        running.state.config.trust_domain,
        running.state.config.data_dir.join("admin").display()
    );
    wait_for_signal().await;
    match running.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-ca: shutdown: {e}");
            ExitCode::FAILURE
        }
    }
}
