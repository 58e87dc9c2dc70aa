//! Kubernetes service-account attestation against a real CA: a local HTTPS endpoint serves
//! the JWK Set, tokens are minted by PyJWT and `cryptography` (an implementation nobody here
//! wrote, `scripts/test-support/sa_tokens.py`) in the shape the API server issues them (RS256
//! with a 2048-bit RSA key and ES256 with a P-256 key, a `kid`, the `kubernetes.io` claim),
//! and sent to the CA's Certify over gRPC/TLS with a real CSR.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;
use trellis_ca::attest::jwks::{HttpsUrl, KeySource};
use trellis_ca::config::KubernetesConfig;
use trellis_identity::clock::SystemClock;
use trellis_identity::{CertInfo, WorkloadKey};
use trellis_proto::ca::v1::CertifyRequest;
use trellis_proto::ca::v1::certify_request::Credential;

use common::{TestCa, metrics, sample};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const BEARER: &str = "the-ca-own-service-account-token";
/// How long a request may wait for a read of the keys in these tests: a local read takes
/// milliseconds, a hanging one 10 s (the fetch timeout); this lies well between.
const FETCH_WAIT: Duration = Duration::from_secs(2);
/// Comfortably above `FETCH_WAIT`, comfortably below the 10 s a hanging read takes.
const WAIT_BOUND: Duration = Duration::from_secs(6);

// ---------------------------------------------------------------------------------------
// Token minting, by PyJWT

/// Keys and tokens from one run of the minting script.
struct Minted {
    jwks: HashMap<String, Value>,
    tokens: HashMap<String, String>,
}

impl Minted {
    fn token(&self, name: &str) -> String {
        self.tokens
            .get(name)
            .unwrap_or_else(|| panic!("no token {name:?} minted"))
            .clone()
    }

    fn jwk(&self, kid: &str) -> Value {
        self.jwks
            .get(kid)
            .unwrap_or_else(|| panic!("no key {kid:?}"))
            .clone()
    }
}

/// Runs the minting script with `keys` (kid, "RSA" or "EC") and token specs (see the script).
fn mint(keys: &[(&str, &str)], tokens: Value) -> Minted {
    let spec = json!({
        "keys": keys.iter().map(|(kid, kty)| json!({"kid": kid, "kty": kty})).collect::<Vec<_>>(),
        "tokens": tokens,
    });
    let out = trellis_e2e::python::mint_sa_tokens(&spec);
    Minted {
        jwks: out["jwks"]["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| (k["kid"].as_str().expect("kid").to_owned(), k.clone()))
            .collect(),
        tokens: serde_json::from_value(out["tokens"].clone()).expect("tokens"),
    }
}

/// A token spec for the pod of `namespace/account` signed with `key`.
fn token(name: &str, key: &str, namespace: &str, account: &str) -> Value {
    json!({"name": name, "key": key, "namespace": namespace, "service_account": account})
}

/// [`token`] with `extra` fields (`set`, `remove`, `headers`, `forge`, `audience`).
fn token_with(name: &str, key: &str, extra: Value) -> Value {
    let mut spec = token(name, key, "demo", "web");
    for (k, v) in extra.as_object().expect("an object") {
        spec[k] = v.clone();
    }
    spec
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------------------
// The JWKS endpoint: real HTTPS on 127.0.0.1 (or ::1) with a certificate made here.

/// What the endpoint does with a request.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Mode {
    Serve = 0,
    /// Answers 503, as an API server under maintenance.
    Fail = 1,
    /// Reads the request and never answers.
    Stall = 2,
}

struct JwksServer {
    url: String,
    ca_file: PathBuf,
    token_file: PathBuf,
    body: Arc<Mutex<String>>,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
    authorizations: Arc<Mutex<Vec<String>>>,
    /// The `Host` header of every request.
    hosts: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl JwksServer {
    async fn start(keys: &[Value]) -> Self {
        Self::start_on("127.0.0.1", keys).await
    }

    /// Serves on `ip` (an IPv4 or IPv6 address), with a certificate for that address.
    async fn start_on(ip: &str, keys: &[Value]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(vec![ip.into()]).expect("params");
        params.is_ca = rcgen::IsCa::NoCa;
        let cert = params.self_signed(&key).expect("server certificate");
        let ca_file = dir.path().join("apiserver-ca.crt");
        std::fs::write(&ca_file, cert.pem()).expect("write CA file");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{BEARER}\n")).expect("write token");
        let tls = rustls::ServerConfig::builder_with_provider(trellis_identity::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server TLS");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        // `SocketAddr`'s Display brackets an IPv6 address, as a URL does.
        let url = format!(
            "https://{}/openid/v1/jwks",
            listener.local_addr().expect("addr")
        );
        let server = Self {
            url,
            ca_file,
            token_file,
            body: Arc::default(),
            mode: Arc::new(AtomicU8::new(Mode::Serve as u8)),
            hits: Arc::default(),
            authorizations: Arc::default(),
            hosts: Arc::default(),
            _dir: dir,
        };
        let (body, mode, hits, auth, hosts) = (
            server.body.clone(),
            server.mode.clone(),
            server.hits.clone(),
            server.authorizations.clone(),
            server.hosts.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, body, mode, hits, auth, host) = (
                    acceptor.clone(),
                    body.clone(),
                    mode.clone(),
                    hits.clone(),
                    auth.clone(),
                    hosts.clone(),
                );
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request).into_owned();
                    for line in text.lines() {
                        if let Some((name, value)) = line.split_once(": ") {
                            match name.to_ascii_lowercase().as_str() {
                                "authorization" => auth.lock().expect("lock").push(value.into()),
                                "host" => host.lock().expect("lock").push(value.into()),
                                _ => {}
                            }
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let response = match mode.load(Ordering::SeqCst) {
                        0 => {
                            let payload = body.lock().expect("lock").clone();
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/jwk-set+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                                payload.len()
                            )
                        }
                        1 => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(120)).await;
                            return;
                        }
                    };
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        server.publish(keys);
        server
    }

    fn publish(&self, keys: &[Value]) {
        *self.body.lock().expect("lock") = json!({ "keys": keys }).to_string();
    }

    fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn config(&self) -> KubernetesConfig {
        KubernetesConfig {
            issuer: ISSUER.into(),
            audience: "trellis-ca".into(),
            keys: KeySource::Url {
                url: HttpsUrl::parse(&self.url).expect("url"),
                ca_file: self.ca_file.clone(),
                bearer_token_file: Some(self.token_file.clone()),
            },
            refresh: Duration::from_secs(3600),
            min_refresh: Duration::ZERO,
            fetch_wait: FETCH_WAIT,
            clock_skew: Duration::from_secs(60),
            allowed_namespaces: Vec::new(),
            allowed_service_accounts: Vec::new(),
        }
    }
}

/// Polls `check` every 50 ms until it holds, failing the test after `deadline`.
async fn eventually(deadline: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < end, "not within {deadline:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ca_with(config: KubernetesConfig) -> TestCa {
    TestCa::start_configured(Arc::new(SystemClock), |c| {
        c.kubernetes = Some(config);
        c.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await
}

/// Sends a CSR with the token; returns the SPIFFE ID in the issued leaf, or the refusal.
async fn certify(ca: &TestCa, token: &str) -> Result<String, (Code, String)> {
    let key = WorkloadKey::generate().expect("key");
    let request = CertifyRequest {
        csr_der: key.csr_der(None).expect("csr"),
        credential: Some(Credential::ServiceAccountToken(token.to_owned())),
        ..Default::default()
    };
    match ca.workload(None).await.certify(request).await {
        Ok(response) => {
            let response = response.into_inner();
            let leaf = CertInfo::parse(&response.chain_der[0]).expect("leaf parses");
            let in_cert = leaf.spiffe_id().expect("one SPIFFE ID").to_string();
            assert_eq!(in_cert, response.spiffe_id);
            Ok(in_cert)
        }
        Err(status) => Err((status.code(), status.message().to_owned())),
    }
}

/// The keys in force and the failed reads, as `/metrics` reports them.
async fn key_stats(ca: &TestCa) -> (u64, u64) {
    let page = metrics(ca).await;
    let read = |name| sample(&page, name).unwrap_or_else(|| panic!("no {name}: {page}"));
    (
        read("trellis_ca_kubernetes_keys"),
        read("trellis_ca_kubernetes_key_refresh_failures_total"),
    )
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn rs256_and_es256_tokens_get_their_service_account_identity() {
    let minted = mint(
        &[("rsa-key-1", "RSA"), ("ec-key-1", "EC")],
        json!([
            token("rsa", "rsa-key-1", "demo", "web"),
            token("ec", "ec-key-1", "prod", "api"),
            token_with(
                "single-aud",
                "ec-key-1",
                json!({"set": {"aud": "trellis-ca"}})
            ),
        ]),
    );
    let jwks = JwksServer::start(&[minted.jwk("rsa-key-1"), minted.jwk("ec-key-1")]).await;
    let ca = ca_with(jwks.config()).await;

    let rsa = minted.token("rsa");
    assert_eq!(
        certify(&ca, &rsa).await,
        Ok("spiffe://cluster.local/ns/demo/sa/web".to_owned())
    );
    // The token is not consumed: the same one works again (the kubelet rotates it, not us).
    assert_eq!(
        certify(&ca, &rsa).await,
        Ok("spiffe://cluster.local/ns/demo/sa/web".to_owned())
    );
    assert_eq!(
        certify(&ca, &minted.token("ec")).await,
        Ok("spiffe://cluster.local/ns/prod/sa/api".to_owned())
    );
    // aud as a plain string is the JWT spec's other form.
    assert!(certify(&ca, &minted.token("single-aud")).await.is_ok());

    // One fetch served all of it, authenticated with the CA's own token.
    assert_eq!(jwks.hits(), 1);
    assert_eq!(
        *jwks.authorizations.lock().expect("lock"),
        [format!("Bearer {BEARER}")]
    );
    assert_eq!(key_stats(&ca).await, (2, 0));
}

/// The endpoint named by an IPv6 literal (`https://[::1]:PORT/...`), as a cluster with an
/// IPv6 service network names its API server.
#[tokio::test]
async fn keys_from_an_ipv6_endpoint() {
    let minted = mint(
        &[("ec-key-6", "EC")],
        json!([token("t", "ec-key-6", "v6", "api")]),
    );
    let jwks = JwksServer::start_on("::1", &[minted.jwk("ec-key-6")]).await;
    assert!(jwks.url.starts_with("https://[::1]:"), "{}", jwks.url);
    let ca = ca_with(jwks.config()).await;
    assert_eq!(
        certify(&ca, &minted.token("t")).await,
        Ok("spiffe://cluster.local/ns/v6/sa/api".to_owned())
    );
    assert_eq!(jwks.hits(), 1);
    let port = jwks.url.rsplit_once("]:").expect("port").1;
    let port = port.split_once('/').expect("path").0;
    assert_eq!(
        *jwks.hosts.lock().expect("lock"),
        [format!("[::1]:{port}")],
        "Host names an IPv6 address in brackets (RFC 9110, section 7.2)"
    );
}

#[tokio::test]
async fn every_bad_token_is_refused_unauthenticated_with_the_reason() {
    let now = now();
    let t = token_with;
    let minted = mint(
        &[
            ("rsa-key-1", "RSA"),
            ("ec-key-1", "EC"),
            ("not-published", "EC"),
        ],
        json!([
            t("good", "rsa-key-1", json!({})),
            t("other audience", "rsa-key-1", json!({"audience": "vault"})),
            t("expired", "rsa-key-1", json!({"set": {"exp": now - 600}})),
            t(
                "not yet valid",
                "ec-key-1",
                json!({"set": {"nbf": now + 900}})
            ),
            t("alg none", "rsa-key-1", json!({"forge": "none"})),
            t(
                "HS256 with the public key",
                "rsa-key-1",
                json!({"forge": "hs256-public-key"})
            ),
            t("unknown key", "not-published", json!({})),
            t(
                "tampered signature",
                "rsa-key-1",
                json!({"forge": "tamper"})
            ),
            t(
                "tampered ES256 signature",
                "ec-key-1",
                json!({"forge": "tamper"})
            ),
            t(
                "key type does not match alg",
                "ec-key-1",
                json!({"forge": "alg-mismatch"})
            ),
            t("no kid", "rsa-key-1", json!({"headers": {"kid": null}})),
            t(
                "critical extension",
                "rsa-key-1",
                json!({"headers": {"crit": ["exp"]}})
            ),
            t(
                "other issuer",
                "rsa-key-1",
                json!({"set": {"iss": "https://evil.example"}})
            ),
            t("no exp", "rsa-key-1", json!({"remove": ["exp"]})),
            t(
                "exp not a number",
                "rsa-key-1",
                json!({"set": {"exp": "tomorrow"}})
            ),
            t(
                "no kubernetes.io claim",
                "rsa-key-1",
                json!({"remove": ["kubernetes.io"]})
            ),
            t(
                "no service account",
                "rsa-key-1",
                json!({"set": {"kubernetes.io.serviceaccount": {}}})
            ),
            t(
                "sub disagrees",
                "rsa-key-1",
                json!({"set": {"sub": "system:serviceaccount:kube-system:admin"}})
            ),
            token("disallowed namespace", "rsa-key-1", "kube-system", "web"),
            token("disallowed service account", "rsa-key-1", "prod", "batch"),
        ]),
    );
    // The same kid as a published key, another key: a forgery by someone who read the JWKS.
    let impostor = mint(
        &[("ec-key-1", "EC")],
        json!([t("impostor", "ec-key-1", json!({}))]),
    );
    let jwks = JwksServer::start(&[minted.jwk("rsa-key-1"), minted.jwk("ec-key-1")]).await;
    let mut config = jwks.config();
    config.allowed_namespaces = vec!["demo".into(), "prod".into()];
    config.allowed_service_accounts = vec!["demo/*".into(), "prod/api".into()];
    let ca = ca_with(config).await;
    let cases: &[(&str, &str)] = &[
        ("other audience", "does not include \"trellis-ca\""),
        ("expired", "expired 60"),
        ("not yet valid", "not valid for another"),
        ("alg none", "never unsigned ones"),
        ("HS256 with the public key", "HS256 is not accepted"),
        ("unknown key", "unknown key \"not-published\""),
        ("tampered signature", "bad signature"),
        ("tampered ES256 signature", "bad signature"),
        ("key type does not match alg", "but the token says RS256"),
        ("no kid", "no kid"),
        ("critical extension", "critical extensions"),
        ("other issuer", "issuer \"https://evil.example\""),
        ("no exp", "no exp"),
        ("exp not a number", "JWT claims refused"),
        ("no kubernetes.io claim", "no kubernetes.io claim"),
        ("no service account", "no kubernetes.io.serviceaccount.name"),
        ("sub disagrees", "sub does not match"),
        (
            "disallowed namespace",
            "namespace \"kube-system\" is not in kubernetes.allowed_namespaces",
        ),
        (
            "disallowed service account",
            "prod/batch is not in kubernetes.allowed_service_accounts",
        ),
    ];
    let mut tokens: Vec<(&str, String, &str)> = cases
        .iter()
        .map(|(what, expected)| (*what, minted.token(what), *expected))
        .collect();
    tokens.push((
        "forged with a known kid",
        impostor.token("impostor"),
        "bad signature",
    ));
    tokens.push(("not a JWT", "not-a-token".into(), "not a JWT"));
    tokens.push(("too long", "a".repeat(16 * 1024 + 1), "longer than"));
    for (what, token, expected) in tokens {
        let (code, message) = certify(&ca, &token)
            .await
            .expect_err(&format!("{what} must be refused"));
        assert_eq!(code, Code::Unauthenticated, "{what}: {message}");
        assert!(
            message.contains(expected),
            "{what}: expected {expected:?} in {message:?}"
        );
        assert!(!message.contains(&token), "{what}: the token is echoed");
    }
    // The good token still works after all that.
    assert!(certify(&ca, &minted.token("good")).await.is_ok());
}

#[tokio::test]
async fn an_unknown_kid_makes_the_background_task_reread_the_keys_rate_limited() {
    let minted = mint(
        &[("2024-key", "RSA"), ("2025-key", "EC"), ("unknown", "EC")],
        json!([
            token("old", "2024-key", "demo", "web"),
            token("new", "2025-key", "demo", "web"),
            token("stranger", "unknown", "demo", "web"),
        ]),
    );
    let (old, new) = (minted.jwk("2024-key"), minted.jwk("2025-key"));
    let jwks = JwksServer::start(std::slice::from_ref(&old)).await;
    let ca = ca_with(jwks.config()).await;
    assert!(certify(&ca, &minted.token("old")).await.is_ok());
    assert_eq!(jwks.hits(), 1);

    // The cluster rotates its signing key: the first token with the new kid makes the
    // background task look again, and the request, which waits for that read, is accepted.
    jwks.publish(&[old.clone(), new]);
    assert_eq!(
        certify(&ca, &minted.token("new")).await,
        Ok("spiffe://cluster.local/ns/demo/sa/web".to_owned())
    );
    assert_eq!(jwks.hits(), 2);
    assert_eq!(key_stats(&ca).await, (2, 0));

    // With a rate limit, a flood of unknown kids does not become a flood of fetches.
    let jwks = JwksServer::start(&[old]).await;
    let mut config = jwks.config();
    config.min_refresh = Duration::from_secs(3600);
    let ca = ca_with(config).await;
    for _ in 0..5 {
        let (code, _) = certify(&ca, &minted.token("stranger"))
            .await
            .expect_err("unknown key");
        assert_eq!(code, Code::Unauthenticated);
    }
    assert_eq!(jwks.hits(), 1, "one load, then rate limited");
}

/// The keys are re-read on the `refresh` interval with no request asking, and a request is
/// answered from the keys in memory: with the endpoint hanging, tokens of both the old and
/// the newly read key are accepted at once.
#[tokio::test]
async fn keys_are_refreshed_in_the_background_and_requests_never_fetch() {
    let minted = mint(
        &[("old", "RSA"), ("new", "EC")],
        json!([
            token("old", "old", "demo", "web"),
            token("new", "new", "demo", "db")
        ]),
    );
    let jwks = JwksServer::start(&[minted.jwk("old")]).await;
    let mut config = jwks.config();
    config.refresh = Duration::from_millis(200);
    let ca = ca_with(config).await;
    eventually(Duration::from_secs(10), "the first read", || {
        jwks.hits() >= 1
    })
    .await;
    jwks.publish(&[minted.jwk("old"), minted.jwk("new")]);
    let before = jwks.hits();
    eventually(Duration::from_secs(10), "a periodic re-read", || {
        jwks.hits() >= before + 2
    })
    .await;
    jwks.set_mode(Mode::Stall);
    for (name, id) in [("new", "db"), ("old", "web")] {
        let started = Instant::now();
        assert_eq!(
            certify(&ca, &minted.token(name)).await,
            Ok(format!("spiffe://cluster.local/ns/demo/sa/{id}"))
        );
        // Below the 10 s a hanging read takes: nothing on the request path touched the
        // endpoint.
        assert!(started.elapsed() < WAIT_BOUND, "{:?}", started.elapsed());
    }
}

/// A failing endpoint leaves the last good keys in force (logged and counted), and a
/// hanging one delays a request by at most `fetch_wait`.
#[tokio::test]
async fn a_failing_or_hanging_endpoint_keeps_the_last_good_keys() {
    let minted = mint(
        &[("k1", "EC"), ("k2", "EC")],
        json!([
            token("k1", "k1", "demo", "web"),
            token("k2", "k2", "demo", "web")
        ]),
    );
    let jwks = JwksServer::start(&[minted.jwk("k1")]).await;
    let ca = ca_with(jwks.config()).await;
    assert!(certify(&ca, &minted.token("k1")).await.is_ok());

    // 503: an unknown kid asks for a read, which fails; k1 still verifies.
    jwks.set_mode(Mode::Fail);
    let (code, message) = certify(&ca, &minted.token("k2"))
        .await
        .expect_err("unknown");
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert_eq!(jwks.hits(), 2);
    assert_eq!(
        key_stats(&ca).await,
        (1, 1),
        "one key in force, one failed read"
    );
    assert!(certify(&ca, &minted.token("k1")).await.is_ok());

    // Hanging: the request that asked for the read is answered after `fetch_wait`, not after
    // the read's own 10 s timeout.
    jwks.set_mode(Mode::Stall);
    let started = Instant::now();
    let (code, message) = certify(&ca, &minted.token("k2"))
        .await
        .expect_err("unknown");
    let waited = started.elapsed();
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("unknown key \"k2\""), "{message}");
    assert!(
        waited >= FETCH_WAIT && waited < WAIT_BOUND,
        "waited {waited:?}"
    );
    assert!(certify(&ca, &minted.token("k1")).await.is_ok());
}

/// A CA whose endpoint hangs from the start answers UNAVAILABLE after `fetch_wait`.
#[tokio::test]
async fn the_first_read_is_waited_for_at_most_fetch_wait() {
    let minted = mint(&[("k", "EC")], json!([token("t", "k", "demo", "web")]));
    let jwks = JwksServer::start(&[minted.jwk("k")]).await;
    jwks.set_mode(Mode::Stall);
    let ca = ca_with(jwks.config()).await;
    let started = Instant::now();
    let (code, message) = certify(&ca, &minted.token("t")).await.expect_err("no keys");
    assert_eq!(code, Code::Unavailable, "{message}");
    assert!(message.contains("has not finished"), "{message}");
    assert!(started.elapsed() < WAIT_BOUND, "{:?}", started.elapsed());
}

/// A CA that started while the endpoint failed does not wait out its retry backoff once the
/// endpoint is back: a request with no keys to check asks for a read and waits for it.
#[tokio::test]
async fn a_request_without_keys_asks_for_a_read_at_once() {
    let minted = mint(&[("k", "EC")], json!([token("t", "k", "demo", "web")]));
    let jwks = JwksServer::start(&[minted.jwk("k")]).await;
    jwks.set_mode(Mode::Fail);
    let ca = ca_with(jwks.config()).await;
    let (code, message) = certify(&ca, &minted.token("t")).await.expect_err("no keys");
    assert_eq!(code, Code::Unavailable, "{message}");
    assert!(message.contains("HTTP 503"), "{message}");
    assert_eq!(
        jwks.hits(),
        2,
        "the first read, and the one the request asked for"
    );
    // The background retry is a second or more away (backoff after two failures).
    jwks.set_mode(Mode::Serve);
    assert_eq!(
        certify(&ca, &minted.token("t")).await,
        Ok("spiffe://cluster.local/ns/demo/sa/web".to_owned())
    );
    let (keys, failures) = key_stats(&ca).await;
    assert!(
        keys == 1 && failures >= 2,
        "{keys} keys, {failures} failed reads"
    );
}

#[tokio::test]
async fn keys_from_a_file_and_an_unreachable_endpoint() {
    let minted = mint(
        &[("file-key", "EC")],
        json!([token("t", "file-key", "demo", "db")]),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, json!({"keys": [minted.jwk("file-key")]}).to_string()).expect("write");
    let jwks = JwksServer::start(&[]).await;
    let mut config = jwks.config();
    config.keys = KeySource::File(file);
    let ca = ca_with(config.clone()).await;
    assert_eq!(
        certify(&ca, &minted.token("t")).await,
        Ok("spiffe://cluster.local/ns/demo/sa/db".to_owned())
    );

    // Nothing listens here: the CA cannot know whether the token is good, so it says
    // UNAVAILABLE (try again), not UNAUTHENTICATED.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    config.keys = KeySource::Url {
        url: HttpsUrl::parse(&format!("https://127.0.0.1:{port}/openid/v1/jwks")).expect("url"),
        ca_file: jwks.ca_file.clone(),
        bearer_token_file: None,
    };
    let ca = ca_with(config).await;
    let (code, message) = certify(&ca, &minted.token("t")).await.expect_err("no keys");
    assert_eq!(code, Code::Unavailable, "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
}

#[tokio::test]
async fn a_ca_without_kubernetes_configuration_refuses_service_account_tokens() {
    let ca = TestCa::start().await;
    let (code, message) = certify(&ca, "a.b.c").await.expect_err("not configured");
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        message.contains("no [kubernetes] configuration"),
        "{message}"
    );
}
