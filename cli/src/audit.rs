//! `trellis audit verify`: checks the CA's audit log end to end. Every entry's hash and its
//! link to the one before are recomputed, and every checkpoint the CA signed is checked
//! against the chain and against trust anchors, so an entry edited, deleted, reordered or a
//! tail truncated behind a checkpoint is found and named.

use std::path::PathBuf;

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tonic::transport::Channel;
use trellis_identity::audit_log::{self, ChainedEntry, Checkpoint, Verified};
use trellis_identity::{TrustBundle, pem};
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_proto::admin::v1::{
    GetStatusRequest, ListAuditCheckpointsRequest, ListAuditEventsRequest, ListRootsRequest,
};

use crate::Global;
use crate::client::Target;
use crate::context;
use crate::error::usage;
use crate::output::{self, Report, Style, Tone};
use crate::timefmt;

/// Entries and checkpoints fetched per call.
const PAGE: u32 = 1000;

/// `trellis audit ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the audit log's hash chain and signed checkpoints. Exit 0: intact; 1: the
    /// log was tampered with (the first bad entry is named) or could not be read.
    Verify(VerifyArgs),
}

/// Arguments of `trellis audit verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Trust only these roots (PEM) for checkpoint signatures. Without it: the CLI's trust
    /// bundle and every root the CA reports, retired ones included. An auditor who keeps
    /// the roots independently should pass them, so that a root planted in the CA's store
    /// cannot vouch for forged checkpoints.
    #[arg(long, value_name = "FILE")]
    anchors: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    intact: bool,
    trust_domain: String,
    first_entry: u64,
    last_entry: u64,
    entries: u64,
    checkpoints: u64,
    last_checkpoint_entry: Option<u64>,
    last_checkpoint_time: Option<String>,
    entries_after_last_checkpoint: u64,
    /// The finding, when not intact.
    problem: Option<String>,
    problem_entry: Option<u64>,
}

impl Report for VerifyReport {
    fn human(&self, style: Style) -> String {
        if let Some(problem) = &self.problem {
            return format!(
                "{} audit log of {} is NOT intact: {problem}\n",
                style.paint(Tone::Bad, "✘"),
                self.trust_domain
            );
        }
        let mut text = format!(
            "{} audit log of {} intact: {} entries ({}..{}), {} signed checkpoints\n",
            style.paint(Tone::Good, "✔"),
            self.trust_domain,
            self.entries,
            self.first_entry,
            self.last_entry,
            self.checkpoints
        );
        match (&self.last_checkpoint_entry, &self.last_checkpoint_time) {
            (Some(entry), Some(time)) => text.push_str(&format!(
                "  last checkpoint at entry {entry} ({time}); {} entries after it are \
                 chained but not yet signed\n",
                self.entries_after_last_checkpoint
            )),
            _ => text.push_str(
                "  no checkpoint signed yet: entries are chained but a rewrite of the whole \
                 log would not be detected\n",
            ),
        }
        text
    }
}

impl VerifyReport {
    pub fn new(trust_domain: &str, result: Result<Verified, audit_log::Tamper>) -> Self {
        let mut report = Self {
            intact: result.is_ok(),
            trust_domain: trust_domain.to_owned(),
            first_entry: 0,
            last_entry: 0,
            entries: 0,
            checkpoints: 0,
            last_checkpoint_entry: None,
            last_checkpoint_time: None,
            entries_after_last_checkpoint: 0,
            problem: None,
            problem_entry: None,
        };
        match result {
            Ok(v) => {
                report.first_entry = v.first;
                report.last_entry = v.last;
                report.entries = v.entries;
                report.checkpoints = v.checkpoints;
                report.last_checkpoint_entry = v.last_checkpoint.map(|c| c.0);
                report.last_checkpoint_time = v.last_checkpoint.map(|c| {
                    timefmt::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.1))
                });
                report.entries_after_last_checkpoint = v.unsigned_tail;
            }
            Err(tamper) => {
                report.problem_entry = Some(tamper.sequence());
                report.problem = Some(tamper.to_string());
            }
        }
        report
    }
}

/// Runs `trellis audit ...`.
pub async fn run(command: AuditCommand, global: &Global) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(args) => verify(args, global).await,
    }
}

async fn verify(args: VerifyArgs, global: &Global) -> anyhow::Result<()> {
    let target = Target::load(&context::resolve(&global.connection)?)?;
    let explicit = match &args.anchors {
        Some(path) => {
            let text = std::fs::read(path)
                .map_err(|e| usage(format!("--anchors {}: {e}", path.display())))?;
            Some(
                pem::certs_from_pem(&text)
                    .map_err(|e| usage(format!("--anchors {}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let mut admin = target.admin().await?;
    let result = verify_log(&target, &mut admin, explicit).await?;
    let report = VerifyReport::new(target.trust_domain.as_str(), result);
    output::emit(global.output, &report)?;
    match report.problem_entry {
        // The report (stdout) says what is wrong; stderr and the exit code tell scripts.
        Some(entry) => Err(anyhow::anyhow!(
            "the audit log is not intact (first finding at entry {entry})"
        )),
        None => Ok(()),
    }
}

/// Reads the whole audit log and its checkpoints over the admin API and verifies them,
/// against `anchors` if given, else the CLI's trust bundle and every root the CA reports.
/// `Err` only when the log could not be read; a tampered log is `Ok(Err(..))`.
pub async fn verify_log(
    target: &Target,
    admin: &mut AdminClient<Channel>,
    anchors: Option<Vec<CertificateDer<'static>>>,
) -> anyhow::Result<Result<Verified, audit_log::Tamper>> {
    let trust_domain = target.trust_domain.clone();
    let roots = match anchors {
        Some(roots) => roots,
        None => {
            let mut roots = target.bundle.roots().to_vec();
            let listed = target
                .call("the roots", admin.list_roots(ListRootsRequest {}))
                .await?;
            let status = target
                .call("the status", admin.get_status(GetStatusRequest {}))
                .await?;
            let bundled = status
                .bundle
                .map(|b| b.root_certificates_der)
                .unwrap_or_default();
            for der in listed
                .roots
                .into_iter()
                .map(|r| r.certificate)
                .chain(bundled)
            {
                if !der.is_empty() && !roots.iter().any(|r| r.as_ref() == der.as_slice()) {
                    roots.push(der.into());
                }
            }
            roots
        }
    };
    let anchors = TrustBundle::new(trust_domain.clone(), 0, roots)
        .map_err(|e| usage(format!("trust anchors for checkpoints: {e}")))?;
    let mut checkpoints = Vec::new();
    let mut after = 0;
    loop {
        let page = target
            .call(
                "the audit checkpoints",
                admin.list_audit_checkpoints(ListAuditCheckpointsRequest {
                    after_sequence: after,
                    limit: PAGE,
                }),
            )
            .await?
            .checkpoints;
        let Some(last) = page.last() else { break };
        after = last.sequence;
        for c in page {
            checkpoints.push(Checkpoint {
                head: c.head.as_slice().try_into().unwrap_or([0; 32]),
                trust_domain: c.trust_domain,
                sequence: c.sequence,
                time: c.time,
                signer: c.signer,
                signature: c.signature,
            });
        }
    }
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = target
            .call(
                "the audit log",
                admin.list_audit_events(ListAuditEventsRequest {
                    after_sequence: after,
                    limit: PAGE,
                }),
            )
            .await?
            .events;
        let Some(last) = page.last() else { break };
        after = last.sequence;
        for e in page {
            entries.push(
                match (
                    <[u8; 32]>::try_from(e.prev_hash.as_slice()),
                    <[u8; 32]>::try_from(e.hash.as_slice()),
                ) {
                    (Ok(prev), Ok(hash)) => Ok(ChainedEntry {
                        sequence: e.sequence,
                        prev,
                        hash,
                        body: e.body,
                    }),
                    _ => Err((
                        e.sequence,
                        "the CA sent it without its hashes (a CA older than the hash chain?)"
                            .to_owned(),
                    )),
                },
            );
        }
    }
    Ok(audit_log::verify(
        trust_domain.as_str(),
        entries,
        &checkpoints,
        &anchors,
    ))
}
