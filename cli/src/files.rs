//! Writing credentials: atomically (never half-written), private keys 0600, and never over
//! something that is already there unless asked.
//!
//! File names are fixed constants chosen by the CLI; only the directory comes from the
//! user, so no name can climb out of it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::usage;

/// Mode of private key files: owner read/write only.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of certificates and bundles: public, readable by all.
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes `contents` to `path` atomically with `mode`, through the one atomic writer
/// ([`trellis_identity::files::write_atomic`]); the error names the file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    trellis_identity::files::write_atomic(path, contents, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a private key, readable by its owner only.
pub fn write_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, contents, SECRET_MODE)
}

/// Creates `dir` (and parents) if missing, owner-only when this call creates it. Fails if
/// `dir` exists but is not a directory.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(usage(format!(
            "{} exists and is not a directory; choose another output directory",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot set permissions of {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot use directory {}", dir.display())),
    }
}

/// Fails with a usage error if `dir` exists and has anything in it.
pub fn require_empty_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(usage(format!(
                    "{} is not empty; refusing to overwrite existing files (choose a new directory)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(usage(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
        Err(e) => Err(e).with_context(|| format!("cannot read directory {}", dir.display())),
    }
}

/// Fails with a usage error naming every one of `names` that already exists in `dir`
/// (as a file, directory or dangling symlink).
pub fn refuse_existing(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    let existing: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
    Err(usage(format!(
        "{} already {}; refusing to overwrite (use --force, or another --out directory)",
        list.join(", "),
        if list.len() == 1 { "exists" } else { "exist" }
    )))
}

/// Reads a private key file, refusing one that group or others can read (as ssh does).
pub fn read_secret(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|e| {
        usage(format!(
            "cannot read {what} {}: {e}; run `trellis login --ca-addr ADDR --admin-dir DIR` or pass --admin-key",
            path.display()
        ))
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(usage(format!(
            "{what} {} has mode {mode:o}; it must be readable by its owner only: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("svid_key.pem");
        write_secret(&key, b"secret").expect("written");
        assert_eq!(fs::read(&key).expect("read"), b"secret");
        assert_eq!(mode(&key), 0o600);
        let cert = dir.path().join("svid.pem");
        write_atomic(&cert, b"cert", PUBLIC_MODE).expect("written");
        assert_eq!(mode(&cert), 0o644);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn refuses_existing_files_and_non_empty_dirs() {
        let dir = tempfile::tempdir().expect("temp dir");
        require_empty_dir(dir.path()).expect("empty is fine");
        require_empty_dir(&dir.path().join("missing")).expect("missing is fine");
        refuse_existing(dir.path(), &["a.pem", "b.pem"]).expect("nothing there");
        fs::write(dir.path().join("b.pem"), b"x").expect("write");
        let err = refuse_existing(dir.path(), &["a.pem", "b.pem"]).expect_err("b exists");
        assert!(err.to_string().contains("b.pem"), "{err}");
        assert!(!err.to_string().contains("a.pem"), "{err}");
        require_empty_dir(dir.path()).expect_err("not empty");
        ensure_dir(&dir.path().join("b.pem")).expect_err("a file is not a directory");
        let created = dir.path().join("new/out");
        ensure_dir(&created).expect("created");
        assert_eq!(mode(&created), 0o700);
    }

    #[test]
    fn secrets_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("k.pem");
        write_atomic(&key, b"k", 0o644).expect("written");
        let err = read_secret(&key, "admin key").expect_err("too open");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_secret(&key, "admin key").expect("ok"), b"k");
    }
}
