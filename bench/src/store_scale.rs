//! `trellis-bench store-scale`: what the CA's routine requests cost as its store ages.
//!
//! For each history size, a data directory is initialised by the real `trellis-ca`, then
//! filled directly through the store API (no gRPC: fast) with that many expired
//! certificate records (each with its audit entry), archived as the CA's retention task archives them (in chunks, so
//! the rate of archiving is measured too), and `--live` unexpired ones (a tenth of them
//! expiring within 10 minutes). The real `trellis-ca` is started on it (retention off, so
//! the history stays for the measurement), and the bench measures start-up, `/metrics`,
//! `trellis ca status`, `trellis cert list --expiring-within 10m`, an identity's listing
//! with its expired certificates, `trellis root list` (the root census), the CA's RSS and
//! the disk used; then, with the CA stopped, how fast retention removes the history. Medians of `--rounds`, side by side per history size. The records carry fake
//! DER: nothing on these paths parses it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use trellis_ca::store::CertRecord;

use crate::proxy::procs::tree_rss_kib;
use crate::proxy::stacks::{Ca, free_port};
use crate::stats::Latencies;

#[derive(clap::Args)]
pub struct Args {
    /// Expired records to fill the store with, one run per value (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,1000000")]
    history: Vec<u64>,
    /// Unexpired certificates in every run.
    #[arg(long, default_value_t = 100_000)]
    live: u64,
    /// Measurements per operation (the median is shown).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Distinct identities the records are spread over.
    #[arg(long, default_value_t = 20_000)]
    identities: u64,
}

/// The longest any one step may take.
const STEP: Duration = Duration::from_secs(600);
/// Expired records written between two archiving runs while filling.
const ARCHIVE_CHUNK: u64 = 50_000;
/// A DER-sized value for each record.
const FAKE_DER: [u8; 600] = [0x30; 600];

/// One history size's results.
struct Run {
    history: u64,
    fill: Duration,
    archive_per_sec: f64,
    /// The longest a single write waited: a checkpoint (and compaction) pauses writers.
    longest_write: Duration,
    first_start: Duration,
    restart: Duration,
    metrics: Duration,
    status: Duration,
    expiring: Duration,
    roots: Duration,
    history_listing: Duration,
    rss_mib: f64,
    disk_mib: f64,
    archive_mib: f64,
    prune_per_sec: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.rounds == 0 || args.live == 0 || args.identities == 0 {
        bail!("--rounds, --live and --identities must be at least 1");
    }
    // The store's own log lines (checkpoints, compactions) on stderr.
    trellis_proto::logging::init(false);
    let mut runs = Vec::new();
    for &history in &args.history {
        let dir = tempfile::tempdir()?;
        eprintln!("store-scale: history {history}, live {}", args.live);
        runs.push(one(&args, history, dir.path())?);
    }
    print(&args, &runs);
    Ok(())
}

fn one(args: &Args, history: u64, dir: &Path) -> anyhow::Result<Run> {
    let data_dir = dir.join("ca");
    // First start: initialise (root, intermediate, admin credentials), then stop.
    drop(start_ca(&data_dir, dir)?);
    let now = unix_now();
    let (fill, archive_per_sec, longest_write) = fill(&data_dir.join("db"), args, history, now)?;
    // The first start after the fill replays what the filling process wrote to sled's log
    // (as a start after a crash would); a restart after a clean stop does not.
    let started = Instant::now();
    let mut ca = start_ca(&data_dir, dir)?;
    let first_start = started.elapsed();
    let metrics = median(args.rounds, || {
        let (_, text) = trellis_e2e::http::http_get(ca.http, "/metrics")?;
        if !text.contains("trellis_ca_certificates_issued_total") {
            bail!("/metrics without the issued counter: {text}");
        }
        Ok(())
    })?;
    let status = median(args.rounds, || ca.ca.trellis(&["ca", "status"]).map(drop))?;
    let expiring = median(args.rounds, || {
        ca.ca
            .trellis(&["cert", "list", "--expiring-within", "10m", "--limit", "100"])
            .map(drop)
    })?;
    let roots = median(args.rounds, || ca.ca.trellis(&["root", "list"]).map(drop))?;
    let history_listing = median(args.rounds, || {
        let id = "spiffe://cluster.local/ns/bench/sa/w1";
        let args = [
            "cert",
            "list",
            "--identity",
            id,
            "--include-expired",
            "--limit",
            "10",
        ];
        ca.ca.trellis(&args).map(drop)
    })?;
    let rss_mib = tree_rss_kib(ca.ca.proc.pid())? as f64 / 1024.0;
    drop(ca);
    let mut restarts = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let started = Instant::now();
        let ca = start_ca(&data_dir, dir)?;
        restarts.push(started.elapsed());
        drop(ca);
    }
    let restart = Latencies::new(restarts).percentile(50.0);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let archive_mib =
        mib(du(&data_dir.join("db").join("history"))?
            + du(&data_dir.join("db").join("audit-history"))?);
    let disk_mib = mib(du(&data_dir.join("db"))?) - archive_mib;
    let prune_per_sec = prune(&data_dir.join("db"), now)?;
    Ok(Run {
        history,
        fill,
        archive_per_sec,
        longest_write,
        first_start,
        restart,
        metrics,
        status,
        expiring,
        roots,
        history_listing,
        rss_mib,
        disk_mib,
        archive_mib,
        prune_per_sec,
    })
}

/// Writes `history` expired records, archiving them a chunk at a time, and `args.live`
/// unexpired ones; returns how long it took, the records archived per second and the
/// longest a single write took.
fn fill(
    db: &Path,
    args: &Args,
    history: u64,
    now: u64,
) -> anyhow::Result<(Duration, f64, Duration)> {
    let rt = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    let mut archiving = Duration::ZERO;
    let mut longest_write = Duration::ZERO;
    rt.block_on(async {
        let store = trellis_ca::store::open(db)?;
        let total = history + args.live;
        // A step's bound, or a second per 2,000 records for a history that takes longer.
        let fill_limit = STEP.max(Duration::from_secs(total / 2_000));
        let mut archive = |store: &dyn trellis_ca::store::Store| -> anyhow::Result<()> {
            let started = Instant::now();
            // Through `now`, not before it: the audit entries of the CA's first start are
            // from the same second, and archiving stops at the first entry it must keep.
            while store.archive_expired(now, trellis_ca::retention::BATCH)?
                == trellis_ca::retention::BATCH
            {}
            archiving += started.elapsed();
            Ok(())
        };
        for i in 0..total {
            if i == history || (i > 0 && i < history && i % ARCHIVE_CHUNK == 0) {
                archive(&*store)?;
            }
            let not_after = if i < history {
                // Expired within the day before the last hour, spread over it in the order
                // certificates expire (and are archived) in.
                now - 3600 - 86_400 + i * 86_400 / history
            } else if i % 10 == 0 {
                now + 60 + (i % 500) // expiring within 10 minutes
            } else {
                now + 3600 + (i % 3600)
            };
            let mut serial = [0u8; 16];
            serial[0] = 0x40;
            serial[8..].copy_from_slice(&i.to_be_bytes());
            let record = CertRecord {
                serial: trellis_identity::hex::encode(&serial),
                spiffe_id: format!(
                    "spiffe://cluster.local/ns/bench/sa/w{}",
                    i % args.identities
                ),
                dns_names: Vec::new(),
                not_before: not_after - 3600,
                not_after,
                issued_at: not_after - 3600,
                issued_at_ns: u128::from(i),
                root_id: "bench".into(),
                intermediate_id: "bench".into(),
                issued_via: "renewal".into(),
            };
            // The event every issuance leaves in the audit log.
            let audit = trellis_ca::store::AuditRecord {
                time: record.issued_at,
                kind: "certificate_issued".into(),
                spiffe_id: record.spiffe_id.clone(),
                serial: record.serial.clone(),
                actor: "renewal".into(),
                detail: String::new(),
            };
            let writing = Instant::now();
            store.record_issuance(&record, &FAKE_DER, &serial, None, &[audit])?;
            longest_write = longest_write.max(writing.elapsed());
            if started.elapsed() > fill_limit {
                bail!("filling {total} records took longer than {fill_limit:?}");
            }
        }
        store.flush_now()?;
        anyhow::Ok(())
    })?;
    let archived_per_sec = match history {
        0 => 0.0,
        n => n as f64 / archiving.as_secs_f64(),
    };
    Ok((started.elapsed(), archived_per_sec, longest_write))
}

/// Removes the history the way retention does (batches of 1,000); records per second.
fn prune(db: &Path, now: u64) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let store = trellis_ca::store::open(db)?;
        store.start_counting(now)?;
        let started = Instant::now();
        let mut removed = 0;
        loop {
            let n = store.prune_expired(now, trellis_ca::retention::BATCH)?;
            removed += n;
            if n < trellis_ca::retention::BATCH || started.elapsed() > STEP {
                break;
            }
        }
        store.flush_now()?;
        let secs = started.elapsed().as_secs_f64();
        Ok(if removed == 0 {
            0.0
        } else {
            removed as f64 / secs
        })
    })
}

/// The real CA on `data_dir`, with its metrics listener and no pruning (the bench measures
/// pruning itself).
struct RunningCa {
    ca: Ca,
    http: SocketAddr,
}

fn start_ca(data_dir: &Path, dir: &Path) -> anyhow::Result<RunningCa> {
    let http = free_port()?.to_string();
    let flags = ["--http-listen", &http, "--certificate-retention", "0"];
    Ok(RunningCa {
        ca: Ca::start_in(data_dir, dir, &flags, STEP)?,
        http: http.parse()?,
    })
}

/// The median duration of `rounds` calls of `op`.
fn median(rounds: usize, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        op()?;
        times.push(started.elapsed());
    }
    Ok(Latencies::new(times).percentile(50.0))
}

/// Bytes under `dir` (none if it does not exist).
fn du(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// How one row of the table shows a run.
type Cell = Box<dyn Fn(&Run) -> String>;

fn print(args: &Args, runs: &[Run]) {
    println!(
        "store-scale: {} live certificates over {} identities, medians of {} rounds \
         (CLI times include starting the `trellis` process and its TLS handshake)",
        args.live, args.identities, args.rounds
    );
    let mut header = format!("{:<34}", "expired records in the store");
    for r in runs {
        header.push_str(&format!("{:>16}", r.history));
    }
    println!("{header}");
    let rows: [(&str, Cell); 14] = [
        ("fill (store API, not measured)", Box::new(|r| ms(r.fill))),
        (
            "longest write in the fill",
            Box::new(|r| ms(r.longest_write)),
        ),
        (
            "archiving (records/s)",
            Box::new(|r| format!("{:.0}", r.archive_per_sec)),
        ),
        (
            "first start after the fill",
            Box::new(|r| ms(r.first_start)),
        ),
        ("CA restart to ready", Box::new(|r| ms(r.restart))),
        ("GET /metrics", Box::new(|r| ms(r.metrics))),
        ("trellis ca status", Box::new(|r| ms(r.status))),
        (
            "trellis cert list --expiring-within",
            Box::new(|r| ms(r.expiring)),
        ),
        ("trellis root list (census)", Box::new(|r| ms(r.roots))),
        (
            "cert list --identity --include-expired",
            Box::new(|r| ms(r.history_listing)),
        ),
        ("CA RSS", Box::new(|r| format!("{:.0} MiB", r.rss_mib))),
        (
            "disk (sled)",
            Box::new(|r| format!("{:.0} MiB", r.disk_mib)),
        ),
        (
            "disk (archive)",
            Box::new(|r| format!("{:.0} MiB", r.archive_mib)),
        ),
        (
            "pruning (records/s)",
            Box::new(|r| format!("{:.0}", r.prune_per_sec)),
        ),
    ];
    for (name, value) in &rows {
        let mut line = format!("{name:<34}");
        for r in runs {
            line.push_str(&format!("{:>16}", value(r)));
        }
        println!("{line}");
    }
}
