//! Why the database cannot write, in words an operator can act on.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// What made the database stop accepting writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// ENOSPC or EDQUOT: the filesystem (or the user's quota) is full.
    DiskFull,
    /// EROFS: the filesystem was mounted, or fell back to, read-only.
    ReadOnly,
    /// Anything else the operating system reported (EIO, a permission change, ...).
    Io(String),
    /// A networked database (named `USER@HOST:PORT/DATABASE`, never with its password)
    /// refused or lost the connection.
    Database { name: String, error: String },
}

impl Cause {
    /// Classifies an I/O error by its kind.
    pub fn of_io(e: &std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Cause::DiskFull,
            ErrorKind::ReadOnlyFilesystem => Cause::ReadOnly,
            _ => Cause::Io(e.to_string()),
        }
    }
}

/// A write failure of the database in `dir` (empty for a networked one, which its
/// [`Cause::Database`] names), with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub cause: Cause,
    pub dir: PathBuf,
}

impl Failure {
    pub fn new(cause: Cause, dir: &Path) -> Self {
        Self {
            cause,
            dir: dir.to_path_buf(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.dir.display();
        match &self.cause {
            Cause::DiskFull => write!(
                f,
                "disk full: no space left for the database in {dir}; free space on that \
                 filesystem (a running CA resumes by itself)"
            ),
            Cause::ReadOnly => write!(
                f,
                "read-only data directory: the database in {dir} is on a read-only filesystem; \
                 remount it read-write (a running CA resumes by itself)"
            ),
            Cause::Io(e) => write!(
                f,
                "I/O error writing the database in {dir} ({e}); fix the storage (a running CA \
                 retries by itself)"
            ),
            Cause::Database { name, error } => write!(
                f,
                "PostgreSQL database {name} unreachable ({error}); make it reachable (a \
                 running CA reconnects by itself)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_read_only_are_named_with_their_fix() {
        let full = std::io::Error::from(ErrorKind::StorageFull);
        let ro = std::io::Error::from(ErrorKind::ReadOnlyFilesystem);
        assert_eq!(Cause::of_io(&full), Cause::DiskFull);
        assert_eq!(Cause::of_io(&ro), Cause::ReadOnly);
        let dir = Path::new("/data/db");
        let text = Failure::new(Cause::DiskFull, dir).to_string();
        assert!(
            text.starts_with("disk full") && text.contains("free space"),
            "{text}"
        );
        let text = Failure::new(Cause::ReadOnly, dir).to_string();
        assert!(
            text.contains("read-only") && text.contains("remount"),
            "{text}"
        );
    }
}
