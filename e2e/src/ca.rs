//! A real `trellis-ca` process on 127.0.0.1 with its data directory in a temp dir.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use trellis_identity::SpiffeId;
use trellis_identity::ready::Ready;

use crate::bin::command;
use crate::process::{Process, ready_path};

/// How long a CA may take to initialise and start listening (key generation and sled in a
/// debug build on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// What the CA's ready file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub addr: SocketAddr,
    pub trust_domain: String,
    pub admin_dir: PathBuf,
    /// The SPIFFE bundle endpoint, when `--bundle-endpoint-listen` was given.
    pub bundle_endpoint: Option<SocketAddr>,
    /// CRLs and metrics, when `--http-listen` was given.
    pub http: Option<SocketAddr>,
}

impl Listening {
    /// Reads the CA's ready document; the admin credentials are in `<data_dir>/admin`.
    pub fn from_ready(ready: &Ready, data_dir: &Path) -> Option<Self> {
        let id = SpiffeId::new(ready.spiffe_id.as_deref()?).ok()?;
        Some(Self {
            addr: ready.addr("grpc")?,
            trust_domain: id.trust_domain_name().to_owned(),
            admin_dir: data_dir.join("admin"),
            bundle_endpoint: ready.addr("bundle_endpoint"),
            http: ready.addr("http"),
        })
    }
}

/// Where a CA runs: its listen address, and the network namespace it runs in, if any.
#[derive(Debug, Clone)]
struct Place {
    listen: SocketAddr,
    netns: Option<String>,
}

impl Default for Place {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            netns: None,
        }
    }
}

/// A running `trellis-ca`; stopped when dropped.
#[derive(Debug)]
pub struct Ca {
    pub process: Process,
    pub addr: SocketAddr,
    pub trust_domain: String,
    /// Its SPIFFE bundle endpoint, when started with `--bundle-endpoint-listen`.
    pub bundle_endpoint: Option<SocketAddr>,
    /// Its CRL and metrics port, when started with `--http-listen`.
    pub http: Option<SocketAddr>,
    /// The CA's data directory.
    pub data_dir: PathBuf,
    /// admin.pem, admin.key.pem and bundle.pem for the admin API.
    pub admin_dir: PathBuf,
    /// The extra arguments and environment variables it was started with, for restarts.
    args: Vec<OsString>,
    vars: Vec<(String, String)>,
    /// How many times it was started (names the log files of restarts).
    starts: u32,
    /// Where it listens: `127.0.0.1:0`, or an address inside `netns`.
    place: Place,
    // Declared last so the process stops before its directory is removed.
    dir: tempfile::TempDir,
}

impl Ca {
    /// Starts a CA with defaults (trust domain cluster.local) on a free port.
    pub fn start() -> Self {
        Self::start_with::<&str>(&[])
    }

    /// Starts a CA on a free port with extra command-line arguments (e.g. `--import-dir`).
    pub fn start_with<S: AsRef<OsStr>>(args: &[S]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`Ca::start_with`], with environment variables set for the CA (e.g.
    /// `TRELLIS_LOG=trace`).
    pub fn start_with_env<S: AsRef<OsStr>>(args: &[S], vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the CA");
        let data_dir = dir.path().join("ca");
        Self::launch(dir, data_dir, args, vars, Place::default())
    }

    /// Starts a CA inside the network namespace `netns`, listening on `ip` (a free port),
    /// as a CA pod on a pod network.
    pub fn start_in(netns: &crate::Netns, ip: std::net::IpAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the CA");
        let data_dir = dir.path().join("ca");
        let place = Place {
            listen: SocketAddr::new(ip, 0),
            netns: Some(netns.name.clone()),
        };
        Self::launch(dir, data_dir, &[] as &[&str], &[], place)
    }

    /// Starts a CA whose data directory is `data_dir` (e.g. on a filesystem the test
    /// mounted); logs and scratch files still go to a temp dir.
    pub fn start_at<S: AsRef<OsStr>>(data_dir: &Path, args: &[S]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the CA's logs");
        Self::launch(dir, data_dir.to_path_buf(), args, &[], Place::default())
    }

    /// Starts another replica of this CA: the same arguments (so the same store, when it is
    /// a shared one) and a copy of its data directory taken now (its keys and admin
    /// credentials, as a Secret every replica mounts would give them).
    pub fn replica(&self) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the replica");
        let data_dir = dir.path().join("ca");
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(&self.data_dir)
            .arg(&data_dir)
            .status()
            .expect("cp runs");
        assert!(copied.success(), "copy the data directory");
        let vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Self::launch(dir, data_dir, &self.args, &vars, self.place.clone())
    }

    fn launch<S: AsRef<OsStr>>(
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        args: &[S],
        vars: &[(&str, &str)],
        place: Place,
    ) -> Self {
        let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (process, listening) = spawn("trellis-ca", dir.path(), &data_dir, &args, &vars, &place);
        Self {
            process,
            addr: listening.addr,
            trust_domain: listening.trust_domain,
            bundle_endpoint: listening.bundle_endpoint,
            http: listening.http,
            data_dir,
            admin_dir: listening.admin_dir,
            args,
            vars,
            starts: 1,
            place,
            dir,
        }
    }

    /// Kills the CA with SIGKILL (no chance to flush or clean up) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        self.process.kill()
    }

    /// Starts the CA again on the same data directory and arguments (killing it first if it
    /// still runs) and waits until it serves. It listens on a new port: read [`Ca::addr`].
    pub fn restart(&mut self) {
        self.process.kill();
        self.starts += 1;
        let name = format!("trellis-ca.{}", self.starts);
        let (process, listening) = spawn(
            &name,
            self.dir.path(),
            &self.data_dir,
            &self.args,
            &self.vars,
            &self.place,
        );
        self.process = process;
        self.addr = listening.addr;
        self.bundle_endpoint = listening.bundle_endpoint;
        self.http = listening.http;
    }

    /// A scratch directory next to the CA's data, removed with it.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// `trellis ARGS` with this CA's address and admin credentials as flags, run inside the
    /// CA's network namespace if it has one (its address is reachable only there).
    pub fn admin_command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = command("trellis");
        admin_flags(
            &mut cmd,
            self.addr,
            &self.admin_dir,
            &self.admin_dir.join("bundle.pem"),
        )
        .args(args);
        match &self.place.netns {
            Some(netns) => crate::netns::wrap_in(netns, &cmd),
            None => cmd,
        }
    }

    /// A fresh join token for `spiffe_id` (`trellis token create`), in a 0600 file in the
    /// scratch directory.
    pub fn token_file(&self, spiffe_id: &str) -> PathBuf {
        let out = crate::run(
            self.admin_command(&["token", "create", "--spiffe-id", spiffe_id, "-o", "json"]),
            START_TIMEOUT,
        )
        .success();
        let token = out.json()["token"].as_str().expect("token").to_owned();
        let name = spiffe_id.replace(['/', ':'], "_");
        let path = self.scratch().join(format!("{name}.token"));
        trellis_identity::files::write_secret(&path, token.as_bytes()).expect("write token");
        path
    }

    /// The trust bundle the CA publishes for workloads (`<data-dir>/bundle.pem`).
    pub fn bundle_pem(&self) -> PathBuf {
        self.data_dir.join("bundle.pem")
    }

    /// Stops the CA with SIGTERM (killing it if it does not exit within 10 s).
    pub fn stop(&mut self) {
        self.process.terminate(Duration::from_secs(10));
    }
}

/// Starts `trellis-ca` on 127.0.0.1:0 with `data_dir` and waits for its ready file.
fn spawn(
    name: &str,
    log_dir: &Path,
    data_dir: &Path,
    args: &[OsString],
    vars: &[(String, String)],
    place: &Place,
) -> (Process, Listening) {
    let ready_file = ready_path(log_dir, name);
    let mut cmd = command("trellis-ca");
    cmd.arg("--ready-file")
        .arg(&ready_file)
        .arg("--listen")
        .arg(place.listen.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k, v)));
    if let Some(netns) = &place.netns {
        cmd = crate::netns::wrap_in(netns, &cmd);
    }
    let mut process = Process::spawn(name, cmd, log_dir);
    let ready = process.wait_for_ready(&ready_file, START_TIMEOUT);
    let listening = Listening::from_ready(&ready, data_dir)
        .unwrap_or_else(|| panic!("the CA's ready file lacks its gRPC address or ID: {ready:?}"));
    (process, listening)
}

/// Adds to a `trellis` command the flags that reach the CA at `addr` as the admin whose
/// credentials are in `admin_dir`, trusting `bundle` for the CA's serving certificate.
pub fn admin_flags<'a>(
    cmd: &'a mut std::process::Command,
    addr: SocketAddr,
    admin_dir: &Path,
    bundle: &Path,
) -> &'a mut std::process::Command {
    cmd.arg("--ca-addr")
        .arg(addr.to_string())
        .arg("--admin-cert")
        .arg(admin_dir.join("admin.pem"))
        .arg("--admin-key")
        .arg(admin_dir.join("admin.key.pem"))
        .arg("--bundle")
        .arg(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_document_gives_address_trust_domain_and_admin_dir() {
        let mut ready =
            Ready::new("trellis-ca").listener("grpc", "127.0.0.1:40123".parse().expect("addr"));
        assert_eq!(Listening::from_ready(&ready, Path::new("/d")), None);
        ready.spiffe_id = Some("spiffe://cluster.local/trellis/ca".into());
        assert_eq!(
            Listening::from_ready(&ready, Path::new("/d")),
            Some(Listening {
                addr: "127.0.0.1:40123".parse().expect("addr"),
                trust_domain: "cluster.local".into(),
                admin_dir: PathBuf::from("/d/admin"),
                bundle_endpoint: None,
                http: None,
            })
        );
    }
}
