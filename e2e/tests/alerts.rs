//! The shipped Prometheus alerting rules (`deploy/monitoring/`): valid for `promtool check
//! rules`, every alert fired and kept quiet by `promtool test rules`, and every metric they
//! use really exported by the binaries, scraped from a running `trellis-ca` and
//! `trellis-sidecar` (so rules and code cannot drift apart).
//!
//! Needs `promtool` (Debian's `prometheus` package, installed by
//! scripts/install-test-deps.sh); without it these tests fail.

mod mesh_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mesh_support::{http_get, id, sidecar};
use trellis_e2e::{Ca, run};

const RULES: &str = "deploy/monitoring/trellis-alerts.yaml";
const TIMEOUT: Duration = Duration::from_secs(120);

fn workspace_file(path: &str) -> PathBuf {
    trellis_e2e::python::workspace().join(path)
}

fn promtool(args: &[&str]) -> trellis_e2e::Outcome {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(trellis_e2e::python::workspace());
    // `run` panics if the command cannot start; say how to get it.
    if which("promtool").is_none() {
        panic!(
            "promtool is missing: install Debian's prometheus package (scripts/install-test-deps.sh)"
        );
    }
    run(cmd, TIMEOUT)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    })
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", RULES]).success();
    assert!(checked.stdout.contains("SUCCESS"), "{checked:?}");

    let tests: Vec<String> = std::fs::read_dir(workspace_file("deploy/monitoring/tests"))
        .expect("deploy/monitoring/tests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !tests.is_empty(),
        "no rule tests in deploy/monitoring/tests"
    );
    let args: Vec<&str> = ["test", "rules"]
        .into_iter()
        .chain(tests.iter().map(String::as_str))
        .collect();
    let tested = promtool(&args).success();
    assert!(tested.stdout.contains("SUCCESS"), "{tested:?}");

    // Every alert is exercised by the unit tests: fired at least once.
    let rules = alert_names();
    let text: String = tests
        .iter()
        .map(|t| std::fs::read_to_string(t).expect("read test"))
        .collect();
    for alert in &rules {
        assert!(
            text.contains(&format!("alertname: {alert}\n")),
            "{alert} is never expected to fire in deploy/monitoring/tests"
        );
    }
}

/// The alert names in the rule file.
fn alert_names() -> Vec<String> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(workspace_file(RULES)).expect("rules"))
            .expect("rules are YAML");
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

/// Every `trellis_…` metric name the rules' expressions use.
fn metric_names_in_rules() -> BTreeSet<String> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(workspace_file(RULES)).expect("rules"))
            .expect("rules are YAML");
    let mut names = BTreeSet::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(start) = rest.find("trellis_") {
                let tail = &rest[start..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_owned());
                rest = &tail[end..];
            }
        }
    }
    names
}

/// Metric families declared (`# TYPE`) in a scrape.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_the_alerts_use_is_exported_by_the_binaries() {
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let ca = Ca::start_with(&["--http-listen", &http.to_string()]);
    let web = sidecar(&ca, "web", &id("/ns/default/sa/web"), "", "");

    let (status, ca_text) = http_get(http, "/metrics").expect("CA metrics");
    assert_eq!(status, 200, "{ca_text}");
    // The sidecar reports each CA stream once its state arrived; the two streams connect
    // independently, so wait for both.
    let connected = |text: &str| {
        ["revocations", "trust_bundle"].iter().all(|stream| {
            text.contains(&format!(
                "trellis_sidecar_ca_stream_connected{{stream=\"{stream}\"}} 1"
            ))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let sidecar_text = loop {
        let text = http_get(web.admin, "/metrics").expect("sidecar metrics").1;
        if connected(&text) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(connected(&sidecar_text), "{sidecar_text}");

    let exported: BTreeSet<String> = families(&ca_text)
        .into_iter()
        .chain(families(&sidecar_text))
        .collect();
    let used = metric_names_in_rules();
    assert!(
        used.len() >= 8,
        "found too few names in the rules: {used:?}"
    );
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the alert rules use metrics no binary exports: {missing:?}\nexported: {exported:?}"
    );

    // The expiry gauges hold real times: the CA's serving certificate lives 24 h, the
    // sidecar's certificate and bundle expire in the future.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
    };
    let serving = value(
        &ca_text,
        "trellis_ca_serving_certificate_expiry_timestamp_seconds",
    );
    assert!(
        (serving - now - 86_400.0).abs() < 300.0,
        "serving certificate expiry {serving}, now {now}"
    );
    let intermediate = value(&ca_text, "trellis_ca_intermediate_expiry_timestamp_seconds");
    assert!(intermediate > now + 300.0 * 86_400.0, "{intermediate}");
    let root = value(&ca_text, "trellis_ca_root_expiry_timestamp_seconds{");
    assert!(root > intermediate, "{root}");
    let leaf = value(
        &sidecar_text,
        "trellis_sidecar_certificate_expiry_timestamp_seconds",
    );
    assert!(leaf > now, "{leaf}");
    let bundle = value(
        &sidecar_text,
        "trellis_sidecar_trust_bundle_expiry_timestamp_seconds",
    );
    assert!((bundle - root).abs() < 1.0, "bundle {bundle}, root {root}");

    // promtool's own linter has nothing to say about either exposition.
    for (who, text) in [("CA", &ca_text), ("sidecar", &sidecar_text)] {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("metrics.txt");
        std::fs::write(&file, text).expect("write");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("promtool check metrics < {}", file.display()));
        let linted = run(cmd, TIMEOUT);
        assert_eq!(linted.code, Some(0), "{who}: {linted:?}");
    }
}
