//! `trellis-injector`: the Kubernetes mutating admission webhook that adds the Trellis
//! sidecar to pods. The planner is `trellis-inject`'s, the same `trellis inject -f` runs.
//!
//! `config.rs` the flags, `server.rs` the HTTPS server and its routes, `tls.rs` the serving
//! certificate (re-read when its files change), `metrics.rs` `/metrics`.

pub mod config;
pub mod metrics;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use trellis_identity::ready::Ready;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::Injector;

/// Why the injector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The serving certificate or key cannot be used.
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(String),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The ready file cannot be written.
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Serves the webhook until `stop` is cancelled, then drains.
pub async fn run(config: Config, stop: CancellationToken) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::default());
    let certificate = tls::ReloadingCert::new(
        config.tls_cert.clone(),
        config.tls_key.clone(),
        trellis_identity::tls::provider(),
        metrics.clone(),
    )
    .map_err(StartError::Tls)?;
    let tls = tls::server_config(Arc::new(certificate)).map_err(StartError::Tls)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    if let Some(path) = &config.ready_file {
        Ready::new("trellis-injector")
            .listener("https", addr)
            .write(path)
            .map_err(|source| StartError::ReadyFile {
                path: path.clone(),
                source,
            })?;
    }
    tracing::info!(%addr, "webhook listening on https://{addr}");
    let router = server::router(Injector {
        settings: Arc::new(config.settings),
        metrics: metrics.clone(),
        stop: stop.clone(),
    });
    server::serve(listener, Arc::new(tls), router, metrics, stop, config.drain).await;
    tracing::info!("webhook stopped");
    Ok(())
}
