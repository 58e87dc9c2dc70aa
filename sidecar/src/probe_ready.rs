//! `trellis-sidecar probe-ready`: the native sidecar's startup probe. It asks the admin
//! endpoint's `/ready` and prints the answer. An exec probe rather than an `httpGet` one
//! because the kubelet puts an exec probe's output into the pod's events, so `kubectl
//! describe pod` says why the app is still waiting (the CA unreachable, the token refused)
//! instead of only "statuscode: 503".

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clap::Parser;

/// How long the probe waits for the admin endpoint (the kubelet's default timeout is 1 s).
const TIMEOUT: Duration = Duration::from_millis(900);

/// Flags of `trellis-sidecar probe-ready`.
#[derive(Debug, Parser)]
#[command(
    name = "trellis-sidecar probe-ready",
    about = "Exit 0 if the sidecar holds a certificate, else 1 with the reason"
)]
pub struct ProbeReadyFlags {
    /// The sidecar's admin endpoint.
    #[arg(long, default_value = "127.0.0.1:15020")]
    pub admin: SocketAddr,
}

/// Asks `/ready`: whether the sidecar is ready, and what it said (or why it could not ask).
pub fn run(flags: &ProbeReadyFlags) -> (bool, String) {
    match get_ready(flags.admin) {
        Ok((status, body)) => (status == 200, body.trim().to_owned()),
        Err(e) => (
            false,
            format!("sidecar admin endpoint {} not answering: {e}", flags.admin),
        ),
    }
}

fn get_ready(admin: SocketAddr) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&admin, TIMEOUT)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    write!(conn, "GET /ready HTTP/1.0\r\nHost: {admin}\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    Ok(parse(&response))
}

/// The status code and body of an HTTP/1 response (status 0 if it is not one).
fn parse(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_and_the_reason() {
        let (status, body) =
            parse("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nnot ready");
        assert_eq!((status, body.as_str()), (503, "not ready"));
        assert_eq!(parse("garbage").0, 0);
    }

    #[test]
    fn nothing_listening_is_not_ready_and_says_so() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let admin = closed.local_addr().expect("addr");
        drop(closed);
        let (ready, why) = run(&ProbeReadyFlags { admin });
        assert!(!ready);
        assert!(why.contains("not answering"), "{why}");
    }
}
