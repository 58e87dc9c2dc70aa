//! `trellis-injector` binary: flags, logging, signals. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use trellis_injector::config::Flags;

/// Cancels `stop` on SIGTERM or SIGINT.
async fn cancel_on_signal(stop: CancellationToken) {
    let signal = trellis_proto::signals::stop_requested().await;
    tracing::info!("{signal} received, shutting down");
    stop.cancel();
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match flags.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trellis-injector: {e}");
            return ExitCode::from(2);
        }
    };
    if flags.check_config {
        println!("configuration OK: {config:#?}");
        return ExitCode::SUCCESS;
    }
    trellis_proto::logging::init(config.json_logs);
    let stop = CancellationToken::new();
    tokio::spawn(cancel_on_signal(stop.clone()));
    match trellis_injector::run(config, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-injector: {e}");
            ExitCode::FAILURE
        }
    }
}
