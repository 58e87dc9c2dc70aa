//! Secrets hygiene: a full run of the real binaries at trace level — `trellis ca init`, the
//! CA importing it, `trellis login`, a join token, a sidecar bootstrapping with it and
//! renewing, and admin calls that create keys (`cert issue`, `root add`) — and then every
//! log is searched for every private key and token that the run created. One hit fails.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{User, path_str};
use trellis_e2e::{Ca, Outcome, Process, command};
use trellis_identity::pem;

const TD: &str = "cluster.local";
/// Bootstrap plus one renewal of a one-minute certificate (renewed at 40–60 % of it).
const RENEWAL: Duration = Duration::from_secs(120);
const TRACE: (&str, &str) = ("TRELLIS_LOG", "trace");

/// A secret and the forms it could appear in, named for the failure message (the value
/// itself is never printed).
struct Secret {
    name: String,
    forms: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The forms of every private key in a PEM file: each base64 line of its body, the whole
/// body on one line, the DER in hex, and the EC private scalar in hex.
fn key_forms(text: &str) -> Vec<String> {
    let mut forms = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY") {
            inside = true;
            body.clear();
        } else if line.starts_with("-----END") && inside {
            inside = false;
            forms.push(body.clone());
        } else if inside {
            body.push_str(line.trim());
            if line.trim().len() >= 40 {
                forms.push(line.trim().to_owned());
            }
        }
    }
    if let Ok(key) = pem::private_key_from_pem(text.as_bytes()) {
        let der = key.secret_der();
        forms.push(hex(der));
        // ECPrivateKey (RFC 5915): version 1, then the scalar as a 32-byte OCTET STRING.
        if let Some(at) = der
            .windows(5)
            .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        {
            forms.push(hex(&der[at + 5..at + 37]));
        }
    }
    forms
}

/// Every file under `dir` that holds a private key.
fn key_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            key_files(&path, found);
        } else if std::fs::read_to_string(&path).is_ok_and(|t| t.contains("PRIVATE KEY")) {
            found.push(path);
        }
    }
}

fn key_secret(name: String, text: &str) -> Secret {
    let forms = key_forms(text);
    assert!(forms.len() >= 4, "{name}: no private key found in it");
    Secret { name, forms }
}

fn token_secret(name: &str, token: &str) -> Secret {
    let random = token.trim_start_matches("trellis-jt-");
    assert_eq!(random.len(), 64, "a join token: {token:?}");
    Secret {
        name: name.to_owned(),
        forms: vec![token.to_owned(), random.to_owned()],
    }
}

/// Which secrets appear in which logs: `(secret name, log name)`.
fn leaks(secrets: &[Secret], logs: &[(String, String)]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for secret in secrets {
        for (log_name, text) in logs {
            let lower = text.to_ascii_lowercase();
            if secret
                .forms
                .iter()
                .any(|f| text.contains(f.as_str()) || lower.contains(&f.to_ascii_lowercase()))
            {
                found.push((secret.name.clone(), log_name.clone()));
            }
        }
    }
    found
}

fn join_token(outcome: &Outcome) -> String {
    outcome
        .stdout
        .split_whitespace()
        .map(|w| w.trim_matches(['"', ',', '\'']))
        .find(|w| w.starts_with("trellis-jt-"))
        .unwrap_or_else(|| panic!("no token in:\n{}", outcome.stdout))
        .to_owned()
}

#[test]
fn no_key_or_token_appears_in_any_log_of_a_full_run_at_trace_level() {
    let user = User::new();
    let mut logs: Vec<(String, String)> = Vec::new();
    let cli = |name: &str, args: &[&str], logs: &mut Vec<(String, String)>| {
        let outcome = user.trellis_with_env(args, &[TRACE]).success();
        logs.push((format!("trellis {name} (stderr)"), outcome.stderr.clone()));
        outcome
    };

    // An offline CA, imported by the server.
    let init_dir = user.path("init");
    let init = cli(
        "ca init",
        &["ca", "init", "--dir", path_str(&init_dir)],
        &mut logs,
    );
    logs.push(("trellis ca init (stdout)".into(), init.stdout));
    let mut ca = Ca::start_with_env(&["--import-dir", path_str(&init_dir)], &[TRACE]);
    let admin_dir = path_str(&ca.admin_dir).to_owned();
    let addr = ca.addr.to_string();
    let login = cli(
        "login",
        &["login", "--ca-addr", &addr, "--admin-dir", &admin_dir],
        &mut logs,
    );
    logs.push(("trellis login (stdout)".into(), login.stdout));

    // A join token: printed on stdout by design, so that output is not a log (and is the
    // positive control that the token search works).
    let web = format!("spiffe://{TD}/ns/demo/sa/web");
    let created = cli(
        "token create",
        &["token", "create", "--spiffe-id", &web],
        &mut logs,
    );
    let token = join_token(&created);
    let unused = join_token(&cli(
        "token create (unused)",
        &["token", "create", "--spiffe-id", &web, "-o", "json"],
        &mut logs,
    ));

    // A sidecar that bootstraps with the token and renews a one-minute certificate.
    let scratch = ca.scratch().to_owned();
    let token_file = scratch.join("token");
    trellis_identity::files::write_secret(&token_file, token.as_bytes()).expect("token file");
    let svid_dir = scratch.join("svid");
    let config = scratch.join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"{TD}\"\n[ca]\naddress = \"{addr}\"\ntrust_bundle = \"{}\"\n\
             join_token_file = \"{}\"\nsvid_dir = \"{}\"\nttl = \"1m\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            ca.bundle_pem().display(),
            token_file.display(),
            svid_dir.display()
        ),
    )
    .expect("sidecar config");
    let mut cmd = command("trellis-sidecar");
    cmd.arg("--config").arg(&config).env(TRACE.0, TRACE.1);
    let mut sidecar = Process::spawn("sidecar", cmd, &scratch);
    let mut secrets = vec![
        token_secret("join token", &token),
        token_secret("unused join token", &unused),
    ];
    let mut previous = String::new();
    for round in ["bootstrap", "renewal"] {
        sidecar.wait_for_line(RENEWAL, |l| l.contains("certificate installed"));
        // Each certificate has a fresh key and the file is replaced (just after the log
        // line): keep each key.
        let key = trellis_e2e::retry_until(Duration::from_secs(10), "a new svid_key.pem", || {
            match std::fs::read_to_string(svid_dir.join("svid_key.pem")) {
                Ok(key) if key != previous => Ok(key),
                Ok(_) => Err("not replaced yet".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        });
        secrets.push(key_secret(format!("sidecar key after {round}"), &key));
        previous = key;
    }

    // Admin calls, two of which create keys.
    let issued = user.path("issued");
    for (name, args) in [
        ("ca status", vec!["ca", "status"]),
        (
            "cert issue",
            vec![
                "cert",
                "issue",
                "--spiffe-id",
                "spiffe://cluster.local/ext/billing",
                "--out",
                path_str(&issued),
            ],
        ),
        ("cert list", vec!["cert", "list"]),
        (
            "cert revoke",
            vec![
                "cert",
                "revoke",
                "--identity",
                "spiffe://cluster.local/ext/billing",
                "--reason",
                "test",
            ],
        ),
        ("root add", vec!["root", "add"]),
        ("root list", vec!["root", "list"]),
    ] {
        let outcome = cli(name, &args, &mut logs);
        logs.push((format!("trellis {name} (stdout)"), outcome.stdout));
    }

    sidecar.terminate(Duration::from_secs(10));
    ca.stop();
    logs.push(("trellis-sidecar (stderr)".into(), sidecar.stderr()));
    logs.push(("trellis-sidecar (stdout)".into(), sidecar.stdout()));
    logs.push(("trellis-ca (stderr)".into(), ca.process.stderr()));
    logs.push(("trellis-ca (stdout)".into(), ca.process.stdout()));

    // Every key file the run left: the CA's keys (imported and the new root's), the
    // offline init's, the admin key, the issued certificate's, the sidecar's last.
    let mut files = Vec::new();
    for dir in [user.home.path(), scratch.as_path()] {
        key_files(dir, &mut files);
    }
    for file in &files {
        let text = std::fs::read_to_string(file).expect("key file");
        secrets.push(key_secret(file.display().to_string(), &text));
    }
    let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "root.key.pem",
        "intermediate.key.pem",
        "admin.key.pem",
        "issued/svid_key.pem",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(expected)),
            "no {expected} among {names:#?}"
        );
    }
    let ca_keys = files.iter().filter(|f| f.starts_with(&ca.data_dir)).count();
    assert!(
        ca_keys >= 3,
        "the CA's own keys (incl. the added root): {files:#?}"
    );

    // The logs really are at trace level and cover the run.
    let ca_log = &logs
        .iter()
        .find(|(n, _)| n == "trellis-ca (stderr)")
        .expect("ca log")
        .1;
    let sidecar_log = &logs
        .iter()
        .find(|(n, _)| n == "trellis-sidecar (stderr)")
        .expect("log")
        .1;
    assert!(
        ca_log.contains("TRACE"),
        "the CA did not log at trace level"
    );
    assert!(
        sidecar_log.contains("TRACE"),
        "the sidecar did not log at trace level"
    );
    assert_eq!(sidecar_log.matches("certificate installed").count(), 2);

    // The search finds what it looks for: the token on the stdout meant for it, and each
    // secret planted in a copy of a real log.
    assert!(
        !leaks(
            &secrets[..1],
            &[("token create (stdout)".into(), created.stdout)]
        )
        .is_empty()
    );
    for secret in &secrets {
        for form in &secret.forms {
            let planted = format!("{sidecar_log}\nsomething {form} leaked\n");
            assert_eq!(
                leaks(std::slice::from_ref(secret), &[("planted".into(), planted)]).len(),
                1,
                "a planted form of {} was not found",
                secret.name
            );
        }
    }

    let forms: usize = secrets.iter().map(|s| s.forms.len()).sum();
    let bytes: usize = logs.iter().map(|(_, text)| text.len()).sum();
    eprintln!(
        "searched {} logs ({bytes} bytes) for {} secrets in {forms} forms",
        logs.len(),
        secrets.len()
    );
    let found = leaks(&secrets, &logs);
    assert!(
        found.is_empty(),
        "secrets in logs (secret, log): {found:#?}"
    );
}
