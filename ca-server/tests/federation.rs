//! Federation between two real CAs of different trust domains on loopback: one reads the
//! other's SPIFFE bundle endpoint, follows a root it adds, and keeps the last good bundle
//! when the endpoint cannot be authenticated or serves something that is not a bundle.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_ca::CaError;
use trellis_identity::clock::SystemClock;
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{TrustDomain, WorkloadKey};
use trellis_proto::admin::v1::{AddRootRequest, IssueCertificateRequest};

const A: &str = "a.example";

async fn ca(trust_domain: &str) -> TestCa {
    TestCa::start_configured(Arc::new(SystemClock), |c| {
        c.trust_domain = TrustDomain::new(trust_domain).expect("td");
        c.bundle_endpoint_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.bundle_refresh_hint = Duration::from_secs(10);
    })
    .await
}

fn endpoint(ca: &TestCa) -> String {
    let addr = ca.running().bundle_endpoint_addr.expect("bundle endpoint");
    format!("https://127.0.0.1:{}/", addr.port())
}

fn error_of(result: Result<trellis_ca::federation::Federation, CaError>) -> String {
    match result {
        Ok(f) => panic!("refresh should fail, got sequence {}", f.bundle.sequence),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_federated_bundle_follows_the_foreign_root_rotation() {
    let a = ca(A).await;
    let b = ca("b.example").await;
    let state = &b.running().state;
    let added = state
        .add_federation(
            A,
            &endpoint(&a),
            "spiffe://a.example/trellis/ca",
            a.bundle().to_pem().as_bytes(),
            "spiffe://b.example/trellis/admin/test",
        )
        .await
        .expect("federation added");
    assert_eq!(added.bundle.x509_authorities, a.bundle().roots().to_vec());
    assert!(
        added.next_refresh_at() <= state.now_unix(),
        "fetched at once"
    );

    let fetched = state.refresh_federation(A).await.expect("endpoint read");
    assert_eq!(fetched.bundle.sequence, a.bundle().version());
    assert_eq!(fetched.record.last_error, None);
    assert_eq!(fetched.refresh_interval(), Duration::from_secs(10));

    a.admin()
        .await
        .add_root(AddRootRequest::default())
        .await
        .expect("root added at A");
    let rotated = state.refresh_federation(A).await.expect("endpoint read");
    assert_eq!(rotated.bundle.x509_authorities.len(), 2);
    assert_eq!(rotated.bundle.x509_authorities, a.bundle().roots().to_vec());

    // The poller does the same by itself within the refresh hint; the state survives a
    // restart (the last good bundle is stored).
    let listed = state.federations().expect("list");
    assert_eq!(listed.len(), 1);
    let metrics_before = listed[0].record.refreshed_at;
    assert!(metrics_before > 0);

    // Own trust domain and an endpoint ID of another trust domain are refused at once.
    let own = state
        .add_federation(
            "b.example",
            &endpoint(&a),
            "spiffe://b.example/trellis/ca",
            a.bundle().to_pem().as_bytes(),
            "test",
        )
        .await;
    assert!(matches!(own, Err(CaError::InvalidArgument(_))), "{own:?}");
    let mismatch = state
        .add_federation(
            "c.example",
            &endpoint(&a),
            "spiffe://a.example/trellis/ca",
            a.bundle().to_pem().as_bytes(),
            "test",
        )
        .await;
    assert!(
        matches!(mismatch, Err(CaError::InvalidArgument(ref m)) if m.contains("not in c.example")),
        "{mismatch:?}"
    );
}

#[tokio::test]
async fn an_endpoint_not_vouched_for_by_the_bundle_in_force_is_refused() {
    let a = ca(A).await;
    let stranger = ca("c.example").await;
    let b = ca("b.example").await;
    let state = &b.running().state;
    // B starts from a bundle that is not A's (as after an unannounced key change): A's
    // endpoint certificate does not verify against it.
    let wrong = TrustDomain::new(A).expect("td");
    let wrong_roots =
        trellis_identity::TrustBundle::new(wrong, 1, stranger.bundle().roots().to_vec())
            .expect("bundle");
    state
        .add_federation(
            A,
            &endpoint(&a),
            "spiffe://a.example/trellis/ca",
            wrong_roots.to_pem().as_bytes(),
            "test",
        )
        .await
        .expect("added");
    let message = error_of(state.refresh_federation(A).await);
    assert!(message.contains("TLS"), "{message}");
    let kept = &state.federations().expect("list")[0];
    assert_eq!(
        kept.bundle.x509_authorities,
        stranger.bundle().roots().to_vec()
    );
    assert!(
        kept.record
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("TLS"))
    );

    // The right bundle but an endpoint serving with another SPIFFE ID than configured.
    state.remove_federation(A, "test").await.expect("removed");
    state
        .add_federation(
            A,
            &endpoint(&a),
            "spiffe://a.example/ns/bundles/sa/server",
            a.bundle().to_pem().as_bytes(),
            "test",
        )
        .await
        .expect("added");
    let message = error_of(state.refresh_federation(A).await);
    assert!(message.contains("TLS"), "{message}");
}

/// Serves `body` once per connection over TLS with `identity`, as a broken or hostile
/// bundle endpoint would.
async fn serve_body(identity: Identity, body: &'static str) -> String {
    let config = tls::server_config(
        &identity,
        Arc::new(rustls::server::NoClientAuth),
        Versions::Tls12And13,
        tls::KeyExchange::PostQuantumPreferred,
        &[b"http/1.1"],
    )
    .expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = [0u8; 1024];
                let _ = tls.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    format!("https://127.0.0.1:{}/", addr.port())
}

#[tokio::test]
async fn garbage_and_an_empty_bundle_leave_the_last_good_one_in_force() {
    let a = ca(A).await;
    let b = ca("b.example").await;
    let state = &b.running().state;
    // A genuine identity of A (issued by A's admin API) serving what is not a bundle.
    let key = WorkloadKey::generate().expect("key");
    let issued = a
        .admin()
        .await
        .issue_certificate(IssueCertificateRequest {
            csr_der: key.csr_der(None).expect("csr"),
            spiffe_id: "spiffe://a.example/ns/bundles/sa/server".into(),
            dns_names: Vec::new(),
            ttl_seconds: 0,
        })
        .await
        .expect("issued")
        .into_inner();
    let identity = identity_of(&key, &issued);
    for (body, expect) in [
        ("<html>maintenance</html>", "not a SPIFFE bundle"),
        (r#"{"keys": []}"#, "no X.509 authority"),
    ] {
        let url = serve_body(identity.clone(), body).await;
        state
            .add_federation(
                A,
                &url,
                "spiffe://a.example/ns/bundles/sa/server",
                a.bundle().to_pem().as_bytes(),
                "test",
            )
            .await
            .expect("added");
        let message = error_of(state.refresh_federation(A).await);
        assert!(message.contains(expect), "{body}: {message}");
        let kept = &state.federations().expect("list")[0];
        assert_eq!(kept.bundle.x509_authorities, a.bundle().roots().to_vec());
        state.remove_federation(A, "test").await.expect("removed");
    }
}
