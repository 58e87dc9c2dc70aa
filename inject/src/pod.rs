//! The injection itself: given a pod (or a workload's pod template), the JSON Patch that
//! adds the `trellis-sidecar` container, the capture init container, the projected
//! service-account token, the trust bundle volume and the "injected" annotation.
//!
//! The sidecar goes in as a Kubernetes native sidecar (an init container with
//! `restartPolicy: Always`, Kubernetes 1.29+): it starts after `trellis-init` and before
//! the user's init containers and app containers, which wait for its startup probe
//! (`/ready`: the first certificate is held); it is stopped after them, so the app drains
//! first; and a Job completes when its app containers do. `trellis.dev/sidecar-mode:
//! container` falls back to an ordinary container for older clusters. The app's containers
//! are never touched, except that under capture their HTTP and TCP probes are pointed at
//! the sidecar's admin port (see `capture.rs`).

use serde_json::{Map, Value, json};

use crate::capture;
use crate::patch::{Add, escape};

/// Annotation a pod (or namespace-level webhook) uses to ask for or refuse injection.
pub const INJECT: &str = "trellis.dev/inject";
/// Annotation injection adds; its presence makes injection a no-op.
pub const INJECTED: &str = "trellis.dev/injected";
/// Annotation naming the app's port: the sidecar then listens on [`INBOUND_PORT`] and
/// forwards authenticated connections to `127.0.0.1:<port>`.
pub const APP_PORT: &str = "trellis.dev/inbound-port";
/// Annotation with outbound listeners, `LISTEN=UPSTREAM=SPIFFE_ID[,...]`, handed to the
/// sidecar as `TRELLIS_OUTBOUND`.
pub const OUTBOUND: &str = "trellis.dev/outbound";
/// Annotation naming a ConfigMap in the pod's namespace with a `sidecar.toml` key: mounted
/// and passed as the sidecar's config file.
pub const CONFIG_MAP: &str = "trellis.dev/config";
/// Annotation choosing how the sidecar is added: `native` (default) or `container`.
pub const SIDECAR_MODE: &str = "trellis.dev/sidecar-mode";
/// How long the app's containers wait for the sidecar's first certificate at most (the
/// startup probe's period times its failure threshold); after that the kubelet restarts the
/// sidecar. Meanwhile each failed probe's event says why the sidecar is not ready.
pub const STARTUP_SECONDS: u64 = 300;
/// The sidecar binary in its image (the startup probe runs it).
pub const SIDECAR_BINARY: &str = "/usr/local/bin/trellis-sidecar";

/// The injected container's name.
pub const CONTAINER: &str = "trellis-sidecar";
/// The sidecar's public mTLS port.
pub const INBOUND_PORT: u16 = 15006;
/// The sidecar's admin port (liveness, readiness, metrics). It listens on all interfaces in
/// a pod because the kubelet probes the pod IP, never the pod's loopback.
pub const ADMIN_PORT: u16 = 15020;
/// Where the projected service-account token is mounted, and the file in it.
pub const TOKEN_DIR: &str = "/var/run/secrets/trellis";
pub const TOKEN_FILE: &str = "token";
/// The audience the token is minted for; the CA accepts only this one by default.
pub const TOKEN_AUDIENCE: &str = "trellis-ca";
/// The token's lifetime; the kubelet rotates it at 80%.
pub const TOKEN_SECONDS: u64 = 3600;
/// Where the trust bundle ConfigMap is mounted, and its key.
pub const BUNDLE_DIR: &str = "/var/run/trellis/bundle";
pub const BUNDLE_KEY: &str = "bundle.pem";
/// Where an optional config ConfigMap is mounted, and its key.
pub const CONFIG_DIR: &str = "/etc/trellis/sidecar";
pub const CONFIG_KEY: &str = "sidecar.toml";

const TOKEN_VOLUME: &str = "trellis-token";
const BUNDLE_VOLUME: &str = "trellis-trust-bundle";
const CONFIG_VOLUME: &str = "trellis-sidecar-config";
/// The distroless "nonroot" user the images run as.
const SIDECAR_UID: u64 = 65532;

/// What injection puts into a pod, the same for every pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The sidecar image.
    pub image: String,
    /// `imagePullPolicy`, if set.
    pub pull_policy: Option<String>,
    /// The CA's address as the sidecar reaches it, host:port.
    pub ca_address: String,
    /// The trust domain.
    pub trust_domain: String,
    /// How the sidecar learns which CA to trust before it has talked to it.
    pub trust: Trust,
}

/// Where an injected sidecar's first trust bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A ConfigMap in the pod's namespace with key `bundle.pem`, mounted as a file.
    ConfigMap(String),
    /// The SHA-256 of the root's SubjectPublicKeyInfo (64 hex digits, as `trellis ca status`
    /// shows it): the sidecar fetches the bundle from the CA and accepts it only if it holds
    /// that root. Needs no object in the pod's namespace.
    Fingerprint(String),
}

/// Whether a pod with no `trellis.dev/inject` annotation is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unannotated {
    /// Inject unless the pod says `disabled` (offline inject; namespaces labelled for it).
    Inject,
    /// Inject only if the pod says `enabled`.
    Skip,
}

/// Why a pod was left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// It already carries the sidecar.
    AlreadyInjected,
    /// It is annotated `trellis.dev/inject: disabled`.
    OptedOut,
    /// Nothing asked for injection.
    NotRequested,
    /// It uses the node's network: a sidecar there would take the node's ports.
    HostNetwork,
}

impl Skip {
    /// A short phrase for messages.
    pub fn reason(self) -> &'static str {
        match self {
            Self::AlreadyInjected => "already injected",
            Self::OptedOut => "opted out (trellis.dev/inject: disabled)",
            Self::NotRequested => "injection not requested",
            Self::HostNetwork => "uses hostNetwork",
        }
    }
}

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Apply these operations.
    Inject(Vec<Add>),
    /// Leave it unchanged.
    Skip(Skip),
}

/// A pod that cannot be injected as it is; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("{0} is not an object")]
    NotAnObject(String),
    #[error("annotation {name}: {problem}")]
    BadAnnotation { name: &'static str, problem: String },
    #[error(
        "container {container:?} uses port {port}, which the sidecar needs; move the app to another port"
    )]
    PortTaken { container: String, port: u16 },
    #[error("the pod already has a volume named {0:?}; rename it so the sidecar's can be added")]
    VolumeTaken(&'static str),
    #[error("container {container:?}: the {probe} {problem}")]
    Probe {
        container: String,
        probe: String,
        problem: String,
    },
}

/// How the sidecar joins the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+).
    Native,
    /// An ordinary container beside the app's (older clusters).
    Container,
}

fn mode(metadata: Option<&Value>) -> Result<Mode, InjectError> {
    match annotation(metadata, SIDECAR_MODE) {
        None | Some("native") => Ok(Mode::Native),
        Some("container") => Ok(Mode::Container),
        Some(other) => Err(InjectError::BadAnnotation {
            name: SIDECAR_MODE,
            problem: format!("{other:?}: expected \"native\" or \"container\""),
        }),
    }
}

/// The value of annotation `name`, if set.
pub(crate) fn annotation<'a>(metadata: Option<&'a Value>, name: &str) -> Option<&'a str> {
    metadata?.get("annotations")?.get(name)?.as_str()
}

/// What the pod's (or workload's) annotations ask for.
fn requested(metadata: &[Option<&Value>], default: Unannotated) -> Result<bool, InjectError> {
    let mut verdict = None;
    for m in metadata {
        match annotation(*m, INJECT) {
            None => {}
            Some("disabled") => return Ok(false),
            Some("enabled") => verdict = Some(true),
            Some(other) => {
                return Err(InjectError::BadAnnotation {
                    name: INJECT,
                    problem: format!("{other:?}: expected \"enabled\" or \"disabled\""),
                });
            }
        }
    }
    Ok(verdict.unwrap_or(default == Unannotated::Inject))
}

/// Plans injection for the pod at `base` (a JSON Pointer: `""` for a Pod,
/// `"/spec/template"` for a Deployment). `owner` is the workload's own metadata, whose
/// `trellis.dev/inject` annotation counts too.
pub fn plan(
    pod: &Value,
    base: &str,
    owner: Option<&Value>,
    settings: &Settings,
    default: Unannotated,
) -> Result<Plan, InjectError> {
    let metadata = pod.get("metadata");
    let spec = pod
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| InjectError::NotAnObject(format!("{base}/spec")))?;
    let list = |name: &str| {
        spec.get(name)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let (containers, init_containers) = (list("containers"), list("initContainers"));
    let already = annotation(metadata, INJECTED).is_some()
        || containers.iter().chain(init_containers).any(|c| {
            let name = c.get("name").and_then(Value::as_str);
            name == Some(CONTAINER) || name == Some(capture::INIT_CONTAINER)
        });
    if already {
        return Ok(Plan::Skip(Skip::AlreadyInjected));
    }
    if !requested(&[owner, metadata], default)? {
        let skip = if annotation(metadata, INJECT) == Some("disabled")
            || annotation(owner, INJECT) == Some("disabled")
        {
            Skip::OptedOut
        } else {
            Skip::NotRequested
        };
        return Ok(Plan::Skip(skip));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Plan::Skip(Skip::HostNetwork));
    }
    check_ports(containers)?;
    let volumes = spec.get("volumes").and_then(Value::as_array);
    let config_map = annotation(metadata, CONFIG_MAP)
        .map(|name| dns_label(CONFIG_MAP, name))
        .transpose()?;
    let mut new_volumes = vec![token_volume()];
    if let Trust::ConfigMap(name) = &settings.trust {
        new_volumes.push(bundle_volume(name));
    }
    if let Some(name) = config_map {
        new_volumes.push(json!({"name": CONFIG_VOLUME, "configMap": {"name": name}}));
    }
    for volume in &new_volumes {
        let name = volume["name"].as_str().unwrap_or_default();
        let taken = volumes
            .into_iter()
            .flatten()
            .any(|v| v.get("name").and_then(Value::as_str) == Some(name));
        if taken {
            let name = [TOKEN_VOLUME, BUNDLE_VOLUME, CONFIG_VOLUME]
                .into_iter()
                .find(|n| *n == name)
                .unwrap_or(TOKEN_VOLUME);
            return Err(InjectError::VolumeTaken(name));
        }
    }
    let mode = mode(metadata)?;
    let capture = capture::requested(metadata)?;
    let probes = match &capture {
        Some(capture) => capture::rewrite_probes(containers, base, capture)?,
        None => capture::ProbeRewrite::default(),
    };
    let mut container = sidecar_container(
        metadata,
        settings,
        config_map.is_some(),
        capture.is_some(),
        &probes.originals,
    )?;
    let mut init = Vec::new();
    if let Some(capture) = &capture {
        init.push(capture::init_container(
            capture,
            &settings.image,
            settings.pull_policy.as_deref(),
        ));
    }
    let plain_container = if mode == Mode::Native {
        container.insert("restartPolicy".into(), json!("Always"));
        // An exec probe of `/ready` rather than an httpGet one: the kubelet puts an exec
        // probe's output, which says why the sidecar is not ready, into the pod's events.
        container.insert(
            "startupProbe".into(),
            json!({"exec": {"command": [SIDECAR_BINARY, "probe-ready", "--admin",
                                        format!("127.0.0.1:{ADMIN_PORT}")]},
                   "periodSeconds": 1, "failureThreshold": STARTUP_SECONDS}),
        );
        init.push(Value::Object(container));
        None
    } else {
        Some(Value::Object(container))
    };

    let mut ops = Vec::new();
    match metadata {
        None => ops.push(Add::new(
            format!("{base}/metadata"),
            json!({"annotations": {INJECTED: env!("CARGO_PKG_VERSION")}}),
        )),
        Some(m) if m.get("annotations").is_none_or(Value::is_null) => ops.push(Add::new(
            format!("{base}/metadata/annotations"),
            json!({INJECTED: env!("CARGO_PKG_VERSION")}),
        )),
        Some(_) => ops.push(Add::new(
            format!("{base}/metadata/annotations/{}", escape(INJECTED)),
            json!(env!("CARGO_PKG_VERSION")),
        )),
    }
    // Ours run first, in this order: the capture step, then the sidecar, then the user's.
    if spec.get("initContainers").is_some_and(Value::is_array) {
        for c in init.into_iter().rev() {
            ops.push(Add::new(format!("{base}/spec/initContainers/0"), c));
        }
    } else if !init.is_empty() {
        ops.push(Add::new(
            format!("{base}/spec/initContainers"),
            Value::Array(init),
        ));
    }
    if let Some(container) = plain_container {
        if spec.get("containers").is_some_and(Value::is_array) {
            ops.push(Add::new(format!("{base}/spec/containers/-"), container));
        } else {
            ops.push(Add::new(
                format!("{base}/spec/containers"),
                json!([container]),
            ));
        }
    }
    ops.extend(probes.ops);
    if volumes.is_some() {
        for volume in new_volumes {
            ops.push(Add::new(format!("{base}/spec/volumes/-"), volume));
        }
    } else {
        ops.push(Add::new(
            format!("{base}/spec/volumes"),
            Value::Array(new_volumes),
        ));
    }
    Ok(Plan::Inject(ops))
}

fn check_ports(containers: &[Value]) -> Result<(), InjectError> {
    for c in containers {
        let ports = c.get("ports").and_then(Value::as_array);
        for port in ports.into_iter().flatten() {
            let number = port.get("containerPort").and_then(Value::as_u64);
            for ours in [INBOUND_PORT, ADMIN_PORT] {
                if number == Some(u64::from(ours)) {
                    return Err(InjectError::PortTaken {
                        container: c
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        port: ours,
                    });
                }
            }
        }
    }
    Ok(())
}

/// A ConfigMap name must be a DNS subdomain; checked here so a typo fails at injection,
/// not as a pod stuck in ContainerCreating.
fn dns_label<'a>(name: &'static str, value: &'a str) -> Result<&'a str, InjectError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(value)
    } else {
        Err(InjectError::BadAnnotation {
            name,
            problem: format!("{value:?} is not a valid ConfigMap name"),
        })
    }
}

fn token_volume() -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE,
            "expirationSeconds": TOKEN_SECONDS,
            "path": TOKEN_FILE,
        }}]},
    })
}

fn bundle_volume(config_map: &str) -> Value {
    json!({
        "name": BUNDLE_VOLUME,
        "configMap": {"name": config_map, "items": [{"key": BUNDLE_KEY, "path": BUNDLE_KEY}]},
    })
}

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn sidecar_container(
    metadata: Option<&Value>,
    settings: &Settings,
    with_config: bool,
    capture: bool,
    app_probes: &Map<String, Value>,
) -> Result<Map<String, Value>, InjectError> {
    let mut env_vars = vec![
        env("TRELLIS_TRUST_DOMAIN", &settings.trust_domain),
        env("TRELLIS_CA_ADDR", &settings.ca_address),
        match &settings.trust {
            Trust::ConfigMap(_) => {
                env("TRELLIS_TRUST_BUNDLE", format!("{BUNDLE_DIR}/{BUNDLE_KEY}"))
            }
            Trust::Fingerprint(hex) => env("TRELLIS_TRUST_FINGERPRINT", hex),
        },
        env(
            "TRELLIS_SERVICE_ACCOUNT_TOKEN_FILE",
            format!("{TOKEN_DIR}/{TOKEN_FILE}"),
        ),
        env("TRELLIS_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
        env("TRELLIS_LOG_FORMAT", "json"),
    ];
    let mut ports = vec![json!({"name": "trellis-admin", "containerPort": ADMIN_PORT})];
    if let Some(text) = annotation(metadata, APP_PORT) {
        let port = text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && *p != INBOUND_PORT && *p != ADMIN_PORT)
            .ok_or_else(|| InjectError::BadAnnotation {
                name: APP_PORT,
                problem: format!(
                    "{text:?} is not a port number (1-65535, not {INBOUND_PORT} or {ADMIN_PORT})"
                ),
            })?;
        env_vars.push(env("TRELLIS_INBOUND_APP", format!("127.0.0.1:{port}")));
    }
    if capture || annotation(metadata, APP_PORT).is_some() {
        env_vars.push(env(
            "TRELLIS_INBOUND_LISTEN",
            format!("0.0.0.0:{INBOUND_PORT}"),
        ));
        ports.push(json!({"name": "trellis-mtls", "containerPort": INBOUND_PORT}));
    }
    if capture {
        env_vars.push(env("TRELLIS_INBOUND_CAPTURE", "true"));
    }
    if !app_probes.is_empty() {
        env_vars.push(env(
            "TRELLIS_APP_PROBES",
            Value::Object(app_probes.clone()).to_string(),
        ));
    }
    if let Some(text) = annotation(metadata, OUTBOUND) {
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.splitn(3, '=').count() != 3 {
                return Err(InjectError::BadAnnotation {
                    name: OUTBOUND,
                    problem: format!(
                        "{entry:?}: expected LISTEN=UPSTREAM=SPIFFE_ID, e.g. \
                         127.0.0.1:7001=backend.demo.svc:15006=spiffe://cluster.local/ns/demo/sa/backend"
                    ),
                });
            }
        }
        env_vars.push(env("TRELLIS_OUTBOUND", text.trim()));
    }
    let mut mounts = vec![json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true})];
    if matches!(settings.trust, Trust::ConfigMap(_)) {
        mounts.push(json!({"name": BUNDLE_VOLUME, "mountPath": BUNDLE_DIR, "readOnly": true}));
    }
    if with_config {
        env_vars.push(env("TRELLIS_CONFIG", format!("{CONFIG_DIR}/{CONFIG_KEY}")));
        mounts.push(json!({"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true}));
    }
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": ADMIN_PORT}, "periodSeconds": 5, "failureThreshold": 3});
    let mut container = Map::new();
    container.insert("name".into(), json!(CONTAINER));
    container.insert("image".into(), json!(settings.image));
    if let Some(policy) = &settings.pull_policy {
        container.insert("imagePullPolicy".into(), json!(policy));
    }
    container.insert("env".into(), Value::Array(env_vars));
    container.insert("ports".into(), Value::Array(ports));
    container.insert("livenessProbe".into(), probe("/live"));
    container.insert("readinessProbe".into(), probe("/ready"));
    container.insert(
        "resources".into(),
        // The CPU limit also sets the sidecar's thread count (one per core it may use).
        json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "1", "memory": "64Mi"}}),
    );
    container.insert(
        "securityContext".into(),
        json!({
            "runAsNonRoot": true,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }),
    );
    container.insert("volumeMounts".into(), Value::Array(mounts));
    Ok(container)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::apply;

    pub(crate) fn settings() -> Settings {
        Settings {
            image: "trellis/sidecar:test".into(),
            pull_policy: None,
            ca_address: "trellis-ca.trellis-system.svc:8443".into(),
            trust_domain: "cluster.local".into(),
            trust: Trust::ConfigMap("trellis-trust-bundle".into()),
        }
    }

    fn inject(pod: &Value, default: Unannotated) -> Result<Value, InjectError> {
        let mut out = pod.clone();
        if let Plan::Inject(ops) = plan(pod, "", None, &settings(), default)? {
            apply(&mut out, &ops).expect("the plan applies");
        }
        Ok(out)
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}]},
        })
    }

    #[test]
    fn adds_sidecar_token_bundle_and_marker_and_keeps_the_app() {
        let before = pod(json!({APP_PORT: "8080"}));
        let after = inject(&before, Unannotated::Inject).expect("injects");
        assert_eq!(
            after["spec"]["containers"][0],
            before["spec"]["containers"][0]
        );
        assert_eq!(
            after["spec"]["containers"].as_array().map(Vec::len),
            Some(1)
        );
        let sidecar = &after["spec"]["initContainers"][1];
        assert_eq!(sidecar["name"], CONTAINER);
        let env: Vec<(&str, &str)> = sidecar["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().expect("name"),
                    e["value"].as_str().expect("value"),
                )
            })
            .collect();
        assert!(env.contains(&("TRELLIS_INBOUND_APP", "127.0.0.1:8080")));
        assert!(env.contains(&(
            "TRELLIS_SERVICE_ACCOUNT_TOKEN_FILE",
            "/var/run/secrets/trellis/token"
        )));
        let volumes = after["spec"]["volumes"].as_array().expect("volumes");
        let token = &volumes[0]["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], "trellis-ca");
        assert_eq!(token["expirationSeconds"], 3600);
        assert_eq!(volumes[1]["configMap"]["name"], "trellis-trust-bundle");
        assert_eq!(
            after["metadata"]["annotations"][INJECTED],
            env!("CARGO_PKG_VERSION")
        );
    }

    #[test]
    fn a_fingerprint_needs_no_bundle_volume() {
        let fingerprint = "ab".repeat(32);
        let settings = Settings {
            trust: Trust::Fingerprint(fingerprint.clone()),
            ..settings()
        };
        let before = pod(json!({}));
        let mut after = before.clone();
        let Ok(Plan::Inject(ops)) = plan(&before, "", None, &settings, Unannotated::Inject) else {
            panic!("injects");
        };
        apply(&mut after, &ops).expect("applies");
        let sidecar = &after["spec"]["initContainers"][1];
        assert!(
            sidecar["env"]
                .as_array()
                .expect("env")
                .contains(&json!({"name": "TRELLIS_TRUST_FINGERPRINT", "value": fingerprint}))
        );
        assert_eq!(after["spec"]["volumes"].as_array().map(Vec::len), Some(1));
        assert_eq!(sidecar["volumeMounts"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let once = inject(&pod(json!({})), Unannotated::Inject).expect("injects");
        assert_eq!(
            plan(&once, "", None, &settings(), Unannotated::Inject).expect("plans"),
            Plan::Skip(Skip::AlreadyInjected)
        );
    }

    #[test]
    fn opt_out_and_opt_in() {
        let out = pod(json!({INJECT: "disabled"}));
        assert_eq!(
            plan(&out, "", None, &settings(), Unannotated::Inject).expect("plans"),
            Plan::Skip(Skip::OptedOut)
        );
        let plain = pod(json!({}));
        assert_eq!(
            plan(&plain, "", None, &settings(), Unannotated::Skip).expect("plans"),
            Plan::Skip(Skip::NotRequested)
        );
        let asked = pod(json!({INJECT: "enabled"}));
        assert!(matches!(
            plan(&asked, "", None, &settings(), Unannotated::Skip),
            Ok(Plan::Inject(_))
        ));
        let owner = json!({"annotations": {INJECT: "disabled"}});
        assert_eq!(
            plan(&plain, "", Some(&owner), &settings(), Unannotated::Inject).expect("plans"),
            Plan::Skip(Skip::OptedOut)
        );
    }

    #[test]
    fn a_pod_without_metadata_or_volumes_gets_them() {
        let bare = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        let after = inject(&bare, Unannotated::Inject).expect("injects");
        assert_eq!(
            after["metadata"]["annotations"][INJECTED],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(after["spec"]["volumes"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn bad_pods_are_refused_with_a_reason() {
        let cases = [
            (pod(json!({APP_PORT: "http"})), "trellis.dev/inbound-port"),
            (pod(json!({INJECT: "yes"})), "expected \"enabled\""),
            (
                pod(json!({OUTBOUND: "127.0.0.1:1=x"})),
                "LISTEN=UPSTREAM=SPIFFE_ID",
            ),
            (
                pod(json!({CONFIG_MAP: "Bad_Name"})),
                "not a valid ConfigMap name",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 15006}]}]}}),
                "uses port 15006",
            ),
            (
                json!({"spec": {"containers": [], "volumes": [{"name": "trellis-token"}]}}),
                "trellis-token",
            ),
            (json!({"spec": 1}), "is not an object"),
        ];
        for (pod, expected) in cases {
            let e = inject(&pod, Unannotated::Inject)
                .expect_err(expected)
                .to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().expect("name"))
            .collect()
    }

    #[test]
    fn the_sidecar_is_native_after_capture_and_before_the_users_init_containers() {
        let mut before = pod(json!({}));
        before["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
        before["spec"]["shareProcessNamespace"] = json!(true);
        let after = inject(&before, Unannotated::Inject).expect("injects");
        assert_eq!(
            names(&after["spec"]["initContainers"]),
            ["trellis-init", CONTAINER, "migrate"]
        );
        assert_eq!(names(&after["spec"]["containers"]), ["app"]);
        let sidecar = &after["spec"]["initContainers"][1];
        assert_eq!(sidecar["restartPolicy"], "Always");
        assert_eq!(
            sidecar["startupProbe"]["exec"]["command"],
            json!([SIDECAR_BINARY, "probe-ready", "--admin", "127.0.0.1:15020"])
        );
        let init = &after["spec"]["initContainers"][0];
        assert_eq!(
            init["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        assert_eq!(init["args"][0], "init-network");
        assert!(init.get("restartPolicy").is_none(), "runs to completion");
        let env = &sidecar["env"];
        assert!(
            env.as_array()
                .expect("env")
                .contains(&json!({"name": "TRELLIS_INBOUND_CAPTURE", "value": "true"}))
        );
        // Re-injecting the injected pod changes nothing.
        assert_eq!(
            plan(&after, "", None, &settings(), Unannotated::Inject).expect("plans"),
            Plan::Skip(Skip::AlreadyInjected)
        );
    }

    #[test]
    fn older_clusters_get_a_plain_container_and_capture_can_be_turned_off() {
        let before = pod(json!({SIDECAR_MODE: "container", "trellis.dev/capture": "disabled"}));
        let after = inject(&before, Unannotated::Inject).expect("injects");
        assert_eq!(names(&after["spec"]["containers"]), ["app", CONTAINER]);
        assert!(after["spec"].get("initContainers").is_none());
        let sidecar = &after["spec"]["containers"][1];
        assert!(sidecar.get("restartPolicy").is_none());
        assert!(
            !sidecar["env"]
                .as_array()
                .expect("env")
                .iter()
                .any(|e| e["name"] == "TRELLIS_INBOUND_CAPTURE"
                    || e["name"] == "TRELLIS_INBOUND_LISTEN")
        );
        let e = inject(&pod(json!({SIDECAR_MODE: "sidecar"})), Unannotated::Inject)
            .expect_err("bad mode")
            .to_string();
        assert!(e.contains("expected \"native\" or \"container\""), "{e}");
    }

    #[test]
    fn probes_under_capture_go_through_the_sidecar() {
        let mut before = pod(json!({}));
        before["spec"]["containers"][0]["readinessProbe"] =
            json!({"httpGet": {"path": "/healthz", "port": 8080}});
        let after = inject(&before, Unannotated::Inject).expect("injects");
        assert_eq!(
            after["spec"]["containers"][0]["readinessProbe"]["httpGet"],
            json!({"path": "/app-health/app/readyz", "port": ADMIN_PORT})
        );
        let probes = after["spec"]["initContainers"][1]["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "TRELLIS_APP_PROBES")
            .and_then(|e| e["value"].as_str())
            .expect("probes handed to the sidecar")
            .to_owned();
        assert_eq!(
            serde_json::from_str::<Value>(&probes).expect("json"),
            json!({"app/readyz": {"httpGet": {"port": 8080, "path": "/healthz"}}})
        );
    }

    #[test]
    fn host_network_pods_are_left_alone() {
        let p = json!({"spec": {"hostNetwork": true, "containers": []}});
        assert_eq!(
            plan(&p, "", None, &settings(), Unannotated::Inject).expect("plans"),
            Plan::Skip(Skip::HostNetwork)
        );
    }
}
