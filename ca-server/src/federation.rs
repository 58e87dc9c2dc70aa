//! Federation with other trust domains: their bundles, given once out of band and then
//! refreshed from their SPIFFE bundle endpoints.
//!
//! A fetch is accepted only over TLS that verifies against the foreign trust domain's
//! bundle in force and presents the configured endpoint SPIFFE ID (the `https_spiffe`
//! profile), so each new bundle is vouched for by the one before; the document must be a
//! SPIFFE bundle with at least one X.509 authority and a sequence no lower than the one in
//! force. On any failure the last good bundle stays in force, the failure is recorded (and
//! shown by `trellis federation list` and `/metrics`), and the fetch is retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trellis_identity::bundle::Federated;
use trellis_identity::spiffe_bundle::SpiffeBundle;
use trellis_identity::tls::{self, Versions};
use trellis_identity::{IdMatcher, SpiffeId, TrustBundle, TrustDomain, pem};

use crate::attest::jwks::HttpsUrl;
use crate::bootstrap::store_err;
use crate::error::CaError;
use crate::state::Core;
use crate::store::{AuditRecord, Change, FederationRecord, Store};

/// Refresh interval when a bundle gives no hint, and the bounds put on a hint.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const MIN_REFRESH: Duration = Duration::from_secs(10);
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// After a failed fetch, the next try comes this soon (or at the hint, if sooner).
const RETRY: Duration = Duration::from_secs(30);
/// A fetch must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the poller looks for fetches that are due.
const POLL: Duration = Duration::from_secs(1);

/// A federation with its bundle in force.
#[derive(Debug, Clone)]
pub(crate) struct Federation {
    pub(crate) record: FederationRecord,
    pub(crate) bundle: SpiffeBundle,
}

impl Federation {
    fn new(record: FederationRecord) -> Result<Self, CaError> {
        let td = TrustDomain::new(&record.trust_domain)
            .map_err(|e| CaError::Internal(format!("stored federation: {e}")))?;
        let bundle = SpiffeBundle::parse(td, record.bundle_json.as_bytes()).map_err(|e| {
            CaError::Internal(format!(
                "stored bundle of {} does not parse: {e}",
                record.trust_domain
            ))
        })?;
        Ok(Self { record, bundle })
    }

    /// How often to fetch: the bundle's hint, within bounds.
    pub(crate) fn refresh_interval(&self) -> Duration {
        self.bundle
            .refresh_hint
            .unwrap_or(DEFAULT_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH)
    }

    /// Unix seconds at which the next fetch is due.
    pub(crate) fn next_refresh_at(&self) -> u64 {
        let interval = self.refresh_interval();
        match self.record.last_error {
            Some(_) => self.record.last_attempt_at + interval.min(RETRY).as_secs(),
            None => self.record.refreshed_at + interval.as_secs(),
        }
    }
}

/// Reads a bundle given by an operator: the SPIFFE format (JSON) or PEM roots.
fn given_bundle(td: &TrustDomain, bytes: &[u8]) -> Result<SpiffeBundle, CaError> {
    let bad = |e: String| {
        CaError::InvalidArgument(format!(
            "the bundle of {td} is neither a SPIFFE bundle (JSON) nor PEM roots: {e}"
        ))
    };
    if bytes.trim_ascii_start().starts_with(b"{") {
        return SpiffeBundle::parse(td.clone(), bytes).map_err(|e| bad(e.to_string()));
    }
    let roots = pem::certs_from_pem(bytes).map_err(|e| bad(e.to_string()))?;
    let bundle = TrustBundle::new(td.clone(), 0, roots).map_err(|e| bad(e.to_string()))?;
    Ok(SpiffeBundle::from_trust_bundle(&bundle, None))
}

/// The bundle in force of every federated trust domain, as the CA's own bundle carries them
/// to sidecars. A stored bundle that no longer parses is left out, loudly: it cannot be
/// trusted, and the other trust domains must not suffer for it.
pub(crate) fn federated_bundles(store: &dyn Store) -> Result<Federated, CaError> {
    let mut bundles = BTreeMap::new();
    for record in store.federations().map_err(store_err)? {
        match Federation::new(record).and_then(|f| {
            f.bundle
                .to_trust_bundle()
                .map_err(|e| CaError::Internal(e.to_string()))
        }) {
            Ok(bundle) => {
                bundles.insert(bundle.trust_domain().clone(), Arc::new(bundle));
            }
            Err(e) => tracing::error!(error = %e, "a federated bundle is left out"),
        }
    }
    Ok(Arc::new(bundles))
}

/// The federation service: other trust domains' bundles, kept in the store and carried in
/// the CA's own bundle.
#[derive(Debug)]
pub(crate) struct Federations {
    core: Arc<Core>,
}

impl Federations {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Starts trusting `trust_domain`, with `bundle` in force until its endpoint is read.
    pub(crate) async fn add(
        &self,
        trust_domain: &str,
        endpoint_url: &str,
        endpoint_spiffe_id: &str,
        bundle: &[u8],
        actor: &str,
    ) -> Result<Federation, CaError> {
        let td = TrustDomain::new(trust_domain.trim())
            .map_err(|e| CaError::InvalidArgument(format!("trust domain {trust_domain:?}: {e}")))?;
        if td == self.core.config.trust_domain {
            return Err(CaError::InvalidArgument(format!(
                "{td} is this CA's own trust domain; federation is with other trust domains"
            )));
        }
        let url = HttpsUrl::parse(endpoint_url.trim())
            .map_err(|e| CaError::InvalidArgument(format!("endpoint URL: {e}")))?;
        let endpoint_id = SpiffeId::new(endpoint_spiffe_id.trim()).map_err(|e| {
            CaError::InvalidArgument(format!("endpoint SPIFFE ID {endpoint_spiffe_id:?}: {e}"))
        })?;
        if endpoint_id.trust_domain_name() != td.as_str() {
            return Err(CaError::InvalidArgument(format!(
                "endpoint SPIFFE ID {endpoint_id} is not in {td}: the endpoint must serve \
                 with an identity of the trust domain whose bundle it serves"
            )));
        }
        let bundle = given_bundle(&td, bundle)?;
        let now = self.core.now_unix();
        let record = FederationRecord {
            trust_domain: td.to_string(),
            endpoint_url: url.to_string(),
            endpoint_spiffe_id: endpoint_id.to_string(),
            bundle_json: bundle.to_json(),
            refreshed_at: now,
            // Due at once: the given bundle is only the starting point.
            last_attempt_at: 0,
            last_error: Some("not fetched from the endpoint yet".into()),
            added_at: now,
            added_by: actor.to_owned(),
        };
        let audit = federation_audit("federation_added", &record, actor, &url.to_string(), now);
        self.change(Change {
            federations: vec![record.clone()],
            audit: vec![audit],
            ..Change::default()
        })
        .await?;
        Ok(Federation { record, bundle })
    }

    /// Every federation with its bundle in force.
    pub(crate) fn list(&self) -> Result<Vec<Federation>, CaError> {
        self.core
            .store
            .federations()
            .map_err(store_err)?
            .into_iter()
            .map(Federation::new)
            .collect()
    }

    fn get(&self, trust_domain: &str) -> Result<Federation, CaError> {
        let record = self
            .core
            .store
            .federation(trust_domain.trim())
            .map_err(store_err)?
            .ok_or_else(|| {
                CaError::NotFound(format!(
                    "no federation with {trust_domain:?}; see `trellis federation list`"
                ))
            })?;
        Federation::new(record)
    }

    /// Stops trusting `trust_domain`.
    pub(crate) async fn remove(&self, trust_domain: &str, actor: &str) -> Result<(), CaError> {
        let federation = self.get(trust_domain)?;
        let record = &federation.record;
        let now = self.core.now_unix();
        let audit = federation_audit("federation_removed", record, actor, "", now);
        self.change(Change {
            removed_federations: vec![record.trust_domain.clone()],
            audit: vec![audit],
            ..Change::default()
        })
        .await
    }

    /// Fetches `trust_domain`'s bundle from its endpoint now. The outcome is recorded
    /// either way; a failure keeps the bundle in force and is returned as `Unavailable`.
    pub(crate) async fn refresh(&self, trust_domain: &str) -> Result<Federation, CaError> {
        let federation = self.get(trust_domain)?;
        let fetched = fetch(&federation).await;
        let mut record = federation.record.clone();
        record.last_attempt_at = self.core.now_unix();
        let outcome = match fetched {
            Ok(bundle) => {
                let changed = bundle != federation.bundle;
                record.bundle_json = bundle.to_json();
                record.refreshed_at = record.last_attempt_at;
                record.last_error = None;
                Ok((bundle, changed))
            }
            Err(reason) => {
                record.last_error = Some(reason.clone());
                Err(reason)
            }
        };
        let mut change = Change {
            federations: vec![record.clone()],
            ..Change::default()
        };
        if let Ok((bundle, true)) = &outcome {
            let detail = format!("bundle sequence {}", bundle.sequence);
            change.audit.push(federation_audit(
                "federation_bundle_updated",
                &record,
                "bundle_endpoint",
                &detail,
                self.core.now_unix(),
            ));
            self.change(change).await?;
        } else {
            // Only the attempt's outcome: the bundle in force is the same, so is the CA's.
            let store = &self.core.store;
            let mark = store.mark();
            store.apply(&change).map_err(store_err)?;
            store.durable(mark).await.map_err(store_err)?;
        }
        match outcome {
            Ok((bundle, changed)) => {
                if changed {
                    tracing::info!(
                        trust_domain = %record.trust_domain,
                        sequence = bundle.sequence,
                        roots = bundle.x509_authorities.len(),
                        "federated bundle updated"
                    );
                }
                Ok(Federation { record, bundle })
            }
            Err(reason) => Err(CaError::Unavailable(format!(
                "the bundle of {} was not refreshed (the last good one stays in force): {reason}",
                record.trust_domain
            ))),
        }
    }

    /// A federated bundle changed (`change`): written in one step with a new version of
    /// the CA's own bundle (so sidecars take it and acknowledge it), durably, then
    /// published.
    async fn change(&self, mut change: Change) -> Result<(), CaError> {
        let core = &self.core;
        let _bundle_change = core.changing_bundle().await?;
        change.bundle_version = Some(core.bundle().version() + 1);
        let mark = core.store.mark();
        core.store.apply(&change).map_err(store_err)?;
        core.store.durable(mark).await.map_err(store_err)?;
        let kind = change.audit.first().map(|a| a.kind.as_str());
        let trust_domain = change
            .federations
            .first()
            .map(|f| f.trust_domain.as_str())
            .or(change.removed_federations.first().map(String::as_str));
        core.republish_bundle(kind.unwrap_or_default(), trust_domain.unwrap_or_default())
            .await
    }
}

/// The audit entry of a federation change.
fn federation_audit(
    kind: &str,
    record: &FederationRecord,
    actor: &str,
    detail: &str,
    now: u64,
) -> AuditRecord {
    AuditRecord {
        time: now,
        kind: kind.into(),
        spiffe_id: record.endpoint_spiffe_id.clone(),
        serial: String::new(),
        actor: actor.into(),
        detail: format!("{} {detail}", record.trust_domain)
            .trim()
            .to_owned(),
    }
}

/// Reads the endpoint of `federation`, authenticated by its bundle in force.
async fn fetch(federation: &Federation) -> Result<SpiffeBundle, String> {
    let record = &federation.record;
    let url = HttpsUrl::parse(&record.endpoint_url)?;
    let endpoint_id = SpiffeId::new(&record.endpoint_spiffe_id).map_err(|e| e.to_string())?;
    let current = federation
        .bundle
        .to_trust_bundle()
        .map_err(|e| e.to_string())?;
    let tls = tls::client_config(
        Arc::new(current),
        IdMatcher::exact(endpoint_id),
        None,
        Versions::Tls12And13,
        &[b"http/1.1"],
    )
    .map_err(|e| e.to_string())?;
    let body = crate::https_get::get(
        &url,
        tls,
        "application/json",
        None,
        trellis_identity::spiffe_bundle::MAX_BUNDLE_BYTES,
        FETCH_TIMEOUT,
    )
    .await?;
    let bundle = SpiffeBundle::parse(federation.bundle.trust_domain.clone(), &body)
        .map_err(|e| format!("{url}: {e}"))?;
    if bundle.sequence < federation.bundle.sequence {
        return Err(format!(
            "{url}: the bundle's sequence went back from {} to {} (a replayed old bundle?)",
            federation.bundle.sequence, bundle.sequence
        ));
    }
    Ok(bundle)
}

/// Refreshes each federation when due, until `stop`.
pub(crate) async fn maintain(federations: Arc<Federations>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled() => return,
        }
        let due = match federations.list() {
            Ok(all) => all
                .into_iter()
                .filter(|f| f.next_refresh_at() <= federations.core.now_unix())
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the federations failed");
                continue;
            }
        };
        for federation in due {
            if let Err(e) = federations.refresh(&federation.record.trust_domain).await {
                tracing::warn!(error = %e, "federated bundle refresh failed");
            }
        }
    }
}

/// `/metrics` families: each federation's last successful refresh and whether it is failing.
pub(crate) fn collect_metrics(
    federations: &Federations,
    f: &mut trellis_proto::metrics::Families<'_>,
) -> std::fmt::Result {
    use trellis_proto::metrics::label;
    let Ok(federations) = federations.list() else {
        return Ok(());
    };
    if federations.is_empty() {
        return Ok(());
    }
    let of = |fed: &Federation| label("trust_domain", fed.record.trust_domain.clone());
    f.gauge(
        "trellis_ca_federation_refreshed_timestamp_seconds",
        "When the federated bundle in force was fetched (or given).",
        federations.iter().map(|fed| {
            (
                of(fed),
                i64::try_from(fed.record.refreshed_at).unwrap_or(i64::MAX),
            )
        }),
    )?;
    f.gauge(
        "trellis_ca_federation_refresh_failing",
        "1 while the last fetch of a federated bundle failed (the last good one stays in force).",
        federations.iter().map(|fed| {
            let failing = fed.record.last_error.is_some() && fed.record.last_attempt_at > 0;
            (of(fed), i64::from(failing))
        }),
    )
}
