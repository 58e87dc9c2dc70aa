//! `trellis root list | add | activate | retire`: trust-root rotation. A new root is added
//! as "pending" (in the bundle, not signing), activated once every live workload holds it,
//! and retired once no workload uses a certificate from it. The CA enforces both waits and
//! says who is holding them up; `--force` overrides, after a warning saying what breaks.

use std::time::SystemTime;

use serde::Serialize;
use tonic::transport::Channel;
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_proto::admin::v1::{
    ActivateRootRequest, AddRootRequest, ListRootsRequest, ListRootsResponse, RetireRootRequest,
    RootInfo,
};

use crate::Global;
use crate::ca::{RootView, convergence_fields, state_cell};
use crate::client::Target;
use crate::context;
use crate::output::{self, Fields, Report, Style, Table, lifetime_cell};
use crate::timefmt;

/// `trellis root ...`
#[derive(Debug, clap::Subcommand)]
pub enum RootCommand {
    /// List every root with its state, expiry and use, and which workloads still lack the
    /// current trust bundle.
    List,
    /// Add a new root, generated or imported; it joins the trust bundle as "pending"
    /// (trusted, not signing).
    Add(AddArgs),
    /// Make a pending root the signing one; workloads move to it as they renew.
    Activate(ActivateArgs),
    /// Take a root out of the trust bundle.
    Retire(RetireArgs),
}

/// Arguments of `trellis root add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Import this self-signed root certificate (PEM) instead of generating one.
    #[arg(long, value_name = "FILE")]
    import_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM, P-256), so the CA can later activate the root. Without it the
    /// root is trusted but cannot sign.
    #[arg(long, value_name = "FILE", requires = "import_cert")]
    import_key: Option<std::path::PathBuf>,
}

/// Arguments of `trellis root activate`.
#[derive(Debug, clap::Args)]
pub struct ActivateArgs {
    /// The root's id, as `trellis root list` shows it.
    root_id: String,
    /// Activate even though some live workloads have not received the root yet; they
    /// will refuse peers with certificates from it until they do.
    #[arg(long)]
    force: bool,
}

/// Arguments of `trellis root retire`.
#[derive(Debug, clap::Args)]
pub struct RetireArgs {
    /// The root's id, as `trellis root list` shows it.
    root_id: String,
    /// Retire even though workloads still use certificates from it; their handshakes with
    /// peers will fail until they renew.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Serialize)]
struct ListReport {
    roots: Vec<RootView>,
    /// The current trust-bundle version.
    bundle_version: u64,
    /// Workloads with an unexpired certificate that reported a bundle version to the CA.
    live_workloads: u64,
    /// Those that have not acknowledged `bundle_version` yet.
    unconverged_workloads: Vec<String>,
    #[serde(skip)]
    now: SystemTime,
}

impl ListReport {
    fn new(r: ListRootsResponse, now: SystemTime) -> Self {
        Self {
            roots: r.roots.into_iter().map(|r| RootView::new(r, now)).collect(),
            bundle_version: r.bundle_version,
            live_workloads: r.live_workloads,
            unconverged_workloads: r.unconverged_workloads,
            now,
        }
    }
}

impl Report for ListReport {
    fn human(&self, style: Style) -> String {
        let mut table = Table::new(&[
            "ROOT",
            "STATE",
            "FINGERPRINT (SPKI SHA-256)",
            "NOT AFTER",
            "EXPIRES",
            "LIVE CERTS",
            "WORKLOADS",
            "ADDED IN BUNDLE",
        ]);
        for r in &self.roots {
            table.row(vec![
                r.id.clone().into(),
                state_cell(&r.state),
                r.spki_sha256.clone().into(),
                r.not_after.clone().into(),
                r.expires_cell(self.now),
                r.live_certificates.to_string().into(),
                r.workloads_using.to_string().into(),
                format!("v{}", r.added_in_bundle_version).into(),
            ]);
        }
        let fields = convergence_fields(
            self.bundle_version,
            self.live_workloads,
            &self.unconverged_workloads,
        );
        format!("{}\n{}", table.render(style), fields.render(style))
    }
}

/// What `add`, `activate` and `retire` did: the root afterwards and what comes next.
#[derive(Debug, Serialize)]
struct ChangeReport {
    /// "added", "activated" or "retired".
    action: &'static str,
    root: RootView,
    /// True if `--force` was given.
    forced: bool,
    #[serde(skip)]
    now: SystemTime,
}

impl Report for ChangeReport {
    fn human(&self, style: Style) -> String {
        let r = &self.root;
        let (headline, next) = match self.action {
            "added" => (
                format!(
                    "Added root {}: pending (in the trust bundle from version {}, not signing).",
                    r.id, r.added_in_bundle_version
                ),
                format!(
                    "Next: once `trellis root list` shows every live workload holding the current bundle, run `trellis root activate {}`.",
                    r.id
                ),
            ),
            "activated" => (
                format!(
                    "Root {} is active: new certificates chain to it, and workloads move to it as they renew.",
                    r.id
                ),
                "The CA's serving certificate and the admin credentials in its data directory moved to it too; if you use a copy of those credentials, refresh it before retiring the old root.\nNext: once the retiring root's WORKLOADS count in `trellis root list` reaches 0, run `trellis root retire ROOT_ID` for it.".to_owned(),
            ),
            _ => (
                format!("Root {} is retired: it is no longer in the trust bundle.", r.id),
                "Workloads drop it as they receive the new bundle.".to_owned(),
            ),
        };
        let mut fields = Fields::indented(2);
        fields
            .add("State", state_cell(&r.state))
            .add("Fingerprint", r.spki_sha256.clone())
            .add(
                "Not after",
                lifetime_cell(
                    format!(
                        "{} ({})",
                        r.not_after,
                        timefmt::expiry(r.not_after_time, self.now)
                    ),
                    r.not_before_time,
                    r.not_after_time,
                    self.now,
                ),
            )
            .add(
                "Use",
                format!(
                    "{}, {}",
                    plural(r.live_certificates, "live certificate"),
                    plural(r.workloads_using, "workload")
                ),
            );
        format!("{headline}\n{}{next}\n", fields.render(style))
    }
}

/// Runs `trellis root ...`.
pub async fn run(command: RootCommand, global: &Global) -> anyhow::Result<()> {
    let target = Target::load(&context::resolve(&global.connection)?)?;
    match command {
        RootCommand::List => {
            let mut admin = target.admin().await?;
            let response = target
                .call("the root list", admin.list_roots(ListRootsRequest {}))
                .await?;
            output::emit(global.output, &ListReport::new(response, SystemTime::now()))
        }
        RootCommand::Add(a) => {
            let read = |path: &std::path::Path| {
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
            };
            let request = AddRootRequest {
                certificate_pem: a
                    .import_cert
                    .as_deref()
                    .map(read)
                    .transpose()?
                    .unwrap_or_default(),
                private_key_pem: a
                    .import_key
                    .as_deref()
                    .map(read)
                    .transpose()?
                    .unwrap_or_default(),
            };
            let mut admin = target.admin().await?;
            let root = target
                .call("adding a root", admin.add_root(request))
                .await?;
            emit_change(global, "added", root, false)
        }
        RootCommand::Activate(a) => {
            let mut admin = target.admin().await?;
            if a.force {
                warn_before_forcing(&target, &mut admin, &a.root_id, activate_warning).await?;
            }
            let root = target
                .call(
                    "activating the root",
                    admin.activate_root(ActivateRootRequest {
                        root_id: a.root_id,
                        force: a.force,
                    }),
                )
                .await?;
            emit_change(global, "activated", root, a.force)
        }
        RootCommand::Retire(a) => {
            let mut admin = target.admin().await?;
            if a.force {
                warn_before_forcing(&target, &mut admin, &a.root_id, retire_warning).await?;
            }
            let root = target
                .call(
                    "retiring the root",
                    admin.retire_root(RetireRootRequest {
                        root_id: a.root_id,
                        force: a.force,
                    }),
                )
                .await?;
            emit_change(global, "retired", root, a.force)
        }
    }
}

fn emit_change(
    global: &Global,
    action: &'static str,
    root: RootInfo,
    forced: bool,
) -> anyhow::Result<()> {
    let now = SystemTime::now();
    output::emit(
        global.output,
        &ChangeReport {
            action,
            root: RootView::new(root, now),
            forced,
            now,
        },
    )
}

/// Prints what `--force` is about to break, from the root list the CA gives just before.
async fn warn_before_forcing(
    target: &Target,
    admin: &mut AdminClient<Channel>,
    root_id: &str,
    warning: fn(&str, &ListRootsResponse) -> String,
) -> anyhow::Result<()> {
    let roots = target
        .call("the root list", admin.list_roots(ListRootsRequest {}))
        .await?;
    eprintln!("trellis: warning: {}", warning(root_id, &roots));
    Ok(())
}

/// `1 workload`, `2 workloads`.
fn plural(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// What `activate --force` breaks, with the numbers the CA gave just before.
fn activate_warning(root_id: &str, roots: &ListRootsResponse) -> String {
    let lacking = roots.unconverged_workloads.len();
    format!(
        "--force: workloads that have not received root {root_id} will refuse peers with certificates from it until they do ({lacking} of {} live workloads have not acknowledged the current bundle, version {})",
        roots.live_workloads, roots.bundle_version
    )
}

/// What `retire --force` breaks, with the numbers the CA gave just before.
fn retire_warning(root_id: &str, roots: &ListRootsResponse) -> String {
    let using = roots
        .roots
        .iter()
        .find(|r| r.id == root_id.trim())
        .map(|r| format!(" ({} now)", plural(r.workloads_using, "workload")))
        .unwrap_or_default();
    format!(
        "--force: workloads still using certificates from root {root_id} will fail handshakes with peers until they renew{using}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    fn root(id: &str, state: &str, now: SystemTime, age: Duration, left: Duration) -> RootInfo {
        RootInfo {
            id: id.into(),
            spki_sha256: "ab".repeat(32),
            state: state.into(),
            not_before: Some(Timestamp::from(now - age)),
            not_after: Some(Timestamp::from(now + left)),
            live_certificates: 4,
            added_in_bundle_version: 1,
            workloads_using: 2,
            ..Default::default()
        }
    }

    #[test]
    fn list_shows_roots_use_and_convergence() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut new = root("bbbb", "pending", now, DAY, 3650 * DAY);
        new.added_in_bundle_version = 2;
        new.live_certificates = 0;
        new.workloads_using = 0;
        let report = ListReport::new(
            ListRootsResponse {
                roots: vec![root("aaaa", "active", now, 3000 * DAY, 600 * DAY), new],
                bundle_version: 2,
                live_workloads: 3,
                unconverged_workloads: vec!["spiffe://td/web".into()],
            },
            now,
        );
        let text = report.human(Style::PLAIN);
        let lines: Vec<&str> = text.lines().collect();
        let headers: Vec<&str> = lines[0]
            .split("  ")
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        assert_eq!(
            headers,
            [
                "ROOT",
                "STATE",
                "FINGERPRINT (SPKI SHA-256)",
                "NOT AFTER",
                "EXPIRES",
                "LIVE CERTS",
                "WORKLOADS",
                "ADDED IN BUNDLE"
            ]
        );
        // 600 of 3600 days left: the last fifth of its life.
        assert!(
            lines[1].ends_with("in 600d, last 20% of life  4           2          v1"),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("bbbb  pending"), "{}", lines[2]);
        assert!(lines[2].ends_with("in 3650d                   0           0          v2"));
        assert_eq!(lines[4], "Bundle version  2");
        assert_eq!(
            lines[5],
            "Live workloads  3, 1 without the current bundle: spiffe://td/web"
        );
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["roots"][0]["late_in_life"], true);
        assert_eq!(json["roots"][0]["seconds_left"], 600 * 86_400);
        assert_eq!(json["roots"][1]["state"], "pending");
        assert_eq!(json["roots"][1]["added_in_bundle_version"], 2);
        assert_eq!(json["unconverged_workloads"][0], "spiffe://td/web");
    }

    #[test]
    fn convergence_line_without_workloads_or_with_all_converged() {
        let now = SystemTime::now();
        let mut response = ListRootsResponse {
            roots: vec![root("aaaa", "active", now, DAY, DAY)],
            bundle_version: 1,
            ..Default::default()
        };
        let text = ListReport::new(response.clone(), now).human(Style::PLAIN);
        assert!(
            text.ends_with("Live workloads  0 (no workload has reported its bundle version yet)\n"),
            "{text}"
        );
        response.live_workloads = 2;
        let text = ListReport::new(response, now).human(Style::PLAIN);
        assert!(
            text.ends_with("Live workloads  2, all hold the current bundle\n"),
            "{text}"
        );
    }

    #[test]
    fn force_warnings_say_what_breaks() {
        let now = SystemTime::now();
        let roots = ListRootsResponse {
            roots: vec![root("aaaa", "retiring", now, DAY, DAY)],
            bundle_version: 3,
            live_workloads: 5,
            unconverged_workloads: vec!["spiffe://td/a".into(), "spiffe://td/b".into()],
        };
        let text = activate_warning("bbbb", &roots);
        assert!(
            text.contains("will refuse peers with certificates from it until they do"),
            "{text}"
        );
        assert!(text.contains("2 of 5 live workloads"), "{text}");
        let text = retire_warning("aaaa", &roots);
        assert!(
            text.contains("will fail handshakes with peers until they renew (2 workloads now)"),
            "{text}"
        );
        assert!(!retire_warning("cccc", &roots).contains("now"));
    }

    #[test]
    fn changes_say_what_comes_next() {
        let now = SystemTime::now();
        let mut added = root("bbbb", "pending", now, DAY, 3650 * DAY);
        added.added_in_bundle_version = 2;
        let report = ChangeReport {
            action: "added",
            root: RootView::new(added, now),
            forced: false,
            now,
        };
        let text = report.human(Style::PLAIN);
        assert!(
            text.starts_with("Added root bbbb: pending (in the trust bundle from version 2"),
            "{text}"
        );
        assert!(text.contains("trellis root activate bbbb"), "{text}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["action"], "added");
        assert_eq!(json["root"]["id"], "bbbb");
        assert_eq!(json["forced"], false);
    }
}
