//! A pod's life without a cluster: the real `trellis-ca` configured with a `[kubernetes]`
//! table (signing keys from a JWK Set file), a projected-token file minted here with the
//! claims the kubelet's tokens carry, and the real `trellis-sidecar` started with exactly the
//! token setting injection gives it. It must come up with the pod's service-account identity,
//! and a token the CA refuses must keep it unready (fail closed).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use trellis_e2e::http::http_get;
use trellis_e2e::{Ca, Process, command, retry_until};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const START: Duration = Duration::from_secs(60);

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

struct ClusterKey(EcdsaKeyPair);

impl ClusterKey {
    fn new() -> Self {
        Self(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key"))
    }

    fn jwks(&self) -> String {
        let point = self.0.public_key().as_ref();
        json!({"keys": [{"use": "sig", "kty": "EC", "crv": "P-256", "kid": "cluster-key",
            "alg": "ES256", "x": b64url(&point[1..33]), "y": b64url(&point[33..65])}]})
        .to_string()
    }

    /// A projected token as the kubelet writes it for a pod of `namespace/account`.
    fn token(&self, namespace: &str, account: &str, audience: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let claims = json!({
            "aud": [audience], "exp": now + 3600, "iat": now, "nbf": now, "iss": ISSUER,
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": format!("{account}-5f7b9-abcde"), "uid": "0b3c5e2a-1111-4222-8333-444455556666"},
                "serviceaccount": {"name": account, "uid": "7d8e9f00-1111-4222-8333-444455556666"},
            },
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
        });
        let header = json!({"alg": "ES256", "kid": "cluster-key", "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self
            .0
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("signature");
        format!("{input}.{}", b64url(signature.as_ref()))
    }
}

fn start_ca(scratch: &Path, key: &ClusterKey) -> Ca {
    let jwks = scratch.join("jwks.json");
    std::fs::write(&jwks, key.jwks()).expect("write JWKS");
    let config = scratch.join("ca.toml");
    std::fs::write(
        &config,
        format!(
            "[kubernetes]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\n",
            jwks.display()
        ),
    )
    .expect("write CA config");
    Ca::start_with(&[std::ffi::OsStr::new("--config"), config.as_os_str()])
}

/// Starts a sidecar the way injection configures it: the token file through
/// `TRELLIS_SERVICE_ACCOUNT_TOKEN_FILE`, the bundle file, the CA address.
fn start_sidecar(ca: &Ca, token: &Path, name: &str) -> (Process, SocketAddr) {
    let mut cmd = command("trellis-sidecar");
    cmd.env("TRELLIS_CA_ADDR", ca.addr.to_string())
        .env("TRELLIS_TRUST_BUNDLE", ca.bundle_pem())
        .env("TRELLIS_SERVICE_ACCOUNT_TOKEN_FILE", token)
        .env("TRELLIS_ADMIN_LISTEN", "127.0.0.1:0");
    let ready_file = trellis_e2e::ready_path(ca.scratch(), name);
    cmd.env("TRELLIS_READY_FILE", &ready_file);
    let mut process = Process::spawn(name, cmd, ca.scratch());
    let admin = process
        .wait_for_ready(&ready_file, START)
        .addr("admin")
        .expect("admin address in the ready file");
    (process, admin)
}

#[test]
fn a_sidecar_bootstraps_from_its_projected_service_account_token() {
    let key = ClusterKey::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let ca = start_ca(scratch.path(), &key);
    let token = scratch.path().join("token");
    std::fs::write(&token, key.token("shop", "web", "trellis-ca")).expect("write token");

    let (_sidecar, admin) = start_sidecar(&ca, &token, "sidecar");
    let identity: Value = retry_until(START, "the sidecar has its identity", || {
        match http_get(admin, "/identity") {
            Ok((200, body)) => serde_json::from_str(&body).map_err(|e| e.to_string()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(
        identity["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/web",
        "{identity}"
    );
}

#[test]
fn a_sidecar_with_a_token_for_another_audience_stays_unready() {
    let key = ClusterKey::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let ca = start_ca(scratch.path(), &key);
    let token = scratch.path().join("token");
    std::fs::write(&token, key.token("shop", "web", "vault")).expect("write token");

    let (mut sidecar, admin) = start_sidecar(&ca, &token, "sidecar");
    // The refusal is logged with the CA's reason, and the sidecar does not claim readiness.
    sidecar.wait_for_line(START, |l| {
        l.contains("audience") && l.contains("does not include") && l.contains("trellis-ca")
    });
    let (status, _) = http_get(admin, "/ready").expect("admin answers");
    assert_ne!(
        status, 200,
        "a sidecar without a certificate must not be ready"
    );
}
