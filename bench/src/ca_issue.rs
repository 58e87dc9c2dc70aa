//! Durable CA issuance under concurrent renewal load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;
use trellis_ca::Config;
use trellis_ca::store::StoreConfig;
use trellis_ca::store::postgres::config::{PasswordSource, PostgresConfig, UrlSource};
use trellis_identity::tls::Identity;
use trellis_identity::{TrustBundle, WorkloadKey};
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_proto::admin::v1::{GetStatusRequest, ListCertificatesRequest, ListRootsRequest};
use trellis_proto::ca::v1::CertifyRequest;
use trellis_proto::ca::v1::certify_request::Credential;
use trellis_proto::ca::v1::workload_ca_client::WorkloadCaClient;

use crate::admin;
use crate::stats::{Latencies, ms};

#[derive(clap::Args)]
pub struct Args {
    /// Concurrency levels (clients, each on its own mTLS connection).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Issuances per level at most (high enough that a level normally runs its full time).
    #[arg(long, default_value_t = 50_000)]
    requests: usize,
    /// Seconds per level at most.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Worker threads for the CA's runtime (the clients get their own runtime).
    #[arg(long, default_value_t = 2)]
    ca_threads: usize,
    /// Worker threads for the clients' runtime (two measured faster than one: 3,309 against
    /// 2,982 certificates/s at concurrency 32, medians of three runs).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Run each level twice, the second time while an operator's reads (`ca status`,
    /// `root list`, `cert list --limit 10`) repeat back to back over the admin API, to see
    /// what they cost issuance.
    #[arg(long)]
    admin_load: bool,
    /// Stores to measure, one after the other in the same run: `sled` (the data
    /// directory) and/or `postgres` (a real server the bench starts, as the tests do).
    #[arg(long, value_delimiter = ',', default_value = "sled")]
    store: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    for store in &args.store {
        match store.as_str() {
            "sled" => run_on(&args, "sled", StoreConfig::Sled, None)?,
            "postgres" => {
                // Debian's server, fsync and synchronous_commit on (its defaults): every
                // certificate is committed before its reply, as with sled.
                let server = trellis_e2e::Postgres::start();
                let config = PostgresConfig::parse(
                    &server.url(),
                    UrlSource::Flag,
                    PasswordSource::default(),
                    None,
                )
                .map_err(|e| anyhow::anyhow!(e))?;
                run_on(
                    &args,
                    "postgres",
                    StoreConfig::Postgres(Box::new(config)),
                    Some(server.kek_file()),
                )?;
            }
            other => anyhow::bail!("--store {other:?}: expected sled or postgres"),
        }
    }
    Ok(())
}

/// Every level on one store.
fn run_on(
    args: &Args,
    name: &str,
    store: StoreConfig,
    kek: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_data_dir(dir.path().join("ca"));
    config.store = store;
    config.key_encryption_key_file = kek;
    config.listen = "127.0.0.1:0".parse()?;
    // This measures issuance capacity, not policy: each client renews its one identity
    // hundreds of times a second, far past any sane per-identity limit (`agent-storm`
    // measures the limits), and the concurrency cap stays above the highest level run.
    config.limits.renewals = trellis_ca::limits::Rate {
        per_minute: u32::MAX / 2,
        burst: u32::MAX / 2,
    };
    config.limits.max_concurrent_issuance = config
        .limits
        .max_concurrent_issuance
        .max(args.concurrency.iter().copied().max().unwrap_or(1) as u32);
    let ca_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.ca_threads)
        .thread_name("ca")
        .enable_all()
        .build()?;
    let ca = ca_runtime.block_on(trellis_ca::start(config))?;
    let addr = ca.addr;
    let bundle = ca.bundle();
    let admin_dir = ca.data_dir().join("admin");

    // Named apart from the CA's, so that a profile tells the two sides' costs apart.
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("client")
        .enable_all()
        .build()?;
    println!(
        "CA issuance on {name}, durable (sled: fsync per group commit; postgres: a committed \
         transaction), renewals over mTLS on {addr}; {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:>11} {:>11} {:>9} {:>10} {:>9} {:>9} {:>9} {:>11}",
        "concurrency",
        "admin load",
        "issued",
        "certs/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "admin reads"
    );
    let loads: &[bool] = if args.admin_load {
        &[false, true]
    } else {
        &[false]
    };
    for &concurrency in &args.concurrency {
        for &with_admin_load in loads {
            let row = client_runtime.block_on(level(
                addr,
                bundle.clone(),
                &admin_dir,
                concurrency,
                args.requests,
                Duration::from_secs(args.seconds),
                with_admin_load,
            ))?;
            println!(
                "{:>11} {:>11} {:>9} {:>10.0} {:>9} {:>9} {:>9} {:>11}",
                concurrency,
                if with_admin_load { "yes" } else { "no" },
                row.latencies.len(),
                row.latencies.len() as f64 / row.elapsed.as_secs_f64(),
                ms(row.latencies.percentile(50.0)),
                ms(row.latencies.percentile(99.0)),
                row.errors,
                row.admin_reads
            );
        }
    }
    ca_runtime.block_on(ca.shutdown())?;
    Ok(())
}

struct Row {
    latencies: Latencies,
    elapsed: Duration,
    errors: usize,
    /// Admin reads completed alongside (with `admin_load`).
    admin_reads: usize,
}

/// An operator's reads, back to back until `deadline`; returns how many completed.
async fn admin_reads(mut admin: AdminClient<Channel>, deadline: Instant) -> usize {
    let mut done = 0;
    while Instant::now() < deadline {
        let status = admin.get_status(GetStatusRequest {}).await;
        let roots = admin.list_roots(ListRootsRequest {}).await;
        let listed = admin
            .list_certificates(ListCertificatesRequest {
                page_size: 10,
                ..Default::default()
            })
            .await;
        done += [status.is_ok(), roots.is_ok(), listed.is_ok()]
            .iter()
            .filter(|ok| **ok)
            .count();
    }
    done
}

/// One concurrency level: bootstrap `concurrency` workloads, then renew in a loop.
async fn level(
    addr: std::net::SocketAddr,
    bundle: Arc<TrustBundle>,
    admin_dir: &std::path::Path,
    concurrency: usize,
    max_requests: usize,
    max_time: Duration,
    with_admin_load: bool,
) -> anyhow::Result<Row> {
    let mut admin = admin::client(addr, bundle.clone(), admin_dir).await?;
    let mut clients = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let spiffe_id = format!(
            "spiffe://{}/bench/c{concurrency}/{}/w{i}",
            bundle.trust_domain(),
            if with_admin_load { "loaded" } else { "quiet" }
        );
        let token = admin::token(&mut admin, &spiffe_id).await?;
        let key = WorkloadKey::generate()?;
        let csr = key.csr_der(None)?;
        let first = WorkloadCaClient::new(admin::channel(addr, bundle.clone(), None).await?)
            .certify(CertifyRequest {
                csr_der: csr.clone(),
                credential: Some(Credential::JoinToken(token)),
                ..Default::default()
            })
            .await
            .context("bootstrap")?
            .into_inner();
        let identity = Identity {
            chain: first
                .chain_der
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            key: key.private_key_der(),
        };
        let client =
            WorkloadCaClient::new(admin::channel(addr, bundle.clone(), Some(&identity)).await?);
        clients.push((client, csr));
    }
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(max_requests));
    let deadline = Instant::now() + max_time;
    let started = Instant::now();
    let reads = with_admin_load.then(|| {
        let admin = admin.clone();
        tokio::spawn(admin_reads(admin, deadline))
    });
    let mut tasks = Vec::new();
    for (mut client, csr) in clients {
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline
                && remaining
                    .fetch_update(
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                        |n| n.checked_sub(1),
                    )
                    .is_ok()
            {
                let t = Instant::now();
                let request = CertifyRequest {
                    csr_der: csr.clone(),
                    ..Default::default()
                };
                match client.certify(request).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await?;
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed();
    let admin_reads = match reads {
        Some(task) => task.await?,
        None => 0,
    };
    Ok(Row {
        elapsed,
        latencies: Latencies::new(all),
        errors,
        admin_reads,
    })
}
