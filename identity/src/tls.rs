//! rustls configuration that authenticates peers by SPIFFE ID instead of host name.
//!
//! Clients verify a server's chain against the trust bundle and then its SPIFFE ID against
//! an [`IdMatcher`]; host names are ignored (X509-SVID.md §5.2). Servers either require a
//! client certificate that chains to the bundle ([`SpiffeClientVerifier`]) or, for the CA,
//! defer the chain check to the request handler ([`DeferredClientVerifier`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DistinguishedName, Error, NamedGroup, ServerConfig,
    SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::bundle::{Federated, TrustBundle, Usage, verify_federated};
use crate::pattern::IdMatcher;
use crate::svid::SvidError;

/// The one crypto provider of the workspace: aws-lc-rs, offering the hybrid post-quantum
/// key exchange first ([`KeyExchange::PostQuantumPreferred`]).
pub fn provider() -> Arc<CryptoProvider> {
    provider_for(KeyExchange::PostQuantumPreferred)
}

/// The aws-lc-rs provider with the key-exchange groups of `kx`, in order of preference.
pub fn provider_for(kx: KeyExchange) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: kx.groups().to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// Which key exchanges a config offers (as a client, in this order) or accepts (as a
/// server, in the client's order). Certificates and signatures are ECDSA P-256 either way:
/// this is about the session keys, which a recording of today's traffic would need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyExchange {
    /// X25519MLKEM768 (X25519 combined with ML-KEM-768, draft-ietf-tls-ecdhe-mlkem) first,
    /// then X25519, P-256 and P-384 for peers without it, such as OpenSSL before 3.5. A
    /// rustls client sends key shares for both X25519MLKEM768 and X25519, so the fallback
    /// costs no extra round trip.
    #[default]
    PostQuantumPreferred,
    /// X25519MLKEM768 only: a peer without it fails the handshake (a server reports
    /// `PeerIncompatible::NoKxGroupsInCommon`, see [`kx_group_name`]).
    PostQuantumRequired,
}

static PQ_PREFERRED: &[&dyn SupportedKxGroup] = &[
    kx_group::X25519MLKEM768,
    kx_group::X25519,
    kx_group::SECP256R1,
    kx_group::SECP384R1,
];

static PQ_REQUIRED: &[&dyn SupportedKxGroup] = &[kx_group::X25519MLKEM768];

impl KeyExchange {
    fn groups(self) -> &'static [&'static dyn SupportedKxGroup] {
        match self {
            Self::PostQuantumPreferred => PQ_PREFERRED,
            Self::PostQuantumRequired => PQ_REQUIRED,
        }
    }
}

/// The IANA name of a negotiated key-exchange group (TLS Supported Groups registry), for
/// logs and metric labels: a fixed set, so a peer cannot grow a label's values.
pub fn kx_group_name(group: NamedGroup) -> &'static str {
    match group {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
        NamedGroup::X25519 => "x25519",
        NamedGroup::secp256r1 => "secp256r1",
        NamedGroup::secp384r1 => "secp384r1",
        _ => "other",
    }
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

/// A server config presenting `identity`, verifying clients with `client_verifier`,
/// accepting the key exchanges of `kx`.
pub fn server_config(
    identity: &Identity,
    client_verifier: Arc<dyn ClientCertVerifier>,
    versions: Versions,
    kx: KeyExchange,
    alpn: &[&[u8]],
) -> Result<ServerConfig, ConfigError> {
    let mut config = ServerConfig::builder_with_provider(provider_for(kx))
        .with_protocol_versions(versions.list())?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Serials (lowercase hex) of revoked leaf certificates, refused in handshakes.
pub type Revoked = Arc<HashSet<String>>;

/// A client config that accepts only servers whose SVID chains to `bundle` and whose
/// SPIFFE ID `allowed` matches, presenting `identity` if given; post-quantum key exchange
/// preferred. Servers of federated trust domains are not accepted (the control plane is
/// always in the own trust domain).
pub fn client_config(
    bundle: Arc<TrustBundle>,
    allowed: IdMatcher,
    identity: Option<&Identity>,
    versions: Versions,
    alpn: &[&[u8]],
) -> Result<ClientConfig, ConfigError> {
    let verifier = SpiffeServerVerifier::new(bundle, allowed);
    client_config_with(
        verifier,
        identity,
        versions,
        KeyExchange::PostQuantumPreferred,
        alpn,
    )
}

/// The data path's client config: like [`client_config`], and also refuses servers whose
/// leaf serial is in `revoked`, offers the key exchanges of `kx`, and accepts servers of
/// the trust domains `bundle` federates with (each against its own bundle) where `allowed`
/// names them.
pub fn client_config_revoking(
    bundle: Arc<TrustBundle>,
    allowed: IdMatcher,
    revoked: Revoked,
    identity: Option<&Identity>,
    versions: Versions,
    kx: KeyExchange,
    alpn: &[&[u8]],
) -> Result<ClientConfig, ConfigError> {
    let federated = bundle.federated().clone();
    let verifier = SpiffeServerVerifier::new(bundle, allowed)
        .revoking(revoked)
        .federating(federated);
    client_config_with(verifier, identity, versions, kx, alpn)
}

fn client_config_with(
    verifier: SpiffeServerVerifier,
    identity: Option<&Identity>,
    versions: Versions,
    kx: KeyExchange,
    alpn: &[&[u8]],
) -> Result<ClientConfig, ConfigError> {
    let builder = ClientConfig::builder_with_provider(provider_for(kx))
        .with_protocol_versions(versions.list())?
        .dangerous()
        // Not dangerous: SpiffeServerVerifier does full path validation; it only replaces
        // the host-name check with the SPIFFE ID check.
        .with_custom_certificate_verifier(Arc::new(verifier));
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

/// The handshake-signature methods of a rustls verifier, checked with the algorithms in
/// `self.algorithms`: every Trellis verifier checks signatures the same way and differs only
/// in how it judges the certificate chain. Needs `rustls` among the caller's dependencies.
#[macro_export]
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// Verifies a server by trust bundle and SPIFFE ID, ignoring the host name.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: Arc<TrustBundle>,
    federated: Federated,
    allowed: IdMatcher,
    revoked: Revoked,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Accepts servers chaining to `bundle` whose SPIFFE ID `allowed` matches.
    pub fn new(bundle: Arc<TrustBundle>, allowed: IdMatcher) -> Self {
        Self {
            bundle,
            federated: Federated::default(),
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

    /// Also accepts servers of the federated trust domains (each against its own bundle),
    /// where `allowed` names them.
    pub fn federating(mut self, federated: Federated) -> Self {
        self.federated = federated;
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
        let verified = verify_federated(
            &self.bundle,
            &self.federated,
            &chain,
            unix_to_system(now),
            Usage::Server,
        )
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

    crate::handshake_signatures!();
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
    federated: Federated,
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
            federated: Federated::default(),
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

    /// Also accepts clients of the federated trust domains, each against its own bundle
    /// (which identities may then connect is the caller's policy, as for its own domain).
    pub fn federating(mut self, federated: Federated) -> Self {
        for bundle in federated.values() {
            self.hints.extend(root_hints(bundle));
        }
        self.federated = federated;
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
        let verified = verify_federated(
            &self.bundle,
            &self.federated,
            &chain,
            unix_to_system(now),
            Usage::Client,
        )
        .map_err(svid_to_rustls)?;
        refuse_revoked(&self.revoked, &verified.serial)?;
        Ok(ClientCertVerified::assertion())
    }

    crate::handshake_signatures!();
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

    crate::handshake_signatures!();
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

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    use rustls::{ClientConnection, ServerConnection};

    use super::*;
    use crate::profile::{LeafSpec, SigningCa, new_intermediate, new_root};
    use crate::{IdPattern, TrustDomain, WorkloadKey};

    struct Pki {
        bundle: Arc<TrustBundle>,
        identity: Identity,
    }

    fn pki() -> Pki {
        let td = TrustDomain::new("pq.test").expect("td");
        let start = SystemTime::now() - Duration::from_secs(600);
        let day = Duration::from_secs(86_400);
        let root = new_root(&td, start, day).expect("root");
        let root_cert = root.cert.clone();
        let root = SigningCa::new(root.cert, root.key).expect("root signer");
        let inter = new_intermediate(&td, &root, start, day).expect("intermediate");
        let inter = SigningCa::new(inter.cert, inter.key).expect("signer");
        let key = WorkloadKey::generate().expect("key");
        let spki = key.public_key_der();
        let leaf = inter
            .sign_leaf(
                &LeafSpec {
                    spiffe_id: td.id("/workload").expect("id"),
                    dns_names: vec![],
                    public_point: spki[spki.len() - 65..].to_vec(),
                    lifetime: Duration::from_secs(3600),
                },
                SystemTime::now(),
            )
            .expect("leaf");
        Pki {
            bundle: Arc::new(TrustBundle::new(td, 1, vec![root_cert]).expect("bundle")),
            identity: Identity {
                chain: vec![leaf.der, inter.cert.clone()],
                key: key.private_key_der(),
            },
        }
    }

    impl Pki {
        fn server(&self, versions: Versions, kx: KeyExchange) -> ServerConfig {
            let verifier = Arc::new(SpiffeClientVerifier::new(self.bundle.clone()));
            server_config(&self.identity, verifier, versions, kx, &[b"t"]).expect("server")
        }

        fn client(&self, versions: Versions, kx: KeyExchange) -> ClientConfig {
            client_config_revoking(
                self.bundle.clone(),
                self.any(),
                Revoked::default(),
                Some(&self.identity),
                versions,
                kx,
                &[b"t"],
            )
            .expect("client")
        }

        fn any(&self) -> IdMatcher {
            IdMatcher(vec![IdPattern::any_in(self.bundle.trust_domain())])
        }

        /// A client as a TLS stack without ML-KEM builds it (OpenSSL before 3.5, rustls
        /// without the aws-lc-rs provider): X25519 and P-256 only.
        fn classical_client(&self, versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
            let provider = CryptoProvider {
                kx_groups: vec![kx_group::X25519, kx_group::SECP256R1],
                ..rustls::crypto::aws_lc_rs::default_provider()
            };
            let verifier = Arc::new(SpiffeServerVerifier::new(self.bundle.clone(), self.any()));
            let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(versions)
                .expect("versions")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_auth_cert(self.identity.chain.clone(), self.identity.key.clone_key())
                .expect("client");
            config.alpn_protocols = vec![b"t".to_vec()];
            config
        }

        /// A server without ML-KEM: X25519 and P-256 only.
        fn classical_server(&self) -> ServerConfig {
            let provider = CryptoProvider {
                kx_groups: vec![kx_group::X25519, kx_group::SECP256R1],
                ..rustls::crypto::aws_lc_rs::default_provider()
            };
            let verifier = Arc::new(SpiffeClientVerifier::new(self.bundle.clone()));
            let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(TLS13_ONLY)
                .expect("versions")
                .with_client_cert_verifier(verifier)
                .with_single_cert(self.identity.chain.clone(), self.identity.key.clone_key())
                .expect("server");
            config.alpn_protocols = vec![b"t".to_vec()];
            config
        }
    }

    /// What one side of a handshake saw: the group it negotiated, or why it failed.
    type Outcome = Result<&'static str, Error>;

    fn negotiated(common: &rustls::CommonState) -> &'static str {
        common
            .negotiated_key_exchange_group()
            .map_or("none", |g| kx_group_name(g.name()))
    }

    fn drive<D>(conn: &mut rustls::ConnectionCommon<D>, sock: &mut TcpStream) -> Result<(), Error> {
        while conn.is_handshaking() {
            conn.complete_io(sock).map_err(|e| match e.into_inner() {
                Some(inner) => match inner.downcast::<Error>() {
                    Ok(tls) => *tls,
                    Err(other) => Error::General(other.to_string()),
                },
                None => Error::General("I/O error".into()),
            })?;
        }
        // Flush the last flight (the client's Finished), so the server completes too.
        while conn.wants_write() {
            let _ = conn.write_tls(sock);
        }
        Ok(())
    }

    /// A real handshake over 127.0.0.1: (the client's outcome, the server's).
    fn handshake(client: ClientConfig, server: ServerConfig) -> (Outcome, Outcome) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        let server = Arc::new(server);
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().expect("accept");
            let mut conn = ServerConnection::new(server).expect("server connection");
            let outcome = drive(&mut *conn, &mut sock).map(|()| negotiated(&conn));
            let _ = tx.send(outcome);
        });
        let mut sock = TcpStream::connect(addr).expect("connect");
        let name = ServerName::try_from("workload").expect("name");
        let mut conn = ClientConnection::new(Arc::new(client), name).expect("client connection");
        let client_outcome = drive(&mut *conn, &mut sock).map(|()| negotiated(&conn));
        drop(sock);
        let server_outcome = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server finished");
        (client_outcome, server_outcome)
    }

    #[test]
    fn both_sides_negotiate_the_hybrid_post_quantum_group_by_default() {
        let pki = pki();
        for versions in [Versions::Tls13, Versions::Tls12And13] {
            let (client, server) = handshake(
                pki.client(Versions::Tls13, KeyExchange::default()),
                pki.server(versions, KeyExchange::default()),
            );
            assert_eq!(client.expect("client"), "X25519MLKEM768");
            assert_eq!(server.expect("server"), "X25519MLKEM768");
        }
        // The plain provider, as the CA's JWKS client and the sidecar's bootstrap use it.
        assert_eq!(
            provider().kx_groups[0].name(),
            NamedGroup::X25519MLKEM768,
            "hybrid first"
        );
    }

    #[test]
    fn a_peer_without_ml_kem_falls_back_to_x25519() {
        let pki = pki();
        let (client, server) = handshake(
            pki.classical_client(TLS13_ONLY),
            pki.server(Versions::Tls13, KeyExchange::default()),
        );
        assert_eq!(client.expect("client"), "x25519");
        assert_eq!(server.expect("server"), "x25519");
        // TLS 1.2 (tools talking to the CA) has no hybrid group: classical ECDHE.
        let (client, server) = handshake(
            pki.classical_client(&[&rustls::version::TLS12]),
            pki.server(Versions::Tls12And13, KeyExchange::default()),
        );
        assert_eq!(client.expect("client"), "x25519");
        assert_eq!(server.expect("server"), "x25519");
        // Our client against a server without ML-KEM.
        let (client, server) = handshake(
            pki.client(Versions::Tls13, KeyExchange::default()),
            pki.classical_server(),
        );
        assert_eq!(client.expect("client"), "x25519");
        assert_eq!(server.expect("server"), "x25519");
    }

    #[test]
    fn requiring_post_quantum_refuses_a_peer_without_it_either_way() {
        let pki = pki();
        let required = KeyExchange::PostQuantumRequired;
        let (client, server) = handshake(
            pki.classical_client(TLS13_ONLY),
            pki.server(Versions::Tls13, required),
        );
        assert!(
            matches!(
                server,
                Err(Error::PeerIncompatible(
                    rustls::PeerIncompatible::NoKxGroupsInCommon
                ))
            ),
            "{server:?}"
        );
        assert!(client.is_err(), "{client:?}");
        let (client, server) = handshake(
            pki.client(Versions::Tls13, required),
            pki.classical_server(),
        );
        assert!(client.is_err(), "{client:?}");
        assert!(server.is_err(), "{server:?}");
        // Both sides with it: the hybrid group, as without the requirement.
        let (client, server) = handshake(
            pki.client(Versions::Tls13, required),
            pki.server(Versions::Tls13, KeyExchange::default()),
        );
        assert_eq!(client.expect("client"), "X25519MLKEM768");
        assert_eq!(server.expect("server"), "X25519MLKEM768");
    }
}
