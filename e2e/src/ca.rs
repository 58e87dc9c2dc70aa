//! A real `trellis-ca` process on 127.0.0.1 with its data directory in a temp dir.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bin::command;
use crate::process::Process;

/// How long a CA may take to initialise and start listening (key generation and sled in a
/// debug build on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The line the CA prints once it serves.
const LISTENING: &str = "trellis-ca listening on ";

/// What the CA's listening line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub addr: SocketAddr,
    pub trust_domain: String,
    pub admin_dir: PathBuf,
}

/// Parses `trellis-ca listening on ADDR (trust domain TD); admin credentials in DIR`.
pub fn parse_listening(line: &str) -> Option<Listening> {
    let rest = line.strip_prefix(LISTENING)?;
    let (addr, rest) = rest.split_once(" (trust domain ")?;
    let (trust_domain, rest) = rest.split_once("); admin credentials in ")?;
    Some(Listening {
        addr: addr.parse().ok()?,
        trust_domain: trust_domain.to_owned(),
        admin_dir: PathBuf::from(rest.trim_end()),
    })
}

/// A running `trellis-ca`; stopped when dropped.
#[derive(Debug)]
pub struct Ca {
    pub process: Process,
    pub addr: SocketAddr,
    pub trust_domain: String,
    /// The CA's data directory.
    pub data_dir: PathBuf,
    /// admin.pem, admin.key.pem and bundle.pem for the admin API.
    pub admin_dir: PathBuf,
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
        let mut cmd = command("trellis-ca");
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .envs(vars.iter().copied());
        let mut process = Process::spawn("trellis-ca", cmd, dir.path());
        let line = process.wait_for_line(START_TIMEOUT, |l| l.starts_with(LISTENING));
        let listening = parse_listening(&line)
            .unwrap_or_else(|| panic!("cannot parse the CA's listening line: {line:?}"));
        Self {
            process,
            addr: listening.addr,
            trust_domain: listening.trust_domain,
            data_dir,
            admin_dir: listening.admin_dir,
            dir,
        }
    }

    /// A scratch directory next to the CA's data, removed with it.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let line = "trellis-ca listening on 127.0.0.1:40123 (trust domain cluster.local); admin credentials in /tmp/x/ca/admin";
        assert_eq!(
            parse_listening(line),
            Some(Listening {
                addr: "127.0.0.1:40123".parse().expect("addr"),
                trust_domain: "cluster.local".into(),
                admin_dir: PathBuf::from("/tmp/x/ca/admin"),
            })
        );
        assert_eq!(parse_listening("INFO something else"), None);
        assert_eq!(
            parse_listening(
                "trellis-ca listening on nowhere (trust domain a); admin credentials in b"
            ),
            None
        );
    }
}
