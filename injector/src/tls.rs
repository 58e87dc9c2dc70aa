//! The webhook's serving certificate, picked up again when its files change: cert-manager
//! or an updated Secret rotates them in place, and the webhook must not need a restart (its
//! certificate expiring would block pod creation in every injected namespace).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

/// The files are looked at (one `stat` each) at most this often, during handshakes.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Reads a certificate chain and its key, checking that they belong together.
pub fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "{} and {} do not belong together: {e}",
            cert.display(),
            key.display()
        )
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

struct Current {
    key: Arc<CertifiedKey>,
    stamps: [Option<SystemTime>; 2],
    checked: Instant,
}

/// Serves the newest certificate in `cert`/`key`; a pair that does not load (say, the
/// certificate already replaced but not yet the key) keeps the previous one in service.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair once; fails if it does not load now. Reloads are counted in `metrics`.
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let stamps = [modified(&cert), modified(&key)];
        let loaded = load(&cert, &key, &provider)?;
        Ok(Self {
            current: Mutex::new(Current {
                key: Arc::new(loaded),
                stamps,
                checked: Instant::now(),
            }),
            cert,
            key,
            provider,
            metrics,
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.checked.elapsed() >= CHECK_EVERY {
            current.checked = Instant::now();
            let stamps = [modified(&self.cert), modified(&self.key)];
            if stamps != current.stamps {
                match load(&self.cert, &self.key, &self.provider) {
                    Ok(loaded) => {
                        current.key = Arc::new(loaded);
                        current.stamps = stamps;
                        self.metrics.certificate_reloaded();
                        tracing::info!(file = %self.cert.display(), "serving certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the current serving certificate");
                    }
                }
            }
        }
        Some(current.key.clone())
    }
}

/// The server's TLS configuration: HTTP/1.1 over TLS 1.2 or 1.3, no client certificates
/// (the API server does not present one), the certificate from `certificate`.
pub fn server_config(certificate: Arc<ReloadingCert>) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(certificate.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
