//! The `trellis` CLI as a user runs it: the built binary against a real `trellis-ca` on
//! 127.0.0.1, each test in its own temp dirs with its own HOME and context file.

mod common;
// Failures and settings live in files of their own but in this test binary, so the suite
// links once.
#[path = "cli/failures.rs"]
mod failures;
#[path = "cli/settings.rs"]
mod settings;

use common::{CLI_TIMEOUT, User, certs, issue, leaf_serial, mode, path_str};
use trellis_e2e::{Ca, run};
use trellis_identity::pem;

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

/// A store larger than one gRPC message (4 MiB) is listed in full: the CLI pages through
/// it, and the JSON is one document with every record exactly once.
#[test]
fn cert_list_pages_through_a_store_larger_than_a_grpc_message() {
    use trellis_ca::store::CertRecord;
    const RECORDS: u32 = 6_500;
    let mut ca = Ca::start();
    ca.stop();
    // Records written straight into the stopped CA's store: signing 6,500 certificates
    // would test issuance, not listing. Each carries a certificate-sized value.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = trellis_ca::store::open(&ca.data_dir.join("db")).expect("open the CA's store");
        for i in 0..RECORDS {
            let mut serial = vec![0x5a; 12];
            serial.extend_from_slice(&i.to_be_bytes());
            let record = CertRecord {
                serial: trellis_identity::hex::encode(&serial),
                spiffe_id: format!("spiffe://cluster.local/ns/bulk/sa/w{}", i % 97),
                dns_names: Vec::new(),
                not_before: now - 7200,
                not_after: now - 3600,
                issued_at: now - 7200,
                issued_at_ns: 0,
                root_id: "bulk".into(),
                intermediate_id: "bulk".into(),
                issued_via: "admin".into(),
            };
            store
                .record_issuance(&record, &[0x30; 700], &serial, None, &[])
                .expect("record");
        }
        store.flush_now().expect("flush");
    });
    drop(rt);
    ca.restart();
    let user = User::logged_in(&ca);

    let listing = user
        .trellis(&[
            "cert",
            "list",
            "--include-expired",
            "--limit",
            "1000000",
            "-o",
            "json",
        ])
        .success()
        .json();
    assert_eq!(listing["truncated"], false);
    let serials: Vec<&str> = listing["certificates"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["serial"].as_str().expect("serial"))
        .collect();
    let unique: std::collections::HashSet<&str> = serials.iter().copied().collect();
    assert_eq!(unique.len(), serials.len(), "a record listed twice");
    let bulk = serials.iter().filter(|s| s.starts_with("5a5a")).count();
    assert_eq!(bulk, RECORDS as usize, "every record written is listed");
    // The others are the CA's own: serving certificates (one per start) and admin's.
    let own = listing["certificates"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|c| c["issued_via"] == "ca")
        .count();
    assert_eq!(serials.len(), RECORDS as usize + own);

    // The table: one header, one row per certificate, the count; --limit still limits.
    let human = user
        .trellis(&["cert", "list", "--include-expired", "--limit", "1500"])
        .success()
        .stdout;
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.starts_with("SERIAL")).count(), 1);
    assert_eq!(lines.len(), 1 + 1500 + 1, "{}", lines.last().unwrap_or(&""));
    assert!(
        lines[lines.len() - 1].starts_with("1500 certificates (more may match"),
        "{}",
        lines[lines.len() - 1]
    );
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
fn a_list_of_ca_replicas_skips_one_that_does_not_answer() {
    let ca = Ca::start();
    // A port nothing listens on, first in the list: the CLI moves on to the next.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut status = trellis_e2e::command("trellis");
    status
        .arg("--ca-addr")
        .arg(format!("{dead},{}", ca.addr))
        .arg("--admin-cert")
        .arg(ca.admin_dir.join("admin.pem"))
        .arg("--admin-key")
        .arg(ca.admin_dir.join("admin.key.pem"))
        .arg("--bundle")
        .arg(ca.admin_dir.join("bundle.pem"))
        .args(["ca", "status", "-o", "json"]);
    let json = run(status, CLI_TIMEOUT).success().json();
    assert_eq!(json["trust_domain"], "cluster.local", "{json}");

    // None answering: one line naming the addresses given.
    let mut none = trellis_e2e::command("trellis");
    none.arg("--ca-addr")
        .arg(format!("{dead}"))
        .arg("--admin-cert")
        .arg(ca.admin_dir.join("admin.pem"))
        .arg("--admin-key")
        .arg(ca.admin_dir.join("admin.key.pem"))
        .arg("--bundle")
        .arg(ca.admin_dir.join("bundle.pem"))
        .args(["ca", "status"]);
    let line = run(none, CLI_TIMEOUT).failure(1);
    assert!(line.contains("cannot reach the CA"), "{line}");
}

#[test]
fn jwt_key_rotation_from_the_cli_refuses_retiring_a_key_whose_tokens_may_live() {
    let ca = Ca::start();
    let user = User::logged_in(&ca);
    let list = user
        .trellis(&["jwt-key", "list", "-o", "json"])
        .success()
        .json();
    let keys = list["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{list}");
    assert_eq!(keys[0]["state"], "active");
    assert_eq!(keys[0]["public_jwk"]["crv"], "P-256");
    let old = keys[0]["key_id"].as_str().expect("kid").to_owned();

    let added = user
        .trellis(&["jwt-key", "add", "-o", "json"])
        .success()
        .json();
    assert_eq!(added["action"], "added");
    assert_eq!(added["key"]["state"], "pending");
    let new = added["key"]["key_id"].as_str().expect("kid").to_owned();
    let human = user.trellis(&["jwt-key", "list"]).success().stdout;
    assert!(human.contains(&new) && human.contains("pending"), "{human}");

    let activated = user
        .trellis(&["jwt-key", "activate", &new, "-o", "json"])
        .success()
        .json();
    assert_eq!(activated["key"]["state"], "active");

    let refused = user.trellis(&["jwt-key", "retire", &old]).failure(1);
    assert!(refused.contains("may be valid until"), "{refused}");
    let retired = user
        .trellis(&["jwt-key", "retire", &old, "--force", "-o", "json"])
        .success()
        .json();
    assert_eq!(retired["key"]["state"], "retired");
    assert_eq!(retired["forced"], true);
}

/// Retention with the real binary: records expired for longer than
/// `--certificate-retention` are gone after a start, the recently expired ones stay, and
/// `cert show` of a pruned serial says why it is not found.
#[test]
fn expired_records_past_retention_are_removed_and_show_says_why() {
    use trellis_ca::store::CertRecord;
    let mut ca = Ca::start_with(&["--certificate-retention", "30m"]);
    ca.stop();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let serial_hex = |tag: u8, i: u8| trellis_identity::hex::encode(&[tag, tag, tag, i]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = trellis_ca::store::open(&ca.data_dir.join("db")).expect("open the CA's store");
        for (tag, expired_ago) in [(0x0au8, 3600u64), (0x0bu8, 600u64)] {
            for i in 0..5u8 {
                let record = CertRecord {
                    serial: serial_hex(tag, i),
                    spiffe_id: format!("spiffe://cluster.local/ns/old/sa/w{i}"),
                    dns_names: Vec::new(),
                    not_before: now - expired_ago - 3600,
                    not_after: now - expired_ago,
                    issued_at: now - expired_ago - 3600,
                    issued_at_ns: 0,
                    root_id: "old".into(),
                    intermediate_id: "old".into(),
                    issued_via: "renewal".into(),
                };
                store
                    .record_issuance(&record, &[0x30; 300], &[tag, tag, tag, i], None, &[])
                    .expect("record");
            }
        }
        store.flush_now().expect("flush");
    });
    drop(rt);
    ca.restart();
    let user = User::logged_in(&ca);

    let listed = |user: &User| -> Vec<String> {
        user.trellis(&["cert", "list", "--include-expired", "-o", "json"])
            .success()
            .json()["certificates"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| c["serial"].as_str().expect("serial").to_owned())
            .collect()
    };
    // Retention runs in the background from start-up; wait for its first pass.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let serials = loop {
        let serials = listed(&user);
        if !serials.iter().any(|s| s.starts_with("0a0a0a")) || std::time::Instant::now() > deadline
        {
            break serials;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    for i in 0..5 {
        assert!(!serials.contains(&serial_hex(0x0a, i)), "{serials:?}");
        assert!(serials.contains(&serial_hex(0x0b, i)), "{serials:?}");
    }
    let gone = user.trellis(&["cert", "show", &serial_hex(0x0a, 0)]);
    assert_ne!(gone.code, Some(0), "{}", gone.stdout);
    assert!(
        gone.stderr.contains("certificate_retention"),
        "{}",
        gone.stderr
    );
}
