//! Building the stacks under test from real processes: the Trellis CA (certificates for
//! everyone), a Trellis sidecar pair, and the same pair topology from each peer proxy.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trellis_identity::tls::Identity;
use trellis_identity::{SpiffeId, TrustBundle, TrustDomain, files, pem};

use super::peers::{CertFiles, Hop, Peer, Side};
use super::procs::{Proc, tree, tree_rss_kib};
use trellis_e2e::http::http_get;
use trellis_e2e::ready_path;

pub const TRUST_DOMAIN: &str = "cluster.local";
/// How long any process may take to start serving.
const START: Duration = Duration::from_secs(30);

pub fn id(path: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://{TRUST_DOMAIN}{path}")).expect("bench SPIFFE IDs are valid")
}

/// A workspace binary next to this one (`target/release/`).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --release --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// A command for a workspace binary without the caller's `TRELLIS_*` settings.
fn command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRELLIS_") {
            command.env_remove(&key);
        }
    }
    command
}

/// A port that was free a moment ago (for peers, whose configs need a fixed port).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Waits until `addr` accepts TCP connections while `proc` runs.
fn wait_listening(proc: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + START;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        proc.check_running()?;
        if Instant::now() > deadline {
            bail!("{} does not listen on {addr} after {START:?}", proc.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real `trellis-ca` and the admin CLI to talk to it.
pub struct Ca {
    pub proc: Proc,
    pub addr: SocketAddr,
    admin_dir: PathBuf,
    pub bundle_pem: PathBuf,
    cli: PathBuf,
    dir: PathBuf,
}

impl Ca {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_in(&dir.join("ca"), dir, &[], START)
    }

    /// A CA on `data_dir` (which may hold a store from an earlier start) with `flags`
    /// added, ready within `within`; its log and ready file go to `dir`.
    pub fn start_in(
        data_dir: &Path,
        dir: &Path,
        flags: &[&str],
        within: Duration,
    ) -> anyhow::Result<Self> {
        let ready_file = ready_path(dir, "trellis-ca");
        let mut cmd = command(&workspace_binary("trellis-ca")?);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--ready-file")
            .arg(&ready_file)
            .args(flags);
        let mut proc = Proc::spawn("trellis-ca", cmd, dir)?;
        let ready = proc.wait_ready(&ready_file, within)?;
        let addr = ready
            .addr("grpc")
            .context("the CA's ready file has no grpc listener")?;
        let admin_dir = data_dir.join("admin");
        Ok(Self {
            proc,
            addr,
            admin_dir,
            bundle_pem: data_dir.join("bundle.pem"),
            cli: workspace_binary("trellis")?,
            dir: dir.to_owned(),
        })
    }

    pub fn bundle(&self) -> anyhow::Result<std::sync::Arc<TrustBundle>> {
        let td = TrustDomain::new(TRUST_DOMAIN)?;
        Ok(std::sync::Arc::new(TrustBundle::from_pem(
            td,
            0,
            &std::fs::read(&self.bundle_pem)?,
        )?))
    }

    /// Runs `trellis ARGS` against this CA as the admin; returns stdout.
    pub fn trellis(&mut self, args: &[&str]) -> anyhow::Result<String> {
        self.proc.check_running()?;
        let mut cmd = command(&self.cli);
        let bundle = self.admin_dir.join("bundle.pem");
        trellis_e2e::ca::admin_flags(&mut cmd, self.addr, &self.admin_dir, &bundle).args(args);
        let outcome = trellis_e2e::try_run(cmd, START).map_err(|e| anyhow::anyhow!(e))?;
        if outcome.code != Some(0) {
            bail!(
                "`trellis {}` failed ({:?}): {}",
                args.join(" "),
                outcome.code,
                outcome.stderr
            );
        }
        Ok(outcome.stdout)
    }

    /// A join token for `spiffe_id` in a 0600 file.
    fn token_file(&mut self, spiffe_id: &SpiffeId, name: &str) -> anyhow::Result<PathBuf> {
        let out = self.trellis(&[
            "token",
            "create",
            "--spiffe-id",
            spiffe_id.as_str(),
            "-o",
            "json",
        ])?;
        let token =
            json_string_field(&out, "token").context("no token in `trellis token create`")?;
        let path = self.dir.join(format!("{name}.token"));
        files::write_secret(&path, token.as_bytes())?;
        Ok(path)
    }

    /// Issues a certificate for a non-mesh workload (`trellis cert issue`) into `out`.
    pub fn issue(
        &mut self,
        spiffe_id: &SpiffeId,
        dns: Option<&str>,
        out: &Path,
    ) -> anyhow::Result<CertFiles> {
        let out_s = out.to_string_lossy().into_owned();
        let mut args = vec![
            "cert",
            "issue",
            "--spiffe-id",
            spiffe_id.as_str(),
            "--out",
            &out_s,
        ];
        if let Some(dns) = dns {
            args.extend(["--dns", dns]);
        }
        self.trellis(&args)?;
        let files = CertFiles {
            chain: out.join("svid.pem"),
            key: out.join("svid_key.pem"),
            combined: out.join("combined.pem"),
            bundle: out.join("bundle.pem"),
        };
        let mut combined = std::fs::read(&files.chain)?;
        combined.extend(std::fs::read(&files.key)?);
        files::write_secret(&files.combined, &combined)?;
        Ok(files)
    }
}

/// Reads an identity (chain + key) from issued files.
pub fn identity(files: &CertFiles) -> anyhow::Result<Identity> {
    Ok(Identity {
        chain: pem::certs_from_pem(&std::fs::read(&files.chain)?)?,
        key: pem::private_key_from_pem(&std::fs::read(&files.key)?)?,
    })
}

/// `"field": "value"` from one-line-per-field JSON, without a JSON dependency.
pub fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let rest = &json[json.find(&key)? + key.len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// A proxy pair under test.
pub struct Stack {
    pub name: String,
    /// Where the client connects (the outbound hop's plaintext port).
    pub client_addr: SocketAddr,
    /// The inbound hop's mTLS port.
    pub inbound_addr: SocketAddr,
    /// The SPIFFE ID in the inbound hop's certificate.
    pub inbound_id: SpiffeId,
    procs: Vec<Proc>,
}

impl Stack {
    /// Resident memory of each proxy with all its processes (nginx's workers), in KiB.
    pub fn rss_by_proxy(&mut self) -> anyhow::Result<Vec<(String, u64)>> {
        let mut all = Vec::new();
        for p in &mut self.procs {
            p.check_running()?;
            all.push((p.name.clone(), tree_rss_kib(p.pid())?));
        }
        Ok(all)
    }

    /// Each proxy's name with its process and all the processes below it (nginx's
    /// workers).
    pub fn process_trees(&self) -> Vec<(String, Vec<u32>)> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), tree(p.pid())))
            .collect()
    }

    /// Resident memory of both proxies, in KiB.
    pub fn rss_kib(&mut self) -> anyhow::Result<u64> {
        Ok(self.rss_by_proxy()?.iter().map(|(_, kib)| kib).sum())
    }

    /// Errors if a proxy has died.
    pub fn check(&mut self) -> anyhow::Result<()> {
        self.procs.iter_mut().try_for_each(Proc::check_running)
    }
}

/// The `trellis-sidecar` config for one hop of the pair, with `workers` runtime threads
/// (the sidecar's default if `None`).
pub fn sidecar_toml(ca: &Ca, token: &Path, workers: Option<usize>, tables: &str) -> String {
    let workers = workers.map_or(String::new(), |n| format!("workers = {n}\n"));
    format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\n{workers}\n[ca]\naddress = \"{}\"\n\
         trust_bundle = \"{}\"\njoin_token_file = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [timeouts]\nidle = \"1h\"\ndrain = \"1s\"\n\n{tables}",
        ca.addr,
        ca.bundle_pem.display(),
        token.display(),
    )
}

/// Starts one sidecar and waits until it has its certificate; returns it with its
/// printed inbound or outbound address.
fn sidecar(
    ca: &mut Ca,
    name: &str,
    spiffe_id: &SpiffeId,
    workers: Option<usize>,
    tables: &str,
    dir: &Path,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let token = ca.token_file(spiffe_id, name)?;
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, sidecar_toml(ca, &token, workers, tables))?;
    let ready_file = ready_path(dir, name);
    let mut cmd = command(&workspace_binary("trellis-sidecar")?);
    // Warnings and errors only: a log line per connection would cost the sidecar time.
    cmd.arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready_file)
        .env("TRELLIS_LOG", "warn");
    let mut proc = Proc::spawn(name, cmd, dir)?;
    let ready = proc.wait_ready(&ready_file, START)?;
    let (Some(admin), Some(addr)) = (
        ready.addr("admin"),
        ready.addr("inbound").or_else(|| ready.addr("outbound.0")),
    ) else {
        bail!("{name}: its ready file lacks the addresses: {ready:?}");
    };
    let deadline = Instant::now() + START;
    while !matches!(http_get(admin, "/ready"), Ok((200, _))) {
        proc.check_running()?;
        if Instant::now() > deadline {
            bail!("{name} not ready after {START:?}: {}", proc.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((proc, addr))
}

/// The Trellis pair: inbound (policy `deny`, allowing the outbound sidecar and the
/// handshake client) in front of `app`, outbound bound to it; each sidecar runs `workers`
/// runtime threads. Named `trellis` with the sidecar's default, `trellis-N` with N.
pub fn trellis_pair(
    ca: &mut Ca,
    app: SocketAddr,
    client_id: &SpiffeId,
    workers: Option<usize>,
    dir: &Path,
) -> anyhow::Result<Stack> {
    let name = match workers {
        None => "trellis".to_owned(),
        Some(n) => format!("trellis-{n}"),
    };
    let inbound_id = id(&format!("/bench/{name}/inbound"));
    let outbound_id = id(&format!("/bench/{name}/outbound"));
    let (inbound, inbound_addr) = sidecar(
        ca,
        &format!("{name}-inbound"),
        &inbound_id,
        workers,
        &format!(
            "[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\npolicy = \"deny\"\n\
             allow = [\"{outbound_id}\", \"{client_id}\"]\n"
        ),
        dir,
    )?;
    let (outbound, client_addr) = sidecar(
        ca,
        &format!("{name}-outbound"),
        &outbound_id,
        workers,
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{inbound_addr}\"\n\
             allow = [\"{inbound_id}\"]\n"
        ),
        dir,
    )?;
    Ok(Stack {
        name,
        client_addr,
        inbound_addr,
        inbound_id,
        procs: vec![outbound, inbound],
    })
}

/// The same topology from `peer`: two processes (or process groups), certificates issued
/// by the Trellis CA.
pub fn peer_pair(ca: &mut Ca, peer: Peer, app: SocketAddr, dir: &Path) -> anyhow::Result<Stack> {
    let binary = peer.binary()?;
    let name = peer.name();
    let server_name = format!("{name}-inbound.bench");
    let inbound_id = id(&format!("/bench/{name}/inbound"));
    let outbound_id = id(&format!("/bench/{name}/outbound"));
    let inbound_addr = free_port()?;
    let client_addr = free_port()?;
    let mut procs = Vec::new();
    for (side, spiffe_id, dns, listen, connect) in [
        (
            Side::Inbound,
            &inbound_id,
            Some(server_name.as_str()),
            inbound_addr,
            app,
        ),
        (
            Side::Outbound,
            &outbound_id,
            None,
            client_addr,
            inbound_addr,
        ),
    ] {
        let hop_dir = dir.join(format!("{name}-{}", side.name()));
        std::fs::create_dir_all(&hop_dir)?;
        let cert = ca.issue(spiffe_id, dns, &hop_dir.join("cert"))?;
        let hop = Hop {
            side,
            listen,
            connect,
            cert,
            server_name: server_name.clone(),
            dir: hop_dir.clone(),
        };
        let config = hop_dir.join(format!("{name}.conf"));
        std::fs::write(&config, peer.config(&hop))?;
        let mut proc = Proc::spawn(
            &format!("{name}-{}", side.name()),
            peer.command(&binary, &config, &hop),
            dir,
        )?;
        wait_listening(&mut proc, listen)?;
        procs.push(proc);
    }
    Ok(Stack {
        name: name.into(),
        client_addr,
        inbound_addr,
        inbound_id,
        procs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_fields() {
        let json = "{\n  \"token\": \"trellis-jt-ab12\",\n  \"spiffe_id\": \"x\"\n}";
        assert_eq!(
            json_string_field(json, "token").as_deref(),
            Some("trellis-jt-ab12")
        );
        assert_eq!(json_string_field(json, "missing"), None);
    }
}
