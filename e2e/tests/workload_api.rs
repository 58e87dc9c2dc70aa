//! The sidecar's SPIFFE Workload API against a SPIFFE client nobody here wrote (the Rust
//! `spiffe` crate), with the real CA and the real identity agent in this process on one
//! manual clock (as in `identity_agent.rs`): the served SVID matches what the agent holds,
//! rotations and bundle changes stream to the client, and the spec's refusals hold.
//! Time is moved, never waited for; every wait is bounded.

mod agent_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_support::{Mesh, RunningAgent, raw_workload_client, wait_for, with_header};
use spiffe::{TrustDomain as SpiffeTrustDomain, WorkloadApiClient, X509Svid};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, DropGuard};
use trellis_identity::clock::Clock;
use trellis_identity::{CertInfo, TrustBundle, WorkloadKey, pem};
use trellis_proto::spiffe::workload::{JwtsvidRequest, X509BundlesRequest, X509svidRequest};
use trellis_sidecar::credentials::{Credentials, CredentialsRx};
use trellis_sidecar::workload_api::{SECURITY_HEADER, SOCKET_MODE, WorkloadApiSocket};

/// Generous for a shared 2-core machine; a passing run takes a fraction of it.
const WITHIN: Duration = Duration::from_secs(15);

/// Starts an identity agent for `path` and waits for its first certificate.
async fn agent(mesh: &Mesh, path: &str) -> (CredentialsRx, Arc<Credentials>, RunningAgent) {
    let agent = mesh.agent(path).await;
    let mut creds = agent.creds.clone();
    let first = wait(&mut creds, "first certificate", |c| c.is_some())
        .await
        .expect("certificate");
    (creds, first, agent)
}

/// The Workload API on a socket in `dir`, serving `creds` until stopped or dropped.
struct Served {
    path: PathBuf,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(dir: &Path, creds: CredentialsRx) -> Self {
        let path = dir.join("spire-compatible").join("workload.sock");
        let socket = WorkloadApiSocket::bind(&path).await.expect("bind");
        let stop = CancellationToken::new();
        let task = tokio::spawn(socket.serve(creds, stop.clone()));
        Self {
            path,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    async fn client(&self) -> WorkloadApiClient {
        WorkloadApiClient::connect_to(self.endpoint())
            .await
            .expect("the spiffe client connects")
    }

    /// Stops the server and checks that it ends cleanly and removes its socket.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WITHIN, self.task)
            .await
            .expect("the Workload API stops in time")
            .expect("task")
            .expect("serve ends without error");
        assert!(!self.path.exists(), "socket file removed on stop");
    }
}

/// Waits (real time, bounded) until the published credentials satisfy `done`.
async fn wait(
    creds: &mut CredentialsRx,
    what: &str,
    done: impl Fn(Option<&Credentials>) -> bool,
) -> Option<Arc<Credentials>> {
    wait_for(creds, WITHIN, what, done).await
}

/// The next item of a stream, failing the test if none comes within [`WITHIN`].
async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> Option<S::Item> {
    tokio::time::timeout(WITHIN, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WITHIN:?}"))
}

fn der(certs: &[impl AsRef<[u8]>]) -> Vec<Vec<u8>> {
    certs.iter().map(|c| c.as_ref().to_vec()).collect()
}

/// The served SVID is the agent's: same SPIFFE ID, same chain (leaf first), same key, and
/// the key is the private half of the leaf's public key.
fn assert_matches_agent(svid: &X509Svid, creds: &Credentials) {
    assert_eq!(svid.spiffe_id().to_string(), creds.svid.spiffe_id.as_str());
    let served_chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(
        served_chain,
        der(&creds.identity.chain),
        "chain, leaf first"
    );
    assert_eq!(
        svid.private_key().as_bytes(),
        creds.identity.key.secret_der(),
        "the agent's key"
    );
    let key = WorkloadKey::from_pem(&pem::encode("PRIVATE KEY", svid.private_key().as_bytes()))
        .expect("a PKCS#8 P-256 key");
    let leaf = CertInfo::parse(svid.leaf().as_bytes()).expect("leaf parses");
    assert_eq!(
        key.public_key_der(),
        leaf.spki_der,
        "the served key is the leaf's private key"
    );
}

#[tokio::test]
async fn the_spiffe_client_gets_the_agents_svid_and_the_next_one_after_a_rotation() {
    let mesh = Mesh::start().await;
    let (mut creds, first, _agent) = agent(&mesh, "/ns/demo/sa/web").await;
    let served = Served::start(mesh.dir.path(), creds.clone()).await;
    let client = served.client().await;

    let svid = client.fetch_x509_svid().await.expect("fetch X.509-SVID");
    assert_matches_agent(&svid, &first);
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://cluster.local/ns/demo/sa/web"
    );

    // The stream gives the current SVID at once, then the next one after a rotation.
    let mut stream = client.stream_x509_svids().await.expect("stream");
    let current = next(&mut stream, "first streamed SVID")
        .await
        .expect("an SVID")
        .expect("valid");
    assert_matches_agent(&current, &first);

    for rotation in 1..=2 {
        let previous = creds.borrow().clone().expect("certificate");
        mesh.pass_renewal_point(&previous);
        let old_serial = previous.svid.serial.clone();
        let rotated = wait(&mut creds, "rotation", |c| {
            c.is_some_and(|c| c.svid.serial != old_serial)
        })
        .await
        .expect("certificate");
        // Bounded: no message other than this rotation is expected.
        let streamed = next(&mut stream, "rotated SVID")
            .await
            .expect("the stream stays open")
            .expect("valid");
        assert_ne!(
            streamed.leaf().as_bytes(),
            previous.identity.chain[0].as_ref(),
            "rotation {rotation}: a new leaf"
        );
        assert_matches_agent(&streamed, &rotated);
    }

    served.stop().await;
    // A stopped server ended the open stream rather than leaving it hanging.
    let end = next(&mut stream, "end of stream").await;
    assert!(
        end.as_ref().is_none_or(|r| r.is_err()),
        "stream ended on stop: {:?}",
        end.map(|r| r.map(|s| s.spiffe_id().to_string()))
    );
}

/// gRPC's C core as the client: Python `grpcio` (what py-spiffe runs on) dialling the default
/// `unix:///path` target, which sends the socket path, percent-encoded, as `:authority`.
/// It gets the agent's SVID and the bundle map, and a call without the security header is
/// still refused with INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_c_core_client_gets_the_svid_and_the_bundles() {
    let mesh = Mesh::start().await;
    let (creds, first, _agent) = agent(&mesh, "/ns/demo/sa/python").await;
    let served = Served::start(mesh.dir.path(), creds).await;

    let mut cmd = std::process::Command::new(trellis_e2e::python::python());
    cmd.arg(trellis_e2e::python::workspace().join("e2e/tests/workload_api_py/fetch.py"))
        .arg(&served.path)
        .arg(trellis_e2e::python::workspace().join("proto/proto/spiffe/workload"));
    let outcome = tokio::task::spawn_blocking(move || trellis_e2e::run(cmd, 2 * WITHIN))
        .await
        .expect("join")
        .success();
    let got = outcome.json();
    let hex = |der: &[u8]| trellis_identity::hex::encode(der);
    let concat = |certs: &[Vec<u8>]| hex(&certs.concat());
    let roots = concat(&der(first.bundle.roots()));
    assert_eq!(got["spiffe_id"], "spiffe://cluster.local/ns/demo/sa/python");
    assert_eq!(got["x509_svid"], concat(&der(&first.identity.chain)));
    assert_eq!(got["x509_svid_key"], hex(first.identity.key.secret_der()));
    assert_eq!(got["bundle"], roots);
    assert_eq!(
        got["bundles"],
        serde_json::json!({ "spiffe://cluster.local": roots })
    );
    assert_eq!(got["without_header"], "INVALID_ARGUMENT");
    served.stop().await;
}

#[tokio::test]
async fn bundles_are_fetched_and_streamed_again_when_the_ca_adds_a_root() {
    let mesh = Mesh::start().await;
    let (mut creds, first, _agent) = agent(&mesh, "/ns/demo/sa/bundles").await;
    let served = Served::start(mesh.dir.path(), creds.clone()).await;
    let client = served.client().await;
    let td = SpiffeTrustDomain::new("cluster.local").expect("td");

    let bundles = client.fetch_x509_bundles().await.expect("fetch bundles");
    assert_eq!(bundles.len(), 1, "only the sidecar's trust domain");
    let bundle = bundles.get(&td).expect("cluster.local bundle");
    let authorities: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(authorities, der(first.bundle.roots()));

    let mut stream = client.stream_x509_bundles().await.expect("stream");
    let initial = next(&mut stream, "first bundle set")
        .await
        .expect("a bundle set")
        .expect("valid");
    assert_eq!(
        initial.get(&td).expect("bundle").authorities().len(),
        first.bundle.roots().len()
    );

    // Another CA's root joins the bundle (the CA's test hook, as in identity_agent.rs).
    let other = Mesh::start().await;
    let ca = mesh.ca();
    let mut roots = ca.bundle().roots().to_vec();
    roots.extend(other.ca().bundle().roots().iter().cloned());
    let version = ca.bundle().version() + 1;
    ca.publish_bundle(
        TrustBundle::new(ca.bundle().trust_domain().clone(), version, roots.clone())
            .expect("bundle"),
    );
    wait(&mut creds, "the new bundle at the agent", |c| {
        c.is_some_and(|c| c.bundle.version() == version)
    })
    .await;
    let changed = next(&mut stream, "changed bundle set")
        .await
        .expect("the stream stays open")
        .expect("valid");
    let authorities: Vec<Vec<u8>> = changed
        .get(&td)
        .expect("bundle")
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(authorities, der(&roots), "both roots, in bundle order");

    // The SVID carries the new bundle too.
    let svid_bundle = client
        .fetch_x509_context()
        .await
        .expect("context")
        .bundle_set()
        .get(&td)
        .expect("bundle")
        .authorities()
        .len();
    assert_eq!(svid_bundle, 2);
    served.stop().await;
}

#[tokio::test]
async fn an_open_svid_stream_ends_with_permission_denied_when_the_certificate_is_withdrawn() {
    let mut mesh = Mesh::start().await;
    let (mut creds, first, _agent) = agent(&mesh, "/ns/demo/sa/batch").await;
    let served = Served::start(mesh.dir.path(), creds.clone()).await;
    let mut raw = raw_workload_client(&served.path).await;
    let mut stream = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let message = next(&mut stream, "first message")
        .await
        .expect("a message")
        .expect("ok");
    assert_eq!(message.svids.len(), 1);
    assert_eq!(message.svids[0].spiffe_id, first.svid.spiffe_id.as_str());

    // The CA stays down past expiry: the agent withdraws the certificate (fails closed).
    mesh.stop_ca().await;
    mesh.clock.advance(
        first
            .svid
            .not_after
            .duration_since(mesh.clock.now())
            .unwrap_or_default()
            + Duration::from_secs(1),
    );
    wait(&mut creds, "withdrawal", |c| c.is_none()).await;
    let status = next(&mut stream, "the end of the stream")
        .await
        .expect("a final status")
        .expect_err("the stream ends with an error");
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "Workload API 5.2.1: all SVIDs redacted: {status:?}"
    );

    // A new call without a certificate: still initialising, retry later.
    let status = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("no certificate");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    served.stop().await;
}

#[tokio::test]
async fn the_spec_refusals_and_the_socket_mode_hold() {
    let dir = tempfile::tempdir().expect("dir");
    // No certificate yet: the agent is still bootstrapping.
    let (_creds_tx, creds) = watch::channel(None);
    let served = Served::start(dir.path(), creds).await;

    let mode = std::fs::metadata(&served.path)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, SOCKET_MODE, "socket mode {:o}", mode & 0o777);
    assert_eq!(SOCKET_MODE, 0o660);

    let mut raw = raw_workload_client(&served.path).await;
    // Without the security header: INVALID_ARGUMENT, for every call (Workload Endpoint 6).
    let status = raw
        .fetch_x509svid(X509svidRequest {})
        .await
        .expect_err("refused without the header");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(SECURITY_HEADER), "{status:?}");
    let status = raw
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .expect_err("refused without the header");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let mut wrong = tonic::Request::new(X509svidRequest {});
    wrong.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("TRUE"),
    );
    let status = raw.fetch_x509svid(wrong).await.expect_err("case sensitive");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // With the header, before the first certificate: UNAVAILABLE (still initialising).
    let status = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("no certificate yet");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let status = raw
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .expect_err("no bundle yet");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // The JWT-SVID profile is not offered.
    let status = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect_err("JWT not offered");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // The real client sees the same: it sends the header, and gets UNAVAILABLE.
    let err = served
        .client()
        .await
        .fetch_x509_svid()
        .await
        .expect_err("no certificate yet");
    assert!(
        format!("{err:?}").contains("Unavailable") || err.to_string().contains("unavailable"),
        "{err:?}"
    );
    served.stop().await;
}

/// A trust domain of its own: a fresh root, as a federated bundle. (JWT bundles of
/// federated trust domains: `jwt_svid.rs`.)
fn partner_bundle() -> TrustBundle {
    let td = trellis_identity::TrustDomain::new("partner.example").expect("td");
    let root = trellis_identity::profile::new_root(
        &td,
        std::time::SystemTime::now(),
        Duration::from_secs(86_400),
    )
    .expect("root");
    TrustBundle::new(td, 7, vec![root.cert]).expect("bundle")
}

#[tokio::test]
async fn federated_bundles_reach_applications_through_every_bundle_call() {
    let mesh = Mesh::start().await;
    let (mut creds, _first, _agent) = agent(&mesh, "/ns/demo/sa/federated").await;
    let served = Served::start(mesh.dir.path(), creds.clone()).await;

    // The CA's bundle now carries a federated trust domain (as `trellis federation add`
    // makes it), and streams it to the agent.
    let partner = partner_bundle();
    let ca = mesh.ca();
    let version = ca.bundle().version() + 1;
    let own = ca.bundle();
    let federated = std::collections::BTreeMap::from([(
        partner.trust_domain().clone(),
        Arc::new(partner.clone()),
    )]);
    ca.publish_bundle(
        TrustBundle::new(own.trust_domain().clone(), version, own.roots().to_vec())
            .expect("bundle")
            .with_jwt_keys(own.jwt_keys().to_vec())
            .with_federated(Arc::new(federated)),
    );
    wait(&mut creds, "the federated bundle at the agent", |c| {
        c.is_some_and(|c| c.bundle.version() == version && !c.bundle.federated().is_empty())
    })
    .await;

    let client = served.client().await;
    let partner_td = SpiffeTrustDomain::new("partner.example").expect("td");
    let own_td = SpiffeTrustDomain::new("cluster.local").expect("td");
    let partner_roots = der(partner.roots());

    let bundles = client.fetch_x509_bundles().await.expect("x509 bundles");
    assert!(bundles.get(&own_td).is_some(), "the own trust domain stays");
    let authorities = |b: &spiffe::X509Bundle| -> Vec<Vec<u8>> {
        b.authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect()
    };
    assert_eq!(
        authorities(&bundles.get(&partner_td).expect("partner bundle")),
        partner_roots
    );
    let context = client.fetch_x509_context().await.expect("context");
    assert_eq!(
        authorities(&context.bundle_set().get(&partner_td).expect("partner")),
        partner_roots,
        "X509SVIDResponse.federated_bundles"
    );

    // The raw map keys are trust-domain SPIFFE IDs (spec 5.2.2).
    let mut raw = raw_workload_client(&served.path).await;
    let response = next(
        &mut raw
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .expect("stream")
            .into_inner(),
        "X509-SVID response",
    )
    .await
    .expect("a response")
    .expect("valid");
    assert_eq!(
        response.federated_bundles.keys().collect::<Vec<_>>(),
        vec!["spiffe://partner.example"]
    );
    served.stop().await;
}
