//! `trellis inject -f`: add the Trellis sidecar to Kubernetes manifests offline
//! (`trellis inject -f app.yaml | kubectl apply -f -`). The planner is `trellis-inject`'s,
//! the same the `trellis-injector` admission webhook runs, so a pod gets the same patch
//! either way.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use trellis_inject::{SidecarFlags, manifest};

use crate::Global;
use crate::error::usage;
use crate::output::Format;

/// Arguments of `trellis inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifest to inject (YAML or JSON, several documents allowed); `-` reads stdin.
    /// Repeatable. The result goes to stdout; a summary to stderr.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    sidecar: SidecarFlags,
}

/// Runs `trellis inject`.
pub fn run(args: InjectArgs, global: &Global) -> anyhow::Result<()> {
    let settings = args
        .sidecar
        .settings(global.connection.trust_domain.as_deref())
        .map_err(|e| usage(e.to_string()))?;
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
