//! Helpers for the data-path tests: a real CA hierarchy, sidecars on 127.0.0.1:0, apps,
//! raw TLS peers, and retry-until-deadline.

#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use trellis_identity::clock::SystemClock;
use trellis_identity::profile::{LeafSpec, SigningCa, new_intermediate, new_root};
use trellis_identity::tls::{self, Identity, KeyExchange, SpiffeClientVerifier, Versions};
use trellis_identity::{IdMatcher, SpiffeId, TrustBundle, TrustDomain, WorkloadKey};
use trellis_sidecar::config::{InboundConfig, OutboundConfig, PolicyMode, Timeouts};
use trellis_sidecar::credentials::{ALPN_TRELLIS, Credentials};
use trellis_sidecar::metrics::Metrics;
use trellis_sidecar::proxy::{Context, Registry, Workers};

pub const TD: &str = "test.local";
/// Upper bound for anything the tests wait on.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn id(path: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://{TD}{path}")).unwrap()
}

/// Retries `check` until it holds or [`DEADLINE`] passes.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `f` with [`DEADLINE`] as an upper bound.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// -------------------------------------------------------------------------------------
// Certificates.

/// A root and an intermediate of one trust domain, made ten minutes ago.
pub struct Pki {
    pub intermediate: SigningCa,
    pub bundle: Arc<TrustBundle>,
}

/// A workload certificate with its key.
pub struct Leaf {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: WorkloadKey,
    pub serial: String,
}

impl Pki {
    pub fn new() -> Self {
        let td = TrustDomain::new(TD).unwrap();
        let start = SystemTime::now() - Duration::from_secs(86_400);
        let year = Duration::from_secs(365 * 86_400);
        let root = new_root(&td, start, year).unwrap();
        let root_cert = root.cert.clone();
        let root = SigningCa::new(root.cert, root.key).unwrap();
        let inter = new_intermediate(&td, &root, start, year).unwrap();
        let intermediate = SigningCa::new(inter.cert, inter.key).unwrap();
        let bundle = Arc::new(TrustBundle::new(td, 1, vec![root_cert]).unwrap());
        Self {
            intermediate,
            bundle,
        }
    }

    /// A one-hour leaf for `spiffe://test.local{path}`.
    pub fn issue(&self, path: &str) -> Leaf {
        self.issue_at(path, SystemTime::now(), Duration::from_secs(3600))
    }

    /// A leaf signed as if at `now`.
    pub fn issue_at(&self, path: &str, now: SystemTime, lifetime: Duration) -> Leaf {
        let key = WorkloadKey::generate().unwrap();
        let spki = key.public_key_der();
        // The SPKI's BIT STRING holds the 65-byte uncompressed point at its end.
        let point = spki[spki.len() - 65..].to_vec();
        let spec = LeafSpec {
            spiffe_id: id(path),
            dns_names: Vec::new(),
            public_point: point,
            lifetime,
        };
        let signed = self.intermediate.sign_leaf(&spec, now).unwrap();
        Leaf {
            id: spec.spiffe_id,
            serial: signed.serial_hex(),
            chain: vec![signed.der, self.intermediate.cert.clone()],
            key,
        }
    }

    /// Credentials for a new leaf of `path`, as the identity agent would publish them.
    pub fn credentials(&self, path: &str) -> (Arc<Credentials>, String) {
        let leaf = self.issue(path);
        (leaf.credentials(&self.bundle), leaf.serial)
    }
}

impl Leaf {
    pub fn credentials(&self, bundle: &Arc<TrustBundle>) -> Arc<Credentials> {
        self.credentials_with(bundle, KeyExchange::default())
    }

    /// Credentials whose data-path configs use `key_exchange`.
    pub fn credentials_with(
        &self,
        bundle: &Arc<TrustBundle>,
        key_exchange: KeyExchange,
    ) -> Arc<Credentials> {
        Arc::new(
            Credentials::new(
                self.chain.clone(),
                self.key.private_key_der(),
                &self.key.public_key_der(),
                bundle.clone(),
                None,
                Arc::new(SystemClock),
                key_exchange,
            )
            .unwrap(),
        )
    }

    pub fn identity(&self) -> Identity {
        Identity {
            chain: self.chain.clone(),
            key: self.key.private_key_der(),
        }
    }
}

/// A self-signed X.509-SVID for `spiffe://test.local{path}` (no CA vouches for it).
pub fn self_signed(path: &str) -> Identity {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        id(path).as_str().to_owned().try_into().unwrap(),
    )];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = params.self_signed(&key).unwrap();
    Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

// -------------------------------------------------------------------------------------
// Sidecars.

pub fn timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_secs(5),
        connect: Duration::from_secs(5),
        idle: Duration::from_secs(120),
        drain: Duration::from_secs(5),
    }
}

/// One sidecar's data path: credentials channel, metrics, registry and listeners.
pub struct Sidecar {
    pub creds: watch::Sender<Option<Arc<Credentials>>>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub shutdown: CancellationToken,
    pub ctx: Context,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Sidecar {
    pub fn new(creds: Option<Arc<Credentials>>, timeouts: Timeouts) -> Self {
        let (tx, rx) = watch::channel(creds);
        let metrics = Arc::new(Metrics::default());
        let registry = Registry::new();
        let shutdown = CancellationToken::new();
        let mut ctx = Context::new(
            timeouts,
            rx,
            metrics.clone(),
            registry.clone(),
            shutdown.clone(),
        );
        // Two runtimes, as the sidecar runs on two cores: connections alternate between
        // the test's runtime and a worker thread's.
        ctx.workers = Workers::start(2).expect("worker thread");
        Self {
            creds: tx,
            metrics,
            registry,
            shutdown,
            ctx,
            tasks: Vec::new(),
        }
    }

    pub fn publish(&self, creds: Arc<Credentials>) {
        self.creds.send_replace(Some(creds));
    }

    /// Starts an inbound listener forwarding to `app`.
    pub async fn inbound(
        &mut self,
        app: SocketAddr,
        mode: PolicyMode,
        allow: IdMatcher,
        permissive_plaintext: bool,
        max_connections: usize,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let config = InboundConfig {
            listen,
            app: Some(app),
            mode,
            allow,
            capture: false,
            ports: Vec::new(),
            permissive_plaintext,
            max_connections,
        };
        self.tasks
            .push(tokio::spawn(trellis_sidecar::inbound::serve_inbound(
                listener,
                config,
                TrustDomain::new(TD).unwrap(),
                self.ctx.clone(),
            )));
        listen
    }

    /// A strict inbound listener with no allow list.
    pub async fn strict_inbound(&mut self, app: SocketAddr) -> SocketAddr {
        self.inbound(app, PolicyMode::Strict, IdMatcher::default(), false, 1000)
            .await
    }

    /// Starts an outbound listener towards `upstream`, which must present `allow`.
    pub async fn outbound(&mut self, upstream: SocketAddr, allow: IdMatcher) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let config = OutboundConfig {
            listen,
            upstream: upstream.to_string(),
            allow,
            max_connections: 1000,
        };
        self.tasks
            .push(tokio::spawn(trellis_sidecar::outbound::serve_outbound(
                listener,
                config,
                self.ctx.clone(),
            )));
        listen
    }

    /// Starts the admin endpoint.
    pub async fn admin(&mut self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = trellis_sidecar::admin::serve_admin(
            listener,
            self.ctx.creds.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
            Default::default(),
        );
        self.tasks.push(tokio::spawn(async move {
            task.await.unwrap();
        }));
        addr
    }

    pub fn handshakes(&self, inbound: bool, ok: bool, reason: &str) -> u64 {
        use trellis_sidecar::metrics::Direction;
        let d = if inbound {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        self.metrics.handshake_count(d, ok, reason)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

// -------------------------------------------------------------------------------------
// Apps and clients.

/// An echo app; counts the connections it accepted.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Echoes every byte until EOF, then shuts down its write half.
pub async fn echo_app() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
                    let _ = wr.shutdown().await;
                }
            });
        }
    });
    Echo {
        addr,
        accepted,
        task,
    }
}

/// Reads until EOF, then answers with the number of bytes read (so the answer proves the
/// EOF arrived, and travels after the client's half-close).
pub async fn count_then_reply_app() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut sink = Vec::new();
                if stream.read_to_end(&mut sink).await.is_ok() {
                    let reply = format!("got {} bytes", sink.len());
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    Echo {
        addr,
        accepted,
        task,
    }
}

/// Deterministic non-repeating-looking bytes.
pub fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Connects to `addr`, sends `data` while reading, half-closes, and returns everything
/// read until EOF.
pub async fn send_and_collect(addr: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await?;
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await?;
    // Keep the write half alive until the read side is done (dropping it is harmless
    // after shutdown, but join to surface write errors).
    writer.await.unwrap()?;
    Ok(out)
}

/// Writes `msg` and reads the same number of bytes back.
pub async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).await?;
    Ok(back)
}

/// True once the peer closed `stream` (EOF or reset), reading and discarding data.
pub async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

/// A raw TLS client config presenting `identity` (or none), trusting `bundle` for the
/// server and accepting any identity in it.
pub fn client_config(bundle: &Arc<TrustBundle>, identity: Option<&Identity>) -> Arc<ClientConfig> {
    let any = IdMatcher(vec![trellis_identity::IdPattern::any_in(
        bundle.trust_domain(),
    )]);
    Arc::new(
        tls::client_config(
            bundle.clone(),
            any,
            identity,
            Versions::Tls13,
            &[ALPN_TRELLIS],
        )
        .unwrap(),
    )
}

/// Connects with raw TLS to an inbound listener, sends `msg`, and returns what came back
/// before the connection ended: `Err` if the handshake or the read failed.
pub async fn tls_exchange(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    tls.write_all(msg).await?;
    tls.shutdown().await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(out)
}

/// A raw TLS 1.3 server presenting `identity`, recording handshakes and application bytes.
pub struct RawTlsServer {
    pub addr: SocketAddr,
    pub handshakes_ok: Arc<AtomicUsize>,
    pub handshakes_failed: Arc<AtomicUsize>,
    pub app_bytes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for RawTlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn raw_tls_server(identity: &Identity, bundle: &Arc<TrustBundle>) -> RawTlsServer {
    let verifier = Arc::new(SpiffeClientVerifier::new(bundle.clone()));
    let config: ServerConfig = tls::server_config(
        identity,
        verifier,
        Versions::Tls13,
        KeyExchange::default(),
        &[ALPN_TRELLIS],
    )
    .unwrap();
    raw_tls_server_with(config).await
}

/// A [`RawTlsServer`] with the given config.
pub async fn raw_tls_server_with(config: ServerConfig) -> RawTlsServer {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (ok2, failed2, bytes2) = (ok.clone(), failed.clone(), bytes.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, ok, failed, bytes) = (
                acceptor.clone(),
                ok2.clone(),
                failed2.clone(),
                bytes2.clone(),
            );
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    failed.fetch_add(1, SeqCst);
                    return;
                };
                ok.fetch_add(1, SeqCst);
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    bytes.fetch_add(n as u64, SeqCst);
                    if tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    RawTlsServer {
        addr,
        handshakes_ok: ok,
        handshakes_failed: failed,
        app_bytes: bytes,
        task,
    }
}

/// Sends a raw HTTP/1.1 GET and returns (status, headers lowercased, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    within("http response", stream.read_to_end(&mut raw))
        .await
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}
