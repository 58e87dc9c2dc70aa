//! The Python interpreter of the test venv (`target/py-tools`, made by
//! `scripts/install-test-deps.sh`), which holds independent clients: gRPC's C core
//! (`grpcio`, `grpcio-tools`), the Prometheus text parser (`prometheus-client`), and PyJWT
//! with `cryptography`, which mint Kubernetes service-account tokens
//! (`scripts/test-support/sa_tokens.py`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the workspace")
        .to_path_buf()
}

/// `target/py-tools/bin/python3`, failing the test with the fix if it is missing.
pub fn python() -> PathBuf {
    let python = workspace().join("target/py-tools/bin/python3");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/install-test-deps.sh",
        python.display()
    );
    python
}

/// Runs `scripts/test-support/sa_tokens.py` with `spec` (see the script) and returns its
/// answer: `{"jwks": JWK Set, "tokens": {name: token}}`.
pub fn mint_sa_tokens(spec: &serde_json::Value) -> serde_json::Value {
    let mut child = Command::new(python())
        .arg(workspace().join("scripts/test-support/sa_tokens.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sa_tokens.py");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(spec.to_string().as_bytes())
        .expect("write the spec");
    drop(stdin);
    let out = child.wait_with_output().expect("sa_tokens.py");
    assert!(
        out.status.success(),
        "sa_tokens.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from sa_tokens.py")
}
