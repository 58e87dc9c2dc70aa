//! `trellis jwt-key list | add | activate | retire`: rotation of the key the CA signs
//! JWT-SVIDs with. Like roots: a new key is added as "pending" (in the trust bundle, not
//! signing), activated once every live workload holds it, and retired once no token it
//! signed can still be valid. The CA enforces both waits; `--force` overrides.

use std::time::SystemTime;

use serde::Serialize;
use trellis_proto::admin::v1::{
    ActivateJwtKeyRequest, AddJwtKeyRequest, JwtKeyInfo, ListJwtKeysRequest, ListJwtKeysResponse,
    RetireJwtKeyRequest,
};

use crate::Global;
use crate::ca::{convergence_fields, state_cell};
use crate::client::Target;
use crate::context;
use crate::output::{self, Cell, Report, Style, Table, Tone};
use crate::timefmt;

/// `trellis jwt-key ...`
#[derive(Debug, clap::Subcommand)]
pub enum JwtKeyCommand {
    /// List every JWT-SVID signing key with its state, and which workloads still lack the
    /// current trust bundle.
    List,
    /// Generate a new signing key; it joins the trust bundle as "pending" (trusted, not
    /// signing).
    Add,
    /// Make a pending key the signing one; the old key stays in the bundle as "retiring".
    Activate(KeyArgs),
    /// Take a key out of the trust bundle.
    Retire(KeyArgs),
}

/// Arguments of `activate` and `retire`.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The key's id (`kid`), as `trellis jwt-key list` shows it.
    key_id: String,
    /// Skip the safety check: activate before every live workload holds the key (they
    /// refuse its tokens until they do), or retire while tokens it signed may still be
    /// valid (they are then refused).
    #[arg(long)]
    force: bool,
}

/// One key as shown.
#[derive(Debug, Serialize)]
struct KeyView {
    key_id: String,
    state: String,
    created_at: String,
    added_in_bundle_version: u64,
    /// When it stopped signing, RFC 3339 (absent while pending or active).
    deactivated_at: Option<String>,
    /// From when it may be retired without --force, RFC 3339 (absent while active).
    retirable_at: Option<String>,
    /// The public key as a JWK.
    public_jwk: serde_json::Value,
    #[serde(skip)]
    retirable_time: Option<SystemTime>,
}

impl KeyView {
    fn new(k: JwtKeyInfo) -> Self {
        let time = |t: Option<&prost_types::Timestamp>| timefmt::from_proto(t);
        let retirable_time = time(k.retirable_at.as_ref());
        Self {
            created_at: time(k.created_at.as_ref())
                .map(timefmt::rfc3339)
                .unwrap_or_default(),
            deactivated_at: time(k.deactivated_at.as_ref()).map(timefmt::rfc3339),
            retirable_at: retirable_time.map(timefmt::rfc3339),
            public_jwk: serde_json::from_str(&k.public_jwk).unwrap_or_default(),
            key_id: k.key_id,
            state: k.state,
            added_in_bundle_version: k.added_in_bundle_version,
            retirable_time,
        }
    }

    fn retirable_cell(&self, now: SystemTime) -> Cell {
        match (self.state.as_str(), self.retirable_time) {
            ("active" | "retired", _) | (_, None) => Cell::from("-"),
            (_, Some(at)) if at <= now => Cell::toned("now", Tone::Good),
            (_, Some(at)) => Cell::from(timefmt::expiry(at, now)),
        }
    }
}

#[derive(Debug, Serialize)]
struct ListReport {
    keys: Vec<KeyView>,
    bundle_version: u64,
    live_workloads: u64,
    unconverged_workloads: Vec<String>,
    #[serde(skip)]
    now: SystemTime,
}

impl Report for ListReport {
    fn human(&self, style: Style) -> String {
        let mut table = Table::new(&["KID", "STATE", "CREATED", "ADDED IN BUNDLE", "RETIRABLE"]);
        for k in &self.keys {
            table.row(vec![
                k.key_id.clone().into(),
                state_cell(&k.state),
                k.created_at.clone().into(),
                format!("v{}", k.added_in_bundle_version).into(),
                k.retirable_cell(self.now),
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

/// What `add`, `activate` and `retire` did.
#[derive(Debug, Serialize)]
struct ChangeReport {
    /// "added", "activated" or "retired".
    action: &'static str,
    key: KeyView,
    forced: bool,
}

impl Report for ChangeReport {
    fn human(&self, _style: Style) -> String {
        let k = &self.key;
        match self.action {
            "added" => format!(
                "Added JWT key {}: pending (in the trust bundle from version {}, not signing).\n\
                 Next: once `trellis jwt-key list` shows every live workload holding the current \
                 bundle, run `trellis jwt-key activate {}`.\n",
                k.key_id, k.added_in_bundle_version, k.key_id
            ),
            "activated" => format!(
                "JWT key {} is active: new JWT-SVIDs are signed with it. The previous key stays \
                 in the bundle as \"retiring\" until the tokens it signed have expired.\n\
                 Next: `trellis jwt-key list` shows when it can be retired.\n",
                k.key_id
            ),
            _ => format!(
                "JWT key {} is retired: it is no longer in the trust bundle, and tokens it \
                 signed are refused.\n",
                k.key_id
            ),
        }
    }
}

/// Runs `trellis jwt-key ...`.
pub async fn run(command: JwtKeyCommand, global: &Global) -> anyhow::Result<()> {
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let mut admin = target.admin().await?;
    let (action, key, forced) = match command {
        JwtKeyCommand::List => {
            let r: ListJwtKeysResponse = target
                .call(
                    "the JWT key list",
                    admin.list_jwt_keys(ListJwtKeysRequest {}),
                )
                .await?;
            return output::emit(
                global.output,
                &ListReport {
                    keys: r.keys.into_iter().map(KeyView::new).collect(),
                    bundle_version: r.bundle_version,
                    live_workloads: r.live_workloads,
                    unconverged_workloads: r.unconverged_workloads,
                    now: SystemTime::now(),
                },
            );
        }
        JwtKeyCommand::Add => {
            let key = target
                .call("adding a JWT key", admin.add_jwt_key(AddJwtKeyRequest {}))
                .await?;
            ("added", key, false)
        }
        JwtKeyCommand::Activate(a) => {
            if a.force {
                eprintln!(
                    "trellis: warning: --force: workloads that have not received JWT key {} \
                     refuse the tokens it signs until they do",
                    a.key_id
                );
            }
            let key = target
                .call(
                    "activating the JWT key",
                    admin.activate_jwt_key(ActivateJwtKeyRequest {
                        key_id: a.key_id,
                        force: a.force,
                    }),
                )
                .await?;
            ("activated", key, a.force)
        }
        JwtKeyCommand::Retire(a) => {
            if a.force {
                eprintln!(
                    "trellis: warning: --force: unexpired tokens signed with JWT key {} are \
                     refused once it is retired",
                    a.key_id
                );
            }
            let key = target
                .call(
                    "retiring the JWT key",
                    admin.retire_jwt_key(RetireJwtKeyRequest {
                        key_id: a.key_id,
                        force: a.force,
                    }),
                )
                .await?;
            ("retired", key, a.force)
        }
    };
    output::emit(
        global.output,
        &ChangeReport {
            action,
            key: KeyView::new(key),
            forced,
        },
    )
}
