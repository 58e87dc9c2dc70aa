//! The mutating admission webhook's logic, without the server (that is `trellis-injector`): an `AdmissionReview` v1
//! request in, an `AdmissionReview` response out, with the same JSON Patch the offline
//! `trellis inject` applies.
//!
//! Reference: <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#request>

use serde_json::{Value, json};

use crate::pod::{self, Plan, Settings, Unannotated};

/// What the webhook decided for one request, for its log line and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `namespace/name` of the pod (its `generateName` when it has no name yet).
    pub pod: String,
    /// What happened to it.
    pub outcome: Outcome,
}

/// What the webhook did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The pod was patched.
    Injected,
    /// The pod was allowed unchanged, for this reason.
    Skipped(String),
    /// The pod was refused: it asked for injection that cannot be done as written.
    Refused(String),
    /// Not a pod creation: allowed unchanged.
    NotAPodCreation,
}

impl Outcome {
    /// A short name for metrics labels: `patched`, `skipped`, `refused` or `ignored`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Injected => "patched",
            Self::Skipped(_) => "skipped",
            Self::Refused(_) => "refused",
            Self::NotAPodCreation => "ignored",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Injected => f.write_str("injected"),
            Self::Skipped(reason) => write!(f, "skipped: {reason}"),
            Self::Refused(reason) => write!(f, "refused: {reason}"),
            Self::NotAPodCreation => f.write_str("not a pod creation"),
        }
    }
}

/// A request that is not an `AdmissionReview` we can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[error("not an AdmissionReview v1 request: {0}")]
pub struct BadReview(String);

/// Answers an `AdmissionReview`. Pods being created are injected when `unannotated` (or
/// their `trellis.dev/inject` annotation) says so; anything else is allowed unchanged.
/// A pod that cannot be injected as written is refused with the reason, so it never runs
/// without the sidecar it asked for.
pub fn review(
    body: &[u8],
    settings: &Settings,
    unannotated: Unannotated,
) -> Result<(Value, Decision), BadReview> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| BadReview(format!("invalid JSON: {e}")))?;
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(BadReview("kind is not AdmissionReview".into()));
    }
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version != "admission.k8s.io/v1" {
        return Err(BadReview(format!(
            "apiVersion {api_version:?}; only admission.k8s.io/v1 is served"
        )));
    }
    let request = review
        .get("request")
        .ok_or_else(|| BadReview("no request".into()))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or_else(|| BadReview("request.uid is missing".into()))?;
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let object = request.get("object").unwrap_or(&Value::Null);
    let name = object
        .pointer("/metadata/name")
        .or_else(|| object.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let pod_name = format!("{namespace}/{name}");
    let is_pod_create = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
        && request.pointer("/kind/group").and_then(Value::as_str) == Some("")
        && request.get("operation").and_then(Value::as_str) == Some("CREATE")
        && request.get("subResource").is_none_or(Value::is_null);

    let (response, outcome) = if !is_pod_create {
        (
            json!({"uid": uid, "allowed": true}),
            Outcome::NotAPodCreation,
        )
    } else {
        match pod::plan(object, "", None, settings, unannotated) {
            Ok(Plan::Inject(ops)) => {
                let patch = serde_json::to_vec(&ops).unwrap_or_default();
                (
                    json!({
                        "uid": uid,
                        "allowed": true,
                        "patchType": "JSONPatch",
                        "patch": base64(&patch),
                    }),
                    Outcome::Injected,
                )
            }
            Ok(Plan::Skip(skip)) => (
                json!({"uid": uid, "allowed": true}),
                Outcome::Skipped(skip.reason().to_owned()),
            ),
            Err(e) => {
                let message = format!("trellis sidecar injection: {e}");
                (
                    json!({
                        "uid": uid,
                        "allowed": false,
                        "status": {"code": 400, "reason": "BadRequest", "message": message},
                    }),
                    Outcome::Refused(e.to_string()),
                )
            }
        }
    };
    Ok((
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
        Decision {
            pod: pod_name,
            outcome,
        },
    ))
}

/// Standard base64 with padding (RFC 4648 §4), as the `patch` field requires.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::{Add, apply};

    fn settings() -> Settings {
        Settings {
            image: "trellis/sidecar:test".into(),
            pull_policy: None,
            ca_address: "trellis-ca.trellis-system.svc:8443".into(),
            trust_domain: "cluster.local".into(),
            trust: pod::Trust::ConfigMap("trellis-trust-bundle".into()),
        }
    }

    fn request(object: Value, operation: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "demo",
                "operation": operation,
                "object": object,
            }
        }))
        .expect("json")
    }

    fn decode(text: &str) -> Vec<u8> {
        // The inverse of `base64`, only for checking it.
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut count = 0;
        let mut out = Vec::new();
        for c in text.chars().filter(|c| *c != '=') {
            bits = (bits << 6) | alphabet.find(c).expect("base64 alphabet") as u32;
            count += 6;
            if count >= 8 {
                count -= 8;
                out.push((bits >> count) as u8);
            }
        }
        out
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn a_pod_gets_a_json_patch_that_injects_it() {
        let pod = json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
        let (answer, decision) = review(
            &request(pod.clone(), "CREATE"),
            &settings(),
            Unannotated::Inject,
        )
        .expect("answers");
        let response = &answer["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        assert_eq!(decision.pod, "demo/web-");
        let ops: Vec<Value> =
            serde_json::from_slice(&decode(response["patch"].as_str().expect("patch")))
                .expect("patch is JSON");
        let ops: Vec<Add> = ops
            .iter()
            .map(|o| Add::new(o["path"].as_str().expect("path"), o["value"].clone()))
            .collect();
        let mut patched = pod;
        apply(&mut patched, &ops).expect("applies");
        assert_eq!(
            patched["spec"]["initContainers"][1]["name"],
            "trellis-sidecar"
        );
        assert_eq!(patched["spec"]["initContainers"][0]["name"], "trellis-init");
    }

    #[test]
    fn updates_skips_and_refusals() {
        let pod = json!({"spec": {"containers": [{"name": "web"}]}});
        let (answer, _) = review(
            &request(pod.clone(), "UPDATE"),
            &settings(),
            Unannotated::Inject,
        )
        .expect("answers");
        assert_eq!(
            answer["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
        );
        let (answer, decision) =
            review(&request(pod, "CREATE"), &settings(), Unannotated::Skip).expect("answers");
        assert!(answer["response"].get("patch").is_none());
        assert_eq!(
            decision.outcome,
            Outcome::Skipped("injection not requested".into())
        );
        assert_eq!(
            decision.outcome.to_string(),
            "skipped: injection not requested"
        );
        let bad = json!({"metadata": {"annotations": {"trellis.dev/inbound-port": "0"}}, "spec": {"containers": []}});
        let (answer, _) =
            review(&request(bad, "CREATE"), &settings(), Unannotated::Inject).expect("answers");
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"]
            .as_str()
            .expect("message");
        assert!(message.contains("trellis.dev/inbound-port"), "{message}");
    }

    #[test]
    fn garbage_is_a_bad_request() {
        for body in [
            &b"not json"[..],
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"x"}}"#,
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
            br#"{"kind":"Pod"}"#,
        ] {
            assert!(review(body, &settings(), Unannotated::Inject).is_err());
        }
    }
}
