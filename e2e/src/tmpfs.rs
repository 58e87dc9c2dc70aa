//! A small tmpfs that a test mounts (as root) to fill up or make read-only under a real
//! process, and that is always unmounted again, even when the test panics.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted (and its mount point removed) when dropped. Drop every
/// process using it first (declare the `Tmpfs` before them, so it is dropped after).
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. "16m").
    ///
    /// Panics with the reason if it cannot: these tests need root (or CAP_SYS_ADMIN) and
    /// must fail loudly, not pass without having tested anything.
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount(8): {e}"));
        if !out.status.success() {
            panic!(
                "this test mounts a tmpfs to simulate a full or read-only disk, and mounting \
                 failed: {}. Run it as root (or with CAP_SYS_ADMIN), e.g. in the CI container",
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .trim_end_matches('.')
            );
        }
        Self { dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `mount -o remount,OPTIONS`; the error is mount's message (e.g. "busy" when a process
    /// holds a file open for writing and `ro` is asked).
    pub fn remount(&self, options: &str) -> Result<(), String> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .output()
            .map_err(|e| format!("cannot run mount(8): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Fills the filesystem with one file until the kernel says ENOSPC; returns its path
    /// (remove it to give the space back).
    pub fn fill(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        let mut file = File::create(&path).expect("create filler file");
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last partial pages too, a byte at a time.
        while file.write(&[0]).is_ok_and(|n| n == 1) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still has a file open there; detach it so nothing is left mounted.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}
