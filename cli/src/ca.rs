//! `trellis ca init | status`. `init` (offline) is in `ca_init.rs`; `status` asks a running
//! CA for its health, roots, intermediate and counts.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_proto::admin::v1::{GetStatusRequest, GetStatusResponse};

use crate::Global;
use crate::ca_init::{self, InitArgs};
use crate::client::Target;
use crate::context;
use crate::output::{self, Cell, Fields, Report, Style, Table, Tone, expiry_cell};
use crate::timefmt;

/// Roots and intermediates expiring sooner than this are shown as a warning.
const SOON: Duration = Duration::from_secs(30 * 86_400);
/// The gRPC service whose health `status` reports.
const ADMIN_SERVICE: &str = "trellis.admin.v1.Admin";

/// `trellis ca ...`
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a root, intermediate and admin credentials in a new directory, for
    /// `trellis-ca --import-dir DIR` (offline; the root key can then be kept offline).
    Init(InitArgs),
    /// Show the CA's health, trust domain, roots, intermediate and certificate counts.
    Status,
}

#[derive(Debug, Serialize)]
struct RootView {
    id: String,
    state: String,
    spki_sha256: String,
    not_before: String,
    not_after: String,
    live_certificates: u64,
    #[serde(skip)]
    not_after_time: SystemTime,
}

#[derive(Debug, Serialize)]
struct IntermediateView {
    root_id: String,
    subject: String,
    not_before: String,
    not_after: String,
    #[serde(skip)]
    not_after_time: SystemTime,
}

#[derive(Debug, Serialize)]
struct StatusReport {
    ca_addr: String,
    /// "serving", or what the health service said.
    health: String,
    version: String,
    trust_domain: String,
    bundle_version: u64,
    bundle_root_ids: Vec<String>,
    roots: Vec<RootView>,
    intermediate: Option<IntermediateView>,
    issued_total: u64,
    live_total: u64,
    #[serde(skip)]
    now: SystemTime,
}

impl StatusReport {
    fn new(ca_addr: String, health: String, s: GetStatusResponse, now: SystemTime) -> Self {
        let time = |ts: Option<&prost_types::Timestamp>| {
            let t = timefmt::from_proto(ts).unwrap_or(SystemTime::UNIX_EPOCH);
            (timefmt::rfc3339(t), t)
        };
        let bundle = s.bundle.unwrap_or_default();
        let bundle_root_ids = bundle
            .root_certificates_der
            .iter()
            .filter_map(|der| trellis_identity::bundle::root_id(der).ok())
            .collect();
        let roots = s
            .roots
            .into_iter()
            .map(|r| {
                let (not_after, not_after_time) = time(r.not_after.as_ref());
                RootView {
                    id: r.id,
                    state: r.state,
                    spki_sha256: r.spki_sha256,
                    not_before: time(r.not_before.as_ref()).0,
                    not_after,
                    live_certificates: r.live_certificates,
                    not_after_time,
                }
            })
            .collect();
        let intermediate = s.intermediate.map(|i| {
            let (not_after, not_after_time) = time(i.not_after.as_ref());
            IntermediateView {
                root_id: i.root_id,
                subject: i.subject,
                not_before: time(i.not_before.as_ref()).0,
                not_after,
                not_after_time,
            }
        });
        Self {
            ca_addr,
            health,
            version: s.version,
            trust_domain: s.trust_domain,
            bundle_version: bundle.version,
            bundle_root_ids,
            roots,
            intermediate,
            issued_total: s.issued_total,
            live_total: s.live_total,
            now,
        }
    }
}

impl Report for StatusReport {
    fn human(&self, style: Style) -> String {
        let health = if self.health == "serving" {
            Cell::toned(self.health.clone(), Tone::Good)
        } else {
            Cell::toned(self.health.clone(), Tone::Bad)
        };
        let mut fields = Fields::indented(0);
        fields
            .add(
                "CA",
                format!("{} (trellis-ca {})", self.ca_addr, self.version),
            )
            .add("Health", health)
            .add("Trust domain", self.trust_domain.clone())
            .add(
                "Bundle",
                format!(
                    "version {}, roots {}",
                    self.bundle_version,
                    self.bundle_root_ids.join(", ")
                ),
            );
        if let Some(i) = &self.intermediate {
            fields.add(
                "Intermediate",
                expiry_cell(
                    format!(
                        "under root {}, expires {} ({})",
                        i.root_id,
                        i.not_after,
                        timefmt::expiry(i.not_after_time, self.now)
                    ),
                    i.not_after_time,
                    self.now,
                    SOON,
                ),
            );
        }
        fields.add(
            "Certificates",
            format!("{} issued, {} live", self.issued_total, self.live_total),
        );
        let mut table = Table::new(&[
            "ROOT",
            "STATE",
            "FINGERPRINT (SPKI SHA-256)",
            "NOT AFTER",
            "EXPIRES",
            "LIVE CERTS",
        ]);
        for r in &self.roots {
            let state = match r.state.as_str() {
                "active" => Cell::toned(r.state.clone(), Tone::Good),
                "retired" => Cell::toned(r.state.clone(), Tone::Dim),
                _ => Cell::from(r.state.clone()),
            };
            table.row(vec![
                r.id.clone().into(),
                state,
                r.spki_sha256.clone().into(),
                r.not_after.clone().into(),
                expiry_cell(
                    timefmt::expiry(r.not_after_time, self.now),
                    r.not_after_time,
                    self.now,
                    SOON,
                ),
                r.live_certificates.to_string().into(),
            ]);
        }
        format!("{}\n{}", fields.render(style), table.render(style))
    }
}

/// Asks the standard gRPC health service about the admin API.
async fn health(target: &Target, channel: tonic::transport::Channel) -> anyhow::Result<String> {
    let mut client = HealthClient::new(channel);
    let response = target
        .call(
            "the health check",
            client.check(HealthCheckRequest {
                service: ADMIN_SERVICE.into(),
            }),
        )
        .await?;
    Ok(match response.status() {
        ServingStatus::Serving => "serving".into(),
        ServingStatus::NotServing => "not serving".into(),
        ServingStatus::ServiceUnknown => "admin API unknown".into(),
        ServingStatus::Unknown => "unknown".into(),
    })
}

async fn status(global: &Global) -> anyhow::Result<()> {
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let channel = target.channel().await?;
    let health = health(&target, channel.clone()).await?;
    let mut admin = trellis_proto::admin::v1::admin_client::AdminClient::new(channel);
    let response = target
        .call("status", admin.get_status(GetStatusRequest {}))
        .await?;
    let report = StatusReport::new(
        target.addr_text.clone(),
        health,
        response,
        SystemTime::now(),
    );
    output::emit(global.output, &report)
}

/// Runs `trellis ca ...`.
pub async fn run(command: CaCommand, global: &Global) -> anyhow::Result<()> {
    match command {
        CaCommand::Init(args) => ca_init::run(args, global),
        CaCommand::Status => status(global).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;
    use trellis_proto::admin::v1::{IntermediateInfo, RootInfo};

    #[test]
    fn status_shows_roots_intermediate_and_counts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86_400);
        let response = GetStatusResponse {
            trust_domain: "cluster.local".into(),
            roots: vec![RootInfo {
                id: "0123456789abcdef".into(),
                spki_sha256: "ab".repeat(32),
                state: "active".into(),
                not_before: Some(Timestamp::from(now - day)),
                not_after: Some(Timestamp::from(now + 3650 * day)),
                live_certificates: 3,
            }],
            intermediate: Some(IntermediateInfo {
                root_id: "0123456789abcdef".into(),
                subject: "CN=x".into(),
                not_before: Some(Timestamp::from(now - day)),
                not_after: Some(Timestamp::from(now + 10 * day)),
            }),
            issued_total: 5,
            live_total: 3,
            version: "0.1.0".into(),
            ..Default::default()
        };
        let report = StatusReport::new("127.0.0.1:1".into(), "serving".into(), response, now);
        let text = report.human(Style::PLAIN);
        assert!(text.contains("Health        serving\n"), "{text}");
        assert!(text.contains("Certificates  5 issued, 3 live\n"), "{text}");
        assert!(
            text.contains("under root 0123456789abcdef, expires 2027-01-25T08:00:00Z (in 10d)"),
            "{text}"
        );
        let root_line = text
            .lines()
            .find(|l| l.starts_with("0123456789abcdef"))
            .expect("root row");
        assert!(root_line.contains("active"), "{root_line}");
        assert!(root_line.ends_with("in 3650d  3"), "{root_line}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["roots"][0]["live_certificates"], 3);
        assert_eq!(json["intermediate"]["root_id"], "0123456789abcdef");
        assert_eq!(json["health"], "serving");
    }
}
