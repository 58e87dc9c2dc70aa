//! `trellis token create`: a single-use join token bound to one SPIFFE ID, printed once
//! together with the command a workload runs to redeem it.

use std::time::SystemTime;

use serde::Serialize;
use trellis_proto::admin::v1::CreateJoinTokenRequest;

use crate::Global;
use crate::args;
use crate::client::Target;
use crate::context;
use crate::output::{self, Cell, Fields, Report, Style, Tone};
use crate::timefmt;

/// `trellis token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a join token; it is shown once and the CA keeps only its hash.
    Create(CreateArgs),
}

/// Arguments of `trellis token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The SPIFFE ID the workload will get, e.g. spiffe://cluster.local/ns/prod/sa/web.
    #[arg(long, value_name = "ID")]
    spiffe_id: String,
    /// How long the token can be redeemed (at most 24h).
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    ttl: String,
}

/// The command a workload runs to redeem a token.
///
/// KEEP IN SYNC with trellis-sidecar's flags: this one line is what to update when they
/// change.
fn join_command(token: &str, ca_addr: &str) -> String {
    format!(
        "TRELLIS_JOIN_TOKEN={token} trellis-sidecar --ca-addr {ca_addr} --trust-bundle bundle.pem ..."
    )
}

#[derive(Debug, Serialize)]
struct TokenReport {
    token: String,
    spiffe_id: String,
    expires_at: String,
    expires_in_seconds: u64,
    single_use: bool,
    workload_command: String,
    #[serde(skip)]
    not_after: SystemTime,
}

impl Report for TokenReport {
    fn human(&self, style: Style) -> String {
        let mut fields = Fields::indented(0);
        fields
            .add("Join token", Cell::toned(self.token.clone(), Tone::Strong))
            .add("SPIFFE ID", self.spiffe_id.clone())
            .add(
                "Expires",
                format!(
                    "{} ({}), single use",
                    self.expires_at,
                    timefmt::expiry(self.not_after, SystemTime::now())
                ),
            );
        format!(
            "{}\nOn the workload, run (the token is not shown again):\n  {}\n",
            fields.render(style),
            self.workload_command
        )
    }
}

/// Runs `trellis token ...`.
pub async fn run(command: TokenCommand, global: &Global) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => create(args, global).await,
    }
}

async fn create(args: CreateArgs, global: &Global) -> anyhow::Result<()> {
    let id = args::spiffe_id("--spiffe-id", &args.spiffe_id)?;
    let ttl_seconds = args::ttl_seconds("--ttl", &args.ttl)?;
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let mut admin = target.admin().await?;
    let response = target
        .call(
            "the join token",
            admin.create_join_token(CreateJoinTokenRequest {
                spiffe_id: id.to_string(),
                ttl_seconds,
            }),
        )
        .await?;
    let not_after = timefmt::from_proto(response.expires_at.as_ref())
        .ok_or_else(|| anyhow::anyhow!("the CA's answer has no token expiry"))?;
    let report = TokenReport {
        workload_command: join_command(&response.token, &target.addr_text),
        token: response.token,
        spiffe_id: response.spiffe_id,
        expires_at: timefmt::rfc3339(not_after),
        expires_in_seconds: not_after
            .duration_since(SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0),
        single_use: true,
        not_after,
    };
    output::emit(global.output, &report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn human_output_shows_token_and_command_once() {
        let report = TokenReport {
            token: "trellis-jt-abc".into(),
            spiffe_id: "spiffe://td/web".into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
            expires_in_seconds: 600,
            single_use: true,
            workload_command: join_command("trellis-jt-abc", "127.0.0.1:8443"),
            not_after: SystemTime::now() + Duration::from_secs(600),
        };
        let text = report.human(Style::PLAIN);
        assert!(text.starts_with("Join token  trellis-jt-abc\n"), "{text}");
        assert!(
            text.contains(
                "  TRELLIS_JOIN_TOKEN=trellis-jt-abc trellis-sidecar --ca-addr 127.0.0.1:8443"
            ),
            "{text}"
        );
        assert_eq!(text.matches("trellis-jt-abc").count(), 2, "{text}");
    }
}
