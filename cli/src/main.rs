//! `trellis`: the Trellis admin CLI. This file is only the command tree and the glue that
//! turns a command's result into output and an exit code; each command group lives in its
//! own module.
//!
//! Adding a command group: write `src/<group>.rs` with an `Args` (or `Subcommand`) type and
//! an `async fn run(args, &Global) -> anyhow::Result<()>`, then add one variant to
//! [`Command`] and one arm to [`run`].

mod args;
mod audit;
mod ca;
mod ca_init;
mod cert;
mod cert_issue;
mod check;
mod client;
mod completions;
mod context;
mod error;
mod federation;
mod files;
mod inject;
mod inspect;
mod jwt_key;
mod login;
mod output;
mod root;
mod timefmt;
mod token;
mod up;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::context::ConnectionFlags;
use crate::output::Format;

/// Manage a Trellis mesh: its certificate authority, join tokens and certificates.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command accepts.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Output format: human-readable text, or JSON for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Human)]
    pub output: Format,
    #[command(flatten)]
    pub connection: ConnectionFlags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a CA offline, or show a running CA's status.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Remember a CA's address and admin credentials, so later commands need no flags.
    Login(login::LoginArgs),
    /// Create join tokens that bootstrap workloads.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Issue, list, show and revoke certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Rotate trust roots: list, add, activate and retire them.
    #[command(subcommand)]
    Root(root::RootCommand),
    /// Rotate the JWT-SVID signing key: list, add, activate and retire keys.
    #[command(subcommand)]
    JwtKey(jwt_key::JwtKeyCommand),
    /// Show what a PEM certificate or chain contains, offline.
    Inspect(inspect::InspectArgs),
    /// Add the Trellis sidecar to Kubernetes manifests (the webhook is `trellis-injector`).
    Inject(inject::InjectArgs),
    /// Trust other trust domains: add, list, show, refresh and remove federations.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
    /// Verify the CA's tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
    /// Run a CA and two services behind sidecars on this machine, and show the mesh at work.
    Up(up::UpArgs),
    /// Check everything that can quietly break the mesh: CA health, the store, expiry of
    /// roots, intermediate and certificates, rotation, convergence, renewals, clocks, CRL.
    Check(check::CheckArgs),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match cli.command {
        Command::Ca(command) => ca::run(command, global).await,
        Command::Login(args) => login::run(args, global).await,
        Command::Token(command) => token::run(command, global).await,
        Command::Cert(command) => cert::run(command, global).await,
        Command::Root(command) => root::run(command, global).await,
        Command::JwtKey(command) => jwt_key::run(command, global).await,
        Command::Inspect(args) => inspect::run(args, global),
        Command::Inject(args) => inject::run(args, global),
        Command::Audit(command) => audit::run(command, global).await,
        Command::Federation(command) => federation::run(command, global).await,
        Command::Completions(args) => completions::run(args, Cli::command()),
        Command::Up(args) => up::run(args).await,
        Command::Check(args) => check::run(args, global).await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // clap prints its own usage errors and exits 2.
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis: {}", error::one_line(&e));
            ExitCode::from(error::exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
