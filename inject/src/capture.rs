//! What inbound capture adds to a pod: the `trellis-init` container that programs the
//! redirect (`trellis-sidecar init-network`, with `NET_ADMIN`), and the app's kubelet probes
//! rewritten to the sidecar's admin port. The kubelet probes from the node in plaintext and
//! without a certificate, so a probe left on a captured port would be refused; rewritten,
//! it asks the sidecar (`/app-health/<container>/<kind>`, a port never captured), which runs
//! the original probe against the app over loopback.

use serde_json::{Map, Value, json};
use trellis_identity::cidr::Cidr;

use crate::patch::Add;
use crate::pod::{ADMIN_PORT, INBOUND_PORT, InjectError, annotation};

/// `enabled` (the default) or `disabled`: whether the pod's inbound TCP is captured.
pub const CAPTURE: &str = "trellis.dev/capture";
/// Ports left reachable without the sidecar, comma-separated.
pub const SKIP_INBOUND_PORTS: &str = "trellis.dev/skip-inbound-ports";
/// Source CIDRs whose connections are not captured, comma-separated.
pub const SKIP_INBOUND_CIDRS: &str = "trellis.dev/skip-inbound-cidrs";
/// The init container's name.
pub const INIT_CONTAINER: &str = "trellis-init";

/// The capture a pod asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub skip_ports: Vec<u16>,
    pub skip_cidrs: Vec<Cidr>,
}

/// Reads the capture annotations: `None` when the pod turned capture off.
pub fn requested(metadata: Option<&Value>) -> Result<Option<Capture>, InjectError> {
    match annotation(metadata, CAPTURE) {
        None | Some("enabled") => {}
        Some("disabled") => return Ok(None),
        Some(other) => {
            return Err(InjectError::BadAnnotation {
                name: CAPTURE,
                problem: format!("{other:?}: expected \"enabled\" or \"disabled\""),
            });
        }
    }
    let list = |name| {
        annotation(metadata, name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let skip_ports = list(SKIP_INBOUND_PORTS)
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n != 0 && *n != INBOUND_PORT && *n != ADMIN_PORT)
                .ok_or_else(|| InjectError::BadAnnotation {
                    name: SKIP_INBOUND_PORTS,
                    problem: format!(
                        "{p:?} is not a port number (1-65535; {INBOUND_PORT} and {ADMIN_PORT} \
                         are the sidecar's own)"
                    ),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let skip_cidrs = list(SKIP_INBOUND_CIDRS)
        .map(|c| {
            c.parse::<Cidr>()
                .map_err(|problem| InjectError::BadAnnotation {
                    name: SKIP_INBOUND_CIDRS,
                    problem,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Capture {
        skip_ports,
        skip_cidrs,
    }))
}

/// The init container that programs the redirect before any other container starts. It
/// runs as root with NET_ADMIN and NET_RAW (what iptables needs) and nothing else.
pub fn init_container(capture: &Capture, image: &str, pull_policy: Option<&str>) -> Value {
    let mut args = vec![
        "init-network".to_owned(),
        "--inbound-port".to_owned(),
        INBOUND_PORT.to_string(),
        "--admin-port".to_owned(),
        ADMIN_PORT.to_string(),
    ];
    if !capture.skip_ports.is_empty() {
        args.push("--skip-inbound-ports".into());
        args.push(join(&capture.skip_ports));
    }
    if !capture.skip_cidrs.is_empty() {
        args.push("--skip-inbound-cidrs".into());
        args.push(join(&capture.skip_cidrs));
    }
    let mut container = Map::new();
    container.insert("name".into(), json!(INIT_CONTAINER));
    container.insert("image".into(), json!(image));
    if let Some(policy) = pull_policy {
        container.insert("imagePullPolicy".into(), json!(policy));
    }
    container.insert("args".into(), json!(args));
    container.insert(
        "resources".into(),
        json!({"requests": {"cpu": "10m", "memory": "16Mi"},
               "limits": {"cpu": "100m", "memory": "64Mi"}}),
    );
    container.insert(
        "securityContext".into(),
        json!({
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            // iptables takes its lock under /run.
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }),
    );
    Value::Object(container)
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The probe fields and the sidecar's name for each kind.
const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The app's probes that capture would break, rewritten to the sidecar's admin port: the
/// patch operations, and the originals for the sidecar (`TRELLIS_APP_PROBES`).
#[derive(Debug, Default)]
pub struct ProbeRewrite {
    pub ops: Vec<Add>,
    pub originals: Map<String, Value>,
}

/// Rewrites the HTTP and TCP probes of `containers` (at `{base}/spec/containers`) that
/// target a captured port. HTTPS and gRPC probes on a captured port are refused: the sidecar
/// would have to terminate the app's own TLS or speak gRPC for it; the message names the two
/// ways out.
pub fn rewrite_probes(
    containers: &[Value],
    base: &str,
    capture: &Capture,
) -> Result<ProbeRewrite, InjectError> {
    let mut out = ProbeRewrite::default();
    for (index, container) in containers.iter().enumerate() {
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for (field, kind) in PROBES {
            let Some(probe) = container.get(field).and_then(Value::as_object) else {
                continue;
            };
            let Some(original) = app_probe(container, name, field, probe, capture)? else {
                continue;
            };
            out.originals.insert(format!("{name}/{kind}"), original);
            let mut rewritten = probe.clone();
            rewritten.remove("tcpSocket");
            rewritten.insert(
                "httpGet".into(),
                json!({"path": format!("/app-health/{name}/{kind}"), "port": ADMIN_PORT}),
            );
            out.ops.push(Add::new(
                format!("{base}/spec/containers/{index}/{field}"),
                Value::Object(rewritten),
            ));
        }
    }
    Ok(out)
}

/// The original probe in the sidecar's terms, or `None` if it needs no rewrite (exec
/// probes, another host, a skipped port).
fn app_probe(
    container: &Value,
    name: &str,
    field: &str,
    probe: &Map<String, Value>,
    capture: &Capture,
) -> Result<Option<Value>, InjectError> {
    let timeout = probe.get("timeoutSeconds").cloned();
    let refuse = |what: &str, port: u16| InjectError::Probe {
        container: name.to_owned(),
        probe: field.to_owned(),
        problem: format!(
            "is {what} probe on port {port}, which capture sends through the sidecar; add \
             {port} to the {SKIP_INBOUND_PORTS} annotation (the probe then reaches the app \
             directly, as every plaintext peer can) or use an exec probe"
        ),
    };
    let mut original = Map::new();
    if let Some(get) = probe.get("httpGet") {
        if get.get("host").is_some_and(|h| !h.is_null()) {
            return Ok(None);
        }
        let port = resolve_port(container, name, field, get.get("port"))?;
        if capture.skip_ports.contains(&port) {
            return Ok(None);
        }
        if get.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
            return Err(refuse("an HTTPS", port));
        }
        let mut http = Map::new();
        http.insert("port".into(), json!(port));
        http.insert(
            "path".into(),
            get.get("path").cloned().unwrap_or_else(|| json!("/")),
        );
        if let Some(headers) = get.get("httpHeaders") {
            http.insert("httpHeaders".into(), headers.clone());
        }
        original.insert("httpGet".into(), Value::Object(http));
    } else if let Some(tcp) = probe.get("tcpSocket") {
        if tcp.get("host").is_some_and(|h| !h.is_null()) {
            return Ok(None);
        }
        let port = resolve_port(container, name, field, tcp.get("port"))?;
        if capture.skip_ports.contains(&port) {
            return Ok(None);
        }
        original.insert("tcpSocket".into(), json!({"port": port}));
    } else if let Some(grpc) = probe.get("grpc") {
        let port = grpc
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0);
        if capture.skip_ports.contains(&port) {
            return Ok(None);
        }
        return Err(refuse("a gRPC", port));
    } else {
        return Ok(None);
    }
    if let Some(timeout) = timeout {
        original.insert("timeoutSeconds".into(), timeout);
    }
    Ok(Some(Value::Object(original)))
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(
    container: &Value,
    name: &str,
    field: &str,
    port: Option<&Value>,
) -> Result<u16, InjectError> {
    let number = match port {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(text)) => text.parse::<u64>().ok().or_else(|| {
            container
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(text))
                .and_then(|p| p.get("containerPort"))
                .and_then(Value::as_u64)
        }),
        _ => None,
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
        .ok_or_else(|| InjectError::Probe {
            container: name.to_owned(),
            probe: field.to_owned(),
            problem: format!("port {port:?} is neither a number nor one of the container's ports"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(skip_ports: Vec<u16>) -> Capture {
        Capture {
            skip_ports,
            skip_cidrs: Vec::new(),
        }
    }

    #[test]
    fn annotations_turn_capture_off_or_skip_ports_and_cidrs() {
        let meta = |a: Value| json!({"annotations": a});
        assert_eq!(
            requested(Some(&meta(json!({})))).expect("ok"),
            Some(capture(Vec::new()))
        );
        assert_eq!(
            requested(Some(&meta(json!({CAPTURE: "disabled"})))).expect("ok"),
            None
        );
        let c = requested(Some(&meta(json!({
            SKIP_INBOUND_PORTS: "9090, 9091",
            SKIP_INBOUND_CIDRS: "10.0.0.0/8,fd00::/8",
        }))))
        .expect("ok")
        .expect("on");
        assert_eq!(c.skip_ports, vec![9090, 9091]);
        assert_eq!(c.skip_cidrs.len(), 2);
        for (bad, why) in [
            (json!({CAPTURE: "yes"}), "expected \"enabled\""),
            (json!({SKIP_INBOUND_PORTS: "15020"}), "sidecar's own"),
            (json!({SKIP_INBOUND_PORTS: "http"}), "not a port"),
            (json!({SKIP_INBOUND_CIDRS: "10.0.0.0/40"}), "prefix length"),
        ] {
            let e = requested(Some(&meta(bad))).expect_err(why).to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn http_and_tcp_probes_move_to_the_admin_port_with_their_originals() {
        let containers = [json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http",
                "httpHeaders": [{"name": "X", "value": "y"}]}, "periodSeconds": 3, "timeoutSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 8080}},
            "startupProbe": {"exec": {"command": ["true"]}},
        })];
        let r = rewrite_probes(&containers, "/spec/template", &capture(Vec::new())).expect("ok");
        assert_eq!(r.ops.len(), 2);
        assert_eq!(
            r.ops[0].path,
            "/spec/template/spec/containers/0/livenessProbe"
        );
        assert_eq!(
            r.ops[0].value,
            json!({"httpGet": {"path": "/app-health/web/livez", "port": 15020}})
        );
        assert_eq!(
            r.ops[1].value,
            json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020},
                   "periodSeconds": 3, "timeoutSeconds": 2})
        );
        assert_eq!(
            Value::Object(r.originals),
            json!({
                "web/livez": {"tcpSocket": {"port": 8080}},
                "web/readyz": {"httpGet": {"port": 8080, "path": "/healthz",
                    "httpHeaders": [{"name": "X", "value": "y"}]}, "timeoutSeconds": 2},
            })
        );
    }

    #[test]
    fn probes_on_skipped_ports_stay_and_tls_or_grpc_on_captured_ports_are_refused() {
        let grpc = [json!({"name": "api", "livenessProbe": {"grpc": {"port": 9000}}})];
        let https = [json!({"name": "api",
            "readinessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}}})];
        for containers in [&grpc, &https] {
            let e = rewrite_probes(containers, "", &capture(Vec::new()))
                .expect_err("refused")
                .to_string();
            assert!(e.contains(SKIP_INBOUND_PORTS) && e.contains("api"), "{e}");
            let r = rewrite_probes(containers, "", &capture(vec![9000, 8443])).expect("ok");
            assert!(r.ops.is_empty() && r.originals.is_empty());
        }
        let unnamed = [json!({"name": "a", "livenessProbe": {"tcpSocket": {"port": "nope"}}})];
        let e = rewrite_probes(&unnamed, "", &capture(Vec::new()))
            .expect_err("unknown port")
            .to_string();
        assert!(e.contains("neither a number"), "{e}");
    }
}
