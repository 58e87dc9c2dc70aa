//! Waiting for the signal that asks a server to stop: the same for every binary.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves at SIGTERM or SIGINT (Ctrl-C where those handlers cannot be installed) and
/// names which one came, for the caller's log line.
pub async fn stop_requested() -> &'static str {
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
