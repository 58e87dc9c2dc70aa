//! The Python interpreter of the test venv (`target/py-tools`, made by
//! `scripts/install-test-deps.sh`), which holds independent clients: gRPC's C core
//! (`grpcio`, `grpcio-tools`) and the Prometheus text parser (`prometheus-client`).

use std::path::{Path, PathBuf};

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
