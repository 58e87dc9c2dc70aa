//! `trellis-bench capture`: what transparent inbound capture costs. Pods are network
//! namespaces on a bridge (the e2e harness's `Lan`, needs root), the CA runs in the bridge's
//! namespace, the server pod is set up as injection sets it up (`trellis-sidecar
//! init-network`, then its sidecar with capture on), and one client sidecar has two
//! outbound listeners to the same server sidecar: one to its explicit inbound port
//! (15006), one to the app's own port, which the kernel redirects to the same listener.
//! Both paths share every process, so the difference is capture's alone: the NAT rule
//! and reading the original destination.
//!
//! Measured in one run, the stacks interleaved slice by slice: open-loop latency through
//! each path and directly to the app (a port left out of capture), and new connections per
//! second through each path (every one a full mTLS handshake between the sidecars).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use trellis_e2e::{Ca, Lan, Netns, PodSidecar, command};

use crate::proxy::load;
use crate::stats::Latencies;

const INBOUND: u16 = 15006;
const APP: u16 = 8080;
const DIRECT: u16 = 9090;

#[derive(clap::Args)]
pub struct Args {
    /// Messages per second for the latency columns.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Latency slices; each measures every stack for --slice-ms, in a rotating order.
    #[arg(long, default_value_t = 60)]
    slices: usize,
    #[arg(long, default_value_t = 200)]
    slice_ms: u64,
    /// Persistent connections carrying the latency load, per stack.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Rounds of the connection-rate measurement, each visiting both paths for
    /// --connect-seconds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 2)]
    connect_seconds: u64,
}

/// One way from the client pod to the echo app.
struct Path {
    name: &'static str,
    addr: SocketAddr,
    samples: Vec<Duration>,
    connections: u64,
    connect_time: Duration,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut lan = Lan::new();
    let ca = Ca::start_in(&lan.bridge, lan.bridge_ip.into());
    let server = lan.pod("server");
    let client = lan.pod("client");
    for port in [APP, DIRECT] {
        let listener = server
            .ns
            .enter(|| TcpListener::bind(("0.0.0.0", port)))
            .with_context(|| format!("binding the echo app on {port}"))?;
        load::serve_echo(listener)?;
    }
    let mut init = command("trellis-sidecar");
    init.args(["init-network", "--skip-inbound-ports", &DIRECT.to_string()]);
    trellis_e2e::run(server.ns.wrap(&init), Duration::from_secs(60)).success();

    let td = &ca.trust_domain;
    let client_id = format!("spiffe://{td}/bench/client");
    let server_id = format!("spiffe://{td}/bench/server");
    // Warnings only: a log line per connection would cost the sidecars time.
    let quiet = [("TRELLIS_LOG", "warn")];
    let _server_sidecar = PodSidecar::start(
        &server.ns,
        &ca,
        "server",
        &server_id,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:15020\"\n\n[inbound]\nlisten = \"0.0.0.0:{INBOUND}\"\n\
             app = \"127.0.0.1:{APP}\"\ncapture = true\npolicy = \"deny\"\nallow = [\"{client_id}\"]\n"
        ),
        &quiet,
    );
    let outbound = |port: u16| {
        format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}:{port}\"\nallow = [\"{server_id}\"]\n",
            server.ip
        )
    };
    let client_sidecar = PodSidecar::start(
        &client.ns,
        &ca,
        "client",
        &client_id,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
            outbound(INBOUND),
            outbound(APP)
        ),
        &quiet,
    );
    let path = |name, addr| Path {
        name,
        addr,
        samples: Vec::new(),
        connections: 0,
        connect_time: Duration::ZERO,
    };
    let mut paths = [
        path(
            "direct (no sidecars)",
            SocketAddr::from((server.ip, DIRECT)),
        ),
        path("explicit (to :15006)", client_sidecar.outbound[0]),
        path("capture (to :8080)", client_sidecar.outbound[1]),
    ];
    println!(
        "trellis-bench capture: {} msg/s, {} slices of {} ms per stack, {} connections; \
         connection rate in {} rounds of {} s per path",
        args.rate, args.slices, args.slice_ms, args.connections, args.rounds, args.connect_seconds
    );

    let conns: Vec<Vec<TcpStream>> = paths
        .iter()
        .map(|p| {
            client
                .ns
                .enter(|| load::connect_all(p.addr, args.connections))
        })
        .collect::<anyhow::Result<_>>()?;
    let slice = Duration::from_millis(args.slice_ms);
    let warmup = Duration::from_millis(20);
    for s in 0..args.slices {
        for k in 0..paths.len() {
            let i = (s + k) % paths.len();
            let samples = load::open_loop(&conns[i], args.rate, 64, slice, warmup)?;
            paths[i].samples.extend(samples);
        }
    }
    drop(conns);

    let window = Duration::from_secs(args.connect_seconds);
    for round in 0..args.rounds {
        for k in 1..paths.len() {
            let i = 1 + (round + k) % (paths.len() - 1);
            let (n, took) = connect_for(&client.ns, paths[i].addr, window)?;
            paths[i].connections += n;
            paths[i].connect_time += took;
        }
    }

    let direct = Latencies::new(std::mem::take(&mut paths[0].samples));
    let (d50, d99) = (direct.percentile(50.0), direct.percentile(99.0));
    println!("\n| path | p50 µs | p99 µs | added p50 µs | added p99 µs | new mTLS connections/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | — | — | — |",
        paths[0].name,
        d50.as_micros(),
        d99.as_micros()
    );
    let mut added = Vec::new();
    for p in &mut paths[1..] {
        let l = Latencies::new(std::mem::take(&mut p.samples));
        let (p50, p99) = (l.percentile(50.0), l.percentile(99.0));
        let rate = p.connections as f64 / p.connect_time.as_secs_f64().max(1e-9);
        let (a50, a99) = (p50.saturating_sub(d50), p99.saturating_sub(d99));
        println!(
            "| {} | {} | {} | {} | {} | {:.0} |",
            p.name,
            p50.as_micros(),
            p99.as_micros(),
            a50.as_micros(),
            a99.as_micros(),
            rate
        );
        added.push((a50, a99, rate));
    }
    if let [explicit, capture] = added.as_slice() {
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "\ncapture / explicit: added p50 {:.2}x, added p99 {:.2}x, connections/s {:.2}x",
            ratio(capture.0, explicit.0),
            ratio(capture.1, explicit.1),
            capture.2 / explicit.2.max(1e-9)
        );
    }
    Ok(())
}

/// Fresh connections through `addr` from inside `ns`, one round trip each, for `window`:
/// how many, and how long that took.
fn connect_for(ns: &Netns, addr: SocketAddr, window: Duration) -> anyhow::Result<(u64, Duration)> {
    ns.enter(|| {
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < window {
            load::round_trip(addr)?;
            n += 1;
        }
        Ok((n, started.elapsed()))
    })
}
