//! The CA's admin API as the benchmarks use it: a client with the admin credentials the CA
//! wrote to its data directory, join tokens, and certificates for the benchmark's clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{IdMatcher, TrustBundle, WorkloadKey, pem};
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_proto::admin::v1::{CreateJoinTokenRequest, IssueCertificateRequest};

/// A channel to the CA, verified by its SPIFFE ID, presenting `identity` if given.
pub async fn channel(
    addr: SocketAddr,
    bundle: Arc<TrustBundle>,
    identity: Option<&Identity>,
) -> anyhow::Result<Channel> {
    let ca_id = bundle.trust_domain().id("/trellis/ca")?;
    let config = tls::client_config(
        bundle,
        IdMatcher::exact(ca_id),
        identity,
        Versions::Tls13,
        &[trellis_proto::channel::ALPN_H2],
    )?;
    Ok(trellis_proto::channel::connect(addr, Arc::new(config)).await?)
}

/// An admin client with `admin.pem` / `admin.key.pem` from `admin_dir`.
pub async fn client(
    addr: SocketAddr,
    bundle: Arc<TrustBundle>,
    admin_dir: &Path,
) -> anyhow::Result<AdminClient<Channel>> {
    let identity = Identity {
        chain: pem::certs_from_pem(&std::fs::read(admin_dir.join("admin.pem"))?)?,
        key: pem::private_key_from_pem(&std::fs::read(admin_dir.join("admin.key.pem"))?)?,
    };
    Ok(AdminClient::new(
        channel(addr, bundle, Some(&identity)).await?,
    ))
}

/// A join token for `spiffe_id`.
pub async fn token(admin: &mut AdminClient<Channel>, spiffe_id: &str) -> anyhow::Result<String> {
    Ok(admin
        .create_join_token(CreateJoinTokenRequest {
            spiffe_id: spiffe_id.to_owned(),
            ttl_seconds: 3600,
        })
        .await?
        .into_inner()
        .token)
}

/// A fresh key and a certificate for `spiffe_id`, issued through the admin API.
pub async fn issue(admin: &mut AdminClient<Channel>, spiffe_id: &str) -> anyhow::Result<Identity> {
    let key = WorkloadKey::generate()?;
    let response = admin
        .issue_certificate(IssueCertificateRequest {
            spiffe_id: spiffe_id.to_owned(),
            csr_der: key.csr_der(None)?,
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(Identity {
        chain: response
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
        key: key.private_key_der(),
    })
}
