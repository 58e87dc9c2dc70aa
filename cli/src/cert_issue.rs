//! `trellis cert issue`: a certificate for a workload outside the mesh. The key is
//! generated here and written only to a 0600 file; the CA sees a CSR.

use std::path::PathBuf;
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use trellis_identity::bundle::Usage;
use trellis_identity::{CertInfo, TrustBundle, TrustDomain, WorkloadKey, pem};
use trellis_proto::admin::v1::IssueCertificateRequest;

use crate::Global;
use crate::client::Target;
use crate::output::{self, Fields, Report, Style, Tone};
use crate::{args, context, files, timefmt};

/// The certificate chain file: leaf, then intermediate.
pub const CHAIN_FILE: &str = "svid.pem";
/// The private key file (0600).
pub const KEY_FILE: &str = "svid_key.pem";
/// The trust bundle file: the CA's roots.
pub const BUNDLE_FILE: &str = "bundle.pem";

/// Arguments of `trellis cert issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The SPIFFE ID to put in the certificate.
    #[arg(long, value_name = "ID")]
    spiffe_id: String,
    /// A DNS name to add as a SAN, for clients that check host names (repeatable).
    #[arg(long = "dns", value_name = "NAME")]
    dns_names: Vec<String>,
    /// Lifetime, e.g. 1h [default: the CA's default, 1h unless configured].
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// Directory to write svid.pem, svid_key.pem and bundle.pem into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace those files if they already exist.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Serialize)]
struct IssueReport {
    spiffe_id: String,
    serial: String,
    dns_names: Vec<String>,
    not_after: String,
    root_id: String,
    chain_file: PathBuf,
    key_file: PathBuf,
    bundle_file: PathBuf,
    #[serde(skip)]
    not_after_time: SystemTime,
}

impl Report for IssueReport {
    fn human(&self, style: Style) -> String {
        let mut fields = Fields::indented(2);
        fields
            .add("SPIFFE ID", self.spiffe_id.clone())
            .add("Serial", self.serial.clone());
        if !self.dns_names.is_empty() {
            fields.add("DNS names", self.dns_names.join(", "));
        }
        fields
            .add(
                "Expires",
                format!(
                    "{} ({})",
                    self.not_after,
                    timefmt::expiry(self.not_after_time, SystemTime::now())
                ),
            )
            .add("Chain", self.chain_file.display().to_string())
            .add("Key", format!("{} (mode 0600)", self.key_file.display()))
            .add("Bundle", self.bundle_file.display().to_string());
        format!(
            "{}\n{}",
            style.paint(Tone::Good, "Certificate issued."),
            fields.render(style)
        )
    }
}

/// Checks what the CA sent back before anything is written: the chain verifies against
/// the CA's bundle, carries the requested identity, and certifies our key.
fn check_issued(
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
    wanted_id: &str,
    key: &WorkloadKey,
) -> anyhow::Result<(CertInfo, String)> {
    let verified = bundle
        .verify(chain, SystemTime::now(), Usage::Client)
        .map_err(|e| anyhow::anyhow!("the CA's certificate does not verify: {e}"))?;
    if verified.spiffe_id.as_str() != wanted_id {
        anyhow::bail!(
            "the CA issued {} instead of {wanted_id}; nothing was written",
            verified.spiffe_id
        );
    }
    let leaf = CertInfo::parse(&chain[0])?;
    if leaf.spki_der != key.public_key_der() {
        anyhow::bail!("the CA's certificate is not for the key made here; nothing was written");
    }
    Ok((leaf, verified.root_id))
}

/// Runs `trellis cert issue`.
pub async fn run(a: IssueArgs, global: &Global) -> anyhow::Result<()> {
    let id = args::spiffe_id("--spiffe-id", &a.spiffe_id)?;
    let ttl_seconds = match &a.ttl {
        Some(text) => args::ttl_seconds("--ttl", text)?,
        None => 0,
    };
    let names = [CHAIN_FILE, KEY_FILE, BUNDLE_FILE];
    files::ensure_dir(&a.out)?;
    if !a.force {
        files::refuse_existing(&a.out, &names)?;
    }
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let key = WorkloadKey::generate()?;
    let csr_der = key.csr_der(Some(&id))?;
    let mut admin = target.admin().await?;
    let response = target
        .call(
            "the certificate",
            admin.issue_certificate(IssueCertificateRequest {
                csr_der,
                spiffe_id: id.to_string(),
                dns_names: a.dns_names.clone(),
                ttl_seconds,
            }),
        )
        .await?;
    let chain: Vec<CertificateDer<'static>> = response
        .chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let proto_bundle = response
        .bundle
        .ok_or_else(|| anyhow::anyhow!("the CA's answer has no trust bundle"))?;
    let bundle = TrustBundle::new(
        TrustDomain::new(&proto_bundle.trust_domain)?,
        proto_bundle.version,
        proto_bundle
            .root_certificates_der
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
    )?;
    let (leaf, root_id) = check_issued(&chain, &bundle, id.as_str(), &key)?;

    let chain_file = a.out.join(CHAIN_FILE);
    let key_file = a.out.join(KEY_FILE);
    let bundle_file = a.out.join(BUNDLE_FILE);
    // Key first: a chain on disk without its key would be useless.
    files::write_secret(&key_file, key.to_pem().as_bytes())?;
    files::write_atomic(
        &chain_file,
        pem::certs_to_pem(&chain).as_bytes(),
        files::PUBLIC_MODE,
    )?;
    files::write_atomic(&bundle_file, bundle.to_pem().as_bytes(), files::PUBLIC_MODE)?;

    let report = IssueReport {
        spiffe_id: id.to_string(),
        serial: response.serial,
        dns_names: leaf.dns_names,
        not_after: timefmt::rfc3339(leaf.not_after),
        root_id,
        chain_file,
        key_file,
        bundle_file,
        not_after_time: leaf.not_after,
    };
    output::emit(global.output, &report)
}
