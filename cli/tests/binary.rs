//! The built `trellis` binary answers as a user expects before any CA exists. (Having an
//! integration test also makes `cargo test` build the binary with the test feature set,
//! which the end-to-end tests in `e2e/` then run.)

use std::process::Command;

#[test]
fn version_and_a_usage_error() {
    let version = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("--version")
        .output()
        .expect("binary runs");
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("trellis "));

    let usage = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["cert", "revoke"])
        .output()
        .expect("binary runs");
    assert_eq!(
        usage.status.code(),
        Some(2),
        "missing argument is a usage error"
    );
}
