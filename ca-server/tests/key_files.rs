//! Every path on which the CA reads a private key refuses a key file that group or others
//! can read (`identity::files::read_secret`), with a message that says `chmod 600`, and
//! works again once the mode is fixed: the intermediate key at start, an import directory,
//! and a root key at activation.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use tonic::Code;
use trellis_identity::clock::SystemClock;
use trellis_identity::profile::{SigningCa, new_intermediate, new_root};
use trellis_identity::{TrustDomain, files, pem};
use trellis_proto::admin::v1::{ActivateRootRequest, AddRootRequest};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The files in `<data>/keys` whose name starts with `prefix`.
fn keys(data_dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("keys"))
        .expect("keys dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect()
}

fn assert_refused(err: impl std::fmt::Display, path: &Path) {
    let text = err.to_string();
    assert!(text.contains("chmod 600"), "{text}");
    assert!(
        text.contains(&path.display().to_string()) || text.contains("key"),
        "{text}"
    );
}

#[tokio::test]
async fn a_group_or_world_readable_intermediate_key_stops_the_ca_at_start() {
    let mut ca = TestCa::start().await;
    ca.running
        .take()
        .expect("running")
        .shutdown()
        .await
        .expect("stop");
    let key = keys(&ca.data_dir(), "intermediate-")
        .pop()
        .expect("key file");
    assert_eq!(
        std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777,
        0o600,
        "written 0600"
    );
    for mode in [0o640, 0o604] {
        chmod(&key, mode);
        let err = trellis_ca::start_with_clock(config_for(ca.data_dir()), Arc::new(SystemClock))
            .await
            .expect_err("refused");
        assert_refused(err, &key);
    }
    chmod(&key, 0o600);
    ca.running = Some(
        trellis_ca::start_with_clock(config_for(ca.data_dir()), Arc::new(SystemClock))
            .await
            .expect("starts once the key is 0600"),
    );
    ca.bootstrap("/ns/a/sa/after").await;
}

#[tokio::test]
async fn an_import_directory_with_a_readable_key_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let import = dir.path().join("import");
    std::fs::create_dir(&import).expect("mkdir");
    let td = TrustDomain::new("cluster.local").expect("td");
    let now = SystemTime::now();
    let year = Duration::from_secs(365 * 86_400);
    let root = new_root(&td, now, 10 * year).expect("root");
    let root_key_pem = root.key.serialize_pem();
    let root_signer = SigningCa::new(root.cert.clone(), root.key).expect("root signer");
    let inter = new_intermediate(&td, &root_signer, now, year).expect("intermediate");
    std::fs::write(import.join("root.pem"), pem::certs_to_pem(&[&root.cert])).expect("root");
    std::fs::write(
        import.join("intermediate.pem"),
        pem::certs_to_pem(&[&inter.cert]),
    )
    .expect("intermediate");
    let inter_key = import.join("intermediate.key.pem");
    let root_key = import.join("root.key.pem");
    files::write_atomic(&inter_key, inter.key.serialize_pem().as_bytes(), 0o644).expect("key");
    files::write_atomic(&root_key, root_key_pem.as_bytes(), 0o644).expect("key");

    let start = |data: &str| {
        let mut config = config_for(dir.path().join(data));
        config.import_dir = Some(import.clone());
        trellis_ca::start_with_clock(config, Arc::new(SystemClock))
    };
    assert_refused(start("a").await.expect_err("refused"), &inter_key);
    chmod(&inter_key, 0o600);
    assert_refused(start("b").await.expect_err("refused"), &root_key);
    chmod(&root_key, 0o600);
    start("c")
        .await
        .expect("imports once both keys are 0600")
        .shutdown()
        .await
        .expect("stop");
}

#[tokio::test]
async fn activating_a_root_whose_key_is_readable_is_unavailable() {
    let ca = TestCa::start().await;
    let mut admin = ca.admin().await;
    let before = keys(&ca.data_dir(), "root-");
    let new_root = admin
        .add_root(AddRootRequest::default())
        .await
        .expect("add")
        .into_inner();
    let key = keys(&ca.data_dir(), "root-")
        .into_iter()
        .find(|k| !before.contains(k))
        .expect("the new root's key file");
    chmod(&key, 0o640);
    let activate = ActivateRootRequest {
        root_id: new_root.id.clone(),
        force: true,
    };
    let status = admin
        .activate_root(activate.clone())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_refused(status.message(), &key);
    chmod(&key, 0o600);
    admin.activate_root(activate).await.expect("activates");
}
