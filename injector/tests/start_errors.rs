//! The binary refuses what it cannot use before binding anything, naming the flag or file.
//! (This test also makes `cargo test` build the binary the end-to-end tests spawn.)

use std::process::{Command, Output};

fn injector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis-injector"))
        .args(args)
        .env_remove("TRELLIS_TLS_CERT")
        .env_remove("TRELLIS_TLS_KEY")
        .env_remove("TRELLIS_LOG_FORMAT")
        .output()
        .expect("the injector runs")
}

#[test]
fn an_unknown_log_format_is_a_usage_error_naming_the_flag() {
    let out = injector(&[
        "--tls-cert=c.pem",
        "--tls-key=k.pem",
        "--log-format=xml",
        "--listen=127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--log-format \"xml\""), "{stderr}");
}

#[test]
fn a_missing_serving_certificate_fails_the_start_and_names_the_file() {
    let dir = std::env::temp_dir().join(format!("injector-start-{}", std::process::id()));
    let cert = dir.join("absent-cert.pem");
    let key = dir.join("absent-key.pem");
    let out = injector(&[
        &format!("--tls-cert={}", cert.display()),
        &format!("--tls-key={}", key.display()),
        "--listen=127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--tls-cert/--tls-key"), "{stderr}");
    assert!(stderr.contains("absent-cert.pem"), "{stderr}");
}

#[test]
fn check_config_prints_the_settings_without_reading_the_tls_files() {
    let out = injector(&[
        "--tls-cert=/nonexistent/c.pem",
        "--tls-key=/nonexistent/k.pem",
        "--trust-domain=example.org",
        "--check-config",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(stdout.contains("example.org"), "{stdout}");
}
