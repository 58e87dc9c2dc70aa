//! Kubernetes service-account attestation: a pod's projected service-account token (a JWT
//! the kubelet requests for audience `trellis-ca` and rotates) is verified offline against
//! the cluster's published signing keys, and its `kubernetes.io` claims become the identity
//! `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
//!
//! Checks, in order, each refusal naming what failed: size and shape; `alg` is RS256 or ES256
//! (never `none`, never HMAC) and no critical header extension; the key id is one of the
//! issuer's keys (kept fresh in the background by [`KeyCache`], which re-reads them, rate
//! limited, when it is not) and the key is of the header's algorithm; the signature
//! (`jsonwebtoken` on aws-lc-rs); then the claims, decoded into [`ServiceAccountClaims`]:
//! `iss`; `aud`; `exp` and `nbf` with a small skew allowance against the injected clock;
//! `kubernetes.io.namespace` and `.serviceaccount.name` present, agreeing with `sub`, and
//! allowed by the configuration.
//!
//! Token format: <https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens>

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use trellis_identity::{SpiffeId, TrustDomain};

use super::jwks::KeySource;
use super::refresh::KeyCache;

/// Tokens longer than this are refused before any parsing (Kubernetes tokens are ~1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

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
    /// The longest a request waits for reads of the keys (the first one after start, or the
    /// one it asked for); past it the request is answered with what is known.
    pub fetch_wait: Duration,
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

/// The claims of a projected service-account token, as the API server issues them.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccountClaims {
    pub iss: Option<String>,
    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub sub: Option<String>,
    pub aud: Option<Audience>,
    pub exp: Option<NumericDate>,
    pub nbf: Option<NumericDate>,
    pub iat: Option<NumericDate>,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Option<KubernetesClaim>,
}

/// `aud`: one string or a list (RFC 7519, section 4.1.3).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Seconds since the epoch (RFC 7519, section 2); a fraction is allowed and dropped.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "f64")]
pub struct NumericDate(pub u64);

impl TryFrom<f64> for NumericDate {
    type Error = &'static str;
    fn try_from(seconds: f64) -> Result<Self, Self::Error> {
        if seconds.is_finite() && (0.0..1e15).contains(&seconds) {
            Ok(Self(seconds as u64))
        } else {
            Err("not a number of seconds since 1970")
        }
    }
}

/// The `kubernetes.io` claim: what the token is bound to.
#[derive(Debug, Clone, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: Option<String>,
    pub pod: Option<ObjectRef>,
    pub serviceaccount: Option<ObjectRef>,
}

/// A Kubernetes object the token names.
#[derive(Debug, Clone, Deserialize)]
pub struct ObjectRef {
    pub name: Option<String>,
    pub uid: Option<String>,
}

/// Verifies service-account tokens; one per CA, shared by every request.
pub struct Attestor {
    config: KubernetesConfig,
    keys: KeyCache,
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

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl Attestor {
    /// Starts reading the keys in the background (on the current Tokio runtime).
    pub fn new(config: KubernetesConfig) -> Self {
        let keys = KeyCache::start(
            config.keys.clone(),
            config.refresh,
            config.min_refresh,
            config.fetch_wait,
        );
        Self { config, keys }
    }

    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    /// The key refresh counters, for the metrics endpoint.
    pub fn key_stats(&self) -> &super::refresh::RefreshStats {
        self.keys.stats()
    }

    /// Verifies a token at `now` and maps it to an identity in `trust_domain`.
    pub async fn attest(
        &self,
        token: &str,
        now: SystemTime,
        trust_domain: &TrustDomain,
    ) -> Result<Attested, AttestError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(refused(format!(
                "token is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        // An `alg` jsonwebtoken does not know, "none" among them, fails here.
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidToken => refused("not a JWT: expected three dot-separated parts"),
            _ => refused(format!(
                "JWT header refused ({e}): only RS256 or ES256 tokens with a kid are accepted, \
                 never unsigned ones"
            )),
        })?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(refused(format!(
                "token algorithm {:?} is not accepted (RS256 or ES256)",
                header.alg
            )));
        }
        if header.crit.is_some() {
            return Err(refused(
                "JWT header has critical extensions, which are not supported",
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| refused("JWT header has no kid (key id)"))?;
        // One deadline for every read this request waits for.
        let deadline = self.keys.deadline();
        let mut keys = self
            .keys
            .current(deadline)
            .await
            .map_err(|e| AttestError::Unavailable(e.0))?;
        if keys.get(&kid).is_none()
            && let Some(newer) = self.keys.reread(deadline).await
        {
            keys = newer;
        }
        let key = keys.get(&kid).ok_or_else(|| {
            refused(format!(
                "signed by unknown key {kid:?}, not one of the issuer's {} keys",
                keys.len()
            ))
        })?;
        if key.alg != header.alg {
            return Err(refused(format!(
                "key {kid:?} is for {:?} but the token says {:?}",
                key.alg, header.alg
            )));
        }
        let mut validation = Validation::new(key.alg);
        // The claims are checked below against the injected clock, with messages that name
        // the value at fault; jsonwebtoken checks the algorithm and the signature.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let claims = jsonwebtoken::decode::<ServiceAccountClaims>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidRsaKey(_) => refused(format!("bad signature (key {kid:?})")),
                _ => refused(format!("JWT claims refused: {e}")),
            })?
            .claims;
        self.check_claims(&claims, now, trust_domain)
    }

    fn check_claims(
        &self,
        claims: &ServiceAccountClaims,
        now: SystemTime,
        trust_domain: &TrustDomain,
    ) -> Result<Attested, AttestError> {
        let config = &self.config;
        match claims.iss.as_deref() {
            Some(iss) if iss == config.issuer => {}
            Some(iss) => {
                return Err(refused(format!(
                    "issuer {iss:?} is not the configured {:?}",
                    config.issuer
                )));
            }
            None => return Err(refused("no iss (issuer) claim")),
        }
        let audiences: &[String] = match &claims.aud {
            Some(Audience::One(a)) => std::slice::from_ref(a),
            Some(Audience::Many(list)) => list,
            None => return Err(refused("no aud (audience) claim")),
        };
        if !audiences.contains(&config.audience) {
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
        let NumericDate(exp) = claims.exp.ok_or_else(|| refused("no exp (expiry) claim"))?;
        if now >= exp.saturating_add(skew) {
            return Err(refused(format!(
                "expired {} s ago",
                now.saturating_sub(exp)
            )));
        }
        if let Some(NumericDate(nbf)) = claims.nbf
            && nbf > now.saturating_add(skew)
        {
            return Err(refused(format!(
                "not valid for another {} s (nbf)",
                nbf - now
            )));
        }
        let k8s = claims.kubernetes.as_ref().ok_or_else(|| {
            refused("no kubernetes.io claim: not a Kubernetes service-account token")
        })?;
        let namespace = k8s
            .namespace
            .as_deref()
            .ok_or_else(|| refused("no kubernetes.io.namespace claim"))?;
        let service_account = k8s
            .serviceaccount
            .as_ref()
            .and_then(|sa| sa.name.as_deref())
            .ok_or_else(|| refused("no kubernetes.io.serviceaccount.name claim"))?;
        if !is_dns_label(namespace) || !is_dns_label(service_account) {
            return Err(refused(
                "namespace or service account name is not a DNS name",
            ));
        }
        let expected_sub = format!("system:serviceaccount:{namespace}:{service_account}");
        if claims.sub.as_deref() != Some(expected_sub.as_str()) {
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
            pod: k8s.pod.as_ref().and_then(|p| p.name.clone()),
        })
    }
}
