//! Federation between two real CAs of different trust domains on loopback: one reads the
//! other's SPIFFE bundle endpoint, follows a root it adds, keeps the last good bundle when
//! the endpoint cannot be authenticated or serves something that is not a bundle, and hands
//! the federated bundles to its workloads with its own bundle.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Status};
use trellis_identity::clock::ManualClock;
use trellis_identity::clock::SystemClock;
use trellis_identity::jwt_svid::{self, JwtSvidError};
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{TrustDomain, WorkloadKey};
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_proto::admin::v1::{
    ActivateRootRequest, AddFederationRequest, AddRootRequest, FederationInfo,
    IssueCertificateRequest, ListFederationsRequest, RefreshFederationRequest,
    RemoveFederationRequest,
};
use trellis_proto::ca::v1::{MintJwtSvidRequest, WatchTrustBundleRequest};

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

fn error_of(result: Result<FederationInfo, Status>) -> String {
    match result {
        Ok(f) => panic!("refresh should fail, got sequence {}", f.sequence),
        Err(e) => e.message().to_owned(),
    }
}

/// A CA's roots as the admin API lists them.
fn roots_of(ca: &TestCa) -> Vec<Vec<u8>> {
    ca.bundle().roots().iter().map(|r| r.to_vec()).collect()
}

/// A CA's federation calls on its admin API, as `trellis federation` makes them.
struct Federations(AdminClient<Channel>);

impl Federations {
    async fn of(ca: &TestCa) -> Self {
        Self(ca.admin().await)
    }

    async fn add(
        &mut self,
        trust_domain: &str,
        endpoint_url: &str,
        endpoint_spiffe_id: &str,
        bundle: &[u8],
    ) -> Result<FederationInfo, Status> {
        let request = AddFederationRequest {
            trust_domain: trust_domain.into(),
            endpoint_url: endpoint_url.into(),
            endpoint_spiffe_id: endpoint_spiffe_id.into(),
            bundle: bundle.to_vec(),
        };
        Ok(self.0.add_federation(request).await?.into_inner())
    }

    async fn refresh(&mut self, trust_domain: &str) -> Result<FederationInfo, Status> {
        let request = RefreshFederationRequest {
            trust_domain: trust_domain.into(),
        };
        Ok(self.0.refresh_federation(request).await?.into_inner())
    }

    async fn list(&mut self) -> Vec<FederationInfo> {
        let request = ListFederationsRequest {};
        let listed = self.0.list_federations(request).await.expect("listed");
        listed.into_inner().federations
    }

    async fn remove(&mut self, trust_domain: &str) {
        let request = RemoveFederationRequest {
            trust_domain: trust_domain.into(),
        };
        self.0.remove_federation(request).await.expect("removed");
    }
}

#[tokio::test]
async fn a_federated_bundle_follows_the_foreign_root_rotation() {
    let a = ca(A).await;
    let b = ca("b.example").await;
    let mut federations = Federations::of(&b).await;
    let added = federations
        .add(
            A,
            &endpoint(&a),
            "spiffe://a.example/trellis/ca",
            a.bundle().to_pem().as_bytes(),
        )
        .await
        .expect("federation added");
    assert_eq!(added.x509_authorities, roots_of(&a));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let due = added.next_refresh_at.expect("due").seconds;
    assert!(due <= i64::try_from(now).expect("now"), "fetched at once");

    let fetched = federations.refresh(A).await.expect("endpoint read");
    assert_eq!(fetched.sequence, a.bundle().version());
    assert_eq!(fetched.last_error, "");
    let refreshed = fetched.refreshed_at.expect("refreshed").seconds;
    let due = fetched.next_refresh_at.expect("due").seconds;
    assert_eq!(due - refreshed, 10, "the endpoint's refresh hint");

    a.admin()
        .await
        .add_root(AddRootRequest::default())
        .await
        .expect("root added at A");
    let rotated = federations.refresh(A).await.expect("endpoint read");
    assert_eq!(rotated.x509_authorities.len(), 2);
    assert_eq!(rotated.x509_authorities, roots_of(&a));

    // The poller does the same by itself within the refresh hint; the state survives a
    // restart (the last good bundle is stored).
    let listed = federations.list().await;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].refreshed_at.is_some_and(|t| t.seconds > 0));

    // Own trust domain and an endpoint ID of another trust domain are refused at once.
    let own = federations
        .add(
            "b.example",
            &endpoint(&a),
            "spiffe://b.example/trellis/ca",
            a.bundle().to_pem().as_bytes(),
        )
        .await;
    assert!(
        matches!(&own, Err(s) if s.code() == Code::InvalidArgument),
        "{own:?}"
    );
    let mismatch = federations
        .add(
            "c.example",
            &endpoint(&a),
            "spiffe://a.example/trellis/ca",
            a.bundle().to_pem().as_bytes(),
        )
        .await;
    assert!(
        matches!(&mismatch, Err(s) if s.code() == Code::InvalidArgument
            && s.message().contains("not in c.example")),
        "{mismatch:?}"
    );
}

#[tokio::test]
async fn an_endpoint_not_vouched_for_by_the_bundle_in_force_is_refused() {
    let a = ca(A).await;
    let stranger = ca("c.example").await;
    let b = ca("b.example").await;
    let mut federations = Federations::of(&b).await;
    // B starts from a bundle that is not A's (as after an unannounced key change): A's
    // endpoint certificate does not verify against it.
    let wrong = TrustDomain::new(A).expect("td");
    let wrong_roots =
        trellis_identity::TrustBundle::new(wrong, 1, stranger.bundle().roots().to_vec())
            .expect("bundle");
    federations
        .add(
            A,
            &endpoint(&a),
            "spiffe://a.example/trellis/ca",
            wrong_roots.to_pem().as_bytes(),
        )
        .await
        .expect("added");
    let message = error_of(federations.refresh(A).await);
    assert!(message.contains("TLS"), "{message}");
    let kept = &federations.list().await[0];
    assert_eq!(kept.x509_authorities, roots_of(&stranger));
    assert!(kept.last_error.contains("TLS"), "{}", kept.last_error);

    // The right bundle but an endpoint serving with another SPIFFE ID than configured.
    federations.remove(A).await;
    federations
        .add(
            A,
            &endpoint(&a),
            "spiffe://a.example/ns/bundles/sa/server",
            a.bundle().to_pem().as_bytes(),
        )
        .await
        .expect("added");
    let message = error_of(federations.refresh(A).await);
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
    let mut federations = Federations::of(&b).await;
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
    // A root that names another trust domain (as SPIRE's roots do, by URI SAN).
    let mut foreign_root = rcgen::CertificateParams::default();
    foreign_root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    foreign_root.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://c.example".try_into().expect("uri"),
    )];
    let foreign_root = foreign_root
        .self_signed(&rcgen::KeyPair::generate().expect("key"))
        .expect("root");
    let other_domains_bundle = trellis_identity::spiffe_bundle::SpiffeBundle {
        trust_domain: TrustDomain::new(A).expect("td"),
        sequence: 99,
        refresh_hint: None,
        x509_authorities: vec![foreign_root.der().clone()],
        jwt_authorities: Vec::new(),
    }
    .to_json();
    for (body, expect) in [
        ("<html>maintenance</html>", "not a SPIFFE bundle"),
        (r#"{"keys": []}"#, "no X.509 authority"),
        (
            &*other_domains_bundle.leak(),
            "is a root of trust domain c.example, not of a.example",
        ),
    ] {
        let url = serve_body(identity.clone(), body).await;
        federations
            .add(
                A,
                &url,
                "spiffe://a.example/ns/bundles/sa/server",
                a.bundle().to_pem().as_bytes(),
            )
            .await
            .expect("added");
        let message = error_of(federations.refresh(A).await);
        assert!(message.contains(expect), "{body}: {message}");
        let kept = &federations.list().await[0];
        assert_eq!(kept.x509_authorities, roots_of(&a));
        federations.remove(A).await;
    }
}

async fn jwt_svid_of(ca: &TestCa, path: &str, audience: &str) -> String {
    let (key, issued) = ca.bootstrap(path).await;
    ca.workload(Some(&identity_of(&key, &issued)))
        .await
        .mint_jwt_svid(MintJwtSvidRequest {
            audience: vec![audience.into()],
            ttl_seconds: 0,
        })
        .await
        .expect("minted")
        .into_inner()
        .token
}

#[tokio::test]
async fn federated_bundles_travel_with_a_new_bundle_version_and_validate_foreign_tokens() {
    let a = ca(A).await;
    let b = ca("b.example").await;
    let stranger = ca("c.example").await;
    let mut federations = Federations::of(&b).await;
    let mut stream = b
        .workload(None)
        .await
        .watch_trust_bundle(WatchTrustBundleRequest {})
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("bundle");
    assert!(first.federated_bundles.is_empty());

    federations
        .add(
            A,
            &endpoint(&a),
            "spiffe://a.example/trellis/ca",
            a.bundle().to_pem().as_bytes(),
        )
        .await
        .expect("federation added");
    federations.refresh(A).await.expect("endpoint read");

    // Each change is a new version of B's own bundle, and the stream carries A's roots and
    // JWT keys with it.
    let mut pushed = stream.message().await.expect("stream").expect("bundle");
    assert!(pushed.version > first.version);
    while pushed.version < b.bundle().version() {
        pushed = stream.message().await.expect("stream").expect("bundle");
    }
    assert_eq!(pushed.root_certificates_der, first.root_certificates_der);
    let [foreign] = pushed.federated_bundles.as_slice() else {
        panic!("one federated bundle: {:?}", pushed.federated_bundles);
    };
    assert_eq!(foreign.trust_domain, A);
    assert_eq!(
        foreign.root_certificates_der,
        a.bundle()
            .roots()
            .iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>()
    );
    assert_eq!(foreign.jwt_keys.len(), a.bundle().jwt_keys().len());
    assert!(foreign.federated_bundles.is_empty(), "never nested");

    // A's token validates against B's bundle only through the federated path; C's, not
    // federated, is refused; B's own tokens are unaffected.
    let from_a = jwt_svid_of(&a, "/ns/billing/sa/api", "b-service").await;
    let now = std::time::SystemTime::now();
    let valid = jwt_svid::validate_federated(&from_a, "b-service", &b.bundle(), now)
        .expect("A's token validates with A's federated keys");
    assert_eq!(
        valid.spiffe_id.as_str(),
        "spiffe://a.example/ns/billing/sa/api"
    );
    assert!(jwt_svid::validate(&from_a, "b-service", &b.bundle(), now).is_err());
    assert!(
        jwt_svid::validate_federated(&from_a, "elsewhere", &b.bundle(), now).is_err(),
        "audience still checked"
    );
    let from_c = jwt_svid_of(&stranger, "/ns/billing/sa/api", "b-service").await;
    let refused = jwt_svid::validate_federated(&from_c, "b-service", &b.bundle(), now)
        .expect_err("C is not federated");
    assert!(matches!(refused, JwtSvidError::UnknownKey(..)), "{refused}");
    let own = jwt_svid_of(&b, "/ns/web/sa/ui", "b-service").await;
    jwt_svid::validate_federated(&own, "b-service", &b.bundle(), now).expect("own token");

    // Removing the federation is a bundle change too; A's token is refused again.
    let before = b.bundle().version();
    federations.remove(A).await;
    assert!(b.bundle().version() > before);
    assert!(b.bundle().federated().is_empty());
    assert!(jwt_svid::validate_federated(&from_a, "b-service", &b.bundle(), now).is_err());
    let last = loop {
        let m = stream.message().await.expect("stream").expect("bundle");
        if m.version == b.bundle().version() {
            break m;
        }
    };
    assert!(last.federated_bundles.is_empty());
}

async fn added_root(ca: &TestCa) -> String {
    ca.admin()
        .await
        .add_root(AddRootRequest::default())
        .await
        .expect("root added")
        .into_inner()
        .id
}

#[tokio::test]
async fn a_ca_serving_its_bundle_waits_one_refresh_hint_before_signing_with_a_new_root() {
    let clock = Arc::new(ManualClock::new(std::time::SystemTime::now()));
    let served = TestCa::start_configured(clock.clone(), |c| {
        c.bundle_endpoint_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.bundle_refresh_hint = Duration::from_secs(300);
    })
    .await;
    let private = TestCa::start_configured(clock.clone(), |_| {}).await;
    let activate = |root_id: &str, force: bool| ActivateRootRequest {
        root_id: root_id.to_owned(),
        force,
    };
    // A CA that serves no bundle endpoint has no partners to wait for.
    let root = added_root(&private).await;
    private
        .admin()
        .await
        .activate_root(activate(&root, false))
        .await
        .expect("no bundle endpoint: at once");

    // One that does refuses, naming the setting and the way out; --force overrides.
    let root = added_root(&served).await;
    let (code, message) = code_and_message(
        served
            .admin()
            .await
            .activate_root(activate(&root, false))
            .await
            .expect_err("too soon for the partners"),
    );
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
    assert!(
        message.contains("bundle_refresh_hint") && message.contains("--force"),
        "{message}"
    );
    let forced = added_root(&served).await;
    served
        .admin()
        .await
        .activate_root(activate(&forced, true))
        .await
        .expect("--force");

    // One refresh hint after it was added, every partner has had its chance to read it.
    let mut admin = served.admin().await;
    clock.advance(Duration::from_secs(301));
    admin
        .activate_root(activate(&root, false))
        .await
        .expect("activated after the hint");
}
