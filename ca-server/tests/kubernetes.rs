//! Kubernetes service-account attestation against a real CA: a local HTTPS endpoint serves
//! the JWK Set, tokens are minted here with the claim layout of Kubernetes projected tokens
//! (RS256 with an RSA key and ES256 with a P-256 key, both from aws-lc-rs), and sent to the
//! CA's Certify over gRPC/TLS with a real CSR.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
};
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

use common::TestCa;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const BEARER: &str = "the-ca-own-service-account-token";

// ---------------------------------------------------------------------------------------
// Token minting

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A signing key as the API server holds it.
enum Signer {
    Rsa(aws_lc_rs::rsa::KeyPair, String),
    Ec(EcdsaKeyPair, String),
}

impl Signer {
    fn rsa(kid: &str) -> Self {
        Self::Rsa(
            aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).expect("RSA key"),
            kid.into(),
        )
    }

    fn ec(kid: &str) -> Self {
        Self::Ec(
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key"),
            kid.into(),
        )
    }

    fn kid(&self) -> &str {
        match self {
            Self::Rsa(_, kid) | Self::Ec(_, kid) => kid,
        }
    }

    /// The public half as a JWK, as /openid/v1/jwks publishes it.
    fn jwk(&self) -> Value {
        match self {
            Self::Rsa(key, kid) => {
                let public = key.public_key();
                json!({
                    "use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256",
                    "n": b64url(public.modulus().big_endian_without_leading_zero()),
                    "e": b64url(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Self::Ec(key, kid) => {
                let point = key.public_key().as_ref();
                json!({
                    "use": "sig", "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                    "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
                })
            }
        }
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Rsa(..) => "RS256",
            Self::Ec(..) => "ES256",
        }
    }

    fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            Self::Rsa(key, _) => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                    .expect("RSA signature");
                sig
            }
            Self::Ec(key, _) => key
                .sign(&rng, input.as_bytes())
                .expect("ECDSA signature")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64url(&signature))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "kid": self.kid(), "typ": "JWT"}),
            claims,
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The claims of a projected token the kubelet requested for a pod, valid from now.
fn claims(namespace: &str, service_account: &str) -> Value {
    let now = now();
    json!({
        "aud": ["trellis-ca"],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "jti": "4bb3fa5c-2cfa-4d05-9f2b-9c8c7d3c1a11",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "5d1c2a0e-7f4b-4d55-8d9f-0c1f5b1e2a33"},
            "pod": {"name": format!("{service_account}-7d9c5b7f8-x2x9q"), "uid": "a1b2c3d4-0000-4000-8000-000000000001"},
            "serviceaccount": {"name": service_account, "uid": "e5f6a7b8-0000-4000-8000-000000000002"},
            "warnafter": now + 3000,
        },
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
    })
}

// ---------------------------------------------------------------------------------------
// The JWKS endpoint: real HTTPS on 127.0.0.1 (or ::1) with a certificate made here.

struct JwksServer {
    url: String,
    ca_file: PathBuf,
    token_file: PathBuf,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    authorizations: Arc<Mutex<Vec<String>>>,
    /// The `Host` header of every request.
    hosts: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl JwksServer {
    async fn start(keys: &[&Signer]) -> Self {
        Self::start_on("127.0.0.1", keys).await
    }

    /// Serves on `ip` (an IPv4 or IPv6 address), with a certificate for that address.
    async fn start_on(ip: &str, keys: &[&Signer]) -> Self {
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
        let body = Arc::new(Mutex::new(String::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let (b, h, a, hs) = (
            body.clone(),
            hits.clone(),
            authorizations.clone(),
            hosts.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, body, hits, auth, host) = (
                    acceptor.clone(),
                    b.clone(),
                    h.clone(),
                    a.clone(),
                    hs.clone(),
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
                        if let Some(v) = line
                            .strip_prefix("authorization: ")
                            .or_else(|| line.strip_prefix("Authorization: "))
                        {
                            auth.lock().expect("lock").push(v.to_owned());
                        }
                        if let Some(v) = line
                            .strip_prefix("host: ")
                            .or_else(|| line.strip_prefix("Host: "))
                        {
                            host.lock().expect("lock").push(v.to_owned());
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let payload = body.lock().expect("lock").clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/jwk-set+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                        payload.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let server = Self {
            url,
            ca_file,
            token_file,
            body,
            hits,
            authorizations,
            hosts,
            _dir: dir,
        };
        server.publish(keys);
        server
    }

    fn publish(&self, keys: &[&Signer]) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        *self.body.lock().expect("lock") = set.to_string();
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
            clock_skew: Duration::from_secs(60),
            allowed_namespaces: Vec::new(),
            allowed_service_accounts: Vec::new(),
        }
    }
}

async fn ca_with(config: KubernetesConfig) -> TestCa {
    TestCa::start_configured(Arc::new(SystemClock), |c| c.kubernetes = Some(config)).await
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

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn rs256_and_es256_tokens_get_their_service_account_identity() {
    let rsa = Signer::rsa("rsa-key-1");
    let ec = Signer::ec("ec-key-1");
    let jwks = JwksServer::start(&[&rsa, &ec]).await;
    let ca = ca_with(jwks.config()).await;

    let token = rsa.sign(&claims("demo", "web"));
    assert_eq!(
        certify(&ca, &token).await,
        Ok("spiffe://cluster.local/ns/demo/sa/web".to_owned())
    );
    // The token is not consumed: the same one works again (the kubelet rotates it, not us).
    assert_eq!(
        certify(&ca, &token).await,
        Ok("spiffe://cluster.local/ns/demo/sa/web".to_owned())
    );
    assert_eq!(
        certify(&ca, &ec.sign(&claims("prod", "api"))).await,
        Ok("spiffe://cluster.local/ns/prod/sa/api".to_owned())
    );
    // aud as a plain string is the JWT spec's other form.
    let mut single = claims("prod", "api");
    single["aud"] = json!("trellis-ca");
    assert!(certify(&ca, &ec.sign(&single)).await.is_ok());

    // One fetch served all of it, authenticated with the CA's own token.
    assert_eq!(jwks.hits(), 1);
    assert_eq!(
        *jwks.authorizations.lock().expect("lock"),
        [format!("Bearer {BEARER}")]
    );
}

/// The endpoint named by an IPv6 literal (`https://[::1]:PORT/...`), as a cluster with an
/// IPv6 service network names its API server.
#[tokio::test]
async fn keys_from_an_ipv6_endpoint() {
    let ec = Signer::ec("ec-key-6");
    let jwks = JwksServer::start_on("::1", &[&ec]).await;
    assert!(jwks.url.starts_with("https://[::1]:"), "{}", jwks.url);
    let ca = ca_with(jwks.config()).await;
    assert_eq!(
        certify(&ca, &ec.sign(&claims("v6", "api"))).await,
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
    let rsa = Signer::rsa("rsa-key-1");
    let ec = Signer::ec("ec-key-1");
    let stranger = Signer::ec("not-published");
    let impostor = Signer::ec("ec-key-1"); // same kid, different key
    let jwks = JwksServer::start(&[&rsa, &ec]).await;
    let mut config = jwks.config();
    config.allowed_namespaces = vec!["demo".into(), "prod".into()];
    config.allowed_service_accounts = vec!["demo/*".into(), "prod/api".into()];
    let ca = ca_with(config).await;
    let good = claims("demo", "web");
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        edit(&mut c);
        c
    };
    // One base64url character in the middle of the signature changed.
    let mut tampered = rsa.sign(&good).into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ASCII");
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","kid":"rsa-key-1"}"#),
        b64url(good.to_string().as_bytes())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "other audience",
            rsa.sign(&with(&|c| c["aud"] = json!(["vault"]))),
            "does not include \"trellis-ca\"",
        ),
        (
            "expired",
            rsa.sign(&with(&|c| c["exp"] = json!(now() - 600))),
            "expired 60",
        ),
        (
            "not yet valid",
            ec.sign(&with(&|c| c["nbf"] = json!(now() + 900))),
            "not valid for another",
        ),
        ("alg none", unsigned, "alg \"none\""),
        (
            "HMAC",
            rsa.sign_with_header(&json!({"alg": "HS256", "kid": "rsa-key-1"}), &good),
            "\"HS256\" is not accepted",
        ),
        (
            "unknown key",
            stranger.sign(&good),
            "unknown key \"not-published\"",
        ),
        ("bad signature", tampered, "bad signature"),
        (
            "forged with a known kid",
            impostor.sign(&good),
            "bad signature",
        ),
        (
            "key type does not match alg",
            ec.sign_with_header(&json!({"alg": "RS256", "kid": "ec-key-1"}), &good),
            "but the token says",
        ),
        (
            "other issuer",
            rsa.sign(&with(&|c| c["iss"] = json!("https://evil.example"))),
            "issuer \"https://evil.example\"",
        ),
        (
            "no exp",
            rsa.sign(&with(&|c| {
                c.as_object_mut().map(|m| m.remove("exp"));
            })),
            "no exp",
        ),
        (
            "no kubernetes.io claim",
            rsa.sign(&with(&|c| {
                c.as_object_mut().map(|m| m.remove("kubernetes.io"));
            })),
            "no kubernetes.io claim",
        ),
        (
            "no service account",
            rsa.sign(&with(&|c| c["kubernetes.io"]["serviceaccount"] = json!({}))),
            "no kubernetes.io.serviceaccount.name",
        ),
        (
            "sub disagrees",
            rsa.sign(&with(&|c| {
                c["sub"] = json!("system:serviceaccount:kube-system:admin")
            })),
            "sub does not match",
        ),
        (
            "disallowed namespace",
            rsa.sign(&claims("kube-system", "web")),
            "namespace \"kube-system\" is not in kubernetes.allowed_namespaces",
        ),
        (
            "disallowed service account",
            rsa.sign(&claims("prod", "batch")),
            "prod/batch is not in kubernetes.allowed_service_accounts",
        ),
        ("not a JWT", "not-a-token".into(), "not a JWT"),
    ];
    for (what, token, expected) in cases {
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
    assert!(certify(&ca, &rsa.sign(&good)).await.is_ok());
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_at_most_as_often_as_allowed() {
    let old = Signer::rsa("2024-key");
    let new = Signer::ec("2025-key");
    let jwks = JwksServer::start(&[&old]).await;
    let ca = ca_with(jwks.config()).await;
    assert!(
        certify(&ca, &old.sign(&claims("demo", "web")))
            .await
            .is_ok()
    );
    assert_eq!(jwks.hits(), 1);

    // The cluster rotates its signing key: the first token with the new kid makes the CA
    // look again, and it is accepted.
    jwks.publish(&[&old, &new]);
    assert_eq!(
        certify(&ca, &new.sign(&claims("demo", "web"))).await,
        Ok("spiffe://cluster.local/ns/demo/sa/web".to_owned())
    );
    assert_eq!(jwks.hits(), 2);

    // With a rate limit, a flood of unknown kids does not become a flood of fetches.
    let jwks = JwksServer::start(&[&old]).await;
    let mut config = jwks.config();
    config.min_refresh = Duration::from_secs(3600);
    let ca = ca_with(config).await;
    let stranger = Signer::ec("unknown");
    for _ in 0..5 {
        let (code, _) = certify(&ca, &stranger.sign(&claims("demo", "web")))
            .await
            .expect_err("unknown key");
        assert_eq!(code, Code::Unauthenticated);
    }
    assert_eq!(jwks.hits(), 1, "one load, then rate limited");
}

#[tokio::test]
async fn keys_from_a_file_and_an_unreachable_endpoint() {
    let ec = Signer::ec("file-key");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, json!({"keys": [ec.jwk()]}).to_string()).expect("write");
    let jwks = JwksServer::start(&[]).await;
    let mut config = jwks.config();
    config.keys = KeySource::File(file);
    let ca = ca_with(config.clone()).await;
    assert_eq!(
        certify(&ca, &ec.sign(&claims("demo", "db"))).await,
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
    let (code, message) = certify(&ca, &ec.sign(&claims("demo", "db")))
        .await
        .expect_err("no keys");
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
