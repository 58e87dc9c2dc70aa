//! A small mesh of real binaries for end-to-end tests: a `trellis-ca`, `trellis-sidecar`s
//! configured by TOML files, an echo app that counts what it receives, and admin calls.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::process::Command;

use trellis_e2e::pod_sidecar::outbound_addrs;
use trellis_e2e::{Ca, Process, command, command_with_open_files, ready_path, run};

pub const TD: &str = "cluster.local";
pub const START: Duration = Duration::from_secs(30);

pub fn id(path: &str) -> String {
    format!("spiffe://{TD}{path}")
}

/// An echo server that counts the bytes it received, in all and from peers beyond
/// loopback (which, in a pod under capture, never pass the sidecar).
pub struct Echo {
    pub addr: SocketAddr,
    pub received: Arc<AtomicUsize>,
    pub received_from_beyond_loopback: Arc<AtomicUsize>,
}

impl Echo {
    /// An echo server on 127.0.0.1.
    pub fn start() -> Self {
        Self::serve(TcpListener::bind("127.0.0.1:0").expect("bind echo"))
    }

    /// An echo server on `listener` (which may be in another network namespace).
    pub fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(AtomicUsize::new(0));
        let beyond = Arc::new(AtomicUsize::new(0));
        let (counter, beyond_counter) = (received.clone(), beyond.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let loopback = conn.peer_addr().is_ok_and(|p| p.ip().is_loopback());
                let counter = counter.clone();
                let beyond_counter = beyond_counter.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                counter.fetch_add(n, Ordering::SeqCst);
                                if !loopback {
                                    beyond_counter.fetch_add(n, Ordering::SeqCst);
                                }
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // Half-close propagation: our write side closes after the peer's did.
                    let _ = conn.shutdown(Shutdown::Write);
                });
            }
        });
        Self {
            addr,
            received,
            received_from_beyond_loopback: beyond,
        }
    }
}

/// The addresses a sidecar printed when it started.
pub struct Sidecar {
    pub process: Process,
    pub admin: SocketAddr,
    pub inbound: Option<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
}

/// Runs `trellis` with explicit admin flags against `ca`.
pub fn trellis(ca: &Ca, args: &[&str]) -> trellis_e2e::Outcome {
    run(trellis_command(ca, args), Duration::from_secs(60))
}

/// The `trellis` command line [`trellis`] runs.
pub fn trellis_command(ca: &Ca, args: &[&str]) -> Command {
    ca.admin_command(args)
}

/// A fresh join token for `spiffe_id`, written to a 0600 file in the CA's scratch dir.
pub fn token_file(ca: &Ca, spiffe_id: &str) -> PathBuf {
    ca.token_file(spiffe_id)
}

/// Starts a sidecar for `spiffe_id`; `ca_extra` goes into its `[ca]` table (e.g.
/// `ttl = "1m"`), `tables` after it (`[inbound]`, `[[outbound]]`).
pub fn sidecar(ca: &Ca, name: &str, spiffe_id: &str, ca_extra: &str, tables: &str) -> Sidecar {
    sidecar_with_open_files(ca, name, spiffe_id, ca_extra, tables, None)
}

/// [`sidecar`], started with at most `open_files` descriptors if given (`prlimit`).
pub fn sidecar_with_open_files(
    ca: &Ca,
    name: &str,
    spiffe_id: &str,
    ca_extra: &str,
    tables: &str,
    open_files: Option<u64>,
) -> Sidecar {
    let address = ca.addr.to_string();
    start_sidecar(
        ca,
        &address,
        TD,
        name,
        spiffe_id,
        [ca_extra, tables],
        open_files,
    )
}

/// [`sidecar`] whose `ca.address` is `addresses` (replicas of `ca`'s CA, tried in turn
/// from the first), with its join token from `ca`.
pub fn sidecar_on(
    ca: &Ca,
    addresses: &str,
    name: &str,
    spiffe_id: &str,
    ca_extra: &str,
    tables: &str,
) -> Sidecar {
    start_sidecar(ca, addresses, TD, name, spiffe_id, [ca_extra, tables], None)
}

/// [`sidecar`] for a CA of another trust domain than [`TD`].
pub fn sidecar_in(
    ca: &Ca,
    trust_domain: &str,
    name: &str,
    spiffe_id: &str,
    ca_extra: &str,
    tables: &str,
) -> Sidecar {
    let address = ca.addr.to_string();
    start_sidecar(
        ca,
        &address,
        trust_domain,
        name,
        spiffe_id,
        [ca_extra, tables],
        None,
    )
}

fn start_sidecar(
    ca: &Ca,
    address: &str,
    trust_domain: &str,
    name: &str,
    spiffe_id: &str,
    [ca_extra, tables]: [&str; 2],
    open_files: Option<u64>,
) -> Sidecar {
    let token = token_file(ca, spiffe_id);
    let config = ca.scratch().join(format!("{name}.toml"));
    let text = format!(
        "trust_domain = \"{trust_domain}\"\n\n[ca]\naddress = \"{}\"\ntrust_bundle = \"{}\"\n\
         join_token_file = \"{}\"\n{ca_extra}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [timeouts]\ndrain = \"3s\"\n\n{tables}\n",
        address,
        ca.bundle_pem().display(),
        token.display(),
    );
    std::fs::write(&config, text).expect("write sidecar config");
    let mut cmd = match open_files {
        Some(n) => command_with_open_files("trellis-sidecar", n),
        None => command("trellis-sidecar"),
    };
    let ready_file = ready_path(ca.scratch(), name);
    cmd.arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready_file);
    let mut process = Process::spawn(name, cmd, ca.scratch());
    let ready = process.wait_for_ready(&ready_file, START);
    let sidecar = Sidecar {
        admin: ready.addr("admin").expect("admin address"),
        inbound: ready.addr("inbound"),
        outbound: outbound_addrs(&ready),
        process,
    };
    wait_ready(sidecar.admin);
    sidecar
}

pub use trellis_e2e::http::http_get;

/// A backend sidecar (inbound to `echo`, allowing only the frontend) and a frontend sidecar
/// (outbound to the backend), both taking certificates from `ca`; `ca_extra` goes into
/// both `[ca]` tables.
pub fn pair(ca: &Ca, echo: &Echo, ca_extra: &str) -> (Sidecar, Sidecar) {
    let backend = sidecar(
        ca,
        "backend",
        &id("/ns/demo/sa/backend"),
        ca_extra,
        &format!(
            "[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{}\"\npolicy = \"deny\"\nallow = [\"{}\"]\n",
            echo.addr,
            id("/ns/demo/sa/frontend")
        ),
    );
    let frontend = sidecar(
        ca,
        "frontend",
        &id("/ns/demo/sa/frontend"),
        ca_extra,
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"{}\"]\n",
            backend.inbound.expect("backend inbound"),
            id("/ns/demo/sa/backend")
        ),
    );
    (backend, frontend)
}

/// Waits until a sidecar's `/ready` says 200.
pub fn wait_ready(admin: SocketAddr) {
    trellis_e2e::http::wait_ready(admin, START);
}

/// The value of the first metric sample whose line starts with `prefix`, summed over lines.
pub fn metric(admin: SocketAddr, prefix: &str) -> u64 {
    let (_, text) = http_get(admin, "/metrics").expect("metrics");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sends `payload`, half-closes, reads until EOF.
pub fn round_trip(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let writer_payload = payload.to_vec();
    let mut writer = conn.try_clone()?;
    let send = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&writer_payload)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reply = Vec::with_capacity(payload.len());
    conn.read_to_end(&mut reply)?;
    send.join()
        .map_err(|_| std::io::Error::other("writer panicked"))??;
    Ok(reply)
}

/// Deterministic pseudo-random bytes (so a corrupted byte is caught).
pub fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Polls `check` until it returns true or `within` passes; returns the elapsed time.
pub fn within(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Writes a PEM file.
pub fn write_pem(dir: &Path, name: &str, ders: &[Vec<u8>]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, trellis_identity::pem::certs_to_pem(ders)).expect("write pem");
    path
}

/// The admin API over gRPC, for steps the tests drive directly.
pub struct Admin {
    runtime: tokio::runtime::Runtime,
    client: trellis_proto::admin::v1::admin_client::AdminClient<tonic::transport::Channel>,
}

impl Admin {
    pub fn connect(ca: &Ca) -> Self {
        use trellis_identity::tls::{self, Identity, Versions};
        use trellis_identity::{IdMatcher, TrustBundle, TrustDomain, pem};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let read = |name: &str| std::fs::read(ca.admin_dir.join(name)).expect("admin file");
        let identity = Identity {
            chain: pem::certs_from_pem(&read("admin.pem")).expect("chain"),
            key: pem::private_key_from_pem(&read("admin.key.pem")).expect("key"),
        };
        let td = TrustDomain::new(TD).expect("td");
        let bundle = TrustBundle::from_pem(td.clone(), 0, &read("bundle.pem")).expect("bundle");
        let config = tls::client_config(
            Arc::new(bundle),
            IdMatcher::exact(td.id("/trellis/ca").expect("id")),
            Some(&identity),
            Versions::Tls13,
            &[trellis_proto::channel::ALPN_H2],
        )
        .expect("tls");
        let channel = runtime
            .block_on(trellis_proto::channel::connect(ca.addr, Arc::new(config)))
            .expect("connect admin");
        Self {
            runtime,
            client: trellis_proto::admin::v1::admin_client::AdminClient::new(channel),
        }
    }

    /// Revokes every live certificate of `spiffe_id`; returns the serials revoked.
    pub fn revoke_identity(&mut self, spiffe_id: String) -> Result<Vec<String>, tonic::Status> {
        self.call(|mut c| async move {
            c.revoke_certificate(trellis_proto::admin::v1::RevokeCertificateRequest {
                serial: String::new(),
                spiffe_id,
                reason: "compromised".into(),
                reason_code: 0,
            })
            .await
        })
        .map(|r| r.serials)
    }

    /// Runs one call on the admin client.
    pub fn call<T, F>(
        &mut self,
        f: impl FnOnce(
            trellis_proto::admin::v1::admin_client::AdminClient<tonic::transport::Channel>,
        ) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        self.runtime
            .block_on(f(client))
            .map(tonic::Response::into_inner)
    }
}

/// A connection through `addr` that has carried one echoed request, as an application's
/// long-lived connection would be.
pub fn live_connection(addr: SocketAddr) -> TcpStream {
    let mut live = TcpStream::connect(addr).expect("connect");
    live.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    live.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    live.read_exact(&mut buf).expect("echo");
    live
}

/// New connections through `addr`, one every 50 ms, each sending a numbered request and
/// checking the echo, until stopped (or `at_most` has passed): what a rotation must not
/// disturb.
pub struct SteadyTraffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<std::sync::atomic::AtomicU64>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl SteadyTraffic {
    pub fn start(addr: SocketAddr, at_most: Duration) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + at_most;
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    n += 1;
                    let message = format!("request {n}");
                    let counter = match round_trip(addr, message.as_bytes()) {
                        Ok(reply) if reply == message.as_bytes() => &ok,
                        _ => &failed,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            stop,
            ok,
            failed,
            thread,
        }
    }

    /// Requests answered so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Stops and returns (answered, failed).
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("traffic thread");
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}
