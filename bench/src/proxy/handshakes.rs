//! Full mTLS handshakes per second at an inbound port: a client with a CA-issued
//! certificate opening fresh connections with resumption disabled, a few at a time. Each
//! connection also echoes one byte, so it counts only once the server has verified the
//! client's certificate and reached the app (TLS 1.3 clients finish before the server has
//! checked their certificate).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{IdMatcher, SpiffeId, TrustBundle};

/// What a handshake run measured.
#[derive(Debug)]
pub struct Handshakes {
    pub done: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// The negotiated suite and key exchange group, e.g. `TLS13_AES_256_GCM_SHA384/X25519`.
    pub negotiated: String,
    /// The first error, for the report.
    pub first_error: Option<String>,
}

impl Handshakes {
    /// Adds another run's counts (the first run's negotiation stays).
    pub fn add(&mut self, other: Handshakes) {
        self.done += other.done;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn per_second(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }
}

/// A TLS 1.3 client config presenting `identity`, accepting only a server whose chain
/// leads to `bundle` and whose SPIFFE ID is `server`, never resuming a session.
pub fn client_config(
    bundle: Arc<TrustBundle>,
    server: SpiffeId,
    identity: &Identity,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut config = tls::client_config(
        bundle,
        IdMatcher::exact(server),
        Some(identity),
        Versions::Tls13,
        // The sidecar's inbound refuses a client that does not offer its ALPN; the peers
        // ignore an offer they were not configured for.
        &[trellis_sidecar::credentials::ALPN_TRELLIS],
    )?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

async fn one(connector: &TlsConnector, addr: SocketAddr) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let mut tls = connector.connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let negotiated = format!(
        "{:?}/{:?}",
        conn.negotiated_cipher_suite()
            .map(|s| s.suite())
            .context("no suite")?,
        conn.negotiated_key_exchange_group()
            .map(|g| g.name())
            .context("no group")?
    );
    tls.write_all(b"h").await?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await?;
    tls.shutdown().await?;
    Ok(negotiated)
}

/// Runs `concurrency` clients until `max` handshakes are done or `max_time` has passed.
pub async fn run(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    concurrency: usize,
    max: usize,
    max_time: Duration,
) -> anyhow::Result<Handshakes> {
    let connector = TlsConnector::from(config);
    let negotiated = one(&connector, addr)
        .await
        .with_context(|| format!("a mutual-TLS handshake with {addr}"))?;
    let remaining = Arc::new(AtomicUsize::new(max));
    let started = Instant::now();
    let deadline = started + max_time;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let connector = connector.clone();
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move {
            let (mut done, mut errors, mut first_error) = (0, 0, None);
            while Instant::now() < deadline
                && remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left.max(Duration::from_secs(1)), one(&connector, addr))
                    .await
                {
                    Ok(Ok(_)) => done += 1,
                    Ok(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert(format!("{e:#}"));
                    }
                    Err(_) => {
                        errors += 1;
                        first_error.get_or_insert("timed out".to_owned());
                    }
                }
            }
            (done, errors, first_error)
        }));
    }
    let mut result = Handshakes {
        done: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        negotiated,
        first_error: None,
    };
    for task in tasks {
        let (done, errors, first_error) = task.await?;
        result.done += done;
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed = started.elapsed();
    Ok(result)
}
