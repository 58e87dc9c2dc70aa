//! `trellis inject`: add the Trellis sidecar to Kubernetes workloads, offline
//! (`trellis inject -f app.yaml | kubectl apply -f -`) or as a mutating admission webhook
//! (`trellis inject serve-webhook`). Both run the same planner ([`pod::plan`]), which
//! yields a JSON Patch: the webhook returns it, the offline command applies it.
//!
//! Code map: `pod.rs` decides and builds the patch, `patch.rs` is JSON Patch, `manifest.rs`
//! reads and writes YAML streams (`yaml.rs` writes YAML Kubernetes reads unambiguously), `webhook.rs` answers an AdmissionReview, `serve.rs` is the
//! HTTPS server and `tls.rs` its certificate, re-read when the files change.

pub mod capture;
pub mod manifest;
pub mod patch;
pub mod pod;
pub mod serve;
pub mod tls;
pub mod webhook;
pub mod yaml;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use trellis_identity::TrustDomain;

use crate::Global;
use crate::error::usage;
use crate::output::Format;
use pod::Settings;

/// Arguments of `trellis inject`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InjectArgs {
    #[command(subcommand)]
    command: Option<InjectCommand>,
    /// Manifest to inject (YAML or JSON, several documents allowed); `-` reads stdin.
    /// Repeatable. The result goes to stdout; a summary to stderr.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    sidecar: SidecarFlags,
}

#[derive(Debug, clap::Subcommand)]
enum InjectCommand {
    /// Serve the mutating admission webhook (AdmissionReview v1 over HTTPS).
    ServeWebhook(Box<ServeArgs>),
}

/// What goes into every injected pod.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Sidecar")]
struct SidecarFlags {
    /// The sidecar container image.
    #[arg(long, value_name = "IMAGE", default_value = concat!("trellis/sidecar:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// The sidecar's imagePullPolicy (Always, IfNotPresent, Never); unset by default.
    #[arg(long, value_name = "POLICY")]
    image_pull_policy: Option<String>,
    /// The CA's address as pods reach it.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "trellis-ca.trellis-system.svc:8443"
    )]
    ca_service: String,
    /// ConfigMap in the pod's namespace holding the trust bundle under `bundle.pem`.
    #[arg(long, value_name = "NAME", default_value = "trellis-trust-bundle")]
    bundle_config_map: String,
    /// Instead of the ConfigMap: the root's SPKI SHA-256 (64 hex digits, from `trellis ca
    /// status`); sidecars fetch the bundle from the CA and accept it only if it holds that
    /// root, so namespaces need no ConfigMap.
    #[arg(long, value_name = "SHA256", conflicts_with = "bundle_config_map")]
    trust_fingerprint: Option<String>,
}

/// Arguments of `trellis inject serve-webhook`.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to serve HTTPS on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM); its names must include the webhook Service's DNS name.
    /// Re-read when the file changes (a rotated Secret), without a restart.
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// The serving certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    /// Check the flags, print the settings and exit (the TLS files are not read).
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    sidecar: SidecarFlags,
}

fn settings(flags: &SidecarFlags, global: &Global) -> anyhow::Result<Settings> {
    let trust_domain = global
        .connection
        .trust_domain
        .clone()
        .unwrap_or_else(|| "cluster.local".into());
    TrustDomain::new(&trust_domain)
        .map_err(|e| usage(format!("--trust-domain {trust_domain:?}: {e}")))?;
    if flags.image.trim().is_empty() || flags.image.contains(char::is_whitespace) {
        return Err(usage(format!(
            "--image {:?} is not an image reference",
            flags.image
        )));
    }
    if let Some(policy) = &flags.image_pull_policy
        && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
    {
        return Err(usage(format!(
            "--image-pull-policy {policy:?}: expected Always, IfNotPresent or Never"
        )));
    }
    let port_ok = flags
        .ca_service
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(usage(format!(
            "--ca-service {:?}: expected HOST:PORT, e.g. trellis-ca.trellis-system.svc:8443",
            flags.ca_service
        )));
    }
    let trust = match &flags.trust_fingerprint {
        Some(hex) => {
            let hex = hex.trim().to_ascii_lowercase();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(usage(format!(
                    "--trust-fingerprint {hex:?}: expected the root's SHA-256 as 64 hex digits \
                     (`trellis ca status` shows it)"
                )));
            }
            pod::Trust::Fingerprint(hex)
        }
        None => pod::Trust::ConfigMap(flags.bundle_config_map.clone()),
    };
    Ok(Settings {
        image: flags.image.clone(),
        pull_policy: flags.image_pull_policy.clone(),
        ca_address: flags.ca_service.clone(),
        trust_domain,
        trust,
    })
}

/// Runs `trellis inject`.
pub async fn run(args: InjectArgs, global: &Global) -> anyhow::Result<()> {
    match args.command {
        Some(InjectCommand::ServeWebhook(serve)) => serve_webhook(*serve, global).await,
        None => inject_files(args, global),
    }
}

fn inject_files(args: InjectArgs, global: &Global) -> anyhow::Result<()> {
    let settings = settings(&args.sidecar, global)?;
    if args.files.is_empty() {
        return Err(usage(
            "name the manifests to inject: trellis inject -f app.yaml (or -f - for stdin)",
        ));
    }
    let mut docs = Vec::new();
    for file in &args.files {
        let (name, text) = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            ("stdin".to_owned(), text)
        } else {
            let text = std::fs::read_to_string(file)
                .map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
            (file.display().to_string(), text)
        };
        docs.extend(manifest::parse(&text).with_context(|| name.clone())?);
    }
    let mut events = Vec::new();
    for doc in &mut docs {
        manifest::inject(doc, &settings, &mut events)?;
    }
    let out = match global.output {
        Format::Human => manifest::to_yaml(&docs),
        Format::Json => manifest::to_json(docs),
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("cannot write to stdout")?,
    }
    let mut stderr = std::io::stderr().lock();
    for event in &events {
        let _ = match event.skipped {
            None => writeln!(stderr, "{} injected", event.object),
            Some(skip) => writeln!(stderr, "{} skipped: {}", event.object, skip.reason()),
        };
    }
    Ok(())
}

fn tls_config(args: &ServeArgs) -> anyhow::Result<rustls::ServerConfig> {
    let provider = trellis_identity::tls::provider();
    let certificate = tls::ReloadingCert::new(
        args.tls_cert.clone(),
        args.tls_key.clone(),
        provider.clone(),
    )
    .map_err(|e| usage(format!("--tls-cert/--tls-key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certificate));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve_webhook(args: ServeArgs, global: &Global) -> anyhow::Result<()> {
    let settings = settings(&args.sidecar, global)?;
    if args.check_config {
        println!("configuration OK: listen {}; {settings:#?}", args.listen);
        return Ok(());
    }
    let tls = tls_config(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("local address")?;
    eprintln!("trellis inject: webhook listening on https://{addr}");
    serve::serve(
        listener,
        Arc::new(tls),
        Arc::new(settings),
        shutdown_signal(),
    )
    .await;
    eprintln!("trellis inject: webhook stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
