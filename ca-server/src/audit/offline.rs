//! `trellis-ca audit verify --data DIR | --store URL`: verifies the audit log of a data
//! directory (a copy, or that of a stopped CA) or of a PostgreSQL store (running replicas
//! may go on) without asking a CA, e.g. from a backup.

use std::path::{Path, PathBuf};

use trellis_identity::audit_log::{self, ChainedEntry, Tamper, Verified};
use trellis_identity::{TrustBundle, TrustDomain, pem};

use crate::bootstrap::DataDir;
use crate::store::{Store, StoreConfig};

/// What verification found: the trust domain's log verified, or the first problem.
pub type Outcome = Result<Verified, Tamper>;

/// Entries read per batch.
const PAGE: usize = 10_000;

/// Why the log could not be verified at all (as opposed to a finding).
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(
        "cannot open the database in {dir}: {detail} (if trellis-ca is running on it, verify \
         a copy of the data directory, or use `trellis audit verify` against the running CA)"
    )]
    Open { dir: PathBuf, detail: String },
    #[error("cannot open {store}: {detail}")]
    OpenStore { store: String, detail: String },
    #[error("{0}")]
    Read(String),
    #[error("--anchors {path}: {detail}")]
    Anchors { path: PathBuf, detail: String },
}

/// Verifies the audit log in `data_dir`. Checkpoints must chain to `anchors` (PEM roots) if
/// given, else to the roots the data directory records (weaker: whoever can write the
/// store could add a root; see SECURITY.md).
pub async fn verify(
    data_dir: &Path,
    anchors: Option<&Path>,
) -> Result<(String, Outcome), OfflineError> {
    let dir = DataDir(data_dir.to_owned());
    let store = crate::store::open(&dir.db()).map_err(|e| OfflineError::Open {
        dir: dir.db(),
        detail: e.to_string(),
    })?;
    verify_in(&*store, &data_dir.display().to_string(), anchors)
}

/// Like [`verify`], for the log of a PostgreSQL store. The CA replicas writing to it need
/// not stop: what they append while it reads is verified as entries after the last
/// checkpoint read.
pub async fn verify_store(
    config: &StoreConfig,
    anchors: Option<&Path>,
) -> Result<(String, Outcome), OfflineError> {
    let location = config.location(Path::new("the data directory"));
    let store = crate::store::open_configured(config, Path::new(".")).map_err(|e| {
        OfflineError::OpenStore {
            store: location.clone(),
            detail: e.to_string(),
        }
    })?;
    verify_in(&*store, &location, anchors)
}

fn verify_in(
    store: &dyn Store,
    location: &str,
    anchors: Option<&Path>,
) -> Result<(String, Outcome), OfflineError> {
    let read = |e: crate::store::StoreError| OfflineError::Read(e.to_string());
    let trust_domain = store
        .trust_domain()
        .map_err(read)?
        .ok_or_else(|| OfflineError::Read(format!("{location} holds no CA")))?;
    let roots = match anchors {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| OfflineError::Anchors {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
            pem::certs_from_pem(&text).map_err(|e| OfflineError::Anchors {
                path: path.to_owned(),
                detail: e.to_string(),
            })?
        }
        None => store
            .roots()
            .map_err(read)?
            .into_iter()
            .map(|r| r.cert_der.into())
            .collect(),
    };
    let td = TrustDomain::new(&trust_domain).map_err(|e| OfflineError::Read(e.to_string()))?;
    let anchors = TrustBundle::new(td, 0, roots).map_err(|e| OfflineError::Anchors {
        path: anchors.map(Path::to_owned).unwrap_or_default(),
        detail: e.to_string(),
    })?;
    let checkpoints = store.audit_checkpoints_after(0, usize::MAX).map_err(read)?;
    let mut entries: Vec<Result<ChainedEntry, (u64, String)>> = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_raw_after(after, PAGE).map_err(read)?;
        let Some(&(last, _)) = page.last() else { break };
        after = last;
        entries.extend(page.into_iter().map(|(sequence, value)| {
            ChainedEntry::decode(sequence, &value)
                .ok_or((sequence, "shorter than its two hashes".to_owned()))
        }));
    }
    let result = audit_log::verify(&trust_domain, entries, &checkpoints, &anchors);
    Ok((trust_domain, result))
}
