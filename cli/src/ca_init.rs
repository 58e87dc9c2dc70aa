//! `trellis ca init`: create a root, a signing intermediate and admin credentials in a
//! directory, offline, for `trellis-ca --import-dir DIR` to import. The root key can then
//! be moved offline: the CA needs it only to make new intermediates.
//!
//! Files written (the import format `trellis-ca --import-dir` reads):
//! ```text
//! root.pem               root certificate
//! root.key.pem           0600, move offline after the import
//! intermediate.pem       signing intermediate
//! intermediate.key.pem   0600
//! admin.pem              admin client chain (leaf + intermediate)
//! admin.key.pem          0600
//! bundle.pem             trust bundle (the root), to verify the CA with
//! ```

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use trellis_identity::profile::{LeafSpec, SigningCa, new_intermediate, new_root};
use trellis_identity::{TrustDomain, WorkloadKey, ca_files, hex, pem};
use zeroize::Zeroizing;

use crate::Global;
use crate::error::usage;
use crate::files::{self, PUBLIC_MODE};
use crate::output::{self, Fields, Report, Style, Tone};
use crate::{args, timefmt};

/// The admin identity's path under the trust domain (what trellis-ca creates too).
const ADMIN_PATH: &str = "/trellis/admin/default";
/// The trust domain when none is given.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Arguments of `trellis ca init` (the trust domain comes from the global --trust-domain).
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// New directory to write the CA's files into (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Lifetime of the root certificate.
    #[arg(long, default_value = "3650d", value_name = "DURATION")]
    root_ttl: String,
    /// Lifetime of the signing intermediate (at least 48h, at most the root's).
    #[arg(long, default_value = "365d", value_name = "DURATION")]
    intermediate_ttl: String,
}

#[derive(Debug, Serialize)]
struct InitReport {
    dir: PathBuf,
    trust_domain: String,
    root_id: String,
    root_spki_sha256: String,
    root_not_after: String,
    intermediate_not_after: String,
    admin_spiffe_id: String,
    admin_not_after: String,
    files: Vec<PathBuf>,
}

impl Report for InitReport {
    fn human(&self, style: Style) -> String {
        let mut fields = Fields::indented(2);
        fields
            .add("Trust domain", self.trust_domain.clone())
            .add(
                "Root",
                format!("{} (expires {})", self.root_id, self.root_not_after),
            )
            .add("Fingerprint", self.root_spki_sha256.clone())
            .add(
                "Intermediate",
                format!("expires {}", self.intermediate_not_after),
            )
            .add(
                "Admin",
                format!(
                    "{} (expires {})",
                    self.admin_spiffe_id, self.admin_not_after
                ),
            );
        let dir = self.dir.display();
        format!(
            "{} in {dir}\n{}\nNext:\n  trellis-ca --import-dir {dir} --data-dir DATA_DIR --trust-domain {td}\n  trellis login --ca-addr HOST:PORT --admin-dir {dir}\n\n{}: {dir}/root.key.pem is needed only to make new intermediates. Once the CA has imported this directory, move it offline.\n",
            style.paint(Tone::Good, "Created a CA"),
            fields.render(style),
            style.paint(Tone::Warn, "Note"),
            td = self.trust_domain,
        )
    }
}

/// Runs `trellis ca init`.
pub fn run(a: InitArgs, global: &Global) -> anyhow::Result<()> {
    let td_text = global
        .connection
        .trust_domain
        .as_deref()
        .unwrap_or(DEFAULT_TRUST_DOMAIN);
    let td =
        TrustDomain::new(td_text).map_err(|e| usage(format!("--trust-domain {td_text:?}: {e}")))?;
    let root_ttl = args::duration("--root-ttl", &a.root_ttl)?;
    let intermediate_ttl = args::duration("--intermediate-ttl", &a.intermediate_ttl)?;
    if intermediate_ttl < Duration::from_secs(48 * 3600) || root_ttl < intermediate_ttl {
        return Err(usage(
            "--intermediate-ttl must be at least 48h and --root-ttl at least --intermediate-ttl",
        ));
    }
    files::require_empty_dir(&a.dir)?;

    let now = SystemTime::now();
    let root = new_root(&td, now, root_ttl)?;
    let root_key_pem = Zeroizing::new(root.key.serialize_pem());
    let root = SigningCa::new(root.cert, root.key)?;
    let inter = new_intermediate(&td, &root, now, intermediate_ttl)?;
    let inter_key_pem = Zeroizing::new(inter.key.serialize_pem());
    let inter = SigningCa::new(inter.cert, inter.key)?;

    let admin_id = td.id(ADMIN_PATH)?;
    let admin_key = WorkloadKey::generate()?;
    let admin = inter.sign_leaf(
        &LeafSpec {
            spiffe_id: admin_id.clone(),
            dns_names: Vec::new(),
            public_point: admin_key.key_pair().public_key_raw().to_vec(),
            lifetime: ca_files::ADMIN_LIFETIME,
        },
        now,
    )?;

    files::ensure_dir(&a.dir)?;
    let public = |name: &str, pem: String| -> anyhow::Result<PathBuf> {
        let path = a.dir.join(name);
        files::write_atomic(&path, pem.as_bytes(), PUBLIC_MODE)?;
        Ok(path)
    };
    let secret = |name: &str, pem: &str| -> anyhow::Result<PathBuf> {
        let path = a.dir.join(name);
        files::write_secret(&path, pem.as_bytes())?;
        Ok(path)
    };
    let written = vec![
        public(ca_files::ROOT_CERT, pem::certs_to_pem(&[&root.cert]))?,
        secret(ca_files::ROOT_KEY, &root_key_pem)?,
        public(
            ca_files::INTERMEDIATE_CERT,
            pem::certs_to_pem(&[&inter.cert]),
        )?,
        secret(ca_files::INTERMEDIATE_KEY, &inter_key_pem)?,
        public(
            ca_files::ADMIN_CERT,
            pem::certs_to_pem(&[&admin.der, &inter.cert]),
        )?,
        secret(ca_files::ADMIN_KEY, &admin_key.to_pem())?,
        public(ca_files::BUNDLE, pem::certs_to_pem(&[&root.cert]))?,
    ];

    let fingerprint = trellis_identity::bundle::spki_sha256(&root.cert)?;
    let report = InitReport {
        dir: a.dir.clone(),
        trust_domain: td.to_string(),
        root_id: root.id.clone(),
        root_spki_sha256: hex::encode(&fingerprint),
        root_not_after: timefmt::rfc3339(root.not_after),
        intermediate_not_after: timefmt::rfc3339(inter.not_after),
        admin_spiffe_id: admin_id.to_string(),
        admin_not_after: timefmt::rfc3339(admin.not_after),
        files: written,
    };
    output::emit(global.output, &report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Format;
    use std::os::unix::fs::PermissionsExt;
    use trellis_identity::TrustBundle;
    use trellis_identity::bundle::Usage;

    fn global(td: &str) -> Global {
        Global {
            output: Format::Json,
            connection: crate::context::ConnectionFlags {
                trust_domain: Some(td.into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn writes_an_importable_ca_whose_admin_chain_verifies() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("ca");
        run(
            InitArgs {
                dir: dir.clone(),
                root_ttl: "3650d".into(),
                intermediate_ttl: "365d".into(),
            },
            &global("example.org"),
        )
        .expect("init");
        for (name, mode) in [
            ("root.pem", 0o644),
            ("root.key.pem", 0o600),
            ("intermediate.pem", 0o644),
            ("intermediate.key.pem", 0o600),
            ("admin.pem", 0o644),
            ("admin.key.pem", 0o600),
            ("bundle.pem", 0o644),
        ] {
            let meta = std::fs::metadata(dir.join(name)).expect(name);
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
        let read = |name: &str| std::fs::read(dir.join(name)).expect(name);
        let td = TrustDomain::new("example.org").expect("td");
        let bundle = TrustBundle::from_pem(td, 1, &read("bundle.pem")).expect("bundle");
        let chain = pem::certs_from_pem(&read("admin.pem")).expect("chain");
        assert_eq!(chain.len(), 2);
        let verified = bundle
            .verify(&chain, SystemTime::now(), Usage::Client)
            .expect("admin chain verifies against the bundle");
        assert_eq!(
            verified.spiffe_id.as_str(),
            "spiffe://example.org/trellis/admin/default"
        );
        let key = WorkloadKey::from_pem(&String::from_utf8_lossy(&read("admin.key.pem")))
            .expect("admin key");
        let leaf = trellis_identity::CertInfo::parse(&chain[0]).expect("leaf");
        assert_eq!(leaf.spki_der, key.public_key_der());
        let left = leaf
            .not_after
            .duration_since(SystemTime::now())
            .expect("valid");
        assert!(left > Duration::from_secs(89 * 86_400), "{left:?}");

        let again = run(
            InitArgs {
                dir,
                root_ttl: "3650d".into(),
                intermediate_ttl: "365d".into(),
            },
            &global("example.org"),
        )
        .expect_err("refuses a non-empty directory");
        assert_eq!(crate::error::exit_code(&again), crate::error::EXIT_USAGE);
    }
}
