//! `trellis inject -f`: real-world manifest shapes in, injected manifests out, checked
//! object by object and by the schema validator.

use std::io::Write;
use std::process::Stdio;

use serde_json::{Value, json};
use trellis_e2e::{Outcome, command, run};

use crate::tools::{TOOL_TIMEOUT, assert_valid, container, documents, env, fixture};

fn inject(args: &[&str]) -> Outcome {
    let mut cmd = command("trellis");
    cmd.arg("inject").args(args);
    run(cmd, TOOL_TIMEOUT)
}

/// Removes what injection adds to a pod template, so the rest can be compared with the input.
fn strip_injection(pod: &mut Value) {
    let annotations = pod["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations");
    annotations.remove("trellis.dev/injected");
    let init = pod["spec"]["initContainers"]
        .as_array_mut()
        .expect("init containers");
    init.retain(|c| c["name"] != "trellis-sidecar" && c["name"] != "trellis-init");
    // Probes that capture points at the sidecar are compared separately.
    for c in pod["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
    {
        let c = c.as_object_mut().expect("container");
        c.retain(|_, v| {
            !v["httpGet"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/app-health/"))
        });
    }
    let volumes = pod["spec"]["volumes"].as_array_mut().expect("volumes");
    volumes.retain(|v| {
        ![
            "trellis-token",
            "trellis-trust-bundle",
            "trellis-sidecar-config",
        ]
        .contains(&v["name"].as_str().unwrap_or_default())
    });
}

#[test]
fn a_multi_container_deployment_gets_the_sidecar_and_keeps_everything_else() {
    let path = fixture("deployment-multi-container.yaml");
    let input = documents(&std::fs::read_to_string(&path).expect("fixture"));
    let outcome = inject(&["-f", path.to_str().expect("utf-8 path")]).success();
    assert_eq!(outcome.stderr.trim(), "deployment/shop injected");
    let output = documents(&outcome.stdout);
    assert_eq!(output.len(), 1);

    let mut stripped = output[0].clone();
    strip_injection(&mut stripped["spec"]["template"]);
    let mut expected = input[0].clone();
    let web_probe = expected["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .expect("web")
        .remove("readinessProbe")
        .expect("the fixture's web container has a readiness probe");
    assert_eq!(
        stripped, expected,
        "injection changed something besides what it adds"
    );

    let pod = &output[0]["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["trellis.dev/injected"],
        "0.1.0"
    );
    let sidecar = container(pod, "trellis-sidecar").expect("sidecar");
    let init_names: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        init_names,
        ["trellis-init", "trellis-sidecar", "migrate"],
        "capture first, then the native sidecar, then the user's init containers"
    );
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(pod["spec"]["containers"].as_array().map(Vec::len), Some(2));
    // The readiness probe on the named port "http" now asks the sidecar, which runs the
    // original against the app over loopback.
    let web = container(pod, "web").expect("web");
    assert_eq!(
        web["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020}})
    );
    assert_eq!(web_probe["httpGet"]["path"], "/healthz");
    let env = env(sidecar);
    for expected in [
        ("TRELLIS_CA_ADDR", "trellis-ca.trellis-system.svc:8443"),
        ("TRELLIS_TRUST_BUNDLE", "/var/run/trellis/bundle/bundle.pem"),
        (
            "TRELLIS_SERVICE_ACCOUNT_TOKEN_FILE",
            "/var/run/secrets/trellis/token",
        ),
        ("TRELLIS_INBOUND_LISTEN", "0.0.0.0:15006"),
        ("TRELLIS_INBOUND_APP", "127.0.0.1:8080"),
        ("TRELLIS_INBOUND_CAPTURE", "true"),
        (
            "TRELLIS_APP_PROBES",
            r#"{"web/readyz":{"httpGet":{"path":"/healthz","port":8080}}}"#,
        ),
        (
            "TRELLIS_OUTBOUND",
            "127.0.0.1:7001=payments.prod.svc:15006=spiffe://cluster.local/ns/prod/sa/payments",
        ),
    ] {
        assert!(
            env.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} not in {env:?}"
        );
    }
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(
        volumes[1],
        json!({"name": "trellis-token", "projected": {"sources": [{"serviceAccountToken":
            {"audience": "trellis-ca", "expirationSeconds": 3600, "path": "token"}}]}})
    );
    assert_eq!(volumes[2]["configMap"]["name"], "trellis-trust-bundle");
    assert_eq!(
        sidecar["volumeMounts"][0],
        json!({"name": "trellis-token", "mountPath": "/var/run/secrets/trellis", "readOnly": true})
    );
    // String values that look like YAML 1.1 booleans or numbers must stay strings.
    let web = container(pod, "web").expect("web");
    assert_eq!(web["env"][0]["value"], "no");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );

    assert_valid("injected deployment", &outcome.stdout);

    // Injecting the output again is a no-op, byte for byte.
    let dir = tempfile::tempdir().expect("temp dir");
    let once = dir.path().join("once.yaml");
    std::fs::write(&once, &outcome.stdout).expect("write");
    let twice = inject(&["-f", once.to_str().expect("utf-8")]).success();
    assert_eq!(twice.stdout, outcome.stdout);
    assert_eq!(
        twice.stderr.trim(),
        "deployment/shop skipped: already injected"
    );
}

#[test]
fn an_already_injected_pod_is_left_as_it_is() {
    let path = fixture("already-injected-pod.yaml");
    let input = documents(&std::fs::read_to_string(&path).expect("fixture"));
    let outcome = inject(&["-f", path.to_str().expect("utf-8")]).success();
    assert_eq!(documents(&outcome.stdout), input);
    assert_eq!(outcome.stderr.trim(), "pod/api-0 skipped: already injected");
}

#[test]
fn opted_out_workloads_and_other_objects_pass_through_unchanged() {
    let path = fixture("opted-out.yaml");
    let input = documents(&std::fs::read_to_string(&path).expect("fixture"));
    let outcome = inject(&["-f", path.to_str().expect("utf-8")]).success();
    let output = documents(&outcome.stdout);
    assert_eq!(output, input);
    assert_eq!(
        output[3]["data"]["enabled"], "true",
        "a string stays a string"
    );
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "statefulset/postgres skipped: opted out (trellis.dev/inject: disabled)",
            "daemonset/node-exporter skipped: opted out (trellis.dev/inject: disabled)",
        ]
    );
    assert_valid("opted-out manifests", &outcome.stdout);
}

#[test]
fn a_json_list_from_stdin_comes_out_as_json_with_every_item_injected() {
    let text = std::fs::read_to_string(fixture("list.json")).expect("fixture");
    let mut child = command("trellis")
        .args([
            "inject",
            "-f",
            "-",
            "--output",
            "json",
            "--image",
            "example/sidecar:2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trellis");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("trellis finishes");
    assert!(output.status.success(), "{output:?}");
    let list: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(list["kind"], "List");
    let daemonset = &list["items"][0]["spec"]["template"];
    let pod = &list["items"][1];
    for p in [daemonset, pod] {
        let sidecar = container(p, "trellis-sidecar").expect("injected");
        assert_eq!(sidecar["image"], "example/sidecar:2");
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(2));
    }
    assert_eq!(
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .collect::<Vec<_>>(),
        ["daemonset/agent injected", "pod/solo injected"]
    );
}

#[test]
fn a_pod_that_cannot_be_injected_fails_with_one_line_and_no_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  template:\n    metadata:\n      annotations: {trellis.dev/inbound-port: \"http\"}\n    spec: {containers: [{name: api, image: x}]}\n",
    )
    .expect("write");
    let outcome = inject(&["-f", path.to_str().expect("utf-8")]);
    let line = outcome.failure(1);
    assert!(
        line.contains(
            "deployment/api: annotation trellis.dev/inbound-port: \"http\" is not a port number"
        ),
        "{line}"
    );
    assert_eq!(outcome.stdout, "");

    let missing = inject(&["-f", "/nonexistent/app.yaml"]);
    assert!(
        missing
            .failure(2)
            .contains("cannot read /nonexistent/app.yaml")
    );
    let nothing = inject(&[]);
    assert!(nothing.failure(2).contains("trellis inject -f app.yaml"));
}

#[test]
fn a_trust_fingerprint_replaces_the_bundle_config_map() {
    let path = fixture("deployment-multi-container.yaml");
    let fingerprint = "0f".repeat(32);
    let outcome = inject(&[
        "-f",
        path.to_str().expect("utf-8"),
        "--trust-fingerprint",
        &fingerprint,
    ])
    .success();
    let output = documents(&outcome.stdout);
    let pod = &output[0]["spec"]["template"];
    let sidecar = container(pod, "trellis-sidecar").expect("sidecar");
    let env = env(sidecar);
    assert!(env.contains(&("TRELLIS_TRUST_FINGERPRINT".to_owned(), fingerprint.clone())));
    assert!(!env.iter().any(|(k, _)| k == "TRELLIS_TRUST_BUNDLE"));
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
    assert!(
        !volumes.iter().any(|v| v["name"] == "trellis-trust-bundle"),
        "no ConfigMap needed: {volumes:?}"
    );
    assert_valid("injected with a fingerprint", &outcome.stdout);

    let bad = inject(&[
        "-f",
        path.to_str().expect("utf-8"),
        "--trust-fingerprint",
        "abc",
    ]);
    assert!(bad.failure(2).contains("64 hex digits"));
}

#[test]
fn every_workload_kind_gets_a_native_sidecar_after_the_capture_step() {
    let path = fixture("workloads.yaml");
    let outcome = inject(&["-f", path.to_str().expect("utf-8")]).success();
    assert_eq!(
        outcome.stderr.lines().collect::<Vec<_>>(),
        [
            "deployment/web injected",
            "statefulset/db injected",
            "job/report injected",
            "cronjob/nightly injected",
        ]
    );
    let docs = documents(&outcome.stdout);
    assert_eq!(docs.len(), 4);
    for doc in &docs {
        let pod = crate::tools::pod_of(doc).expect("a pod template");
        let what = crate::tools::describe(doc);
        let init = pod["spec"]["initContainers"].as_array().expect("init");
        assert_eq!(init[0]["name"], "trellis-init", "{what}");
        assert_eq!(init[1]["name"], "trellis-sidecar", "{what}");
        assert_eq!(init[1]["restartPolicy"], "Always", "{what}");
        assert_eq!(
            init[1]["startupProbe"]["exec"]["command"],
            json!([
                "/usr/local/bin/trellis-sidecar",
                "probe-ready",
                "--admin",
                "127.0.0.1:15020"
            ]),
            "{what}: the app starts only once the sidecar holds a certificate"
        );
        assert!(init[0].get("restartPolicy").is_none(), "{what}");
        let containers = pod["spec"]["containers"].as_array().expect("containers");
        assert!(
            containers.iter().all(|c| c["name"] != "trellis-sidecar"),
            "{what}: an app container would keep a Job from completing"
        );
    }
    let statefulset = crate::tools::pod_of(&docs[1]).expect("pod");
    assert_eq!(
        statefulset["spec"]["initContainers"][2]["name"],
        "init-schema"
    );
    // The skipped metrics port keeps its probe; the captured port's probes go through the
    // sidecar.
    let web = container(crate::tools::pod_of(&docs[0]).expect("pod"), "web").expect("web");
    assert_eq!(web["startupProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(
        web["livenessProbe"]["httpGet"]["path"],
        "/app-health/web/livez"
    );
    let init =
        container(crate::tools::pod_of(&docs[0]).expect("pod"), "trellis-init").expect("init");
    assert!(
        init["args"]
            .as_array()
            .expect("args")
            .windows(2)
            .any(|w| w[0] == "--skip-inbound-ports" && w[1] == "9090"),
        "{init}"
    );
    assert_valid("injected workloads", &outcome.stdout);
}
