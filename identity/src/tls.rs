//! rustls configuration that authenticates peers by SPIFFE ID instead of host name.
//!
//! Clients verify a server's chain against the trust bundle and then its SPIFFE ID against
//! an [`IdMatcher`]; host names are ignored (X509-SVID.md §5.2). Servers either require a
//! client certificate that chains to the bundle ([`SpiffeClientVerifier`]) or, for the CA,
//! defer the chain check to the request handler ([`DeferredClientVerifier`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::bundle::{TrustBundle, Usage};
use crate::pattern::IdMatcher;
use crate::svid::SvidError;

/// The one crypto provider of the workspace: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Which TLS versions a config speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 only: between sidecars.
    Tls13,
    /// TLS 1.2 and 1.3: the CA, for tools that still speak 1.2.
    Tls12And13,
}

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

impl Versions {
    fn list(self) -> &'static [&'static SupportedProtocolVersion] {
        match self {
            Self::Tls13 => TLS13_ONLY,
            Self::Tls12And13 => rustls::DEFAULT_VERSIONS,
        }
    }
}

/// A certificate chain (leaf first) and its private key, to present to peers.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The key's DER bytes are wiped when the identity goes (rustls-pki-types implements
/// `Zeroize` but does not zeroize on drop by itself).
impl Drop for Identity {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// Why a rustls config could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct ConfigError(#[from] Error);

/// A server config presenting `identity`, verifying clients with `client_verifier`.
pub fn server_config(
    identity: &Identity,
    client_verifier: Arc<dyn ClientCertVerifier>,
    versions: Versions,
    alpn: &[&[u8]],
) -> Result<ServerConfig, ConfigError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions.list())?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Serials (lowercase hex) of revoked leaf certificates, refused in handshakes.
pub type Revoked = Arc<HashSet<String>>;

/// A client config that accepts only servers whose SVID chains to `bundle` and whose
/// SPIFFE ID `allowed` matches, presenting `identity` if given.
pub fn client_config(
    bundle: Arc<TrustBundle>,
    allowed: IdMatcher,
    identity: Option<&Identity>,
    versions: Versions,
    alpn: &[&[u8]],
) -> Result<ClientConfig, ConfigError> {
    client_config_revoking(
        bundle,
        allowed,
        Revoked::default(),
        identity,
        versions,
        alpn,
    )
}

/// [`client_config`] that also refuses servers whose leaf serial is in `revoked`.
pub fn client_config_revoking(
    bundle: Arc<TrustBundle>,
    allowed: IdMatcher,
    revoked: Revoked,
    identity: Option<&Identity>,
    versions: Versions,
    alpn: &[&[u8]],
) -> Result<ClientConfig, ConfigError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(bundle, allowed).revoking(revoked));
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions.list())?
        .dangerous()
        // Not dangerous: SpiffeServerVerifier does full path validation; it only replaces
        // the host-name check with the SPIFFE ID check.
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn unix_to_system(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

fn svid_to_rustls(e: SvidError) -> Error {
    let cert_error = match e {
        SvidError::Expired { .. } => CertificateError::Expired,
        SvidError::NotYetValid { .. } => CertificateError::NotValidYet,
        SvidError::UnknownIssuer => CertificateError::UnknownIssuer,
        SvidError::Malformed(_) => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(cert_error)
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// Verifies a server by trust bundle and SPIFFE ID, ignoring the host name.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: Arc<TrustBundle>,
    allowed: IdMatcher,
    revoked: Revoked,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Accepts servers chaining to `bundle` whose SPIFFE ID `allowed` matches.
    pub fn new(bundle: Arc<TrustBundle>, allowed: IdMatcher) -> Self {
        Self {
            bundle,
            allowed,
            revoked: Revoked::default(),
            algorithms: algorithms(),
        }
    }

    /// Also refuses servers whose leaf serial is in `revoked`.
    pub fn revoking(mut self, revoked: Revoked) -> Self {
        self.revoked = revoked;
        self
    }
}

fn refuse_revoked(revoked: &Revoked, serial: &str) -> Result<(), Error> {
    if revoked.contains(serial) {
        return Err(Error::InvalidCertificate(CertificateError::Revoked));
    }
    Ok(())
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let verified = self
            .bundle
            .verify(&chain, unix_to_system(now), Usage::Server)
            .map_err(svid_to_rustls)?;
        refuse_revoked(&self.revoked, &verified.serial)?;
        if !self.allowed.matches(&verified.spiffe_id) {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(UnexpectedIdentity {
                    found: verified.spiffe_id.to_string(),
                    expected: self.allowed.to_string(),
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server presented a valid SVID, but not one of the identities the client expects.
#[derive(Debug, thiserror::Error)]
#[error("peer presented SPIFFE ID {found}, expected {expected}")]
pub struct UnexpectedIdentity {
    pub found: String,
    pub expected: String,
}

/// Requires a client certificate that chains to the bundle and is valid for client auth.
/// Which identities may connect is decided after the handshake (so refusals can be logged
/// with the peer's identity), by the caller's policy.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: Arc<TrustBundle>,
    hints: Vec<DistinguishedName>,
    revoked: Revoked,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    /// Verifies clients against `bundle`.
    pub fn new(bundle: Arc<TrustBundle>) -> Self {
        let hints = root_hints(&bundle);
        Self {
            bundle,
            hints,
            revoked: Revoked::default(),
            algorithms: algorithms(),
        }
    }

    /// Also refuses clients whose leaf serial is in `revoked`.
    pub fn revoking(mut self, revoked: Revoked) -> Self {
        self.revoked = revoked;
        self
    }
}

fn root_hints(bundle: &TrustBundle) -> Vec<DistinguishedName> {
    bundle
        .anchors()
        .iter()
        // webpki keeps the Name's contents; the TLS certificate_authorities list wants the
        // whole DER SEQUENCE (RFC 8446 §4.2.4), or peers such as openssl cannot parse it.
        .map(|a| DistinguishedName::in_sequence(a.subject.as_ref()))
        .collect()
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let verified = self
            .bundle
            .verify(&chain, unix_to_system(now), Usage::Client)
            .map_err(svid_to_rustls)?;
        refuse_revoked(&self.revoked, &verified.serial)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Asks for a client certificate but does not require one, and checks only that the client
/// holds the certificate's private key (the handshake signature). The chain, expiry and
/// identity are checked by the request handler against the current bundle, so that a
/// refused credential gets an application-level error that says why (an expired renewal
/// certificate, a foreign CA) instead of an anonymous TLS alert. Every handler that reads a
/// peer certificate accepted by this verifier must verify it first.
#[derive(Debug)]
pub struct DeferredClientVerifier {
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl DeferredClientVerifier {
    /// Offers client auth with `bundle`'s roots as hints.
    pub fn new(bundle: &TrustBundle) -> Self {
        Self {
            hints: root_hints(bundle),
            algorithms: algorithms(),
        }
    }
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Lets rustls read time from an injected [`Clock`](crate::clock::Clock), so certificate
/// validity during handshakes follows the same clock as the rest of the decision.
#[derive(Debug)]
pub struct ClockTime(pub Arc<dyn crate::clock::Clock>);

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<UnixTime> {
        self.0
            .now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(UnixTime::since_unix_epoch)
    }
}
