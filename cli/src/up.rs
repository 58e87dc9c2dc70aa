//! `trellis up`: a working mesh on this machine in one command. It starts the real
//! `trellis-ca` and two real `trellis-sidecar` processes on 127.0.0.1 (binaries found next
//! to `trellis`), runs two tiny demo services in this process, and walks through what the
//! mesh does, step by step. `--once` exits after the walkthrough (0 only if every step
//! passed); otherwise it stays up until Ctrl-C and then stops every process cleanly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_identity::ready::Ready;
use trellis_identity::{TrustBundle, TrustDomain, bundle, hex};
use trellis_proto::admin::v1::CreateJoinTokenRequest;

use crate::client::Target;
use crate::context::Settings;
use crate::output::{Style, Tone};

/// `trellis up` flags.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the CA keeps its data and the processes their logs.
    #[arg(long, default_value = "trellis-data/up")]
    data_dir: PathBuf,
    /// Run the walkthrough once and exit: 0 if every step succeeded.
    #[arg(long)]
    once: bool,
}

const TRUST_DOMAIN: &str = "cluster.local";
const BACKEND_ID: &str = "spiffe://cluster.local/ns/demo/sa/backend";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/demo/sa/frontend";
const STARTUP: Duration = Duration::from_secs(20);

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// Where it writes its ready document (`--ready-file`).
    ready_file: PathBuf,
}

impl Proc {
    fn spawn(
        name: &'static str,
        mut command: Command,
        logs: &Path,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let ready_file = logs.join(format!("{name}.ready.json"));
        let _ = std::fs::remove_file(&ready_file);
        command.arg("--ready-file").arg(&ready_file);
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name,
            child,
            log,
            ready_file,
        })
    }

    /// Waits until every listener is bound, returning the ready document.
    async fn wait_ready(&mut self) -> anyhow::Result<Ready> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(ready) = Ready::read(&self.ready_file)? {
                return Ok(ready);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "{} exited ({status}) before it was ready; its log: {}",
                    self.name,
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {}s; its log: {}",
                    self.name,
                    STARTUP.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL after a grace period.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds a sibling binary of this executable.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the trellis binary")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{name} not found next to {} — build every binary first: cargo build --release --bins",
            exe.display()
        );
    }
    Ok(path)
}

/// Listener `name` of a process's ready document.
fn listener(ready: &Ready, name: &str) -> anyhow::Result<SocketAddr> {
    ready
        .addr(name)
        .with_context(|| format!("{} reports no {name} listener", ready.program))
}

struct Walkthrough {
    style: Style,
    step: usize,
    failures: usize,
}

impl Walkthrough {
    const STEPS: usize = 6;

    fn begin(&mut self, what: &str) {
        self.step += 1;
        println!("[{}/{}] {what}", self.step, Self::STEPS);
    }

    fn ok(&self, detail: &str) {
        println!("      {} {detail}", self.style.paint(Tone::Good, "✓"));
    }

    fn fail(&mut self, detail: &str) {
        self.failures += 1;
        println!("      {} {detail}", self.style.paint(Tone::Bad, "✗"));
    }
}

/// The demo backend app: answers every chunk it receives with `backend got: <chunk>`.
async fn backend_app() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut reply = b"backend got: ".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    if conn.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A minimal HTTP/1.0 GET against a sidecar's admin endpoint.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Ok((status, body))
}

/// Waits until a sidecar's `/identity` answers, returning its JSON.
async fn wait_identity(admin: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok((200, body)) = http_get(admin, "/identity").await {
            return Ok(serde_json::from_str(&body)?);
        }
        if Instant::now() > deadline {
            bail!(
                "the sidecar with admin endpoint {admin} got no certificate within {}s",
                STARTUP.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe_identity(v: &serde_json::Value) -> String {
    format!(
        "{}  serial {}  expires {}",
        v["spiffe_id"].as_str().unwrap_or("?"),
        v["serial"].as_str().unwrap_or("?"),
        v["not_after"].as_str().unwrap_or("?")
    )
}

async fn create_token(target: &Target, spiffe_id: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut admin = target.admin().await?;
    let token = target
        .call(
            "CreateJoinToken",
            admin.create_join_token(CreateJoinTokenRequest {
                spiffe_id: spiffe_id.into(),
                ttl_seconds: 300,
            }),
        )
        .await?
        .token;
    let name = spiffe_id.rsplit('/').next().unwrap_or("workload");
    let path = dir.join(format!("{name}.token"));
    trellis_identity::files::write_secret(&path, token.as_bytes())?;
    Ok(path)
}

/// Runs `trellis up`.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut walk = Walkthrough {
        style: Style::for_stdout(),
        step: 0,
        failures: 0,
    };
    let ca_bin = sibling("trellis-ca")?;
    let sidecar_bin = sibling("trellis-sidecar")?;
    let dir = &args.data_dir;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let dir = dir.canonicalize()?;

    // 1. The CA.
    walk.begin("Starting the certificate authority");
    let mut ca_cmd = Command::new(&ca_bin);
    ca_cmd
        .args([
            "--listen",
            "127.0.0.1:0",
            "--trust-domain",
            TRUST_DOMAIN,
            "--data-dir",
        ])
        .arg(dir.join("ca"));
    let mut ca = Proc::spawn("trellis-ca", ca_cmd, &logs, &[])?;
    let ca_addr = listener(&ca.wait_ready().await?, "grpc")?;
    let bundle_path = dir.join("ca/bundle.pem");
    let bundle = TrustBundle::from_pem(
        TrustDomain::new(TRUST_DOMAIN)?,
        0,
        &std::fs::read(&bundle_path)?,
    )?;
    let fingerprint = bundle::spki_sha256(&bundle.roots()[0])?;
    walk.ok(&format!(
        "CA on {ca_addr}, trust domain {TRUST_DOMAIN}, root SPKI SHA-256 {}",
        hex::encode(&fingerprint)
    ));
    let admin_dir = dir.join("ca/admin");
    let target = Target::load(&Settings {
        ca_addr: Some(ca_addr.to_string()),
        trust_domain: Some(TRUST_DOMAIN.into()),
        admin_cert: Some(admin_dir.join("admin.pem")),
        admin_key: Some(admin_dir.join("admin.key.pem")),
        bundle: Some(admin_dir.join("bundle.pem")),
        context_file: None,
    })?;

    // 2. The backend service behind its sidecar: only the frontend may call it.
    walk.begin("Starting the backend service and its sidecar (join token → certificate)");
    let backend_app = backend_app().await?;
    let token = create_token(&target, BACKEND_ID, &dir).await?;
    let config = dir.join("backend-sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"{TRUST_DOMAIN}\"\n\n[ca]\naddress = \"{ca_addr}\"\ntrust_bundle = \"{}\"\n\
             join_token_file = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[inbound]\n\
             listen = \"127.0.0.1:0\"\napp = \"{backend_app}\"\npolicy = \"deny\"\nallow = [\"{FRONTEND_ID}\"]\n",
            bundle_path.display(),
            token.display()
        ),
    )?;
    let mut cmd = Command::new(&sidecar_bin);
    cmd.arg("--config").arg(&config);
    let mut backend = Proc::spawn("backend-sidecar", cmd, &logs, &[])?;
    let ready = backend.wait_ready().await?;
    let backend_admin = listener(&ready, "admin")?;
    let backend_inbound = listener(&ready, "inbound")?;
    let identity = wait_identity(backend_admin).await?;
    walk.ok(&format!(
        "backend sidecar: {}",
        describe_identity(&identity)
    ));
    walk.ok(&format!(
        "mTLS inbound on {backend_inbound} → app on {backend_app}; allows only {FRONTEND_ID}"
    ));

    // 3. The frontend's sidecar: an outbound port bound to the backend's identity.
    walk.begin("Starting the frontend's sidecar");
    let token = create_token(&target, FRONTEND_ID, &dir).await?;
    let mut cmd = Command::new(&sidecar_bin);
    cmd.args([
        "--ca-addr",
        &ca_addr.to_string(),
        "--trust-domain",
        TRUST_DOMAIN,
        "--trust-bundle",
    ])
    .arg(&bundle_path)
    .arg("--join-token-file")
    .arg(&token)
    .args(["--admin-listen", "127.0.0.1:0", "--outbound"])
    .arg(format!("127.0.0.1:0={backend_inbound}={BACKEND_ID}"));
    let mut frontend = Proc::spawn("frontend-sidecar", cmd, &logs, &[])?;
    let ready = frontend.wait_ready().await?;
    let frontend_admin = listener(&ready, "admin")?;
    let frontend_outbound = listener(&ready, "outbound.0")?;
    let identity = wait_identity(frontend_admin).await?;
    walk.ok(&format!(
        "frontend sidecar: {}",
        describe_identity(&identity)
    ));

    // 4. A request through the mesh.
    walk.begin("Sending a request: frontend → its sidecar → mTLS → backend's sidecar → backend");
    let request = b"hello from the frontend\n";
    match round_trip(frontend_outbound, request).await {
        Ok(reply) if reply.starts_with(b"backend got: hello from the frontend") => {
            walk.ok(&format!(
                "sent {:?}, got {:?}",
                String::from_utf8_lossy(request).trim_end(),
                String::from_utf8_lossy(&reply).trim_end()
            ))
        }
        Ok(reply) => walk.fail(&format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply)
        )),
        Err(e) => walk.fail(&format!("request failed: {e:#}")),
    }

    // 5. A client without a certificate.
    walk.begin("Connecting to the backend without a certificate");
    match round_trip(backend_inbound, b"GET / HTTP/1.0\r\n\r\n").await {
        Ok(reply) if reply.is_empty() => {
            walk.ok("refused: the connection was closed without a byte of reply")
        }
        Ok(reply) => walk.fail(&format!("NOT refused: got {} bytes", reply.len())),
        Err(_) => walk.ok("refused: the connection was reset"),
    }

    // 6. What the sidecars report.
    walk.begin("Reading the backend sidecar's metrics");
    match http_get(backend_admin, "/metrics").await {
        Ok((200, text)) => {
            let count = |needle: &str| {
                text.lines()
                    .filter(|l| l.starts_with(needle))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum::<u64>()
            };
            let ok = count("trellis_sidecar_handshakes_total{direction=\"inbound\",result=\"ok\"");
            let failed =
                count("trellis_sidecar_handshakes_total{direction=\"inbound\",result=\"failed\"");
            if ok >= 1 && failed >= 1 {
                walk.ok(&format!(
                    "inbound handshakes: {ok} accepted, {failed} refused"
                ));
            } else {
                walk.fail(&format!(
                    "expected accepted and refused handshakes, saw {ok} and {failed}"
                ));
            }
        }
        other => walk.fail(&format!("metrics unavailable: {other:?}")),
    }

    println!();
    if walk.failures > 0 {
        println!(
            "{} of {} steps failed; logs in {}",
            walk.failures,
            Walkthrough::STEPS,
            logs.display()
        );
        bail!(
            "the walkthrough failed ({} step(s)); see the logs in {}",
            walk.failures,
            logs.display()
        );
    }
    println!("All {} steps passed.", Walkthrough::STEPS);
    if args.once {
        return Ok(());
    }
    println!(
        "\nThe mesh is up. Try it:\n  \
         bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; echo hello >&3; timeout 1 cat <&3'   # through the mesh (or: nc 127.0.0.1 {port})\n  \
         curl -s http://{backend_admin}/metrics | grep trellis_   # the backend sidecar's metrics\n  \
         curl -s http://{frontend_admin}/identity                # the frontend's certificate\n  \
         trellis --ca-addr {ca_addr} --admin-cert {admin}/admin.pem --admin-key {admin}/admin.key.pem --bundle {admin}/bundle.pem cert list\n\
         Logs: {logs}\nPress Ctrl-C to stop.",
        port = frontend_outbound.port(),
        admin = admin_dir.display(),
        logs = logs.display(),
    );
    tokio::signal::ctrl_c().await.ok();
    println!("\nStopping…");
    drop(frontend);
    drop(backend);
    drop(ca);
    println!("Stopped.");
    Ok(())
}

/// Sends `request`, half-closes, and reads the whole reply (with a deadline).
async fn round_trip(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut conn = TcpStream::connect(addr).await?;
        conn.write_all(request).await?;
        conn.shutdown().await?;
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).await?;
        anyhow::Ok(reply)
    })
    .await
    .context("no answer within 5s")?
}
