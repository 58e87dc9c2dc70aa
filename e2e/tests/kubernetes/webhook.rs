//! The real `trellis-injector` binary over real HTTPS (a certificate made with openssl, as
//! docs/kubernetes.md does by hand), sent AdmissionReview v1 requests with curl the way the
//! API server sends them; the JSON Patch it returns is applied here, independently, and the
//! result checked. Its serving certificate is then replaced on disk, as cert-manager renews
//! a Secret, and must be served without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use trellis_e2e::{Process, command, retry_until, run};

use crate::tools::{TOOL_TIMEOUT, assert_valid, container};

struct Webhook {
    process: Process,
    base: String,
    cert: PathBuf,
    dir: tempfile::TempDir,
}

impl Webhook {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        make_certificate(&cert, &key);
        let ready_file = dir.path().join("ready.json");
        let mut cmd = command("trellis-injector");
        cmd.args(["--listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--ready-file")
            .arg(&ready_file);
        let mut process = Process::spawn("injector", cmd, dir.path());
        let ready = process.wait_for_ready(&ready_file, Duration::from_secs(30));
        assert_eq!(ready.program, "trellis-injector");
        assert_eq!(ready.pid, process.id());
        let addr = ready
            .addr("https")
            .expect("the ready file names the https listener");
        // The certificate names 127.0.0.1, so curl verifies it by that address.
        let base = format!("https://{addr}");
        Self {
            process,
            base,
            cert,
            dir,
        }
    }

    /// Sends `body` to `path`; returns the HTTP status and the body.
    fn post(&self, path: &str, body: &[u8]) -> (u16, String) {
        let file = self.dir.path().join("request.json");
        std::fs::write(&file, body).expect("write request");
        let mut curl = self.curl(path);
        curl.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", file.display()));
        self.send(curl)
    }

    fn curl(&self, path: &str) -> Command {
        self.curl_trusting(path, &self.cert)
    }

    /// curl on `path`, verifying the server with `ca` only.
    fn curl_trusting(&self, path: &str, ca: &Path) -> Command {
        let mut curl = Command::new("curl");
        curl.args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .arg(format!("{}{path}", self.base));
        curl
    }

    fn send(&self, curl: Command) -> (u16, String) {
        let outcome = run(curl, TOOL_TIMEOUT).success();
        let (body, status) = outcome
            .stdout
            .rsplit_once('\n')
            .expect("curl printed the status last");
        (status.parse().expect("HTTP status"), body.to_owned())
    }

    /// Sends a pod creation and returns the AdmissionReview response.
    fn review(&self, path: &str, pod: &Value) -> Value {
        let (status, body) = self.post(path, &review_request(pod));
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON answer");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], UID);
        answer["response"].clone()
    }
}

/// A self-signed serving certificate for 127.0.0.1, as the README makes one with openssl.
fn make_certificate(cert: &Path, key: &Path) {
    let mut openssl = Command::new("openssl");
    openssl
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=trellis-injector"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert);
    run(openssl, TOOL_TIMEOUT).success();
}

const UID: &str = "d1c6ef71-2b3f-4e42-9e38-4f5e0b2f0c11";

fn review_request(pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    }))
    .expect("JSON")
}

/// A pod as the ReplicaSet controller creates it.
fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9c5b7f8-",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d9c5b7f8"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "web",
                "image": "nginx:1.27",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "volumeMounts": [{"name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            }],
            "volumes": [{"name": "kube-api-access-x1", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
        }
    })
}

/// Standard base64 decoding, written here so the test does not trust the server's encoder.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u32, 0);
    for c in text.trim_end_matches('=').chars() {
        let value = ALPHABET.find(c).expect("a base64 character");
        bits = (bits << 6) | u32::try_from(value).expect("6 bits");
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).expect("a byte"));
        }
    }
    out
}

/// RFC 6902 `add`, written here independently of the server's.
fn apply(doc: &mut Value, patch: &[Value]) {
    for op in patch {
        assert_eq!(op["op"], "add", "injection only adds: {op}");
        let path = op["path"].as_str().expect("path");
        let tokens: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = tokens.split_last().expect("non-empty path");
        let mut target = &mut *doc;
        for t in parents {
            target = match target {
                Value::Array(items) => &mut items[t.parse::<usize>().expect("index")],
                other => other.get_mut(t.as_str()).expect("parent exists"),
            };
        }
        match target {
            Value::Array(items) if last == "-" => items.push(op["value"].clone()),
            Value::Array(items) => {
                items.insert(last.parse().expect("index"), op["value"].clone());
            }
            Value::Object(map) => {
                map.insert(last.clone(), op["value"].clone());
            }
            other => panic!("cannot add into {other}"),
        }
    }
}

fn patched(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch: Vec<Value> =
        serde_json::from_slice(&base64_decode(response["patch"].as_str().expect("patch")))
            .expect("the patch is a JSON array");
    let mut result = pod.clone();
    apply(&mut result, &patch);
    result
}

#[test]
fn the_webhook_injects_pods_in_labelled_namespaces_over_https() {
    let mut webhook = Webhook::start();
    let original = pod(json!({"trellis.dev/inbound-port": "8080"}));
    let response = webhook.review("/inject/namespace", &original);
    let result = patched(&original, &response);

    assert_eq!(
        result["spec"]["containers"][0],
        original["spec"]["containers"][0]
    );
    assert_eq!(result["spec"]["volumes"][0], original["spec"]["volumes"][0]);
    let sidecar = container(&result, "trellis-sidecar").expect("sidecar");
    assert_eq!(sidecar["ports"][1]["containerPort"], 15006);
    let token = &result["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(
        *token,
        json!({"audience": "trellis-ca", "expirationSeconds": 3600, "path": "token"})
    );
    assert_eq!(
        result["metadata"]["annotations"]["trellis.dev/injected"],
        "0.1.0"
    );
    assert_eq!(result["metadata"]["labels"], original["metadata"]["labels"]);
    let mut with_name = result.clone();
    with_name["metadata"]["name"] = json!("web-7d9c5b7f8-abcde");
    assert_valid(
        "pod patched by the webhook",
        &serde_yaml::to_string(&with_name).expect("yaml"),
    );

    // The API server may call again after other webhooks (reinvocationPolicy: IfNeeded):
    // the injected pod must come back unchanged.
    let again = webhook.review("/inject/namespace", &result);
    assert_eq!(again, json!({"uid": UID, "allowed": true}));

    let status = webhook.process.terminate(Duration::from_secs(20));
    assert!(
        status.success(),
        "SIGTERM ends the webhook cleanly: {status:?}"
    );
}

#[test]
fn the_webhook_honours_annotations_and_refuses_what_it_cannot_inject() {
    let webhook = Webhook::start();

    // Outside labelled namespaces only pods that ask are injected.
    let plain = pod(json!({}));
    assert_eq!(
        webhook.review("/inject/pod", &plain),
        json!({"uid": UID, "allowed": true})
    );
    let asking = pod(json!({"trellis.dev/inject": "enabled"}));
    let result = patched(&asking, &webhook.review("/inject/pod", &asking));
    assert!(container(&result, "trellis-sidecar").is_some());

    // Inside them, an opt-out is honoured.
    let opted_out = pod(json!({"trellis.dev/inject": "disabled"}));
    assert_eq!(
        webhook.review("/inject/namespace", &opted_out),
        json!({"uid": UID, "allowed": true})
    );

    // A pod whose annotations cannot be honoured is refused, with the reason.
    let bad = pod(json!({"trellis.dev/outbound": "127.0.0.1:7001"}));
    let response = webhook.review("/inject/namespace", &bad);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(
        message.contains("trellis.dev/outbound") && message.contains("LISTEN=UPSTREAM=SPIFFE_ID"),
        "{message}"
    );

    // Not an AdmissionReview: HTTP 400 with the reason.
    let (status, body) = webhook.post("/inject/namespace", b"{\"kind\":\"Pod\"}");
    assert_eq!(status, 400);
    assert!(body.contains("not an AdmissionReview"), "{body}");
    let (status, _) = webhook.post("/elsewhere", b"{}");
    assert_eq!(status, 404);
    let (status, body) = webhook.send(webhook.curl("/live"));
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = webhook.send(webhook.curl("/ready"));
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    // Every answer above is counted by outcome.
    let (status, metrics) = webhook.send(webhook.curl("/metrics"));
    assert_eq!(status, 200);
    for (outcome, count) in [
        ("patched", 1),
        ("skipped", 2),
        ("refused", 1),
        ("ignored", 0),
        ("bad_request", 1),
    ] {
        let line = format!("trellis_injector_requests_total{{outcome=\"{outcome}\"}} {count}\n");
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
    assert!(
        metrics.contains("trellis_injector_request_duration_seconds_count 5\n"),
        "{metrics}"
    );

    // Plaintext is not served.
    let mut plaintext = Command::new("curl");
    plaintext
        .args(["-sS", "--max-time", "10"])
        .arg(webhook.base.replace("https://", "http://") + "/live");
    let outcome = run(plaintext, TOOL_TIMEOUT);
    assert!(
        outcome.code != Some(0) || !outcome.stdout.contains("ok"),
        "{outcome:?}"
    );
}

#[test]
fn a_rotated_serving_certificate_is_used_without_a_restart() {
    let mut webhook = Webhook::start();
    let (status, _) = webhook.send(webhook.curl("/live"));
    assert_eq!(status, 200);

    // A new certificate and key replace the old ones in place, as a Secret update does.
    let fresh = webhook.dir.path().join("fresh");
    std::fs::create_dir(&fresh).expect("dir");
    let (cert, key) = (fresh.join("tls.crt"), fresh.join("tls.key"));
    make_certificate(&cert, &key);
    std::fs::copy(&webhook.cert, webhook.dir.path().join("old-ca.crt")).expect("copy");
    std::fs::rename(&key, webhook.dir.path().join("tls.key")).expect("replace key");
    std::fs::rename(&cert, &webhook.cert).expect("replace certificate");
    let new_ca = fresh.join("ca.crt");
    std::fs::copy(&webhook.cert, &new_ca).expect("copy");

    retry_until(
        Duration::from_secs(30),
        "the new certificate is served",
        || {
            let mut curl = Command::new("curl");
            curl.args(["-sS", "--max-time", "5", "--cacert"])
                .arg(&new_ca)
                .arg(format!("{}/live", webhook.base));
            let outcome = run(curl, TOOL_TIMEOUT);
            if outcome.code == Some(0) && outcome.stdout == "ok\n" {
                Ok(())
            } else {
                Err(outcome.stderr)
            }
        },
    );
    // And the old one is not: a client that trusts only it now fails.
    let mut old = Command::new("curl");
    old.args(["-sS", "--max-time", "5", "--cacert"])
        .arg(webhook.dir.path().join("old-ca.crt"))
        .arg(format!("{}/live", webhook.base));
    assert_ne!(run(old, TOOL_TIMEOUT).code, Some(0));

    // The same process served both certificates, and counted the reload.
    assert!(webhook.process.is_running(), "the injector restarted");
    let (status, metrics) = webhook.send(webhook.curl_trusting("/metrics", &new_ca));
    assert_eq!(status, 200);
    assert!(
        metrics.contains("trellis_injector_certificate_reloads_total 1\n"),
        "{metrics}"
    );
}
