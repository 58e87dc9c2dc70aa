//! The identity agent: gets the first certificate, renews it at about half its lifetime,
//! follows the CA's trust bundle, and survives CA outages.
//!
//! Rules:
//! - a fresh P-256 key for every certificate, generated here; only the CSR leaves;
//! - renewal at 40–60 % of the certificate's own lifetime (the fraction is derived from the
//!   random serial, so a fleet spreads out and a certificate's schedule is stable);
//! - while the CA is unreachable: capped exponential backoff with jitter, and the current
//!   certificate stays in service until it really expires;
//! - when the CA is overloaded (RESOURCE_EXHAUSTED with a retry hint): wait the hinted delay
//!   plus jitter on the injected clock, not the short backoff, keeping the current
//!   certificate in service; a throttled attempt is not a failure;
//! - once expired: fall back to the bootstrap credential if one is still usable, otherwise
//!   withdraw the certificate (the data path then refuses connections: fail closed) and say
//!   why in the log; recover on its own as soon as the CA answers;
//! - a response is published only if it verifies against the bundle and names the expected
//!   identity, so a bad response never replaces a good certificate;
//! - revocations follow the CA's `WatchRevocations` stream: revoked peers are refused in
//!   every new handshake, and live connections with them are closed at once;
//! - every bundle the sidecar installs is acknowledged to the CA (`AckTrustBundle`), which
//!   is how the CA knows when a new root may be activated safely.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use std::collections::{BTreeMap, HashSet};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use trellis_identity::bundle::{JwtKey, format_time};
use trellis_identity::clock::Clock;
use trellis_identity::tls::{self, ClockTime, KeyExchange, Versions};
use trellis_identity::{IdMatcher, TrustBundle, WorkloadKey};
use trellis_proto::ca::v1::workload_ca_client::WorkloadCaClient;

use trellis_identity::tls::Revoked;
use trellis_proto::ca::v1::{
    AckTrustBundleRequest, CertifyRequest, TrustBundle as ProtoBundle, WatchRevocationsRequest,
    WatchTrustBundleRequest,
};

use crate::config::{CaConfig, Config};
use crate::credentials::Credentials;
use crate::join_token::BootstrapCredential;
use crate::metrics::{CaStream, Metrics};
use crate::proxy::Registry;
use crate::retry_hint::{self, retry_hint};
use crate::{svid_files, trust};

/// Knobs that tests turn down; production uses [`Pacing::default`].
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Longest single sleep: how quickly a moved clock is noticed.
    pub tick: Duration,
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Longest retry delay of renewals and of fetching the first bundle.
    pub backoff_cap: Duration,
    /// Longest delay before reconnecting the CA's bundle and revocation streams. Short,
    /// because a revocation reaches this sidecar only once they are connected again: after
    /// a CA restart, a sidecar that had backed off to `backoff_cap` would learn of a
    /// revocation made meanwhile only that long after. Reconnects are cheap (one TLS
    /// handshake and a stream that sends complete state), and the jitter in [`backoff`]
    /// spreads a fleet's reconnects over the last half of this.
    pub stream_backoff_cap: Duration,
    /// Time limit for one call to the CA.
    pub call_timeout: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(15),
            stream_backoff_cap: Duration::from_secs(1),
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// The agent. Build with [`Agent::new`], run with [`Agent::run`].
#[derive(Debug)]
pub struct Agent {
    ca: CaConfig,
    trust_domain: trellis_identity::TrustDomain,
    clock: Arc<dyn Clock>,
    bootstrap: Arc<dyn BootstrapCredential>,
    creds: watch::Sender<Option<Arc<Credentials>>>,
    metrics: Arc<Metrics>,
    pacing: Pacing,
    registry: Option<Registry>,
    /// For the data path's TLS configs in every [`Credentials`] published.
    key_exchange: KeyExchange,
}

/// Why one attempt to get a certificate failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("CA unreachable: {0}")]
    Unreachable(String),
    #[error("CA refused ({code:?}): {message}")]
    Refused { code: Code, message: String },
    #[error("CA overloaded: {message}")]
    Throttled {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("CA response rejected: {0}")]
    BadResponse(String),
    #[error("no bootstrap credential left: {0}")]
    NoCredential(String),
}

impl Agent {
    pub fn new(
        config: &Config,
        clock: Arc<dyn Clock>,
        bootstrap: Arc<dyn BootstrapCredential>,
        creds: watch::Sender<Option<Arc<Credentials>>>,
        metrics: Arc<Metrics>,
        pacing: Pacing,
    ) -> Self {
        Self {
            ca: config.ca.clone(),
            trust_domain: config.trust_domain.clone(),
            clock,
            bootstrap,
            creds,
            metrics,
            pacing,
            registry: None,
            key_exchange: config.key_exchange,
        }
    }

    /// Live connections to close when their peer is revoked.
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Runs until `stop` becomes true.
    pub async fn run(self, stop: CancellationToken) {
        let Some(bundle) = self.initial_bundle(&stop).await else {
            return;
        };
        self.note_bundle(&bundle);
        let (bundle_tx, mut bundles) = watch::channel(Arc::new(bundle));
        let watcher = tokio::spawn(watch_bundle(
            self.metrics.clone(),
            self.ca.clone(),
            self.trust_domain.clone(),
            self.clock.clone(),
            bundle_tx.clone(),
            self.pacing,
            stop.clone(),
        ));
        let (revoked_tx, mut revoked) = watch::channel(Revoked::default());
        let revocation_watcher = tokio::spawn(watch_revocations(
            self.metrics.clone(),
            self.ca.clone(),
            self.clock.clone(),
            bundles.clone(),
            revoked_tx,
            self.pacing,
            stop.clone(),
        ));
        let mut failures: u32 = 0;
        let mut key_for_files: Option<WorkloadKey> = None;
        loop {
            let current = self.creds.borrow().clone();
            let due = match &current {
                Some(c) if failures == 0 => renew_at(c),
                Some(_) => self.clock.now(), // retrying: the backoff already waited
                None => self.clock.now(),
            };
            tokio::select! {
                _ = sleep_until(&self.clock, due, self.pacing.tick) => {}
                changed = bundles.changed() => {
                    if changed.is_err() { break; }
                    let bundle = bundles.borrow_and_update().clone();
                    self.on_bundle_change(bundle, key_for_files.as_ref());
                    continue;
                }
                changed = revoked.changed() => {
                    if changed.is_err() { break; }
                    let set = revoked.borrow_and_update().clone();
                    self.on_revocations(set);
                    continue;
                }
                _ = stop.cancelled() => break,
            }
            let bundle = bundles.borrow().clone();
            let started = std::time::Instant::now();
            let result = self.attempt(current.as_deref(), bundle).await;
            self.metrics.renewal_seconds.observe(started.elapsed());
            match result {
                Ok((creds, key, response_bundle)) => {
                    failures = 0;
                    if let Some(newer) = response_bundle
                        && newer.version() > bundles.borrow().version()
                    {
                        bundle_tx.send_replace(newer);
                        bundles.borrow_and_update();
                    }
                    let set = revoked.borrow().clone();
                    match creds.with_revoked(set) {
                        Ok(creds) => self.publish(creds, &key),
                        Err(e) => tracing::error!(error = %e, "rebuilding credentials failed"),
                    }
                    key_for_files = Some(key);
                }
                Err(AttemptError::Throttled {
                    message,
                    retry_after: Some(hint),
                }) => {
                    self.metrics.renewal_throttled();
                    if !self
                        .wait_for_hint(current.as_deref(), &message, hint, &stop)
                        .await
                    {
                        break;
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.renewal(false);
                    let delay = backoff(self.pacing, failures);
                    self.on_failure(current.as_deref(), &e, delay);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => break,
                    }
                }
            }
        }
        watcher.abort();
        revocation_watcher.abort();
    }

    /// A new revocation list: refuse the revoked in new handshakes, close live connections.
    fn on_revocations(&self, revoked: Revoked) {
        let current = self.creds.borrow().clone();
        let previous = current
            .as_ref()
            .map(|c| c.revoked.clone())
            .unwrap_or_default();
        if let Some(current) = current {
            match current.with_revoked(revoked.clone()) {
                Ok(updated) => {
                    self.creds.send_replace(Some(Arc::new(updated)));
                }
                Err(e) => tracing::error!(error = %e, "applying revocations failed"),
            }
        }
        // The registry keeps the set, so a connection still handshaking now is closed the
        // moment it registers.
        let closed = self
            .registry
            .as_ref()
            .map(|r| r.set_revoked(revoked.iter()))
            .unwrap_or(0);
        for serial in revoked.difference(&previous) {
            tracing::warn!(%serial, "peer certificate revoked: refused in new handshakes");
        }
        if closed > 0 {
            tracing::warn!(
                connections = closed,
                "closed live connections of revoked peers"
            );
        }
        self.metrics
            .revoked_closed
            .fetch_add(closed as u64, Relaxed);
        tracing::info!(revoked = revoked.len(), closed, "revocation list applied");
    }

    async fn initial_bundle(&self, stop: &CancellationToken) -> Option<TrustBundle> {
        let mut failures = 0;
        loop {
            match trust::initial_bundle(
                &self.ca.trust,
                &self.trust_domain,
                &self.ca.replicas,
                &self.ca.spiffe_id,
                &self.clock,
            )
            .await
            {
                Ok(bundle) => return Some(bundle),
                Err(e) => {
                    failures += 1;
                    let delay = backoff(self.pacing, failures);
                    self.metrics
                        .note_failure(format!("no trust bundle yet: {e} (retrying in {delay:?})"));
                    if e.is_transient() {
                        tracing::warn!(error = %e, retry_in = ?delay, "no trust bundle yet; not ready");
                    } else {
                        tracing::error!(error = %e, retry_in = ?delay, "cannot establish trust; not ready");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// One try: renew with the current certificate if it is still valid, else bootstrap.
    async fn attempt(
        &self,
        current: Option<&Credentials>,
        bundle: Arc<TrustBundle>,
    ) -> Result<(Credentials, WorkloadKey, Option<Arc<TrustBundle>>), AttemptError> {
        let usable = current.filter(|c| !c.expired());
        match usable {
            Some(current) => match self.certify(Some(current), bundle.clone()).await {
                // The CA no longer accepts this certificate (revoked, or its root retired):
                // a still-usable bootstrap credential is the way back in.
                Err(AttemptError::Refused { code, .. })
                    if matches!(code, Code::Unauthenticated | Code::PermissionDenied)
                        && matches!(self.bootstrap.credential(), Ok(Some(_))) =>
                {
                    self.certify(None, bundle).await
                }
                other => other,
            },
            None => self.certify(None, bundle).await,
        }
    }

    async fn certify(
        &self,
        current: Option<&Credentials>,
        bundle: Arc<TrustBundle>,
    ) -> Result<(Credentials, WorkloadKey, Option<Arc<TrustBundle>>), AttemptError> {
        let credential = match current {
            Some(_) => None,
            None => match self.bootstrap.credential() {
                Ok(Some(c)) => Some(c),
                Ok(None) => {
                    return Err(AttemptError::NoCredential(
                        "the join token was already used and there is no valid certificate to \
                         renew with; create a new token (`trellis token create`) and restart"
                            .into(),
                    ));
                }
                Err(e) => return Err(AttemptError::NoCredential(e)),
            },
        };
        let key = WorkloadKey::generate().map_err(|e| AttemptError::BadResponse(e.to_string()))?;
        let csr = key
            .csr_der(None)
            .map_err(|e| AttemptError::BadResponse(e.to_string()))?;
        let mut client = self
            .client(bundle.clone(), current.map(|c| &c.identity))
            .await?;
        let request = CertifyRequest {
            csr_der: csr,
            credential: credential.clone(),
            ttl_seconds: self.ca.ttl.map(|t| t.as_secs() as u32).unwrap_or(0),
            bundle_version: bundle.version(),
        };
        let response = tokio::time::timeout(self.pacing.call_timeout, client.certify(request))
            .await
            .map_err(|_| AttemptError::Unreachable("call timed out".into()))?
            .map_err(|status| match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown => {
                    AttemptError::Unreachable(status.message().to_owned())
                }
                Code::ResourceExhausted => AttemptError::Throttled {
                    retry_after: retry_hint(&status),
                    message: status.message().to_owned(),
                },
                code => AttemptError::Refused {
                    code,
                    message: status.message().to_owned(),
                },
            })?
            .into_inner();
        if credential.is_some() {
            self.bootstrap.accepted();
        }
        // The response came over a connection authenticated with our bundle, so a newer
        // bundle in it is trusted; the chain must verify against the bundle we end up with.
        let response_bundle = response
            .bundle
            .and_then(|b| self.proto_bundle(b).ok())
            .filter(|b| b.version() >= bundle.version())
            .map(Arc::new);
        let verify_with = response_bundle.clone().unwrap_or(bundle);
        let chain: Vec<CertificateDer<'static>> = response
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let expected = current
            .map(|c| c.svid.spiffe_id.clone())
            .or_else(|| self.ca.expected_spiffe_id.clone());
        let creds = Credentials::new(
            chain,
            key.private_key_der(),
            &key.public_key_der(),
            verify_with,
            expected.as_ref(),
            self.clock.clone(),
            self.key_exchange,
        )
        .map_err(|e| AttemptError::BadResponse(e.to_string()))?;
        Ok((creds, key, response_bundle))
    }

    async fn client(
        &self,
        bundle: Arc<TrustBundle>,
        identity: Option<&tls::Identity>,
    ) -> Result<WorkloadCaClient<tonic::transport::Channel>, AttemptError> {
        ca_client(
            &self.ca,
            &self.clock,
            bundle,
            identity,
            self.pacing.call_timeout,
        )
        .await
    }

    fn proto_bundle(&self, b: ProtoBundle) -> Result<TrustBundle, String> {
        bundle_from_proto(&self.trust_domain, b)
    }

    fn publish(&self, creds: Credentials, key: &WorkloadKey) {
        let m = &self.metrics;
        m.renewal(true);
        m.clear_failure();
        m.cert_not_after.store(unix(creds.svid.not_after), Relaxed);
        m.last_renewal.store(unix(SystemTime::now()), Relaxed);
        self.note_bundle(&creds.bundle);
        tracing::info!(
            spiffe_id = %creds.svid.spiffe_id,
            serial = %creds.svid.serial,
            not_after = %format_time(creds.svid.not_after),
            bundle_version = creds.bundle.version(),
            "certificate installed"
        );
        if let Some(dir) = &self.ca.svid_dir
            && let Err(e) = svid_files::write(dir, &creds, key)
        {
            tracing::error!(dir = %dir.display(), error = %e, "writing SVID files failed");
        }
        let creds = Arc::new(creds);
        self.ack_bundle(&creds);
        self.creds.send_replace(Some(creds));
    }

    /// Tells the CA which bundle version this sidecar now holds (best effort, in the
    /// background: a lost acknowledgement only delays a root activation).
    fn ack_bundle(&self, creds: &Arc<Credentials>) {
        let (ca, clock, creds, timeout) = (
            self.ca.clone(),
            self.clock.clone(),
            creds.clone(),
            self.pacing.call_timeout,
        );
        tokio::spawn(async move {
            let version = creds.bundle.version();
            let result = async {
                let mut client = ca_client(
                    &ca,
                    &clock,
                    creds.bundle.clone(),
                    Some(&creds.identity),
                    timeout,
                )
                .await
                .map_err(|e| e.to_string())?;
                client
                    .ack_trust_bundle(AckTrustBundleRequest { version })
                    .await
                    .map_err(|s| s.message().to_owned())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, version, "acknowledging the trust bundle failed");
            }
        });
    }

    fn note_bundle(&self, bundle: &TrustBundle) {
        self.metrics.bundle_version.store(bundle.version(), Relaxed);
        let last_root_expiry = bundle
            .roots()
            .iter()
            .filter_map(|root| trellis_identity::CertInfo::parse(root).ok())
            .map(|info| unix(info.not_after))
            .max()
            .unwrap_or(0);
        self.metrics
            .bundle_not_after
            .store(last_root_expiry, Relaxed);
        self.metrics
            .bundle_roots
            .store(bundle.roots().len() as u64, Relaxed);
        self.metrics
            .federated_trust_domains
            .store(bundle.federated().len() as u64, Relaxed);
        // A federation that ended takes its peers' live connections with it, as a
        // revocation does; the registry keeps the set for handshakes still under way.
        if let Some(registry) = &self.registry {
            let own = std::iter::once(bundle.trust_domain().as_str());
            let federated = bundle.federated().keys().map(|td| td.as_str());
            let closed = registry.set_trusted_domains(own.chain(federated));
            if closed > 0 {
                tracing::warn!(
                    connections = closed,
                    "closed live connections of trust domains no longer federated"
                );
                self.metrics
                    .untrusted_domain_closed
                    .fetch_add(closed as u64, Relaxed);
            }
        }
    }

    /// A new bundle: keep the current certificate under it (so new roots are trusted at
    /// once), or, if it no longer verifies, renew immediately.
    fn on_bundle_change(&self, bundle: Arc<TrustBundle>, key: Option<&WorkloadKey>) {
        self.note_bundle(&bundle);
        tracing::info!(
            version = bundle.version(),
            roots = bundle.roots().len(),
            federated = ?bundle.federated().keys().collect::<Vec<_>>(),
            "trust bundle changed"
        );
        let current = self.creds.borrow().clone();
        let Some(current) = current else { return };
        match current.with_bundle(bundle) {
            Ok(updated) => {
                if let (Some(dir), Some(_)) = (&self.ca.svid_dir, key)
                    && let Err(e) = svid_files::write_bundle(dir, &updated)
                {
                    tracing::error!(error = %e, "writing bundle.pem failed");
                }
                let updated = Arc::new(updated);
                self.ack_bundle(&updated);
                self.creds.send_replace(Some(updated));
            }
            Err(e) => {
                tracing::warn!(error = %e, "current certificate does not verify under the new bundle; renewing now");
                // Keep serving with the old value; the renewal below replaces it.
                self.metrics.cert_not_after.store(0, Relaxed);
            }
        }
    }

    /// The CA asked for a pause: wait the hint plus jitter on the injected clock, keeping
    /// the current certificate in service (but not past its expiry: then the next attempt
    /// decides, and an expired certificate is withdrawn). False if stopped meanwhile.
    async fn wait_for_hint(
        &self,
        current: Option<&Credentials>,
        message: &str,
        hint: Duration,
        stop: &CancellationToken,
    ) -> bool {
        let refused_at = self.clock.now();
        let delay = retry_hint::with_jitter(hint);
        let mut until = refused_at + delay;
        if let Some(c) = current.filter(|c| !c.expired()) {
            until = until.min(c.svid.not_after);
        }
        match current {
            Some(c) if c.expired() => self.on_failure(
                current,
                &AttemptError::Throttled {
                    message: message.to_owned(),
                    retry_after: Some(hint),
                },
                delay,
            ),
            _ => tracing::warn!(
                ca_message = %message,
                hint = ?hint,
                retry_in = ?delay,
                holding = current.map(|c| c.svid.serial.as_str()).unwrap_or("nothing"),
                "CA is overloaded; waiting as it asked before retrying"
            ),
        }
        tokio::select! {
            _ = sleep_until(&self.clock, until, self.pacing.tick) => {}
            _ = stop.cancelled() => return false,
        }
        if self.clock.now() >= refused_at + hint {
            self.metrics.ca_retry_hints_honoured.fetch_add(1, Relaxed);
        }
        true
    }

    fn on_failure(&self, current: Option<&Credentials>, e: &AttemptError, delay: Duration) {
        self.metrics
            .note_failure(format!("{e} (retrying in {delay:?})"));
        match current {
            Some(c) if !c.expired() => tracing::warn!(
                error = %e,
                retry_in = ?delay,
                spiffe_id = %c.svid.spiffe_id,
                still_valid_until = %format_time(c.svid.not_after),
                "renewal failed; keeping the current certificate"
            ),
            Some(c) => {
                tracing::error!(
                    error = %e,
                    retry_in = ?delay,
                    expired_at = %format_time(c.svid.not_after),
                    "certificate expired and could not be renewed; not ready, refusing connections"
                );
                self.creds.send_replace(None);
                self.metrics.cert_not_after.store(0, Relaxed);
            }
            None => tracing::error!(error = %e, retry_in = ?delay, "no certificate yet; not ready"),
        }
    }
}

/// Connects to the CA, verifying it by SPIFFE ID against `bundle`, presenting `identity`.
pub(crate) async fn ca_client(
    ca: &CaConfig,
    clock: &Arc<dyn Clock>,
    bundle: Arc<TrustBundle>,
    identity: Option<&tls::Identity>,
    timeout: Duration,
) -> Result<WorkloadCaClient<tonic::transport::Channel>, AttemptError> {
    let mut config = tls::client_config(
        bundle,
        IdMatcher::exact(ca.spiffe_id.clone()),
        identity,
        Versions::Tls13,
        &[trellis_proto::channel::ALPN_H2],
    )
    .map_err(|e| AttemptError::BadResponse(e.to_string()))?;
    config.time_provider = Arc::new(ClockTime(clock.clone()));
    let config = Arc::new(config);
    // Each replica in turn, from the one that answered last; all failing is one failed
    // attempt, retried with the usual backoff.
    let mut failures = Vec::new();
    for (index, address) in ca.replicas.in_order() {
        let connect = trellis_proto::channel::connect_to(address, config.clone());
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(channel)) => {
                if !failures.is_empty() {
                    tracing::info!(ca = address, "moved to another CA replica");
                }
                ca.replicas.answered(index);
                return Ok(WorkloadCaClient::new(channel));
            }
            Ok(Err(e)) => failures.push(format!("{address}: {}", source_chain(&e))),
            Err(_) => failures.push(format!("connecting to {address} timed out")),
        }
    }
    Err(AttemptError::Unreachable(failures.join("; ")))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn bundle_from_proto(
    td: &trellis_identity::TrustDomain,
    b: ProtoBundle,
) -> Result<TrustBundle, String> {
    if b.trust_domain != td.as_str() {
        return Err(format!(
            "CA sent a bundle for trust domain {:?}, expected {td}",
            b.trust_domain
        ));
    }
    let mut federated = BTreeMap::new();
    for foreign in b.federated_bundles {
        // One unusable foreign bundle must not cost the own trust domain its update: it is
        // left out (its peers refused) and said so.
        match federated_from_proto(td, foreign) {
            Ok(bundle) => {
                federated.insert(bundle.trust_domain().clone(), Arc::new(bundle));
            }
            Err(e) => tracing::warn!(error = %e, "a federated bundle from the CA is left out"),
        }
    }
    own_or_foreign_from_proto(td.clone(), b.version, b.root_certificates_der, b.jwt_keys)
        .map(|bundle| bundle.with_federated(Arc::new(federated)))
}

fn federated_from_proto(
    own: &trellis_identity::TrustDomain,
    b: ProtoBundle,
) -> Result<TrustBundle, String> {
    let td = trellis_identity::TrustDomain::new(&b.trust_domain)
        .map_err(|e| format!("federated trust domain {:?}: {e}", b.trust_domain))?;
    if &td == own {
        return Err(format!("{td} is the own trust domain, not a federated one"));
    }
    own_or_foreign_from_proto(td, b.version, b.root_certificates_der, b.jwt_keys)
        .map_err(|e| format!("federated trust domain {}: {e}", b.trust_domain))
}

fn own_or_foreign_from_proto(
    td: trellis_identity::TrustDomain,
    version: u64,
    roots: Vec<Vec<u8>>,
    jwt_keys: Vec<trellis_proto::ca::v1::JwtKey>,
) -> Result<TrustBundle, String> {
    let jwt_keys = jwt_keys
        .into_iter()
        .map(|k| JwtKey {
            key_id: k.key_id,
            public_key: k.public_key,
        })
        .collect();
    TrustBundle::new(
        td,
        version,
        roots.into_iter().map(CertificateDer::from).collect(),
    )
    .map(|bundle| bundle.with_jwt_keys(jwt_keys))
    .map_err(|e| e.to_string())
}

/// Keeps one of the CA's state streams open: `open` starts it on a fresh client (verifying
/// the CA with the newest bundle), every message goes to `apply`, and any failure leads to
/// a reconnect with backoff capped at [`Pacing::stream_backoff_cap`]. The CA's streams send
/// complete state in every message (the first one on connecting included), so a reconnect
/// never misses anything.
#[allow(clippy::too_many_arguments)]
async fn follow<M, F>(
    (what, metrics): (CaStream, Arc<Metrics>),
    ca: CaConfig,
    clock: Arc<dyn Clock>,
    bundles: watch::Receiver<Arc<TrustBundle>>,
    pacing: Pacing,
    stop: CancellationToken,
    open: impl Fn(WorkloadCaClient<tonic::transport::Channel>) -> F,
    mut apply: impl FnMut(M) -> Result<(), String>,
) where
    F: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>>,
{
    let mut failures = 0;
    loop {
        let bundle = bundles.borrow().clone();
        let outcome = async {
            let client = ca_client(&ca, &clock, bundle, None, pacing.call_timeout)
                .await
                .map_err(|e| e.to_string())?;
            let mut stream = open(client)
                .await
                .map_err(|s| s.message().to_owned())?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        failures = 0;
                        apply(message)?;
                        what.set(&metrics, true);
                    }
                    Ok(None) => return Err("stream ended".to_owned()),
                    Err(status) => return Err(status.message().to_owned()),
                }
            }
        };
        let error: String = tokio::select! {
            result = outcome => match result { Err(e) => e, Ok(()) => String::new() },
            _ = stop.cancelled() => return,
        };
        what.set(&metrics, false);
        failures += 1;
        let delay = backoff(
            Pacing {
                backoff_cap: pacing.stream_backoff_cap,
                ..pacing
            },
            failures,
        );
        tracing::debug!(stream = what.as_str(), error = %error, retry_in = ?delay, "CA stream interrupted; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Follows `WatchTrustBundle` into `bundles`.
async fn watch_bundle(
    metrics: Arc<Metrics>,
    ca: CaConfig,
    td: trellis_identity::TrustDomain,
    clock: Arc<dyn Clock>,
    bundles: watch::Sender<Arc<TrustBundle>>,
    pacing: Pacing,
    stop: CancellationToken,
) {
    let current = bundles.subscribe();
    follow(
        (CaStream::TrustBundle, metrics),
        ca,
        clock,
        current,
        pacing,
        stop,
        |mut client| async move { client.watch_trust_bundle(WatchTrustBundleRequest {}).await },
        |message| {
            let bundle = bundle_from_proto(&td, message)?;
            if bundle.version() != bundles.borrow().version() {
                bundles.send_replace(Arc::new(bundle));
            }
            Ok(())
        },
    )
    .await;
}

/// Follows `WatchRevocations` into `revoked`.
async fn watch_revocations(
    metrics: Arc<Metrics>,
    ca: CaConfig,
    clock: Arc<dyn Clock>,
    bundles: watch::Receiver<Arc<TrustBundle>>,
    revoked: watch::Sender<Revoked>,
    pacing: Pacing,
    stop: CancellationToken,
) {
    follow(
        (CaStream::Revocations, metrics),
        ca,
        clock,
        bundles,
        pacing,
        stop,
        |mut client| async move { client.watch_revocations(WatchRevocationsRequest {}).await },
        |list| {
            let set: HashSet<String> = list.revoked.into_iter().map(|r| r.serial).collect();
            revoked.send_if_modified(|current| {
                if **current == set {
                    return false;
                }
                *current = Arc::new(set);
                true
            });
            Ok(())
        },
    )
    .await;
}

/// When to renew: 40–60 % into the lifetime, the fraction taken from the serial's random
/// bits so it is spread across a fleet yet stable for one certificate.
pub fn renew_at(creds: &Credentials) -> SystemTime {
    let lifetime = creds
        .svid
        .not_after
        .duration_since(creds.not_before)
        .unwrap_or_default();
    let spread = creds
        .svid
        .serial
        .get(2..6)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0x8000);
    let fraction = 0.4 + 0.2 * (f64::from(spread & 0xffff) / 65_535.0);
    creds.not_before + lifetime.mul_f64(fraction)
}

/// Capped exponential backoff with jitter: a random delay in [½, 1] × min(cap, base·2ⁿ).
pub fn backoff(pacing: Pacing, failures: u32) -> Duration {
    let exp = pacing
        .backoff_base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let ceiling = exp.min(pacing.backoff_cap);
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    ceiling.mul_f64(0.5 + f64::from(byte[0]) / 510.0)
}

/// Sleeps until `clock` reaches `deadline`, in slices of at most `tick`, so a moved clock
/// (tests) or a suspended machine (laptops) is noticed promptly.
async fn sleep_until(clock: &Arc<dyn Clock>, deadline: SystemTime, tick: Duration) {
    loop {
        let Ok(left) = deadline.duration_since(clock.now()) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(tick)).await;
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let pacing = Pacing {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            ..Pacing::default()
        };
        for _ in 0..50 {
            let first = backoff(pacing, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let late = backoff(pacing, 30);
            assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        }
    }

    #[test]
    fn the_streams_reconnect_within_a_second_while_renewals_back_off_to_15s() {
        let pacing = Pacing::default();
        assert_eq!(pacing.backoff_cap, Duration::from_secs(15));
        assert!(pacing.stream_backoff_cap <= Duration::from_secs(1));
        let streams = Pacing {
            backoff_cap: pacing.stream_backoff_cap,
            ..pacing
        };
        for _ in 0..50 {
            let late = backoff(streams, 30);
            assert!(late >= pacing.stream_backoff_cap / 2 && late <= pacing.stream_backoff_cap);
        }
    }
}
