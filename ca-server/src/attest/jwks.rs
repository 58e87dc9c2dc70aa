//! Where the cluster's service-account signing keys come from: a JWK Set file, or the API
//! server's JWKS endpoint over HTTPS (`/openid/v1/jwks`, readable with the built-in
//! `system:service-account-issuer-discovery` role), verified against a given CA file.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use trellis_identity::pem;

use super::jwt::KeySet;

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
