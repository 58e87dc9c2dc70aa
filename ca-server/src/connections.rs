//! The `[connections]` table: how many connections each of the CA's listeners may hold, and
//! how long a connection may take to become useful. The bounds are sized from the soft
//! open-file limit (read after `main` raised it), so that a flood on one listener cannot
//! take the descriptors the other listener, the store and outbound connections need.
//!
//! The split of `n` descriptors, unless set explicitly:
//! - a reserve of n/8 (at least 256) for everything that is not an accepted connection: the
//!   sled database, the data directory, the JWKS fetches, the runtime;
//! - the HTTP endpoint (CRLs, metrics): 1/8 of the rest, at most 1,024;
//! - the gRPC port: everything else (one descriptor per connection, handshakes included).
//!
//! With 20,000 descriptors: reserve 2,500, HTTP 1,024, gRPC 16,476.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use trellis_identity::duration;
use trellis_proto::listen::ConnBudget;

use crate::config::ConfigError;

/// `[connections]` as written in the TOML file (every key optional).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsFile {
    pub grpc_max: Option<usize>,
    pub grpc_max_per_source: Option<usize>,
    pub max_handshakes: Option<usize>,
    pub max_handshakes_per_source: Option<usize>,
    pub handshake_timeout: Option<String>,
    pub first_request_timeout: Option<String>,
    pub http_max: Option<usize>,
    pub http_max_per_source: Option<usize>,
    pub http_header_timeout: Option<String>,
}

/// Validated connection bounds (see `deploy/ca.example.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionsConfig {
    /// Open gRPC connections; `None`: sized from the open-file limit.
    pub grpc_max: Option<usize>,
    /// Open gRPC connections from one source address (IPv6 per /64).
    pub grpc_max_per_source: usize,
    /// TLS handshakes in progress at once on the gRPC port.
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from one source address.
    pub max_handshakes_per_source: usize,
    /// A TLS handshake must finish within this of accept.
    pub handshake_timeout: Duration,
    /// A gRPC connection must send its first request within this of its handshake.
    pub first_request_timeout: Duration,
    /// Open HTTP connections; `None`: sized from the open-file limit.
    pub http_max: Option<usize>,
    /// Open HTTP connections from one source address.
    pub http_max_per_source: usize,
    /// An HTTP request head must arrive within this (after accept, and between requests).
    pub http_header_timeout: Duration,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsFile::default()
            .build()
            .expect("the built-in connection bounds are valid")
    }
}

const MAX_COUNT: usize = 10_000_000;
const MIN_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

impl ConnectionsFile {
    /// Fills defaults and checks ranges; errors name the setting.
    pub fn build(self) -> Result<ConnectionsConfig, ConfigError> {
        let count = |name: &str, value: Option<usize>, default: usize| {
            let v = value.unwrap_or(default);
            if v == 0 || v > MAX_COUNT {
                Err(ConfigError(format!(
                    "connections.{name} is {v}; it must be between 1 and {MAX_COUNT}"
                )))
            } else {
                Ok(v)
            }
        };
        let timeout = |name: &str, value: Option<String>, default: Duration| {
            let v = match value {
                None => default,
                Some(text) => duration::parse(&text)
                    .map_err(|e| ConfigError(format!("connections.{name}: {e}")))?,
            };
            if (MIN_TIMEOUT..=MAX_TIMEOUT).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError(format!(
                    "connections.{name} is {}; it must be between {} and {}",
                    duration::format(v),
                    duration::format(MIN_TIMEOUT),
                    duration::format(MAX_TIMEOUT)
                )))
            }
        };
        let optional = |name: &str, value: Option<usize>| match value {
            None => Ok(None),
            Some(v) => count(name, Some(v), v).map(Some),
        };
        Ok(ConnectionsConfig {
            grpc_max: optional("grpc_max", self.grpc_max)?,
            grpc_max_per_source: count("grpc_max_per_source", self.grpc_max_per_source, 256)?,
            max_handshakes: count("max_handshakes", self.max_handshakes, 256)?,
            // Half the total: a CA restart makes every client of one address (a node's
            // SNAT, a test on loopback) handshake at once, and a slot over the bound is
            // closed, not queued.
            max_handshakes_per_source: count(
                "max_handshakes_per_source",
                self.max_handshakes_per_source,
                128,
            )?,
            handshake_timeout: timeout(
                "handshake_timeout",
                self.handshake_timeout,
                Duration::from_secs(10),
            )?,
            first_request_timeout: timeout(
                "first_request_timeout",
                self.first_request_timeout,
                Duration::from_secs(10),
            )?,
            http_max: optional("http_max", self.http_max)?,
            http_max_per_source: count("http_max_per_source", self.http_max_per_source, 16)?,
            http_header_timeout: timeout(
                "http_header_timeout",
                self.http_header_timeout,
                Duration::from_secs(10),
            )?,
        })
    }
}

/// The bounded connections of the CA's listeners, for the accept loops and `/metrics`.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// The gRPC port: every connection, from accept to close.
    pub grpc: Arc<ConnBudget>,
    /// The gRPC port's TLS handshakes in progress.
    pub grpc_handshakes: Arc<ConnBudget>,
    /// The HTTP endpoint (CRLs, metrics).
    pub http: Arc<ConnBudget>,
}

/// Descriptors kept for everything but accepted connections: n/8, at least this.
const RESERVE_MIN: u64 = 256;
/// The HTTP endpoint's default share is at most this many connections.
const HTTP_DEFAULT_MAX: u64 = 1024;

/// `(grpc, http)` connection bounds for `open_files` descriptors (see the module docs).
/// Explicit settings are kept unless together they exceed what is left after the reserve;
/// then they are lowered to fit.
pub fn split(open_files: u64, config: &ConnectionsConfig) -> (usize, usize) {
    let reserve = (open_files / 8).max(RESERVE_MIN);
    let available = open_files.saturating_sub(reserve).max(2);
    let http = config
        .http_max
        .map_or((available / 8).clamp(1, HTTP_DEFAULT_MAX), |n| n as u64)
        .min(available / 2)
        .max(1);
    let grpc = config
        .grpc_max
        .map_or(available - http, |n| n as u64)
        .min(available - http)
        .max(1);
    (
        usize::try_from(grpc).unwrap_or(usize::MAX),
        usize::try_from(http).unwrap_or(usize::MAX),
    )
}

impl Listeners {
    /// Bounds sized from the current soft open-file limit.
    pub fn new(config: &ConnectionsConfig) -> Self {
        let open_files = match rlimit::Resource::NOFILE.get() {
            Ok((soft, _)) => soft,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
                1024
            }
        };
        let (grpc, http) = split(open_files, config);
        if config.grpc_max.is_some_and(|n| n > grpc) || config.http_max.is_some_and(|n| n > http) {
            tracing::warn!(
                open_files,
                grpc_max = grpc,
                http_max = http,
                "connections.grpc_max/http_max lowered to fit the open-file limit"
            );
        }
        tracing::info!(
            open_files,
            grpc_max = grpc,
            http_max = http,
            max_handshakes = config.max_handshakes,
            "connection bounds"
        );
        Self {
            grpc: ConnBudget::new("grpc", grpc, config.grpc_max_per_source),
            grpc_handshakes: ConnBudget::new(
                "grpc_handshakes",
                config.max_handshakes.min(grpc),
                config.max_handshakes_per_source,
            ),
            http: ConnBudget::new("http", http, config.http_max_per_source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_leaves_a_reserve_and_stays_under_the_limit() {
        let defaults = ConnectionsConfig::default();
        assert_eq!(split(20_000, &defaults), (16_476, 1024));
        assert_eq!(split(1024, &defaults), (672, 96));
        for n in [0, 1, 64, 300, 1024, 4096, 20_000, 1 << 20] {
            let (grpc, http) = split(n, &defaults);
            assert!(grpc >= 1 && http >= 1, "{n}");
            if n >= 2 * RESERVE_MIN {
                assert!(
                    (grpc + http) as u64 + RESERVE_MIN <= n,
                    "{n}: {grpc} + {http}"
                );
            }
        }
    }

    #[test]
    fn explicit_bounds_are_kept_or_lowered_to_fit() {
        let config = ConnectionsConfig {
            grpc_max: Some(100),
            http_max: Some(4),
            ..ConnectionsConfig::default()
        };
        assert_eq!(split(20_000, &config), (100, 4));
        let config = ConnectionsConfig {
            grpc_max: Some(1_000_000),
            http_max: Some(1_000_000),
            ..ConnectionsConfig::default()
        };
        assert_eq!(split(20_000, &config), (8750, 8750));
    }

    #[test]
    fn bad_values_are_named() {
        let e = ConnectionsFile {
            http_max_per_source: Some(0),
            ..ConnectionsFile::default()
        }
        .build()
        .expect_err("zero");
        assert!(
            e.to_string().contains("connections.http_max_per_source"),
            "{e}"
        );
        let e = ConnectionsFile {
            first_request_timeout: Some("1h".into()),
            ..ConnectionsFile::default()
        }
        .build()
        .expect_err("too long");
        assert!(
            e.to_string().contains("connections.first_request_timeout"),
            "{e}"
        );
    }
}
