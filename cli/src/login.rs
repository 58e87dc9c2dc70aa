//! `trellis login`: check that a CA address and admin credentials work together, then save
//! them in the context file so later commands need no flags.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use trellis_identity::ca_files;
use trellis_proto::admin::v1::GetStatusRequest;

use crate::Global;
use crate::client::Target;
use crate::context::{ContextFile, Settings, default_context_path};
use crate::error::usage;
use crate::files;
use crate::output::{self, Fields, Report, Style, Tone};
use crate::timefmt;

/// Arguments of `trellis login`. The address comes from the global `--ca-addr`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Directory with admin.pem, admin.key.pem and bundle.pem (a CA data directory's
    /// admin/ folder, or what `trellis ca init` wrote). --admin-cert, --admin-key and
    /// --bundle override single files.
    #[arg(long, value_name = "DIR")]
    admin_dir: Option<PathBuf>,
    /// Save the settings without contacting the CA.
    #[arg(long)]
    skip_check: bool,
}

#[derive(Debug, Serialize)]
struct LoginReport {
    context_file: PathBuf,
    ca_addr: String,
    trust_domain: String,
    admin_spiffe_id: String,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    bundle: PathBuf,
    admin_cert_expires_at: String,
    #[serde(skip)]
    admin_cert_not_after: SystemTime,
    /// Whether the CA was contacted and accepted the credentials.
    checked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_version: Option<String>,
}

impl Report for LoginReport {
    fn human(&self, style: Style) -> String {
        let now = SystemTime::now();
        let mut out = if self.checked {
            format!(
                "{} to the CA at {} (trust domain {}, trellis-ca {}).\n",
                style.paint(Tone::Good, "Logged in"),
                self.ca_addr,
                self.trust_domain,
                self.ca_version.as_deref().unwrap_or("?")
            )
        } else {
            format!(
                "Saved settings for the CA at {} (not checked).\n",
                self.ca_addr
            )
        };
        let mut fields = Fields::indented(2);
        fields
            .add("Admin identity", self.admin_spiffe_id.clone())
            .add("Admin cert", self.admin_cert.display().to_string())
            .add("Admin key", self.admin_key.display().to_string())
            .add("Bundle", self.bundle.display().to_string())
            .add("Context file", self.context_file.display().to_string());
        fields.add(
            "Cert expires",
            format!(
                "{} ({})",
                self.admin_cert_expires_at,
                timefmt::expiry(self.admin_cert_not_after, now)
            ),
        );
        out.push_str(&fields.render(style));
        out
    }
}

fn absolute(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(path)
        .map_err(|e| usage(format!("cannot use {what} {}: {e}", path.display())))
}

/// Runs `trellis login`.
pub async fn run(args: LoginArgs, global: &Global) -> anyhow::Result<()> {
    let flags = &global.connection;
    let in_dir = |name: &str| args.admin_dir.as_ref().map(|d| d.join(name));
    let pick = |flag: &Option<PathBuf>, name: &str, what: &str| -> anyhow::Result<PathBuf> {
        let path = flag.clone().or_else(|| in_dir(name)).ok_or_else(|| {
            usage(format!(
                "login needs --admin-dir DIR (with admin.pem, admin.key.pem, bundle.pem) or --admin-cert, --admin-key and --bundle; missing: {what}"
            ))
        })?;
        absolute(&path, what)
    };
    let ca_addr = flags.ca_addr.clone().ok_or_else(|| {
        usage("login needs the CA's address: trellis login --ca-addr HOST:PORT --admin-dir DIR")
    })?;
    let settings = Settings {
        ca_addr: Some(ca_addr.clone()),
        trust_domain: flags.trust_domain.clone(),
        admin_cert: Some(pick(
            &flags.admin_cert,
            ca_files::ADMIN_CERT,
            "admin certificate",
        )?),
        admin_key: Some(pick(&flags.admin_key, ca_files::ADMIN_KEY, "admin key")?),
        bundle: Some(pick(&flags.bundle, ca_files::BUNDLE, "trust bundle")?),
        context_file: None,
    };
    let target = Target::load(&settings)?;
    let ca_version = if args.skip_check {
        None
    } else {
        let mut admin = target.admin().await?;
        let status = target
            .call("status", admin.get_status(GetStatusRequest {}))
            .await?;
        if status.trust_domain != target.trust_domain.as_str() {
            anyhow::bail!(
                "the CA at {ca_addr} serves trust domain {:?}, but the admin credentials are for {:?}",
                status.trust_domain,
                target.trust_domain.as_str()
            );
        }
        Some(status.version)
    };
    let context_file = default_context_path(flags).ok_or_else(|| {
        usage("no place for the context file: set HOME, or pass --context FILE / TRELLIS_CONTEXT")
    })?;
    let saved = ContextFile {
        ca_addr: Some(ca_addr.clone()),
        trust_domain: Some(target.trust_domain.to_string()),
        admin_cert: settings.admin_cert.clone(),
        admin_key: settings.admin_key.clone(),
        bundle: settings.bundle.clone(),
    };
    if let Some(parent) = context_file.parent().filter(|p| !p.as_os_str().is_empty()) {
        files::ensure_dir(parent)?;
    }
    let text = format!(
        "# Written by `trellis login`; flags and TRELLIS_* variables override these.\n{}",
        toml::to_string(&saved)?
    );
    files::write_atomic(&context_file, text.as_bytes(), files::SECRET_MODE)?;
    let info = &target.admin_info;
    let report = LoginReport {
        context_file,
        ca_addr,
        trust_domain: target.trust_domain.to_string(),
        admin_spiffe_id: info
            .spiffe_id()
            .map(|id| id.to_string())
            .unwrap_or_default(),
        admin_cert: settings.admin_cert.unwrap_or_default(),
        admin_key: settings.admin_key.unwrap_or_default(),
        bundle: settings.bundle.unwrap_or_default(),
        admin_cert_expires_at: timefmt::rfc3339(info.not_after),
        admin_cert_not_after: info.not_after,
        checked: ca_version.is_some(),
        ca_version,
    };
    output::emit(global.output, &report)
}
