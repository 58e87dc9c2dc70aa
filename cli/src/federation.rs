//! `trellis federation add | list | show | refresh | remove`: trust another trust domain.
//! Its bundle is given once (obtained out of band) and then refreshed from its SPIFFE
//! bundle endpoint, which must present the configured SPIFFE ID and verify against the
//! bundle in force; on any failure the last good bundle stays.

use std::path::PathBuf;

use serde::Serialize;
use trellis_identity::bundle::root_id;
use trellis_proto::admin::v1::{
    AddFederationRequest, FederationInfo, ListFederationsRequest, RefreshFederationRequest,
    RemoveFederationRequest,
};

use crate::Global;
use crate::client::Target;
use crate::context;
use crate::error::usage;
use crate::output::{self, Cell, Fields, Report, Style, Table, Tone};
use crate::timefmt;

/// `trellis federation ...`
#[derive(Debug, clap::Subcommand)]
pub enum FederationCommand {
    /// Federate with another trust domain.
    Add(AddArgs),
    /// Every federated trust domain, its bundle and refresh state.
    List,
    /// One federated trust domain in detail.
    Show(NameArgs),
    /// Fetch a federated trust domain's bundle now.
    Refresh(NameArgs),
    /// Stop trusting a federated trust domain.
    Remove(NameArgs),
}

/// Arguments of `trellis federation add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The foreign trust domain, e.g. partner.example.
    #[arg(value_name = "TRUST_DOMAIN")]
    foreign: String,
    /// Its SPIFFE bundle endpoint, https://host[:port]/path.
    #[arg(long, value_name = "URL")]
    endpoint: String,
    /// The SPIFFE ID the endpoint serves with, in that trust domain (for another Trellis
    /// CA: spiffe://<its trust domain>/trellis/ca).
    #[arg(long, value_name = "ID")]
    endpoint_spiffe_id: String,
    /// Its current bundle, obtained out of band, to start from: the SPIFFE bundle format
    /// (JSON) or PEM roots. (`--bundle` is the global flag naming this CA's own bundle.)
    #[arg(long, value_name = "FILE")]
    initial_bundle: PathBuf,
}

/// A trust domain argument.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The federated trust domain.
    #[arg(value_name = "TRUST_DOMAIN")]
    foreign: String,
}

#[derive(Debug, Serialize)]
struct FederationView {
    trust_domain: String,
    endpoint_url: String,
    endpoint_spiffe_id: String,
    sequence: u64,
    /// Root ids (as `trellis root list` shows them) of its X.509 authorities.
    roots: Vec<String>,
    jwt_authorities: u32,
    refreshed_at: Option<String>,
    last_attempt_at: Option<String>,
    next_refresh_at: Option<String>,
    /// Why the last fetch failed; the bundle shown is the last good one.
    last_error: Option<String>,
}

impl FederationView {
    fn new(f: FederationInfo) -> Self {
        let time = |t: Option<prost_types::Timestamp>| {
            timefmt::from_proto(t.as_ref()).map(timefmt::rfc3339)
        };
        Self {
            roots: f
                .x509_authorities
                .iter()
                .map(|der| root_id(der).unwrap_or_else(|e| format!("(unreadable: {e})")))
                .collect(),
            trust_domain: f.trust_domain,
            endpoint_url: f.endpoint_url,
            endpoint_spiffe_id: f.endpoint_spiffe_id,
            sequence: f.sequence,
            jwt_authorities: f.jwt_authorities,
            refreshed_at: time(f.refreshed_at),
            last_attempt_at: time(f.last_attempt_at),
            next_refresh_at: time(f.next_refresh_at),
            last_error: Some(f.last_error).filter(|e| !e.is_empty()),
        }
    }

    fn state(&self) -> Cell {
        match &self.last_error {
            None => Cell::toned("ok", Tone::Good),
            Some(_) => Cell::toned("failing (last good bundle in force)", Tone::Warn),
        }
    }
}

impl Report for FederationView {
    fn human(&self, style: Style) -> String {
        let mut fields = Fields::indented(0);
        let dash = || "-".to_owned();
        fields
            .add(
                "Trust domain",
                Cell::toned(self.trust_domain.clone(), Tone::Strong),
            )
            .add("Endpoint", self.endpoint_url.clone())
            .add("Endpoint ID", self.endpoint_spiffe_id.clone())
            .add(
                "Bundle",
                format!(
                    "sequence {}, {} root(s): {}, {} JWT key(s)",
                    self.sequence,
                    self.roots.len(),
                    self.roots.join(", "),
                    self.jwt_authorities
                ),
            )
            .add("Refresh", self.state())
            .add("Refreshed", self.refreshed_at.clone().unwrap_or_else(dash))
            .add(
                "Last attempt",
                self.last_attempt_at.clone().unwrap_or_else(dash),
            )
            .add("Next", self.next_refresh_at.clone().unwrap_or_else(dash));
        if let Some(error) = &self.last_error {
            fields.add("Last error", Cell::toned(error.clone(), Tone::Warn));
        }
        fields.render(style)
    }
}

#[derive(Debug, Serialize)]
struct ListView {
    federations: Vec<FederationView>,
}

impl Report for ListView {
    fn human(&self, style: Style) -> String {
        if self.federations.is_empty() {
            return "No federated trust domains (add one with `trellis federation add`).\n".into();
        }
        let mut table = Table::new(&["TRUST DOMAIN", "ENDPOINT", "SEQUENCE", "ROOTS", "REFRESH"]);
        for f in &self.federations {
            table.row(vec![
                f.trust_domain.clone().into(),
                f.endpoint_url.clone().into(),
                f.sequence.to_string().into(),
                f.roots.len().to_string().into(),
                f.state(),
            ]);
        }
        table.render(style)
    }
}

#[derive(Debug, Serialize)]
struct Removed {
    removed: String,
}

impl Report for Removed {
    fn human(&self, _style: Style) -> String {
        format!(
            "{} is no longer trusted: its workloads' certificates are refused from now on.\n",
            self.removed
        )
    }
}

/// Runs `trellis federation ...`.
pub async fn run(command: FederationCommand, global: &Global) -> anyhow::Result<()> {
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let mut admin = target.admin().await?;
    match command {
        FederationCommand::Add(args) => {
            let bundle = std::fs::read(&args.initial_bundle).map_err(|e| {
                usage(format!(
                    "--initial-bundle {}: {e}",
                    args.initial_bundle.display()
                ))
            })?;
            let added = target
                .call(
                    "the federation",
                    admin.add_federation(AddFederationRequest {
                        trust_domain: args.foreign,
                        endpoint_url: args.endpoint,
                        endpoint_spiffe_id: args.endpoint_spiffe_id,
                        bundle,
                    }),
                )
                .await?;
            output::emit(global.output, &FederationView::new(added))
        }
        FederationCommand::List => {
            let listed = target
                .call(
                    "the federations",
                    admin.list_federations(ListFederationsRequest {}),
                )
                .await?;
            let federations = listed
                .federations
                .into_iter()
                .map(FederationView::new)
                .collect();
            output::emit(global.output, &ListView { federations })
        }
        FederationCommand::Show(args) => {
            let listed = target
                .call(
                    "the federations",
                    admin.list_federations(ListFederationsRequest {}),
                )
                .await?;
            let found = listed
                .federations
                .into_iter()
                .find(|f| f.trust_domain == args.foreign.trim())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no federation with {:?}; see `trellis federation list`",
                        args.foreign
                    )
                })?;
            output::emit(global.output, &FederationView::new(found))
        }
        FederationCommand::Refresh(args) => {
            let refreshed = target
                .call(
                    "the federated bundle",
                    admin.refresh_federation(RefreshFederationRequest {
                        trust_domain: args.foreign,
                    }),
                )
                .await?;
            output::emit(global.output, &FederationView::new(refreshed))
        }
        FederationCommand::Remove(args) => {
            target
                .call(
                    "the federation",
                    admin.remove_federation(RemoveFederationRequest {
                        trust_domain: args.foreign.clone(),
                    }),
                )
                .await?;
            output::emit(
                global.output,
                &Removed {
                    removed: args.foreign,
                },
            )
        }
    }
}
