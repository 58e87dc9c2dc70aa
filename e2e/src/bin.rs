//! Finding the workspace's built binaries from inside a test executable.

use std::path::PathBuf;
use std::process::Command;

/// The path of the built workspace binary `name` (e.g. `trellis-ca`), in the same target
/// directory and profile as the running test.
///
/// Panics, saying how to fix it, if the binary has not been built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    // Test executables live in target/<profile>/deps/, binaries (the bench, which uses this
    // harness too) in target/<profile>/.
    let dir = exe.parent().expect("the executable is in a directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("deps is inside target/<profile>")
    } else {
        dir
    };
    let path = profile_dir.join(name);
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo build --workspace --bins` first (in the same profile as the tests)",
            path.display()
        );
    }
    path
}

/// A command for workspace binary `name` with every inherited `TRELLIS_*` variable removed,
/// so the developer's own settings never leak into a test.
pub fn command(name: &str) -> Command {
    without_trellis_vars(Command::new(binary(name)))
}

/// Like [`command`], run through `prlimit` with soft and hard open-file limits of
/// `open_files`, so the binary cannot raise them (util-linux's `prlimit` execs it, so
/// signals reach the binary itself).
pub fn command_with_open_files(name: &str, open_files: u64) -> Command {
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--nofile={open_files}:{open_files}"))
        .arg("--")
        .arg(binary(name));
    without_trellis_vars(command)
}

fn without_trellis_vars(mut command: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRELLIS_") {
            command.env_remove(&key);
        }
    }
    command
}
