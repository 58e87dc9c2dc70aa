//! A real PostgreSQL server for the tests: Debian's `postgresql` package (installed by
//! `scripts/install-test-deps.sh`), a fresh cluster in a temp dir, on a free loopback port,
//! run as the `postgres` user (the server refuses root), stopped always.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Process;

/// The role and database the tests use (trust authentication on loopback only).
pub const USER: &str = "trellis";
pub const DATABASE: &str = "trellis";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server. Dropping it stops the server and removes its data.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    process: Process,
    bin: PathBuf,
    data: PathBuf,
    uid: u32,
    gid: u32,
    /// Extra `-c name=value` settings, kept for restarts.
    settings: Vec<String>,
    /// The key-encryption key file every CA replica on this database is given (0600).
    kek: tempfile::TempDir,
    // Declared last so the server stops before its directory is removed.
    dir: tempfile::TempDir,
}

/// The newest `/usr/lib/postgresql/<version>/bin`, where Debian puts the server tools.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL is not installed (/usr/lib/postgresql is missing): run \
             scripts/install-test-deps.sh",
        )
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/<version>/bin/initdb: run scripts/install-test-deps.sh")
}

/// The uid and gid of the `postgres` user the package creates.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        assert!(
            out.status.success(),
            "no postgres user: run scripts/install-test-deps.sh (the postgresql package creates it)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl Postgres {
    /// Creates a cluster and starts it; returns once it accepts connections.
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// Like [`Postgres::start`], with TLS on: `cert_pem` (the chain) and `key_pem` are the
    /// server's, written into its data directory (0600, the server's own) before it starts.
    /// Plain connections are still accepted; a client asks for TLS.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(|data| {
            for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
                let path = data.join(name);
                trellis_identity::files::write_secret(&path, pem.as_bytes())
                    .expect("write the server's TLS files");
            }
            vec!["ssl=on".into()]
        })
    }

    /// Creates a cluster, lets `prepare` add files to its data directory and return `-c`
    /// settings, and starts it.
    fn start_with(prepare: impl FnOnce(&Path) -> Vec<String>) -> Self {
        let bin = bin_dir();
        let (uid, gid) = postgres_user();
        let dir = tempfile::tempdir().expect("temp dir for PostgreSQL");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        let data = dir.path().join("data");
        let init = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .uid(uid)
            .gid(gid)
            .output()
            .expect("initdb runs");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let settings = prepare(&data);
        for entry in std::fs::read_dir(&data).expect("read the data directory") {
            let path = entry.expect("entry").path();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        }
        let port = free_port();
        let process = Self::spawn(&bin, &data, dir.path(), (uid, gid), port, 1, &settings);
        let server = Self {
            port,
            process,
            bin,
            data,
            uid,
            gid,
            settings,
            kek: new_kek(),
            dir,
        };
        let created = Command::new(server.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
                "-U",
                USER,
                DATABASE,
            ])
            .output()
            .expect("createdb runs");
        assert!(
            created.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        server
    }

    fn spawn(
        bin: &Path,
        data: &Path,
        dir: &Path,
        (uid, gid): (u32, u32),
        port: u16,
        n: u32,
        settings: &[String],
    ) -> Process {
        let mut command = Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()));
        for setting in settings {
            command.arg("-c").arg(setting);
        }
        command.uid(uid).gid(gid);
        let mut process = Process::spawn(&format!("postgres.{n}"), command, dir);
        process.wait_for_line(START_TIMEOUT, |l| {
            l.contains("database system is ready to accept connections")
        });
        process
    }

    /// The key-encryption key file (32 random bytes, base64, 0600) the CA's keys are sealed
    /// under in this database: the same for every replica.
    pub fn kek_file(&self) -> PathBuf {
        self.kek.path().join("kek")
    }

    /// What a `trellis-ca` replica on this database is started with: the store and the KEK.
    pub fn ca_args(&self) -> Vec<String> {
        vec![
            "--store".into(),
            self.url(),
            "--key-encryption-key-file".into(),
            self.kek_file().display().to_string(),
        ]
    }

    /// `postgres://trellis@127.0.0.1:<port>/trellis`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// `pg_ctl stop` in `mode` ("fast": sessions are disconnected and the server shuts
    /// down cleanly; "immediate": it quits at once, recovering at the next start), then
    /// reaps the server process.
    fn pg_ctl_stop(&mut self, mode: &str) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "stop"])
            .uid(self.uid)
            .gid(self.gid)
            .output();
        self.process.terminate(START_TIMEOUT);
    }

    /// Stops the server (fast shutdown: connections are closed) and starts it again on
    /// the same data and port, as a database restart under load does.
    pub fn restart(&mut self) {
        self.pg_ctl_stop("fast");
        self.process = Self::spawn(
            &self.bin,
            &self.data,
            self.dir.path(),
            (self.uid, self.gid),
            self.port,
            2,
            &self.settings,
        );
    }

    /// Stops the server; it stays stopped until [`Postgres::restart`].
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
    }
}

/// A temp dir holding `kek`: 32 random bytes (raw, which the CA accepts beside base64),
/// mode 0600.
fn new_kek() -> tempfile::TempDir {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir for the KEK");
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .expect("random KEK");
    let path = dir.path().join("kek");
    std::fs::write(&path, key).expect("KEK");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    dir
}
