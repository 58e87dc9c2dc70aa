//! The CA's `/metrics` (served by `http.rs`): issuance, the store, the trust bundle, the
//! expiry of every CA certificate, federation, the limiter and the listeners' connection
//! budgets, read from the services at each scrape and written by `trellis_proto::metrics`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use trellis_identity::CertInfo;
use trellis_proto::listen::ConnBudget;
use trellis_proto::metrics::{Families, Labels, Source, label};

use crate::connections::Listeners;
use crate::services::Services;
use crate::state::unix;
use crate::store::LocalFiles;

/// Everything the CA exports.
pub(crate) struct Exported {
    pub(crate) ca: Arc<Services>,
    pub(crate) listeners: Listeners,
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn one(value: i64) -> [(Labels, i64); 1] {
    [(Labels::new(), value)]
}

impl Source for Exported {
    fn collect(&self, f: &mut Families<'_>) -> fmt::Result {
        let ca = &*self.ca;
        let store = &ca.core.store;
        let now = ca.core.now_unix();
        f.histogram(
            "trellis_ca_issuance_duration_seconds",
            "Certificates issued (Certify and admin IssueCertificate), from the credential check to the durable record.",
            [(Labels::new(), &ca.issuance.seconds)],
        )?;
        crate::federation::collect_metrics(&ca.federations, f)?;
        // Absent, not zero, while the store is being reopened after a write failure.
        if let Some(count) = store.issued_total() {
            f.counter(
                "trellis_ca_certificates_issued_total",
                "Certificates issued since initialisation.",
                [(Labels::new(), count)],
            )?;
        }
        if let Some(live) = store.live_by_root(now) {
            f.gauge(
                "trellis_ca_certificates_live",
                "Unexpired certificates (revoked ones included), by the root they chain to.",
                live.into_iter()
                    .map(|(root, count)| (label("root", root), as_i64(count))),
            )?;
        }
        f.counter(
            "trellis_ca_store_pruned_total",
            "Expired certificate records removed by retention since start.",
            [(Labels::new(), store.pruned_total())],
        )?;
        f.gauge(
            "trellis_ca_store_writable",
            "1 if the certificate store can record issuances, 0 while it cannot (disk full, read-only).",
            one(i64::from(store.failure().is_none())),
        )?;
        f.counter(
            "trellis_ca_store_flushes_total",
            "Group commits of the certificate store since start (sled: flushes, each ending in fdatasync; PostgreSQL: issuance batches, each one transaction); issuances per commit is how well writers share them.",
            [(Labels::new(), store.flushes())],
        )?;
        if let Some(files) = store.local_files() {
            local_files(&files, f)?;
        }
        f.gauge(
            "trellis_ca_revoked_unexpired",
            "Revoked certificates that have not expired.",
            one(as_i64(ca.revocations.current().entries.len() as u64)),
        )?;
        f.gauge(
            "trellis_ca_trust_bundle_version",
            "Current trust-bundle version.",
            one(as_i64(ca.core.bundle().version())),
        )?;
        expiry(ca, now, f)?;
        if let Some(attestor) = &ca.kubernetes {
            let stats = attestor.key_stats();
            f.gauge(
                "trellis_ca_kubernetes_keys",
                "Service-account signing keys in force (the last set read successfully).",
                one(as_i64(stats.keys.load(Relaxed))),
            )?;
            f.counter(
                "trellis_ca_kubernetes_key_refresh_failures_total",
                "Reads of the service-account signing keys that failed since start.",
                [(Labels::new(), stats.failures.load(Relaxed))],
            )?;
        }
        crate::limits::metrics::collect(&ca.limits, f)?;
        let l = &self.listeners;
        ConnBudget::collect("trellis_ca", &[&l.grpc, &l.grpc_handshakes, &l.http], f)
    }
}

/// The embedded store's files: its log (which a start reads whole, so its size is what a
/// start costs) and the compactions that copy the data out of a grown log.
fn local_files(files: &LocalFiles, f: &mut Families<'_>) -> fmt::Result {
    if let Some(bytes) = files.log_bytes {
        f.gauge(
            "trellis_ca_store_log_bytes",
            "Size of the embedded store's log (sled), which every start reads; a checkpoint compacts the store once the log has far outgrown the data.",
            one(as_i64(bytes)),
        )?;
    }
    f.counter(
        "trellis_ca_store_compactions_total",
        "Copies of the embedded store into a fresh folder since start (compactions), by result; a failed one is retried at a later checkpoint.",
        [
            (label("result", "ok"), files.compactions),
            (label("result", "failed"), files.failed_compactions),
        ],
    )
}

/// How long each CA certificate has left, as seconds and as its NotAfter in Unix seconds
/// (the Prometheus convention for points in time: alerts compare them with `time()`).
/// Roots carry their state, so an alert can ignore retired ones.
fn expiry(ca: &Services, now: u64, f: &mut Families<'_>) -> fmt::Result {
    let roots: Vec<(Labels, u64)> = ca
        .core
        .store
        .roots()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|root| {
            let info = CertInfo::parse(&root.cert_der).ok()?;
            let labels = vec![
                ("root", root.id.clone()),
                ("state", root.state.as_str().to_owned()),
            ];
            Some((labels, unix(info.not_after)))
        })
        .collect();
    let left = |at: u64| as_i64(at) - as_i64(now);
    f.gauge(
        "trellis_ca_root_expiry_seconds",
        "Seconds until each root expires.",
        roots.iter().map(|(l, at)| (l.clone(), left(*at))),
    )?;
    f.gauge(
        "trellis_ca_root_expiry_timestamp_seconds",
        "NotAfter of each root, in Unix seconds.",
        roots.iter().map(|(l, at)| (l.clone(), as_i64(*at))),
    )?;
    let signer = ca.core.signer();
    if let Ok(info) = CertInfo::parse(&signer.cert) {
        let not_after = unix(info.not_after);
        f.gauge(
            "trellis_ca_intermediate_expiry_seconds",
            "Seconds until the signing intermediate expires.",
            [(label("intermediate", signer.id.clone()), left(not_after))],
        )?;
        f.gauge(
            "trellis_ca_intermediate_expiry_timestamp_seconds",
            "NotAfter of the signing intermediate, in Unix seconds.",
            [(
                vec![
                    ("intermediate", signer.id.clone()),
                    ("root", signer.root_id.clone()),
                ],
                as_i64(not_after),
            )],
        )?;
    }
    let serving = ca.serving.not_after();
    if serving > 0 {
        f.gauge(
            "trellis_ca_serving_certificate_expiry_timestamp_seconds",
            "NotAfter of the CA's own TLS serving certificate, in Unix seconds (renewed at half its life).",
            one(as_i64(serving)),
        )?;
    }
    Ok(())
}
