//! Test harness: a real CA on 127.0.0.1:0 with a real sled directory in a temp dir (or a
//! real PostgreSQL server the harness starts), and real tonic clients over TLS that verify
//! it by SPIFFE ID.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;
use trellis_ca::{Config, RunningCa};
use trellis_identity::clock::{Clock, SystemClock};
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{IdMatcher, SpiffeId, TrustBundle, TrustDomain, WorkloadKey, pem};
use trellis_proto::admin::v1::CreateJoinTokenRequest;
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_proto::ca::v1::certify_request::Credential;
use trellis_proto::ca::v1::workload_ca_client::WorkloadCaClient;
use trellis_proto::ca::v1::{CertifyRequest, CertifyResponse};

/// Where a test CA keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded sled database in the data directory.
    Sled,
    /// A PostgreSQL server of its own, started for the test and stopped with it.
    Postgres,
}

/// Runs each named `async fn(Backend)` once per store, as the tests `<name>::sled` and
/// `<name>::postgres`: for tests of what the store must keep, whichever it is. Prefix the
/// list with `multi_thread:` for a two-worker runtime.
#[macro_export]
macro_rules! on_both_stores {
    (multi_thread: $($test:ident),+ $(,)?) => {
        $crate::on_both_stores!(@with [tokio::test(flavor = "multi_thread", worker_threads = 2)] $($test),+);
    };
    (@with [$attr:meta] $($test:ident),+) => {$(
        mod $test {
            #[$attr]
            async fn sled() {
                super::$test($crate::common::Backend::Sled).await
            }
            #[$attr]
            async fn postgres() {
                super::$test($crate::common::Backend::Postgres).await
            }
        }
    )+};
    ($($test:ident),+ $(,)?) => {
        $crate::on_both_stores!(@with [tokio::test] $($test),+);
    };
}

pub struct TestCa {
    pub running: Option<RunningCa>,
    pub dir: tempfile::TempDir,
    pub clock: Arc<dyn Clock>,
    /// The database of a CA on PostgreSQL; declared after `running` so the CA stops first.
    pub postgres: Option<trellis_e2e::Postgres>,
}

pub fn config_for(data_dir: PathBuf) -> Config {
    let mut config = Config::for_data_dir(data_dir);
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.shutdown_grace = std::time::Duration::from_secs(2);
    config
}

/// Points `config` at `postgres` (with its key-encryption key), or leaves sled.
fn use_store(config: &mut Config, postgres: Option<&trellis_e2e::Postgres>) {
    use trellis_ca::store::postgres::config::{PasswordSource, PostgresConfig, UrlSource};
    let Some(db) = postgres else { return };
    let store = PostgresConfig::parse(&db.url(), UrlSource::Flag, PasswordSource::default(), None)
        .expect("the harness's database URL parses");
    config.store = trellis_ca::store::StoreConfig::Postgres(Box::new(store));
    config.key_encryption_key_file = Some(db.kek_file());
}

impl TestCa {
    pub async fn start() -> Self {
        Self::start_with_clock(Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::start_configured(clock, |_| {}).await
    }

    /// Starts with a configuration adjusted by `edit`.
    pub async fn start_configured(clock: Arc<dyn Clock>, edit: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(Backend::Sled, clock, edit).await
    }

    /// Starts on `backend` with the defaults.
    pub async fn start_with_store(backend: Backend) -> Self {
        Self::start_on(backend, Arc::new(SystemClock), |_| {}).await
    }

    /// Starts on `backend` with a configuration adjusted by `edit`.
    pub async fn start_on(
        backend: Backend,
        clock: Arc<dyn Clock>,
        edit: impl FnOnce(&mut Config),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let postgres = (backend == Backend::Postgres).then(trellis_e2e::Postgres::start);
        let mut config = config_for(dir.path().join("ca"));
        edit(&mut config);
        use_store(&mut config, postgres.as_ref());
        let running = trellis_ca::start_with_clock(config, clock.clone())
            .await
            .expect("CA starts");
        Self {
            running: Some(running),
            dir,
            clock,
            postgres,
        }
    }

    pub fn running(&self) -> &RunningCa {
        self.running.as_ref().expect("CA is running")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn trust_domain(&self) -> TrustDomain {
        self.running().trust_domain().clone()
    }

    pub fn id(&self, path: &str) -> SpiffeId {
        self.trust_domain().id(path).expect("valid id")
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.running().bundle()
    }

    /// Stops the CA gracefully and starts it again on the same data directory.
    pub async fn restart(&mut self) {
        self.restart_configured(|_| {}).await;
    }

    /// Restarts with a configuration adjusted by `edit` (the first start's edits are not
    /// kept).
    pub async fn restart_configured(&mut self, edit: impl FnOnce(&mut Config)) {
        let old = self.running.take().expect("running");
        old.shutdown().await.expect("clean shutdown");
        let mut config = config_for(self.data_dir());
        edit(&mut config);
        use_store(&mut config, self.postgres.as_ref());
        let running = trellis_ca::start_with_clock(config, self.clock.clone())
            .await
            .expect("CA restarts");
        self.running = Some(running);
    }

    pub async fn channel(&self, identity: Option<&Identity>) -> Channel {
        let ca_id = self.id("/trellis/ca");
        let config = tls::client_config(
            self.bundle(),
            IdMatcher::exact(ca_id),
            identity,
            Versions::Tls13,
            &[trellis_proto::channel::ALPN_H2],
        )
        .expect("client TLS config");
        trellis_proto::channel::connect(self.running().addr, Arc::new(config))
            .await
            .expect("connect to CA")
    }

    pub async fn workload(&self, identity: Option<&Identity>) -> WorkloadCaClient<Channel> {
        WorkloadCaClient::new(self.channel(identity).await)
    }

    pub fn admin_identity(&self) -> Identity {
        load_identity(&self.data_dir().join("admin"), "admin")
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel(Some(&self.admin_identity())).await)
    }

    pub async fn admin_with(&self, identity: Option<&Identity>) -> AdminClient<Channel> {
        AdminClient::new(self.channel(identity).await)
    }

    pub async fn token(&self, path: &str) -> String {
        self.admin()
            .await
            .create_join_token(CreateJoinTokenRequest {
                spiffe_id: self.id(path).to_string(),
                ttl_seconds: 0,
            })
            .await
            .expect("token created")
            .into_inner()
            .token
    }

    /// Bootstraps a workload with a fresh token; returns its key and certificate.
    pub async fn bootstrap(&self, path: &str) -> (WorkloadKey, CertifyResponse) {
        let token = self.token(path).await;
        let key = WorkloadKey::generate().expect("key");
        let response = self
            .workload(None)
            .await
            .certify(token_request(key.csr_der(None).expect("csr"), token))
            .await
            .expect("bootstrap succeeds")
            .into_inner();
        (key, response)
    }
}

pub fn token_request(csr_der: Vec<u8>, token: String) -> CertifyRequest {
    CertifyRequest {
        csr_der,
        credential: Some(Credential::JoinToken(token)),
        ttl_seconds: 0,
        bundle_version: 0,
    }
}

pub fn renewal_request(csr_der: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        csr_der,
        credential: None,
        ttl_seconds: 0,
        bundle_version: 0,
    }
}

pub fn identity_of(key: &WorkloadKey, response: &CertifyResponse) -> Identity {
    Identity {
        chain: response
            .chain_der
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect(),
        key: key.private_key_der(),
    }
}

pub fn load_identity(dir: &Path, name: &str) -> Identity {
    let chain =
        pem::certs_from_pem(&std::fs::read(dir.join(format!("{name}.pem"))).expect("read chain"))
            .expect("chain PEM");
    let key = pem::private_key_from_pem(
        &std::fs::read(dir.join(format!("{name}.key.pem"))).expect("read key"),
    )
    .expect("key PEM");
    Identity { chain, key }
}

/// The intermediate that signs the CA's certificates, read from its data directory as
/// whoever holds a copy of the key file could (the CA has only one until a root rotation).
pub fn intermediate_of(ca: &TestCa) -> trellis_identity::profile::SigningCa {
    let keys = ca.data_dir().join("keys");
    let key_file = std::fs::read_dir(&keys)
        .expect("keys directory")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("intermediate-"))
        })
        .expect("an intermediate key");
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(key_file).expect("read key")).expect("key PEM");
    let admin = load_identity(&ca.data_dir().join("admin"), "admin");
    let cert = admin.chain[1].clone();
    trellis_identity::profile::SigningCa::new(cert, key).expect("key matches")
}

/// The CA's `/metrics` page (its `http_listen` must be set).
pub async fn metrics(ca: &TestCa) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = ca.running().http_addr.expect("http endpoint");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut body),
    )
    .await
    .expect("response in time")
    .expect("read");
    body
}

/// The value of an unlabelled sample on a `/metrics` page.
pub fn sample(page: &str, name: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A CSR made with rcgen from arbitrary parameters and key, for hostile-input tests.
pub fn csr_from(params: CertificateParams, key: &KeyPair) -> Vec<u8> {
    params
        .serialize_request(key)
        .expect("CSR serialises")
        .der()
        .to_vec()
}

pub fn code_and_message(status: tonic::Status) -> (tonic::Code, String) {
    (status.code(), status.message().to_owned())
}
