//! A tonic channel over TLS with a caller-supplied rustls config, so that the CA is
//! verified by SPIFFE ID (see `trellis_identity::tls`) rather than by host name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

/// The ALPN protocol gRPC runs over.
pub const ALPN_H2: &[u8] = b"h2";

/// How long to wait for TCP connect plus the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn endpoint(target: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{target}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10)))
}

fn connector(
    target: String,
    tls: Arc<ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let tls = TlsConnector::from(tls);
    tower::service_fn(move |_uri: http::Uri| {
        let (tls, target) = (tls.clone(), target.clone());
        async move {
            // Resolved on every connection, so a DNS name follows the service it names.
            let tcp = TcpStream::connect(target.as_str()).await?;
            tcp.set_nodelay(true)?;
            // The name is not checked (the verifier checks the SPIFFE ID); it only fills SNI.
            let name = ServerName::try_from("trellis-ca").expect("static DNS name is valid");
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        }
    })
}

/// Connects now; fails if the CA cannot be reached or its certificate is refused.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    connect_to(&addr.to_string(), tls).await
}

/// [`connect`] to `HOST:PORT`, where the host may be a DNS name.
pub async fn connect_to(
    target: &str,
    tls: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    endpoint(target)?
        .connect_with_connector(connector(target.to_owned(), tls))
        .await
}

/// Connects on first use and reconnects after failures: for long-running clients.
pub fn connect_lazy(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let target = addr.to_string();
    Ok(endpoint(&target)?.connect_with_connector_lazy(connector(target, tls)))
}
