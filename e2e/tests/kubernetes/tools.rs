//! The outside tools these tests drive, and small helpers over Kubernetes objects.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use trellis_e2e::{Outcome, run};

/// How long one external tool may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The workspace root (where deploy/ is).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the workspace")
        .to_path_buf()
}

/// A fixture under e2e/tests/kubernetes/fixtures/.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kubernetes/fixtures")
        .join(name)
}

/// Renders a kustomization with kubectl's built-in kustomize, as `kubectl apply -k` would.
pub fn kustomize(dir: &str) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.arg("kustomize").arg(workspace().join(dir));
    run(cmd, TOOL_TIMEOUT).success().stdout
}

/// Parses a YAML stream into its non-empty documents.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The Kubernetes versions manifests must be valid for: the oldest we support and the
/// newest the validator knows.
pub const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// Runs kubernetes-validate (strict: unknown fields are errors) on a file.
pub fn validate(file: &Path, version: &str) -> Outcome {
    let tool = workspace().join("target/k8s-tools/bin/kubernetes-validate");
    assert!(
        tool.is_file(),
        "{} is missing: run scripts/install-test-deps.sh",
        tool.display()
    );
    let mut cmd = Command::new(tool);
    cmd.args(["--strict", "--kubernetes-version", version])
        .arg(file);
    run(cmd, TOOL_TIMEOUT)
}

/// Validates YAML text against every supported version, failing with the validator's words.
pub fn assert_valid(name: &str, yaml: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(format!("{}.yaml", name.replace('/', "-")));
    std::fs::write(&file, yaml).expect("write manifest");
    for version in KUBERNETES_VERSIONS {
        let outcome = validate(&file, version);
        assert_eq!(
            outcome.code,
            Some(0),
            "{name} is not valid for Kubernetes {version}:\n{}{}",
            outcome.stdout,
            outcome.stderr
        );
    }
}

/// `kind/name` of an object.
pub fn describe(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The pod template of a workload, or the pod itself.
pub fn pod_of(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(doc),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.pointer("/spec/template")
        }
        "CronJob" => doc.pointer("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// The container named `name` in a pod (an app container or an init container, which is
/// where a native sidecar lives).
pub fn container<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["/spec/containers", "/spec/initContainers"]
        .iter()
        .filter_map(|list| pod.pointer(list)?.as_array())
        .flatten()
        .find(|c| c["name"] == name)
}

/// A container's env as (name, value) pairs; `valueFrom` entries are left out.
pub fn env(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}
