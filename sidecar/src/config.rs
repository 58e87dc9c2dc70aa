//! `trellis-sidecar` configuration: a TOML file (see deploy/sidecar.example.toml), overridden
//! by flags and `TRELLIS_*` environment variables, validated before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use trellis_identity::tls::KeyExchange;
use trellis_identity::{IdMatcher, IdPattern, SpiffeId, TrustDomain, duration};

use crate::app_probes::AppProbes;

/// Command-line flags; each also reads a `TRELLIS_*` environment variable. The join token is
/// deliberately not a flag (flags show up in `ps`): use a file or `TRELLIS_JOIN_TOKEN`.
#[derive(Debug, Default, Parser)]
#[command(
    name = "trellis-sidecar",
    version,
    about = "Trellis sidecar: identity agent and mTLS proxy",
    after_help = "The capture init step: trellis-sidecar init-network --help\n\
                  The startup probe: trellis-sidecar probe-ready --help"
)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "TRELLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Trust domain, e.g. cluster.local.
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Address of the CA's gRPC endpoint: HOST:PORT (a DNS name or an IP), or several
    /// replicas' separated by commas (tried in turn when one stops answering).
    #[arg(long, env = "TRELLIS_CA_ADDR")]
    pub ca_addr: Option<String>,
    /// PEM file with the initial trust bundle.
    #[arg(long, env = "TRELLIS_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// Instead of a bundle file: the SHA-256 of a root's SubjectPublicKeyInfo (hex).
    #[arg(long, env = "TRELLIS_TRUST_FINGERPRINT")]
    pub trust_fingerprint: Option<String>,
    /// File holding a join token for bootstrap.
    #[arg(long, env = "TRELLIS_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Kubernetes: the pod's projected service-account token (audience trellis-ca), read
    /// afresh on every bootstrap because the kubelet rotates it.
    #[arg(long, env = "TRELLIS_SERVICE_ACCOUNT_TOKEN_FILE")]
    pub service_account_token_file: Option<PathBuf>,
    /// Write svid.pem, svid_key.pem (0600) and bundle.pem here on every change.
    #[arg(long, env = "TRELLIS_SVID_DIR")]
    pub svid_dir: Option<PathBuf>,
    /// Admin HTTP endpoint (liveness, readiness, metrics, identity).
    #[arg(long, env = "TRELLIS_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Inbound mTLS listener (the pod's public port).
    #[arg(long, env = "TRELLIS_INBOUND_LISTEN")]
    pub inbound_listen: Option<SocketAddr>,
    /// The local app the inbound listener forwards to (with capture: connections made to
    /// the listener's own port).
    #[arg(long, env = "TRELLIS_INBOUND_APP")]
    pub inbound_app: Option<SocketAddr>,
    /// Inbound capture is on (`trellis-sidecar init-network` redirects the pod's inbound TCP
    /// to the inbound listener): each connection goes to 127.0.0.1 on the port it was sent to.
    #[arg(long, env = "TRELLIS_INBOUND_CAPTURE")]
    pub inbound_capture: bool,
    /// The app's kubelet probes, run on `/app-health/CONTAINER/KIND` of the admin endpoint
    /// (JSON, written by injection).
    #[arg(long, env = "TRELLIS_APP_PROBES")]
    pub app_probes: Option<String>,
    /// Outbound listener as LISTEN=UPSTREAM=SPIFFE_ID_PATTERN (repeatable), e.g.
    /// 127.0.0.1:7001=10.0.0.5:15006=spiffe://cluster.local/ns/prod/sa/db
    #[arg(long = "outbound", env = "TRELLIS_OUTBOUND", value_delimiter = ',')]
    pub outbound: Vec<String>,
    /// Serve the SPIFFE Workload API on this Unix socket (a path, or unix:///path as in
    /// SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, env = "TRELLIS_WORKLOAD_API_SOCKET")]
    pub workload_api_socket: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "TRELLIS_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Offer and accept only the hybrid post-quantum key exchange X25519MLKEM768 on the
    /// data path, both ways: a peer without it fails the handshake (`tls.require_post_quantum`).
    #[arg(long, env = "TRELLIS_REQUIRE_POST_QUANTUM")]
    pub require_post_quantum: bool,
    /// Threads that run the proxy (default: one per core this process may use, at most 2).
    #[arg(long, env = "TRELLIS_WORKERS")]
    pub workers: Option<usize>,
    /// Once every listener is bound, write a JSON document here with their addresses, the
    /// pid and the SPIFFE ID (atomically: a reader sees all of it or nothing).
    #[arg(long, env = "TRELLIS_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    pub log_format: Option<String>,
    /// Threads that run the proxy; see [`Config::workers`].
    pub workers: Option<usize>,
    /// SPIFFE Workload API socket (path or unix:///path); off if unset.
    pub workload_api_socket: Option<String>,
    #[serde(default)]
    pub ca: CaFile,
    #[serde(default)]
    pub admin: AdminFile,
    pub inbound: Option<InboundFile>,
    #[serde(default)]
    pub outbound: Vec<OutboundFile>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub tls: TlsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    #[serde(default)]
    pub require_post_quantum: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaFile {
    pub address: Option<String>,
    pub spiffe_id: Option<String>,
    pub trust_bundle: Option<PathBuf>,
    pub trust_fingerprint: Option<String>,
    pub join_token_file: Option<PathBuf>,
    pub service_account_token_file: Option<PathBuf>,
    pub expected_spiffe_id: Option<String>,
    pub ttl: Option<String>,
    pub svid_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<SocketAddr>,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub header_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundFile {
    pub listen: SocketAddr,
    pub app: Option<SocketAddr>,
    pub policy: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub capture: bool,
    #[serde(default)]
    pub ports: Vec<PortFile>,
    #[serde(default)]
    pub permissive_plaintext: bool,
    pub max_connections: Option<usize>,
}

/// A policy for captured connections to one app port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortFile {
    pub port: u16,
    pub policy: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundFile {
    pub listen: SocketAddr,
    pub upstream: String,
    pub allow: Vec<String>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub handshake: Option<String>,
    pub connect: Option<String>,
    pub idle: Option<String>,
    pub drain: Option<String>,
}

/// How the sidecar first learns which roots to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustSource {
    /// A PEM file with the bundle.
    BundleFile(PathBuf),
    /// The SHA-256 (32 bytes) of a root's SubjectPublicKeyInfo; the bundle is then fetched
    /// from the CA, whose chain must end at a root with this fingerprint.
    Fingerprint([u8; 32]),
}

/// Inbound policy for authenticated peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    /// Any authenticated identity in the trust domain, plus anything in `allow`.
    Strict,
    /// Only identities in `allow`.
    Deny,
}

/// Validated CA-facing settings.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// HOST:PORT, or several separated by commas (as given, for messages).
    pub address: String,
    /// The replicas' HOST:PORT, each resolved on every connection (so a Service's DNS name
    /// follows it), tried in turn from the one that answered last.
    pub replicas: CaReplicas,
    /// The SPIFFE ID the CA must present.
    pub spiffe_id: SpiffeId,
    pub trust: TrustSource,
    pub join_token_file: Option<PathBuf>,
    pub service_account_token_file: Option<PathBuf>,
    pub expected_spiffe_id: Option<SpiffeId>,
    pub ttl: Option<Duration>,
    pub svid_dir: Option<PathBuf>,
}

/// The CA replicas a sidecar may use, and which one answered last.
#[derive(Debug, Clone)]
pub struct CaReplicas {
    addresses: Vec<String>,
    last_good: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CaReplicas {
    /// Parses `HOST:PORT[,HOST:PORT...]`.
    pub fn parse(name: &str, text: &str) -> Result<Self, ConfigError> {
        let addresses = text
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| host_port(name, a))
            .collect::<Result<Vec<_>, _>>()?;
        if addresses.is_empty() {
            return Err(err(format!("{name} {text:?} names no address")));
        }
        Ok(Self {
            addresses,
            last_good: Default::default(),
        })
    }

    /// Every address, starting with the one that answered last.
    pub fn in_order(&self) -> impl Iterator<Item = (usize, &str)> {
        let start = self.last_good.load(std::sync::atomic::Ordering::Relaxed);
        let n = self.addresses.len();
        (0..n).map(move |i| {
            let index = (start + i) % n;
            (index, self.addresses[index].as_str())
        })
    }

    /// Remembers that the replica at `index` answered.
    pub fn answered(&self, index: usize) {
        self.last_good
            .store(index, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

/// A validated inbound listener.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub listen: SocketAddr,
    /// Where connections made to the listener itself go; required without capture.
    pub app: Option<SocketAddr>,
    /// The default policy: for the listener's own port and every captured port without one
    /// of its own.
    pub mode: PolicyMode,
    pub allow: IdMatcher,
    /// Captured connections are honoured: each goes to its original port on loopback.
    pub capture: bool,
    /// Per-port policies for captured connections.
    pub ports: Vec<PortPolicy>,
    pub permissive_plaintext: bool,
    pub max_connections: usize,
}

/// The policy of one captured app port.
#[derive(Debug, Clone)]
pub struct PortPolicy {
    pub port: u16,
    pub mode: PolicyMode,
    pub allow: IdMatcher,
}

/// A validated outbound listener.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub listen: SocketAddr,
    /// HOST:PORT, resolved on every connection.
    pub upstream: String,
    /// The SPIFFE IDs the upstream may present.
    pub allow: IdMatcher,
    pub max_connections: usize,
}

/// Timeouts for the data path.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A TLS handshake must finish within this.
    pub handshake: Duration,
    /// Connecting to the app or upstream must finish within this.
    pub connect: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle: Duration,
    /// On SIGTERM, connections may finish for this long.
    pub drain: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: TrustDomain,
    pub ca: CaConfig,
    pub admin_listen: SocketAddr,
    /// The admin port's connection bounds and header timeout.
    pub admin_limits: crate::admin::AdminLimits,
    pub inbound: Option<InboundConfig>,
    pub outbound: Vec<OutboundConfig>,
    pub timeouts: Timeouts,
    pub json_logs: bool,
    /// Threads that run the proxy, each a single-threaded runtime with its share of the
    /// connections; the first also runs the agent and the admin endpoint. The default,
    /// [`default_workers`], is one per core this process may use (its CPU limit on
    /// Kubernetes), at most two.
    pub workers: usize,
    /// Where to serve the SPIFFE Workload API, if anywhere.
    pub workload_api_socket: Option<PathBuf>,
    /// The app's probes, run by the admin endpoint (see [`AppProbes`]).
    pub app_probes: AppProbes,
    /// The data path's key exchanges, both ways: hybrid post-quantum preferred (the
    /// default) or required (`tls.require_post_quantum`). The connection to the CA always
    /// prefers it.
    pub key_exchange: KeyExchange,
}

/// A configuration problem, as one line naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// More threads than this is a typo, not a sidecar.
const MAX_WORKERS: usize = 256;

/// The default `workers`: [`workers_for`] the cores this process may use, as the standard
/// library reads them (the affinity mask and the cgroup CPU quota, so a Kubernetes CPU
/// limit of one core or less gives one thread).
pub fn default_workers() -> usize {
    workers_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Two threads where two cores are there, else one. Two, because each thread runs its own
/// share of the connections (`proxy/workers.rs`), so a thread the VM holds up stalls only
/// its share, and handshakes spread over both cores (see ARCHITECTURE.md). Not more,
/// because a sidecar shares its pod's cores with the app, and one thread per core beyond
/// that buys handshake capacity that a sidecar rarely needs. Without a second core a second
/// thread only adds hand-offs (and, under a CPU quota, throttling).
pub fn workers_for(cores: usize) -> usize {
    cores.clamp(1, 2)
}

/// Checks `HOST:PORT` (a DNS name, an IPv4 address, or `[IPv6]`), returning it unchanged.
pub fn host_port(name: &str, text: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        err(format!(
            "{name} {text:?}: {why} (expected HOST:PORT, e.g. trellis-ca.trellis-system.svc:8443 or 127.0.0.1:8443)"
        ))
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    };
    if !host_ok {
        return Err(bad("the host is neither a DNS name nor an IP address"));
    }
    Ok(text.to_owned())
}

fn dur(name: &str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => duration::parse(&text).map_err(|e| err(format!("{name}: {e}"))),
    }
}

fn matcher(name: &str, patterns: &[String]) -> Result<IdMatcher, ConfigError> {
    patterns
        .iter()
        .map(|p| {
            p.parse::<IdPattern>()
                .map_err(|e| err(format!("{name} entry {p:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(IdMatcher)
}

/// A policy mode and its allow list; `what` names the table in messages.
fn policy(
    what: &str,
    mode: Option<&str>,
    allow: &[String],
) -> Result<(PolicyMode, IdMatcher), ConfigError> {
    let mode = match mode {
        None | Some("strict") => PolicyMode::Strict,
        Some("deny") => PolicyMode::Deny,
        Some(other) => {
            return Err(err(format!(
                "{what}.policy {other:?}: expected \"strict\" or \"deny\""
            )));
        }
    };
    let allow = matcher(&format!("{what}.allow"), allow)?;
    if mode == PolicyMode::Deny && allow.0.is_empty() {
        return Err(err(format!(
            "{what}.policy is \"deny\" but {what}.allow is empty: nobody could connect"
        )));
    }
    Ok((mode, allow))
}

/// Parses `LISTEN=UPSTREAM=PATTERN[|PATTERN...]`.
fn outbound_flag(text: &str) -> Result<OutboundFile, ConfigError> {
    let parts: Vec<&str> = text.splitn(3, '=').collect();
    let [listen, upstream, ids] = parts.as_slice() else {
        return Err(err(format!(
            "--outbound {text:?}: expected LISTEN=UPSTREAM=SPIFFE_ID, e.g. \
             127.0.0.1:7001=10.0.0.5:15006=spiffe://cluster.local/ns/prod/sa/db"
        )));
    };
    let addr = |what: &str, s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| err(format!("--outbound {text:?}: {what} {s:?}: {e}")))
    };
    Ok(OutboundFile {
        listen: addr("listen address", listen)?,
        upstream: host_port(&format!("--outbound {text:?}: upstream"), upstream)?,
        allow: ids.split('|').map(str::to_owned).collect(),
        max_connections: None,
    })
}

impl Config {
    /// Reads the file named by the flags (if any), applies flags and env, validates.
    pub fn load(flags: Flags) -> Result<Self, ConfigError> {
        let mut file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| err(format!("{}: {}", path.display(), e.message())))?
            }
            None => FileConfig::default(),
        };
        if flags.trust_domain.is_some() {
            file.trust_domain = flags.trust_domain;
        }
        if flags.workers.is_some() {
            file.workers = flags.workers;
        }
        if flags.log_format.is_some() {
            file.log_format = flags.log_format;
        }
        if flags.workload_api_socket.is_some() {
            file.workload_api_socket = flags.workload_api_socket;
        }
        file.tls.require_post_quantum |= flags.require_post_quantum;
        let ca = &mut file.ca;
        if flags.ca_addr.is_some() {
            ca.address = flags.ca_addr;
        }
        if flags.trust_bundle.is_some() {
            ca.trust_bundle = flags.trust_bundle;
            ca.trust_fingerprint = None;
        }
        if flags.trust_fingerprint.is_some() {
            ca.trust_fingerprint = flags.trust_fingerprint;
            ca.trust_bundle = None;
        }
        if flags.join_token_file.is_some() {
            ca.join_token_file = flags.join_token_file;
        }
        if flags.service_account_token_file.is_some() {
            ca.service_account_token_file = flags.service_account_token_file;
        }
        if flags.svid_dir.is_some() {
            ca.svid_dir = flags.svid_dir;
        }
        if flags.admin_listen.is_some() {
            file.admin.listen = flags.admin_listen;
        }
        match (flags.inbound_listen, file.inbound.as_mut()) {
            (Some(listen), None) => {
                file.inbound = Some(InboundFile {
                    listen,
                    app: flags.inbound_app,
                    policy: None,
                    allow: Vec::new(),
                    capture: flags.inbound_capture,
                    ports: Vec::new(),
                    permissive_plaintext: false,
                    max_connections: None,
                })
            }
            (listen, Some(inbound)) => {
                if let Some(l) = listen {
                    inbound.listen = l;
                }
                if flags.inbound_app.is_some() {
                    inbound.app = flags.inbound_app;
                }
                inbound.capture |= flags.inbound_capture;
            }
            (None, None) if flags.inbound_app.is_some() || flags.inbound_capture => {
                return Err(err(
                    "--inbound-app and --inbound-capture need --inbound-listen (the sidecar's \
                     inbound port, e.g. 0.0.0.0:15006)",
                ));
            }
            (None, None) => {}
        }
        for text in flags.outbound.iter().filter(|t| !t.is_empty()) {
            file.outbound.push(outbound_flag(text)?);
        }
        let mut config = Self::build(file)?;
        if let Some(json) = flags.app_probes.filter(|j| !j.trim().is_empty()) {
            config.app_probes = AppProbes::parse(&json).map_err(err)?;
        }
        Ok(config)
    }

    /// Validates a file configuration, filling defaults.
    pub fn build(file: FileConfig) -> Result<Self, ConfigError> {
        let td_text = file.trust_domain.unwrap_or_else(|| "cluster.local".into());
        let trust_domain = TrustDomain::new(&td_text)
            .map_err(|e| err(format!("trust_domain {td_text:?}: {e}")))?;
        let ca = file.ca;
        let address = ca.address.ok_or_else(|| {
            err("ca.address is required (--ca-addr or TRELLIS_CA_ADDR), e.g. 127.0.0.1:8443")
        })?;
        let replicas = CaReplicas::parse("ca.address", &address)?;
        let ca_id_text = ca.spiffe_id.unwrap_or_else(|| {
            format!(
                "spiffe://{trust_domain}{}",
                trellis_identity::spiffe::reserved::CA
            )
        });
        let spiffe_id = SpiffeId::new(&ca_id_text)
            .map_err(|e| err(format!("ca.spiffe_id {ca_id_text:?}: {e}")))?;
        let trust = match (ca.trust_bundle, ca.trust_fingerprint) {
            (Some(path), None) => TrustSource::BundleFile(path),
            (None, Some(fp)) => {
                let bytes = trellis_identity::hex::decode(&fp)
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| {
                        err(format!(
                            "ca.trust_fingerprint {fp:?} is not a SHA-256 in hex (64 hex digits, \
                             as `trellis ca status` prints)"
                        ))
                    })?;
                let mut fp = [0u8; 32];
                fp.copy_from_slice(&bytes);
                TrustSource::Fingerprint(fp)
            }
            (None, None) => {
                return Err(err(
                    "ca.trust_bundle or ca.trust_fingerprint is required: the sidecar must know \
                     which CA to trust (--trust-bundle FILE or --trust-fingerprint SHA256)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(err("set ca.trust_bundle or ca.trust_fingerprint, not both"));
            }
        };
        let expected_spiffe_id = ca
            .expected_spiffe_id
            .map(|t| {
                SpiffeId::new(&t).map_err(|e| err(format!("ca.expected_spiffe_id {t:?}: {e}")))
            })
            .transpose()?;
        let ttl = ca
            .ttl
            .map(|t| dur("ca.ttl", Some(t), Duration::ZERO))
            .transpose()?;
        let inbound = file
            .inbound
            .map(|i| -> Result<InboundConfig, ConfigError> {
                let (mode, allow) = policy("inbound", i.policy.as_deref(), &i.allow)?;
                if i.app.is_none() && !i.capture {
                    return Err(err(
                        "inbound.app is required unless inbound.capture is on: name the local \
                         app the inbound listener forwards to (--inbound-app 127.0.0.1:8080)",
                    ));
                }
                if !i.ports.is_empty() && !i.capture {
                    return Err(err(
                        "inbound.ports set policies for captured connections: turn \
                         inbound.capture on (and run trellis-sidecar init-network), or remove them",
                    ));
                }
                let mut ports: Vec<PortPolicy> = Vec::with_capacity(i.ports.len());
                for p in &i.ports {
                    let name = format!("inbound.ports (port {})", p.port);
                    if p.port == 0 || p.port == i.listen.port() {
                        return Err(err(format!(
                            "{name}: not an app port (1-65535, not the listener's own {})",
                            i.listen.port()
                        )));
                    }
                    if ports.iter().any(|q| q.port == p.port) {
                        return Err(err(format!("{name}: listed twice")));
                    }
                    let (mode, allow) = policy(&name, p.policy.as_deref(), &p.allow)?;
                    ports.push(PortPolicy {
                        port: p.port,
                        mode,
                        allow,
                    });
                }
                Ok(InboundConfig {
                    listen: i.listen,
                    app: i.app,
                    mode,
                    allow,
                    capture: i.capture,
                    ports,
                    permissive_plaintext: i.permissive_plaintext,
                    max_connections: i.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
                })
            })
            .transpose()?;
        let mut outbound = Vec::with_capacity(file.outbound.len());
        for o in file.outbound {
            let allow = matcher("outbound.allow", &o.allow)?;
            if allow.0.is_empty() {
                return Err(err(format!(
                    "outbound listener {}: allow is empty; name the SPIFFE ID(s) {} must present",
                    o.listen, o.upstream
                )));
            }
            if !o.listen.ip().is_loopback() {
                return Err(err(format!(
                    "outbound listener {} is not on a loopback address: it accepts plaintext, \
                     so it must only be reachable from this pod",
                    o.listen
                )));
            }
            outbound.push(OutboundConfig {
                listen: o.listen,
                upstream: host_port("outbound.upstream", &o.upstream)?,
                allow,
                max_connections: o.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            });
        }
        let key_exchange = if file.tls.require_post_quantum {
            if inbound.as_ref().is_some_and(|i| i.permissive_plaintext) {
                return Err(err(
                    "tls.require_post_quantum refuses TLS peers without X25519MLKEM768, but \
                     inbound.permissive_plaintext accepts peers without any TLS: turn one of \
                     them off",
                ));
            }
            KeyExchange::PostQuantumRequired
        } else {
            KeyExchange::PostQuantumPreferred
        };
        let t = file.timeouts;
        let timeouts = Timeouts {
            handshake: dur("timeouts.handshake", t.handshake, Duration::from_secs(10))?,
            connect: dur("timeouts.connect", t.connect, Duration::from_secs(5))?,
            idle: dur("timeouts.idle", t.idle, Duration::from_secs(3600))?,
            drain: dur("timeouts.drain", t.drain, Duration::from_secs(20))?,
        };
        let json_logs = match file.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(err(format!(
                    "log_format {other:?}: expected \"text\" or \"json\""
                )));
            }
        };
        let workers = match file.workers {
            None => default_workers(),
            Some(n @ 1..=MAX_WORKERS) => n,
            Some(n) => {
                return Err(err(format!(
                    "workers {n}: expected 1 to {MAX_WORKERS} (threads for the proxy; 1 suits \
                     a sidecar with one core or less)"
                )));
            }
        };
        let admin_limits = crate::admin::AdminLimits::build(
            file.admin.max_connections,
            file.admin.max_connections_per_source,
            file.admin
                .header_timeout
                .map(|t| dur("admin.header_timeout", Some(t), Duration::ZERO))
                .transpose()?,
        )
        .map_err(|e| err(format!("admin.{e}")))?;
        let workload_api_socket = file
            .workload_api_socket
            .map(|text| {
                let path = text.strip_prefix("unix://").unwrap_or(&text);
                if !path.starts_with('/') {
                    return Err(err(format!(
                        "workload_api_socket {text:?} must be an absolute path (or unix:///path)"
                    )));
                }
                Ok(PathBuf::from(path))
            })
            .transpose()?;
        Ok(Self {
            workload_api_socket,
            app_probes: AppProbes::default(),
            ca: CaConfig {
                address,
                replicas,
                spiffe_id,
                trust,
                join_token_file: ca.join_token_file,
                service_account_token_file: ca.service_account_token_file,
                expected_spiffe_id,
                ttl,
                svid_dir: ca.svid_dir,
            },
            trust_domain,
            admin_listen: file
                .admin
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 15020))),
            admin_limits,
            inbound,
            outbound,
            timeouts,
            json_logs,
            workers,
            key_exchange,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::build(toml::from_str(text).map_err(|e| err(e.message().to_owned()))?)
    }

    const MINIMAL: &str = "[ca]\naddress = \"127.0.0.1:8443\"\ntrust_bundle = \"b.pem\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.ca.spiffe_id.as_str(), "spiffe://cluster.local/trellis/ca");
        assert_eq!(c.admin_listen.port(), 15020);
        assert!(c.inbound.is_none() && c.outbound.is_empty());
        assert_eq!(c.workers, default_workers());
        assert_eq!(c.key_exchange, KeyExchange::PostQuantumPreferred);
        let c = parse(&format!("workers = 4\n{MINIMAL}")).expect("valid");
        assert_eq!(c.workers, 4);
        let c = parse(&format!("workers = 1\n{MINIMAL}")).expect("valid");
        assert_eq!(c.workers, 1);
    }

    #[test]
    fn default_workers_are_the_cores_at_most_two() {
        assert_eq!(workers_for(0), 1);
        assert_eq!(workers_for(1), 1);
        assert_eq!(workers_for(2), 2);
        assert_eq!(workers_for(64), 2);
    }

    #[test]
    fn each_bad_value_is_named() {
        let cases = [
            ("[ca]\ntrust_bundle = \"b\"", "ca.address is required"),
            (
                "[ca]\naddress = \"127.0.0.1:1\"",
                "trust_bundle or ca.trust_fingerprint",
            ),
            (
                "[ca]\naddress = \"127.0.0.1:1\"\ntrust_fingerprint = \"abc\"",
                "not a SHA-256",
            ),
            (
                &format!(
                    "{MINIMAL}[inbound]\nlisten = \"0.0.0.0:1\"\napp = \"127.0.0.1:2\"\npolicy = \"deny\""
                ),
                "nobody could connect",
            ),
            (
                &format!(
                    "{MINIMAL}[inbound]\nlisten = \"0.0.0.0:1\"\napp = \"127.0.0.1:2\"\nallow = [\"spiffe://x/a//b\"]"
                ),
                "inbound.allow entry",
            ),
            (
                &format!(
                    "{MINIMAL}[[outbound]]\nlisten = \"0.0.0.0:1\"\nupstream = \"10.0.0.1:2\"\nallow = [\"spiffe://td/a\"]"
                ),
                "not on a loopback address",
            ),
            (
                &format!("{MINIMAL}[timeouts]\nidle = \"forever\""),
                "timeouts.idle",
            ),
            ("[ca]\naddres = \"x\"", "unknown field"),
            (
                &format!("{MINIMAL}[inbound]\nlisten = \"0.0.0.0:1\""),
                "inbound.app is required unless inbound.capture",
            ),
            (
                &format!(
                    "{MINIMAL}[inbound]\nlisten = \"0.0.0.0:1\"\napp = \"127.0.0.1:2\"\n[[inbound.ports]]\nport = 8080"
                ),
                "turn inbound.capture on",
            ),
            (
                &format!(
                    "{MINIMAL}[inbound]\nlisten = \"0.0.0.0:1\"\ncapture = true\n[[inbound.ports]]\nport = 8080\npolicy = \"deny\""
                ),
                "inbound.ports (port 8080).policy is \"deny\"",
            ),
            (
                &format!(
                    "{MINIMAL}[inbound]\nlisten = \"0.0.0.0:1\"\ncapture = true\n[[inbound.ports]]\nport = 1"
                ),
                "not the listener's own 1",
            ),
            (
                &format!(
                    "{MINIMAL}[inbound]\nlisten = \"0.0.0.0:1\"\ncapture = true\n[[inbound.ports]]\nport = 8\n[[inbound.ports]]\nport = 8"
                ),
                "listed twice",
            ),
            (
                &format!("workers = 0\n{MINIMAL}"),
                "workers 0: expected 1 to 256",
            ),
            (&format!("workers = 100000\n{MINIMAL}"), "workers 100000"),
            (
                &format!("{MINIMAL}[admin]\nmax_connections = 0"),
                "admin.max_connections is 0",
            ),
            (
                &format!("{MINIMAL}[admin]\nheader_timeout = \"1h\""),
                "admin.header_timeout",
            ),
            (
                &format!(
                    "{MINIMAL}[inbound]\nlisten = \"0.0.0.0:1\"\napp = \"127.0.0.1:2\"\n\
                     permissive_plaintext = true\n[tls]\nrequire_post_quantum = true"
                ),
                "X25519MLKEM768, but inbound.permissive_plaintext accepts peers without any TLS: \
                 turn one of them off",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(expected), "{text:?} → {e}");
        }
    }

    #[test]
    fn capture_needs_no_app_and_takes_per_port_policies() {
        let c = parse(&format!(
            "{MINIMAL}[inbound]\nlisten = \"0.0.0.0:15006\"\ncapture = true\n\
             [[inbound.ports]]\nport = 8080\npolicy = \"deny\"\nallow = [\"spiffe://cluster.local/a\"]\n"
        ))
        .expect("valid");
        let inbound = c.inbound.expect("inbound");
        assert!(inbound.capture && inbound.app.is_none());
        assert_eq!(inbound.ports.len(), 1);
        assert_eq!(inbound.ports[0].mode, PolicyMode::Deny);
    }

    #[test]
    fn capture_and_probes_from_flags() {
        let flags = Flags::parse_from([
            "trellis-sidecar",
            "--ca-addr",
            "127.0.0.1:1",
            "--trust-bundle",
            "b.pem",
            "--inbound-listen",
            "0.0.0.0:15006",
            "--inbound-capture",
            "--app-probes",
            r#"{"app/readyz":{"tcpSocket":{"port":8080}}}"#,
        ]);
        let c = Config::load(flags).expect("valid");
        assert!(c.inbound.expect("inbound").capture);
        assert!(!c.app_probes.is_empty());
        let flags = Flags::parse_from([
            "trellis-sidecar",
            "--ca-addr",
            "127.0.0.1:1",
            "--trust-bundle",
            "b.pem",
            "--inbound-app",
            "127.0.0.1:8080",
        ]);
        let e = Config::load(flags).expect_err("no listener").to_string();
        assert!(e.contains("need --inbound-listen"), "{e}");
    }

    #[test]
    fn post_quantum_can_be_required_by_file_or_flag() {
        let c = parse(&format!("{MINIMAL}[tls]\nrequire_post_quantum = true\n")).expect("valid");
        assert_eq!(c.key_exchange, KeyExchange::PostQuantumRequired);
        let e = parse(&format!("{MINIMAL}[tls]\nrequire_post_quantum = \"yes\"\n"))
            .expect_err("not a boolean")
            .to_string();
        assert!(e.contains("bool"), "{e}");
        let base = [
            "trellis-sidecar",
            "--ca-addr",
            "127.0.0.1:1",
            "--trust-bundle",
            "b.pem",
        ];
        let flags = Flags::parse_from(base.iter().chain(&["--require-post-quantum"]));
        let c = Config::load(flags).expect("valid");
        assert_eq!(c.key_exchange, KeyExchange::PostQuantumRequired);
        let c = Config::load(Flags::parse_from(base)).expect("valid");
        assert_eq!(c.key_exchange, KeyExchange::PostQuantumPreferred);
    }

    #[test]
    fn addresses_may_be_names_or_ips() {
        for ok in [
            "127.0.0.1:8443",
            "trellis-ca.trellis-system.svc:8443",
            "[::1]:15006",
            "ca:1",
        ] {
            assert!(host_port("x", ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "ca:0",
            "ca:99999",
            ":8443",
            "bad host:1",
            "[nope]:1",
        ] {
            assert!(host_port("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ca_replicas_are_tried_from_the_one_that_answered_last() {
        let replicas = CaReplicas::parse("ca.address", "a:1, b:2,c:3").expect("valid");
        let order = |r: &CaReplicas| r.in_order().map(|(_, a)| a.to_owned()).collect::<Vec<_>>();
        assert_eq!(order(&replicas), ["a:1", "b:2", "c:3"]);
        replicas.answered(1);
        assert_eq!(order(&replicas), ["b:2", "c:3", "a:1"]);
        // Clones share what they learned (the agent's tasks each hold one).
        let clone = replicas.clone();
        clone.answered(2);
        assert_eq!(order(&replicas), ["c:3", "a:1", "b:2"]);
        for bad in ["", " , ", "a:1,b"] {
            assert!(CaReplicas::parse("ca.address", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn outbound_flag_form() {
        let o = outbound_flag("127.0.0.1:7001=10.0.0.5:15006=spiffe://td/ns/a/*|spiffe://td/b")
            .expect("valid");
        assert_eq!(o.allow.len(), 2);
        assert!(outbound_flag("127.0.0.1:7001=spiffe://td/a").is_err());
    }
}
