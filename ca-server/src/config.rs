//! `trellis-ca` configuration: a TOML file, overridden by flags and `TRELLIS_*` environment
//! variables, validated into [`Config`] before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use trellis_identity::{TrustDomain, duration};

use crate::attest::jwks::{HttpsUrl, KeySource};
pub use crate::attest::kubernetes::KubernetesConfig;
use crate::audit::{AuditConfig, AuditFile};
use crate::connections::{ConnectionsConfig, ConnectionsFile};
use crate::jwt_svid::{JwtSvidConfig, JwtSvidFile};
use crate::limits::{LimitsConfig, LimitsFile};
use crate::store::StoreConfig;
use crate::store::postgres::config::{PasswordSource, PostgresConfig, UrlSource};

/// The shortest certificate lifetime the CA will issue (clients renew at half-life).
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// The longest certificate lifetime the CA will issue (at most 24 h).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Command-line flags; each also reads a `TRELLIS_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "trellis-ca",
    version,
    about = "The Trellis certificate authority"
)]
pub struct Flags {
    /// TOML configuration file (see deploy/ca.example.toml).
    #[arg(long, short = 'c', env = "TRELLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Trust domain, e.g. cluster.local.
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Address to serve gRPC on.
    #[arg(long, env = "TRELLIS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory (sled database, keys, admin credentials).
    #[arg(long, env = "TRELLIS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// On first start, import root + intermediate from this directory (written by
    /// `trellis ca init`) instead of generating them.
    #[arg(long, env = "TRELLIS_IMPORT_DIR")]
    pub import_dir: Option<PathBuf>,
    /// Default certificate lifetime, e.g. 1h.
    #[arg(long, env = "TRELLIS_DEFAULT_TTL")]
    pub default_ttl: Option<String>,
    /// Longest certificate lifetime a client may ask for, at most 24h.
    #[arg(long, env = "TRELLIS_MAX_TTL")]
    pub max_ttl: Option<String>,
    /// Plain-HTTP address for CRLs and metrics (off unless set).
    #[arg(long, env = "TRELLIS_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// HTTPS address of the SPIFFE bundle endpoint (off unless set).
    #[arg(long, env = "TRELLIS_BUNDLE_ENDPOINT_LISTEN")]
    pub bundle_endpoint_listen: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long, env = "TRELLIS_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Issuances in progress at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "TRELLIS_MAX_CONCURRENT_ISSUANCE")]
    pub max_concurrent_issuance: Option<u32>,
    /// Retry hint given when the CA is at max_concurrent_issuance, e.g. 1s.
    #[arg(long, env = "TRELLIS_BUSY_RETRY_AFTER")]
    pub busy_retry_after: Option<String>,
    /// Renewals per workload identity per minute (after the burst).
    #[arg(long, env = "TRELLIS_RENEWALS_PER_MINUTE")]
    pub renewals_per_minute: Option<u32>,
    /// Renewals one identity may make at once.
    #[arg(long, env = "TRELLIS_RENEWAL_BURST")]
    pub renewal_burst: Option<u32>,
    /// Bootstraps (token requests) per source address per minute (after the burst).
    #[arg(long, env = "TRELLIS_BOOTSTRAPS_PER_MINUTE")]
    pub bootstraps_per_minute: Option<u32>,
    /// Bootstraps one source address may make at once.
    #[arg(long, env = "TRELLIS_BOOTSTRAP_BURST")]
    pub bootstrap_burst: Option<u32>,
    /// How long expired certificate records are kept ("0" keeps them forever).
    #[arg(long, env = "TRELLIS_CERTIFICATE_RETENTION")]
    pub certificate_retention: Option<String>,
    /// Where the CA keeps its state: "sled" (the default: the data directory) or
    /// postgres://USER@HOST:PORT/DATABASE, shared by every replica. Also TRELLIS_STORE,
    /// which alone may carry a password in the URL (a flag never may: use
    /// --store-password-file or TRELLIS_STORE_PASSWORD).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// A file holding the database password.
    #[arg(long, env = "TRELLIS_STORE_PASSWORD_FILE", value_name = "FILE")]
    pub store_password_file: Option<PathBuf>,
    /// PEM roots the database server's certificate must chain to; TLS is required with it.
    #[arg(long, env = "TRELLIS_STORE_CA_FILE", value_name = "FILE")]
    pub store_ca_file: Option<PathBuf>,
    /// The key-encryption key (32 random bytes, base64; 0600) the CA's private keys are
    /// sealed under in a PostgreSQL store; the same file on every replica. Required with
    /// PostgreSQL.
    #[arg(long, env = "TRELLIS_KEY_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub key_encryption_key_file: Option<PathBuf>,
    /// Once every listener is bound, write a JSON document here with their addresses, the
    /// pid and the SPIFFE ID (atomically: a reader sees all of it or nothing).
    #[arg(long, env = "TRELLIS_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Validate the configuration, print it, and exit without serving.
    #[arg(long)]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Offline tasks instead of serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Work with a data directory's audit log without a running CA.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `trellis-ca audit ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the audit log's hash chain and signed checkpoints in a data directory (a copy,
    /// or that of a stopped CA) or a PostgreSQL store. Exit 0: intact; 1: tampered (the
    /// first bad entry is named); 2: cannot be read.
    #[command(group(clap::ArgGroup::new("log").required(true).args(["data", "store"])))]
    Verify {
        /// The data directory of a CA on sled.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// The PostgreSQL store of CA replicas instead, as the CA's --store (running
        /// replicas need not stop).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// A file holding the database password.
        #[arg(long, env = "TRELLIS_STORE_PASSWORD_FILE", value_name = "FILE")]
        store_password_file: Option<PathBuf>,
        /// PEM roots the database server's certificate must chain to; TLS is required with it.
        #[arg(long, env = "TRELLIS_STORE_CA_FILE", value_name = "FILE")]
        store_ca_file: Option<PathBuf>,
        /// Trust only these roots (PEM) for checkpoint signatures; without it, the roots the
        /// data directory records.
        #[arg(long, value_name = "FILE")]
        anchors: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The TOML file. Unknown keys are errors, so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    pub listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    /// The SPIFFE bundle endpoint (HTTPS); off unless set.
    pub bundle_endpoint_listen: Option<SocketAddr>,
    /// The `spiffe_refresh_hint` the bundle endpoint advertises.
    pub bundle_refresh_hint: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub import_dir: Option<PathBuf>,
    /// Extra DNS names / IPs for the CA's serving certificate (for tools that verify by host).
    pub server_names: Option<Vec<String>>,
    pub default_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub intermediate_ttl: Option<String>,
    pub root_ttl: Option<String>,
    pub admin_ttl: Option<String>,
    pub log_format: Option<String>,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Option<String>,
    /// Kubernetes service-account token attestation; off unless present.
    pub kubernetes: Option<KubernetesFile>,
    /// Overload protection (`crate::limits`).
    pub limits: Option<LimitsFile>,
    /// Connection bounds per listener (`crate::connections`).
    pub connections: Option<ConnectionsFile>,
    /// Audit-log checkpoints and retention (`crate::audit`).
    pub audit: Option<AuditFile>,
    /// JWT-SVID lifetimes (`crate::jwt_svid`).
    pub jwt_svid: Option<JwtSvidFile>,
    /// What the certificate store keeps.
    pub store: Option<StoreFile>,
}

/// The `[store]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// How long an expired certificate's record (and its revocation) is kept; "0" keeps
    /// every record forever.
    pub certificate_retention: Option<String>,
    /// "sled" (the default) or postgres://USER@HOST:PORT/DATABASE (no password here).
    pub url: Option<String>,
    /// A file holding the database password.
    pub password_file: Option<PathBuf>,
    /// PEM roots the database server's certificate must chain to (TLS required).
    pub ca_file: Option<PathBuf>,
    /// The key-encryption key the CA's private keys are sealed under in PostgreSQL.
    pub key_encryption_key_file: Option<PathBuf>,
}

/// The store settings that come from outside the file: flags and the environment.
#[derive(Debug, Default)]
struct StoreInputs {
    url_flag: Option<String>,
    /// `TRELLIS_STORE`.
    url_env: Option<String>,
    /// `TRELLIS_STORE_PASSWORD`.
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    key_encryption_key_file: Option<PathBuf>,
}

impl StoreInputs {
    /// The store the file and these settings name (flag over environment over file).
    fn build(self, file: Option<&StoreFile>) -> Result<StoreConfig, ConfigError> {
        let file_url = file.and_then(|f| f.url.clone());
        let (url, source) = match (self.url_flag, self.url_env, file_url) {
            (Some(url), _, _) => (url, UrlSource::Flag),
            (None, Some(url), _) => (url, UrlSource::Environment),
            (None, None, Some(url)) => (url, UrlSource::File),
            (None, None, None) => return Ok(StoreConfig::Sled),
        };
        if url == "sled" {
            return Ok(StoreConfig::Sled);
        }
        let password = PasswordSource {
            file: self
                .password_file
                .or_else(|| file.and_then(|f| f.password_file.clone())),
            environment: self.password_env,
        };
        let ca_file = self
            .ca_file
            .or_else(|| file.and_then(|f| f.ca_file.clone()));
        PostgresConfig::parse(&url, source, password, ca_file)
            .map(|pg| StoreConfig::Postgres(Box::new(pg)))
            .map_err(|e| ConfigError(format!("store: {e}")))
    }
}

/// The store `trellis-ca audit verify --store` reads: the URL as given (the password only
/// from the file or `TRELLIS_STORE_PASSWORD`, as for the CA).
pub fn audit_store(
    url: String,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
) -> Result<StoreConfig, ConfigError> {
    StoreInputs {
        url_flag: Some(url),
        password_env: std::env::var("TRELLIS_STORE_PASSWORD").ok(),
        password_file,
        ca_file,
        ..StoreInputs::default()
    }
    .build(None)
}

/// How long expired certificate records are kept by default: long enough to investigate
/// an incident after a weekend, short enough that the store holds a few days of history.
pub const DEFAULT_CERTIFICATE_RETENTION: Duration = Duration::from_secs(3 * 86_400);

/// The `[kubernetes]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_ca_file: Option<PathBuf>,
    pub jwks_bearer_token_file: Option<PathBuf>,
    pub jwks_refresh: Option<String>,
    pub clock_skew: Option<String>,
    pub allowed_namespaces: Option<Vec<String>>,
    pub allowed_service_accounts: Option<Vec<String>>,
}

/// The longest clock skew tolerated on token expiry and not-before.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Unknown key ids trigger a re-read of the keys at most this often.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// A request waits at most this long for a read of the keys (the first one, or the one its
/// unknown key id asked for); the read itself may take longer, in the background.
const JWKS_FETCH_WAIT: Duration = Duration::from_secs(3);

impl KubernetesFile {
    fn build(self) -> Result<KubernetesConfig, ConfigError> {
        let e = |m: String| ConfigError(format!("kubernetes.{m}"));
        let issuer = self.issuer.filter(|i| !i.is_empty()).ok_or_else(|| {
            e(
                "issuer is required: the cluster's service-account issuer, as \
               `kubectl get --raw /.well-known/openid-configuration` shows it"
                    .into(),
            )
        })?;
        let keys = match (self.jwks_url, self.jwks_file) {
            (Some(url), None) => KeySource::Url {
                url: HttpsUrl::parse(&url).map_err(|m| e(format!("jwks_url: {m}")))?,
                ca_file: self.jwks_ca_file.ok_or_else(|| {
                    e("jwks_ca_file is required with jwks_url (in a pod: \
                       /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)"
                        .into())
                })?,
                bearer_token_file: self.jwks_bearer_token_file,
            },
            (None, Some(path)) => KeySource::File(path),
            (None, None) => return Err(e("jwks_url or jwks_file is required".into())),
            (Some(_), Some(_)) => return Err(e("set jwks_url or jwks_file, not both".into())),
        };
        let refresh = ttl(
            "kubernetes.jwks_refresh",
            self.jwks_refresh,
            Duration::from_secs(300),
        )?;
        let clock_skew = ttl(
            "kubernetes.clock_skew",
            self.clock_skew,
            Duration::from_secs(60),
        )?;
        if clock_skew > MAX_CLOCK_SKEW {
            return Err(e(format!(
                "clock_skew is {}; at most {} is allowed",
                duration::format(clock_skew),
                duration::format(MAX_CLOCK_SKEW)
            )));
        }
        let allowed_namespaces = self.allowed_namespaces.unwrap_or_default();
        let allowed_service_accounts = self.allowed_service_accounts.unwrap_or_default();
        for entry in &allowed_service_accounts {
            if entry.split('/').filter(|p| !p.is_empty()).count() != 2 {
                return Err(e(format!(
                    "allowed_service_accounts entry {entry:?}: expected NAMESPACE/NAME or \
                     NAMESPACE/*"
                )));
            }
        }
        Ok(KubernetesConfig {
            issuer,
            audience: self.audience.unwrap_or_else(|| "trellis-ca".into()),
            keys,
            refresh,
            min_refresh: JWKS_MIN_REFRESH,
            fetch_wait: JWKS_FETCH_WAIT,
            clock_skew,
            allowed_namespaces,
            allowed_service_accounts,
        })
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: TrustDomain,
    pub listen: SocketAddr,
    /// CRLs and metrics over plain HTTP, if set.
    pub http_listen: Option<SocketAddr>,
    pub bundle_endpoint_listen: Option<SocketAddr>,
    pub bundle_refresh_hint: Duration,
    pub data_dir: PathBuf,
    pub import_dir: Option<PathBuf>,
    pub server_names: Vec<String>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub intermediate_ttl: Duration,
    pub root_ttl: Duration,
    pub admin_ttl: Duration,
    pub json_logs: bool,
    pub shutdown_grace: Duration,
    /// Service-account token attestation, if configured.
    pub kubernetes: Option<KubernetesConfig>,
    /// Concurrency and rate limits for issuance.
    pub limits: LimitsConfig,
    /// Connection bounds and timeouts per listener.
    pub connections: ConnectionsConfig,
    pub audit: AuditConfig,
    /// JWT-SVID lifetimes.
    pub jwt_svid: JwtSvidConfig,
    /// How long an expired certificate's record is kept; `None` keeps it forever.
    pub certificate_retention: Option<Duration>,
    /// Where the CA keeps its state.
    pub store: StoreConfig,
    /// The key-encryption key file (PostgreSQL: the CA's keys are sealed under it).
    pub key_encryption_key_file: Option<PathBuf>,
}

/// A configuration problem, as one line naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn ttl(name: &str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => duration::parse(&text).map_err(|e| ConfigError(format!("{name}: {e}"))),
    }
}

impl Config {
    /// Defaults for a CA in `data_dir`: what tests and the quickstart use.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        Self::build(FileConfig {
            data_dir: Some(data_dir),
            ..FileConfig::default()
        })
        .expect("the built-in defaults are valid")
    }

    /// Reads the file named by the flags (if any), applies the flags and the environment
    /// over it, validates.
    pub fn load(flags: Flags) -> Result<Self, ConfigError> {
        Self::load_with_env(flags, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment variables clap does not read (those a flag
    /// must not carry) looked up through `env`.
    fn load_with_env(
        flags: Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.message())))?
            }
            None => FileConfig::default(),
        };
        macro_rules! over {
            ($($field:ident),*) => { $( if flags.$field.is_some() { file.$field = flags.$field; } )* };
        }
        over!(
            trust_domain,
            listen,
            http_listen,
            bundle_endpoint_listen,
            data_dir,
            import_dir,
            default_ttl,
            max_ttl,
            log_format
        );
        if flags.certificate_retention.is_some() {
            file.store
                .get_or_insert_with(StoreFile::default)
                .certificate_retention = flags.certificate_retention;
        }
        let store = StoreInputs {
            url_flag: flags.store,
            url_env: env("TRELLIS_STORE").filter(|v| !v.is_empty()),
            password_env: env("TRELLIS_STORE_PASSWORD"),
            password_file: flags.store_password_file,
            ca_file: flags.store_ca_file,
            key_encryption_key_file: flags.key_encryption_key_file,
        };
        let limits = file.limits.get_or_insert_with(LimitsFile::default);
        macro_rules! over_limits {
            ($($field:ident),*) => { $( if flags.$field.is_some() { limits.$field = flags.$field; } )* };
        }
        over_limits!(
            max_concurrent_issuance,
            busy_retry_after,
            renewals_per_minute,
            renewal_burst,
            bootstraps_per_minute,
            bootstrap_burst
        );
        Self::build_with(file, store)
    }

    /// Validates a file configuration, filling defaults.
    pub fn build(file: FileConfig) -> Result<Self, ConfigError> {
        Self::build_with(file, StoreInputs::default())
    }

    fn build_with(file: FileConfig, store: StoreInputs) -> Result<Self, ConfigError> {
        let key_encryption_key_file = store.key_encryption_key_file.clone().or_else(|| {
            file.store
                .as_ref()
                .and_then(|f| f.key_encryption_key_file.clone())
        });
        let store = store.build(file.store.as_ref())?;
        let td_text = file.trust_domain.unwrap_or_else(|| "cluster.local".into());
        let trust_domain = TrustDomain::new(&td_text)
            .map_err(|e| ConfigError(format!("trust_domain {td_text:?}: {e}")))?;
        let default_ttl = ttl("default_ttl", file.default_ttl, Duration::from_secs(3600))?;
        let max_ttl = ttl("max_ttl", file.max_ttl, MAX_TTL)?;
        for (name, value) in [("default_ttl", default_ttl), ("max_ttl", max_ttl)] {
            if !(MIN_TTL..=MAX_TTL).contains(&value) {
                return Err(ConfigError(format!(
                    "{name} is {}; it must be between {} and {}",
                    duration::format(value),
                    duration::format(MIN_TTL),
                    duration::format(MAX_TTL)
                )));
            }
        }
        if default_ttl > max_ttl {
            return Err(ConfigError(format!(
                "default_ttl ({}) is longer than max_ttl ({})",
                duration::format(default_ttl),
                duration::format(max_ttl)
            )));
        }
        let day = Duration::from_secs(86_400);
        let intermediate_ttl = ttl("intermediate_ttl", file.intermediate_ttl, 365 * day)?;
        let root_ttl = ttl("root_ttl", file.root_ttl, 10 * 365 * day)?;
        let admin_ttl = ttl(
            "admin_ttl",
            file.admin_ttl,
            trellis_identity::ca_files::ADMIN_LIFETIME,
        )?;
        if intermediate_ttl < 2 * MAX_TTL || root_ttl < intermediate_ttl {
            return Err(ConfigError(
                "intermediate_ttl must be at least 48h and root_ttl at least intermediate_ttl"
                    .into(),
            ));
        }
        let json_logs = match file.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError(format!(
                    "log_format {other:?}: expected \"text\" or \"json\""
                )));
            }
        };
        let server_names = file
            .server_names
            .unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into()]);
        for name in &server_names {
            let ok = name.parse::<std::net::IpAddr>().is_ok()
                || (!name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    }));
            if !ok {
                return Err(ConfigError(format!(
                    "server_names entry {name:?} is neither a DNS name nor an IP address"
                )));
            }
        }
        Ok(Self {
            trust_domain,
            listen: file
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
            http_listen: file.http_listen,
            bundle_endpoint_listen: file.bundle_endpoint_listen,
            bundle_refresh_hint: ttl(
                "bundle_refresh_hint",
                file.bundle_refresh_hint,
                crate::bundle_endpoint::DEFAULT_REFRESH_HINT,
            )?,
            data_dir: file
                .data_dir
                .unwrap_or_else(|| PathBuf::from("trellis-data/ca")),
            import_dir: file.import_dir,
            server_names,
            default_ttl,
            max_ttl,
            intermediate_ttl,
            root_ttl,
            admin_ttl,
            json_logs,
            shutdown_grace: ttl(
                "shutdown_grace",
                file.shutdown_grace,
                Duration::from_secs(10),
            )?,
            kubernetes: file.kubernetes.map(KubernetesFile::build).transpose()?,
            limits: file.limits.unwrap_or_default().build()?,
            connections: file.connections.unwrap_or_default().build()?,
            audit: file.audit.unwrap_or_default().build()?,
            jwt_svid: file.jwt_svid.unwrap_or_default().build()?,
            store,
            key_encryption_key_file,
            certificate_retention: match file.store.and_then(|s| s.certificate_retention) {
                None => Some(DEFAULT_CERTIFICATE_RETENTION),
                Some(text) if text.trim() == "0" => None,
                Some(text) => match duration::parse(&text) {
                    Ok(d) if d.is_zero() => None,
                    Ok(d) => Some(d),
                    Err(e) => {
                        return Err(ConfigError(format!(
                            "store.certificate_retention: {e} (e.g. \"72h\", or \"0\" to keep \
                             every record)"
                        )));
                    }
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(toml_text: &str) -> Result<Config, ConfigError> {
        let parsed: FileConfig =
            toml::from_str(toml_text).map_err(|e| ConfigError(e.message().to_owned()))?;
        Config::build(parsed)
    }

    #[test]
    fn every_flag_overrides_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.toml");
        std::fs::write(
            &path,
            "http_listen = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n",
        )
        .expect("write");
        let flags = Flags::parse_from([
            "trellis-ca",
            "--config",
            path.to_str().expect("utf-8"),
            "--http-listen",
            "127.0.0.1:8080",
            "--listen",
            "127.0.0.1:8443",
            "--max-concurrent-issuance",
            "7",
            "--renewal-burst",
            "3",
            "--certificate-retention",
            "0",
        ]);
        let config = Config::load(flags).expect("valid");
        assert_eq!(config.certificate_retention, None, "0 keeps everything");
        assert_eq!(config.limits.max_concurrent_issuance, 7);
        assert_eq!(config.limits.renewals.burst, 3);
        assert_eq!(
            config.http_listen,
            Some("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(config.listen, "127.0.0.1:8443".parse().expect("addr"));
    }

    #[test]
    fn the_store_is_sled_by_default_and_postgres_from_a_flag_the_environment_or_the_file() {
        let load = |args: &[&str], env: &[(&str, &str)]| {
            let mut argv = vec!["trellis-ca"];
            argv.extend_from_slice(args);
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Config::load_with_env(Flags::parse_from(argv), move |name| {
                env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        assert!(matches!(load(&[], &[]).unwrap().store, StoreConfig::Sled));
        let name = |config: Config| match config.store {
            StoreConfig::Postgres(pg) => pg.name().to_owned(),
            StoreConfig::Sled => "sled".into(),
        };
        let flag = load(&["--store", "postgres://ca@db:5433/trellis"], &[]).unwrap();
        assert_eq!(name(flag), "ca@db:5433/trellis");
        let env = load(&[], &[("TRELLIS_STORE", "postgres://ca:pw@db/trellis")]).unwrap();
        assert_eq!(
            name(env),
            "ca@db:5432/trellis",
            "a password may come from the environment"
        );
        let over = load(
            &["--store", "sled"],
            &[("TRELLIS_STORE", "postgres://ca@db/trellis")],
        )
        .unwrap();
        assert_eq!(name(over), "sled", "the flag wins over the environment");

        let refused = load(&["--store", "postgres://ca:s3cret@db/trellis"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("command line") && refused.contains("--store-password-file"),
            "{refused}"
        );
        assert!(!refused.contains("s3cret"), "{refused}");
        let in_file = file("[store]\nurl = \"postgres://ca:s3cret@db/trellis\"")
            .unwrap_err()
            .to_string();
        assert!(in_file.contains("configuration file"), "{in_file}");
        let from_file = file("[store]\nurl = \"postgres://ca@db/trellis\"").unwrap();
        let shown = format!("{from_file:#?}");
        assert!(shown.contains("ca@db:5432/trellis"), "{shown}");

        // The password from the environment never shows in what --check-config prints.
        let with_password = load(
            &["--store", "postgres://ca@db/trellis"],
            &[("TRELLIS_STORE_PASSWORD", "hunter2-secret")],
        )
        .unwrap();
        let shown = format!("{with_password:?} {with_password:#?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
    }

    #[test]
    fn defaults_are_valid() {
        let config = file("").expect("defaults");
        assert_eq!(config.trust_domain.as_str(), "cluster.local");
        assert_eq!(config.default_ttl, Duration::from_secs(3600));
        assert_eq!(
            config.certificate_retention,
            Some(DEFAULT_CERTIFICATE_RETENTION)
        );
        let kept = file("[store]\ncertificate_retention = \"36h\"").expect("valid");
        assert_eq!(
            kept.certificate_retention,
            Some(Duration::from_secs(36 * 3600))
        );
    }

    #[test]
    fn each_bad_value_is_named() {
        let cases = [
            ("trust_domain = \"Bad Domain\"", "trust_domain"),
            ("default_ttl = \"10\"", "default_ttl"),
            ("max_ttl = \"48h\"", "max_ttl"),
            (
                "default_ttl = \"2h\"\nmax_ttl = \"1h\"",
                "longer than max_ttl",
            ),
            ("log_format = \"xml\"", "log_format"),
            (
                "[store]\ncertificate_retention = \"3 days\"",
                "store.certificate_retention",
            ),
            ("server_names = [\"bad name\"]", "server_names"),
            ("trust_domian = \"typo.local\"", "unknown field"),
            (
                "[kubernetes]\njwks_file = \"k.json\"",
                "kubernetes.issuer is required",
            ),
            ("[kubernetes]\nissuer = \"i\"", "jwks_url or jwks_file"),
            (
                "[kubernetes]\nissuer = \"i\"\njwks_url = \"http://x/\"\njwks_ca_file = \"c\"",
                "not an https:// URL",
            ),
            (
                "[kubernetes]\nissuer = \"i\"\njwks_url = \"https://x/\"",
                "jwks_ca_file is required",
            ),
            (
                "[kubernetes]\nissuer = \"i\"\njwks_file = \"k\"\nclock_skew = \"1h\"",
                "clock_skew",
            ),
            (
                "[kubernetes]\nissuer = \"i\"\njwks_file = \"k\"\nallowed_service_accounts = [\"web\"]",
                "NAMESPACE/NAME",
            ),
            ("[kubernetes]\nisuer = \"i\"", "unknown field"),
            (
                "[limits]\nmax_concurrent_issuance = 0",
                "limits.max_concurrent_issuance",
            ),
            (
                "[limits]\nbusy_retry_after = \"1h\"",
                "limits.busy_retry_after",
            ),
            ("[limits]\nrenewals_per_hour = 5", "unknown field"),
            ("[connections]\nhttp_max = 0", "connections.http_max is 0"),
            (
                "[connections]\nhttp_header_timeout = \"1h\"",
                "connections.http_header_timeout",
            ),
            ("[connections]\nmax_conns = 5", "unknown field"),
        ];
        for (text, expected) in cases {
            let err = file(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text:?} gave {err:?}");
        }
    }
}
