//! deploy/overlays/import: a root made offline with `trellis ca init` reaches the CA through
//! a Secret. The kubelet leaves Secret files group-readable (0440 with the pod's fsGroup),
//! which the CA rightly refuses for a key; the overlay's init container copies them with
//! mode 0600. Here the init container's own command runs on files laid out as the kubelet
//! lays them out, and the real `trellis-ca` then imports the result.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use trellis_e2e::{Ca, command, run};

use crate::tools::{TOOL_TIMEOUT, documents, kustomize};

const SECRET_DIR: &str = "/var/run/trellis/import-secret";
const IMPORT_DIR: &str = "/var/run/trellis/import";

#[test]
fn the_import_overlay_hands_the_ca_a_key_it_accepts() {
    let docs = documents(&kustomize("deploy/overlays/import"));
    let set = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("the CA StatefulSet");
    let init = &set["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["command"], serde_json::json!(["/bin/sh", "-c"]));
    let script = init["args"][0].as_str().expect("the init script");
    let ca = set["spec"]["template"]["spec"]["containers"][0].clone();
    assert!(
        ca["env"]
            .as_array()
            .expect("env")
            .contains(&serde_json::json!({"name": "TRELLIS_IMPORT_DIR", "value": IMPORT_DIR}))
    );

    // The operator's offline step.
    let scratch = tempfile::tempdir().expect("scratch");
    let offline = scratch.path().join("offline");
    let mut init_cmd = command("trellis");
    init_cmd.args(["ca", "init", "--dir"]).arg(&offline);
    run(init_cmd, TOOL_TIMEOUT).success();

    // What the kubelet mounts from the Secret (without the root key, which stays offline).
    let secret = scratch.path().join("secret");
    std::fs::create_dir(&secret).expect("secret dir");
    for name in ["root.pem", "intermediate.pem", "intermediate.key.pem"] {
        std::fs::copy(offline.join(name), secret.join(name)).expect("copy");
        std::fs::set_permissions(secret.join(name), std::fs::Permissions::from_mode(0o440))
            .expect("chmod");
    }
    let import = scratch.path().join("import");
    std::fs::create_dir(&import).expect("import dir");

    // Pointed at the Secret's files directly, the CA refuses the group-readable key...
    let mut direct = command("trellis-ca");
    direct
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.path().join("refused"))
        .arg("--import-dir")
        .arg(&secret);
    let refused = run(direct, TOOL_TIMEOUT);
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("readable by its owner only"),
        "{}",
        refused.stderr
    );

    // ...so the init container's command copies them, and the CA imports the copies.
    let local_script = script
        .replace(SECRET_DIR, &secret.display().to_string())
        .replace(IMPORT_DIR, &import.display().to_string());
    let mut sh = Command::new("/bin/sh");
    sh.args(["-c", &local_script]);
    run(sh, TOOL_TIMEOUT).success();
    let key_mode = std::fs::metadata(import.join("intermediate.key.pem"))
        .expect("copied key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let started = Ca::start_with(&[std::ffi::OsStr::new("--import-dir"), import.as_os_str()]);
    let bundle = std::fs::read_to_string(started.bundle_pem()).expect("bundle");
    let root = std::fs::read_to_string(offline.join("root.pem")).expect("root");
    assert!(
        bundle.contains(root.trim()),
        "the CA serves the imported root"
    );
}
