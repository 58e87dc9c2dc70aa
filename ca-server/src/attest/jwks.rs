//! The cluster's service-account signing keys: where they come from (a JWK Set file, or the
//! API server's JWKS endpoint over HTTPS, `/openid/v1/jwks`, readable with the built-in
//! `system:service-account-issuer-discovery` role, verified against a given CA file) and the
//! [`KeySet`] they make, through `jsonwebtoken`'s JWK types ([RFC 7517]).
//!
//! [RFC 7517]: https://www.rfc-editor.org/rfc/rfc7517

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use trellis_identity::pem;

/// A JWK Set larger than this is refused (real ones are a few KiB).
const MAX_JWKS: usize = 1024 * 1024;
/// A fetch must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// An `https://host[:port]/path` URL; the host may be a DNS name, an IPv4 address or a
/// bracketed IPv6 address (`https://[::1]:6443/keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    /// The host without brackets (`::1`), as TLS and `connect` want it.
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl HttpsUrl {
    /// Parses an HTTPS URL with `http::Uri`; anything else (http, userinfo, fragments) is
    /// refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let plain = || format!("{text:?} is not a plain https://host[:port]/path URL");
        // `http::Uri` drops a fragment silently and keeps userinfo in the authority.
        if text.contains('#') {
            return Err(plain());
        }
        let uri: http::Uri = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(format!("{text:?} is not an https:// URL"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(plain());
        }
        // `Authority::port` reads a port that is no u16 (`:70000`) as none; read it here.
        let port = match authority.as_str().get(authority.host().len()..) {
            Some("") => 443,
            Some(p) => {
                let p = p.strip_prefix(':').unwrap_or(p);
                p.parse::<u16>()
                    .map_err(|_| format!("{text:?}: port {p:?} is not a number"))?
            }
            None => return Err(plain()),
        };
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Self {
            host: host.to_owned(),
            port,
            path: if path.is_empty() { "/" } else { path }.to_owned(),
        })
    }

    /// `host:port`, an IPv6 host in brackets: the `Host` header and the URL's authority.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.path)
    }
}

/// Where the signing keys are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWK Set file (for clusters whose endpoint the CA cannot reach, and for tests).
    File(PathBuf),
    /// An HTTPS endpoint.
    Url {
        url: HttpsUrl,
        /// PEM roots to verify the endpoint with.
        ca_file: PathBuf,
        /// A file holding a bearer token to send (the CA's own service-account token, read
        /// fresh on every fetch because the kubelet rotates it).
        bearer_token_file: Option<PathBuf>,
    },
}

/// One signing key of the issuer.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: String,
    /// The one algorithm this key verifies: RS256 for an RSA key, ES256 for a P-256 key.
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({:?}, {:?})", self.kid, self.alg)
    }
}

/// The verification keys of an issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

/// Why a key set could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JWK Set: {0}")]
pub struct KeySetError(String);

/// Just enough of a key to decide whether it is one of ours, before `jsonwebtoken` reads it.
#[derive(Deserialize)]
struct KeyKind {
    kty: Option<String>,
    crv: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
}

impl KeySet {
    /// Parses a JWK Set document. Keys that are not RSA or P-256 signing keys are skipped
    /// (an issuer may publish others); a key that claims to be one but is malformed or weak
    /// (RSA under 2048 bits) is an error, and so is a set with no usable key.
    pub fn parse(json: &[u8]) -> Result<Self, KeySetError> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawSet =
            serde_json::from_slice(json).map_err(|e| KeySetError(format!("not a JWK Set: {e}")))?;
        let mut keys = Vec::new();
        for (i, value) in raw.keys.into_iter().enumerate() {
            let bad = |m: String| KeySetError(format!("key {i}: {m}"));
            let kind = KeyKind::deserialize(&value).map_err(|e| bad(e.to_string()))?;
            if kind.usage.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let (alg, key_alg) = match (kind.kty.as_deref(), kind.crv.as_deref()) {
                (Some("RSA"), _) => (Algorithm::RS256, KeyAlgorithm::RS256),
                (Some("EC"), Some("P-256")) => (Algorithm::ES256, KeyAlgorithm::ES256),
                _ => continue,
            };
            let jwk = Jwk::deserialize(&value).map_err(|e| bad(e.to_string()))?;
            // A key published for another algorithm (RS512, say) is not one we verify with.
            if jwk.common.key_algorithm.is_some_and(|a| a != key_alg) {
                continue;
            }
            let decoded = |field: &str, text: &str| {
                URL_SAFE_NO_PAD
                    .decode(text)
                    .map_err(|_| bad(format!("{field} is not base64url")))
            };
            match &jwk.algorithm {
                AlgorithmParameters::RSA(rsa) => {
                    let n = decoded("n", &rsa.n)?;
                    let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                    if bits < 2048 {
                        return Err(bad(format!(
                            "RSA modulus of {bits} bits; at least 2048 are required"
                        )));
                    }
                    decoded("e", &rsa.e)?;
                }
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    if decoded("x", &ec.x)?.len() != 32 || decoded("y", &ec.y)?.len() != 32 {
                        return Err(bad("P-256 coordinates must be 32 bytes".into()));
                    }
                }
                _ => return Err(bad("kty does not match the key's parameters".into())),
            }
            let key = DecodingKey::from_jwk(&jwk).map_err(|e| bad(e.to_string()))?;
            keys.push(VerifyingKey {
                kid: jwk.common.key_id.unwrap_or_default(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err(KeySetError("no RSA or P-256 signing key in the set".into()));
        }
        Ok(Self { keys })
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Reads the key set once.
pub async fn load(source: &KeySource) -> Result<KeySet, String> {
    let bytes = match source {
        KeySource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        KeySource::Url {
            url,
            ca_file,
            bearer_token_file,
        } => fetch(url, ca_file, bearer_token_file.as_ref())
            .await?
            .to_vec(),
    };
    KeySet::parse(&bytes).map_err(|e| e.to_string())
}

async fn fetch(
    url: &HttpsUrl,
    ca_file: &PathBuf,
    bearer_token_file: Option<&PathBuf>,
) -> Result<Bytes, String> {
    let ca_pem = tokio::fs::read(ca_file)
        .await
        .map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem::certs_from_pem(&ca_pem).map_err(|e| format!("{}: {e}", ca_file.display()))? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(trellis_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let token = match bearer_token_file {
        Some(path) => Some(
            tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    crate::https_get::get(
        url,
        tls,
        "application/json, application/jwk-set+json",
        token.as_deref(),
        MAX_JWKS,
        FETCH_TIMEOUT,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_skip_foreign_keys_and_refuse_weak_ones() {
        let p256 = r#"{"kty":"EC","crv":"P-256","kid":"ec","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#;
        let set = KeySet::parse(
            format!(r#"{{"keys":[{{"kty":"oct","k":"c2VjcmV0"}},{{"kty":"EC","crv":"P-384","x":"","y":""}},{{"kty":"OKP","crv":"Ed25519","x":"AA"}},{p256}]}}"#)
                .as_bytes(),
        )
        .expect("one usable key");
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("ec").map(|k| k.alg), Some(Algorithm::ES256));
        let weak = r#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}"#;
        assert!(
            KeySet::parse(weak.as_bytes())
                .expect_err("weak")
                .to_string()
                .contains("2048")
        );
        let short = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"AAAA","y":"AAAA"}]}"#;
        assert!(
            KeySet::parse(short.as_bytes())
                .expect_err("short")
                .to_string()
                .contains("32 bytes")
        );
        let padded = p256.replace("AAA\"", "AA=\"");
        assert!(KeySet::parse(format!(r#"{{"keys":[{padded}]}}"#).as_bytes()).is_err());
        assert!(KeySet::parse(br#"{"keys":[]}"#).is_err());
        assert!(KeySet::parse(b"[]").is_err());
    }

    #[test]
    fn urls() {
        let u = HttpsUrl::parse("https://kubernetes.default.svc/openid/v1/jwks").expect("ok");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("kubernetes.default.svc", 443, "/openid/v1/jwks")
        );
        let u = HttpsUrl::parse("https://127.0.0.1:6443").expect("ok");
        assert_eq!((u.port, u.path.as_str()), (6443, "/"));
        let u = HttpsUrl::parse("https://[::1]:8443/keys").expect("ok");
        assert_eq!(u.host, "::1");
        assert_eq!(u.to_string(), "https://[::1]:8443/keys");
        // No port: an IPv6 literal's colons are not one.
        let u = HttpsUrl::parse("https://[::1]/keys").expect("ok");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 443, "/keys")
        );
        let u = HttpsUrl::parse("https://[fd00::1:2]/k?x=1").expect("ok");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("fd00::1:2", 443, "/k?x=1")
        );
        for bad in [
            "https://[::1/keys",
            "https://h:70000/",
            "https:///keys",
            "http://x/",
            "https://",
            "https://u@h/",
            "https://h:port/",
            "https://h/#f",
        ] {
            assert!(HttpsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
