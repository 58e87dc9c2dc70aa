//! `trellis-bench`: load generators for Trellis, printing one table per run.
//!
//! `trellis-bench ca-issue` measures durable certificate issuance: a real CA (sled in a temp
//! dir, fsync'd group commits) on 127.0.0.1, and N concurrent workload clients, each on its
//! own mTLS connection, renewing with their current certificate as sidecars do.
//! `trellis-bench agent-storm` runs 1,000 real identity agents renewing against one CA
//! with tight overload limits; `trellis-bench sidecar-conns` holds 10,000 proxied mTLS
//! connections through one real `trellis-sidecar` process.
//!
//! `trellis-bench proxy` compares the sidecar pair with stunnel4, nginx and haproxy on an
//! echo workload (see `proxy.rs`); the peers come from `bench/install-peers.sh`.
//!
//! `trellis-bench capture` measures transparent inbound capture against the explicit inbound
//! listener, with pods as network namespaces (see `capture.rs`).
//!
//! `trellis-bench store-scale` measures the CA's routine requests on a store with a large
//! history of expired records against one without (see `store_scale.rs`).
//!
//! Every run is bounded in count and in time.

mod admin;
mod agent_storm;
mod ca_issue;
mod capture;
mod fds;
mod proxy;
mod sidecar_conns;
mod stats;
mod store_scale;

use clap::{Parser, Subcommand};

/// The allocator of the `trellis-ca` binary, so that `ca-issue` (which runs the CA library
/// in this process) measures what the binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "trellis-bench", about = "Trellis benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// CA issuance throughput and latency at several concurrency levels.
    CaIssue(ca_issue::Args),
    /// Many identity agents renewing against one CA with tight overload limits.
    AgentStorm(agent_storm::Args),
    /// Many concurrent proxied mTLS connections through one sidecar process.
    SidecarConns(sidecar_conns::Args),
    /// Latency, throughput, handshakes and memory of the sidecar pair against stunnel4,
    /// nginx and haproxy (run bench/install-peers.sh first).
    Proxy(proxy::Args),
    /// What transparent inbound capture costs against the explicit inbound listener, with
    /// pods as network namespaces (needs root).
    Capture(capture::Args),
    /// What the CA's routine requests cost as its store ages: start-up, /metrics, status,
    /// listings, the root census and pruning with and without a large history.
    StoreScale(store_scale::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::CaIssue(args) => ca_issue::run(args),
        Command::AgentStorm(args) => agent_storm::run(args),
        Command::SidecarConns(args) => sidecar_conns::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Capture(args) => capture::run(args),
        Command::StoreScale(args) => store_scale::run(args),
    }
}
