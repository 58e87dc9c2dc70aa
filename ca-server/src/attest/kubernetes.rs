//! Kubernetes service-account attestation: a pod's projected service-account token (a JWT
//! the kubelet requests for audience `trellis-ca` and rotates) is verified offline against
//! the cluster's published signing keys, and its `kubernetes.io` claims become the identity
//! `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
//!
//! Checks, in order, each refusal naming what failed: size and shape; `alg` is RS256 or ES256
//! (never `none`); the key id is one of the issuer's keys (the set is re-fetched, rate
//! limited, when it is not); the signature; `iss`; `aud`; `exp` and `nbf` with a small skew
//! allowance; `kubernetes.io.namespace` and `.serviceaccount.name` present, agreeing with
//! `sub`, and allowed by the configuration.
//!
//! Token format: <https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens>

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use trellis_identity::{SpiffeId, TrustDomain};

use super::jwks::{self, KeySource};
use super::jwt::{self, KeySet};

/// Validated `[kubernetes]` settings.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// The `iss` the tokens must carry (the API server's `--service-account-issuer`).
    pub issuer: String,
    /// The audience the tokens must be minted for.
    pub audience: String,
    /// Where the signing keys come from.
    pub keys: KeySource,
    /// How often the keys are re-read even when every kid is known.
    pub refresh: Duration,
    /// Re-reads for an unknown kid happen at most this often.
    pub min_refresh: Duration,
    /// Tolerance for clock differences on `exp` and `nbf`.
    pub clock_skew: Duration,
    /// Namespaces whose service accounts may get certificates; empty means all.
    pub allowed_namespaces: Vec<String>,
    /// `namespace/name` (or `namespace/*`) of allowed service accounts; empty means all.
    pub allowed_service_accounts: Vec<String>,
}

/// What a verified token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub spiffe_id: SpiffeId,
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to, if it is bound to one.
    pub pod: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// The token itself is wrong: UNAUTHENTICATED, with the reason.
    #[error("service-account token refused: {0}")]
    Refused(String),
    /// The keys to check it with cannot be had: UNAVAILABLE, try again.
    #[error("cannot verify service-account tokens now: {0}")]
    Unavailable(String),
}

fn refused(reason: impl Into<String>) -> AttestError {
    AttestError::Refused(reason.into())
}

struct Cache {
    keys: Option<Arc<KeySet>>,
    /// When the keys were last loaded successfully.
    loaded: Option<Instant>,
    /// When a load was last attempted, successful or not.
    attempted: Option<Instant>,
    last_error: Option<String>,
}

/// Verifies service-account tokens; one per CA, shared by every request.
pub struct Attestor {
    config: KubernetesConfig,
    cache: Mutex<Cache>,
    /// Serialises loads so a burst of requests with a new kid causes one fetch.
    loading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .field("keys", &self.config.keys)
            .finish_non_exhaustive()
    }
}

fn seconds(claims: &Value, name: &str) -> Result<Option<u64>, AttestError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| refused(format!("claim {name} is not a number of seconds"))),
    }
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl Attestor {
    pub fn new(config: KubernetesConfig) -> Self {
        Self {
            config,
            cache: Mutex::new(Cache {
                keys: None,
                loaded: None,
                attempted: None,
                last_error: None,
            }),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    fn cached(&self) -> (Option<Arc<KeySet>>, bool, bool) {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = cache
            .loaded
            .is_none_or(|t| t.elapsed() >= self.config.refresh);
        let may_retry = cache
            .attempted
            .is_none_or(|t| t.elapsed() >= self.config.min_refresh);
        (cache.keys.clone(), stale, may_retry)
    }

    /// Loads the keys unless another caller just did.
    async fn load(&self, force: bool) -> Option<Arc<KeySet>> {
        let _one_at_a_time = self.loading.lock().await;
        let (keys, stale, may_retry) = self.cached();
        if !may_retry || (!force && !stale) {
            return keys;
        }
        let result = jwks::load(&self.config.keys).await;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.attempted = Some(Instant::now());
        match result {
            Ok(set) => {
                tracing::info!(keys = set.len(), source = ?self.config.keys, "service-account signing keys loaded");
                cache.keys = Some(Arc::new(set));
                cache.loaded = Some(Instant::now());
                cache.last_error = None;
            }
            Err(e) => {
                // Keep the keys we have: the issuer rotating keys is rare, an outage of the
                // endpoint is not, and refusing every pod during it helps nobody.
                tracing::warn!(error = %e, source = ?self.config.keys, "cannot load service-account signing keys");
                cache.last_error = Some(e);
            }
        }
        cache.keys.clone()
    }

    /// Verifies a token at `now` and maps it to an identity in `trust_domain`.
    pub async fn attest(
        &self,
        token: &str,
        now: SystemTime,
        trust_domain: &TrustDomain,
    ) -> Result<Attested, AttestError> {
        let unverified = jwt::parse(token.trim()).map_err(refused)?;
        let (mut keys, stale, _) = self.cached();
        if keys.is_none() || stale {
            keys = self.load(false).await;
        }
        let known = keys
            .as_ref()
            .is_some_and(|k| k.get(&unverified.kid).is_some());
        if !known {
            // Perhaps the issuer rotated its keys since we last looked.
            keys = self.load(true).await;
        }
        let Some(keys) = keys else {
            let error = self
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last_error
                .clone()
                .unwrap_or_else(|| "no keys loaded yet".into());
            return Err(AttestError::Unavailable(error));
        };
        let key = keys.get(&unverified.kid).ok_or_else(|| {
            refused(format!(
                "signed by unknown key {:?}, not one of the issuer's {} keys",
                unverified.kid,
                keys.len()
            ))
        })?;
        let claims = unverified.verify(&key.key).map_err(refused)?;
        self.check_claims(&claims, now, trust_domain)
    }

    fn check_claims(
        &self,
        claims: &Value,
        now: SystemTime,
        trust_domain: &TrustDomain,
    ) -> Result<Attested, AttestError> {
        let config = &self.config;
        match claims.get("iss").and_then(Value::as_str) {
            Some(iss) if iss == config.issuer => {}
            Some(iss) => {
                return Err(refused(format!(
                    "issuer {iss:?} is not the configured {:?}",
                    config.issuer
                )));
            }
            None => return Err(refused("no iss (issuer) claim")),
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => return Err(refused("no aud (audience) claim")),
        };
        if !audiences.contains(&config.audience.as_str()) {
            return Err(refused(format!(
                "audience {audiences:?} does not include {:?}; mount a projected token with \
                 audience {:?}",
                config.audience, config.audience
            )));
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let skew = config.clock_skew.as_secs();
        let exp = seconds(claims, "exp")?.ok_or_else(|| refused("no exp (expiry) claim"))?;
        if now >= exp.saturating_add(skew) {
            return Err(refused(format!(
                "expired {} s ago",
                now.saturating_sub(exp)
            )));
        }
        if let Some(nbf) = seconds(claims, "nbf")?
            && nbf > now.saturating_add(skew)
        {
            return Err(refused(format!(
                "not valid for another {} s (nbf)",
                nbf - now
            )));
        }
        let k8s = claims.get("kubernetes.io").ok_or_else(|| {
            refused("no kubernetes.io claim: not a Kubernetes service-account token")
        })?;
        let namespace = k8s
            .get("namespace")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("no kubernetes.io.namespace claim"))?;
        let service_account = k8s
            .pointer("/serviceaccount/name")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("no kubernetes.io.serviceaccount.name claim"))?;
        if !is_dns_label(namespace) || !is_dns_label(service_account) {
            return Err(refused(
                "namespace or service account name is not a DNS name",
            ));
        }
        let expected_sub = format!("system:serviceaccount:{namespace}:{service_account}");
        if claims.get("sub").and_then(Value::as_str) != Some(expected_sub.as_str()) {
            return Err(refused(format!(
                "sub does not match the kubernetes.io claims ({expected_sub:?})"
            )));
        }
        if !config.allowed_namespaces.is_empty()
            && !config.allowed_namespaces.iter().any(|n| n == namespace)
        {
            return Err(refused(format!(
                "namespace {namespace:?} is not in kubernetes.allowed_namespaces"
            )));
        }
        if !config.allowed_service_accounts.is_empty()
            && !config.allowed_service_accounts.iter().any(|pattern| {
                pattern == &format!("{namespace}/{service_account}")
                    || pattern == &format!("{namespace}/*")
            })
        {
            return Err(refused(format!(
                "service account {namespace}/{service_account} is not in \
                 kubernetes.allowed_service_accounts"
            )));
        }
        let spiffe_id = trust_domain
            .id(&format!("/ns/{namespace}/sa/{service_account}"))
            .map_err(|e| refused(format!("cannot form a SPIFFE ID: {e}")))?;
        Ok(Attested {
            spiffe_id,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod: k8s
                .pointer("/pod/name")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}
