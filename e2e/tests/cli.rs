//! The `trellis` CLI as a user runs it: the built binary against a real `trellis-ca` on
//! 127.0.0.1, each test in its own temp dirs with its own HOME and context file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::{Ca, Outcome, command, run};
use trellis_identity::pem;

/// How long one CLI invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// An operator with their own home directory and context file.
struct User {
    home: tempfile::TempDir,
}

impl User {
    fn new() -> Self {
        Self {
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    fn context_file(&self) -> PathBuf {
        self.home.path().join("context.toml")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// `trellis` as this user would start it: their HOME and context file.
    fn command(&self) -> std::process::Command {
        let mut cmd = command("trellis");
        cmd.env("HOME", self.home.path())
            .env("TRELLIS_CONTEXT", self.context_file())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("NO_COLOR");
        cmd
    }

    /// Runs `trellis ARGS...` as this user.
    fn trellis<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Outcome {
        let mut cmd = self.command();
        cmd.args(args);
        run(cmd, CLI_TIMEOUT)
    }

    /// Runs `trellis ARGS...` with extra environment variables.
    fn trellis_with_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Outcome {
        let mut cmd = self.command();
        cmd.args(args);
        for (key, value) in vars {
            cmd.env(key, value);
        }
        run(cmd, CLI_TIMEOUT)
    }

    /// A user logged in to `ca` with its admin credentials.
    fn logged_in(ca: &Ca) -> Self {
        let user = Self::new();
        user.trellis(&[
            "login",
            "--ca-addr",
            &ca.addr.to_string(),
            "--admin-dir",
            path_str(&ca.admin_dir),
        ])
        .success();
        user
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn certs(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pem::certs_from_pem(&bytes)
        .expect("PEM certificates")
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

/// Issues a certificate for `id` into `out` and returns the JSON report.
fn issue(user: &User, id: &str, out: &Path) -> Value {
    user.trellis(&[
        "cert",
        "issue",
        "--spiffe-id",
        id,
        "--out",
        path_str(out),
        "--output",
        "json",
    ])
    .success()
    .json()
}

#[test]
fn login_saves_a_context_so_status_needs_no_flags() {
    let ca = Ca::start();
    let user = User::new();
    let login = user
        .trellis(&[
            "login",
            "--ca-addr",
            &ca.addr.to_string(),
            "--admin-dir",
            path_str(&ca.admin_dir),
        ])
        .success();
    assert!(login.stdout.contains("Logged in"), "{}", login.stdout);
    assert!(
        login
            .stdout
            .contains("spiffe://cluster.local/trellis/admin/default"),
        "{}",
        login.stdout
    );
    let context = std::fs::read_to_string(user.context_file()).expect("context written");
    assert!(
        context.contains(&format!("ca_addr = \"{}\"", ca.addr)),
        "{context}"
    );
    assert!(
        context.contains("trust_domain = \"cluster.local\""),
        "{context}"
    );
    assert!(context.contains("admin.key.pem"), "{context}");

    let human = user.trellis(&["ca", "status"]).success().stdout;
    assert!(!human.contains('\x1b'), "no colour into a pipe: {human:?}");
    assert!(human.contains("Health        serving"), "{human}");
    assert!(human.contains("Trust domain  cluster.local"), "{human}");
    assert!(human.contains("active"), "{human}");
    assert!(human.contains("FINGERPRINT (SPKI SHA-256)"), "{human}");

    let status = user
        .trellis(&["ca", "status", "-o", "json"])
        .success()
        .json();
    assert_eq!(status["health"], "serving");
    assert_eq!(status["trust_domain"], "cluster.local");
    assert_eq!(status["ca_addr"], ca.addr.to_string());
    let roots = status["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 1, "{status}");
    assert_eq!(roots[0]["state"], "active");
    assert_eq!(status["intermediate"]["root_id"], roots[0]["id"]);
    assert_eq!(status["bundle_root_ids"][0], roots[0]["id"]);
    // The CA's own serving certificate and the admin certificate.
    assert!(
        status["issued_total"].as_u64().expect("count") >= 2,
        "{status}"
    );
    assert!(
        status["live_total"].as_u64().expect("count") >= 2,
        "{status}"
    );
    assert!(status["intermediate"]["not_after"].is_string(), "{status}");
}

#[test]
fn token_create_prints_the_token_and_the_workload_command() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let id = "spiffe://cluster.local/ns/prod/sa/web";

    let human = user
        .trellis(&["token", "create", "--spiffe-id", id])
        .success()
        .stdout;
    let token_line = human
        .lines()
        .find(|l| l.starts_with("Join token"))
        .unwrap_or_else(|| panic!("no token line:\n{human}"));
    let token = token_line
        .split_whitespace()
        .last()
        .expect("token value")
        .to_owned();
    assert!(token.len() >= 32, "{token}");
    assert!(human.contains(id), "{human}");
    assert!(human.contains("single use"), "{human}");
    let command_line = format!(
        "TRELLIS_JOIN_TOKEN={token} trellis-sidecar --ca-addr {}",
        ca.addr
    );
    assert!(human.contains(&command_line), "{human}");

    let json = user
        .trellis(&[
            "token",
            "create",
            "--spiffe-id",
            id,
            "--ttl",
            "5m",
            "-o",
            "json",
        ])
        .success()
        .json();
    assert_eq!(json["spiffe_id"], id);
    let second = json["token"].as_str().expect("token");
    assert_ne!(second, token, "every token is new");
    let left = json["expires_in_seconds"].as_u64().expect("seconds");
    assert!((240..=300).contains(&left), "{json}");
    assert_eq!(json["single_use"], true);
    assert!(json["expires_at"].as_str().expect("time").ends_with('Z'));
    let workload = json["workload_command"].as_str().expect("command");
    assert!(
        workload.starts_with(&format!("TRELLIS_JOIN_TOKEN={second} ")),
        "{workload}"
    );
}

#[test]
fn cert_issue_writes_a_chain_openssl_verifies_and_a_private_key() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let out = user.path("out");
    let id = "spiffe://cluster.local/ext/billing";
    let report = user
        .trellis(&[
            "cert",
            "issue",
            "--spiffe-id",
            id,
            "--dns",
            "billing.example.com",
            "--ttl",
            "30m",
            "--out",
            path_str(&out),
        ])
        .success()
        .stdout;
    assert!(report.contains("Certificate issued."), "{report}");
    assert!(report.contains(id), "{report}");

    let chain_file = out.join("svid.pem");
    let key_file = out.join("svid_key.pem");
    let bundle_file = out.join("bundle.pem");
    assert_eq!(mode(&key_file), 0o600);
    let key_text = std::fs::read_to_string(&key_file).expect("key");
    assert!(
        key_text.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 key"
    );
    assert!(!report.contains(key_text.lines().nth(1).expect("key body")));
    let chain = certs(&chain_file);
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    assert_eq!(certs(&bundle_file), certs(&ca.bundle_pem()));

    // openssl, not our own code, judges the chain.
    let leaf_file = out.join("leaf.pem");
    let inter_file = out.join("intermediate.pem");
    std::fs::write(&leaf_file, pem::certs_to_pem(&chain[..1])).expect("write leaf");
    std::fs::write(&inter_file, pem::certs_to_pem(&chain[1..])).expect("write inter");
    let mut openssl = std::process::Command::new("openssl");
    openssl
        .arg("verify")
        .arg("-CAfile")
        .arg(&bundle_file)
        .arg("-untrusted")
        .arg(&inter_file)
        .arg(&leaf_file);
    let verified = run(openssl, CLI_TIMEOUT).success();
    assert!(
        verified.stdout.trim_end().ends_with(": OK"),
        "{}",
        verified.stdout
    );
    // The key belongs to the certificate.
    let mut pubkey = std::process::Command::new("openssl");
    pubkey.args(["pkey", "-pubout", "-in"]).arg(&key_file);
    let from_key = run(pubkey, CLI_TIMEOUT).success().stdout;
    let mut pubcert = std::process::Command::new("openssl");
    pubcert
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(&leaf_file);
    assert_eq!(run(pubcert, CLI_TIMEOUT).success().stdout, from_key);

    // Nothing is overwritten without --force.
    let again = user.trellis(&["cert", "issue", "--spiffe-id", id, "--out", path_str(&out)]);
    let line = again.failure(2);
    assert!(line.contains("svid.pem"), "{line}");
    assert!(line.contains("--force"), "{line}");
    let first_serial = leaf_serial(&leaf_file);
    let forced = user
        .trellis(&[
            "cert",
            "issue",
            "--spiffe-id",
            id,
            "--out",
            path_str(&out),
            "--force",
            "-o",
            "json",
        ])
        .success()
        .json();
    let new_serial = forced["serial"].as_str().expect("serial");
    assert_ne!(new_serial, first_serial);
    assert_eq!(leaf_serial(&chain_file), new_serial);
    assert_eq!(mode(&key_file), 0o600);
}

/// The serial of the first certificate in a PEM file, lowercase hex.
fn leaf_serial(path: &Path) -> String {
    trellis_identity::CertInfo::parse(&certs(path)[0])
        .expect("certificate parses")
        .serial
}

#[test]
fn cert_list_and_show_find_what_was_issued() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let web = "spiffe://cluster.local/ext/web";
    let db = "spiffe://cluster.local/ext/db";
    let web_serial = issue(&user, web, &user.path("web"))["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    let db_serial = issue(&user, db, &user.path("db"))["serial"]
        .as_str()
        .expect("serial")
        .to_owned();

    let human = user.trellis(&["cert", "list"]).success().stdout;
    assert!(human.starts_with("SERIAL"), "{human}");
    for needle in [web_serial.as_str(), db_serial.as_str(), web, db, "admin"] {
        assert!(human.contains(needle), "{needle} missing:\n{human}");
    }

    let only_web = user
        .trellis(&["cert", "list", "--identity", web, "-o", "json"])
        .success()
        .json();
    let listed = only_web["certificates"].as_array().expect("list");
    assert_eq!(listed.len(), 1, "{only_web}");
    assert_eq!(listed[0]["serial"], web_serial.as_str());
    assert_eq!(listed[0]["spiffe_id"], web);
    assert_eq!(listed[0]["issued_via"], "admin");
    assert_eq!(listed[0]["expired"], false);
    assert_eq!(only_web["truncated"], false);

    // Issued for the default hour: within 2h, not within 10m.
    let serials = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["cert", "list", "-o", "json"];
        full.extend_from_slice(args);
        user.trellis(&full).success().json()["certificates"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| c["serial"].as_str().expect("serial").to_owned())
            .collect()
    };
    assert!(serials(&["--expiring-within", "2h"]).contains(&web_serial));
    assert!(!serials(&["--expiring-within", "10m"]).contains(&web_serial));
    let root_id = listed[0]["root_id"].as_str().expect("root id").to_owned();
    assert!(serials(&["--root", &root_id]).contains(&db_serial));
    assert!(serials(&["--root", "ffffffffffffffff"]).is_empty());
    let none = user
        .trellis(&["cert", "list", "--root", "ffffffffffffffff"])
        .success()
        .stdout;
    assert_eq!(none, "No certificates match.\n");

    let shown = user
        .trellis(&["cert", "show", &web_serial])
        .success()
        .stdout;
    assert!(
        shown.contains(&format!("Serial      {web_serial}")),
        "{shown}"
    );
    assert!(shown.contains(&format!("SPIFFE ID   {web}")), "{shown}");
    assert!(shown.contains("Issued via  admin"), "{shown}");

    // Serials may be typed in upper case with colons, as openssl prints them.
    let colons: Vec<String> = web_serial
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let json = user
        .trellis(&["cert", "show", &colons.join(":"), "-o", "json"])
        .success()
        .json();
    assert_eq!(json["serial"], web_serial.as_str());
    assert_eq!(json["spiffe_id"], web);
    let pem_text = json["certificate_pem"].as_str().expect("pem");
    let der = pem::certs_from_pem(pem_text.as_bytes()).expect("PEM");
    assert_eq!(der[0].to_vec(), certs(&user.path("web/svid.pem"))[0]);

    let pem_only = user
        .trellis(&["cert", "show", &web_serial, "--pem"])
        .success()
        .stdout;
    assert_eq!(pem_only, pem_text);
}

#[test]
fn inspect_shows_a_chain_and_whether_it_verifies() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let id = "spiffe://cluster.local/ext/reports";
    let out = user.path("out");
    issue(&user, id, &out);
    let svid = out.join("svid.pem");

    let human = user.trellis(&["inspect", path_str(&svid)]).success().stdout;
    assert!(human.contains("Certificate 1 of 2 (leaf)"), "{human}");
    assert!(human.contains(&format!("SPIFFE ID     {id}")), "{human}");
    assert!(human.contains("Key           ECDSA P-256"), "{human}");
    assert!(human.contains("CA            no"), "{human}");
    let not_after = human
        .lines()
        .find(|l| l.trim_start().starts_with("Not after"))
        .expect("a Not after line");
    assert!(
        not_after.contains("(in 5"),
        "about an hour left: {not_after}"
    );
    assert!(human.contains("Verification  verifies against"), "{human}");

    let json = user
        .trellis(&["inspect", path_str(&svid), "-o", "json"])
        .success()
        .json();
    assert_eq!(json["certificates"][0]["spiffe_id"], id);
    assert_eq!(json["certificates"][0]["is_ca"], false);
    assert_eq!(json["certificates"][1]["is_ca"], true);
    assert_eq!(
        json["certificates"][0]["serial"],
        leaf_serial(&svid).as_str()
    );
    assert_eq!(json["verification"]["result"], "verifies");

    // Against another CA's bundle it does not verify.
    let other = user.path("other-ca");
    user.trellis(&["ca", "init", "--dir", path_str(&other)])
        .success();
    let against_other = user
        .trellis(&[
            "inspect",
            path_str(&svid),
            "--bundle",
            path_str(&other.join("bundle.pem")),
        ])
        .success()
        .stdout;
    assert!(
        against_other.contains("does NOT verify against"),
        "{against_other}"
    );

    // Offline with no bundle configured: works, says it did not check.
    let stranger = User::new();
    let offline = stranger
        .trellis(&["inspect", path_str(&svid), "-o", "json"])
        .success()
        .json();
    assert_eq!(offline["verification"]["result"], "not checked");
    assert_eq!(offline["certificates"][0]["spiffe_id"], id);

    let not_pem = user.path("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let line = user.trellis(&["inspect", path_str(&not_pem)]).failure(2);
    assert!(line.contains("CERTIFICATE"), "{line}");
}

#[test]
fn ca_init_output_is_imported_by_trellis_ca_and_its_admin_credentials_work() {
    let user = User::new();
    let dir = user.path("new-ca");
    let init = user
        .trellis(&[
            "ca",
            "init",
            "--dir",
            path_str(&dir),
            "--trust-domain",
            "example.org",
            "-o",
            "json",
        ])
        .success()
        .json();
    assert_eq!(init["trust_domain"], "example.org");
    assert_eq!(
        init["admin_spiffe_id"],
        "spiffe://example.org/trellis/admin/default"
    );
    for (name, wanted) in [
        ("root.pem", 0o644),
        ("root.key.pem", 0o600),
        ("intermediate.pem", 0o644),
        ("intermediate.key.pem", 0o600),
        ("admin.pem", 0o644),
        ("admin.key.pem", 0o600),
        ("bundle.pem", 0o644),
    ] {
        assert_eq!(mode(&dir.join(name)), wanted, "{name}");
    }
    assert_eq!(
        certs(&dir.join("admin.pem")).len(),
        2,
        "leaf + intermediate"
    );

    let import = [
        "--import-dir",
        path_str(&dir),
        "--trust-domain",
        "example.org",
    ];
    let ca = Ca::start_with(&import);
    assert_eq!(ca.trust_domain, "example.org");
    // The CA serves exactly the root `ca init` made.
    assert_eq!(certs(&ca.bundle_pem()), certs(&dir.join("root.pem")));

    // The generated admin credentials are accepted by that CA.
    user.trellis(&[
        "login",
        "--ca-addr",
        &ca.addr.to_string(),
        "--admin-dir",
        path_str(&dir),
    ])
    .success();
    let status = user
        .trellis(&["ca", "status", "-o", "json"])
        .success()
        .json();
    assert_eq!(status["trust_domain"], "example.org");
    assert_eq!(status["roots"][0]["spki_sha256"], init["root_spki_sha256"]);
    assert_eq!(status["roots"][0]["id"], init["root_id"]);
    let intermediate = certs(&dir.join("intermediate.pem"));
    let issued = issue(&user, "spiffe://example.org/ext/x", &user.path("x"));
    assert_eq!(issued["root_id"], init["root_id"]);
    assert_eq!(certs(&user.path("x/svid.pem"))[1], intermediate[0]);

    // Human output says the root key can go offline; a used directory is refused.
    let second = user.path("second-ca");
    let human = user
        .trellis(&["ca", "init", "--dir", path_str(&second)])
        .success()
        .stdout;
    assert!(
        human.contains("root.key.pem is needed only to make new intermediates"),
        "{human}"
    );
    assert!(human.contains("move it offline"), "{human}");
    let line = user
        .trellis(&["ca", "init", "--dir", path_str(&second)])
        .failure(2);
    assert!(line.contains("not empty"), "{line}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    let user = User::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = user.trellis(&["completions", shell]).success().stdout;
        assert!(script.len() > 500, "{shell}: {script}");
        assert!(script.contains("trellis"), "{shell}");
        assert!(
            script.contains("issue"),
            "{shell}: subcommands are completed"
        );
    }
    let line = user.trellis(&["completions", "tcsh"]);
    assert_eq!(line.code, Some(2), "{}", line.stderr);
}

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
