//! Optional files for apps that terminate TLS themselves: `svid.pem` (chain), `svid_key.pem`
//! (0600) and `bundle.pem`, each replaced atomically on every change.

use std::path::Path;

use trellis_identity::{WorkloadKey, files, pem};

use crate::credentials::Credentials;

/// Writes the current certificate, its key and the bundle into `dir`. The key is written
/// first so that a reader never sees a certificate whose key is not yet on disk.
pub fn write(dir: &Path, creds: &Credentials, key: &WorkloadKey) -> std::io::Result<()> {
    // A directory the operator made keeps its mode (`svid_dir = "/tmp"` must not turn /tmp
    // into 0700); one we make is private. The key file itself is always 0600.
    if !dir.is_dir() {
        files::create_private_dir(dir)?;
    }
    files::write_secret(&dir.join("svid_key.pem"), key.to_pem().as_bytes())?;
    files::write_atomic(
        &dir.join("svid.pem"),
        pem::certs_to_pem(&creds.identity.chain).as_bytes(),
        0o644,
    )?;
    files::write_atomic(
        &dir.join("bundle.pem"),
        creds.bundle.to_pem().as_bytes(),
        0o644,
    )
}

/// Rewrites only the bundle (a bundle change without a new certificate).
pub fn write_bundle(dir: &Path, creds: &Credentials) -> std::io::Result<()> {
    files::write_atomic(
        &dir.join("bundle.pem"),
        creds.bundle.to_pem().as_bytes(),
        0o644,
    )
}
