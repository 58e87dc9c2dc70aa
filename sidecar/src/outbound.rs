//! An outbound listener: a local plaintext port bound to one upstream and the SPIFFE ID(s)
//! the upstream must present. The sidecar originates TLS 1.3 with its own certificate and
//! reads nothing from the local client until the upstream has proven an allowed identity,
//! so a wrong upstream never receives a byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use trellis_identity::{CertInfo, IdMatcher};

use crate::config::OutboundConfig;
use crate::metrics::Direction;
use crate::proxy::{
    self, Coalesced, Conn, Context, PlainStream, session_params, tls_failure_reason,
};

const DIRECTION: Direction = Direction::Outbound;

/// Serves one outbound listener until `ctx.shutdown`, then drains (see
/// [`proxy::accept_loop`]).
///
/// Wiring: for each `config.outbound` entry, bind `listen` first, then
/// `tokio::spawn(serve_outbound(listener, config, ctx.clone()))`.
pub async fn serve_outbound(listener: TcpListener, config: OutboundConfig, ctx: Context) {
    let outbound = Arc::new(Outbound {
        upstream: config.upstream.clone(),
        allow: config.allow,
        ctx: ctx.clone(),
    });
    proxy::accept_loop(
        listener,
        DIRECTION,
        config.max_connections,
        &ctx,
        move |stream, client, conn| {
            let outbound = outbound.clone();
            async move { outbound.handle(stream, client, conn).await }
        },
    )
    .await;
}

struct Outbound {
    upstream: String,
    allow: IdMatcher,
    ctx: Context,
}

impl Outbound {
    fn refuse(&self, client: SocketAddr, reason: &str) {
        let upstream = &self.upstream;
        tracing::info!(%client, %upstream, reason, "outbound connection refused");
        self.ctx.metrics.handshake(DIRECTION, false, reason);
    }

    async fn handle(&self, local: TcpStream, client: SocketAddr, conn: Conn) {
        let metrics = &*self.ctx.metrics;
        let upstream = self.upstream.as_str();
        let Some(creds) = self.ctx.creds.borrow().clone() else {
            return self.refuse(client, "no_certificate_yet");
        };
        let tls_config = match creds.client_config(&self.allow) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(%client, error = %e, "cannot build the outbound TLS config");
                return self.refuse(client, "config_error");
            }
        };
        let stream = match timeout(self.ctx.timeouts.connect, TcpStream::connect(upstream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(%client, %upstream, error = %e, "cannot connect to the upstream");
                return self.refuse(client, "connect_failed");
            }
            Err(_) => return self.refuse(client, "connect_timeout"),
        };
        let _ = stream.set_nodelay(true);
        // The host name is not checked (the SPIFFE ID is), and an IP name sends no SNI.
        // SNI only: the upstream is verified by its SPIFFE ID, not by this name.
        let host = upstream
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(upstream);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_owned()).unwrap_or_else(|_| {
                ServerName::try_from("trellis-upstream").expect("static DNS name is valid")
            }),
        };
        let connector = TlsConnector::from(tls_config);
        let started = std::time::Instant::now();
        let tls = match timeout(self.ctx.timeouts.handshake, connector.connect(name, stream)).await
        {
            Err(_) => return self.refuse(client, "timeout"),
            Ok(Err(e)) => {
                let reason = tls_failure_reason(&e);
                if reason == "wrong_identity" {
                    metrics.policy_denials[DIRECTION as usize].fetch_add(1, Relaxed);
                    tracing::warn!(
                        %client,
                        %upstream,
                        expected = %self.allow,
                        error = %e,
                        "upstream presented an identity this listener does not allow; \
                         nothing was sent"
                    );
                } else {
                    tracing::info!(%client, %upstream, reason, error = %e, "outbound TLS handshake failed");
                }
                metrics.handshake(DIRECTION, false, reason);
                return;
            }
            Ok(Ok(tls)) => tls,
        };
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let Some(info) = leaf.and_then(|der| CertInfo::parse(der).ok()) else {
            return self.refuse(client, "bad_certificate");
        };
        // The verifier accepted it, so it names exactly one SPIFFE ID.
        let trust_domain = match info.spiffe_id() {
            Ok(spiffe_id) => {
                tracing::Span::current().record("spiffe_id", tracing::field::display(&spiffe_id));
                spiffe_id.trust_domain_name().to_owned()
            }
            Err(_) => String::new(),
        };
        let (kx_group, cipher_suite) = session_params(tls.get_ref().1);
        metrics.handshake(DIRECTION, true, "");
        metrics.tls_session(DIRECTION, kx_group, cipher_suite);
        metrics.handshake_seconds[DIRECTION as usize].observe(started.elapsed());
        let registration = self.ctx.registry.register(&info.serial, &trust_domain);
        tracing::debug!(
            %client,
            %upstream,
            serial = %info.serial,
            kx_group,
            cipher_suite,
            "outbound connection established"
        );
        // The local client is the "peer" of an outbound connection in the metrics.
        let outcome = proxy::proxy(
            PlainStream::new(local, self.ctx.buffer_size),
            Coalesced::new(tls, self.ctx.buffer_size),
            self.ctx.timeouts.idle,
            metrics.dir(DIRECTION),
            conn.closed(&registration),
        )
        .await;
        outcome.log();
    }
}
