//! `trellis-bench proxy`: an echo workload direct, through a Trellis sidecar pair, and
//! through the same pair topology built from stunnel4, nginx (stream) and haproxy, all with
//! mutual TLS 1.3 and ECDSA P-256 certificates from a real `trellis-ca`, every proxy a
//! separate process on 127.0.0.1. One table from one run:
//!
//! - latency added at fixed request rates (open loop, small messages over a few
//!   persistent connections; proxied percentile minus direct percentile), and each
//!   stack's p99 slice by slice against the others' (`slices.rs`);
//! - bulk throughput (a few connections, bounded bytes);
//! - full mTLS handshakes per second at each stack's inbound port (fresh connections, no
//!   resumption, a client certificate from the CA);
//! - RSS of the proxy pair idle, and per idle connection (1,000 by default).
//!
//! Every loop is bounded in count and time; every child is stopped on exit, on error and
//! on SIGINT/SIGTERM.

mod cgroups;
mod handshakes;
pub(crate) mod load;
mod peers;
pub(crate) mod procs;
mod slices;
pub(crate) mod stacks;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
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
    /// Rounds of the bulk and handshake measurements, each visiting every stack in turn.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Slices of the latency measurement: each slice measures every rate on direct and
    /// every stack for --slice-ms, starting each slice's visit one stack further along.
    /// Many short slices on connections kept open, so that the state of this virtual
    /// machine, which changes from second to second (stalls of a few milliseconds; whole
    /// seconds when its host is busy, direct included), lands on every stack alike instead
    /// of deciding one stack's p99.
    #[arg(long, default_value_t = 100)]
    latency_slices: usize,
    /// Persistent connections carrying the latency load, per stack.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Message size for the latency load, bytes.
    #[arg(long, default_value_t = 64)]
    message: usize,
    /// Milliseconds measured per rate, stack and latency slice, after --warmup-ms whose
    /// samples are dropped.
    #[arg(long, default_value_t = 100)]
    slice_ms: u64,
    #[arg(long, default_value_t = 25)]
    warmup_ms: u64,
    /// Bulk: connections, each sending and receiving back --bulk-mib MiB per round.
    #[arg(long, default_value_t = 2)]
    bulk_connections: usize,
    #[arg(long, default_value_t = 32)]
    bulk_mib: usize,
    /// Handshakes per round: at most this many, at most --handshake-seconds, this many at
    /// a time.
    #[arg(long, default_value_t = 2000)]
    handshakes: usize,
    #[arg(long, default_value_t = 2)]
    handshake_seconds: u64,
    #[arg(long, default_value_t = 4)]
    handshake_concurrency: usize,
    /// Idle connections held open through each pair for the memory columns.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// Stacks to compare with direct: trellis, stunnel, nginx, haproxy; `trellis-N` adds
    /// the Trellis pair with N runtime threads per sidecar (e.g. `trellis,trellis-1,...`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "trellis,stunnel,nginx,haproxy"
    )]
    stacks: Vec<String>,
    /// Leave every proxy in the bench's own cgroup instead of one CPU cgroup each (see
    /// `proxy/cgroups.rs`): on a busy machine, proxies with more threads then get more CPU.
    #[arg(long)]
    shared_cgroup: bool,
}

/// What every stack's measurement needs.
struct Bench<'a> {
    args: &'a Args,
    runtime: &'a tokio::runtime::Runtime,
    bundle: Arc<TrustBundle>,
    client: Identity,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let stack_kinds = args
        .stacks
        .iter()
        .map(|s| match s.as_str() {
            "stunnel" => Ok(Kind::Peer(Peer::Stunnel)),
            "nginx" => Ok(Kind::Peer(Peer::Nginx)),
            "haproxy" => Ok(Kind::Peer(Peer::Haproxy)),
            other => trellis_workers(other).map(Kind::Trellis).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown stack {other:?}: use trellis (or trellis-N for N runtime \
                     threads per sidecar), stunnel, nginx, haproxy"
                )
            }),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let peers: Vec<Peer> = stack_kinds
        .iter()
        .filter_map(|k| match k {
            Kind::Peer(p) => Some(*p),
            Kind::Trellis(_) => None,
        })
        .collect();
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
        cgroups::remove_this_process_groups();
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
    let mut pairs = Vec::new();
    for (name, kind) in args.stacks.iter().zip(&stack_kinds) {
        eprintln!("starting {name}");
        let stack_dir = dir.path().join(name);
        std::fs::create_dir_all(&stack_dir)?;
        pairs.push(match *kind {
            Kind::Trellis(workers) => {
                stacks::trellis_pair(&mut ca, echo, &client_id, workers, &stack_dir)?
            }
            Kind::Peer(peer) => stacks::peer_pair(&mut ca, peer, echo, &stack_dir)?,
        });
    }
    let (_groups, cpu_note) = if args.shared_cgroup {
        (None, "one cgroup for all (--shared-cgroup)".to_owned())
    } else {
        match own_cgroups(&pairs) {
            Ok(groups) => (
                Some(groups),
                "each proxy in a CPU cgroup of its own with the default weight, as each \
                 container of a pod, the load generator and echo app in one more"
                    .to_owned(),
            ),
            Err(e) => (None, format!("one cgroup for all ({e:#})")),
        }
    };
    eprintln!("CPU: {cpu_note}");
    let load_before = loadavg();
    let (rows, notes) = bench.all(echo, &mut pairs)?;
    let load_after = loadavg();

    let a = &args;
    println!(
        "Echo workload on 127.0.0.1, {} cores; load average (1/5/15 min) before: {load_before}, after: {load_after}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    println!(
        "Latency open loop, {} B messages over {} connections per stack, {} slices of {} ms (after {} ms \
         of warm-up) per rate and stack, each slice visiting every stack (in a rotated order); \
         {} rounds of: bulk {} x {} MiB echoed, \
         handshakes {} at a time, at most {} or {} s. Memory: {} idle connections",
        a.message,
        a.connections,
        a.latency_slices,
        a.slice_ms,
        a.warmup_ms,
        a.rounds,
        a.bulk_connections,
        a.bulk_mib,
        a.handshake_concurrency,
        a.handshakes,
        a.handshake_seconds,
        a.idle_connections
    );
    println!("CPU: {cpu_note}");
    println!();
    print!("{}", table::render(&rows[0], &rows[1..], &args.rates));
    println!();
    for note in notes {
        println!("{note}");
    }
    Ok(())
}

/// What a `--stacks` name asks for.
enum Kind {
    /// The Trellis pair with this many runtime threads per sidecar (`None`: the default).
    Trellis(Option<usize>),
    Peer(Peer),
}

/// `trellis` is the pair with the sidecar's default number of runtime threads;
/// `trellis-N` gives each sidecar N threads (`workers = N`), e.g. `trellis-1` against
/// `trellis` in the same run, so that both meet the same state of the machine.
fn trellis_workers(name: &str) -> Option<Option<usize>> {
    match name.strip_prefix("trellis")? {
        "" => Some(None),
        rest => rest
            .strip_prefix('-')?
            .parse()
            .ok()
            .filter(|n| (1..=16).contains(n))
            .map(Some),
    }
}

/// A CPU cgroup for each proxy of every stack (with its child processes) and one for this
/// process (the load generator and the echo app, all its threads).
fn own_cgroups(stacks: &[Stack]) -> anyhow::Result<cgroups::CpuGroups> {
    let mut groups = cgroups::CpuGroups::create()?;
    for stack in stacks {
        for (name, pids) in stack.process_trees() {
            groups.place(&name, &pids)?;
        }
    }
    groups.place("load", &[std::process::id()])?;
    Ok(groups)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

impl Bench<'_> {
    /// Every measurement, interleaved: the first row is direct (straight to `echo`), then
    /// one per stack. Returns the rows and a note per stack.
    fn all(
        &self,
        echo: SocketAddr,
        stacks: &mut [Stack],
    ) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
        let a = self.args;
        let mut rows = vec![Row::new("direct")];
        let mut notes = Vec::new();
        let mut addrs = vec![echo];
        for stack in stacks.iter_mut() {
            eprintln!("memory: {}", stack.name);
            let mut row = Row::new(&stack.name);
            let by_proxy = self.memory(stack, &mut row)?;
            notes.push(format!("{}: idle RSS {}", stack.name, by_proxy.join(", ")));
            rows.push(row);
            addrs.push(stack.client_addr);
        }
        let rounds = a.rounds.max(1);
        let mut latency = vec![vec![Vec::new(); a.rates.len()]; addrs.len()];
        let mut bulk = vec![Duration::ZERO; addrs.len()];
        let mut handshakes: Vec<Option<handshakes::Handshakes>> =
            stacks.iter().map(|_| None).collect();
        let slices = a.latency_slices.max(1);
        let mut per_slice = slices::SliceP99s::new(addrs.len(), a.rates.len());
        let conns = addrs
            .iter()
            .zip(&rows)
            .map(|(&addr, row)| {
                load::connect_all(addr, a.connections)
                    .with_context(|| format!("{}: latency connections", row.name))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for slice in 0..slices {
            if slice % 10 == 0 {
                eprintln!(
                    "latency slices {} to {} of {slices}",
                    slice + 1,
                    (slice + 10).min(slices)
                );
            }
            for (r, &rate) in a.rates.iter().enumerate() {
                for k in 0..addrs.len() {
                    let t = (k + slice) % addrs.len();
                    let samples = load::open_loop(
                        &conns[t],
                        rate,
                        a.message,
                        Duration::from_millis(a.slice_ms),
                        Duration::from_millis(a.warmup_ms),
                    )
                    .with_context(|| format!("{}: latency at {rate}/s", rows[t].name))?;
                    per_slice.record(t, r, &samples);
                    latency[t][r].extend(samples);
                }
            }
        }
        drop(conns);
        for round in 1..=rounds {
            eprintln!("round {round} of {rounds}");
            for (t, &addr) in addrs.iter().enumerate() {
                bulk[t] += load::bulk(addr, a.bulk_connections, a.bulk_mib << 20)
                    .with_context(|| format!("{}: bulk", rows[t].name))?;
            }
            for (s, stack) in stacks.iter_mut().enumerate() {
                let config = handshakes::client_config(
                    self.bundle.clone(),
                    stack.inbound_id.clone(),
                    &self.client,
                )?;
                let got = self
                    .runtime
                    .block_on(handshakes::run(
                        stack.inbound_addr,
                        config,
                        a.handshake_concurrency,
                        a.handshakes,
                        Duration::from_secs(a.handshake_seconds),
                    ))
                    .with_context(|| format!("{}: handshakes", stack.name))?;
                match &mut handshakes[s] {
                    Some(total) => total.add(got),
                    slot => *slot = Some(got),
                }
                stack.check()?;
            }
        }
        let mut tails = vec![String::from(
            "latency tails, absolute µs (p90 / p95 / p99 / p99.9 / max), to tell a shifted \
             distribution from a few stalls:",
        )];
        for (t, row) in rows.iter_mut().enumerate() {
            for (samples, rate) in latency[t].drain(..).zip(&a.rates) {
                let l = Latencies::new(samples);
                row.latency.push((l.percentile(50.0), l.percentile(99.0)));
                let us = |p: f64| l.percentile(p).as_micros().to_string();
                tails.push(format!(
                    "  {} @{rate}/s: {} / {} / {} / {} / {}",
                    row.name,
                    us(90.0),
                    us(95.0),
                    us(99.0),
                    us(99.9),
                    us(100.0)
                ));
            }
            let bytes = (rounds * a.bulk_connections * (a.bulk_mib << 20)) as f64;
            row.mbps = bytes / bulk[t].as_secs_f64() / 1e6;
        }
        for (s, hs) in handshakes.into_iter().enumerate() {
            let Some(hs) = hs else { continue };
            rows[s + 1].handshakes = Some(hs.per_second());
            let mut note = format!(
                "; {} handshakes in {:.2} s at the inbound port, negotiated {}",
                hs.done,
                hs.elapsed.as_secs_f64(),
                hs.negotiated
            );
            if hs.errors > 0 {
                note += &format!(
                    "; {} FAILED ({})",
                    hs.errors,
                    hs.first_error.unwrap_or_default()
                );
            }
            notes[s] += &note;
        }
        notes.extend(tails);
        if rows.len() > 2 {
            let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
            notes.extend(per_slice.notes(&names, &a.rates, 0, 1));
        }
        Ok((rows, notes))
    }

    /// Idle RSS of the pair and the RSS added per idle connection; returns each proxy's
    /// idle RSS for the notes.
    fn memory(&self, stack: &mut Stack, row: &mut Row) -> anyhow::Result<Vec<String>> {
        let n = self.args.idle_connections;
        drop(load::round_trip(stack.client_addr)?);
        let by_proxy = stack.rss_by_proxy()?;
        let idle: u64 = by_proxy.iter().map(|(_, kib)| kib).sum();
        let conns = load::open_idle(
            stack.client_addr,
            n,
            Instant::now() + Duration::from_secs(120),
        )?;
        let loaded = stack.rss_kib()?;
        drop(conns);
        row.idle_rss_kib = Some(idle);
        row.per_conn_kib = Some(loaded.saturating_sub(idle) as f64 / n.max(1) as f64);
        Ok(by_proxy
            .iter()
            .map(|(name, kib)| format!("{name} {:.1} MB", *kib as f64 / 1024.0))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::trellis_workers;

    #[test]
    fn trellis_stack_names_give_the_thread_count() {
        assert_eq!(trellis_workers("trellis"), Some(None));
        assert_eq!(trellis_workers("trellis-1"), Some(Some(1)));
        assert_eq!(trellis_workers("trellis-16"), Some(Some(16)));
        for not_trellis in ["trellis-0", "trellis-17", "trellis2", "trellis-x", "nginx"] {
            assert_eq!(trellis_workers(not_trellis), None, "{not_trellis}");
        }
    }
}
