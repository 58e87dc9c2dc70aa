//! Offline injection of Kubernetes manifests: multi-document YAML (or JSON) in, the same
//! documents out with every pod template injected. Pods, Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, Jobs and CronJobs are injected (also inside a `List`); anything
//! else passes through unchanged.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::patch::{self, PatchError};
use crate::pod::{self, InjectError, Plan, Settings, Skip, Unannotated};
use crate::yaml;

/// What happened to one workload, for the report on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `deployment/web`.
    pub object: String,
    /// `None` when injected.
    pub skipped: Option<Skip>,
}

/// Why a manifest could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {index}: not valid YAML: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("{object}: {source}")]
    Inject { object: String, source: InjectError },
    #[error("{object}: {source}")]
    Patch { object: String, source: PatchError },
}

/// Parses every document of a YAML stream (JSON is YAML too); empty documents are dropped.
pub fn parse(text: &str) -> Result<Vec<Value>, ManifestError> {
    let mut docs = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| ManifestError::Yaml {
            index: index + 1,
            source,
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Writes documents as a YAML stream separated by `---`.
pub fn to_yaml(docs: &[Value]) -> String {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&yaml::to_string(doc));
    }
    out
}

/// Writes documents as JSON: one object, or a `v1 List` of several.
pub fn to_json(docs: Vec<Value>) -> String {
    let value = match <[Value; 1]>::try_from(docs) {
        Ok([one]) => one,
        Err(docs) => json!({"apiVersion": "v1", "kind": "List", "items": docs}),
    };
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

fn describe(doc: &Value) -> String {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object")
        .to_ascii_lowercase();
    let name = doc
        .pointer("/metadata/name")
        .or_else(|| doc.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    format!("{kind}/{name}")
}

/// Injects every pod template in `doc` (recursing into `List`s), recording what it did.
pub fn inject(
    doc: &mut Value,
    settings: &Settings,
    events: &mut Vec<Event>,
) -> Result<(), ManifestError> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let template_path = match kind {
        "Pod" => "",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ if kind.ends_with("List") => {
            if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    inject(item, settings, events)?;
                }
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let object = describe(doc);
    let owner = (!template_path.is_empty())
        .then(|| doc.get("metadata").cloned())
        .flatten();
    let Some(template) = doc.pointer_mut(template_path) else {
        return Err(ManifestError::Inject {
            object,
            source: InjectError::NotAnObject(template_path.into()),
        });
    };
    match pod::plan(template, "", owner.as_ref(), settings, Unannotated::Inject) {
        Ok(Plan::Inject(ops)) => {
            patch::apply(template, &ops).map_err(|source| ManifestError::Patch {
                object: object.clone(),
                source,
            })?;
            events.push(Event {
                object,
                skipped: None,
            });
        }
        Ok(Plan::Skip(skip)) => events.push(Event {
            object,
            skipped: Some(skip),
        }),
        Err(source) => return Err(ManifestError::Inject { object, source }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            image: "trellis/sidecar:test".into(),
            pull_policy: Some("IfNotPresent".into()),
            ca_address: "trellis-ca.trellis-system.svc:8443".into(),
            trust_domain: "cluster.local".into(),
            trust: pod::Trust::ConfigMap("trellis-trust-bundle".into()),
        }
    }

    const STREAM: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations:
        trellis.dev/inbound-port: "8080"
    spec:
      containers:
        - name: web
          image: nginx
          env: [{name: DEBUG, value: "yes"}, {name: PORT, value: "8080"}]
---
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: one}
    spec: {containers: [{name: a, image: busybox}]}
"#;

    #[test]
    fn a_stream_is_injected_and_round_trips() {
        let mut docs = parse(STREAM).expect("parses");
        assert_eq!(docs.len(), 3, "the empty document is dropped");
        let service = docs[0].clone();
        let mut events = Vec::new();
        for doc in &mut docs {
            inject(doc, &settings(), &mut events).expect("injects");
        }
        assert_eq!(docs[0], service, "a Service is not touched");
        assert_eq!(
            events.iter().map(|e| e.object.as_str()).collect::<Vec<_>>(),
            ["deployment/web", "pod/one"]
        );
        let init = &docs[1]["spec"]["template"]["spec"]["initContainers"];
        assert_eq!(init[0]["name"], "trellis-init");
        assert_eq!(init[1]["name"], "trellis-sidecar");
        assert_eq!(
            docs[2]["items"][0]["spec"]["initContainers"][1]["name"],
            "trellis-sidecar"
        );

        // Strings that YAML 1.1 readers (Kubernetes) would take for booleans or numbers
        // stay strings on the way out.
        let text = to_yaml(&docs);
        assert!(text.contains("value: \"yes\""), "{text}");
        assert_eq!(parse(&text).expect("reparses"), docs);

        // Injecting the output again changes nothing.
        let mut again = parse(&text).expect("reparses");
        let mut events = Vec::new();
        for doc in &mut again {
            inject(doc, &settings(), &mut events).expect("injects");
        }
        assert_eq!(again, docs);
        assert!(
            events
                .iter()
                .all(|e| e.skipped == Some(Skip::AlreadyInjected))
        );
    }

    #[test]
    fn errors_name_the_object_and_the_document() {
        let mut doc = parse(
            "kind: Deployment\nmetadata: {name: api}\nspec: {template: {metadata: {annotations: {trellis.dev/inbound-port: x}}, spec: {containers: []}}}",
        )
        .expect("parses")
        .remove(0);
        let e = inject(&mut doc, &settings(), &mut Vec::new()).expect_err("bad port");
        assert!(
            e.to_string().starts_with("deployment/api: annotation"),
            "{e}"
        );
        let e = parse("a: 1\n---\n[unclosed").expect_err("bad yaml");
        assert!(e.to_string().starts_with("document 2"), "{e}");
    }
}
