//! Every failure exits non-zero with one line on stderr that names the problem and the fix.

use crate::common::{User, path_str};
use trellis_e2e::Ca;

#[test]
fn no_ca_listening_exits_1_naming_the_address() {
    let mut ca = Ca::start();
    let user = User::logged_in(&ca);
    ca.stop();
    let line = user.trellis(&["ca", "status"]).failure(1);
    assert!(line.contains(&ca.addr.to_string()), "{line}");
    assert!(line.contains("cannot reach the CA"), "{line}");
    assert!(line.contains("connection refused"), "{line}");
}

#[test]
fn an_admin_certificate_from_another_ca_is_refused_in_one_line() {
    let ca = Ca::start();
    let user = User::new();
    let other = user.path("other-ca");
    user.trellis(&["ca", "init", "--dir", path_str(&other)])
        .success();
    let outcome = user.trellis(&[
        "cert",
        "list",
        "--ca-addr",
        &ca.addr.to_string(),
        "--bundle",
        path_str(&ca.admin_dir.join("bundle.pem")),
        "--admin-cert",
        path_str(&other.join("admin.pem")),
        "--admin-key",
        path_str(&other.join("admin.key.pem")),
    ]);
    let line = outcome.failure(1);
    assert!(line.contains("refused admin certificate"), "{line}");
    assert!(line.contains("does not chain"), "{line}");
    assert!(line.contains("trellis login"), "{line}");
}

#[test]
fn missing_credentials_are_a_configuration_error() {
    let ca = Ca::start();
    let user = User::new();
    let line = user
        .trellis(&["ca", "status", "--ca-addr", &ca.addr.to_string()])
        .failure(2);
    assert!(line.contains("no admin certificate configured"), "{line}");
    assert!(line.contains("trellis login"), "{line}");
    let line = user
        .trellis(&[
            "ca",
            "status",
            "--ca-addr",
            &ca.addr.to_string(),
            "--admin-cert",
            path_str(&user.path("missing.pem")),
            "--admin-key",
            path_str(&ca.admin_dir.join("admin.key.pem")),
            "--bundle",
            path_str(&ca.admin_dir.join("bundle.pem")),
        ])
        .failure(2);
    assert!(line.contains("missing.pem"), "{line}");
}

#[test]
fn an_unknown_serial_exits_1() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let line = user
        .trellis(&["cert", "show", "0123456789abcdef"])
        .failure(1);
    assert!(
        line.contains("no certificate with serial 0123456789abcdef"),
        "{line}"
    );
    let json_mode = user.trellis(&["cert", "show", "0123456789abcdef", "-o", "json"]);
    json_mode.failure(1);
    assert!(json_mode.stdout.is_empty(), "{}", json_mode.stdout);
}

#[test]
fn an_invalid_spiffe_id_is_refused_naming_the_rule() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let line = user
        .trellis(&["token", "create", "--spiffe-id", "http://cluster.local/web"])
        .failure(2);
    assert!(line.contains("must start with \"spiffe://\""), "{line}");
    let line = user
        .trellis(&[
            "cert",
            "issue",
            "--spiffe-id",
            "spiffe://cluster.local/a//b",
            "--out",
            path_str(&user.path("x")),
        ])
        .failure(2);
    assert!(line.contains("empty segment"), "{line}");
    let line = user
        .trellis(&["cert", "list", "--identity", "spiffe://Cluster.local/a"])
        .failure(2);
    assert!(line.contains("lowercase"), "{line}");
    // Valid syntax that the CA refuses by policy is an operation failure naming the rule.
    let line = user
        .trellis(&[
            "token",
            "create",
            "--spiffe-id",
            "spiffe://cluster.local/trellis/admin/me",
        ])
        .failure(1);
    assert!(line.contains("reserved"), "{line}");
}

#[test]
fn a_group_readable_admin_key_is_refused_naming_chmod() {
    use std::os::unix::fs::PermissionsExt;
    let ca = Ca::start();
    let user = User::new();
    let key = user.path("admin.key.pem");
    std::fs::copy(ca.admin_dir.join("admin.key.pem"), &key).expect("copy key");
    let args = |key: &str| {
        vec![
            "ca".to_owned(),
            "status".into(),
            "--ca-addr".into(),
            ca.addr.to_string(),
            "--admin-cert".into(),
            path_str(&ca.admin_dir.join("admin.pem")).into(),
            "--admin-key".into(),
            key.into(),
            "--bundle".into(),
            path_str(&ca.admin_dir.join("bundle.pem")).into(),
        ]
    };
    for mode in [0o640, 0o644] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let line = user.trellis(&args(path_str(&key))).failure(2);
        assert!(line.contains("chmod 600"), "{line}");
        assert!(line.contains(path_str(&key)), "{line}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    user.trellis(&args(path_str(&key))).success();
}

/// `--out` names a directory; the file names in it are fixed, so a path from the CA can
/// never steer a write. A symlink planted where the key goes is refused as an existing
/// file, and with --force it is replaced, never written through.
#[test]
fn a_symlink_planted_in_the_output_directory_is_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let out = user.path("out");
    std::fs::create_dir(&out).expect("mkdir");
    let victim = user.path("victim");
    std::fs::write(&victim, "untouched").expect("victim");
    std::os::unix::fs::symlink(&victim, out.join("svid_key.pem")).expect("symlink");
    let issue = |force: bool| {
        let mut args = vec![
            "cert",
            "issue",
            "--spiffe-id",
            "spiffe://cluster.local/ext/x",
            "--out",
            path_str(&out),
        ];
        if force {
            args.push("--force");
        }
        user.trellis(&args)
    };
    let line = issue(false).failure(2);
    assert!(line.contains("svid_key.pem"), "{line}");
    assert!(line.contains("--force"), "{line}");
    issue(true).success();
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "untouched"
    );
    let meta = std::fs::symlink_metadata(out.join("svid_key.pem")).expect("key");
    assert!(meta.file_type().is_file(), "the symlink was replaced");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}
