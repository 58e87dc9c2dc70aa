//! What every CLI end-to-end test needs: an operator with their own HOME and context file
//! who runs the built `trellis`, and small readers for the files it writes.
// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::{Ca, Outcome, command, run};
use trellis_identity::pem;

/// How long one CLI invocation may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// An operator with their own home directory and context file.
pub struct User {
    pub home: tempfile::TempDir,
}

impl User {
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    pub fn context_file(&self) -> PathBuf {
        self.home.path().join("context.toml")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// `trellis` as this user would start it: their HOME and context file.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = command("trellis");
        cmd.env("HOME", self.home.path())
            .env("TRELLIS_CONTEXT", self.context_file())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("NO_COLOR");
        cmd
    }

    /// Runs `trellis ARGS...` as this user.
    pub fn trellis<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Outcome {
        let mut cmd = self.command();
        cmd.args(args);
        run(cmd, CLI_TIMEOUT)
    }

    /// Runs `trellis ARGS...` with extra environment variables.
    pub fn trellis_with_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Outcome {
        let mut cmd = self.command();
        cmd.args(args);
        for (key, value) in vars {
            cmd.env(key, value);
        }
        run(cmd, CLI_TIMEOUT)
    }

    /// A user logged in to `ca` with its admin credentials.
    pub fn logged_in(ca: &Ca) -> Self {
        let user = Self::new();
        user.trellis(&[
            "login",
            "--ca-addr",
            &ca.addr.to_string(),
            "--admin-dir",
            path_str(&ca.admin_dir),
        ])
        .success();
        user
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

pub fn certs(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pem::certs_from_pem(&bytes)
        .expect("PEM certificates")
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

/// Issues a certificate for `id` into `out` and returns the JSON report.
pub fn issue(user: &User, id: &str, out: &Path) -> Value {
    user.trellis(&[
        "cert",
        "issue",
        "--spiffe-id",
        id,
        "--out",
        path_str(out),
        "--output",
        "json",
    ])
    .success()
    .json()
}

/// The serial of the first certificate in a PEM file, lowercase hex.
pub fn leaf_serial(path: &Path) -> String {
    trellis_identity::CertInfo::parse(&certs(path)[0])
        .expect("certificate parses")
        .serial
}
