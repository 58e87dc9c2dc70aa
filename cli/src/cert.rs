//! `trellis cert list | show`: what the CA has issued. `cert issue` is in `cert_issue.rs`.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use trellis_identity::{CertInfo, hex, pem};
use trellis_proto::admin::v1::{CertificateRecord, GetCertificateRequest, ListCertificatesRequest};

use crate::Global;
use crate::cert_issue::{self, IssueArgs};
use crate::client::Target;
use crate::context;
use crate::error::usage;
use crate::output::{self, Cell, Fields, Report, Style, Table, Tone, expiry_cell};
use crate::{args, timefmt};

/// Certificates that expire sooner than this are shown as a warning.
const SOON: Duration = Duration::from_secs(10 * 60);

/// `trellis cert ...`
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Issue a certificate for a workload outside the mesh; its key is made here and never
    /// leaves this machine.
    Issue(IssueArgs),
    /// List issued certificates (unexpired ones unless --include-expired).
    List(ListArgs),
    /// Show one issued certificate by serial.
    Show(ShowArgs),
}

/// Arguments of `trellis cert list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only certificates with exactly this SPIFFE ID.
    #[arg(long, value_name = "ID")]
    identity: Option<String>,
    /// Only certificates that expire within this long, e.g. 10m.
    #[arg(long, value_name = "DURATION")]
    expiring_within: Option<String>,
    /// Only certificates that chain to this root (its id, as `trellis ca status` shows).
    #[arg(long, value_name = "ROOT_ID")]
    root: Option<String>,
    /// Include certificates that have already expired.
    #[arg(long)]
    include_expired: bool,
    /// At most this many certificates.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

/// Arguments of `trellis cert show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The serial number in hex (colons and case are ignored).
    serial: String,
    /// Print only the certificate as PEM.
    #[arg(long)]
    pem: bool,
}

/// One issued certificate, as scripts see it.
#[derive(Debug, Serialize)]
struct Record {
    serial: String,
    spiffe_id: String,
    dns_names: Vec<String>,
    not_before: String,
    not_after: String,
    issued_at: String,
    root_id: String,
    issued_via: String,
    expired: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_pem: Option<String>,
    #[serde(skip)]
    not_after_time: SystemTime,
    #[serde(skip)]
    certificate_der: Vec<u8>,
}

fn time_text(ts: Option<&prost_types::Timestamp>) -> (String, SystemTime) {
    match timefmt::from_proto(ts) {
        Some(t) => (timefmt::rfc3339(t), t),
        None => (String::new(), SystemTime::UNIX_EPOCH),
    }
}

impl Record {
    fn new(r: CertificateRecord, with_pem: bool, now: SystemTime) -> Self {
        let (not_before, _) = time_text(r.not_before.as_ref());
        let (not_after, not_after_time) = time_text(r.not_after.as_ref());
        let (issued_at, _) = time_text(r.issued_at.as_ref());
        let certificate_pem = (with_pem && !r.certificate_der.is_empty())
            .then(|| pem::certs_to_pem(&[&r.certificate_der]));
        Self {
            serial: r.serial,
            spiffe_id: r.spiffe_id,
            dns_names: r.dns_names,
            not_before,
            not_after,
            issued_at,
            root_id: r.root_id,
            issued_via: r.issued_via,
            expired: timefmt::is_expired(not_after_time, now),
            certificate_pem,
            not_after_time,
            certificate_der: r.certificate_der,
        }
    }
}

#[derive(Debug, Serialize)]
struct ListReport {
    certificates: Vec<Record>,
    /// True if more certificates matched than --limit allowed.
    truncated: bool,
    #[serde(skip)]
    now: SystemTime,
}

impl Report for ListReport {
    fn human(&self, style: Style) -> String {
        if self.certificates.is_empty() {
            return "No certificates match.\n".into();
        }
        let mut table = Table::new(&["SERIAL", "SPIFFE ID", "NOT AFTER", "EXPIRES", "ROOT", "VIA"]);
        for r in &self.certificates {
            table.row(vec![
                r.serial.clone().into(),
                r.spiffe_id.clone().into(),
                r.not_after.clone().into(),
                expiry_cell(
                    timefmt::expiry(r.not_after_time, self.now),
                    r.not_after_time,
                    self.now,
                    SOON,
                ),
                r.root_id.clone().into(),
                r.issued_via.clone().into(),
            ]);
        }
        let mut out = table.render(style);
        let count = self.certificates.len();
        out.push_str(&format!(
            "{count} certificate{}{}\n",
            if count == 1 { "" } else { "s" },
            if self.truncated {
                " (more matched; raise --limit or filter)"
            } else {
                ""
            }
        ));
        out
    }
}

#[derive(Debug, Serialize)]
struct ShowReport {
    #[serde(flatten)]
    record: Record,
    #[serde(skip)]
    pem_only: bool,
    #[serde(skip)]
    now: SystemTime,
}

impl Report for ShowReport {
    fn human(&self, style: Style) -> String {
        let r = &self.record;
        if self.pem_only {
            return r.certificate_pem.clone().unwrap_or_default();
        }
        let mut fields = Fields::indented(0);
        fields
            .add("Serial", r.serial.clone())
            .add("SPIFFE ID", r.spiffe_id.clone());
        if !r.dns_names.is_empty() {
            fields.add("DNS names", r.dns_names.join(", "));
        }
        fields.add("Not before", r.not_before.clone()).add(
            "Not after",
            expiry_cell(
                format!(
                    "{} ({})",
                    r.not_after,
                    timefmt::expiry(r.not_after_time, self.now)
                ),
                r.not_after_time,
                self.now,
                SOON,
            ),
        );
        fields
            .add("Issued at", r.issued_at.clone())
            .add("Issued via", r.issued_via.clone())
            .add("Root", r.root_id.clone());
        if let Ok(info) = CertInfo::parse(&r.certificate_der) {
            fields
                .add("Subject", info.subject)
                .add("Issuer", info.issuer)
                .add("Key", info.key_algorithm);
        }
        if r.expired {
            fields.add("State", Cell::toned("expired", Tone::Bad));
        }
        fields.render(style)
    }
}

/// Runs `trellis cert ...`.
pub async fn run(command: CertCommand, global: &Global) -> anyhow::Result<()> {
    match command {
        CertCommand::Issue(args) => cert_issue::run(args, global).await,
        CertCommand::List(args) => list(args, global).await,
        CertCommand::Show(args) => show(args, global).await,
    }
}

async fn list(a: ListArgs, global: &Global) -> anyhow::Result<()> {
    let spiffe_id = match &a.identity {
        Some(text) => args::spiffe_id("--identity", text)?.to_string(),
        None => String::new(),
    };
    let expiring_within_seconds = match &a.expiring_within {
        Some(text) => args::duration("--expiring-within", text)?.as_secs().max(1),
        None => 0,
    };
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let mut admin = target.admin().await?;
    let response = target
        .call(
            "the certificate list",
            admin.list_certificates(ListCertificatesRequest {
                spiffe_id,
                root_id: a.root.unwrap_or_default(),
                expiring_within_seconds,
                include_expired: a.include_expired,
                limit: a.limit,
            }),
        )
        .await?;
    let now = SystemTime::now();
    let report = ListReport {
        certificates: response
            .certificates
            .into_iter()
            .map(|r| Record::new(r, false, now))
            .collect(),
        truncated: response.truncated,
        now,
    };
    output::emit(global.output, &report)
}

async fn show(a: ShowArgs, global: &Global) -> anyhow::Result<()> {
    let serial = hex::decode(a.serial.trim())
        .filter(|s| !s.is_empty())
        .map(|s| hex::encode(&s))
        .ok_or_else(|| {
            usage(format!(
                "serial {:?} is not hex; copy it from `trellis cert list`",
                a.serial
            ))
        })?;
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let mut admin = target.admin().await?;
    let record = target
        .call(
            "the certificate lookup",
            admin.get_certificate(GetCertificateRequest {
                serial: serial.clone(),
            }),
        )
        .await?;
    let now = SystemTime::now();
    let report = ShowReport {
        record: Record::new(record, true, now),
        pem_only: a.pem,
        now,
    };
    output::emit(global.output, &report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    fn record(serial: &str, id: &str, not_after: SystemTime) -> CertificateRecord {
        CertificateRecord {
            serial: serial.into(),
            spiffe_id: id.into(),
            not_after: Some(Timestamp::from(not_after)),
            root_id: "0123456789abcdef".into(),
            issued_via: "admin".into(),
            ..Default::default()
        }
    }

    #[test]
    fn list_renders_a_table_with_time_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let report = ListReport {
            certificates: vec![
                Record::new(
                    record("aa11", "spiffe://td/web", now + Duration::from_secs(3600)),
                    false,
                    now,
                ),
                Record::new(
                    record("bb22", "spiffe://td/db", now - Duration::from_secs(120)),
                    false,
                    now,
                ),
            ],
            truncated: true,
            now,
        };
        let text = report.human(Style::PLAIN);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "SERIAL  SPIFFE ID        NOT AFTER             EXPIRES         ROOT              VIA"
        );
        assert!(
            lines[1].starts_with("aa11    spiffe://td/web  2027-01-15T09:00:00Z  in 1h"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("expired 2m ago"), "{}", lines[2]);
        assert_eq!(
            lines[3],
            "2 certificates (more matched; raise --limit or filter)"
        );
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["certificates"][1]["expired"], true);
        assert_eq!(json["certificates"][0]["serial"], "aa11");
        assert_eq!(json["truncated"], true);
    }

    #[test]
    fn empty_list_says_so() {
        let report = ListReport {
            certificates: Vec::new(),
            truncated: false,
            now: SystemTime::now(),
        };
        assert_eq!(report.human(Style::PLAIN), "No certificates match.\n");
    }
}
