//! `trellis check` against the real `trellis-ca`: healthy (exit 0), an intermediate inside
//! the warning window (made real with the shortest intermediate the CA allows), an expired
//! admin certificate, and a CA whose store cannot write (a full tmpfs; needs root). Every
//! run is read both as JSON and as text. And `trellis-sidecar check` against a real
//! sidecar, before and after its CA goes away.

mod crash_support;
mod mesh_support;

use std::time::Duration;

use crash_support::CaAccess;
use serde_json::Value;
use trellis_e2e::{Ca, Outcome, Tmpfs, command, run};
use trellis_identity::WorkloadKey;
use trellis_proto::admin::v1::IssueCertificateRequest;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `trellis check ARGS` against `ca`, as JSON and as text; both must agree on the
/// exit code. Returns the JSON report, the text and the exit code.
fn check(ca: &Ca, args: &[&str]) -> (Value, String, i32) {
    let json = run_check(ca, &[args, &["-o", "json"]].concat());
    let text = run_check(ca, args);
    assert_eq!(json.code, text.code, "{json:?}\n{text:?}");
    let code = json.code.expect("exit code");
    let report: Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("--output json is not JSON ({e}): {json:?}"));
    assert_eq!(report["exit_code"], code, "{report}");
    (report, text.stdout, code)
}

fn run_check(ca: &Ca, args: &[&str]) -> Outcome {
    run(ca.admin_command(&[&["check"], args].concat()), TIMEOUT)
}

/// The verdicts of one check (by name, or name prefix for per-root checks).
fn verdicts<'a>(report: &'a Value, check: &str) -> Vec<&'a Value> {
    report["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .filter(|v| v["check"].as_str().is_some_and(|c| c.starts_with(check)))
        .collect()
}

fn level<'a>(report: &'a Value, check: &str) -> &'a str {
    let found = verdicts(report, check);
    assert_eq!(found.len(), 1, "one verdict for {check:?}: {report:#}");
    found[0]["level"].as_str().expect("level")
}

/// Writes a CA config file into a fresh temp dir that outlives the CA.
fn config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("ca.toml");
    std::fs::write(&path, text).expect("write config");
    let arg = path.display().to_string();
    (dir, arg)
}

#[test]
fn a_healthy_ca_passes_every_check_and_exits_0() {
    let ca = Ca::start();
    let (report, text, code) = check(&ca, &["--fail-on-warning"]);
    assert_eq!(code, 0, "{text}");
    for v in report["verdicts"].as_array().expect("verdicts") {
        assert_eq!(v["level"], "ok", "{v}");
    }
    for name in [
        "CA reachable",
        "admin certificate",
        "certificate store",
        "root ",
        "signing intermediate",
        "CA serving certificate",
        "root rotation",
        "bundle convergence",
        "workload renewals",
        "clock skew",
        "CRL",
    ] {
        assert!(!verdicts(&report, name).is_empty(), "{name}: {report:#}");
    }
    // Not a terminal: words, not marks, one line per verdict.
    assert!(
        text.lines().any(|l| l.starts_with("ok   CA reachable")),
        "{text}"
    );
    assert!(!text.contains('✔'), "{text}");
    assert!(text.contains("clock skew"), "{text}");
}

#[test]
fn an_intermediate_inside_the_warning_window_warns_and_exit_codes_follow_the_flags() {
    // 48 h is the shortest intermediate the CA accepts: inside a 30-day warning window.
    let (_dir, file) = config("intermediate_ttl = \"48h\"\n");
    let ca = Ca::start_with(&["--config", &file]);

    let (report, text, code) = check(&ca, &["--fail-within", "1d"]);
    assert_eq!(code, 0, "warnings alone exit 0: {text}");
    assert_eq!(level(&report, "signing intermediate"), "warn", "{report:#}");
    let v = verdicts(&report, "signing intermediate")[0];
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("expires in 1d")),
        "{v}"
    );
    assert!(
        v["hint"]
            .as_str()
            .is_some_and(|h| h.contains("trellis root")),
        "{v}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("warn") && l.contains("signing intermediate")),
        "{text}"
    );
    assert!(text.contains("fix: "), "a hint under the warning: {text}");

    let (_, text, code) = check(&ca, &["--fail-within", "1d", "--fail-on-warning"]);
    assert_eq!(code, 1, "warnings with --fail-on-warning exit 1: {text}");

    // The default failure threshold (7 days) makes the same intermediate a failure.
    let (report, text, code) = check(&ca, &[]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(level(&report, "signing intermediate"), "fail", "{report:#}");
    assert!(text.lines().any(|l| l.starts_with("FAIL")), "{text}");

    // A window that ends before it: all good.
    let (report, _, code) = check(&ca, &["--warn-within", "1d", "--fail-within", "12h"]);
    assert_eq!(code, 0);
    assert_eq!(level(&report, "signing intermediate"), "ok", "{report:#}");

    // A bad duration is a usage error, not a verdict.
    let bad = run_check(&ca, &["--warn-within", "soon"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("--warn-within"), "{bad:?}");
}

#[test]
fn an_expired_admin_certificate_fails_with_a_hint() {
    // The CA writes its admin certificate with this lifetime at first start.
    let (_dir, file) = config("admin_ttl = \"3s\"\n");
    let ca = Ca::start_with(&["--config", &file]);
    std::thread::sleep(Duration::from_secs(4));

    let (report, text, code) = check(&ca, &[]);
    assert_eq!(code, 2, "{text}");
    let admin = verdicts(&report, "admin certificate");
    assert_eq!(admin.len(), 1, "{report:#}");
    assert_eq!(admin[0]["level"], "fail", "{report:#}");
    assert!(
        admin[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("expired")),
        "{report:#}"
    );
    assert!(
        admin[0]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("trellis login")),
        "{report:#}"
    );
    // The CA itself is fine; what needs the admin API is not judged.
    assert_eq!(level(&report, "CA reachable"), "ok", "{report:#}");
    assert_eq!(
        level(&report, "signing intermediate"),
        "skipped",
        "{report:#}"
    );
    assert!(
        text.contains("fix: admin certificates are not renewed"),
        "{text}"
    );
}

#[test]
fn a_store_that_cannot_write_fails_the_store_check() {
    let disk = Tmpfs::mount("32m");
    let ca = Ca::start_at(&disk.path().join("ca"), &[] as &[&str]);
    let (report, _, code) = check(&ca, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(level(&report, "certificate store"), "ok");

    // A read-only remount is refused while the CA holds its log open for writing (see
    // disk_full.rs); a full disk takes the same path in the CA: the store closes and every
    // admin call says why.
    let _filler = disk.fill("filler");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let access = CaAccess::new(ca.addr, &ca.trust_domain, &ca.admin_dir);
    let refused = rt.block_on(async {
        let mut admin = access.admin().await.expect("admin");
        for _ in 0..2_000 {
            let key = WorkloadKey::generate().expect("key");
            let issued = admin
                .issue_certificate(IssueCertificateRequest {
                    csr_der: key.csr_der(None).expect("csr"),
                    spiffe_id: format!("spiffe://{}/check/filler", ca.trust_domain),
                    ..Default::default()
                })
                .await;
            if let Err(status) = issued {
                return status;
            }
        }
        panic!("2000 certificates issued on a full disk");
    });
    assert!(refused.message().contains("disk full"), "{refused:?}");

    let (report, text, code) = check(&ca, &[]);
    assert_eq!(code, 2, "{text}");
    let store = verdicts(&report, "certificate store")[0];
    assert_eq!(store["level"], "fail", "{report:#}");
    assert!(
        store["detail"]
            .as_str()
            .is_some_and(|d| d.contains("disk full")),
        "{store}"
    );
    assert!(
        store["hint"]
            .as_str()
            .is_some_and(|h| h.contains("free space")),
        "{store}"
    );
    assert_eq!(level(&report, "CA reachable"), "ok", "{report:#}");
}

fn sidecar_check(admin: std::net::SocketAddr, args: &[&str]) -> (Value, i32) {
    let mut cmd = command("trellis-sidecar");
    cmd.args(["check", "--admin", &admin.to_string(), "-o", "json"])
        .args(args);
    let out = run(cmd, TIMEOUT);
    let report: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    (report, out.code.expect("exit code"))
}

#[test]
fn the_sidecar_check_passes_while_the_ca_serves_and_warns_once_its_streams_are_gone() {
    let mut ca = Ca::start();
    let web = mesh_support::sidecar(&ca, "web", &mesh_support::id("/ns/check/sa/web"), "", "");
    // The streams count as connected once the CA sent its state.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (report, code) = loop {
        let (report, code) = sidecar_check(web.admin, &["--fail-on-warning"]);
        if code == 0 || std::time::Instant::now() > deadline {
            break (report, code);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 0, "{report:#}");
    for name in ["certificate", "renewal", "trust bundle", "CA streams"] {
        assert_eq!(level(&report, name), "ok", "{report:#}");
    }
    let text = {
        let mut cmd = command("trellis-sidecar");
        cmd.args(["check", "--admin", &web.admin.to_string()]);
        run(cmd, TIMEOUT)
    };
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("ok   certificate")),
        "{text:?}"
    );

    ca.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (report, code) = loop {
        let (report, code) = sidecar_check(web.admin, &["--fail-on-warning"]);
        if code != 0 || std::time::Instant::now() > deadline {
            break (report, code);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 1, "warnings with --fail-on-warning: {report:#}");
    let streams = verdicts(&report, "CA streams")[0];
    assert_eq!(streams["level"], "warn", "{report:#}");
    assert!(
        streams["detail"]
            .as_str()
            .is_some_and(|d| d.contains("revocations")),
        "{streams}"
    );
    // Without the flag, warnings exit 0.
    assert_eq!(sidecar_check(web.admin, &[]).1, 0);

    drop(web);
    let (report, code) = sidecar_check(
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port"),
        &[],
    );
    assert_eq!(code, 2, "{report:#}");
}
