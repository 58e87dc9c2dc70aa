//! Connecting to the CA's admin API over mutual TLS, and turning every way that can fail
//! into one line that names the problem and the fix.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::transport::Channel;
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{CertInfo, IdMatcher, SpiffeId, TrustBundle, TrustDomain, pem};
use trellis_proto::admin::v1::admin_client::AdminClient;

use crate::context::Settings;
use crate::error::usage;
use crate::timefmt;

/// The path of the CA's own SPIFFE ID; the CLI accepts no other server.
const CA_PATH: &str = "/trellis/ca";
/// How long one admin call may take once connected.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// What to run when a credential file cannot be used.
const LOGIN_HINT: &str =
    "run `trellis login --ca-addr HOST:PORT --admin-dir DIR` with current admin credentials";

/// Everything needed to reach the CA, loaded and checked before any connection.
#[derive(Debug)]
pub struct Target {
    /// The address as the user wrote it, for messages.
    pub addr_text: String,
    /// Every address of every replica given (`HOST:PORT[,HOST:PORT...]`, each name with
    /// all the addresses it resolves to), tried in turn.
    pub addrs: Vec<SocketAddr>,
    pub trust_domain: TrustDomain,
    pub admin_cert: PathBuf,
    pub bundle_path: PathBuf,
    pub bundle: Arc<TrustBundle>,
    /// The admin certificate's fields (SPIFFE ID, expiry).
    pub admin_info: CertInfo,
    identity: Identity,
}

fn required<'a, T: ?Sized>(value: Option<&'a T>, what: &str, flag: &str) -> anyhow::Result<&'a T> {
    value.ok_or_else(|| {
        usage(format!(
            "no {what} configured: run `trellis login --ca-addr HOST:PORT --admin-dir DIR` once, or pass {flag}"
        ))
    })
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        usage(format!(
            "cannot read {what} {}: {e}; {LOGIN_HINT}",
            path.display()
        ))
    })
}

/// Resolves `HOST:PORT[,HOST:PORT...]` (CA replicas) to every address they name, in order.
pub fn resolve_addrs(text: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let mut all = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addrs = part.to_socket_addrs().map_err(|e| {
            usage(format!(
                "CA address {part:?} is not a usable host:port ({e}); pass e.g. --ca-addr 127.0.0.1:8443"
            ))
        })?;
        all.extend(addrs.filter(|a| !all.contains(a)).collect::<Vec<_>>());
    }
    if all.is_empty() {
        return Err(usage(format!("CA address {text:?} resolves to no address")));
    }
    Ok(all)
}

/// Fails if the admin certificate has expired or is not valid yet.
pub fn check_validity(info: &CertInfo, path: &Path, now: SystemTime) -> anyhow::Result<()> {
    if timefmt::is_expired(info.not_after, now) {
        anyhow::bail!(
            "admin certificate {} expired {} ({}); get a new admin certificate from whoever runs the CA (its data directory's admin/ folder), then run `trellis login` again",
            path.display(),
            timefmt::expiry(info.not_after, now).trim_start_matches("expired "),
            timefmt::rfc3339(info.not_after)
        );
    }
    if info.not_before > now {
        anyhow::bail!(
            "admin certificate {} is not valid until {}; check this machine's clock",
            path.display(),
            timefmt::rfc3339(info.not_before)
        );
    }
    Ok(())
}

/// Loads the admin chain and key, whatever the certificate's validity; fails early and
/// clearly if either is missing or unreadable.
fn read_admin_identity(cert: &Path, key: &Path) -> anyhow::Result<(Identity, CertInfo)> {
    let chain = pem::certs_from_pem(&read_file(cert, "admin certificate")?)
        .map_err(|e| usage(format!("admin certificate {}: {e}", cert.display())))?;
    let info = CertInfo::parse(&chain[0])
        .map_err(|e| usage(format!("admin certificate {}: {e}", cert.display())))?;
    let key_pem = zeroize::Zeroizing::new(crate::files::read_secret(key, "admin key")?);
    let key_der = pem::private_key_from_pem(&key_pem)
        .map_err(|e| usage(format!("admin key {}: {e}", key.display())))?;
    Ok((
        Identity {
            chain,
            key: key_der,
        },
        info,
    ))
}

impl Target {
    /// Loads and checks the settings' address, credentials and bundle.
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        let target = Self::load_unchecked(settings)?;
        check_validity(&target.admin_info, &target.admin_cert, SystemTime::now())?;
        Ok(target)
    }

    /// Like [`Target::load`], but an admin certificate out of its validity is loaded too
    /// (`trellis check` reports it rather than stopping at it).
    pub fn load_unchecked(settings: &Settings) -> anyhow::Result<Self> {
        let addr_text = required(settings.ca_addr.as_deref(), "CA address", "--ca-addr")?;
        let cert_path = required(
            settings.admin_cert.as_deref(),
            "admin certificate",
            "--admin-cert",
        )?;
        let key_path = required(settings.admin_key.as_deref(), "admin key", "--admin-key")?;
        let bundle_path = required(settings.bundle.as_deref(), "trust bundle", "--bundle")?;
        let addrs = resolve_addrs(addr_text)?;
        let (identity, info) = read_admin_identity(cert_path, key_path)?;
        let trust_domain = match &settings.trust_domain {
            Some(td) => TrustDomain::new(td)
                .map_err(|e| usage(format!("trust domain {td:?}: {e}")))?,
            None => info
                .spiffe_id()
                .map(|id| id.trust_domain())
                .map_err(|e| {
                    usage(format!(
                        "cannot tell the trust domain from admin certificate {} ({e}); pass --trust-domain",
                        cert_path.display()
                    ))
                })?,
        };
        let bundle = TrustBundle::from_pem(
            trust_domain.clone(),
            0,
            &read_file(bundle_path, "trust bundle")?,
        )
        .map_err(|e| usage(format!("trust bundle {}: {e}", bundle_path.display())))?;
        Ok(Self {
            addr_text: addr_text.to_owned(),
            addrs,
            trust_domain,
            admin_cert: cert_path.to_owned(),
            bundle_path: bundle_path.to_owned(),
            bundle: Arc::new(bundle),
            admin_info: info,
            identity,
        })
    }

    /// The SPIFFE ID the CA must present.
    pub fn ca_id(&self) -> anyhow::Result<SpiffeId> {
        self.trust_domain
            .id(CA_PATH)
            .map_err(|e| anyhow::anyhow!("CA SPIFFE ID: {e}"))
    }

    /// Opens a TLS channel to the CA, verifying it by bundle and SPIFFE ID and presenting
    /// the admin certificate.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let config = tls::client_config(
            self.bundle.clone(),
            IdMatcher::exact(self.ca_id()?),
            Some(&self.identity),
            Versions::Tls13,
            &[trellis_proto::channel::ALPN_H2],
        )?;
        let config = Arc::new(config);
        // Each replica in turn; the error of the last one if none answers.
        let mut last = None;
        for addr in &self.addrs {
            match trellis_proto::channel::connect(*addr, config.clone()).await {
                Ok(channel) => return Ok(channel),
                Err(e) => last = Some(self.transport_error(&e)),
            }
        }
        Err(last.expect("a target has at least one address"))
    }

    /// The certificate the CA presents, from a TLS handshake of its own (verified like
    /// every connection to the CA).
    pub async fn serving_certificate(&self) -> anyhow::Result<CertInfo> {
        let config = tls::client_config(
            self.bundle.clone(),
            IdMatcher::exact(self.ca_id()?),
            Some(&self.identity),
            Versions::Tls13,
            &[trellis_proto::channel::ALPN_H2],
        )?;
        let connect = async {
            // The first replica that accepts, as for every connection.
            let tcp = tokio::net::TcpStream::connect(self.addrs.as_slice()).await?;
            let name = rustls::pki_types::ServerName::try_from("trellis-ca")
                .expect("static DNS name is valid");
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
        };
        let stream = tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .map_err(|_| anyhow::anyhow!("TLS handshake with {} timed out", self.addr_text))?
            .map_err(|e| anyhow::anyhow!("TLS handshake with {}: {e}", self.addr_text))?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| anyhow::anyhow!("the CA presented no certificate"))?;
        Ok(CertInfo::parse(leaf)?)
    }

    /// Connects to the admin API.
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel().await?))
    }

    /// Runs one call with a deadline, mapping a refusal to a readable error.
    pub async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.status_error(what, &status)),
            Err(_) => Err(anyhow::anyhow!(
                "the CA at {} did not answer {what} within {}s; is it overloaded?",
                self.addr_text,
                CALL_TIMEOUT.as_secs()
            )),
        }
    }

    /// A refusal from the CA as one line that says what to do.
    pub fn status_error(&self, what: &str, status: &tonic::Status) -> anyhow::Error {
        use tonic::Code;
        let message = status.message();
        let addr = &self.addr_text;
        match status.code() {
            Code::Unauthenticated => anyhow::anyhow!(
                "the CA at {addr} refused admin certificate {}: {message}; use this CA's admin credentials (trellis login --ca-addr {addr} --admin-dir DIR)",
                self.admin_cert.display()
            ),
            Code::PermissionDenied => anyhow::anyhow!(
                "permission denied by the CA at {addr}: {message}; use an admin certificate (SPIFFE ID under spiffe://{}/trellis/admin/)",
                self.trust_domain
            ),
            Code::NotFound => anyhow::anyhow!("{message}"),
            // A safety check (root rotation): the CA's message already says how many, which
            // identities, and what `--force` would break.
            Code::FailedPrecondition => anyhow::anyhow!("{message}"),
            Code::InvalidArgument => anyhow::anyhow!("the CA refused {what}: {message}"),
            Code::Unavailable | Code::Unknown if is_transport_failure(status) => anyhow::anyhow!(
                "lost the connection to the CA at {addr} during {what}: {message}; try again"
            ),
            Code::Unavailable => {
                anyhow::anyhow!("the CA at {addr} cannot serve {what} right now: {message}")
            }
            code => anyhow::anyhow!(
                "the CA at {addr} failed {what} ({}): {message}",
                code.description()
            ),
        }
    }

    /// A failure to connect as one line: unreachable, or the CA's certificate refused.
    fn transport_error(&self, e: &tonic::transport::Error) -> anyhow::Error {
        let addr = &self.addr_text;
        match connect_failure(e) {
            ConnectFailure::Tls(detail) => anyhow::anyhow!(
                "the server at {addr} is not a CA this trust bundle accepts ({detail}); check --ca-addr and that {} is the CA's bundle.pem for trust domain {}",
                self.bundle_path.display(),
                self.trust_domain
            ),
            ConnectFailure::Io(detail) => anyhow::anyhow!(
                "cannot reach the CA at {addr}: {detail}; is trellis-ca running there? (set --ca-addr or TRELLIS_CA_ADDR, or run `trellis login`)"
            ),
        }
    }
}

/// Why a connection could not be set up.
#[derive(Debug, PartialEq, Eq)]
enum ConnectFailure {
    /// The TLS handshake failed (certificate refused either way, protocol mismatch).
    Tls(String),
    /// The TCP connection failed or timed out.
    Io(String),
}

/// Looks through the error's causes for a rustls error or an I/O error.
fn connect_failure(e: &(dyn std::error::Error + 'static)) -> ConnectFailure {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    while let Some(err) = cause {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return ConnectFailure::Tls(describe_tls(tls));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return ConnectFailure::Tls(describe_tls(tls));
            }
            return ConnectFailure::Io(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "connection timed out".into(),
                _ => io.to_string(),
            });
        }
        last = err.to_string();
        cause = err.source();
    }
    // tonic reports its connect timeout as a plain "timed out" error.
    ConnectFailure::Io(last)
}

/// A handshake failure in words; the SPIFFE checks' own messages are already readable.
fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError;
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other.0.to_string(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "its certificate does not chain to a root in the bundle".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired) => {
            "its certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidYet) => {
            "its certificate is not valid yet; check the clocks".into()
        }
        other => other.to_string(),
    }
}

fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_io_and_tls_causes() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            connect_failure(&refused),
            ConnectFailure::Io("connection refused".into())
        );
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            connect_failure(&tls),
            ConnectFailure::Tls("its certificate does not chain to a root in the bundle".into())
        );
    }

    #[test]
    fn resolves_addresses_or_says_how() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            resolve_addrs("127.0.0.1:8443").expect("valid"),
            vec![addr("127.0.0.1:8443")]
        );
        // Replicas, in order, each once.
        assert_eq!(
            resolve_addrs("127.0.0.1:8443, 127.0.0.2:8443,127.0.0.1:8443").expect("valid"),
            vec![addr("127.0.0.1:8443"), addr("127.0.0.2:8443")]
        );
        let err = resolve_addrs("127.0.0.1:8443,no-port").expect_err("missing port");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("--ca-addr"), "{err}");
    }

    #[test]
    fn expired_admin_certificate_is_refused_before_connecting() {
        use trellis_identity::profile::{LeafSpec, SigningCa, new_intermediate, new_root};
        let td = TrustDomain::new("example.org").expect("td");
        let day = Duration::from_secs(86_400);
        let then = SystemTime::now() - 200 * day;
        let root = new_root(&td, then, 3650 * day).expect("root");
        let root = SigningCa::new(root.cert, root.key).expect("root signer");
        let inter = new_intermediate(&td, &root, then, 365 * day).expect("intermediate");
        let inter = SigningCa::new(inter.cert, inter.key).expect("signer");
        let key = trellis_identity::WorkloadKey::generate().expect("key");
        let leaf = inter
            .sign_leaf(
                &LeafSpec {
                    spiffe_id: td.id("/trellis/admin/default").expect("id"),
                    dns_names: Vec::new(),
                    public_point: key.key_pair().public_key_raw().to_vec(),
                    lifetime: Duration::from_secs(3600),
                },
                then,
            )
            .expect("leaf");
        let info = CertInfo::parse(&leaf.der).expect("parses");
        let err =
            check_validity(&info, Path::new("admin.pem"), SystemTime::now()).expect_err("expired");
        let text = err.to_string();
        assert!(
            text.contains("admin certificate admin.pem expired 199d"),
            "{text}"
        );
        check_validity(&info, Path::new("admin.pem"), then).expect("valid back then");
    }

    #[test]
    fn missing_settings_name_login() {
        let err = Target::load(&Settings::default()).expect_err("nothing configured");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("trellis login"), "{err}");
    }
}
