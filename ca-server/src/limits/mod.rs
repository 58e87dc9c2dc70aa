//! Overload protection for issuance: a bound on issuances in progress, and per-client rate
//! limits, decided before any cryptography so that a refusal is cheap.
//!
//! - **Concurrency**: at most `max_concurrent_issuance` Certify and admin IssueCertificate
//!   calls run at once; more are refused at once (no queue to grow), with the configured
//!   `busy_retry_after` as hint. The CA's own serving certificate is not limited.
//! - **Renewals, per identity**: the client's certificate from the TLS handshake (the
//!   handshake already proved it holds the key) is looked up by serial in the store; if the
//!   stored certificate is byte-for-byte the one presented, the request is charged to that
//!   record's SPIFFE ID. No signature is checked for this, and a self-signed certificate
//!   naming someone else's ID cannot use up their allowance: it matches no record.
//! - **Bootstraps, and renewals with a certificate this CA has no record of, per source
//!   address** (IPv6 by /64). Per join token would be pointless: a token works once, and
//!   someone guessing tokens sends a new one each time.
//! - **Admin issuance**: concurrency only; admins are few and authenticated.
//!
//! A refusal is `RESOURCE_EXHAUSTED` with the delay in three forms: a `google.rpc.RetryInfo`
//! status detail (what Trellis sidecars read), the `grpc-retry-pushback-ms` trailer (what
//! gRPC retry policies read), and the message, for people.

mod bucket;
pub mod config;
pub mod metrics;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use trellis_identity::duration;

pub use bucket::Rate;
use bucket::{Buckets, Empty};
pub use config::{LimitsConfig, LimitsFile};

use crate::peer::PeerChain;
use crate::recent::RecentCertificates;
use crate::store::{CertRecord, Store};

/// Whom an issuance request is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// A renewal with a certificate this CA issued: its SPIFFE ID.
    Identity(String),
    /// A bootstrap, or a renewal with a certificate the CA has no record of.
    Source(Option<IpAddr>),
    /// An authenticated administrator (concurrency limit only).
    Admin,
}

/// The trailer gRPC retry policies read (gRFC A6), in milliseconds.
pub const PUSHBACK_TRAILER: &str = "grpc-retry-pushback-ms";

/// What a refused client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What happened, for the message.
    pub what: String,
    /// When to try again.
    pub retry_after: Duration,
}

impl Refusal {
    /// What the client reads: what happened, that nothing was done, and when to retry.
    pub fn message(&self) -> String {
        format!(
            "{}; nothing was issued, retry in {} (keep using your current certificate meanwhile)",
            self.what,
            human(self.retry_after)
        )
    }
}

/// A delay for people: milliseconds under a second, else seconds with one decimal.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(600) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        duration::format(d)
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct LimitCounters {
    pub admitted: AtomicU64,
    pub refused_busy: AtomicU64,
    pub refused_renewal_rate: AtomicU64,
    pub refused_bootstrap_rate: AtomicU64,
}

/// The limiter shared by every issuance handler.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    in_flight: Arc<Semaphore>,
    renewals: Buckets<String>,
    bootstraps: Buckets<Option<IpAddr>>,
    pub counters: LimitCounters,
}

/// Held while an admitted issuance runs; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(config.max_concurrent_issuance as usize)),
            renewals: Buckets::new(config.renewals),
            bootstraps: Buckets::new(config.bootstraps),
            counters: LimitCounters::default(),
            config,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Clients with a rate-limit bucket right now: (identities, source addresses).
    pub fn tracked_clients(&self) -> (usize, usize) {
        (self.renewals.tracked(), self.bootstraps.tracked())
    }

    /// Issuances running now.
    pub fn in_flight(&self) -> usize {
        self.config.max_concurrent_issuance as usize - self.in_flight.available_permits()
    }

    /// Admits one issuance for `key` at `now`, or refuses it with a retry hint. The slot is
    /// checked first, so a request refused because the CA is busy costs the client nothing
    /// from its own allowance.
    pub fn admit(&self, key: &ClientKey, now: SystemTime) -> Result<Permit, Refusal> {
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            self.counters.refused_busy.fetch_add(1, Relaxed);
            Refusal {
                what: format!(
                    "the CA is busy: {} issuances are in progress, its limit \
                     (limits.max_concurrent_issuance)",
                    self.config.max_concurrent_issuance
                ),
                retry_after: self.config.busy_retry_after,
            }
        })?;
        let (taken, counter, rate, whom) = match key {
            ClientKey::Admin => (Ok(()), None, None, String::new()),
            ClientKey::Identity(id) => (
                self.renewals.take(id, now),
                Some(&self.counters.refused_renewal_rate),
                Some((self.renewals.rate(), "renewals_per_minute", "renewal_burst")),
                format!("renewals for {id}"),
            ),
            ClientKey::Source(addr) => (
                self.bootstraps.take(addr, now),
                Some(&self.counters.refused_bootstrap_rate),
                Some((
                    self.bootstraps.rate(),
                    "bootstraps_per_minute",
                    "bootstrap_burst",
                )),
                match addr {
                    Some(a) => format!("requests without a known certificate from {a}"),
                    None => "requests without a known certificate".into(),
                },
            ),
        };
        match taken {
            Ok(()) => {
                self.counters.admitted.fetch_add(1, Relaxed);
                Ok(Permit(permit))
            }
            Err(empty) => {
                if let Some(counter) = counter {
                    counter.fetch_add(1, Relaxed);
                }
                let (rate, per_minute, burst) = rate.expect("every rate-limited key has a rate");
                Err(match empty {
                    Empty::RetryAfter(retry_after) => Refusal {
                        what: format!(
                            "too many {whom}: the limit is {} per minute after a burst of {} \
                             (limits.{per_minute}, limits.{burst})",
                            rate.per_minute, rate.burst
                        ),
                        retry_after,
                    },
                    Empty::TooManyClients => Refusal {
                        what: "the CA is tracking too many distinct clients at once".into(),
                        retry_after: self.config.busy_retry_after,
                    },
                })
            }
        }
    }
}

/// The key for a Certify call: the identity of a certificate this CA issued (for a
/// renewal), else the source address. Reads the record from `recent`, else the store;
/// checks no signature. Also returns the CA's record of the presented leaf when it matches
/// byte for byte, so the renewal (after verifying the chain) need not read it again.
pub(crate) fn certify_key(
    store: &dyn Store,
    recent: &RecentCertificates,
    bootstrap: bool,
    chain: &PeerChain,
    remote: Option<SocketAddr>,
) -> (ClientKey, Option<CertRecord>) {
    let source = ClientKey::Source(remote.map(|a| source_of(a.ip())));
    if bootstrap {
        return (source, None);
    }
    let (Some(leaf), Some(serial)) = (chain.certs().first(), chain.leaf_serial()) else {
        return (source, None);
    };
    if let Some(record) = recent.find(serial, leaf.as_ref()) {
        return (ClientKey::Identity(record.spiffe_id.clone()), Some(record));
    }
    match store.certificate(serial) {
        Ok(Some((record, der))) if der == leaf.as_ref() => {
            recent.remember(serial, &der, &record);
            (ClientKey::Identity(record.spiffe_id.clone()), Some(record))
        }
        _ => (source, None),
    }
}

/// IPv4 addresses as they are; IPv6 by /64, the block one host usually has to itself.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32, burst: u32) -> Limits {
        Limits::new(LimitsConfig {
            max_concurrent_issuance: max,
            busy_retry_after: Duration::from_millis(1500),
            renewals: Rate {
                per_minute: 60,
                burst,
            },
            bootstraps: Rate {
                per_minute: 6,
                burst,
            },
        })
    }

    #[test]
    fn busy_is_refused_with_the_configured_hint_and_frees_on_drop() {
        let l = limits(1, 10);
        let now = SystemTime::UNIX_EPOCH;
        let held = l.admit(&ClientKey::Admin, now).expect("first");
        let refusal = l.admit(&ClientKey::Admin, now).expect_err("busy");
        assert_eq!(refusal.retry_after, Duration::from_millis(1500));
        assert!(refusal.what.contains("limits.max_concurrent_issuance"));
        assert_eq!(l.in_flight(), 1);
        drop(held);
        assert!(l.admit(&ClientKey::Admin, now).is_ok());
        assert_eq!(l.counters.refused_busy.load(Relaxed), 1);
    }

    #[test]
    fn each_identity_and_source_has_its_own_allowance() {
        let l = limits(100, 1);
        let now = SystemTime::UNIX_EPOCH;
        let web = ClientKey::Identity("spiffe://td/web".into());
        let api = ClientKey::Identity("spiffe://td/api".into());
        assert!(l.admit(&web, now).is_ok());
        let refused = l.admit(&web, now).expect_err("rate");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(l.admit(&api, now).is_ok());
        let here = ClientKey::Source(Some("10.0.0.1".parse().expect("ip")));
        assert!(l.admit(&here, now).is_ok());
        let refused = l.admit(&here, now).expect_err("rate");
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        assert!(refused.what.contains("from 10.0.0.1"));
        assert_eq!(l.counters.refused_renewal_rate.load(Relaxed), 1);
        assert_eq!(l.counters.refused_bootstrap_rate.load(Relaxed), 1);
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let a = source_of("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = source_of("2001:db8:1:2:bbbb::9".parse().expect("ip"));
        assert_eq!(a, b);
        let mapped = source_of("::ffff:10.1.2.3".parse().expect("ip"));
        assert_eq!(mapped, "10.1.2.3".parse::<IpAddr>().expect("ip"));
    }
}
