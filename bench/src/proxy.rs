//! `trellis-bench proxy`: an echo workload direct, through a Trellis sidecar pair, and
//! through the same pair topology built from stunnel4, nginx (stream) and haproxy, all with
//! mutual TLS 1.3 and ECDSA P-256 certificates from a real `trellis-ca`, every proxy a
//! separate process on 127.0.0.1. One table from one run:
//!
//! - latency added at fixed request rates (open loop, small messages over a few
//!   persistent connections; proxied percentile minus direct percentile);
//! - bulk throughput (a few connections, bounded bytes);
//! - full mTLS handshakes per second at each stack's inbound port (fresh connections, no
//!   resumption, a client certificate from the CA);
//! - RSS of the proxy pair idle, and per idle connection (1,000 by default).
//!
//! Every loop is bounded in count and time; every child is stopped on exit, on error and
//! on SIGINT/SIGTERM.

mod handshakes;
mod load;
mod peers;
mod procs;
mod stacks;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trellis_identity::TrustBundle;
use trellis_identity::tls::Identity;

use crate::stats::Latencies;
use peers::Peer;
use stacks::{Ca, Stack};
use table::Row;

#[derive(clap::Args)]
pub struct Args {
    /// Request rates for the latency columns, messages per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
    /// Persistent connections carrying the latency load.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Message size for the latency load, bytes.
    #[arg(long, default_value_t = 64)]
    message: usize,
    /// Seconds measured per rate (after half a second of warm-up).
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Bulk: connections, each sending and receiving back --bulk-mib MiB.
    #[arg(long, default_value_t = 2)]
    bulk_connections: usize,
    #[arg(long, default_value_t = 64)]
    bulk_mib: usize,
    /// Handshakes: at most this many, at most --handshake-seconds, this many at a time.
    #[arg(long, default_value_t = 4000)]
    handshakes: usize,
    #[arg(long, default_value_t = 5)]
    handshake_seconds: u64,
    #[arg(long, default_value_t = 4)]
    handshake_concurrency: usize,
    /// Idle connections held open through each pair for the memory column.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// Stacks to compare with direct: trellis, stunnel, nginx, haproxy.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "trellis,stunnel,nginx,haproxy"
    )]
    stacks: Vec<String>,
}

/// What every stack's measurement needs.
struct Bench<'a> {
    args: &'a Args,
    runtime: &'a tokio::runtime::Runtime,
    bundle: Arc<TrustBundle>,
    client: Identity,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let peers = args
        .stacks
        .iter()
        .filter(|s| *s != "trellis")
        .map(|s| match s.as_str() {
            "stunnel" => Ok(Peer::Stunnel),
            "nginx" => Ok(Peer::Nginx),
            "haproxy" => Ok(Peer::Haproxy),
            other => bail!("unknown stack {other:?}: use trellis, stunnel, nginx, haproxy"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Every binary first, so a missing one fails before minutes of measuring.
    for peer in &peers {
        peer.binary()?;
    }
    for name in ["trellis-ca", "trellis-sidecar", "trellis"] {
        stacks::workspace_binary(name)?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        procs::kill_all();
        eprintln!("trellis-bench: interrupted; child processes stopped");
        std::process::exit(130);
    });

    let dir = tempfile::tempdir()?;
    let echo = load::start_echo()?;
    eprintln!("starting trellis-ca; echo app on {echo}");
    let mut ca = Ca::start(dir.path())?;
    let client_id = stacks::id("/bench/client");
    let client_files = ca.issue(&client_id, None, &dir.path().join("client"))?;
    let bench = Bench {
        args: &args,
        runtime: &runtime,
        bundle: ca.bundle()?,
        client: stacks::identity(&client_files)?,
    };
    let load_before = loadavg();
    eprintln!("measuring direct");
    let direct = bench.plain(echo, "direct").context("direct")?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for name in &args.stacks {
        eprintln!("starting {name}");
        let stack_dir = dir.path().join(name);
        std::fs::create_dir_all(&stack_dir)?;
        let mut stack = match name.as_str() {
            "trellis" => stacks::trellis_pair(&mut ca, echo, &client_id, &stack_dir)?,
            "stunnel" => stacks::peer_pair(&mut ca, Peer::Stunnel, echo, &stack_dir)?,
            "nginx" => stacks::peer_pair(&mut ca, Peer::Nginx, echo, &stack_dir)?,
            _ => stacks::peer_pair(&mut ca, Peer::Haproxy, echo, &stack_dir)?,
        };
        eprintln!("measuring {name}");
        let (row, note) = bench
            .stack(&mut stack)
            .with_context(|| format!("measuring {name}"))?;
        rows.push(row);
        notes.push(note);
    }
    let load_after = loadavg();

    let a = &args;
    println!(
        "Echo workload on 127.0.0.1, {} cores; load average (1/5/15 min) before: {load_before}, after: {load_after}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    println!(
        "latency: open loop, {} B messages over {} connections, {} s per rate; bulk: {} x {} MiB echoed; \
         handshakes: {} at a time, at most {} or {} s; memory: {} idle connections",
        a.message,
        a.connections,
        a.seconds,
        a.bulk_connections,
        a.bulk_mib,
        a.handshake_concurrency,
        a.handshakes,
        a.handshake_seconds,
        a.idle_connections
    );
    println!();
    print!("{}", table::render(&direct, &rows, &args.rates));
    println!();
    for note in notes {
        println!("{note}");
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

impl Bench<'_> {
    /// Latency at each rate and bulk throughput through `addr`.
    fn plain(&self, addr: SocketAddr, name: &str) -> anyhow::Result<Row> {
        let a = self.args;
        let mut latency = Vec::new();
        for &rate in &a.rates {
            let samples = load::open_loop(
                addr,
                rate,
                a.connections,
                a.message,
                Duration::from_secs(a.seconds),
                Duration::from_millis(500),
            )
            .with_context(|| format!("latency at {rate}/s"))?;
            let l = Latencies::new(samples);
            latency.push((l.percentile(50.0), l.percentile(99.0)));
        }
        let mbps = load::bulk(addr, a.bulk_connections, a.bulk_mib << 20).context("bulk")?;
        Ok(Row {
            name: name.to_owned(),
            latency,
            mbps,
            handshakes: None,
            idle_rss_kib: None,
            per_conn_kib: None,
        })
    }

    /// Everything for one stack; returns its row and a line on its handshakes.
    fn stack(&self, stack: &mut Stack) -> anyhow::Result<(Row, String)> {
        let a = self.args;
        drop(load::round_trip(stack.client_addr)?);
        let by_proxy = stack.rss_by_proxy()?;
        let idle = by_proxy.iter().map(|(_, kib)| kib).sum();
        let conns = load::open_idle(
            stack.client_addr,
            a.idle_connections,
            Instant::now() + Duration::from_secs(120),
        )?;
        let loaded = stack.rss_kib()?;
        drop(conns);
        let per_conn = loaded.saturating_sub(idle) as f64 / a.idle_connections.max(1) as f64;
        let mut row = self.plain(stack.client_addr, &stack.name)?;
        let config =
            handshakes::client_config(self.bundle.clone(), stack.inbound_id.clone(), &self.client)?;
        let hs = self.runtime.block_on(handshakes::run(
            stack.inbound_addr,
            config,
            a.handshake_concurrency,
            a.handshakes,
            Duration::from_secs(a.handshake_seconds),
        ))?;
        stack.check()?;
        row.handshakes = Some(hs.per_second());
        row.idle_rss_kib = Some(idle);
        row.per_conn_kib = Some(per_conn);
        let mut note = format!(
            "{}: {} handshakes in {:.2} s at {}, negotiated {}",
            stack.name,
            hs.done,
            hs.elapsed.as_secs_f64(),
            stack.inbound_addr,
            hs.negotiated
        );
        let by_proxy: Vec<String> = by_proxy
            .iter()
            .map(|(name, kib)| format!("{name} {:.1} MB", *kib as f64 / 1024.0))
            .collect();
        note += &format!("; idle RSS {}", by_proxy.join(", "));
        if hs.errors > 0 {
            note += &format!(
                "; {} FAILED ({})",
                hs.errors,
                hs.first_error.unwrap_or_default()
            );
        }
        Ok((row, note))
    }
}
