//! `trellis-ca` binary: configuration, logging, signals. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use trellis_ca::config::{AuditCommand, Command, Config, Flags};
use trellis_identity::ready::Ready;

/// mimalloc instead of glibc's malloc: issuance allocates and frees many small buffers on
/// every runtime thread (HTTP/2 frames, DER, sled nodes); measured 1.10x the certificates per second
/// at concurrency 32 in `trellis-bench ca-issue` (which uses the same allocator), medians of
/// six runs alternating with the glibc build.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Every connected sidecar keeps two streams (bundle and revocations) open, each on its own
/// connection: raise the soft open-file limit to the hard limit, as the sidecar does.
fn raise_open_file_limit() {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => match rlimit::increase_nofile_limit(hard) {
            Ok(now) => tracing::info!(open_files = now, raised_from = soft, "open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        },
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Where `trellis-ca audit verify` reads the log.
enum AuditSource {
    DataDir(std::path::PathBuf),
    Store(trellis_ca::store::StoreConfig),
}

/// `trellis-ca audit verify`: exit 0 intact, 1 tampered, 2 unreadable.
async fn verify_audit(
    source: AuditSource,
    anchors: Option<&std::path::Path>,
    json: bool,
) -> ExitCode {
    use trellis_ca::audit::offline;
    let verified = match &source {
        AuditSource::DataDir(data) => offline::verify(data, anchors).await,
        AuditSource::Store(store) => offline::verify_store(store, anchors).await,
    };
    match verified {
        Err(e) => {
            eprintln!("trellis-ca: {e}");
            ExitCode::from(2)
        }
        Ok((trust_domain, result)) => {
            let intact = result.is_ok();
            if json {
                let value = match &result {
                    Ok(v) => serde_json::json!({
                        "intact": true,
                        "trust_domain": trust_domain,
                        "first_entry": v.first,
                        "last_entry": v.last,
                        "entries": v.entries,
                        "checkpoints": v.checkpoints,
                        "last_checkpoint_entry": v.last_checkpoint.map(|c| c.0),
                        "entries_after_last_checkpoint": v.unsigned_tail,
                    }),
                    Err(t) => serde_json::json!({
                        "intact": false,
                        "trust_domain": trust_domain,
                        "problem": t.to_string(),
                        "problem_entry": t.sequence(),
                    }),
                };
                println!("{value}");
            } else {
                match &result {
                    Ok(v) => println!(
                        "audit log of {trust_domain} intact: {} entries ({}..{}), {} signed \
                         checkpoints, {} entries after the last one",
                        v.entries, v.first, v.last, v.checkpoints, v.unsigned_tail
                    ),
                    Err(t) => println!("audit log of {trust_domain} is NOT intact: {t}"),
                }
            }
            if intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut flags = Flags::parse();
    if let Some(Command::Audit(AuditCommand::Verify {
        data,
        store,
        store_password_file,
        store_ca_file,
        anchors,
        json,
    })) = flags.command.take()
    {
        let source = match (data, store) {
            (Some(data), _) => AuditSource::DataDir(data),
            (None, Some(url)) => {
                match trellis_ca::config::audit_store(url, store_password_file, store_ca_file) {
                    Ok(trellis_ca::store::StoreConfig::Sled) => {
                        eprintln!("trellis-ca: --store sled: give the data directory with --data");
                        return ExitCode::from(2);
                    }
                    Ok(store) => AuditSource::Store(store),
                    Err(e) => {
                        eprintln!("trellis-ca: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            (None, None) => unreachable!("clap requires --data or --store"),
        };
        return verify_audit(source, anchors.as_deref(), json).await;
    }
    let check_only = flags.check_config;
    let ready_file = flags.ready_file.clone();
    let config = match Config::load(flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trellis-ca: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        // The KEK file is part of the configuration: a missing or unsafe one fails here too.
        if let Err(e) = trellis_ca::keys::key_encryption_key(&config) {
            eprintln!("trellis-ca: configuration: {e}");
            return ExitCode::from(2);
        }
        println!("configuration OK: {config:#?}");
        return ExitCode::SUCCESS;
    }
    trellis_proto::logging::init(config.json_logs);
    raise_open_file_limit();
    let running = match trellis_ca::start(config).await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("trellis-ca: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "trellis-ca listening on {} (trust domain {}); admin credentials in {}",
        running.addr,
        running.trust_domain(),
        running.data_dir().join("admin").display()
    );
    if let Some(path) = &ready_file {
        let mut ready = Ready::new("trellis-ca").listener("grpc", running.addr);
        if let Some(http) = running.http_addr {
            ready = ready.listener("http", http);
        }
        if let Some(bundle_endpoint) = running.bundle_endpoint_addr {
            ready = ready.listener("bundle_endpoint", bundle_endpoint);
        }
        ready.spiffe_id = Some(format!(
            "spiffe://{}{}",
            running.trust_domain(),
            trellis_identity::spiffe::reserved::CA
        ));
        if let Err(e) = ready.write(path) {
            eprintln!(
                "trellis-ca: cannot write the ready file {}: {e}",
                path.display()
            );
            let _ = running.shutdown().await;
            return ExitCode::FAILURE;
        }
    }
    let signal = trellis_proto::signals::stop_requested().await;
    tracing::info!("{signal} received, shutting down");
    match running.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-ca: shutdown: {e}");
            ExitCode::FAILURE
        }
    }
}
