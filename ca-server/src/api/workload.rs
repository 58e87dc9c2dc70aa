//! `trellis.ca.v1.WorkloadCA`: certify, and the trust bundle (one-shot and streamed).

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use trellis_proto::ca::v1::certify_request::Credential as ProtoCredential;
use trellis_proto::ca::v1::workload_ca_server::WorkloadCa;
use trellis_proto::ca::v1::{
    CertifyRequest, CertifyResponse, GetTrustBundleRequest, TrustBundle, WatchTrustBundleRequest,
};

use super::convert;
use crate::auth::peer_chain;
use crate::issuance::Credential;
use crate::state::CaState;

/// The workload API over the CA state.
#[derive(Debug, Clone)]
pub struct WorkloadService {
    state: Arc<CaState>,
    shutdown: watch::Receiver<bool>,
}

impl WorkloadService {
    /// Serves `state`; open streams end when `shutdown` becomes true.
    pub fn new(state: Arc<CaState>, shutdown: watch::Receiver<bool>) -> Self {
        Self { state, shutdown }
    }
}

type BundleStream = Pin<Box<dyn Stream<Item = Result<TrustBundle, Status>> + Send>>;

#[tonic::async_trait]
impl WorkloadCa for WorkloadService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let chain = peer_chain(&request);
        let body = request.into_inner();
        let credential = match body.credential {
            Some(ProtoCredential::JoinToken(token)) => Credential::JoinToken(token),
            None => Credential::Renewal(chain),
        };
        let issued = self
            .state
            .certify(&body.csr_der, credential, convert::ttl(body.ttl_seconds))
            .await
            .inspect_err(|e| tracing::info!(error = %e, "certify refused"))?;
        Ok(Response::new(convert::issued(issued)))
    }

    async fn get_trust_bundle(
        &self,
        _request: Request<GetTrustBundleRequest>,
    ) -> Result<Response<TrustBundle>, Status> {
        Ok(Response::new(convert::bundle(&self.state.bundle())))
    }

    type WatchTrustBundleStream = BundleStream;

    async fn watch_trust_bundle(
        &self,
        _request: Request<WatchTrustBundleRequest>,
    ) -> Result<Response<BundleStream>, Status> {
        let mut bundles = self.state.watch_bundle();
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let current = convert::bundle(&bundles.borrow_and_update());
                if tx.send(Ok(current)).await.is_err() {
                    return; // the client went away
                }
                tokio::select! {
                    changed = bundles.changed() => if changed.is_err() { return },
                    _ = crate::state::stopped(&mut shutdown) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
