//! The file names both sides of a CA's set-up agree on: what `trellis ca init` writes and
//! `trellis-ca --import-dir` reads, and the admin credentials the CA writes to
//! `<data>/admin/` and `trellis login` reads. One list, so the two cannot drift apart.

use std::time::Duration;

/// The root certificate (PEM).
pub const ROOT_CERT: &str = "root.pem";
/// The root's private key (PEM, 0600); moved offline after an import.
pub const ROOT_KEY: &str = "root.key.pem";
/// The signing intermediate's certificate (PEM).
pub const INTERMEDIATE_CERT: &str = "intermediate.pem";
/// The signing intermediate's private key (PEM, 0600).
pub const INTERMEDIATE_KEY: &str = "intermediate.key.pem";
/// An admin client chain: leaf, then intermediate (PEM).
pub const ADMIN_CERT: &str = "admin.pem";
/// The admin client's private key (PEM, 0600).
pub const ADMIN_KEY: &str = "admin.key.pem";
/// The trust bundle (PEM roots) to verify the CA with.
pub const BUNDLE: &str = "bundle.pem";

/// How long an admin certificate lasts, unless the CA's `admin_ttl` says otherwise.
pub const ADMIN_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
