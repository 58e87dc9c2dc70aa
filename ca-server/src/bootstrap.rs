//! Opening the data directory: on first start, create (or import) the root and signing
//! intermediate and write admin credentials; on later starts, load what is stored.
//!
//! Data directory layout (0700):
//! ```text
//! db/                        sled database
//! keys/root-<id>.key.pem     0600, absent if the root was imported without its key
//! keys/intermediate-<id>.key.pem
//! keys/jwt-<kid>.key.pem     0600, JWT-SVID signing keys
//! admin/admin.pem            admin client chain, for the `trellis` CLI
//! admin/admin.key.pem        0600
//! admin/bundle.pem           trust bundle to verify the CA with
//! bundle.pem                 current trust bundle, for sidecars that start from a file
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use trellis_identity::clock::Clock;
use trellis_identity::{SpiffeId, TrustBundle, TrustDomain, WorkloadKey, ca_files, pem};

use crate::config::Config;
use crate::error::CaError;
use crate::issuance::{Credential, Issuance};
use crate::keys::Keys;
use crate::services::Services;
use crate::state::{Core, unix};
use crate::store::{
    AuditRecord, Cause, Change, IntermediateRecord, RootRecord, RootState, Store, StoreError,
};
use trellis_identity::files;
use trellis_identity::profile::{self, SigningCa};
use zeroize::Zeroizing;

/// The path (under the trust domain) of the admin identity created at initialisation.
pub const ADMIN_PATH: &str = trellis_identity::spiffe::reserved::DEFAULT_ADMIN;
/// The CA's own serving identity path.
pub const CA_PATH: &str = trellis_identity::spiffe::reserved::CA;

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn db(&self) -> PathBuf {
        self.0.join("db")
    }
    pub fn keys(&self) -> PathBuf {
        self.0.join("keys")
    }
    pub fn admin(&self) -> PathBuf {
        self.0.join("admin")
    }
    pub fn bundle_pem(&self) -> PathBuf {
        self.0.join(ca_files::BUNDLE)
    }
}

/// An I/O error on the data directory: disk full and read-only named with their fix.
pub(crate) fn io(context: String) -> impl FnOnce(std::io::Error) -> CaError {
    move |e| match Cause::of_io(&e) {
        Cause::DiskFull => CaError::Unavailable(format!(
            "{context}: disk full ({e}); free space on that filesystem"
        )),
        Cause::ReadOnly => CaError::Unavailable(format!(
            "{context}: read-only data directory ({e}); remount it read-write or choose \
             another --data-dir"
        )),
        Cause::Io(_) | Cause::Database { .. } => CaError::Internal(format!("{context}: {e}")),
    }
}

/// Opens the CA in `config.data_dir`, initialising it on first start.
pub(crate) async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Services>, CaError> {
    let dir = DataDir(config.data_dir.clone());
    files::create_private_dir(&dir.0).map_err(io(format!("data directory {}", dir.0.display())))?;
    files::create_private_dir(&dir.keys()).map_err(io("keys directory".into()))?;
    // Read before the database is reached: a CA without its KEK stops here, naming it.
    let kek = crate::keys::key_encryption_key(&config)?;
    let store = crate::store::open_configured(&config.store, &dir.db()).map_err(|e| match e {
        // Says what is wrong with the database and what to do, naming it.
        StoreError::Damaged { .. } | StoreError::Unavailable(_) => {
            CaError::Unavailable(format!("cannot open the database: {e}"))
        }
        _ => CaError::Unavailable(format!(
            "cannot open the database {}: {e}",
            config.store.location(&dir.db())
        )),
    })?;
    let keys = match kek {
        Some(kek) => Keys::Sealed {
            store: store.clone(),
            kek: Arc::new(kek),
            trust_domain: config.trust_domain.as_str().to_owned(),
        },
        None => Keys::Files(dir.keys()),
    };
    // Replicas sharing a database take turns from here to the end of the initialisation,
    // so the first root's, intermediate's and JWT key's sealed keys are stored once.
    let starting = store.start_up_guard().map_err(store_err)?;
    match store.trust_domain().map_err(store_err)? {
        Some(stored) if stored != config.trust_domain.as_str() => {
            return Err(CaError::InvalidArgument(format!(
                "data directory {} belongs to trust domain {stored:?}, but the configuration says {:?}",
                dir.0.display(),
                config.trust_domain.as_str()
            )));
        }
        _ => {}
    }
    let fresh = store.active_intermediate().map_err(store_err)?.is_none();
    if fresh {
        initialise(&config, &*store, &keys, clock.now())?;
    }
    crate::jwt_svid::ensure_active_key(&*store, &keys, unix(clock.now()), !fresh)?;
    drop(starting);
    let ca = Arc::new(load(config, store, keys, clock)?);
    files::write_atomic(
        &dir.bundle_pem(),
        ca.core.bundle().to_pem().as_bytes(),
        0o644,
    )
    .map_err(io("bundle.pem".into()))?;
    if !dir.admin().join(ca_files::ADMIN_CERT).exists() {
        write_admin_credentials(&ca.issuance, &dir.admin()).await?;
    }
    Ok(ca)
}

/// A store failure where no more precise "what was not done" applies (reads, start-up).
pub(crate) fn store_err(e: crate::store::StoreError) -> CaError {
    CaError::Unavailable(format!("certificate store unavailable: {e}"))
}

fn initialise(
    config: &Config,
    store: &dyn Store,
    keys: &Keys,
    now: std::time::SystemTime,
) -> Result<(), CaError> {
    let td = &config.trust_domain;
    let (root_cert, root_key, signer) = match &config.import_dir {
        Some(import) => import_ca(import)?,
        None => {
            let root = profile::new_root(td, now, config.root_ttl)?;
            let root_signer = SigningCa::new(root.cert.clone(), root.key)?;
            let inter = profile::new_intermediate(td, &root_signer, now, config.intermediate_ttl)?;
            let signer = SigningCa::new(inter.cert, inter.key)?;
            let root_key_pem = Zeroizing::new(root_signer.key().serialize_pem());
            (root.cert, Some(root_key_pem), signer)
        }
    };
    let root_id = trellis_identity::bundle::root_id(&root_cert)
        .map_err(|e| CaError::InvalidArgument(format!("root certificate: {e}")))?;
    let root_key_file = match root_key {
        Some(pem) => {
            let name = format!("root-{root_id}.key.pem");
            keys.save(&name, &pem)?;
            Some(name)
        }
        None => None,
    };
    let inter_key_file = format!("intermediate-{}.key.pem", signer.id);
    let inter_key_pem = Zeroizing::new(signer.key().serialize_pem());
    keys.save(&inter_key_file, &inter_key_pem)?;
    let now_unix = unix(now);
    store
        .apply(&Change {
            roots: vec![RootRecord {
                id: root_id.clone(),
                cert_der: root_cert.to_vec(),
                state: RootState::Active,
                added_at: now_unix,
                key_file: root_key_file,
                added_in_bundle_version: 1,
            }],
            intermediate: Some(IntermediateRecord {
                id: signer.id.clone(),
                root_id: root_id.clone(),
                cert_der: signer.cert.to_vec(),
                key_file: inter_key_file,
            }),
            ..Change::default()
        })
        .map_err(store_err)?;
    if let Some(import) = &config.import_dir {
        record_imported_admin(import, td, &root_cert, &root_id, &signer, store, now)?;
    }
    store.set_trust_domain(td.as_str()).map_err(store_err)?;
    store
        .apply(&Change {
            bundle_version: Some(1),
            audit: vec![AuditRecord {
                time: now_unix,
                kind: "ca_initialised".into(),
                spiffe_id: td.id(CA_PATH).map(|i| i.to_string()).unwrap_or_default(),
                serial: String::new(),
                actor: "trellis-ca".into(),
                detail: format!(
                    "root {root_id} {}, intermediate {}",
                    if config.import_dir.is_some() {
                        "imported"
                    } else {
                        "generated"
                    },
                    signer.id
                ),
            }],
            ..Change::default()
        })
        .map_err(store_err)?;
    store.flush_now().map_err(store_err)?;
    tracing::info!(trust_domain = %td, root = %root_id, intermediate = %signer.id, "CA initialised");
    Ok(())
}

/// Reads `root.pem`, `intermediate.pem`, `intermediate.key.pem` and, optionally,
/// `root.key.pem` from an import directory.
fn import_ca(
    dir: &Path,
) -> Result<
    (
        CertificateDer<'static>,
        Option<Zeroizing<String>>,
        SigningCa,
    ),
    CaError,
> {
    let read_cert = |name: &str| -> Result<CertificateDer<'static>, CaError> {
        let path = dir.join(name);
        let text = std::fs::read(&path).map_err(|e| {
            CaError::InvalidArgument(format!("import: cannot read {}: {e}", path.display()))
        })?;
        pem::certs_from_pem(&text)
            .map_err(|e| CaError::InvalidArgument(format!("import: {}: {e}", path.display())))?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::InvalidArgument(format!("import: {} is empty", path.display())))
    };
    let root = read_cert(ca_files::ROOT_CERT)?;
    let intermediate = read_cert(ca_files::INTERMEDIATE_CERT)?;
    let key = load_key(
        &dir.join(ca_files::INTERMEDIATE_KEY),
        "import: intermediate key",
    )
    .map_err(|e| CaError::InvalidArgument(e.to_string()))?;
    let signer = SigningCa::new(intermediate, key)
        .map_err(|e| CaError::InvalidArgument(format!("import: intermediate: {e}")))?;
    let root_key_path = dir.join(ca_files::ROOT_KEY);
    let root_key = if root_key_path.exists() {
        let bytes = Zeroizing::new(
            files::read_secret(&root_key_path)
                .map_err(|e| CaError::InvalidArgument(format!("import: {e}")))?,
        );
        Some(Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned()))
    } else {
        None
    };
    Ok((root, root_key, signer))
}

/// Records the admin certificate `trellis ca init` signed offline (`admin.pem` in the
/// import directory, if there is one): the admin API accepts only admin certificates this
/// CA has recorded, so that a certificate signed with a stolen copy of the intermediate key
/// does not open it.
fn record_imported_admin(
    import: &Path,
    td: &TrustDomain,
    root: &CertificateDer<'static>,
    root_id: &str,
    signer: &SigningCa,
    store: &dyn Store,
    now: std::time::SystemTime,
) -> Result<(), CaError> {
    let path = import.join(ca_files::ADMIN_CERT);
    if !path.exists() {
        return Ok(());
    }
    let refuse = |why: String| {
        CaError::InvalidArgument(format!(
            "import: {}: {why}; use the admin.pem `trellis ca init` wrote with this root, or \
             remove it from the import directory (the CA then writes admin credentials of its \
             own)",
            path.display()
        ))
    };
    let text = std::fs::read(&path).map_err(|e| refuse(e.to_string()))?;
    let chain = pem::certs_from_pem(&text).map_err(|e| refuse(e.to_string()))?;
    let bundle = TrustBundle::new(td.clone(), 1, vec![root.clone()])
        .map_err(|e| CaError::InvalidArgument(format!("import: root.pem: {e}")))?;
    let verified = bundle
        .verify(&chain, now, trellis_identity::bundle::Usage::Client)
        .map_err(|e| refuse(e.to_string()))?;
    if chain.get(1).map(|c| c.as_ref()) != Some(signer.cert.as_ref()) {
        return Err(refuse("it is not signed by intermediate.pem".into()));
    }
    if !verified
        .spiffe_id
        .is_under(td.as_str(), crate::auth::ADMIN_PREFIX)
    {
        return Err(refuse(format!(
            "{} is not an admin identity",
            verified.spiffe_id
        )));
    }
    let info = trellis_identity::CertInfo::parse(&chain[0]).map_err(|e| refuse(e.to_string()))?;
    let record = crate::store::CertRecord {
        serial: verified.serial.clone(),
        spiffe_id: verified.spiffe_id.to_string(),
        dns_names: info.dns_names,
        not_before: unix(info.not_before),
        not_after: unix(info.not_after),
        issued_at: unix(now),
        issued_at_ns: 0,
        root_id: root_id.to_owned(),
        intermediate_id: signer.id.clone(),
        issued_via: "import".into(),
    };
    let serial = trellis_identity::hex::decode(&record.serial).unwrap_or_default();
    let audit = AuditRecord {
        time: unix(now),
        kind: "certificate_imported".into(),
        spiffe_id: record.spiffe_id.clone(),
        serial: record.serial.clone(),
        actor: "trellis-ca".into(),
        detail: "admin certificate made by `trellis ca init`".into(),
    };
    store
        .record_issuance(&record, &chain[0], &serial, None, &[audit])
        .map_err(|e| match e {
            crate::store::RecordError::Store(e) => store_err(e),
            other => refuse(other.to_string()),
        })?;
    tracing::info!(spiffe_id = %record.spiffe_id, serial = %record.serial, "imported admin certificate recorded");
    Ok(())
}

/// Reads a private key of the CA's (0600, refused if readable by others) from `path`.
/// `what` names it in errors ("intermediate key", "root key").
pub(crate) fn load_key(path: &Path, what: &str) -> Result<KeyPair, CaError> {
    let pem = Zeroizing::new(
        files::read_secret(path)
            .map_err(|e| CaError::Unavailable(format!("{what} {}: {e}", path.display())))?,
    );
    KeyPair::from_pem(&String::from_utf8_lossy(&pem))
        .map_err(|e| CaError::Internal(format!("{what} {}: {e}", path.display())))
}

/// The signer for a recorded intermediate, with its key.
pub(crate) fn load_intermediate(
    keys: &Keys,
    record: &crate::store::IntermediateRecord,
) -> Result<SigningCa, CaError> {
    let key = keys.load(&record.key_file, "intermediate key")?;
    let mut signer = SigningCa::new(CertificateDer::from(record.cert_der.clone()), key)?;
    signer.root_id = record.root_id.clone();
    Ok(signer)
}

fn load(
    config: Config,
    store: Arc<dyn Store>,
    keys: Keys,
    clock: Arc<dyn Clock>,
) -> Result<Services, CaError> {
    let inter = store
        .active_intermediate()
        .map_err(store_err)?
        .ok_or_else(|| CaError::Internal("no signing intermediate after initialisation".into()))?;
    if !keys.holds(&inter.key_file)? {
        return Err(CaError::Unavailable(format!(
            "the store's signing intermediate {} has no key {}: {}",
            inter.id,
            inter.key_file,
            match &keys {
                Keys::Files(dir) => format!(
                    "the keys directory {} does not hold it (a data directory restored \
                     without its keys?)",
                    dir.display()
                ),
                Keys::Sealed { .. } => "the database does not hold it sealed".into(),
            }
        )));
    }
    let signer = load_intermediate(&keys, &inter)?;
    let active_jwt = crate::jwt_svid::ensure_active_key(&*store, &keys, unix(clock.now()), true)?;
    let jwt_signer = crate::jwt_svid::load_signer(&keys, &active_jwt)?;
    let bundle = bundle_from_store(&config.trust_domain, &*store)?;
    store.start_counting(unix(clock.now())).map_err(store_err)?;
    Services::new(
        Core::new(config, store, keys, clock, signer, bundle),
        jwt_signer,
    )
}

/// The bundle as stored: every root not retired, in the order they were added (so that
/// activating a root does not change the bundle), every JWT-SVID key not retired, and the
/// bundle in force of every federated trust domain.
pub fn bundle_from_store(td: &TrustDomain, store: &dyn Store) -> Result<TrustBundle, CaError> {
    let mut roots = store.roots().map_err(store_err)?;
    roots.retain(|r| r.state.in_bundle());
    roots.sort_by(|a, b| (a.added_at, &a.id).cmp(&(b.added_at, &b.id)));
    let version = store.bundle_version().map_err(store_err)?;
    let jwt_keys = crate::jwt_svid::bundle_keys(store)?;
    let federated = crate::federation::federated_bundles(store)?;
    TrustBundle::new(
        td.clone(),
        version,
        roots
            .into_iter()
            .map(|r| CertificateDer::from(r.cert_der))
            .collect(),
    )
    .map(|bundle| bundle.with_jwt_keys(jwt_keys).with_federated(federated))
    .map_err(|e| CaError::Internal(format!("stored trust bundle: {e}")))
}

/// Issues an admin client certificate and writes it, its key (0600) and the bundle. A key
/// already in `out` is kept and only the certificate (and the bundle) replaced, each file
/// by an atomic rename: a `trellis` reading the directory while a replica renews it (at a
/// root activation through any replica) finds a key and a certificate that match.
pub(crate) async fn write_admin_credentials(
    issuance: &Issuance,
    out: &Path,
) -> Result<(), CaError> {
    let config = &issuance.core().config;
    let id: SpiffeId = config
        .trust_domain
        .id(ADMIN_PATH)
        .map_err(|e| CaError::Internal(e.to_string()))?;
    let key_path = out.join(ca_files::ADMIN_KEY);
    let kept = std::fs::read_to_string(&key_path)
        .ok()
        .map(Zeroizing::new)
        .and_then(|pem| WorkloadKey::from_pem(&pem).ok());
    let fresh = kept.is_none();
    let key = match kept {
        Some(key) => key,
        None => WorkloadKey::generate().map_err(|e| CaError::Internal(e.to_string()))?,
    };
    let csr = key
        .csr_der(Some(&id))
        .map_err(|e| CaError::Internal(e.to_string()))?;
    let issued = issuance
        .certify(
            &csr,
            Credential::Internal {
                spiffe_id: id,
                lifetime: config.admin_ttl,
                names: Vec::new(),
            },
            None,
        )
        .await?;
    let out_dir = out.to_path_buf();
    let key_pem = Zeroizing::new(key.to_pem());
    let chain_pem = pem::certs_to_pem(&issued.chain);
    let bundle_pem = issued.bundle.to_pem();
    crate::state::off_runtime(move || {
        let out = out_dir.as_path();
        files::create_private_dir(out).map_err(io(format!("{}", out.display())))?;
        if fresh {
            files::write_secret(&out.join(ca_files::ADMIN_KEY), key_pem.as_bytes())
                .map_err(io("admin key".into()))?;
        }
        // The bundle before the certificate: it already holds the certificate's root.
        files::write_atomic(&out.join(ca_files::BUNDLE), bundle_pem.as_bytes(), 0o644)
            .map_err(io("admin bundle".into()))?;
        files::write_atomic(&out.join(ca_files::ADMIN_CERT), chain_pem.as_bytes(), 0o644)
            .map_err(io("admin certificate".into()))
    })
    .await?;
    tracing::info!(dir = %out.display(), spiffe_id = %issued.spiffe_id, serial = %issued.serial, "admin credentials written");
    Ok(())
}
