//! The destination a connection had before the kernel redirected it to our listener
//! (`SO_ORIGINAL_DST`, read from conntrack's NAT record).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;

/// Where a connection accepted by the inbound listener should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// It was addressed to the listener itself (no redirect took place).
    Listener,
    /// The kernel redirected it; it was meant for this address.
    Redirected(SocketAddr),
}

/// Reads the original destination of `stream`. A connection that was not redirected has no
/// NAT record (or one naming the listener's own address): [`Destination::Listener`].
pub fn of(stream: &TcpStream) -> Destination {
    let Ok(local) = stream.local_addr() else {
        return Destination::Listener;
    };
    let original = match local {
        SocketAddr::V4(_) => rustix::net::sockopt::ip_original_dst(stream).map(SocketAddr::V4),
        SocketAddr::V6(v6) => rustix::net::sockopt::ipv6_original_dst(stream)
            .map(SocketAddr::V6)
            // An IPv4 client on a dual-stack socket keeps its record in the IPv4 table.
            .or_else(|e| match v6.ip().to_ipv4_mapped() {
                Some(_) => rustix::net::sockopt::ip_original_dst(stream).map(SocketAddr::V4),
                None => Err(e),
            }),
    };
    classify(local, original.ok())
}

/// Decides from the listener's address and the NAT record (if any).
pub fn classify(local: SocketAddr, original: Option<SocketAddr>) -> Destination {
    match original {
        Some(dst) if !same(dst, local) => Destination::Redirected(dst),
        _ => Destination::Listener,
    }
}

fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

/// The app's side of a redirected connection: the same port on the pod's loopback, in the
/// address family the client used. Loopback, not the original address: an app may listen on
/// loopback only (the safest way to run it), and then only the sidecar can reach it.
pub fn app_address(original: SocketAddr) -> SocketAddr {
    let ip = match original.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, original.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn only_a_record_naming_another_address_is_a_redirect() {
        let local = addr("10.1.2.3:15006");
        assert_eq!(classify(local, None), Destination::Listener);
        assert_eq!(classify(local, Some(local)), Destination::Listener);
        assert_eq!(
            classify(local, Some(addr("10.1.2.3:8080"))),
            Destination::Redirected(addr("10.1.2.3:8080"))
        );
        assert_eq!(
            classify(
                addr("[::ffff:10.1.2.3]:15006"),
                Some(addr("10.1.2.3:15006"))
            ),
            Destination::Listener
        );
    }

    #[test]
    fn the_app_is_reached_on_loopback_in_the_clients_family() {
        assert_eq!(app_address(addr("10.1.2.3:8080")), addr("127.0.0.1:8080"));
        assert_eq!(app_address(addr("[fd00::1]:8080")), addr("[::1]:8080"));
        assert_eq!(
            app_address(addr("[::ffff:10.1.2.3]:81")),
            addr("127.0.0.1:81")
        );
    }

    /// A connection that was never redirected has no NAT record: the listener itself.
    #[tokio::test]
    async fn a_direct_connection_is_for_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        assert_eq!(of(&server), Destination::Listener);
    }
}
