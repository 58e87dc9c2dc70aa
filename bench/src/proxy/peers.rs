//! The peer proxies Trellis is compared with — stunnel4, nginx (stream module), haproxy from
//! Debian's packages — and their configuration for one hop of the pair topology.
//!
//! Both hops are configured as alike as each proxy allows: TLS 1.3 only with the library's
//! default TLS 1.3 suites (all negotiate TLS_AES_256_GCM_SHA384 with X25519, like rustls),
//! ECDSA P-256 certificates from the Trellis CA, the peer's chain verified against the
//! Trellis root in both directions (the inbound hop requires a client certificate), two
//! workers where the proxy has a worker setting (Trellis runs two tokio workers on two
//! cores), TCP_NODELAY on both sockets, 1 h idle timeouts. None of them can check a SPIFFE
//! URI SAN, so the outbound hop checks a DNS SAN the CA put in the inbound hop's
//! certificate instead; the inbound hop accepts any client chaining to the root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

/// The script that installs the peers.
pub const INSTALL_SCRIPT: &str = "bench/install-peers.sh";
/// Where Debian's libnginx-mod-stream puts the stream module.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// Workers per proxy process where the proxy has such a setting (nginx processes, haproxy
/// threads); stunnel runs a thread per connection and has none.
pub const WORKERS: usize = 2;

/// A peer proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Stunnel,
    Nginx,
    Haproxy,
}

/// Which hop of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Plaintext in from the client, mTLS out to the inbound hop.
    Outbound,
    /// mTLS in (client certificate required), plaintext out to the app.
    Inbound,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Outbound => "outbound",
            Side::Inbound => "inbound",
        }
    }
}

/// A certificate issued by the Trellis CA (`trellis cert issue`), as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// Leaf then intermediate.
    pub chain: PathBuf,
    /// The private key (0600).
    pub key: PathBuf,
    /// Chain and key in one file (0600), for haproxy's `crt`.
    pub combined: PathBuf,
    /// The Trellis roots the peer's chain must lead to.
    pub bundle: PathBuf,
}

/// One hop: where it listens, where it connects, its certificate.
#[derive(Clone, Debug)]
pub struct Hop {
    pub side: Side,
    pub listen: SocketAddr,
    pub connect: SocketAddr,
    pub cert: CertFiles,
    /// The DNS SAN the outbound hop requires of the inbound hop's certificate.
    pub server_name: String,
    /// A directory for the proxy's pid file and scratch files.
    pub dir: PathBuf,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Stunnel => "stunnel",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
        }
    }

    /// The executable, or an error naming the install script.
    pub fn binary(self) -> anyhow::Result<PathBuf> {
        let names: &[&str] = match self {
            Peer::Stunnel => &["stunnel4", "stunnel"],
            Peer::Nginx => &["nginx"],
            Peer::Haproxy => &["haproxy"],
        };
        let found = names.iter().find_map(|n| find_executable(n));
        let Some(path) = found else {
            bail!(
                "{} not found (looked for {} in PATH, /usr/sbin and /usr/bin): run {INSTALL_SCRIPT}",
                self.name(),
                names.join(" or ")
            );
        };
        if self == Peer::Nginx && !Path::new(NGINX_STREAM_MODULE).is_file() {
            bail!("nginx's stream module ({NGINX_STREAM_MODULE}) is missing: run {INSTALL_SCRIPT}");
        }
        Ok(path)
    }

    /// The configuration file's text for `hop`.
    pub fn config(self, hop: &Hop) -> String {
        match self {
            Peer::Stunnel => stunnel(hop),
            Peer::Nginx => nginx(hop),
            Peer::Haproxy => haproxy(hop),
        }
    }

    /// The command running the proxy in the foreground with `config` (a file holding
    /// [`Peer::config`]).
    pub fn command(self, binary: &Path, config: &Path, hop: &Hop) -> Command {
        let mut command = Command::new(binary);
        match self {
            Peer::Stunnel => {
                command.arg(config);
            }
            Peer::Nginx => {
                // -e: before reading the config nginx opens its default error log, which
                // may not be writable; -p keeps relative paths in the scratch dir.
                command
                    .arg("-e")
                    .arg("stderr")
                    .arg("-p")
                    .arg(&hop.dir)
                    .arg("-c")
                    .arg(config);
            }
            Peer::Haproxy => {
                // -db: foreground, no daemon.
                command.arg("-db").arg("-f").arg(config);
            }
        }
        command
    }
}

fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn stunnel(hop: &Hop) -> String {
    let c = &hop.cert;
    let (role, check) = match hop.side {
        Side::Outbound => ("client = yes", format!("checkHost = {}", hop.server_name)),
        Side::Inbound => ("client = no", "requireCert = yes".to_owned()),
    };
    format!(
        "foreground = yes\npid =\nsyslog = no\ndebug = 3\n\n[{side}]\n{role}\naccept = {listen}\n\
         connect = {connect}\ncert = {chain}\nkey = {key}\nCAfile = {bundle}\nverifyChain = yes\n\
         {check}\nsslVersionMin = TLSv1.3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\
         TIMEOUTidle = 3600\n",
        side = hop.side.name(),
        listen = hop.listen,
        connect = hop.connect,
        chain = c.chain.display(),
        key = c.key.display(),
        bundle = c.bundle.display(),
    )
}

fn nginx(hop: &Hop) -> String {
    let c = &hop.cert;
    let tls = match hop.side {
        Side::Inbound => format!(
            "        listen {listen} ssl;\n\
             \x20       ssl_protocols TLSv1.3;\n\
             \x20       ssl_certificate {chain};\n\
             \x20       ssl_certificate_key {key};\n\
             \x20       ssl_verify_client on;\n\
             \x20       ssl_client_certificate {bundle};\n\
             \x20       ssl_verify_depth 2;\n",
            listen = hop.listen,
            chain = c.chain.display(),
            key = c.key.display(),
            bundle = c.bundle.display(),
        ),
        Side::Outbound => format!(
            "        listen {listen};\n\
             \x20       proxy_ssl on;\n\
             \x20       proxy_ssl_protocols TLSv1.3;\n\
             \x20       proxy_ssl_certificate {chain};\n\
             \x20       proxy_ssl_certificate_key {key};\n\
             \x20       proxy_ssl_trusted_certificate {bundle};\n\
             \x20       proxy_ssl_verify on;\n\
             \x20       proxy_ssl_verify_depth 2;\n\
             \x20       proxy_ssl_name {name};\n",
            listen = hop.listen,
            chain = c.chain.display(),
            key = c.key.display(),
            bundle = c.bundle.display(),
            name = hop.server_name,
        ),
    };
    format!(
        "load_module {NGINX_STREAM_MODULE};\ndaemon off;\nmaster_process on;\n\
         worker_processes {WORKERS};\npid {dir}/nginx.pid;\nerror_log stderr warn;\n\
         events {{\n    worker_connections 20000;\n}}\n\
         stream {{\n    server {{\n{tls}        proxy_pass {connect};\n\
         \x20       proxy_connect_timeout 5s;\n        proxy_timeout 1h;\n        tcp_nodelay on;\n    }}\n}}\n",
        dir = hop.dir.display(),
        connect = hop.connect,
    )
}

fn haproxy(hop: &Hop) -> String {
    let c = &hop.cert;
    let tls = format!(
        "ssl crt {combined} ca-file {bundle} verify required ssl-min-ver TLSv1.3",
        combined = c.combined.display(),
        bundle = c.bundle.display(),
    );
    let (bind, server) = match hop.side {
        Side::Inbound => (format!("{} {tls}", hop.listen), hop.connect.to_string()),
        Side::Outbound => (
            hop.listen.to_string(),
            format!("{} {tls} verifyhost {}", hop.connect, hop.server_name),
        ),
    };
    format!(
        "global\n    nbthread {WORKERS}\n    maxconn 8000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n\
         frontend {side}\n    bind {bind}\n    default_backend next\n\n\
         backend next\n    server next {server}\n",
        side = hop.side.name(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(side: Side) -> Hop {
        Hop {
            side,
            listen: "127.0.0.1:7001".parse().expect("addr"),
            connect: "127.0.0.1:7002".parse().expect("addr"),
            cert: CertFiles {
                chain: "/c/svid.pem".into(),
                key: "/c/svid_key.pem".into(),
                combined: "/c/combined.pem".into(),
                bundle: "/c/bundle.pem".into(),
            },
            server_name: "in.bench".into(),
            dir: "/d".into(),
        }
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l.trim() == line)
    }

    #[test]
    fn stunnel_verifies_both_ways_with_tls13_only() {
        let out = Peer::Stunnel.config(&hop(Side::Outbound));
        for line in [
            "client = yes",
            "accept = 127.0.0.1:7001",
            "connect = 127.0.0.1:7002",
            "cert = /c/svid.pem",
            "key = /c/svid_key.pem",
            "CAfile = /c/bundle.pem",
            "verifyChain = yes",
            "checkHost = in.bench",
            "sslVersionMin = TLSv1.3",
            "foreground = yes",
        ] {
            assert!(has_line(&out, line), "{line:?} missing:\n{out}");
        }
        let inbound = Peer::Stunnel.config(&hop(Side::Inbound));
        assert!(has_line(&inbound, "client = no"), "{inbound}");
        assert!(has_line(&inbound, "requireCert = yes"), "{inbound}");
        assert!(has_line(&inbound, "verifyChain = yes"), "{inbound}");
        assert!(!inbound.contains("checkHost"), "{inbound}");
    }

    #[test]
    fn nginx_requires_client_certificates_inbound_and_verifies_the_upstream() {
        let inbound = Peer::Nginx.config(&hop(Side::Inbound));
        for line in [
            "listen 127.0.0.1:7001 ssl;",
            "ssl_protocols TLSv1.3;",
            "ssl_verify_client on;",
            "ssl_client_certificate /c/bundle.pem;",
            "ssl_verify_depth 2;",
            "proxy_pass 127.0.0.1:7002;",
            "worker_processes 2;",
            "daemon off;",
            "pid /d/nginx.pid;",
        ] {
            assert!(has_line(&inbound, line), "{line:?} missing:\n{inbound}");
        }
        assert!(inbound.starts_with(&format!("load_module {NGINX_STREAM_MODULE};")));
        let out = Peer::Nginx.config(&hop(Side::Outbound));
        for line in [
            "listen 127.0.0.1:7001;",
            "proxy_ssl on;",
            "proxy_ssl_protocols TLSv1.3;",
            "proxy_ssl_certificate /c/svid.pem;",
            "proxy_ssl_trusted_certificate /c/bundle.pem;",
            "proxy_ssl_verify on;",
            "proxy_ssl_name in.bench;",
        ] {
            assert!(has_line(&out, line), "{line:?} missing:\n{out}");
        }
        assert_eq!(out.matches('{').count(), out.matches('}').count(), "{out}");
    }

    #[test]
    fn haproxy_puts_tls_on_the_right_side() {
        let inbound = Peer::Haproxy.config(&hop(Side::Inbound));
        assert!(
            has_line(
                &inbound,
                "bind 127.0.0.1:7001 ssl crt /c/combined.pem ca-file /c/bundle.pem verify required ssl-min-ver TLSv1.3"
            ),
            "{inbound}"
        );
        assert!(
            has_line(&inbound, "server next 127.0.0.1:7002"),
            "{inbound}"
        );
        let out = Peer::Haproxy.config(&hop(Side::Outbound));
        assert!(has_line(&out, "bind 127.0.0.1:7001"), "{out}");
        assert!(
            has_line(
                &out,
                "server next 127.0.0.1:7002 ssl crt /c/combined.pem ca-file /c/bundle.pem verify required ssl-min-ver TLSv1.3 verifyhost in.bench"
            ),
            "{out}"
        );
        assert!(has_line(&out, "nbthread 2"), "{out}");
        assert!(has_line(&out, "mode tcp"), "{out}");
    }

    #[test]
    fn commands_run_in_the_foreground() {
        let h = hop(Side::Inbound);
        let cfg = Path::new("/d/x.conf");
        let args = |p: Peer| -> Vec<String> {
            p.command(Path::new("/bin/x"), cfg, &h)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(args(Peer::Haproxy), ["-db", "-f", "/d/x.conf"]);
        assert_eq!(
            args(Peer::Nginx),
            ["-e", "stderr", "-p", "/d", "-c", "/d/x.conf"]
        );
        assert_eq!(args(Peer::Stunnel), ["/d/x.conf"]);
    }
}
