//! Writing files that must never be seen half-written or by other users: keys (0600) and
//! the certificates and bundles beside them (atomic replace).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of files anyone may read (certificates, bundles, ready files).
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes `contents` to `path` atomically (temp file + fsync + rename) with `mode`.
///
/// The temp file has a random name and is created with `O_EXCL` (`create_new`), so a file or
/// symlink planted beside the target can neither be written through nor race the write.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = directory_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random)
        .map_err(|_| std::io::Error::other("system random source failed"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::hex::encode(&random)));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode` at creation; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The directory `path` is in: its parent, or `.` for a bare name like `ctx.toml`, whose
/// parent is the empty path (which cannot be opened to fsync it).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes a private key: owner read/write only (0600).
pub fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic(path, contents, 0o600)
}

/// Creates a directory (and parents) that only the owner may enter (0700).
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Reads a private key file, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "private key {} has mode {:o}; it must be readable by its owner only: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            ),
        ));
    }
    fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_with_the_given_mode_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key.pem");
        write_secret(&path, b"first").expect("write");
        write_secret(&path, b"second").expect("overwrite");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let entries: Vec<_> = fs::read_dir(dir.path()).expect("list").collect();
        assert_eq!(entries.len(), 1, "no temp file left behind");
    }

    #[test]
    fn a_bare_file_name_is_in_the_working_directory() {
        assert_eq!(directory_of(Path::new("ctx.toml")), Path::new("."));
        assert_eq!(directory_of(Path::new("a/ctx.toml")), Path::new("a"));
        assert_eq!(directory_of(Path::new("/ctx.toml")), Path::new("/"));
    }

    #[test]
    fn a_planted_symlink_is_not_written_through() {
        let dir = tempfile::tempdir().expect("dir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").expect("write");
        // The old fixed temp name: a symlink there must not redirect the write.
        std::os::unix::fs::symlink(&victim, dir.path().join(".key.pem.tmp")).expect("symlink");
        write_secret(&dir.path().join("key.pem"), b"secret").expect("write");
        assert_eq!(fs::read(&victim).expect("read"), b"untouched");
    }

    #[test]
    fn world_readable_keys_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"k", 0o644).expect("write");
        let err = read_secret(&path).expect_err("refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
