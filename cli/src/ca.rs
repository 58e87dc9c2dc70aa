//! `trellis ca init | status`. `init` (offline) is in `ca_init.rs`; `status` asks a running
//! CA for its health, roots, intermediate and counts, and flags CA certificates in the last
//! 20 % of their life (when the CA starts logging warnings about them).

use std::time::SystemTime;

use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_proto::admin::v1::{GetStatusRequest, GetStatusResponse, RootInfo};

use crate::Global;
use crate::ca_init::{self, InitArgs};
use crate::client::Target;
use crate::context;
use crate::output::{self, Cell, Fields, Report, Style, Table, Tone, late_in_life, lifetime_cell};
use crate::timefmt;

/// The gRPC service whose health `status` reports.
const ADMIN_SERVICE: &str = "trellis.admin.v1.Admin";

/// `trellis ca ...`
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a root, intermediate and admin credentials in a new directory, for
    /// `trellis-ca --import-dir DIR` (offline; the root key can then be kept offline).
    Init(InitArgs),
    /// Show the CA's health, trust domain, certificate counts, and its roots and intermediate
    /// with time to expiry (flagged in their last 20 % of life).
    Status,
}

/// One root as the CA reports it, for scripts (`ca status` and `root list`).
#[derive(Debug, Serialize)]
pub struct RootView {
    pub id: String,
    /// "pending", "active", "retiring" or "retired".
    pub state: String,
    pub spki_sha256: String,
    pub not_before: String,
    pub not_after: String,
    /// Seconds until expiry; negative once expired.
    pub seconds_left: i64,
    /// Less than 20 % of its lifetime is left (time to plan a rotation).
    pub late_in_life: bool,
    /// Unexpired certificates that chain to it.
    pub live_certificates: u64,
    /// Workloads whose newest unexpired, unrevoked certificate chains to it.
    pub workloads_using: u64,
    /// The trust-bundle version that first included it.
    pub added_in_bundle_version: u64,
    #[serde(skip)]
    pub not_before_time: SystemTime,
    #[serde(skip)]
    pub not_after_time: SystemTime,
}

impl RootView {
    /// The CA's description of a root, with times made readable relative to `now`.
    pub fn new(r: RootInfo, now: SystemTime) -> Self {
        let not_before_time =
            timefmt::from_proto(r.not_before.as_ref()).unwrap_or(SystemTime::UNIX_EPOCH);
        let not_after_time =
            timefmt::from_proto(r.not_after.as_ref()).unwrap_or(SystemTime::UNIX_EPOCH);
        Self {
            id: r.id,
            state: r.state,
            spki_sha256: r.spki_sha256,
            not_before: timefmt::rfc3339(not_before_time),
            not_after: timefmt::rfc3339(not_after_time),
            seconds_left: timefmt::unix_seconds(not_after_time) - timefmt::unix_seconds(now),
            late_in_life: late_in_life(not_before_time, not_after_time, now),
            live_certificates: r.live_certificates,
            workloads_using: r.workloads_using,
            added_in_bundle_version: r.added_in_bundle_version,
            not_before_time,
            not_after_time,
        }
    }

    /// The time left, flagged in its last 20 % of life; dimmed once retired, when it no
    /// longer matters.
    pub fn expires_cell(&self, now: SystemTime) -> Cell {
        let text = timefmt::expiry(self.not_after_time, now);
        if self.state == "retired" {
            Cell::toned(text, Tone::Dim)
        } else {
            lifetime_cell(text, self.not_before_time, self.not_after_time, now)
        }
    }
}

/// A root's state, coloured: active is good news, retired is history.
pub fn state_cell(state: &str) -> Cell {
    match state {
        "active" => Cell::toned(state, Tone::Good),
        "retired" => Cell::toned(state, Tone::Dim),
        _ => Cell::from(state),
    }
}

/// The bundle version and how many live workloads hold it, under a root or JWT-key table:
/// what the activation safety check will say.
pub fn convergence_fields(bundle_version: u64, live: u64, unconverged: &[String]) -> Fields {
    let convergence = match unconverged.len() {
        _ if live == 0 => Cell::from("0 (no workload has reported its bundle version yet)"),
        0 => Cell::toned(format!("{live}, all hold the current bundle"), Tone::Good),
        n => Cell::toned(
            format!(
                "{live}, {n} without the current bundle: {}",
                unconverged.join(", ")
            ),
            Tone::Warn,
        ),
    };
    let mut fields = Fields::indented(0);
    fields
        .add("Bundle version", bundle_version.to_string())
        .add("Live workloads", convergence);
    fields
}

#[derive(Debug, Serialize)]
struct IntermediateView {
    root_id: String,
    subject: String,
    not_before: String,
    not_after: String,
    /// Seconds until expiry; negative once expired.
    seconds_left: i64,
    /// Less than 20 % of its lifetime is left.
    late_in_life: bool,
    #[serde(skip)]
    not_before_time: SystemTime,
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
        let seconds_left = |t: SystemTime| timefmt::unix_seconds(t) - timefmt::unix_seconds(now);
        let bundle = s.bundle.unwrap_or_default();
        let bundle_root_ids = bundle
            .root_certificates_der
            .iter()
            .filter_map(|der| trellis_identity::bundle::root_id(der).ok())
            .collect();
        let roots = s.roots.into_iter().map(|r| RootView::new(r, now)).collect();
        let intermediate = s.intermediate.map(|i| {
            let (not_before, not_before_time) = time(i.not_before.as_ref());
            let (not_after, not_after_time) = time(i.not_after.as_ref());
            IntermediateView {
                root_id: i.root_id,
                subject: i.subject,
                not_before,
                not_after,
                seconds_left: seconds_left(not_after_time),
                late_in_life: late_in_life(not_before_time, not_after_time, now),
                not_before_time,
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
                lifetime_cell(
                    format!(
                        "under root {}, expires {} ({})",
                        i.root_id,
                        i.not_after,
                        timefmt::expiry(i.not_after_time, self.now)
                    ),
                    i.not_before_time,
                    i.not_after_time,
                    self.now,
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
            table.row(vec![
                r.id.clone().into(),
                state_cell(&r.state),
                r.spki_sha256.clone().into(),
                r.not_after.clone().into(),
                r.expires_cell(self.now),
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
    use std::time::Duration;
    use trellis_proto::admin::v1::IntermediateInfo;

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
                ..Default::default()
            }],
            intermediate: Some(IntermediateInfo {
                root_id: "0123456789abcdef".into(),
                subject: "CN=x".into(),
                not_before: Some(Timestamp::from(now - 100 * day)),
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
        // Ten days left of a 110-day life: flagged in words, not only in colour.
        assert!(
            text.contains(
                "under root 0123456789abcdef, expires 2027-01-25T08:00:00Z (in 10d), last 20% of life"
            ),
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
        assert_eq!(json["intermediate"]["late_in_life"], true);
        assert_eq!(json["intermediate"]["seconds_left"], 10 * 86_400);
        assert_eq!(json["roots"][0]["late_in_life"], false);
        assert_eq!(json["health"], "serving");
    }
}
