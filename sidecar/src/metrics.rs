//! Counters and gauges for `/metrics` (written by `trellis_proto::metrics`).
//! Hot-path counters (bytes, connections) are atomics; rarer labelled events use a map.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use trellis_proto::metrics::{Families, Histogram, Labels, Source, label};

/// Which way a connection goes through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound = 0,
    Outbound = 1,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Per-direction connection and byte counters.
#[derive(Debug, Default)]
pub struct DirectionCounters {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub active: AtomicI64,
    /// Bytes from the peer (remote sidecar or local client) towards the other side.
    pub bytes_received: AtomicU64,
    /// Bytes sent to the peer.
    pub bytes_sent: AtomicU64,
}

/// The CA's state streams a sidecar follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStream {
    TrustBundle = 0,
    Revocations = 1,
}

impl CaStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrustBundle => "trust_bundle",
            Self::Revocations => "revocations",
        }
    }

    /// Records whether the stream is connected now.
    pub fn set(self, metrics: &Metrics, connected: bool) {
        metrics.ca_streams[self as usize].store(u64::from(connected), Relaxed);
    }
}

/// Every metric the sidecar exports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub directions: [DirectionCounters; 2],
    /// (direction, result, reason) → count: "ok", or "failed" with a reason such as
    /// "no_client_cert", "unknown_issuer", "expired", "timeout", "wrong_identity", "no_alpn".
    handshakes: Mutex<BTreeMap<(&'static str, &'static str, String), u64>>,
    /// (direction, key-exchange group, cipher suite) → established TLS sessions.
    tls_sessions: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    /// Connections refused by policy, by direction.
    pub policy_denials: [AtomicU64; 2],
    /// Plaintext connections accepted in permissive mode.
    pub plaintext_accepted: AtomicU64,
    /// Renewal attempts by result ("ok", "error").
    renewals: Mutex<BTreeMap<&'static str, u64>>,
    /// Unix seconds: current certificate NotAfter, last successful renewal (0 = never).
    pub cert_not_after: AtomicU64,
    pub last_renewal: AtomicU64,
    pub bundle_version: AtomicU64,
    pub bundle_roots: AtomicU64,
    /// Federated trust domains whose bundles came with the own bundle.
    pub federated_trust_domains: AtomicU64,
    /// Unix seconds: NotAfter of the bundle's longest-lived root (when the bundle would
    /// trust nothing), 0 before the first bundle.
    pub bundle_not_after: AtomicU64,
    /// 1 while the CA's stream is connected and has sent its state, by [`CaStream`].
    pub ca_streams: [AtomicU64; 2],
    /// Live connections closed because the peer's certificate was revoked.
    pub revoked_closed: AtomicU64,
    /// Live connections closed because the peer's trust domain is no longer federated.
    pub untrusted_domain_closed: AtomicU64,
    /// Retry hints from the CA (RESOURCE_EXHAUSTED) waited out in full before retrying.
    pub ca_retry_hints_honoured: AtomicU64,
    /// Without capture: app ports listening beyond loopback, which bypass the sidecar.
    pub app_ports_exposed: AtomicU64,
    /// Why the last attempt to get the trust bundle or a certificate failed; `/ready` says
    /// it while the sidecar is not ready, so the startup probe's event names the cause.
    pub last_failure: Mutex<Option<String>>,
    /// How long successful TLS handshakes took, by direction.
    pub handshake_seconds: [Histogram; 2],
    /// How long issuance and renewal attempts at the CA took, whatever their result.
    pub renewal_seconds: Histogram,
}

impl Metrics {
    /// These metrics alone in the OpenMetrics format (`/metrics` adds the admin
    /// listener's), for tests and diagnostics.
    pub fn render(self: &std::sync::Arc<Self>) -> String {
        trellis_proto::metrics::render(self)
    }

    pub fn dir(&self, d: Direction) -> &DirectionCounters {
        &self.directions[d as usize]
    }

    /// Counts a finished handshake.
    pub fn handshake(&self, d: Direction, ok: bool, reason: &str) {
        let key = (
            d.as_str(),
            if ok { "ok" } else { "failed" },
            reason.to_owned(),
        );
        *self
            .handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    /// Handshakes counted so far for (direction, result, reason).
    pub fn handshake_count(&self, d: Direction, ok: bool, reason: &str) -> u64 {
        let key = (
            d.as_str(),
            if ok { "ok" } else { "failed" },
            reason.to_owned(),
        );
        self.handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// Counts an established TLS session by its key-exchange group (an IANA name from
    /// [`trellis_identity::tls::kx_group_name`]) and cipher suite (rustls's name): both
    /// fixed sets, so the label values are bounded.
    pub fn tls_session(&self, d: Direction, group: &'static str, suite: &'static str) {
        *self
            .tls_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((d.as_str(), group, suite))
            .or_default() += 1;
    }

    /// TLS sessions counted so far for (direction, group).
    pub fn tls_sessions(&self, d: Direction, group: &str) -> u64 {
        self.tls_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((dir, g, _), _)| *dir == d.as_str() && *g == group)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Remembers why getting a certificate failed, for `/ready`.
    pub fn note_failure(&self, why: String) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Forgets the last failure once a certificate was obtained.
    pub fn clear_failure(&self) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why the last attempt to get a certificate failed, if one did.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts a renewal attempt.
    pub fn renewal(&self, ok: bool) {
        self.renewal_result(if ok { "ok" } else { "error" });
    }

    /// Counts a renewal attempt the CA refused for overload (RESOURCE_EXHAUSTED).
    pub fn renewal_throttled(&self) {
        self.renewal_result("throttled");
    }

    fn renewal_result(&self, result: &'static str) {
        *self
            .renewals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(result)
            .or_default() += 1;
    }

    /// Renewal attempts counted so far with `result` ("ok", "error", "throttled").
    pub fn renewals(&self, result: &str) -> u64 {
        self.renewals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(result)
            .copied()
            .unwrap_or(0)
    }
}

impl Source for Metrics {
    fn collect(&self, f: &mut Families<'_>) -> fmt::Result {
        let dirs = [Direction::Inbound, Direction::Outbound];
        let per_direction = |value: &dyn Fn(Direction) -> u64| -> Vec<(Labels, u64)> {
            dirs.iter()
                .map(|d| (label("direction", d.as_str()), value(*d)))
                .collect()
        };
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        f.counter(
            "trellis_sidecar_connections_opened_total",
            "Connections accepted.",
            per_direction(&|d| self.dir(d).opened.load(Relaxed)),
        )?;
        f.counter(
            "trellis_sidecar_connections_closed_total",
            "Connections finished.",
            per_direction(&|d| self.dir(d).closed.load(Relaxed)),
        )?;
        f.gauge(
            "trellis_sidecar_connections_active",
            "Connections open now.",
            dirs.map(|d| {
                (
                    label("direction", d.as_str()),
                    self.dir(d).active.load(Relaxed),
                )
            }),
        )?;
        f.counter(
            "trellis_sidecar_received_bytes_total",
            "Bytes received from the peer.",
            per_direction(&|d| self.dir(d).bytes_received.load(Relaxed)),
        )?;
        f.counter(
            "trellis_sidecar_sent_bytes_total",
            "Bytes sent to the peer.",
            per_direction(&|d| self.dir(d).bytes_sent.load(Relaxed)),
        )?;
        f.counter(
            "trellis_sidecar_policy_denials_total",
            "Connections refused by identity policy.",
            per_direction(&|d| self.policy_denials[d as usize].load(Relaxed)),
        )?;
        let handshakes: Vec<(Labels, u64)> = self
            .handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((d, result, reason), n)| {
                (
                    vec![
                        ("direction", (*d).to_owned()),
                        ("result", (*result).to_owned()),
                        ("reason", reason.clone()),
                    ],
                    *n,
                )
            })
            .collect();
        f.counter(
            "trellis_sidecar_handshakes_total",
            "TLS handshakes by result and reason.",
            handshakes,
        )?;
        let sessions: Vec<(Labels, u64)> = self
            .tls_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((d, group, suite), n)| {
                (
                    vec![
                        ("direction", (*d).to_owned()),
                        ("group", (*group).to_owned()),
                        ("cipher_suite", (*suite).to_owned()),
                    ],
                    *n,
                )
            })
            .collect();
        f.counter(
            "trellis_sidecar_tls_sessions_total",
            "Established TLS sessions by key-exchange group (X25519MLKEM768: hybrid post-quantum) and cipher suite.",
            sessions,
        )?;
        let one = |v: &AtomicU64| [(Labels::new(), v.load(Relaxed))];
        f.counter(
            "trellis_sidecar_plaintext_accepted_total",
            "Plaintext connections accepted in permissive mode.",
            one(&self.plaintext_accepted),
        )?;
        let gauge = |v: &AtomicU64| [(Labels::new(), as_i64(v.load(Relaxed)))];
        f.gauge(
            "trellis_sidecar_app_ports_exposed",
            "Ports of the pod listening beyond loopback while inbound capture is off: reachable without mTLS.",
            gauge(&self.app_ports_exposed),
        )?;
        f.counter(
            "trellis_sidecar_revoked_connections_closed_total",
            "Live connections closed because the peer was revoked.",
            one(&self.revoked_closed),
        )?;
        f.counter(
            "trellis_sidecar_untrusted_domain_connections_closed_total",
            "Live connections closed because the peer's trust domain is no longer federated.",
            one(&self.untrusted_domain_closed),
        )?;
        let renewals: Vec<(Labels, u64)> = self
            .renewals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(result, n)| (label("result", *result), *n))
            .collect();
        f.counter(
            "trellis_sidecar_renewals_total",
            "Certificate renewal attempts by result (throttled: the CA answered RESOURCE_EXHAUSTED).",
            renewals,
        )?;
        f.counter(
            "trellis_sidecar_ca_retry_hints_honoured_total",
            "Retry hints from the CA waited out in full before the next attempt.",
            one(&self.ca_retry_hints_honoured),
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_renewal.load(Relaxed);
        let since = if last == 0 {
            -1
        } else {
            as_i64(now.saturating_sub(last))
        };
        f.gauge(
            "trellis_sidecar_certificate_expiry_timestamp_seconds",
            "NotAfter of the current certificate (0 before the first).",
            gauge(&self.cert_not_after),
        )?;
        f.gauge(
            "trellis_sidecar_last_renewal_age_seconds",
            "Seconds since the last successful issuance or renewal (-1: never).",
            [(Labels::new(), since)],
        )?;
        f.gauge(
            "trellis_sidecar_trust_bundle_version",
            "Version of the trust bundle held.",
            gauge(&self.bundle_version),
        )?;
        f.gauge(
            "trellis_sidecar_trust_bundle_roots",
            "Roots in the trust bundle held.",
            gauge(&self.bundle_roots),
        )?;
        f.gauge(
            "trellis_sidecar_federated_trust_domains",
            "Other trust domains whose bundles the sidecar holds (federation), whose peers it verifies where policy names them.",
            gauge(&self.federated_trust_domains),
        )?;
        f.gauge(
            "trellis_sidecar_trust_bundle_expiry_timestamp_seconds",
            "NotAfter of the longest-lived root in the trust bundle held (0 before the first bundle): after it, the bundle trusts nothing.",
            gauge(&self.bundle_not_after),
        )?;
        f.gauge(
            "trellis_sidecar_ca_stream_connected",
            "1 while the CA's stream is connected (its state received), 0 while reconnecting.",
            [CaStream::TrustBundle, CaStream::Revocations].map(|s| {
                (
                    label("stream", s.as_str()),
                    as_i64(self.ca_streams[s as usize].load(Relaxed)),
                )
            }),
        )?;
        f.histogram(
            "trellis_sidecar_handshake_duration_seconds",
            "Successful TLS handshakes, from the first byte.",
            dirs.map(|d| {
                (
                    label("direction", d.as_str()),
                    &self.handshake_seconds[d as usize],
                )
            }),
        )?;
        f.histogram(
            "trellis_sidecar_renewal_duration_seconds",
            "Issuance and renewal attempts at the CA, whatever their result.",
            [(Labels::new(), &self.renewal_seconds)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text() {
        let m = Metrics::default();
        m.dir(Direction::Inbound).opened.fetch_add(3, Relaxed);
        m.handshake(Direction::Inbound, false, "no_client_cert");
        m.tls_session(
            Direction::Outbound,
            "X25519MLKEM768",
            "TLS13_AES_128_GCM_SHA256",
        );
        m.renewal(true);
        let m = std::sync::Arc::new(m);
        let text = m.render();
        assert!(text.contains("trellis_sidecar_connections_opened_total{direction=\"inbound\"} 3"));
        assert!(text.contains(
            "trellis_sidecar_handshakes_total{direction=\"inbound\",result=\"failed\",reason=\"no_client_cert\"} 1"
        ));
        assert!(text.contains("trellis_sidecar_renewals_total{result=\"ok\"} 1"));
        assert!(text.contains(
            "trellis_sidecar_tls_sessions_total{direction=\"outbound\",group=\"X25519MLKEM768\",cipher_suite=\"TLS13_AES_128_GCM_SHA256\"} 1"
        ));
        assert!(text.contains("trellis_sidecar_last_renewal_age_seconds -1"));
        CaStream::Revocations.set(&m, true);
        let text = m.render();
        assert!(text.contains("trellis_sidecar_ca_stream_connected{stream=\"revocations\"} 1"));
        assert!(text.contains("trellis_sidecar_ca_stream_connected{stream=\"trust_bundle\"} 0"));
        assert!(text.contains("trellis_sidecar_trust_bundle_expiry_timestamp_seconds 0"));
        // Every sample line belongs to a declared family (a counter's or a histogram's
        // by its name without the suffix).
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let declared =
                |base: &str, kind: &str| text.contains(&format!("# TYPE {base} {kind}\n"));
            let counter = name
                .strip_suffix("_total")
                .is_some_and(|base| declared(base, "counter"));
            let histogram = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .any(|base| declared(base, "histogram"));
            assert!(
                counter || histogram || text.contains(&format!("# TYPE {name} ")),
                "undeclared {name}"
            );
        }
    }
}
