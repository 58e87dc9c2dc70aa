//! One HTTPS GET with a caller-built TLS config, a deadline and a size limit: how the CA
//! reads a foreign trust domain's bundle endpoint and the cluster's service-account keys.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::attest::jwks::HttpsUrl;

/// Fetches `url`, verifying the server with `tls`; the body is refused past `max` bytes and
/// the whole exchange past `timeout`. Errors name the URL and what failed.
pub async fn get(
    url: &HttpsUrl,
    tls: rustls::ClientConfig,
    accept: &str,
    bearer_token: Option<&str>,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, String> {
    tokio::time::timeout(timeout, exchange(url, tls, accept, bearer_token, max))
        .await
        .map_err(|_| format!("{url}: no answer within {}s", timeout.as_secs()))?
}

async fn exchange(
    url: &HttpsUrl,
    tls: rustls::ClientConfig,
    accept: &str,
    bearer_token: Option<&str>,
    max: usize,
) -> Result<Bytes, String> {
    let server_name =
        ServerName::try_from(url.host.clone()).map_err(|e| format!("{url}: host: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("{url}: TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(connection);
    let mut request = http::Request::get(url.path.as_str())
        .header(http::header::HOST, url.authority())
        .header(http::header::ACCEPT, accept);
    if let Some(token) = bearer_token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    Ok(Limited::new(response.into_body(), max)
        .collect()
        .await
        .map_err(|e| format!("{url}: body: {e}"))?
        .to_bytes())
}
