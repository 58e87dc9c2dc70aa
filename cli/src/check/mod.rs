//! `trellis check`: everything that can quietly take a mesh down, checked at once against
//! a running CA, one verdict line each with what to do about it.
//!
//! The checks are the table [`checks::CHECKS`]: each reads the [`Facts`] gathered here
//! (one connection, a few admin calls) and returns its verdicts. A new check is one more
//! function in that table, and one more field here if it needs something new from the CA.

mod checks;
mod verdict;

use std::time::{Duration, SystemTime};

use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_identity::CertInfo;
use trellis_identity::audit_log::{Tamper, Verified};
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_proto::admin::v1::{
    CertificateRecord, FederationInfo, GetStatusRequest, GetStatusResponse,
    ListCertificatesRequest, ListFederationsRequest, ListRootsRequest, ListRootsResponse,
};

use crate::Global;
use crate::client::Target;
use crate::context;
use crate::output::{self, Report, Style, Tone};

pub use verdict::{EXIT_WARNINGS, Level, Thresholds, Verdict};

/// Pages of live certificates read for the renewal check at most (500 each).
const MAX_CERTIFICATE_PAGES: usize = 200;

/// `trellis check`
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes:
  0  every check passed (warnings too, unless --fail-on-warning)
  1  warnings only, with --fail-on-warning
  2  at least one check failed (also: a usage or configuration error)

Expiry thresholds apply to the roots, the signing intermediate and the admin certificate.
The CA's serving certificate, which the CA renews at half its life, warns with less than a
quarter of its life left and fails with less than a tenth.")]
pub struct CheckArgs {
    /// Warn when a root, the intermediate or the admin certificate expires within this.
    #[arg(long, value_name = "DURATION", default_value = verdict::DEFAULT_WARN)]
    pub warn_within: String,
    /// Fail when one expires within this.
    #[arg(long, value_name = "DURATION", default_value = verdict::DEFAULT_FAIL)]
    pub fail_within: String,
    /// Exit 1 when a check warns (and nothing fails).
    #[arg(long)]
    pub fail_on_warning: bool,
}

/// Everything the checks look at, read once.
#[derive(Debug)]
pub struct Facts {
    /// This machine's clock when the CA's status arrived.
    pub now: SystemTime,
    pub thresholds: Thresholds,
    pub admin_cert: String,
    /// The admin certificate from the CLI's settings (read even if expired).
    pub admin: Result<CertInfo, String>,
    /// The CA's gRPC health; `Err` if it could not be reached at all.
    pub health: Result<ServingStatus, String>,
    /// The certificate the CA serves, from a TLS handshake.
    pub serving: Result<CertInfo, String>,
    /// `GetStatus`, with the local time halfway between asking and hearing back.
    pub status: Result<(GetStatusResponse, SystemTime), Refusal>,
    pub roots: Result<ListRootsResponse, Refusal>,
    /// Every live certificate, for the renewal check.
    pub certificates: Result<Vec<CertificateRecord>, Refusal>,
    /// The audit log verified end to end (`trellis audit verify`); `Err` if unreadable.
    pub audit: Result<Result<Verified, Tamper>, String>,
    /// Every federated trust domain and the state of its bundle.
    pub federations: Result<Vec<FederationInfo>, Refusal>,
}

/// Why the CA did not answer an admin call.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: tonic::Code,
    /// The whole explanation, as the CLI words it elsewhere.
    pub text: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The report: every verdict, in table order.
#[derive(Debug, Serialize)]
struct CheckReport {
    ca_addr: String,
    verdicts: Vec<Verdict>,
    /// The exit code these verdicts give.
    exit_code: u8,
}

impl Report for CheckReport {
    fn human(&self, style: Style) -> String {
        verdict::render(&self.verdicts, style.is_colour(), |level, text| {
            let tone = match level {
                Level::Ok => Tone::Good,
                Level::Warn => Tone::Warn,
                Level::Fail => Tone::Bad,
                Level::Skipped => Tone::Dim,
            };
            style.paint(tone, text)
        })
    }
}

fn refusal(target: &Target, what: &str, status: &tonic::Status) -> Refusal {
    Refusal {
        code: status.code(),
        text: crate::error::one_line(&target.status_error(what, status)),
    }
}

async fn gather(target: &Target, thresholds: Thresholds) -> Facts {
    let admin_cert = target.admin_cert.display().to_string();
    let admin = Ok(target.admin_info.clone());
    let unreachable = |e: &anyhow::Error| crate::error::one_line(e);
    let channel = match target.channel().await {
        Ok(channel) => channel,
        Err(e) => {
            let why = unreachable(&e);
            let why_audit = why.clone();
            let refused = Refusal {
                code: tonic::Code::Unavailable,
                text: why.clone(),
            };
            return Facts {
                now: SystemTime::now(),
                thresholds,
                admin_cert,
                admin,
                health: Err(why.clone()),
                serving: Err(why),
                status: Err(refused.clone()),
                roots: Err(refused.clone()),
                certificates: Err(refused.clone()),
                audit: Err(why_audit),
                federations: Err(refused),
            };
        }
    };
    let health = target
        .call(
            "the health check",
            HealthClient::new(channel.clone()).check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .map(|r| r.status())
        .map_err(|e| unreachable(&e));
    let serving = target
        .serving_certificate()
        .await
        .map_err(|e| unreachable(&e));
    let mut client = AdminClient::new(channel);
    let asked = SystemTime::now();
    let status = match client.get_status(GetStatusRequest {}).await {
        Ok(r) => {
            let answered = SystemTime::now();
            let midway = asked + answered.duration_since(asked).unwrap_or_default() / 2;
            Ok((r.into_inner(), midway))
        }
        Err(s) => Err(refusal(target, "status", &s)),
    };
    let roots = client
        .list_roots(ListRootsRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| refusal(target, "the root list", &s));
    let certificates = live_certificates(target, &mut client).await;
    let audit = crate::audit::verify_log(target, &mut client, None)
        .await
        .map_err(|e| unreachable(&e));
    let federations = client
        .list_federations(ListFederationsRequest {})
        .await
        .map(|r| r.into_inner().federations)
        .map_err(|s| refusal(target, "the federation list", &s));
    Facts {
        now: SystemTime::now(),
        thresholds,
        admin_cert,
        admin,
        health,
        serving,
        status,
        roots,
        certificates,
        audit,
        federations,
    }
}

/// Every live certificate, page by page.
async fn live_certificates(
    target: &Target,
    client: &mut AdminClient<tonic::transport::Channel>,
) -> Result<Vec<CertificateRecord>, Refusal> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_CERTIFICATE_PAGES {
        let page = client
            .list_certificates(ListCertificatesRequest {
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| refusal(target, "the certificate list", &s))?
            .into_inner();
        all.extend(page.certificates);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
    Ok(all)
}

fn threshold(flag: &str, text: &str) -> anyhow::Result<Duration> {
    crate::args::duration(flag, text)
}

/// Runs `trellis check`; the exit code says how it came out.
pub async fn run(args: CheckArgs, global: &Global) -> anyhow::Result<()> {
    let thresholds = Thresholds {
        warn: threshold("--warn-within", &args.warn_within)?,
        fail: threshold("--fail-within", &args.fail_within)?,
    };
    let target = Target::load_unchecked(&context::resolve(&global.connection)?)?;
    let facts = gather(&target, thresholds).await;
    let verdicts: Vec<Verdict> = checks::CHECKS
        .iter()
        .flat_map(|check| {
            let found = (check.run)(&facts);
            if found.is_empty() {
                vec![Verdict::new(check.name, Level::Skipped, "nothing to check")]
            } else {
                found
            }
        })
        .collect();
    let exit_code = verdict::exit_code(&verdicts, args.fail_on_warning);
    let report = CheckReport {
        ca_addr: target.addr_text.clone(),
        verdicts,
        exit_code,
    };
    output::emit(global.output, &report)?;
    match exit_code {
        0 => Ok(()),
        code => Err(crate::error::exit_with(
            code,
            match code {
                EXIT_WARNINGS => "checks warned (--fail-on-warning)",
                _ => "checks failed",
            },
        )),
    }
}
