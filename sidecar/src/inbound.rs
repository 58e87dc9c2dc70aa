//! The inbound listener: the pod's public port. Accepts TLS 1.3 with a client certificate
//! that chains to the current trust bundle, checks the peer's SPIFFE ID against the
//! [`Policy`], then forwards bytes to the local app.
//!
//! With capture on, the kernel redirects every inbound connection of the pod here; the
//! original destination port picks the app port (on loopback) and its policy. A connection
//! made to the listener's own port goes to the configured app, as without capture.
//!
//! Every established session is counted in
//! `trellis_sidecar_tls_sessions_total{direction="inbound",group=...,cipher_suite=...}` by its key-exchange
//! group. Every refusal is logged with the peer address and a reason and counted in
//! `trellis_sidecar_handshakes_total{direction="inbound",result="failed",reason=...}` (or in
//! `trellis_sidecar_policy_denials_total` for an authenticated peer the policy refuses).
//!
//! Sidecars speak ALPN `trellis/1` to each other, and a ClientHello that does not offer it
//! is refused before the handshake (`no_alpn` when it offers no protocol, `wrong_alpn` when
//! it offers others): a TLS client of another service that was pointed at this port must
//! not get as far as exchanging application bytes with the app.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::LazyConfigAcceptor;
use trellis_identity::{CertInfo, TrustDomain};

use crate::capture::original_dst::{self, Destination};
use crate::config::InboundConfig;
use crate::credentials::ALPN_TRELLIS;
use crate::metrics::{Direction, Metrics};
use crate::policy::Policy;
use crate::proxy::{
    self, Coalesced, Conn, Context, PlainStream, session_params, tls_failure_reason,
};

/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1, content type 22).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

const DIRECTION: Direction = Direction::Inbound;

/// Why a ClientHello's ALPN list is refused, if it is: it must offer `trellis/1`.
fn alpn_refusal<'a>(offered: Option<impl Iterator<Item = &'a [u8]>>) -> Option<&'static str> {
    match offered {
        None => Some("no_alpn"),
        Some(mut protocols) => (!protocols.any(|p| p == ALPN_TRELLIS)).then_some("wrong_alpn"),
    }
}

/// Serves the inbound listener until `ctx.shutdown`, then drains (see
/// [`proxy::accept_loop`]). Policy `strict` admits any identity in `trust_domain`.
///
/// Wiring: bind `config.listen` first (so a bad address fails before anything runs), then
/// `tokio::spawn(serve_inbound(listener, config, trust_domain, ctx.clone()))`.
pub async fn serve_inbound(
    listener: TcpListener,
    config: InboundConfig,
    trust_domain: TrustDomain,
    ctx: Context,
) {
    if config.permissive_plaintext {
        tracing::warn!(
            listen = %config.listen,
            "inbound permissive mode is ON: plaintext connections are forwarded to the app \
             WITHOUT authentication; turn it off once every client has a sidecar"
        );
    }
    let port_policies = config
        .ports
        .into_iter()
        .map(|p| (p.port, Policy::new(p.mode, p.allow, trust_domain.clone())))
        .collect();
    let inbound = Arc::new(Inbound {
        app: config.app,
        capture: config.capture,
        permissive: config.permissive_plaintext,
        policy: Policy::new(config.mode, config.allow, trust_domain),
        port_policies,
        ctx: ctx.clone(),
    });
    proxy::accept_loop(
        listener,
        DIRECTION,
        config.max_connections,
        &ctx,
        move |stream, peer, conn| {
            let inbound = inbound.clone();
            async move { inbound.handle(stream, peer, conn).await }
        },
    )
    .await;
}

struct Inbound {
    /// Where connections made to the listener itself go.
    app: Option<SocketAddr>,
    capture: bool,
    permissive: bool,
    /// The default policy.
    policy: Policy,
    /// Captured connections to these app ports use their own policy.
    port_policies: HashMap<u16, Policy>,
    ctx: Context,
}

/// Where one accepted connection goes, and who may use it.
struct Route<'a> {
    app: SocketAddr,
    policy: &'a Policy,
}

fn refuse(metrics: &Metrics, peer: SocketAddr, reason: &str) {
    if reason == "eof" {
        // Connect-and-close: TCP probes and port scans; not worth a line each at info.
        tracing::debug!(%peer, reason, "inbound connection closed before a handshake");
    } else {
        tracing::info!(%peer, reason, "inbound connection refused");
    }
    metrics.handshake(DIRECTION, false, reason);
}

impl Inbound {
    /// The app and policy for `stream`: its original port when capture redirected it, the
    /// configured app otherwise (none: refused).
    fn route(&self, stream: &TcpStream) -> Option<Route<'_>> {
        let original = if self.capture {
            original_dst::of(stream)
        } else {
            Destination::Listener
        };
        match original {
            Destination::Redirected(dst) => Some(Route {
                app: original_dst::app_address(dst),
                policy: self.port_policies.get(&dst.port()).unwrap_or(&self.policy),
            }),
            Destination::Listener => self.app.map(|app| Route {
                app,
                policy: &self.policy,
            }),
        }
    }

    async fn handle(&self, stream: TcpStream, peer: SocketAddr, conn: Conn) {
        let metrics = &*self.ctx.metrics;
        // Fail closed: without a certificate nothing is accepted, not even plaintext.
        if self.ctx.creds.borrow().is_none() {
            return refuse(metrics, peer, "no_certificate_yet");
        }
        let Some(route) = self.route(&stream) else {
            return refuse(metrics, peer, "no_app_for_port");
        };
        // One deadline for the first byte and the handshake: a silent client cannot hold a
        // connection slot for longer than this.
        let deadline = Instant::now() + self.ctx.timeouts.handshake;
        let mut first = [0u8; 1];
        match timeout_at(deadline, stream.peek(&mut first)).await {
            Err(_) => return refuse(metrics, peer, "timeout"),
            Ok(Err(e)) => return refuse(metrics, peer, tls_failure_reason(&e)),
            Ok(Ok(0)) => return refuse(metrics, peer, "eof"),
            Ok(Ok(_)) => {}
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            if self.permissive {
                return self.plaintext(stream, peer, route.app, conn).await;
            }
            return refuse(metrics, peer, "not_tls");
        }
        // The newest certificate and bundle, read for this handshake.
        let Some(creds) = self.ctx.creds.borrow().clone() else {
            return refuse(metrics, peer, "no_certificate_yet");
        };
        let failed = |e: std::io::Error| {
            let reason = tls_failure_reason(&e);
            tracing::info!(%peer, reason, error = %e, "inbound TLS handshake failed");
            metrics.handshake(DIRECTION, false, reason);
        };
        let started = Instant::now();
        let hello = LazyConfigAcceptor::new(Acceptor::default(), stream);
        let start = match timeout_at(deadline, hello).await {
            Err(_) => return refuse(metrics, peer, "timeout"),
            Ok(Err(e)) => return failed(e),
            Ok(Ok(start)) => start,
        };
        if let Some(reason) = alpn_refusal(start.client_hello().alpn()) {
            return refuse(metrics, peer, reason);
        }
        let tls = match timeout_at(deadline, start.into_stream(creds.server_config.clone())).await {
            Err(_) => return refuse(metrics, peer, "timeout"),
            Ok(Err(e)) => return failed(e),
            Ok(Ok(tls)) => tls,
        };
        // The chain was verified against the bundle during the handshake
        // (SpiffeClientVerifier); here we only read the identity and serial from it.
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let Some(info) = leaf.and_then(|der| CertInfo::parse(der).ok()) else {
            return refuse(metrics, peer, "bad_certificate");
        };
        let Ok(spiffe_id) = info.spiffe_id() else {
            return refuse(metrics, peer, "not_an_svid");
        };
        tracing::Span::current().record("spiffe_id", tracing::field::display(&spiffe_id));
        let (kx_group, cipher_suite) = session_params(tls.get_ref().1);
        metrics.handshake(DIRECTION, true, "");
        metrics.tls_session(DIRECTION, kx_group, cipher_suite);
        metrics.handshake_seconds[DIRECTION as usize].observe(started.elapsed());
        let decision = route.policy.check(&spiffe_id);
        if !decision.is_allowed() {
            metrics.policy_denials[DIRECTION as usize]
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                %peer,
                %spiffe_id,
                app = %route.app,
                reason = decision.reason(),
                "inbound connection refused by policy"
            );
            return;
        }
        let Some(app) = self.connect_app(peer, route.app).await else {
            return;
        };
        let registration = self
            .ctx
            .registry
            .register(&info.serial, spiffe_id.trust_domain_name());
        tracing::debug!(
            %peer,
            %spiffe_id,
            serial = %info.serial,
            kx_group,
            cipher_suite,
            "inbound connection established"
        );
        let outcome = proxy::proxy(
            Coalesced::new(tls, self.ctx.buffer_size),
            PlainStream::new(app, self.ctx.buffer_size),
            self.ctx.timeouts.idle,
            metrics.dir(DIRECTION),
            conn.closed(&registration),
        )
        .await;
        outcome.log();
    }

    /// Permissive mode: forward an unauthenticated plaintext connection. Loud on purpose.
    async fn plaintext(&self, stream: TcpStream, peer: SocketAddr, app: SocketAddr, conn: Conn) {
        let metrics = &*self.ctx.metrics;
        metrics
            .plaintext_accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            %peer,
            "PLAINTEXT inbound connection accepted (permissive mode): the client is not \
             authenticated"
        );
        let Some(app) = self.connect_app(peer, app).await else {
            return;
        };
        let outcome = proxy::proxy(
            PlainStream::new(stream, self.ctx.buffer_size),
            PlainStream::new(app, self.ctx.buffer_size),
            self.ctx.timeouts.idle,
            metrics.dir(DIRECTION),
            conn.close_now().cancelled(),
        )
        .await;
        outcome.log();
    }

    async fn connect_app(&self, peer: SocketAddr, app: SocketAddr) -> Option<TcpStream> {
        match timeout(self.ctx.timeouts.connect, TcpStream::connect(app)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Some(stream)
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, %app, error = %e, "cannot connect to the app");
                None
            }
            Err(_) => {
                tracing::warn!(%peer, %app, "connecting to the app timed out");
                None
            }
        }
    }
}
