//! Where connection settings come from, and how output adapts to where it goes.

use crate::common::{CLI_TIMEOUT, User, issue};
use trellis_e2e::{Ca, run};

#[test]
fn environment_variables_work_without_a_context_and_flags_override_it() {
    let ca = Ca::start();
    let admin = |name: &str| ca.admin_dir.join(name).to_str().expect("UTF-8").to_owned();
    let addr = ca.addr.to_string();
    let stranger = User::new();
    let status = stranger
        .trellis_with_env(
            &["ca", "status", "-o", "json"],
            &[
                ("TRELLIS_CA_ADDR", addr.as_str()),
                ("TRELLIS_ADMIN_CERT", admin("admin.pem").as_str()),
                ("TRELLIS_ADMIN_KEY", admin("admin.key.pem").as_str()),
                ("TRELLIS_BUNDLE", admin("bundle.pem").as_str()),
            ],
        )
        .success()
        .json();
    assert_eq!(status["ca_addr"], addr.as_str());
    assert!(
        !stranger.context_file().exists(),
        "nothing saved without login"
    );

    // A flag beats the saved context: this address has nobody listening.
    let user = User::logged_in(&ca);
    let line = user
        .trellis(&["ca", "status", "--ca-addr", "127.0.0.1:1"])
        .failure(1);
    assert!(line.contains("127.0.0.1:1"), "{line}");
    // And so does an environment variable.
    let line = user
        .trellis_with_env(&["ca", "status"], &[("TRELLIS_CA_ADDR", "127.0.0.1:1")])
        .failure(1);
    assert!(line.contains("127.0.0.1:1"), "{line}");
}

/// `--context ctx.toml`: a bare file name, relative to the working directory, whose parent
/// is the empty path (the atomic write once tried to fsync that and failed after writing).
#[test]
fn login_writes_a_context_file_given_as_a_bare_relative_name() {
    let ca = Ca::start();
    let user = User::new();
    let mut cmd = user.command();
    cmd.current_dir(user.home.path()).args([
        "login",
        "--context",
        "ctx.toml",
        "--ca-addr",
        &ca.addr.to_string(),
        "--admin-dir",
        ca.admin_dir.to_str().expect("UTF-8"),
    ]);
    let login = run(cmd, CLI_TIMEOUT).success();
    assert!(login.stdout.contains("Logged in"), "{}", login.stdout);
    let saved = std::fs::read_to_string(user.path("ctx.toml")).expect("ctx.toml written");
    assert!(
        saved.contains(&format!("ca_addr = \"{}\"", ca.addr)),
        "{saved}"
    );
    let names: Vec<_> = std::fs::read_dir(user.home.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("ctx.toml")],
        "no temp file left"
    );
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let out = user.path("out");
    issue(&user, "spiffe://cluster.local/ext/tty", &out);
    let trellis = trellis_e2e::binary("trellis");
    let line = format!(
        "{} inspect {}",
        trellis.display(),
        out.join("svid.pem").display()
    );
    // `script` runs the command on a pseudo-terminal, as an interactive shell would.
    let on_tty = |no_color: Option<&str>| -> String {
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env("HOME", user.home.path())
            .env("TRELLIS_CONTEXT", user.context_file())
            .env_remove("NO_COLOR");
        if let Some(value) = no_color {
            cmd.env("NO_COLOR", value);
        }
        run(cmd, CLI_TIMEOUT).success().stdout
    };
    let coloured = on_tty(None);
    assert!(
        coloured.contains("\x1b[32mverifies against"),
        "{coloured:?}"
    );
    let plain = on_tty(Some("1"));
    assert!(plain.contains("verifies against"), "{plain:?}");
    assert!(!plain.contains('\x1b'), "{plain:?}");
}
