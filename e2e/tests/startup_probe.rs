//! The native sidecar's startup probe as the kubelet runs it (an exec of `trellis-sidecar
//! probe-ready`): it fails while the sidecar holds no certificate, printing why, which the
//! kubelet puts into the pod's events, and passes once a certificate is held.

mod mesh_support;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_support::*;
use trellis_e2e::{Ca, Outcome, Process, command, run};

fn probe(admin: SocketAddr) -> Outcome {
    let mut cmd = command("trellis-sidecar");
    cmd.args(["probe-ready", "--admin", &admin.to_string()]);
    run(cmd, Duration::from_secs(30))
}

#[test]
fn the_startup_probe_fails_naming_the_cause_until_a_certificate_is_held() {
    let mut ca = Ca::start();
    let token = token_file(&ca, &id("/ns/demo/sa/web"));
    let config = ca.scratch().join("unready.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"{TD}\"\n\n[ca]\naddress = \"{}\"\ntrust_bundle = \"{}\"\n\
             join_token_file = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            ca.addr,
            ca.bundle_pem().display(),
            token.display()
        ),
    )
    .expect("write config");
    // The CA goes away before the sidecar's first attempt.
    ca.kill();
    let ready_file = trellis_e2e::ready_path(ca.scratch(), "unready");
    let mut cmd = command("trellis-sidecar");
    cmd.arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready_file);
    let mut unready = Process::spawn("unready", cmd, ca.scratch());
    let admin = unready
        .wait_for_ready(&ready_file, START)
        .addr("admin")
        .expect("admin");
    let mut last = None;
    within(Duration::from_secs(30), "the probe names the cause", || {
        let outcome = probe(admin);
        let named = outcome.code == Some(1) && outcome.stdout.contains("CA unreachable");
        last = Some(outcome);
        named
    });
    let last = last.expect("probed");
    assert!(
        last.stdout
            .starts_with("not ready: no certificate yet: CA unreachable"),
        "{}",
        last.stdout
    );

    // Nothing listening at all: not ready either, and it says so.
    drop(unready);
    let gone = probe(admin);
    assert_eq!(gone.code, Some(1));
    assert!(gone.stdout.contains("not answering"), "{}", gone.stdout);

    // With a CA that answers, the probe passes.
    ca.restart();
    let ready = sidecar(&ca, "ready", &id("/ns/demo/sa/api"), "", "");
    let ok = probe(ready.admin);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert_eq!(ok.stdout.trim(), "ready");
}
