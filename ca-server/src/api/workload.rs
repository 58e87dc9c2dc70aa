//! `trellis.ca.v1.WorkloadCA`: certify, and the trust bundle (one-shot and streamed).

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use trellis_proto::ca::v1::certify_request::Credential as ProtoCredential;
use trellis_proto::ca::v1::workload_ca_server::WorkloadCa;
use trellis_proto::ca::v1::{
    AckTrustBundleRequest, AckTrustBundleResponse, CertifyRequest, CertifyResponse,
    GetTrustBundleRequest, MintJwtSvidRequest, MintJwtSvidResponse, RevocationList,
    RevokedCertificate, TrustBundle, WatchRevocationsRequest, WatchTrustBundleRequest,
};

use super::convert;
use crate::auth::{PeerInfo, peer_chain};
use crate::error::CaError;
use crate::issuance::Credential;
use crate::limits;
use crate::services::Services;

/// The workload API over the CA's services.
#[derive(Debug, Clone)]
pub struct WorkloadService {
    ca: Arc<Services>,
    shutdown: CancellationToken,
}

impl WorkloadService {
    /// Serves `ca`; open streams end when `shutdown` becomes true.
    pub(crate) fn new(ca: Arc<Services>, shutdown: CancellationToken) -> Self {
        Self { ca, shutdown }
    }
}

type BundleStream = Pin<Box<dyn Stream<Item = Result<TrustBundle, Status>> + Send>>;
type RevocationStream = Pin<Box<dyn Stream<Item = Result<RevocationList, Status>> + Send>>;

/// Streams the current value of `source` at once and again on every change, until the
/// client goes away or the server shuts down.
fn follow<T, M>(
    mut source: watch::Receiver<T>,
    shutdown: CancellationToken,
    convert: impl Fn(&T) -> M + Send + 'static,
) -> Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>
where
    T: Send + Sync + 'static,
    M: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let current = convert(&source.borrow_and_update());
            if tx.send(Ok(current)).await.is_err() {
                return; // the client went away
            }
            tokio::select! {
                changed = source.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl WorkloadCa for WorkloadService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let chain = peer_chain(&request);
        let remote = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.remote_addr);
        let body = request.into_inner();
        // Admission before any cryptography, so that refusing is cheap.
        let (key, record) = limits::certify_key(
            &*self.ca.core.store,
            &self.ca.core.recent,
            body.credential.is_some(),
            &chain,
            remote,
        );
        let _permit = self
            .ca
            .limits
            .admit(&key, self.ca.core.now())
            .inspect_err(|r| tracing::debug!(?key, refused = %r.what, "certify throttled"))?;
        let credential = match body.credential {
            Some(ProtoCredential::JoinToken(token)) => Credential::JoinToken(token),
            Some(ProtoCredential::ServiceAccountToken(token)) => {
                Credential::ServiceAccountToken(token)
            }
            None => Credential::Renewal { chain, record },
        };
        let issued = self
            .ca
            .issuance
            .certify(&body.csr_der, credential, convert::ttl(body.ttl_seconds))
            .await
            .inspect_err(|e| tracing::info!(error = %e, "certify refused"))?;
        if body.bundle_version > 0
            && let Err(e) = self
                .ca
                .acks
                .report(issued.spiffe_id.as_str(), body.bundle_version)
                .await
        {
            // The certificate is issued and durable; the next report tries again.
            tracing::warn!(error = %e, "recording a bundle acknowledgement failed");
        }
        Ok(Response::new(convert::issued(issued)))
    }

    async fn get_trust_bundle(
        &self,
        _request: Request<GetTrustBundleRequest>,
    ) -> Result<Response<TrustBundle>, Status> {
        Ok(Response::new(convert::bundle(&self.ca.core.bundle())))
    }

    type WatchTrustBundleStream = BundleStream;

    async fn watch_trust_bundle(
        &self,
        _request: Request<WatchTrustBundleRequest>,
    ) -> Result<Response<BundleStream>, Status> {
        Ok(Response::new(follow(
            self.ca.core.watch_bundle(),
            self.shutdown.clone(),
            |b| convert::bundle(b),
        )))
    }

    type WatchRevocationsStream = RevocationStream;

    async fn watch_revocations(
        &self,
        _request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<RevocationStream>, Status> {
        Ok(Response::new(follow(
            self.ca.revocations.watch(),
            self.shutdown.clone(),
            |list| RevocationList {
                version: list.version,
                revoked: list
                    .entries
                    .iter()
                    .map(|r| RevokedCertificate {
                        serial: r.serial.clone(),
                        spiffe_id: r.spiffe_id.clone(),
                        revoked_at: convert::unix_timestamp(r.revoked_at),
                        not_after: convert::unix_timestamp(r.not_after),
                        reason: r.reason.clone(),
                    })
                    .collect(),
            },
        )))
    }

    async fn ack_trust_bundle(
        &self,
        request: Request<AckTrustBundleRequest>,
    ) -> Result<Response<AckTrustBundleResponse>, Status> {
        let chain = peer_chain(&request);
        if chain.is_empty() {
            return Err(CaError::Unauthenticated(
                "acknowledging a bundle needs your workload certificate as TLS client certificate"
                    .into(),
            )
            .into());
        }
        let verified = self
            .ca
            .core
            .verify_peer(&chain, self.ca.core.now())
            .map_err(|e| CaError::Unauthenticated(format!("certificate refused: {e}")))?;
        let version = request.into_inner().version;
        self.ca
            .acks
            .report(verified.spiffe_id.as_str(), version)
            .await
            .map_err(|e| {
                CaError::store("the acknowledgement was not recorded (send it again)", e)
            })?;
        Ok(Response::new(AckTrustBundleResponse {}))
    }

    async fn mint_jwt_svid(
        &self,
        request: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let chain = peer_chain(&request);
        let body = request.into_inner();
        let subject = self.ca.jwt_svids.subject(&chain)?;
        let minted = self
            .ca
            .jwt_svids
            .mint(&subject, body.audience, convert::ttl(body.ttl_seconds))
            .await
            .inspect_err(|e| tracing::info!(error = %e, %subject, "JWT-SVID refused"))?;
        Ok(Response::new(MintJwtSvidResponse {
            token: minted.token.to_string(),
            spiffe_id: minted.claims.sub,
            issued_at: convert::unix_timestamp(minted.claims.iat),
            expires_at: convert::unix_timestamp(minted.claims.exp),
        }))
    }
}
