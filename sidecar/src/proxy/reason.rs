//! Short names for TLS handshakes, for metric labels and logs: why one failed, and what
//! one that succeeded negotiated.

use std::io;

/// A short label for why a TLS handshake failed, for the `reason` metric label.
pub fn tls_failure_reason(e: &io::Error) -> &'static str {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return rustls_reason(tls);
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "eof",
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "reset",
        io::ErrorKind::TimedOut => "timeout",
        _ => "io_error",
    }
}

fn rustls_reason(e: &rustls::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    use trellis_identity::SvidError;
    use trellis_identity::tls::UnexpectedIdentity;
    match e {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::UnknownIssuer | C::BadSignature => "unknown_issuer",
            C::Revoked => "revoked",
            C::Other(other) => {
                let inner = &*other.0;
                if inner.downcast_ref::<UnexpectedIdentity>().is_some() {
                    "wrong_identity"
                } else {
                    match inner.downcast_ref::<SvidError>() {
                        Some(SvidError::WrongTrustDomain { .. }) => "wrong_trust_domain",
                        Some(
                            SvidError::NoSpiffeId
                            | SvidError::SeveralUris(_)
                            | SvidError::BadSpiffeId(_),
                        ) => "not_an_svid",
                        _ => "bad_certificate",
                    }
                }
            }
            _ => "bad_certificate",
        },
        E::AlertReceived(_) => "peer_alert",
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => "bad_message",
        // A server that requires X25519MLKEM768 and a client without it.
        E::PeerIncompatible(rustls::PeerIncompatible::NoKxGroupsInCommon) => "no_shared_kx_group",
        E::PeerIncompatible(_) => "incompatible",
        E::NoApplicationProtocol => "no_alpn",
        E::PeerMisbehaved(_) => "peer_misbehaved",
        _ => "tls_error",
    }
}

/// The negotiated key-exchange group (its IANA name, see
/// [`trellis_identity::tls::kx_group_name`]) and cipher suite of an established session.
pub fn session_params(tls: &rustls::CommonState) -> (&'static str, &'static str) {
    let group = tls
        .negotiated_key_exchange_group()
        .map_or("none", |g| trellis_identity::tls::kx_group_name(g.name()));
    let suite = tls
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown");
    (group, suite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn tls_errors_get_short_reasons() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            tls_failure_reason(&wrap(rustls::Error::NoCertificatesPresented)),
            "no_client_cert"
        );
        assert_eq!(
            tls_failure_reason(&wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
            ))),
            "expired"
        );
        let other = rustls::OtherError(Arc::new(trellis_identity::tls::UnexpectedIdentity {
            found: "a".into(),
            expected: "b".into(),
        }));
        assert_eq!(
            tls_failure_reason(&wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(other)
            ))),
            "wrong_identity"
        );
        assert_eq!(
            tls_failure_reason(&io::ErrorKind::UnexpectedEof.into()),
            "eof"
        );
        assert_eq!(
            tls_failure_reason(&wrap(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoKxGroupsInCommon
            ))),
            "no_shared_kx_group"
        );
    }
}
