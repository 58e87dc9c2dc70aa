//! Where the PostgreSQL store is and how to reach it: a `postgres://` URL, the password
//! (from a file or the environment, never from a flag) and TLS (`sslmode`, a CA file).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};

/// How long a connection attempt may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL database to keep the CA's state in. `Debug` and [`PostgresConfig::name`]
/// never show the password.
#[derive(Clone)]
pub struct PostgresConfig {
    pub(super) client: tokio_postgres::Config,
    /// PEM roots the server's certificate must chain to; set means TLS is required.
    pub(super) ca_file: Option<PathBuf>,
    name: String,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("database", &self.name)
            .field(
                "password",
                &self.client.get_password().map(|_| "<redacted>"),
            )
            .field("tls", &self.tls_mode())
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Where the URL (the only place a password can hide besides the password settings) came
/// from: a password in it is accepted only from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSource {
    /// `--store`: visible to every user of the machine in the process list.
    Flag,
    /// The configuration file, often readable by more than the CA.
    File,
    /// `TRELLIS_STORE` (e.g. from a Kubernetes Secret).
    Environment,
}

/// How the password is given, besides the URL.
#[derive(Debug, Default)]
pub struct PasswordSource {
    /// A file holding the password (a trailing newline is ignored).
    pub file: Option<PathBuf>,
    /// The value of `TRELLIS_STORE_PASSWORD`.
    pub environment: Option<String>,
}

impl PostgresConfig {
    /// Parses a `postgres://` or `postgresql://` URL. `sslrootcert` (as libpq names it) is
    /// taken out of the query as the CA file; `sslmode=verify-ca` and `verify-full` mean
    /// TLS with the server's chain and host name verified, which is what any TLS here does.
    pub fn parse(
        url: &str,
        source: UrlSource,
        password: PasswordSource,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let mut parsed = url::Url::parse(url).map_err(|e| {
            format!("store URL is not a URL ({e}); expected postgres://USER@HOST:PORT/DATABASE")
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "store {:?}: expected \"sled\" or a postgres://USER@HOST:PORT/DATABASE URL",
                parsed.scheme()
            ));
        }
        if parsed.password().is_some() && source != UrlSource::Environment {
            let place = match source {
                UrlSource::Flag => "on the command line, where every user of the machine sees it",
                _ => "in the configuration file",
            };
            return Err(format!(
                "store URL has a password {place}; remove it from the URL and give it in a \
                 file (--store-password-file, [store] password_file) or in the environment \
                 (TRELLIS_STORE_PASSWORD)"
            ));
        }
        let mut ca_file = ca_file;
        let mut verify = false;
        let mut kept: Vec<(String, String)> = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match (key.as_ref(), value.as_ref()) {
                ("sslrootcert", path) => ca_file = ca_file.or_else(|| Some(PathBuf::from(path))),
                ("sslmode", "verify-ca" | "verify-full") => verify = true,
                ("password", _) => {
                    return Err(
                        "store URL has a password parameter; give the password in a file \
                         (--store-password-file) or in TRELLIS_STORE_PASSWORD instead"
                            .into(),
                    );
                }
                (key, value) => kept.push((key.to_owned(), value.to_owned())),
            }
        }
        if verify {
            kept.push(("sslmode".into(), "require".into()));
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(&kept);
        }
        let mut client = tokio_postgres::Config::from_str(parsed.as_str()).map_err(|e| {
            match std::error::Error::source(&e) {
                Some(cause) => format!("store URL: {e} ({cause})"),
                None => format!("store URL: {e}"),
            }
        })?;
        if client.get_hosts().is_empty() {
            return Err(
                "store URL names no host; expected postgres://USER@HOST:PORT/DATABASE".into(),
            );
        }
        if client.get_user().is_none() {
            return Err(
                "store URL names no user; expected postgres://USER@HOST:PORT/DATABASE".into(),
            );
        }
        if client.get_password().is_none() {
            if let Some(path) = &password.file {
                client.password(read_password(path)?);
            } else if let Some(value) = password.environment.filter(|v| !v.is_empty()) {
                client.password(value);
            }
        }
        match (client.get_ssl_mode(), &ca_file) {
            (SslMode::Require, None) => {
                return Err(
                    "store URL asks for TLS (sslmode=require) but no CA file verifies the \
                     server: give one with --store-ca-file, [store] ca_file or sslrootcert"
                        .into(),
                );
            }
            (SslMode::Disable, Some(_)) => {
                return Err(
                    "store URL says sslmode=disable but a CA file is given: remove one of them"
                        .into(),
                );
            }
            // A CA file means TLS always: "prefer" would let anyone on the path turn it off.
            (_, Some(_)) => {
                client.ssl_mode(SslMode::Require);
            }
            _ => {}
        }
        if let Some(path) = &ca_file {
            std::fs::metadata(path)
                .map_err(|e| format!("store CA file {}: {e}", path.display()))?;
        }
        client.connect_timeout(CONNECT_TIMEOUT);
        client.application_name("trellis-ca");
        let name = name_of(&client);
        Ok(Self {
            client,
            ca_file,
            name,
        })
    }

    /// `USER@HOST:PORT/DATABASE`: how errors and logs name the database (never with its
    /// password).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn tls_mode(&self) -> &'static str {
        match self.client.get_ssl_mode() {
            SslMode::Require => "required",
            SslMode::Disable => "off",
            _ => "off (no CA file)",
        }
    }

    /// The CA file, if TLS is on.
    pub(super) fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }
}

fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("store password file {}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!("store password file {} is empty", path.display()));
    }
    Ok(password.to_owned())
}

fn name_of(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or_default(),
        hosts.join(","),
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, source: UrlSource) -> Result<PostgresConfig, String> {
        PostgresConfig::parse(url, source, PasswordSource::default(), None)
    }

    #[test]
    fn a_password_on_the_command_line_or_in_the_file_is_refused_with_the_fix() {
        for source in [UrlSource::Flag, UrlSource::File] {
            let err = parse("postgres://ca:s3cret@db:5432/trellis", source).unwrap_err();
            assert!(
                err.contains("--store-password-file") && err.contains("TRELLIS_STORE_PASSWORD"),
                "{err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = parse("postgres://ca@db/trellis?password=s3cret", UrlSource::Flag).unwrap_err();
        assert!(
            err.contains("TRELLIS_STORE_PASSWORD") && !err.contains("s3cret"),
            "{err}"
        );
        let from_env = parse(
            "postgres://ca:s3cret@db:5432/trellis",
            UrlSource::Environment,
        )
        .expect("the environment may carry it");
        assert_eq!(from_env.client.get_password(), Some(&b"s3cret"[..]));
    }

    #[test]
    fn debug_and_the_name_never_show_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let config = PostgresConfig::parse(
            "postgresql://ca@db.internal:6543/trellis",
            UrlSource::Flag,
            PasswordSource {
                file: Some(file),
                environment: Some("from-env".into()),
            },
            None,
        )
        .unwrap();
        assert_eq!(
            config.client.get_password(),
            Some(&b"from-a-file"[..]),
            "the file wins, without its newline"
        );
        assert_eq!(config.name(), "ca@db.internal:6543/trellis");
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("from-a-file"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let env = parse("postgres://ca:hunter2@db/trellis", UrlSource::Environment).unwrap();
        let shown = format!("{env:?} {}", env.name());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn tls_needs_a_ca_file_and_a_ca_file_means_tls() {
        let err = parse("postgres://ca@db/trellis?sslmode=require", UrlSource::Flag).unwrap_err();
        assert!(err.contains("--store-ca-file"), "{err}");
        let err = parse(
            "postgres://ca@db/trellis?sslmode=verify-full",
            UrlSource::Flag,
        )
        .unwrap_err();
        assert!(err.contains("CA file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let url = format!(
            "postgres://ca@db/trellis?sslmode=verify-full&sslrootcert={}",
            ca.display()
        );
        let config = parse(&url, UrlSource::Flag).unwrap();
        assert_eq!(config.ca_file(), Some(ca.as_path()));
        assert!(matches!(config.client.get_ssl_mode(), SslMode::Require));
        let config = PostgresConfig::parse(
            "postgres://ca@db/trellis",
            UrlSource::Flag,
            PasswordSource::default(),
            Some(ca.clone()),
        )
        .unwrap();
        assert!(
            matches!(config.client.get_ssl_mode(), SslMode::Require),
            "a CA file is never only preferred"
        );
        let missing = PostgresConfig::parse(
            "postgres://ca@db/trellis",
            UrlSource::Flag,
            PasswordSource::default(),
            Some(dir.path().join("nope.pem")),
        )
        .unwrap_err();
        assert!(missing.contains("nope.pem"), "{missing}");
    }

    #[test]
    fn what_is_not_a_postgres_url_is_named() {
        for (url, expected) in [
            ("mysql://ca@db/trellis", "expected \"sled\""),
            ("postgres:///trellis", "no host"),
            ("not a url", "not a URL"),
            ("postgres://db/trellis", "no user"),
            ("postgres://ca@db/trellis?sslmode=sometimes", "sslmode"),
        ] {
            let err = parse(url, UrlSource::Flag).expect_err(url);
            assert!(err.contains(expected), "{url}: {err}");
        }
    }
}
