//! deploy/: rendered by kustomize, valid against the Kubernetes schemas, and every config
//! file, flag and environment variable handed to a Trellis binary accepted by it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use trellis_e2e::{command, run};

use crate::tools::{
    KUBERNETES_VERSIONS, TOOL_TIMEOUT, assert_valid, container, describe, documents, env,
    kustomize, pod_of, validate,
};

/// The kustomizations a user applies.
const KUSTOMIZATIONS: [&str; 5] = [
    "deploy/base",
    "deploy/overlays/import",
    "deploy/overlays/ha",
    "deploy/webhook",
    "deploy/examples/demo",
];

#[test]
fn every_kustomization_renders_to_valid_kubernetes_objects() {
    for dir in KUSTOMIZATIONS {
        let yaml = kustomize(dir);
        assert!(!documents(&yaml).is_empty(), "{dir} renders nothing");
        assert_valid(dir, &yaml);
    }
}

/// Every container of every rendered workload has CPU and memory requests and limits (the
/// sidecar sizes its thread count from its CPU limit; without limits a container may take
/// a node's CPU from its neighbours), and every long-running container has readiness and
/// liveness probes. Init containers run to completion: resources, no probes.
#[test]
fn every_container_has_requests_limits_and_probes() {
    let mut checked = 0;
    for dir in KUSTOMIZATIONS {
        for doc in documents(&kustomize(dir)) {
            let Some(pod) = pod_of(&doc) else { continue };
            for (list, probed) in [("containers", true), ("initContainers", false)] {
                for c in pod["spec"][list].as_array().into_iter().flatten() {
                    let what = format!("{dir}: {} {list} {}", describe(&doc), c["name"]);
                    for kind in ["requests", "limits"] {
                        for resource in ["cpu", "memory"] {
                            let value = &c["resources"][kind][resource];
                            assert!(
                                value.is_string() || value.is_number(),
                                "{what}: no {kind}.{resource}"
                            );
                        }
                    }
                    if probed {
                        for probe in ["readinessProbe", "livenessProbe"] {
                            assert!(c[probe].is_object(), "{what}: no {probe}");
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    // The CA (and its import init container), two injectors' template, four demo containers.
    assert!(checked >= 7, "only {checked} containers found");
}

#[test]
fn the_validator_rejects_what_the_api_server_would() {
    // Without this, a validator that accepts anything would pass the test above.
    let yaml = kustomize("deploy/base");
    let mut docs = documents(&yaml);
    let set = docs
        .iter_mut()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("the CA StatefulSet");
    set["spec"]["replicas"] = Value::from("one");
    set["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = Value::from(true);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, serde_yaml::to_string(set).expect("yaml")).expect("write");
    for version in KUBERNETES_VERSIONS {
        let outcome = validate(&file, version);
        assert_ne!(outcome.code, Some(0), "the validator accepted {yaml}");
        let words = format!("{}{}", outcome.stdout, outcome.stderr);
        assert!(words.contains("replicas"), "{words}");
    }
}

#[test]
fn the_ca_runs_as_a_hardened_statefulset_with_a_volume() {
    let docs = documents(&kustomize("deploy/base"));
    let set = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "trellis-ca")
        .expect("StatefulSet trellis-ca");
    assert_eq!(set["metadata"]["namespace"], "trellis-system");
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let ca = container(&set["spec"]["template"], "trellis-ca").expect("container");
    assert_eq!(ca["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(ca["resources"]["requests"]["cpu"].is_string());
    assert!(ca["resources"]["limits"]["memory"].is_string());
    assert!(ca["readinessProbe"].is_object() && ca["livenessProbe"].is_object());
    let data_mount = ca["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "data")
        .expect("data volume mount");
    assert_eq!(data_mount["mountPath"], "/var/lib/trellis");
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .expect("ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        "system:service-account-issuer-discovery"
    );
    assert_eq!(binding["subjects"][0]["name"], "trellis-ca");
}

#[test]
fn the_demo_pods_carry_the_sidecar_token_and_config() {
    let docs = documents(&kustomize("deploy/examples/demo"));
    let mut seen = 0;
    for doc in &docs {
        let Some(pod) = pod_of(doc) else { continue };
        seen += 1;
        let sidecar = container(pod, "trellis-sidecar")
            .unwrap_or_else(|| panic!("{} has no sidecar", describe(doc)));
        let env: BTreeMap<_, _> = env(sidecar).into_iter().collect();
        assert_eq!(
            env.get("TRELLIS_SERVICE_ACCOUNT_TOKEN_FILE")
                .map(String::as_str),
            Some("/var/run/secrets/trellis/token")
        );
        let token = pod["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find_map(|v| v.pointer("/projected/sources/0/serviceAccountToken"))
            .expect("projected token volume");
        assert_eq!(token["audience"], "trellis-ca");
        assert_eq!(token["expirationSeconds"], 3600);
        assert!(env.contains_key("TRELLIS_CONFIG"), "{}", describe(doc));
    }
    assert_eq!(seen, 2, "two services");
}

/// Which Trellis binary an image holds.
fn binary_of(image: &str) -> Option<&'static str> {
    let repository = image.split(':').next()?;
    match repository.rsplit('/').next()? {
        "ca" if repository.starts_with("trellis/") => Some("trellis-ca"),
        "sidecar" if repository.starts_with("trellis/") => Some("trellis-sidecar"),
        "injector" if repository.starts_with("trellis/") => Some("trellis-injector"),
        _ => None,
    }
}

/// One Trellis container as the manifests start it, with ConfigMap files materialised in a
/// temp dir and their paths rewritten to it.
struct Invocation {
    what: String,
    binary: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Invocation {
    fn command(&self, extra_env: &[(&str, &str)]) -> Command {
        let mut cmd = command(self.binary);
        cmd.args(&self.args).arg("--check-config");
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.envs(extra_env.iter().copied());
        cmd
    }
}

fn invocations(docs: &[Value], scratch: &Path) -> Vec<Invocation> {
    let config_maps: BTreeMap<&str, &Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .filter_map(|d| Some((d["metadata"]["name"].as_str()?, &d["data"])))
        .collect();
    let mut found = Vec::new();
    for doc in docs {
        let Some(pod) = pod_of(doc) else { continue };
        let mut volumes = pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // A StatefulSet's claims are volumes of its pods too.
        for claim in doc["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            volumes.push(serde_json::json!({"name": claim["metadata"]["name"]}));
        }
        // An init container that runs a command of its own (the import overlay's copy step)
        // does not start the image's binary.
        let init = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["command"].is_null());
        for c in pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(init)
        {
            let Some(binary) = c["image"].as_str().and_then(binary_of) else {
                continue;
            };
            let what = format!("{} container {}", describe(doc), c["name"]);
            assert!(
                c["command"].is_null(),
                "{what}: the image's entrypoint is the binary; use args"
            );
            let mut rewrites = Vec::new();
            for mount in c["volumeMounts"].as_array().into_iter().flatten() {
                let volume = volumes
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap_or_else(|| panic!("{what}: mount of an undeclared volume"));
                let Some(name) = volume.pointer("/configMap/name").and_then(Value::as_str) else {
                    continue;
                };
                // Trust bundles are published by the operator, not shipped in deploy/.
                let Some(data) = config_maps.get(name) else {
                    continue;
                };
                let dir = scratch.join(format!("{}-{}", found.len(), name));
                std::fs::create_dir_all(&dir).expect("scratch dir");
                for (key, value) in data.as_object().into_iter().flatten() {
                    std::fs::write(dir.join(key), value.as_str().unwrap_or_default())
                        .expect("write config file");
                }
                let mount_path = mount["mountPath"].as_str().expect("mountPath");
                rewrites.push((format!("{mount_path}/"), format!("{}/", dir.display())));
            }
            let rewrite = |text: &str| {
                rewrites
                    .iter()
                    .fold(text.to_owned(), |t, (from, to)| t.replace(from, to))
            };
            found.push(Invocation {
                what,
                binary,
                args: c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| rewrite(a.as_str().expect("args are strings")))
                    .collect(),
                env: env(c).into_iter().map(|(k, v)| (k, rewrite(&v))).collect(),
            });
        }
    }
    found
}

#[test]
fn the_ca_accepts_every_setting_the_manifests_hand_it() {
    check_settings_of("trellis-ca");
}

#[test]
fn the_injector_accepts_every_setting_the_manifests_hand_it() {
    check_settings_of("trellis-injector");
}

#[test]
fn the_sidecar_accepts_every_setting_the_manifests_and_injection_hand_it() {
    check_settings_of("trellis-sidecar");
}

/// Runs every container of `binary` in deploy/ through `--check-config` with exactly the
/// args, env and config files the manifests give it.
fn check_settings_of(binary: &str) {
    let scratch = tempfile::tempdir().expect("scratch");
    let mut docs = Vec::new();
    for dir in KUSTOMIZATIONS {
        docs.extend(documents(&kustomize(dir)));
    }
    let found: Vec<Invocation> = invocations(&docs, scratch.path())
        .into_iter()
        .filter(|i| i.binary == binary)
        .collect();
    assert!(!found.is_empty(), "no {binary} container found in deploy/");
    for invocation in &found {
        // Every TRELLIS_* variable must be one the binary reads: clap lists them in --help.
        // TRELLIS_LOG (the log filter) is read by the logger, not by clap.
        let mut help = command(invocation.binary);
        help.args(invocation.args.iter().take_while(|a| !a.starts_with('-')))
            .arg("--help");
        let help = run(help, TOOL_TIMEOUT).success().stdout;
        for (name, _) in &invocation.env {
            if name.starts_with("TRELLIS_") && name != "TRELLIS_LOG" {
                assert!(
                    help.contains(&format!("[env: {name}")),
                    "{}: {} does not read {name} (not in its --help)",
                    invocation.what,
                    invocation.binary
                );
            }
        }
        let outcome = run(invocation.command(&[]), TOOL_TIMEOUT);
        assert_eq!(
            outcome.code,
            Some(0),
            "{}: `{} --check-config` refused what the manifest hands it:\n{}{}",
            invocation.what,
            invocation.binary,
            outcome.stdout,
            outcome.stderr
        );
        // And the check is real: one bad value makes the same command fail.
        let init_network = invocation.args.first().is_some_and(|a| a == "init-network");
        let bad = match invocation.binary {
            "trellis-injector" => {
                let mut cmd = invocation.command(&[]);
                cmd.arg("--image-pull-policy=Sometimes");
                run(cmd, TOOL_TIMEOUT)
            }
            "trellis-sidecar" if init_network => {
                let mut cmd = invocation.command(&[]);
                cmd.arg("--skip-inbound-cidrs=10.0.0.0/99");
                run(cmd, TOOL_TIMEOUT)
            }
            _ => run(
                invocation.command(&[("TRELLIS_LOG_FORMAT", "xml")]),
                TOOL_TIMEOUT,
            ),
        };
        assert_ne!(
            bad.code,
            Some(0),
            "{}: `{} --check-config` accepts a bad value, so it checks nothing",
            invocation.what,
            invocation.binary
        );
    }
}

/// The cert-manager overlay: the Kubernetes objects stay valid, and cert-manager's (its
/// CRDs, which the validator does not know) fit together: the webhook configuration's
/// `inject-ca-from` names a Certificate for the Service every webhook calls, stored in the
/// Secret the injector mounts, issued by a CA Issuer whose CA is itself a Certificate (so a
/// renewed serving certificate never changes the caBundle).
#[test]
fn the_cert_manager_overlay_issues_the_serving_certificate_and_fills_the_ca_bundle() {
    let docs = documents(&kustomize("deploy/overlays/cert-manager"));
    let (cert_manager, core): (Vec<Value>, Vec<Value>) = docs.into_iter().partition(|d| {
        d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("cert-manager.io/"))
    });
    let yaml: Vec<String> = core
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect();
    assert_valid("deploy/overlays/cert-manager", &yaml.join("---\n"));
    let find = |kind: &str, name: &str| {
        cert_manager
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the overlay"))
    };

    let webhook = core
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("the webhook configuration");
    let inject_from = webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .expect("the overlay annotates the webhook configuration");
    let (namespace, name) = inject_from.split_once('/').expect("namespace/name");
    let certificate = find("Certificate", name);
    assert_eq!(certificate["metadata"]["namespace"], namespace);
    let dns_names = certificate["spec"]["dnsNames"]
        .as_array()
        .expect("dnsNames");
    for hook in webhook["webhooks"].as_array().expect("webhooks") {
        let service = &hook["clientConfig"]["service"];
        let host = format!(
            "{}.{}.svc",
            service["name"].as_str().expect("service name"),
            service["namespace"].as_str().expect("service namespace")
        );
        assert!(dns_names.contains(&Value::from(host.clone())), "{host}");
    }

    let injector = core
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "trellis-injector")
        .expect("the injector Deployment");
    assert_eq!(injector["metadata"]["namespace"], namespace);
    let mounted: Vec<&Value> = injector["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.pointer("/secret/secretName"))
        .collect();
    assert!(
        mounted.contains(&&certificate["spec"]["secretName"]),
        "the injector mounts {mounted:?}, not {}",
        certificate["spec"]["secretName"]
    );

    let issuer_name = certificate["spec"]["issuerRef"]["name"]
        .as_str()
        .expect("issuer");
    let issuer = find("Issuer", issuer_name);
    let ca_secret = &issuer["spec"]["ca"]["secretName"];
    let ca = cert_manager
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == *ca_secret)
        .expect("the CA Issuer's secret is a cert-manager Certificate");
    assert_eq!(ca["spec"]["isCA"], true);
    let root = find(
        "Issuer",
        ca["spec"]["issuerRef"]["name"].as_str().expect("issuer"),
    );
    assert!(root["spec"]["selfSigned"].is_object());

    // Without the overlay there is no annotation: the base leaves caBundle to the user.
    let base = documents(&kustomize("deploy/webhook"));
    let plain = base
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook configuration");
    assert!(plain["metadata"]["annotations"].is_null());
}
