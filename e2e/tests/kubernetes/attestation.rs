//! A pod's life without a cluster: the real `trellis-ca` configured with a `[kubernetes]`
//! table (signing keys from a JWK Set file), a projected-token file minted by PyJWT with the
//! claims the kubelet's tokens carry, and the real `trellis-sidecar` started with exactly the
//! token setting injection gives it. It must come up with the pod's service-account identity,
//! and a token the CA refuses must keep it unready (fail closed).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use trellis_e2e::http::http_get;
use trellis_e2e::python::mint_sa_tokens;
use trellis_e2e::{Ca, Process, command, retry_until};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const START: Duration = Duration::from_secs(60);

/// The cluster's signing key (P-256, kid `cluster-key`) and a projected token for a pod of
/// `shop/web` requested for `audience`, as PyJWT mints them: (JWK Set JSON, token).
fn cluster(audience: &str) -> (String, String) {
    let minted = mint_sa_tokens(&json!({
        "keys": [{"kid": "cluster-key", "kty": "EC"}],
        "tokens": [{"name": "pod", "key": "cluster-key", "namespace": "shop",
                    "service_account": "web", "audience": audience}],
    }));
    (
        minted["jwks"].to_string(),
        minted["tokens"]["pod"].as_str().expect("token").to_owned(),
    )
}

fn start_ca(scratch: &Path, jwks_json: &str) -> Ca {
    let jwks = scratch.join("jwks.json");
    std::fs::write(&jwks, jwks_json).expect("write JWKS");
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
    let (jwks, pod_token) = cluster("trellis-ca");
    let scratch = tempfile::tempdir().expect("scratch");
    let ca = start_ca(scratch.path(), &jwks);
    let token = scratch.path().join("token");
    std::fs::write(&token, pod_token).expect("write token");

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
    let (jwks, pod_token) = cluster("vault");
    let scratch = tempfile::tempdir().expect("scratch");
    let ca = start_ca(scratch.path(), &jwks);
    let token = scratch.path().join("token");
    std::fs::write(&token, pod_token).expect("write token");

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
