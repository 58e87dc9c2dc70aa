//! Who is on the other end of a connection: the TLS peer chain captured at accept time and
//! handed to tonic as connection info, and the admin check every admin call passes through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tonic::{Request, Status};
use trellis_identity::SpiffeId;
use trellis_identity::svid::SvidError;

use crate::error::CaError;
use crate::peer::PeerChain;
use crate::revocation::Revocations;
use crate::state::Core;

/// The path under which admin identities live.
pub const ADMIN_PREFIX: &str = trellis_identity::spiffe::reserved::ADMIN_PREFIX;

/// What is known about the peer of a connection. The chain is NOT verified: the TLS layer
/// only checked key possession (see `DeferredClientVerifier`); verify it with
/// [`Core::verify_peer`] before trusting it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<std::net::SocketAddr>,
    pub chain: Arc<PeerChain>,
    /// Set by the connection's first request (`first_request.rs`).
    pub request_seen: crate::first_request::RequestSeen,
}

/// A TLS connection that tells tonic about its peer.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConn {
    /// Wraps an accepted TLS stream, capturing its peer chain.
    pub fn new(inner: TlsStream<TcpStream>) -> Self {
        let (tcp, session) = inner.get_ref();
        let chain = session
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        let info = PeerInfo {
            remote_addr: tcp.peer_addr().ok(),
            chain: Arc::new(PeerChain::new(chain)),
            request_seen: Default::default(),
        };
        Self { inner, info }
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The peer's (unverified) chain from a request, empty if none.
pub fn peer_chain<T>(request: &Request<T>) -> Arc<PeerChain> {
    request
        .extensions()
        .get::<PeerInfo>()
        .map(|p| p.chain.clone())
        .unwrap_or_default()
}

/// What an admin call refused for want of the store did: nothing (it was refused before
/// its handler ran).
const NOT_DONE: &str = "nothing was done";

/// An authenticated administrator, put into the request by [`admin_interceptor`].
#[derive(Debug, Clone)]
pub struct AdminCaller(pub SpiffeId);

/// Checks every admin call: a client certificate chaining to the current bundle, valid
/// now, not revoked, with a SPIFFE ID under `/trellis/admin/`, and one this CA recorded
/// when it issued it. The last check is what keeps a stolen copy of the intermediate key
/// from minting admin access: anything it signs verifies, but the CA has no record of it.
pub fn admin_interceptor(
    core: Arc<Core>,
    revocations: Arc<Revocations>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let chain = peer_chain(&request);
        if chain.is_empty() {
            return Err(CaError::Unauthenticated(
                "admin API needs an admin client certificate (admin/admin.pem in the CA's data \
                 directory, or `trellis` with --admin-cert)"
                    .into(),
            )
            .into());
        }
        let verified = core.verify_peer(&chain, core.now()).map_err(|e| match e {
            SvidError::Expired { not_after } => CaError::Unauthenticated(format!(
                "admin certificate expired at {not_after}; admin certificates are not \
                     renewed: get a new one from whoever runs the CA (a CA started without \
                     admin/admin.pem in its data directory writes fresh admin credentials \
                     there), then run `trellis login` again"
            )),
            e => CaError::Unauthenticated(format!("admin certificate refused: {e}")),
        })?;
        match revocations.of(&verified.serial) {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(CaError::Unauthenticated(format!(
                    "admin certificate {} was revoked",
                    verified.serial
                ))
                .into());
            }
            Err(e) => return Err(CaError::store(NOT_DONE, e).into()),
        }
        let td = core.config.trust_domain.as_str();
        if !verified.spiffe_id.is_under(td, ADMIN_PREFIX)
            || verified.spiffe_id.path() == ADMIN_PREFIX
        {
            return Err(CaError::PermissionDenied(format!(
                "{} is not an admin identity (admins are under spiffe://{td}{ADMIN_PREFIX}/)",
                verified.spiffe_id
            ))
            .into());
        }
        let serial = trellis_identity::hex::decode(&verified.serial).unwrap_or_default();
        match core.store.certificate(&serial) {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(
                    spiffe_id = %verified.spiffe_id,
                    serial = %verified.serial,
                    "refused an admin certificate this CA never issued: it verifies against \
                     the bundle, so the intermediate key may have been copied"
                );
                return Err(CaError::Unauthenticated(format!(
                    "admin certificate {} is not in this CA's records: it was not issued by \
                     this CA, and only admin certificates the CA recorded are accepted; use \
                     the admin credentials the CA wrote (admin/ in its data directory)",
                    verified.serial
                ))
                .into());
            }
            Err(e) => return Err(CaError::store(NOT_DONE, e).into()),
        }
        request
            .extensions_mut()
            .insert(AdminCaller(verified.spiffe_id));
        Ok(request)
    }
}
