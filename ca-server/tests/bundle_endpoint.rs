//! The SPIFFE bundle endpoint: curl (which no one here wrote) fetches the bundle over HTTPS
//! with only the trust bundle as its CA file; a client of the `https_spiffe` profile checks
//! the server's SPIFFE ID; the document follows a root added to the bundle.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_identity::clock::SystemClock;
use trellis_identity::spiffe_bundle::SpiffeBundle;
use trellis_identity::tls::{self, Versions};
use trellis_identity::{IdMatcher, TrustDomain};
use trellis_proto::admin::v1::AddRootRequest;

async fn start() -> TestCa {
    TestCa::start_configured(Arc::new(SystemClock), |c| {
        c.bundle_endpoint_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.bundle_refresh_hint = Duration::from_secs(120);
    })
    .await
}

fn curl(ca: &TestCa) -> Result<Vec<u8>, String> {
    let addr = ca.running().bundle_endpoint_addr.expect("bundle endpoint");
    let bundle_pem = ca.dir.path().join("bundle-for-curl.pem");
    std::fs::write(&bundle_pem, ca.bundle().to_pem()).expect("write bundle");
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
        .arg("--cacert")
        .arg(&bundle_pem)
        .arg(format!("https://127.0.0.1:{}/", addr.port()))
        .output()
        .map_err(|e| {
            format!("curl does not run ({e}); scripts/install-test-deps.sh installs it")
        })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// Multi-threaded: curl blocks a thread while the in-process CA must answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_the_bundle_and_it_follows_a_new_root() {
    let ca = start().await;
    let td = TrustDomain::new("cluster.local").expect("td");
    let fetched = curl(&ca).expect("curl fetches the bundle");
    let bundle = SpiffeBundle::parse(td.clone(), &fetched).expect("a SPIFFE bundle");
    assert_eq!(bundle.x509_authorities, ca.bundle().roots().to_vec());
    assert_eq!(bundle.sequence, ca.bundle().version());
    assert_eq!(bundle.refresh_hint, Some(Duration::from_secs(120)));
    // The JWT-SVID keys travel in the same document.
    assert!(!bundle.jwt_authorities.is_empty());
    assert_eq!(bundle.jwt_authorities, ca.bundle().jwt_keys().to_vec());

    ca.admin()
        .await
        .add_root(AddRootRequest::default())
        .await
        .expect("root added");
    let fetched = curl(&ca).expect("curl fetches the new bundle");
    let after = SpiffeBundle::parse(td, &fetched).expect("a SPIFFE bundle");
    assert_eq!(after.x509_authorities.len(), 2);
    assert_eq!(after.x509_authorities, ca.bundle().roots().to_vec());
    assert!(after.sequence > bundle.sequence, "{after:?}");
}

#[tokio::test]
async fn the_endpoint_is_authenticated_by_the_cas_spiffe_id() {
    let ca = start().await;
    let addr = ca.running().bundle_endpoint_addr.expect("bundle endpoint");
    let fetch = |matcher: IdMatcher| {
        let config =
            tls::client_config(ca.bundle(), matcher, None, Versions::Tls13, &[b"http/1.1"])
                .expect("client config");
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            tls.write_all(b"GET / HTTP/1.1\r\nHost: bundle\r\nConnection: close\r\n\r\n")
                .await?;
            let mut response = Vec::new();
            tls.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
        }
    };
    let response = fetch(IdMatcher::exact(ca.id("/trellis/ca")))
        .await
        .expect("the CA's SPIFFE ID is accepted");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"x509-svid\""), "{response}");
    let refused = fetch(IdMatcher::exact(ca.id("/ns/other/sa/endpoint"))).await;
    assert!(refused.is_err(), "a different endpoint ID must be refused");
}
