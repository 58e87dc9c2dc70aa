//! The app's kubelet probes, run by the sidecar. Under inbound capture a probe the kubelet
//! sends to the app's port would be redirected to the sidecar and refused (the kubelet has
//! no client certificate). Injection therefore rewrites each HTTP and TCP probe of the app to
//! `GET /app-health/<container>/<kind>` on the sidecar's admin port, which is never captured,
//! and hands the original probes to the sidecar (`TRELLIS_APP_PROBES`, JSON). The sidecar
//! runs them against the app over loopback and answers with the outcome.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// The admin path prefix of rewritten probes.
pub const PATH_PREFIX: &str = "/app-health";

/// The kubelet's default probe timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// One probe as Kubernetes spells it (the subset injection rewrites).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProbe {
    pub http_get: Option<HttpGet>,
    pub tcp_socket: Option<TcpSocket>,
    pub timeout_seconds: Option<u64>,
}

/// An HTTP GET probe (plain HTTP; the port already resolved to a number).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGet {
    pub port: u16,
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub http_headers: Vec<Header>,
}

fn root() -> String {
    "/".into()
}

/// A header of an HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A TCP probe: success is a connection accepted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSocket {
    pub port: u16,
}

/// The probes by `<container>/<kind>` (kind: `livez`, `readyz`, `startupz`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes(BTreeMap<String, AppProbe>);

impl AppProbes {
    /// Parses and checks `TRELLIS_APP_PROBES`.
    pub fn parse(json: &str) -> Result<Self, String> {
        let probes: BTreeMap<String, AppProbe> =
            serde_json::from_str(json).map_err(|e| format!("app_probes: {e}"))?;
        for (key, probe) in &probes {
            let shape = key.split('/').collect::<Vec<_>>();
            if shape.len() != 2 || shape.iter().any(|s| s.is_empty()) {
                return Err(format!(
                    "app_probes: {key:?} is not CONTAINER/KIND (e.g. app/readyz)"
                ));
            }
            let port = match (&probe.http_get, &probe.tcp_socket) {
                (Some(h), None) => h.port,
                (None, Some(t)) => t.port,
                _ => {
                    return Err(format!(
                        "app_probes: {key:?} must have exactly one of httpGet and tcpSocket"
                    ));
                }
            };
            if port == 0 {
                return Err(format!("app_probes: {key:?}: port 0"));
            }
            if let Some(h) = &probe.http_get
                && !h.path.starts_with('/')
            {
                return Err(format!("app_probes: {key:?}: path must start with /"));
            }
        }
        Ok(Self(probes))
    }

    /// True when no probe is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs the probe `container/kind` against the app on loopback: the app's own status for
    /// HTTP, 200 for an accepted TCP connection, 503 (with the reason) for a failure, and 404
    /// for a probe nobody configured.
    pub async fn run(&self, container: &str, kind: &str) -> (StatusCode, String) {
        let Some(probe) = self.0.get(&format!("{container}/{kind}")) else {
            return (
                StatusCode::NOT_FOUND,
                format!("no probe {container}/{kind} is configured\n"),
            );
        };
        let limit = probe
            .timeout_seconds
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let outcome = tokio::time::timeout(limit, async {
            match (&probe.http_get, &probe.tcp_socket) {
                (Some(get), _) => http_get(get).await,
                (None, Some(tcp)) => TcpStream::connect(app(tcp.port))
                    .await
                    .map(|_| (StatusCode::OK, format!("port {} accepted\n", tcp.port)))
                    .map_err(|e| format!("port {}: {e}", tcp.port)),
                (None, None) => Err("empty probe".into()),
            }
        })
        .await;
        match outcome {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no answer within {limit:?}\n"),
            ),
        }
    }
}

fn app(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn http_get(get: &HttpGet) -> Result<(StatusCode, String), String> {
    let addr = app(get.port);
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(connection);
    let mut request = http::Request::get(get.path.as_str());
    let has_host = get
        .http_headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("host"));
    if !has_host {
        request = request.header(http::header::HOST, addr.to_string());
    }
    for h in &get.http_headers {
        request = request.header(h.name.as_str(), h.value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{addr}{}: {e}", get.path))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{addr}{}: {e}", get.path))?;
    let status = response.status();
    Ok((status, format!("the app answered {status}\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_injection_writes_and_refuses_the_rest() {
        let probes = AppProbes::parse(
            r#"{"app/livez":{"httpGet":{"path":"/healthz","port":8080,"httpHeaders":[{"name":"X","value":"y"}]},"timeoutSeconds":2},
                "app/readyz":{"tcpSocket":{"port":8080}}}"#,
        )
        .expect("valid");
        assert!(!probes.is_empty());
        for (bad, why) in [
            (r#"{"app":{"tcpSocket":{"port":1}}}"#, "CONTAINER/KIND"),
            (r#"{"a/b":{}}"#, "exactly one"),
            (r#"{"a/b":{"tcpSocket":{"port":0}}}"#, "port 0"),
            (
                r#"{"a/b":{"httpGet":{"port":1,"path":"x"}}}"#,
                "start with /",
            ),
            (r#"{"a/b":{"exec":{}}}"#, "unknown field"),
            ("[", "app_probes"),
        ] {
            let e = AppProbes::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn runs_http_and_tcp_probes_against_a_real_app() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = if request.starts_with("GET /healthz ")
                        && request.to_ascii_lowercase().contains("x-probe: yes")
                    {
                        "204 No Content"
                    } else {
                        "500 Internal Server Error"
                    };
                    let _ = conn
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_port = closed.local_addr().expect("addr").port();
        drop(closed);
        let probes = AppProbes::parse(&format!(
            r#"{{"app/livez":{{"httpGet":{{"path":"/healthz","port":{port},"httpHeaders":[{{"name":"X-Probe","value":"yes"}}]}}}},
                "app/readyz":{{"httpGet":{{"path":"/other","port":{port}}}}},
                "app/startupz":{{"tcpSocket":{{"port":{port}}}}},
                "gone/readyz":{{"tcpSocket":{{"port":{closed_port}}}}}}}"#
        ))
        .expect("valid");
        assert_eq!(probes.run("app", "livez").await.0, StatusCode::NO_CONTENT);
        assert_eq!(
            probes.run("app", "readyz").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(probes.run("app", "startupz").await.0, StatusCode::OK);
        let (status, why) = probes.run("gone", "readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains(&closed_port.to_string()), "{why}");
        assert_eq!(probes.run("app", "nope").await.0, StatusCode::NOT_FOUND);
    }
}
