//! `trellis cert list | show | revoke`: what the CA has issued, and taking it back.
//! `cert issue` is in `cert_issue.rs`.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use trellis_identity::crl_reason::CrlReason;
use trellis_identity::{CertInfo, hex, pem};
use trellis_proto::admin::v1::{
    CertificateRecord, GetCertificateRequest, ListCertificatesRequest, RevokeCertificateRequest,
};

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
    /// Revoke one certificate by serial, or every unexpired certificate of an identity:
    /// the CA refuses to renew them and tells every sidecar.
    Revoke(RevokeArgs),
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
    /// At most this many certificates (fetched from the CA a page at a time).
    #[arg(long, default_value_t = 1000)]
    limit: u64,
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

/// Arguments of `trellis cert revoke`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["serial", "identity"])))]
pub struct RevokeArgs {
    /// The serial number in hex, as `trellis cert list` shows it (colons and case are
    /// ignored).
    serial: Option<String>,
    /// Instead of one serial: every unexpired certificate of this SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    identity: Option<String>,
    /// Why, for the audit log (e.g. "key compromise"). Text that names an RFC 5280
    /// reason (any case, spaces or hyphens) also sets --reason-code.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// The RFC 5280 reason code the CRL entries carry; without it (and without a --reason
    /// that names one) they carry none.
    #[arg(long, value_enum, value_name = "CODE")]
    reason_code: Option<ReasonCode>,
}

/// The RFC 5280 `CRLReason`s a revocation can carry, as flag values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReasonCode {
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl From<ReasonCode> for CrlReason {
    fn from(code: ReasonCode) -> Self {
        match code {
            ReasonCode::KeyCompromise => CrlReason::KeyCompromise,
            ReasonCode::CaCompromise => CrlReason::CaCompromise,
            ReasonCode::AffiliationChanged => CrlReason::AffiliationChanged,
            ReasonCode::Superseded => CrlReason::Superseded,
            ReasonCode::CessationOfOperation => CrlReason::CessationOfOperation,
            ReasonCode::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
            ReasonCode::AaCompromise => CrlReason::AaCompromise,
        }
    }
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
    revoked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revocation_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_pem: Option<String>,
    #[serde(skip)]
    not_after_time: SystemTime,
    #[serde(skip)]
    revoked_at_time: Option<SystemTime>,
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
        let revoked_at_time = timefmt::from_proto(r.revoked_at.as_ref());
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
            revoked: revoked_at_time.is_some(),
            revoked_at: revoked_at_time.map(timefmt::rfc3339),
            revocation_reason: revoked_at_time.map(|_| r.revocation_reason),
            certificate_pem,
            not_after_time,
            revoked_at_time,
            certificate_der: r.certificate_der,
        }
    }
}

/// `cert list` output, printed page by page as the CA sends them: a table (its header
/// once) or one JSON document `{"certificates": [...], "truncated": bool}`.
struct ListPrinter {
    format: output::Format,
    style: Style,
    now: SystemTime,
    count: u64,
}

const LIST_HEADERS: [&str; 7] = [
    "SERIAL",
    "SPIFFE ID",
    "NOT AFTER",
    "EXPIRES",
    "ROOT",
    "VIA",
    "REVOKED",
];

impl ListPrinter {
    fn new(format: output::Format, now: SystemTime) -> Self {
        Self {
            format,
            style: Style::for_stdout(),
            now,
            count: 0,
        }
    }

    /// The text of one page.
    fn page(&mut self, records: &[Record]) -> anyhow::Result<String> {
        if records.is_empty() {
            return Ok(String::new());
        }
        let first = self.count == 0;
        self.count += records.len() as u64;
        let text = match self.format {
            output::Format::Human => {
                let mut table = Table::new(&LIST_HEADERS);
                for r in records {
                    table.row(self.row(r));
                }
                let text = table.render(self.style);
                if first {
                    text
                } else {
                    // The header once, at the top; each page aligns its own columns.
                    text.split_once('\n')
                        .map(|(_, rows)| rows.to_owned())
                        .unwrap_or_default()
                }
            }
            output::Format::Json => {
                let mut text = String::new();
                for (i, r) in records.iter().enumerate() {
                    let json = serde_json::to_string_pretty(r)?;
                    let sep = if first && i == 0 { "\n" } else { ",\n" };
                    text.push_str(sep);
                    text.push_str(&indent(&json, "    "));
                }
                text
            }
        };
        Ok(text)
    }

    fn row(&self, r: &Record) -> Vec<Cell> {
        vec![
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
            match r.revoked_at_time {
                Some(t) => Cell::toned(timefmt::since(t, self.now), Tone::Bad),
                None => Cell::from(""),
            },
        ]
    }

    /// What goes before the first page.
    fn start(&self) -> &'static str {
        match self.format {
            output::Format::Human => "",
            output::Format::Json => "{\n  \"certificates\": [",
        }
    }

    /// What goes after the last page. `truncated`: --limit stopped the listing while the CA
    /// still had more.
    fn finish(&self, truncated: bool) -> String {
        match self.format {
            output::Format::Json => format!(
                "{}],\n  \"truncated\": {truncated}\n}}\n",
                if self.count == 0 { "" } else { "\n  " }
            ),
            output::Format::Human if self.count == 0 => "No certificates match.\n".to_owned(),
            output::Format::Human => format!(
                "{} certificate{}{}\n",
                self.count,
                if self.count == 1 { "" } else { "s" },
                if truncated {
                    " (more may match; raise --limit or filter)"
                } else {
                    ""
                }
            ),
        }
    }
}

/// `text` with every line indented by `by`.
fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|line| format!("{by}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
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
        if let (Some(at), Some(t)) = (&r.revoked_at, r.revoked_at_time) {
            fields.add(
                "Revoked",
                Cell::toned(
                    format!(
                        "{at} ({}): {}",
                        timefmt::since(t, self.now),
                        r.revocation_reason.as_deref().unwrap_or_default()
                    ),
                    Tone::Bad,
                ),
            );
        }
        if r.expired {
            fields.add("State", Cell::toned("expired", Tone::Bad));
        }
        fields.render(style)
    }
}

/// What `cert revoke` did.
#[derive(Debug, Serialize)]
struct RevokeReport {
    /// The serial asked for, if revoking by serial.
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    /// The identity asked for, if revoking by identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The CRL entries' reason code, `keyCompromise (1)`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_code: Option<String>,
    /// Serials newly revoked by this command; already-revoked ones are not repeated.
    revoked: Vec<String>,
}

impl Report for RevokeReport {
    fn human(&self, style: Style) -> String {
        let what = match (&self.serial, &self.spiffe_id) {
            (Some(serial), _) => format!("certificate {serial} was"),
            (None, Some(id)) => format!("every unexpired certificate of {id} was"),
            (None, None) => "everything asked for was".into(),
        };
        if self.revoked.is_empty() {
            return format!("No certificate was newly revoked: {what} already revoked.\n");
        }
        let count = self.revoked.len();
        let mut out = format!(
            "Revoked {count} certificate{}{}:\n",
            if count == 1 { "" } else { "s" },
            match &self.spiffe_id {
                Some(id) => format!(" of {id}"),
                None => String::new(),
            }
        );
        for serial in &self.revoked {
            out.push_str(&format!("  {}\n", style.paint(Tone::Bad, serial)));
        }
        if let Some(reason) = &self.reason {
            out.push_str(&format!("Reason: {reason}\n"));
        }
        if let Some(code) = &self.reason_code {
            out.push_str(&format!("CRL reason code: {code}\n"));
        }
        out.push_str(&format!(
            "The CA refuses to renew {} and streams the revocation to every sidecar.\n",
            if count == 1 { "it" } else { "them" }
        ));
        out
    }
}

/// Runs `trellis cert ...`.
pub async fn run(command: CertCommand, global: &Global) -> anyhow::Result<()> {
    match command {
        CertCommand::Issue(args) => cert_issue::run(args, global).await,
        CertCommand::List(args) => list(args, global).await,
        CertCommand::Show(args) => show(args, global).await,
        CertCommand::Revoke(args) => revoke(args, global).await,
    }
}

/// A serial as the CA stores it (lowercase hex), from what a user typed.
fn parse_serial(text: &str) -> anyhow::Result<String> {
    hex::decode(text.trim())
        .filter(|s| !s.is_empty())
        .map(|s| hex::encode(&s))
        .ok_or_else(|| {
            usage(format!(
                "serial {text:?} is not hex; copy it from `trellis cert list`"
            ))
        })
}

/// The most certificates asked for in one page (the CA's own bound).
const PAGE_SIZE: u64 = 1000;

async fn list(a: ListArgs, global: &Global) -> anyhow::Result<()> {
    let spiffe_id = match &a.identity {
        Some(text) => args::spiffe_id("--identity", text)?.to_string(),
        None => String::new(),
    };
    let expiring_within_seconds = match &a.expiring_within {
        Some(text) => args::duration("--expiring-within", text)?.as_secs().max(1),
        None => 0,
    };
    if a.limit == 0 {
        return Err(usage("--limit 0 would list nothing; give at least 1"));
    }
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let mut admin = target.admin().await?;
    let now = SystemTime::now();
    let mut printer = ListPrinter::new(global.output, now);
    let mut page_token = String::new();
    let mut left = a.limit;
    if !output::print(printer.start())? {
        return Ok(());
    }
    // Page by page, each printed as it arrives: one reply holds at most PAGE_SIZE records,
    // so no listing outgrows gRPC's message limit.
    let truncated = loop {
        if left == 0 {
            break !page_token.is_empty();
        }
        let response = target
            .call(
                "the certificate list",
                admin.list_certificates(ListCertificatesRequest {
                    spiffe_id: spiffe_id.clone(),
                    root_id: a.root.clone().unwrap_or_default(),
                    expiring_within_seconds,
                    include_expired: a.include_expired,
                    page_size: left.min(PAGE_SIZE) as u32,
                    page_token: page_token.clone(),
                }),
            )
            .await?;
        let records: Vec<Record> = response
            .certificates
            .into_iter()
            .take(usize::try_from(left).unwrap_or(usize::MAX))
            .map(|r| Record::new(r, false, now))
            .collect();
        left -= records.len() as u64;
        if !output::print(&printer.page(&records)?)? {
            return Ok(());
        }
        if response.next_page_token.is_empty() {
            break false;
        }
        page_token = response.next_page_token;
    };
    output::print(&printer.finish(truncated))?;
    Ok(())
}

async fn show(a: ShowArgs, global: &Global) -> anyhow::Result<()> {
    let serial = parse_serial(&a.serial)?;
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

async fn revoke(a: RevokeArgs, global: &Global) -> anyhow::Result<()> {
    let serial = a.serial.as_deref().map(parse_serial).transpose()?;
    let spiffe_id = match &a.identity {
        Some(text) => Some(args::spiffe_id("--identity", text)?.to_string()),
        None => None,
    };
    let reason = a.reason.filter(|r| !r.trim().is_empty());
    // The CA reads a reason's text the same way when no code is sent.
    let code = a
        .reason_code
        .map(CrlReason::from)
        .or_else(|| reason.as_deref().and_then(CrlReason::from_text));
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let mut admin = target.admin().await?;
    let response = target
        .call(
            "the revocation",
            admin.revoke_certificate(RevokeCertificateRequest {
                serial: serial.clone().unwrap_or_default(),
                spiffe_id: spiffe_id.clone().unwrap_or_default(),
                reason: reason.clone().unwrap_or_default(),
                reason_code: code.map_or(0, |c| c.code().into()),
            }),
        )
        .await?;
    let report = RevokeReport {
        serial,
        spiffe_id,
        reason,
        reason_code: code.map(|c| c.to_string()),
        revoked: response.serials,
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

    /// Everything `cert list` prints for these pages.
    fn listing(format: output::Format, pages: &[Vec<Record>], truncated: bool) -> String {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut printer = ListPrinter::new(format, now);
        printer.style = Style::PLAIN;
        let mut text = printer.start().to_owned();
        for page in pages {
            text.push_str(&printer.page(page).expect("page"));
        }
        text.push_str(&printer.finish(truncated));
        text
    }

    fn two_pages() -> Vec<Vec<Record>> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        vec![
            vec![Record::new(
                record("aa11", "spiffe://td/web", now + Duration::from_secs(3600)),
                false,
                now,
            )],
            vec![Record::new(
                CertificateRecord {
                    revoked_at: Some(Timestamp::from(now - Duration::from_secs(300))),
                    revocation_reason: "key compromise".into(),
                    ..record("bb22", "spiffe://td/db", now - Duration::from_secs(120))
                },
                false,
                now,
            )],
        ]
    }

    #[test]
    fn list_renders_a_table_with_time_left_page_by_page() {
        let text = listing(output::Format::Human, &two_pages(), true);
        let lines: Vec<&str> = text.lines().collect();
        // Each page aligns its own columns (the first page's are narrower here).
        assert_eq!(
            lines[0],
            "SERIAL  SPIFFE ID        NOT AFTER             EXPIRES  ROOT              VIA    REVOKED"
        );
        assert!(
            lines[1].starts_with("aa11    spiffe://td/web  2027-01-15T09:00:00Z  in 1h"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].ends_with("admin"),
            "nothing in REVOKED: {}",
            lines[1]
        );
        // The second page: rows only, the header is printed once.
        assert!(lines[2].starts_with("bb22"), "{}", lines[2]);
        assert!(lines[2].contains("expired 2m ago"), "{}", lines[2]);
        assert!(lines[2].ends_with("admin  5m ago"), "{}", lines[2]);
        assert_eq!(
            lines[3],
            "2 certificates (more may match; raise --limit or filter)"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn list_json_is_one_document_however_many_pages() {
        let text = listing(output::Format::Json, &two_pages(), true);
        let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(json["certificates"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["certificates"][1]["expired"], true);
        assert_eq!(json["certificates"][0]["serial"], "aa11");
        assert_eq!(json["certificates"][0]["revoked"], false);
        assert!(json["certificates"][0].get("revoked_at").is_none());
        assert_eq!(json["certificates"][1]["revoked"], true);
        assert_eq!(
            json["certificates"][1]["revoked_at"],
            "2027-01-15T07:55:00Z"
        );
        assert_eq!(
            json["certificates"][1]["revocation_reason"],
            "key compromise"
        );
        assert_eq!(json["truncated"], true);
        for pages in [vec![], vec![vec![], vec![]]] {
            let empty = listing(output::Format::Json, &pages, false);
            let json: serde_json::Value = serde_json::from_str(&empty).expect("valid JSON");
            assert_eq!(
                json,
                serde_json::json!({"certificates": [], "truncated": false})
            );
        }
    }

    #[test]
    fn show_says_when_and_why_it_was_revoked() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let report = ShowReport {
            record: Record::new(
                CertificateRecord {
                    revoked_at: Some(Timestamp::from(now - Duration::from_secs(60))),
                    revocation_reason: "left the company".into(),
                    ..record("aa11", "spiffe://td/web", now + Duration::from_secs(3600))
                },
                false,
                now,
            ),
            pem_only: false,
            now,
        };
        let text = report.human(Style::PLAIN);
        assert!(
            text.contains("Revoked     2027-01-15T07:59:00Z (1m ago): left the company\n"),
            "{text}"
        );
    }

    #[test]
    fn revoke_lists_what_was_newly_revoked_or_says_none_was() {
        let report = RevokeReport {
            serial: None,
            spiffe_id: Some("spiffe://td/web".into()),
            reason: Some("key compromise".into()),
            reason_code: Some(CrlReason::KeyCompromise.to_string()),
            revoked: vec!["aa11".into(), "bb22".into()],
        };
        assert_eq!(
            report.human(Style::PLAIN),
            "Revoked 2 certificates of spiffe://td/web:\n  aa11\n  bb22\nReason: key compromise\n\
             CRL reason code: keyCompromise (1)\n\
             The CA refuses to renew them and streams the revocation to every sidecar.\n"
        );
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["revoked"][1], "bb22");
        assert!(json.get("serial").is_none());
        let none = RevokeReport {
            serial: Some("aa11".into()),
            spiffe_id: None,
            reason: None,
            reason_code: None,
            revoked: Vec::new(),
        };
        assert_eq!(
            none.human(Style::PLAIN),
            "No certificate was newly revoked: certificate aa11 was already revoked.\n"
        );
    }

    #[test]
    fn serials_are_normalised_or_refused_as_usage_errors() {
        assert_eq!(parse_serial(" AA:0b ").expect("hex"), "aa0b");
        let err = parse_serial("xyz").expect_err("not hex");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(parse_serial("").is_err());
    }

    #[test]
    fn empty_list_says_so() {
        assert_eq!(
            listing(output::Format::Human, &[vec![]], false),
            "No certificates match.\n"
        );
    }
}
