//! The real binary accepts the annotated reference configuration, and refuses a bad one
//! with exit code 2 and one line naming the setting.

use std::process::Command;

#[test]
fn the_annotated_example_config_is_accepted() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/sidecar.example.toml"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_trellis-sidecar"))
        .args(["--config", example, "--check-config"])
        .output()
        .expect("binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("spiffe://cluster.local/ns/demo/sa/backend"),
        "{stdout}"
    );
}

#[test]
fn post_quantum_is_preferred_by_default_and_required_by_the_environment() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/sidecar.example.toml"
    );
    for (env, expected) in [
        (None, "PostQuantumPreferred"),
        (Some("true"), "PostQuantumRequired"),
        (Some("false"), "PostQuantumPreferred"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trellis-sidecar"));
        cmd.args(["--config", example, "--check-config"])
            .env_remove("TRELLIS_REQUIRE_POST_QUANTUM");
        if let Some(value) = env {
            cmd.env("TRELLIS_REQUIRE_POST_QUANTUM", value);
        }
        let output = cmd.output().expect("binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{env:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(&format!("key_exchange: {expected}")),
            "{env:?}: {stdout}"
        );
    }
}

#[test]
fn a_bad_value_exits_2_with_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[ca]\naddress = \"127.0.0.1:1\"\ntrust_bundle = \"b.pem\"\n[timeouts]\nidle = \"soon\"\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_trellis-sidecar"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("timeouts.idle"), "{stderr}");
}
