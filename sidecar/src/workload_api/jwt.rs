//! The JWT-SVID profile of the SPIFFE Workload API:
//! `FetchJWTSVID` asks the CA to sign a token for the sidecar's identity over mTLS with the
//! current certificate (the CA takes `sub` from it) and caches it per audience set until
//! its half-life; `FetchJWTBundles` and `ValidateJWTSVID` work from the JWT keys of the
//! trust bundle the agent follows.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};
use trellis_identity::clock::Clock;
use trellis_identity::jwt_svid::{self, JwtSvidError};
use trellis_proto::ca::v1::MintJwtSvidRequest;
use zeroize::Zeroizing;

use crate::agent::ca_client;
use crate::config::CaConfig;
use crate::credentials::Credentials;

/// Distinct audience sets kept in the cache; past this, expired entries go, then all.
const CACHE_ENTRIES: usize = 1024;
/// How long one call to the CA may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// JWT-SVIDs for the Workload API: minted by the CA, cached per audience set.
pub struct JwtSvids {
    ca: CaConfig,
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<BTreeSet<String>, Cached>>,
}

impl std::fmt::Debug for JwtSvids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvids")
            .field("ca", &self.ca.address)
            .finish_non_exhaustive()
    }
}

/// A token and when to stop handing it out.
struct Cached {
    token: Zeroizing<String>,
    spiffe_id: String,
    /// Half-way between `iat` and `exp`.
    refresh_at: u64,
    exp: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtSvids {
    /// Mints through the CA named by `ca`, on `clock`.
    pub fn new(ca: CaConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            ca,
            clock,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A token for `audience` (not empty) with the identity of `creds`: from the cache
    /// before its half-life, else freshly signed by the CA.
    pub async fn fetch(
        &self,
        creds: &Credentials,
        audience: Vec<String>,
    ) -> Result<(String, Zeroizing<String>), Status> {
        let key: BTreeSet<String> = audience.into_iter().collect();
        let spiffe_id = creds.svid.spiffe_id.to_string();
        let now = unix(self.clock.now());
        if let Some(hit) = self
            .lock()
            .get(&key)
            .filter(|c| c.spiffe_id == spiffe_id && now < c.refresh_at)
        {
            return Ok((hit.spiffe_id.clone(), hit.token.clone()));
        }
        let mut client = ca_client(
            &self.ca,
            &self.clock,
            creds.bundle.clone(),
            Some(&creds.identity),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the CA for a JWT-SVID: {e}")))?;
        let call = client.mint_jwt_svid(MintJwtSvidRequest {
            audience: key.iter().cloned().collect(),
            ttl_seconds: 0,
        });
        let minted = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| Status::unavailable("the CA did not answer a JWT-SVID request in time"))?
            .map_err(|s| {
                let code = match s.code() {
                    Code::InvalidArgument => Code::InvalidArgument,
                    Code::Unauthenticated | Code::PermissionDenied => Code::PermissionDenied,
                    _ => Code::Unavailable,
                };
                Status::new(code, format!("the CA refused a JWT-SVID: {}", s.message()))
            })?
            .into_inner();
        let token = Zeroizing::new(minted.token.clone());
        let secs = |t: Option<prost_types::Timestamp>| {
            t.map(|t| u64::try_from(t.seconds).unwrap_or(0))
                .unwrap_or(0)
        };
        let (iat, exp) = (secs(minted.issued_at), secs(minted.expires_at));
        let mut cache = self.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.exp > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                token: token.clone(),
                spiffe_id: minted.spiffe_id.clone(),
                refresh_at: iat + exp.saturating_sub(iat) / 2,
                exp,
            },
        );
        Ok((minted.spiffe_id, token))
    }

    /// Validates `token` for `audience` against the JWT keys of `creds`' bundle (or of the
    /// federated trust domain its subject names), now.
    pub fn validate(
        &self,
        creds: &Credentials,
        token: &str,
        audience: &str,
    ) -> Result<jwt_svid::ValidatedJwtSvid, JwtSvidError> {
        jwt_svid::validate_federated(token, audience, &creds.bundle, self.clock.now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BTreeSet<String>, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A JSON value as a protobuf `Value` (for the claims of `ValidateJWTSVID`).
pub fn to_proto_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_proto_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(to_proto_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a protobuf `Struct`.
pub fn to_proto_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, to_proto_value(v)))
            .collect(),
    }
}
