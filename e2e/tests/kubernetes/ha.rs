//! deploy/overlays/ha: three replicas of one CA on a PostgreSQL database the user brings,
//! spread across nodes, at least two always up, no volume of their own; the database URL
//! and the key-encryption key from Secrets, the KEK copied with mode 0600 by the init
//! container (the kubelet mounts it 0440), which is run here on files laid out as the
//! kubelet lays them out.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::{Value, json};
use trellis_e2e::run;

use crate::tools::{TOOL_TIMEOUT, container, documents, kustomize};

const SECRET_DIR: &str = "/var/run/trellis/kek-secret";
const KEK_DIR: &str = "/var/run/trellis/kek";

#[test]
fn the_ha_overlay_runs_three_spread_replicas_on_the_database_with_the_kek() {
    let docs = documents(&kustomize("deploy/overlays/ha"));
    assert!(
        !docs.iter().any(|d| d["kind"] == "StatefulSet"),
        "the one-replica StatefulSet is gone"
    );
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "trellis-ca")
        .expect("Deployment trellis-ca");
    assert_eq!(deployment["metadata"]["namespace"], "trellis-system");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pod = &deployment["spec"]["template"]["spec"];

    let budget = docs
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"], 2);
    assert_eq!(budget["spec"]["selector"]["matchLabels"], *labels);

    let per_node = |v: &Value| v["topologyKey"] == "kubernetes.io/hostname";
    let anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .expect("required anti-affinity");
    assert!(
        anti.iter()
            .any(|t| per_node(t) && t["labelSelector"]["matchLabels"] == *labels),
        "{anti:?}"
    );
    assert!(
        pod["topologySpreadConstraints"]
            .as_array()
            .expect("spread")
            .iter()
            .any(per_node)
    );

    // No persistent volume: scratch and the KEK's copy only.
    for volume in pod["volumes"].as_array().expect("volumes") {
        assert!(volume["persistentVolumeClaim"].is_null(), "{volume}");
    }
    let kek_secret = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["secret"]["secretName"] == "trellis-ca-kek")
        .expect("the KEK Secret volume");
    assert_eq!(kek_secret["secret"]["defaultMode"], 0o440);

    let ca = container(&deployment["spec"]["template"], "trellis-ca").expect("container");
    let store = ca["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "TRELLIS_STORE")
        .expect("TRELLIS_STORE");
    assert_eq!(
        store["valueFrom"]["secretKeyRef"],
        json!({"name": "trellis-ca-database", "key": "url"})
    );
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["ca.toml"].as_str())
        .expect("ca.toml");
    assert!(
        config.contains(&format!("key_encryption_key_file = \"{KEK_DIR}/kek\"")),
        "{config}"
    );

    // The init container's own command on the Secret as the kubelet mounts it.
    let init = &pod["initContainers"][0];
    let script = init["args"][0].as_str().expect("the init script");
    let scratch = tempfile::tempdir().expect("scratch");
    let secret = scratch.path().join("secret");
    let copy = scratch.path().join("kek");
    std::fs::create_dir(&secret).expect("secret dir");
    std::fs::create_dir(&copy).expect("kek dir");
    std::fs::write(
        secret.join("kek"),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    )
    .expect("kek");
    std::fs::set_permissions(secret.join("kek"), std::fs::Permissions::from_mode(0o440))
        .expect("chmod");
    let script = script
        .replace(SECRET_DIR, secret.to_str().expect("utf-8"))
        .replace(&format!("{KEK_DIR}/"), &format!("{}/", copy.display()));
    let mut sh = Command::new("/bin/sh");
    sh.args(["-c", &script]);
    run(sh, TOOL_TIMEOUT).success();
    let mode = std::fs::metadata(copy.join("kek"))
        .expect("the copied KEK")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read(copy.join("kek")).expect("read"),
        std::fs::read(secret.join("kek")).expect("read")
    );
}
