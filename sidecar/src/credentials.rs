//! The sidecar's current identity, as published by the identity agent to the data path.
//!
//! A [`Credentials`] value can only be built from a chain that verifies against the bundle
//! and (if one is expected) names the expected SPIFFE ID, so a bad response from the CA can
//! never replace a good certificate. Every new TLS handshake reads the newest value from the
//! watch channel; established connections keep theirs (linkerd2-proxy's credential store).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use trellis_identity::bundle::Usage;
use trellis_identity::clock::Clock;
use trellis_identity::svid::SvidError;
use trellis_identity::tls::{
    self, ClockTime, Identity, KeyExchange, Revoked, SpiffeClientVerifier, Versions,
};
use trellis_identity::{CertInfo, IdMatcher, SpiffeId, TrustBundle, VerifiedSvid};

/// The receiving end the data path holds: `None` until the first certificate arrives.
pub type CredentialsRx = watch::Receiver<Option<Arc<Credentials>>>;

/// ALPN for sidecar-to-sidecar connections (raw TCP tunnelled in TLS 1.3).
pub const ALPN_TRELLIS: &[u8] = b"trellis/1";

/// Why a certificate response was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("CA returned an empty chain")]
    EmptyChain,
    #[error("CA returned a chain that does not verify against the trust bundle: {0}")]
    Unverified(#[from] SvidError),
    #[error("CA returned a certificate for {found}, expected {expected}")]
    WrongIdentity { found: String, expected: String },
    #[error("CA returned a certificate for a different key than the one this sidecar holds")]
    WrongKey,
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// A validated certificate, its key, the bundle it verified against, and TLS configs.
pub struct Credentials {
    /// Identity, serial, expiry and root of the leaf.
    pub svid: VerifiedSvid,
    pub not_before: SystemTime,
    /// Chain (leaf first) and private key.
    pub identity: Identity,
    pub bundle: Arc<TrustBundle>,
    /// Inbound: TLS 1.3, requires a client certificate chaining to the bundle.
    pub server_config: Arc<ServerConfig>,
    /// The key exchanges both directions offer or accept (`tls.require_post_quantum`).
    pub key_exchange: KeyExchange,
    /// Serials of revoked peers: refused in handshakes both ways.
    pub revoked: Revoked,
    clock: Arc<dyn Clock>,
    /// Outbound configs, one per set of allowed upstream identities.
    client_configs: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

impl Credentials {
    /// Validates `chain` (leaf first) against `bundle` and builds the TLS configs.
    /// `expected` pins the identity (the current one, on renewal); `public_key_der` is the
    /// SubjectPublicKeyInfo of the key the sidecar generated; `key_exchange` applies to the
    /// data path both ways.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        public_key_der: &[u8],
        bundle: Arc<TrustBundle>,
        expected: Option<&SpiffeId>,
        clock: Arc<dyn Clock>,
        key_exchange: KeyExchange,
    ) -> Result<Self, CredentialError> {
        Self::build(
            Identity { chain, key },
            public_key_der,
            bundle,
            expected,
            clock,
            Revoked::default(),
            key_exchange,
        )
    }

    fn build(
        identity: Identity,
        public_key_der: &[u8],
        bundle: Arc<TrustBundle>,
        expected: Option<&SpiffeId>,
        clock: Arc<dyn Clock>,
        revoked: Revoked,
        key_exchange: KeyExchange,
    ) -> Result<Self, CredentialError> {
        let chain = &identity.chain;
        let leaf = chain.first().ok_or(CredentialError::EmptyChain)?;
        let info = CertInfo::parse(leaf)?;
        if info.spki_der != public_key_der {
            return Err(CredentialError::WrongKey);
        }
        // Server and client usage: the certificate serves both directions.
        let svid = bundle.verify(chain, clock.now(), Usage::Client)?;
        bundle.verify(chain, clock.now(), Usage::Server)?;
        if let Some(expected) = expected
            && &svid.spiffe_id != expected
        {
            return Err(CredentialError::WrongIdentity {
                found: svid.spiffe_id.to_string(),
                expected: expected.to_string(),
            });
        }
        // Peers of federated trust domains pass the handshake against their own domain's
        // bundle; whether they may talk is the listener's policy, which names them or not.
        let verifier = Arc::new(
            SpiffeClientVerifier::new(bundle.clone())
                .revoking(revoked.clone())
                .federating(bundle.federated().clone()),
        );
        let mut server_config = tls::server_config(
            &identity,
            verifier,
            Versions::Tls13,
            key_exchange,
            &[ALPN_TRELLIS],
        )
        .map_err(|e| CredentialError::Tls(e.to_string()))?;
        server_config.time_provider = Arc::new(ClockTime(clock.clone()));
        Ok(Self {
            svid,
            not_before: info.not_before,
            identity,
            bundle,
            server_config: Arc::new(server_config),
            key_exchange,
            revoked,
            clock,
            client_configs: Mutex::new(HashMap::new()),
        })
    }

    /// The same certificate under a new bundle (after a bundle change), re-validated.
    pub fn with_bundle(&self, bundle: Arc<TrustBundle>) -> Result<Self, CredentialError> {
        self.rebuild(bundle, self.revoked.clone())
    }

    /// The same certificate refusing a new set of revoked peers.
    pub fn with_revoked(&self, revoked: Revoked) -> Result<Self, CredentialError> {
        self.rebuild(self.bundle.clone(), revoked)
    }

    fn rebuild(&self, bundle: Arc<TrustBundle>, revoked: Revoked) -> Result<Self, CredentialError> {
        let public_key = CertInfo::parse(&self.identity.chain[0])?.spki_der;
        Self::build(
            self.identity.clone(),
            &public_key,
            bundle,
            Some(&self.svid.spiffe_id),
            self.clock.clone(),
            revoked,
            self.key_exchange,
        )
    }

    /// An outbound TLS 1.3 config presenting this certificate and accepting only upstreams
    /// whose SPIFFE ID `allowed` matches. Built once per matcher and cached.
    pub fn client_config(&self, allowed: &IdMatcher) -> Result<Arc<ClientConfig>, CredentialError> {
        let key = allowed.to_string();
        let mut cache = self
            .client_configs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(config) = cache.get(&key) {
            return Ok(config.clone());
        }
        let mut config = tls::client_config_revoking(
            self.bundle.clone(),
            allowed.clone(),
            self.revoked.clone(),
            Some(&self.identity),
            Versions::Tls13,
            self.key_exchange,
            &[ALPN_TRELLIS],
        )
        .map_err(|e| CredentialError::Tls(e.to_string()))?;
        config.time_provider = Arc::new(ClockTime(self.clock.clone()));
        let config = Arc::new(config);
        cache.insert(key, config.clone());
        Ok(config)
    }

    /// True once the certificate's NotAfter has passed.
    pub fn expired(&self) -> bool {
        self.clock.now() >= self.svid.not_after
    }

    /// Time until NotAfter by the credentials' clock (zero once expired).
    pub fn time_left(&self) -> std::time::Duration {
        self.svid
            .not_after
            .duration_since(self.clock.now())
            .unwrap_or_default()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("spiffe_id", &self.svid.spiffe_id)
            .field("serial", &self.svid.serial)
            .field("not_after", &self.svid.not_after)
            .field("bundle_version", &self.bundle.version())
            .field("key", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use trellis_identity::clock::SystemClock;
    use trellis_identity::profile::{LeafSpec, SigningCa, new_intermediate, new_root};
    use trellis_identity::{TrustDomain, WorkloadKey};

    use super::*;

    struct TestCa {
        intermediate: SigningCa,
        bundle: Arc<TrustBundle>,
    }

    fn test_ca() -> TestCa {
        let td = TrustDomain::new("cluster.local").expect("td");
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let root = new_root(&td, now, 10 * day).expect("root");
        let root = SigningCa::new(root.cert, root.key).expect("root signer");
        let inter = new_intermediate(&td, &root, now, day).expect("intermediate");
        let intermediate = SigningCa::new(inter.cert, inter.key).expect("signer");
        let bundle = Arc::new(TrustBundle::new(td, 1, vec![root.cert.clone()]).expect("bundle"));
        TestCa {
            intermediate,
            bundle,
        }
    }

    fn leaf(ca: &TestCa, key: &WorkloadKey, id: &str) -> Vec<CertificateDer<'static>> {
        let spki = key.public_key_der();
        let signed = ca
            .intermediate
            .sign_leaf(
                &LeafSpec {
                    spiffe_id: SpiffeId::new(id).expect("id"),
                    dns_names: vec![],
                    public_point: spki[spki.len() - 65..].to_vec(),
                    lifetime: Duration::from_secs(3600),
                },
                SystemTime::now(),
            )
            .expect("leaf");
        vec![signed.der, ca.intermediate.cert.clone()]
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: &WorkloadKey,
        bundle: &Arc<TrustBundle>,
        expected: Option<&str>,
    ) -> Result<Credentials, CredentialError> {
        let expected = expected.map(|e| SpiffeId::new(e).expect("id"));
        Credentials::new(
            chain,
            key.private_key_der(),
            &key.public_key_der(),
            bundle.clone(),
            expected.as_ref(),
            Arc::new(SystemClock),
            KeyExchange::default(),
        )
    }

    const WEB: &str = "spiffe://cluster.local/ns/a/sa/web";

    #[test]
    fn a_good_response_is_accepted() {
        let ca = test_ca();
        let key = WorkloadKey::generate().expect("key");
        let creds = build(leaf(&ca, &key, WEB), &key, &ca.bundle, Some(WEB)).expect("accepted");
        assert_eq!(creds.svid.spiffe_id.as_str(), WEB);
        assert!(!creds.expired());
        assert!(
            !format!("{creds:?}").contains("BEGIN"),
            "no key material in Debug"
        );
    }

    #[test]
    fn bad_responses_are_rejected_with_the_reason() {
        let ca = test_ca();
        let other = test_ca();
        let key = WorkloadKey::generate().expect("key");
        let other_key = WorkloadKey::generate().expect("key");

        let foreign = build(leaf(&other, &key, WEB), &key, &ca.bundle, Some(WEB));
        assert!(
            matches!(foreign, Err(CredentialError::Unverified(_))),
            "{foreign:?}"
        );

        let wrong_id = build(
            leaf(&ca, &key, "spiffe://cluster.local/ns/a/sa/db"),
            &key,
            &ca.bundle,
            Some(WEB),
        );
        assert!(
            matches!(wrong_id, Err(CredentialError::WrongIdentity { .. })),
            "{wrong_id:?}"
        );

        let wrong_key = build(leaf(&ca, &other_key, WEB), &key, &ca.bundle, Some(WEB));
        assert!(
            matches!(wrong_key, Err(CredentialError::WrongKey)),
            "{wrong_key:?}"
        );

        let garbage = build(
            vec![CertificateDer::from(b"garbage".to_vec())],
            &key,
            &ca.bundle,
            None,
        );
        assert!(
            matches!(garbage, Err(CredentialError::Unverified(_))),
            "{garbage:?}"
        );

        let empty = build(vec![], &key, &ca.bundle, None);
        assert!(
            matches!(empty, Err(CredentialError::EmptyChain)),
            "{empty:?}"
        );
    }

    #[test]
    fn a_bundle_change_keeps_the_certificate_only_if_it_still_verifies() {
        let ca = test_ca();
        let other = test_ca();
        let key = WorkloadKey::generate().expect("key");
        let creds = build(leaf(&ca, &key, WEB), &key, &ca.bundle, None).expect("accepted");
        let mut roots = ca.bundle.roots().to_vec();
        roots.extend(other.bundle.roots().iter().cloned());
        let both =
            Arc::new(TrustBundle::new(ca.bundle.trust_domain().clone(), 2, roots).expect("bundle"));
        let updated = creds
            .with_bundle(both)
            .expect("still verifies with both roots");
        assert_eq!(updated.bundle.version(), 2);
        assert!(
            creds.with_bundle(other.bundle.clone()).is_err(),
            "old root gone: refused"
        );
    }
}
