//! The injector's flags (each also a `TRELLIS_*` variable), checked before anything is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use trellis_inject::{Settings, SidecarFlags};

/// `trellis-injector`: the Trellis sidecar injector, a Kubernetes mutating admission webhook
/// (AdmissionReview v1 over HTTPS).
#[derive(Debug, clap::Parser)]
#[command(name = "trellis-injector", version)]
pub struct Flags {
    /// Address to serve HTTPS on.
    #[arg(long, env = "TRELLIS_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Serving certificate chain (PEM); its names must include the webhook Service's DNS
    /// name. Re-read when the file changes (a rotated Secret), without a restart.
    #[arg(long, env = "TRELLIS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// The serving certificate's private key (PEM).
    #[arg(long, env = "TRELLIS_TLS_KEY", value_name = "FILE")]
    pub tls_key: PathBuf,
    /// The mesh's trust domain, as injected sidecars get it.
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Log format: text or json.
    #[arg(long, env = "TRELLIS_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Once listening, write a JSON document with the bound address and the pid here
    /// (atomically: a reader sees all of it or nothing).
    #[arg(long, env = "TRELLIS_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Check the flags, print the settings and exit (the TLS files are not read).
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub sidecar: SidecarFlags,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to serve HTTPS on.
    pub listen: SocketAddr,
    /// Serving certificate chain file.
    pub tls_cert: PathBuf,
    /// Its key file.
    pub tls_key: PathBuf,
    /// JSON logs instead of text.
    pub json_logs: bool,
    /// Where to write the ready document, if anywhere.
    pub ready_file: Option<PathBuf>,
    /// What goes into every injected pod.
    pub settings: Settings,
    /// On shutdown, requests in flight may finish for this long.
    pub drain: Duration,
}

/// A flag value that cannot be used; the message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Flags {
    /// Checks the flags.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let settings = self
            .sidecar
            .settings(Some(&self.trust_domain))
            .map_err(|e| ConfigError(e.to_string()))?;
        let json_logs = match self.log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(ConfigError(format!(
                    "--log-format {other:?}: expected text or json"
                )));
            }
        };
        Ok(Config {
            listen: self.listen,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            json_logs,
            ready_file: self.ready_file.clone(),
            settings,
            drain: Duration::from_secs(10),
        })
    }
}
