//! Many concurrent proxied connections through one real `trellis-sidecar` process: this
//! benchmark plays the peer sidecar (real mTLS 1.3 with a certificate from a real CA, ALPN
//! trellis/1) and the app (an echo server); the sidecar terminates every connection and
//! opens one to the app for each. It opens them all, holds them, sends a message on each
//! and checks the echo, and reports errors and the sidecar's memory.
//!
//! One proxied connection costs the sidecar two descriptors and this process two (its
//! client end and the echo server's end), so 10,000 connections need over 20,000 open files
//! on each side. Limits are inherited: as root, this process raises its own soft and hard
//! limits before starting the sidecar, which then raises its soft limit to that hard limit
//! itself (as it does in production) and logs it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls_pki_types::ServerName;
use std::io::BufRead;
use std::process::{Child, Command};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use trellis_ca::Config;
use trellis_identity::IdMatcher;
use trellis_identity::ready::Ready;
use trellis_identity::tls::{self, Versions};

use crate::admin;

/// The longest one connection's opening, or one message's round trip, may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Connections to open and hold at once.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// TLS handshakes in flight at once while opening.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// Seconds the whole run may take at most.
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// The sidecar binary (default: trellis-sidecar next to this benchmark's binary).
    #[arg(long)]
    sidecar_bin: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Per connection: 2 in the sidecar, 2 here; plus headroom for the CA and runtimes.
    let limits = crate::fds::raise_to(2 * args.connections as u64 + 4096);
    println!("{limits}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let deadline = Duration::from_secs(args.seconds);
    runtime.block_on(async {
        tokio::time::timeout(deadline, bench(&args))
            .await
            .with_context(|| format!("the run did not finish within {deadline:?}"))?
    })
}

/// An echo app: every connection gets back what it sends.
async fn echo_app() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

struct Sidecar {
    child: Child,
    inbound: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Sidecar {
    /// The benchmark never leaves its sidecar running, whatever happened.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    /// Resident memory and open descriptors, from /proc.
    fn usage(&self) -> (u64, usize) {
        let Some(pid) = self.pid() else {
            return (0, 0);
        };
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        (rss_kib, fds)
    }

    async fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(self.admin).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok(text)
    }
}

async fn start_sidecar(
    bin: PathBuf,
    ca: &trellis_ca::RunningCa,
    token: String,
    app: SocketAddr,
) -> anyhow::Result<Sidecar> {
    let ready_dir = tempfile::tempdir().context("a directory for the ready file")?;
    let ready_file = ready_dir.path().join("sidecar.ready.json");
    let mut child = Command::new(&bin)
        .args(["--ca-addr", &ca.addr.to_string()])
        .arg("--ready-file")
        .arg(&ready_file)
        .arg("--trust-bundle")
        .arg(ca.data_dir().join("bundle.pem"))
        .args(["--inbound-listen", "127.0.0.1:0"])
        .args(["--inbound-app", &app.to_string()])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("TRELLIS_JOIN_TOKEN", token)
        .env("TRELLIS_LOG", "warn,trellis_sidecar::fd_limit=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().context("sidecar stderr")?;
    // Its log, read on a thread (and shown) so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("sidecar: {}", line.trim());
        }
    });
    let started_by = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Some(ready) = Ready::read(&ready_file)? {
            break ready;
        }
        if child.try_wait()?.is_some() || Instant::now() > started_by {
            let _ = child.kill();
            bail!("the sidecar exited or did not bind its listeners within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (Some(inbound), Some(admin)) = (ready.addr("inbound"), ready.addr("admin")) else {
        let _ = child.kill();
        bail!("the sidecar's ready file lacks its addresses: {ready:?}");
    };
    let sidecar = Sidecar {
        child,
        inbound,
        admin,
    };
    let ready_by = Instant::now() + Duration::from_secs(20);
    while !sidecar
        .get("/ready")
        .await
        .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        if Instant::now() > ready_by {
            bail!("the sidecar did not become ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(sidecar)
}

fn metric(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_data_dir(dir.path().join("ca"));
    config.listen = "127.0.0.1:0".parse()?;
    let ca = trellis_ca::start(config).await?;
    let bundle = ca.bundle();
    let td = bundle.trust_domain().clone();
    let mut admin = admin::client(ca.addr, bundle.clone(), &ca.data_dir().join("admin")).await?;
    let server_id = td.id("/bench/echo")?;
    let token = admin::token(&mut admin, server_id.as_str()).await?;
    let client = admin::issue(&mut admin, td.id("/bench/client")?.as_str()).await?;
    let app = echo_app().await?;
    let bin = match &args.sidecar_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("benchmark binary directory")?
            .join("trellis-sidecar"),
    };
    let sidecar = start_sidecar(bin, &ca, token, app).await?;
    let (rss_idle, fds_idle) = sidecar.usage();
    let tls_config = tls::client_config(
        bundle,
        IdMatcher::exact(server_id),
        Some(&client),
        Versions::Tls13,
        &[b"trellis/1"],
    )?;
    let connector = TlsConnector::from(Arc::new(tls_config));

    // Open every connection (bounded handshakes in flight) and keep it.
    let opening = Instant::now();
    let gate = Arc::new(Semaphore::new(args.parallel));
    let open_errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (gate, connector, errors) = (gate.clone(), connector.clone(), open_errors.clone());
        let target = sidecar.inbound;
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            // A sidecar out of descriptors leaves connections in its accept queue: time out
            // rather than wait for ever.
            let result = tokio::time::timeout(STEP_TIMEOUT, async {
                let tcp = TcpStream::connect(target).await?;
                connector
                    .connect(ServerName::IpAddress(target.ip().into()), tcp)
                    .await
            })
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            match result {
                Ok(stream) => Some(stream),
                Err(e) => {
                    if errors.fetch_add(1, Relaxed) < 5 {
                        eprintln!("open: {e}");
                    }
                    None
                }
            }
        }));
    }
    let mut streams: Vec<TlsStream<TcpStream>> = Vec::with_capacity(args.connections);
    for t in tasks {
        if let Some(s) = t.await? {
            streams.push(s);
        }
    }
    let open_time = opening.elapsed();
    // The sidecar connects to the app after the handshake; wait until it counts them all.
    let settle_by = Instant::now() + Duration::from_secs(30);
    let mut active = 0;
    while Instant::now() < settle_by {
        let text = sidecar.get("/metrics").await.unwrap_or_default();
        active = metric(
            &text,
            "trellis_sidecar_connections_active{direction=\"inbound\"}",
        )
        .unwrap_or(0);
        if active as usize >= streams.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rss_held, fds_held) = sidecar.usage();

    // A message on every held connection, all at once.
    let exchange = Instant::now();
    let message_errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(streams.len());
    for (i, mut stream) in streams.into_iter().enumerate() {
        let errors = message_errors.clone();
        tasks.push(tokio::spawn(async move {
            let sent = format!("hello from connection {i}\n");
            let mut got = vec![0u8; sent.len()];
            let ok = tokio::time::timeout(STEP_TIMEOUT, async {
                stream.write_all(sent.as_bytes()).await?;
                stream.flush().await?;
                stream.read_exact(&mut got).await?;
                Ok::<_, std::io::Error>(got == sent.as_bytes())
            })
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            if !matches!(ok, Ok(true)) && errors.fetch_add(1, Relaxed) < 5 {
                eprintln!("connection {i}: {ok:?}");
            }
            stream
        }));
    }
    let mut streams = Vec::with_capacity(tasks.len());
    for t in tasks {
        streams.push(t.await?);
    }
    let exchange_time = exchange.elapsed();
    let (rss_after, fds_after) = sidecar.usage();
    let held = streams.len();
    drop(streams);
    let text = sidecar.get("/metrics").await.unwrap_or_default();
    let handshakes_failed: i64 = text
        .lines()
        .filter(|l| {
            l.starts_with("trellis_sidecar_handshakes_total") && l.contains("result=\"failed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum();
    drop(sidecar);
    ca.shutdown().await?;

    let open_errors = open_errors.load(Relaxed);
    let message_errors = message_errors.load(Relaxed);
    let per_conn = |rss: u64| (rss.saturating_sub(rss_idle)) as f64 / held.max(1) as f64;
    println!(
        "sidecar-conns: {} connections through one trellis-sidecar (mTLS 1.3 in, plaintext to an echo app), {} cores",
        args.connections,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "  held open at once                 {held} (sidecar counted {active} active inbound)"
    );
    println!("  open errors                       {open_errors}");
    println!("  message errors (echo mismatch)    {message_errors}");
    println!("  sidecar handshake failures        {handshakes_failed}");
    println!(
        "  opening took                      {:.1} s ({:.0} handshakes/s, {} in flight)",
        open_time.as_secs_f64(),
        held as f64 / open_time.as_secs_f64(),
        args.parallel
    );
    println!(
        "  one message on each took          {:.2} s",
        exchange_time.as_secs_f64()
    );
    println!(
        "  sidecar RSS idle                  {:.1} MiB ({fds_idle} fds)",
        rss_idle as f64 / 1024.0
    );
    println!(
        "  sidecar RSS holding all           {:.1} MiB ({fds_held} fds), {:.1} KiB per connection",
        rss_held as f64 / 1024.0,
        per_conn(rss_held)
    );
    println!(
        "  sidecar RSS after the messages    {:.1} MiB ({fds_after} fds), {:.1} KiB per connection",
        rss_after as f64 / 1024.0,
        per_conn(rss_after)
    );
    if open_errors + message_errors > 0 || held < args.connections {
        bail!("{open_errors} connections failed to open, {message_errors} messages failed");
    }
    Ok(())
}
