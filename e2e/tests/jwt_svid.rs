//! JWT-SVIDs through the sidecar's Workload API, signed by the real CA, with the real
//! identity agent in this process on one manual clock (as in `workload_api.rs`): the Rust
//! `spiffe` crate fetches a token and its bundle, Python's PyJWT (an independent JOSE
//! implementation, on gRPC's C core) validates one against the JWKS from `FetchJWTBundles`,
//! `ValidateJWTSVID` refuses every forgery in the list, and a key rotation under a steady
//! stream of validations fails none of them.

mod agent_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use agent_support::{Mesh, RunningAgent, raw_workload_client, wait_for, with_header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use spiffe::WorkloadApiClient;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;
use trellis_proto::admin::v1::{
    ActivateJwtKeyRequest, AddJwtKeyRequest, ListJwtKeysRequest, RetireJwtKeyRequest,
};
use trellis_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use trellis_proto::spiffe::workload::{JwtsvidRequest, ValidateJwtsvidRequest};
use trellis_sidecar::credentials::CredentialsRx;
use trellis_sidecar::workload_api::{JwtSvids, WorkloadApiSocket};

/// Generous for a shared 2-core machine; a passing run takes a fraction of it.
const WITHIN: Duration = Duration::from_secs(15);

/// The Workload API with the JWT-SVID profile on a socket in `dir`.
struct Served {
    path: PathBuf,
    _stop: DropGuard,
    _task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(mesh: &Mesh, dir: &Path, agent: &RunningAgent) -> Self {
        let path = dir.join("workload.sock");
        let jwt = JwtSvids::new(agent.ca.clone(), mesh.clock.clone());
        let socket = WorkloadApiSocket::bind(&path)
            .await
            .expect("bind")
            .with_jwt_svids(Arc::new(jwt));
        let stop = CancellationToken::new();
        let task = tokio::spawn(socket.serve(agent.creds.clone(), stop.clone()));
        Self {
            path,
            _stop: stop.drop_guard(),
            _task: task,
        }
    }

    async fn spiffe_client(&self) -> WorkloadApiClient {
        WorkloadApiClient::connect_to(format!("unix://{}", self.path.display()))
            .await
            .expect("the spiffe client connects")
    }

    async fn raw(&self) -> SpiffeWorkloadApiClient<Channel> {
        raw_workload_client(&self.path).await
    }
}

async fn started_agent(mesh: &Mesh, path: &str) -> RunningAgent {
    let agent = mesh.agent(path).await;
    let mut creds = agent.creds.clone();
    wait(&mut creds, "first certificate", |_| true).await;
    agent
}

/// Waits (real time, bounded) until the agent holds a certificate whose bundle satisfies
/// `done`.
async fn wait(
    creds: &mut CredentialsRx,
    what: &str,
    done: impl Fn(&trellis_identity::TrustBundle) -> bool,
) {
    wait_for(creds, WITHIN, what, |c| c.is_some_and(|c| done(&c.bundle))).await;
}

async fn fetch(api: &mut SpiffeWorkloadApiClient<Channel>, audience: &[&str]) -> String {
    api.fetch_jwtsvid(with_header(JwtsvidRequest {
        audience: audience.iter().map(|a| a.to_string()).collect(),
        spiffe_id: String::new(),
    }))
    .await
    .expect("FetchJWTSVID")
    .into_inner()
    .svids
    .remove(0)
    .svid
}

/// ValidateJWTSVID's answer: the SPIFFE ID, or the refusal's code and message.
async fn validate(
    api: &mut SpiffeWorkloadApiClient<Channel>,
    token: &str,
    audience: &str,
) -> Result<String, (tonic::Code, String)> {
    api.validate_jwtsvid(with_header(ValidateJwtsvidRequest {
        audience: audience.into(),
        svid: token.into(),
    }))
    .await
    .map(|r| r.into_inner().spiffe_id)
    .map_err(|s| (s.code(), s.message().to_owned()))
}

fn header_and_claims(token: &str) -> (serde_json::Value, serde_json::Value) {
    let mut parts = token.split('.');
    let mut part = || {
        let bytes = URL_SAFE_NO_PAD
            .decode(parts.next().expect("part"))
            .expect("base64url");
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("json")
    };
    (part(), part())
}

/// A compact JWS with `header` and `claims` and the given signature bytes.
fn compact(header: &serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
    let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    format!(
        "{}.{}.{}",
        enc(header),
        enc(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[tokio::test]
async fn the_spiffe_client_fetches_a_jwt_svid_and_validate_refuses_every_forgery() {
    let mesh = Mesh::start().await;
    let agent = started_agent(&mesh, "/ns/demo/sa/web").await;
    let served = Served::start(&mesh, mesh.dir.path(), &agent).await;
    let client = served.spiffe_client().await;
    let mut api = served.raw().await;
    let id = "spiffe://cluster.local/ns/demo/sa/web";

    // The spiffe crate: a token for the audience, and the bundle holding its key.
    let svid = client
        .fetch_jwt_svid(["billing"], None)
        .await
        .expect("FetchJWTSVID through the spiffe crate");
    assert_eq!(svid.spiffe_id().to_string(), id);
    assert_eq!(svid.audience(), &["billing".to_string()]);
    let token = svid.token().to_owned();
    let (header, claims) = header_and_claims(&token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let kid = header["kid"].as_str().expect("kid").to_owned();
    assert_eq!(claims["sub"], id);
    let (iat, exp) = (
        claims["iat"].as_u64().expect("iat"),
        claims["exp"].as_u64().expect("exp"),
    );
    assert_eq!(exp - iat, 300, "default lifetime: 5 minutes");
    let bundles = client.fetch_jwt_bundles().await.expect("FetchJWTBundles");
    let td = spiffe::TrustDomain::new("cluster.local").expect("td");
    let bundle = bundles.get(&td).expect("the trust domain's JWT bundle");
    assert!(
        bundle.find_jwt_authority(&kid).is_some(),
        "{kid} in the bundle"
    );

    // Cached per audience set until its half-life, then fresh.
    assert_eq!(fetch(&mut api, &["billing"]).await, token, "cached");
    let other = fetch(&mut api, &["billing", "audit"]).await;
    assert_ne!(other, token, "another audience set, another token");
    assert_eq!(fetch(&mut api, &["audit", "billing"]).await, other, "a set");

    // Valid: the spiffe crate's call and ours.
    let validated = client
        .validate_jwt_token("billing", &token)
        .await
        .expect("valid for its audience");
    assert_eq!(validated.spiffe_id().to_string(), id);
    assert_eq!(validate(&mut api, &token, "billing").await, Ok(id.into()));

    // Refused, each with INVALID_ARGUMENT naming why.
    let refused = |r: Result<String, (tonic::Code, String)>, why: &str| {
        let (code, message) = r.expect_err(why);
        assert_eq!(code, tonic::Code::InvalidArgument, "{why}: {message}");
        message
    };
    let m = refused(
        validate(&mut api, &token, "payroll").await,
        "wrong audience",
    );
    assert!(m.contains("audience"), "{m}");

    // alg none: the claims unchanged, no signature.
    let none = compact(
        &serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid}),
        &claims,
        b"",
    );
    refused(validate(&mut api, &none, "billing").await, "alg none");

    // HS256 keyed with the public key, as the classic key-confusion attack does: once with
    // the JWK's JSON, once with the raw point.
    let jwks = trellis_identity::jwk::set_json(
        agent
            .creds
            .borrow()
            .as_ref()
            .expect("creds")
            .bundle
            .jwt_keys(),
    );
    let point = agent
        .creds
        .borrow()
        .as_ref()
        .expect("creds")
        .bundle
        .jwt_keys()[0]
        .public_key
        .clone();
    for secret in [jwks.clone(), point] {
        let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        hs.kid = Some(kid.clone());
        let forged = jsonwebtoken::encode(
            &hs,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .expect("HS256");
        let m = refused(validate(&mut api, &forged, "billing").await, "HS256");
        assert!(m.contains("ES256"), "{m}");
    }

    // A kid the bundle does not have, signed by a P-256 key of our own.
    let own = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let own_key = jsonwebtoken::EncodingKey::from_ec_der(&own.serialize_der());
    for forged_kid in ["0000000000000000".to_string(), kid.clone()] {
        let mut es = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        es.kid = Some(forged_kid.clone());
        let forged = jsonwebtoken::encode(&es, &claims, &own_key).expect("ES256");
        let m = refused(
            validate(&mut api, &forged, "billing").await,
            "unknown key / wrong key under a known kid",
        );
        assert!(m.contains(&forged_kid), "{m}");
    }

    // A token from another trust domain, signed by its own CA.
    let other_mesh = Mesh::start_configured(|c| {
        c.trust_domain = trellis_identity::TrustDomain::new("partner.example").expect("td");
    })
    .await;
    let other_agent = started_agent(&other_mesh, "/ns/demo/sa/web").await;
    let other_dir = tempfile::tempdir().expect("dir");
    let other_served = Served::start(&other_mesh, other_dir.path(), &other_agent).await;
    let foreign = fetch(&mut other_served.raw().await, &["billing"]).await;
    assert_eq!(
        header_and_claims(&foreign).1["sub"],
        "spiffe://partner.example/ns/demo/sa/web"
    );
    refused(
        validate(&mut api, &foreign, "billing").await,
        "another trust domain",
    );

    // Expired: move the clock to `exp`.
    mesh.clock
        .advance(Duration::from_secs(exp.saturating_sub(iat) + 1));
    let m = refused(validate(&mut api, &token, "billing").await, "expired");
    assert!(m.contains("expired"), "{m}");
    let fresh = fetch(&mut api, &["billing"]).await;
    assert_ne!(
        fresh, token,
        "past its half-life the cache asks the CA again"
    );
    assert_eq!(validate(&mut api, &fresh, "billing").await, Ok(id.into()));

    // The audience is required.
    let status = api
        .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
        .await
        .expect_err("no audience");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = api
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["billing".into()],
            spiffe_id: String::new(),
        })
        .await
        .expect_err("no security header");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// PyJWT, on gRPC's C core, fetches a token and the JWKS through the Workload API and
/// validates the token with the key the JWKS names (ES256 only, audience checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_validates_a_jwt_svid_against_the_jwks_from_fetch_jwt_bundles() {
    let mesh = Mesh::start().await;
    let agent = started_agent(&mesh, "/ns/demo/sa/python").await;
    let served = Served::start(&mesh, mesh.dir.path(), &agent).await;
    let mut cmd = std::process::Command::new(trellis_e2e::python::python());
    cmd.arg(trellis_e2e::python::workspace().join("e2e/tests/workload_api_py/jwt_svid.py"))
        .arg(&served.path)
        .arg(trellis_e2e::python::workspace().join("proto/proto/spiffe/workload"))
        .arg("billing");
    let outcome = tokio::task::spawn_blocking(move || trellis_e2e::run(cmd, 2 * WITHIN))
        .await
        .expect("join")
        .success();
    let got = outcome.json();
    assert_eq!(got["sub"], "spiffe://cluster.local/ns/demo/sa/python");
    assert_eq!(got["aud"], serde_json::json!(["billing"]));
    assert_eq!(got["alg"], "ES256");
    assert_eq!(got["wrong_audience"], "InvalidAudienceError");
    assert_eq!(got["no_audience"], "INVALID_ARGUMENT");
    let kid = got["kid"].as_str().expect("kid");
    let creds = agent.creds.borrow().clone().expect("creds");
    assert!(creds.bundle.jwt_keys().iter().any(|k| k.key_id == kid));
    assert_eq!(
        got["jwks_kids"],
        serde_json::json!(
            creds
                .bundle
                .jwt_keys()
                .iter()
                .map(|k| k.key_id.clone())
                .collect::<Vec<_>>()
        )
    );
}

/// add → activate → retire under a steady stream of fetches and validations: none fails,
/// and the refusals of activation (a workload lacks the key) and retirement (its tokens
/// may still be valid) hold until they no longer apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_key_rotation_under_steady_validations_fails_none() {
    // Tokens live at most 10 minutes, so the old key may go 10 minutes after the switch,
    // well before the agents' certificates (1 h) need renewing.
    let mesh = Mesh::start_configured(|c| c.jwt_svid.max_ttl = Duration::from_secs(600)).await;
    let web = started_agent(&mesh, "/ns/demo/sa/web").await;
    let api_agent = started_agent(&mesh, "/ns/demo/sa/api").await;
    let web_dir = tempfile::tempdir().expect("dir");
    let api_dir = tempfile::tempdir().expect("dir");
    let web_served = Served::start(&mesh, web_dir.path(), &web).await;
    let api_served = Served::start(&mesh, api_dir.path(), &api_agent).await;
    let mut admin = mesh.admin().await;
    let old_kid = admin
        .list_jwt_keys(ListJwtKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys[0]
        .key_id
        .clone();

    // web fetches tokens for "api"; api validates them, both through their sidecars.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let kids = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    // Held for each fetch-and-validate, and by the test while it moves the clock: a token
    // fetched just before a jump of minutes would expire before its validation, which says
    // nothing about the rotation.
    let round = Arc::new(tokio::sync::Mutex::new(()));
    let traffic = {
        let (stop, ok, failed, kids) = (stop.clone(), ok.clone(), failed.clone(), kids.clone());
        let round = round.clone();
        let (mut fetcher, mut validator) = (web_served.raw().await, api_served.raw().await);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let turn = round.lock().await;
                let token = fetch(&mut fetcher, &["api"]).await;
                kids.lock()
                    .expect("kids")
                    .insert(header_and_claims(&token).0["kid"].to_string());
                match validate(&mut validator, &token, "api").await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("validation failed: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                drop(turn);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let progress = |min: u64| {
        let ok = ok.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WITHIN;
            while ok.load(Ordering::Relaxed) < min {
                assert!(tokio::time::Instant::now() < deadline, "no validations");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    progress(20).await;

    let new_kid = admin
        .add_jwt_key(AddJwtKeyRequest {})
        .await
        .expect("add")
        .into_inner()
        .key_id;
    // Both sidecars receive the key (and acknowledge the bundle) before it may sign.
    for agent in [&web, &api_agent] {
        let mut creds = agent.creds.clone();
        wait(&mut creds, "the new key", |b| {
            b.jwt_keys().iter().any(|k| k.key_id == new_kid)
        })
        .await;
    }
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        match admin
            .activate_jwt_key(ActivateJwtKeyRequest {
                key_id: new_kid.clone(),
                force: false,
            })
            .await
        {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                assert!(tokio::time::Instant::now() < deadline, "{}", s.message());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("activate: {s:?}"),
        }
    }
    let before = ok.load(Ordering::Relaxed);
    progress(before + 20).await;

    // The old key signed tokens that live up to the maximum lifetime: retiring it now is
    // refused; once the clock is past that, it goes.
    let refusal = admin
        .retire_jwt_key(RetireJwtKeyRequest {
            key_id: old_kid.clone(),
            force: false,
        })
        .await
        .expect_err("tokens of the old key may still be valid");
    assert_eq!(refusal.code(), tonic::Code::FailedPrecondition);
    assert!(
        refusal.message().contains("may be valid until"),
        "{}",
        refusal.message()
    );
    {
        let _paused = round.lock().await;
        mesh.clock.advance(Duration::from_secs(600 + 10));
    }
    admin
        .retire_jwt_key(RetireJwtKeyRequest {
            key_id: old_kid.clone(),
            force: false,
        })
        .await
        .expect("retire");
    for agent in [&web, &api_agent] {
        let mut creds = agent.creds.clone();
        wait(&mut creds, "the old key gone", |b| {
            b.jwt_keys().iter().all(|k| k.key_id != old_kid)
        })
        .await;
    }
    let before = ok.load(Ordering::Relaxed);
    progress(before + 20).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(WITHIN, traffic)
        .await
        .expect("traffic stops")
        .expect("traffic task");
    let kids = kids.lock().expect("kids").clone();
    assert_eq!(
        kids.len(),
        2,
        "tokens from both keys were validated: {kids:?}"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed validations");
    eprintln!(
        "{} validations during the rotation, none failed",
        ok.load(Ordering::Relaxed)
    );
}

/// `mesh`'s CA starts federating with `partner`'s trust domain (what `trellis federation
/// add` and its first refresh do), and `agent` receives the bundle.
async fn federate(mesh: &Mesh, partner: &Mesh, agent: &RunningAgent) {
    let ca = mesh.ca();
    let own = ca.bundle();
    let foreign = partner.ca().bundle();
    let version = own.version() + 1;
    ca.publish_bundle(
        trellis_identity::TrustBundle::new(
            own.trust_domain().clone(),
            version,
            own.roots().to_vec(),
        )
        .expect("bundle")
        .with_jwt_keys(own.jwt_keys().to_vec())
        .with_federated(Arc::new(std::collections::BTreeMap::from([(
            foreign.trust_domain().clone(),
            foreign,
        )]))),
    );
    wait(&mut agent.creds.clone(), "the federated bundle", |b| {
        b.version() == version && !b.federated().is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_federated_trust_domains_tokens_validate_with_its_keys_and_only_for_its_ids() {
    let mesh = Mesh::start().await;
    let agent = started_agent(&mesh, "/ns/demo/sa/web").await;
    let served = Served::start(&mesh, mesh.dir.path(), &agent).await;
    let mut api = served.raw().await;
    let partner = Mesh::start_configured(|c| {
        c.trust_domain = trellis_identity::TrustDomain::new("partner.example").expect("td");
    })
    .await;
    let partner_agent = started_agent(&partner, "/ns/billing/sa/api").await;
    let partner_dir = tempfile::tempdir().expect("dir");
    let partner_served = Served::start(&partner, partner_dir.path(), &partner_agent).await;
    let foreign = fetch(&mut partner_served.raw().await, &["web"]).await;

    let before = validate(&mut api, &foreign, "web").await;
    assert!(before.is_err(), "not federated yet: {before:?}");
    federate(&mesh, &partner, &agent).await;
    assert_eq!(
        validate(&mut api, &foreign, "web").await,
        Ok("spiffe://partner.example/ns/billing/sa/api".into())
    );
    let wrong_audience = validate(&mut api, &foreign, "elsewhere").await;
    assert!(
        matches!(wrong_audience, Err((tonic::Code::InvalidArgument, _))),
        "{wrong_audience:?}"
    );

    // FetchJWTBundles hands the partner's keys to applications, as a JWK Set the spiffe
    // crate reads.
    let bundles = served
        .spiffe_client()
        .await
        .fetch_jwt_bundles()
        .await
        .expect("JWT bundles");
    let partner_td = spiffe::TrustDomain::new("partner.example").expect("td");
    let partner_kid = &partner.ca().bundle().jwt_keys()[0].key_id.clone();
    assert!(
        bundles
            .get(&partner_td)
            .expect("partner JWT bundle")
            .find_jwt_authority(partner_kid)
            .is_some()
    );

    // The partner's own key cannot vouch for an identity of this trust domain.
    let key_file = partner
        .ca()
        .data_dir()
        .join("keys")
        .join(format!("jwt-{partner_kid}.key.pem"));
    let pem = std::fs::read(key_file).expect("partner JWT key");
    let key = trellis_identity::pem::private_key_from_pem(&pem).expect("PKCS#8 PEM");
    let key = jsonwebtoken::EncodingKey::from_ec_der(key.secret_der());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(partner_kid.clone());
    let (_, mut claims) = header_and_claims(&foreign);
    claims["sub"] = "spiffe://cluster.local/ns/demo/sa/admin".into();
    let borrowed = jsonwebtoken::encode(&header, &claims, &key).expect("signed");
    let refused = validate(&mut api, &borrowed, "web").await;
    assert!(
        matches!(&refused, Err((tonic::Code::InvalidArgument, m)) if m.contains(partner_kid.as_str())),
        "{refused:?}"
    );
}
