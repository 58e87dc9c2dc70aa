//! The sidecar's inbound accept path on arbitrary client bytes: the real `serve_inbound`
//! on 127.0.0.1 with a real rustls server config (a workload certificate from a real CA
//! hierarchy) and a deny-mode policy, plus a permissive listener that forwards plaintext to
//! an echo app. Each input is sent on one fresh connection to each listener, then the
//! client half-closes.
//!
//! Invariants: no panic in the sidecar (a panicking connection task fails the run); the
//! strict listener never forwards anything to the app and closes every connection within
//! its handshake timeout; the permissive listener echoes a plaintext input byte-exactly.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use trellis_identity::clock::SystemClock;
use trellis_identity::profile::{LeafSpec, SigningCa, new_intermediate, new_root};
use trellis_identity::tls::KeyExchange;
use trellis_identity::{IdMatcher, IdPattern, SpiffeId, TrustBundle, TrustDomain, WorkloadKey};
use trellis_sidecar::config::{InboundConfig, PolicyMode, Timeouts};
use trellis_sidecar::credentials::Credentials;
use trellis_sidecar::metrics::Metrics;
use trellis_sidecar::proxy::{Context, Registry};

const TD: &str = "fuzz.local";
/// The sidecar's handshake timeout; a connection must be closed well within `READ_LIMIT`.
const HANDSHAKE: Duration = Duration::from_millis(1500);
const READ_LIMIT: Duration = Duration::from_secs(10);

struct Mesh {
    runtime: Runtime,
    strict: SocketAddr,
    permissive: SocketAddr,
    /// Connections the echo app accepted from the strict listener's side.
    app_accepted: Arc<AtomicUsize>,
}

fn credentials() -> Arc<Credentials> {
    let td = TrustDomain::new(TD).expect("trust domain");
    let start = SystemTime::now() - Duration::from_secs(3600);
    let year = Duration::from_secs(365 * 86_400);
    let root = new_root(&td, start, year).expect("root");
    let root_cert = root.cert.clone();
    let root = SigningCa::new(root.cert, root.key).expect("root signer");
    let inter = new_intermediate(&td, &root, start, year).expect("intermediate");
    let inter = SigningCa::new(inter.cert, inter.key).expect("intermediate signer");
    let bundle = Arc::new(TrustBundle::new(td, 1, vec![root_cert]).expect("bundle"));
    let key = WorkloadKey::generate().expect("key");
    let spki = key.public_key_der();
    let spec = LeafSpec {
        spiffe_id: SpiffeId::new("spiffe://fuzz.local/ns/fuzz/sa/server").expect("ID"),
        dns_names: Vec::new(),
        // The SPKI's BIT STRING ends with the 65-byte uncompressed point.
        public_point: spki[spki.len() - 65..].to_vec(),
        lifetime: Duration::from_secs(24 * 3600),
    };
    let leaf = inter.sign_leaf(&spec, SystemTime::now()).expect("leaf");
    Arc::new(
        Credentials::new(
            vec![leaf.der, inter.cert.clone()],
            key.private_key_der(),
            &spki,
            bundle,
            None,
            Arc::new(SystemClock),
            KeyExchange::default(),
        )
        .expect("credentials"),
    )
}

async fn echo_app(accepted: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn listener(app: SocketAddr, permissive: bool, ctx: Context) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind inbound");
    let listen = listener.local_addr().expect("inbound addr");
    let allow = IdMatcher(vec![
        "spiffe://fuzz.local/ns/fuzz/sa/client"
            .parse::<IdPattern>()
            .expect("pattern"),
    ]);
    let config = InboundConfig {
        listen,
        app: Some(app),
        mode: PolicyMode::Deny,
        allow,
        capture: false,
        ports: Vec::new(),
        permissive_plaintext: permissive,
        max_connections: 64,
    };
    let td = TrustDomain::new(TD).expect("trust domain");
    tokio::spawn(trellis_sidecar::inbound::serve_inbound(
        listener, config, td, ctx,
    ));
    listen
}

fn mesh() -> &'static Mesh {
    static MESH: std::sync::OnceLock<Mesh> = std::sync::OnceLock::new();
    MESH.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let app_accepted = Arc::new(AtomicUsize::new(0));
        let (strict, permissive) = runtime.block_on(async {
            let timeouts = Timeouts {
                handshake: HANDSHAKE,
                connect: Duration::from_secs(2),
                idle: Duration::from_secs(5),
                drain: Duration::from_secs(1),
            };
            let ctx = |creds| {
                let (_tx, rx) = tokio::sync::watch::channel(Some(creds));
                // The sender lives for the whole run: a closed channel would still be
                // readable, but keep it like the real sidecar does.
                std::mem::forget(_tx);
                Context::new(
                    timeouts.clone(),
                    rx,
                    Arc::new(Metrics::default()),
                    Registry::new(),
                    CancellationToken::new(),
                )
            };
            let creds = credentials();
            let strict_app = echo_app(app_accepted.clone()).await;
            let strict = listener(strict_app, false, ctx(creds.clone())).await;
            let open_app = echo_app(Arc::new(AtomicUsize::new(0))).await;
            let permissive = listener(open_app, true, ctx(creds)).await;
            (strict, permissive)
        });
        Mesh {
            runtime,
            strict,
            permissive,
            app_accepted,
        }
    })
}

/// Sends `data`, half-closes, and reads until the server closes (or `READ_LIMIT`).
async fn exchange(addr: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything (a refusal): write errors are fine.
    let _ = stream.write_all(data).await;
    let _ = stream.shutdown().await;
    let mut received = Vec::new();
    match tokio::time::timeout(READ_LIMIT, stream.read_to_end(&mut received)).await {
        Err(_) => None,
        Ok(_) => Some(received),
    }
}

fuzz_target!(|data: &[u8]| {
    let mesh = mesh();
    mesh.runtime.block_on(async {
        let strict = exchange(mesh.strict, data).await;
        assert!(
            strict.is_some(),
            "the strict listener kept a connection open past its handshake timeout"
        );
        assert_eq!(
            mesh.app_accepted.load(Ordering::SeqCst),
            0,
            "the strict listener forwarded an unauthenticated client to the app"
        );
        let open = exchange(mesh.permissive, data).await;
        assert!(
            open.is_some(),
            "the permissive listener kept a connection open"
        );
        if data.first().is_some_and(|&b| b != 0x16) {
            assert_eq!(
                open.as_deref(),
                Some(data),
                "plaintext was not forwarded byte-exactly"
            );
        }
    });
});
