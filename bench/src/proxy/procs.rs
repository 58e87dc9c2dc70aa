//! The child processes of a run (the CA, sidecars, peer proxies): started with their output
//! in log files, waited on with deadlines, always stopped — on drop, on error, and on
//! SIGINT/SIGTERM to the bench — together with every process they forked (nginx workers).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trellis_e2e::process::{Signal, send_signal};
use trellis_identity::ready::Ready;

/// Pids of the children alive now, for the signal handler.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A running child process; killed (with its descendants) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    stderr_log: PathBuf,
}

impl Proc {
    /// Starts `command` with stdout and stderr in `<dir>/<name>.{stdout,stderr}.log`.
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> anyhow::Result<Self> {
        let stderr_log = dir.join(format!("{name}.stderr.log"));
        let stdout = File::create(dir.join(format!("{name}.stdout.log")))?;
        let stderr = File::create(&stderr_log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        LIVE.lock()
            .expect("the pid list is never poisoned")
            .push(child.id());
        Ok(Self {
            name: name.to_owned(),
            child,
            stderr_log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Waits until the process has written its ready file (`--ready-file`) at `path`;
    /// fails if it exits or `timeout` passes, quoting its stderr.
    pub fn wait_ready(&mut self, path: &Path, timeout: Duration) -> anyhow::Result<Ready> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ready) = Ready::read(path)? {
                return Ok(ready);
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not become ready within {timeout:?}; its stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An error quoting stderr if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.pid();
        let family = descendants(pid);
        // SIGTERM first so nginx's master stops its workers itself; then make sure.
        signal(Signal::TERM, &[pid]);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        signal(Signal::KILL, &family);
        LIVE.lock()
            .expect("the pid list is never poisoned")
            .retain(|p| *p != pid);
    }
}

/// Kills every live child and its descendants (from the signal handler).
pub fn kill_all() {
    let pids = LIVE.lock().expect("the pid list is never poisoned").clone();
    for pid in pids {
        signal(Signal::KILL, &tree(pid));
    }
}

/// Sends `signal` to every process in `pids` (one that is gone already is skipped).
fn signal(signal: Signal, pids: &[u32]) {
    for pid in pids {
        send_signal(*pid, signal);
    }
}

/// The parent pid in a `/proc/<pid>/stat` line (the field after the parenthesised name,
/// which may itself contain spaces and parentheses).
pub fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and every process below it.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    pids.extend(descendants(pid));
    pids
}

/// Every process below `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if let Some(parent) = parent_pid(&stat) {
                parents.push((child, parent));
            }
        }
    }
    let mut found = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parents {
            if parent == p && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// VmRSS in KiB from a `/proc/<pid>/status` text.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of `pid` and all its descendants, in KiB.
pub fn tree_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for p in tree(pid) {
        let status = std::fs::read_to_string(format!("/proc/{p}/status"))
            .with_context(|| format!("reading /proc/{p}/status"))?;
        total += vm_rss_kib(&status).with_context(|| format!("no VmRSS for pid {p}"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parent_pid_past_odd_names() {
        assert_eq!(parent_pid("42 (nginx) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_pid("43 (a b) c) (d) R 9 1"), Some(9));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(vm_rss_kib(status), Some(5120));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn measures_a_real_process_tree_and_stops_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new("sh");
        // A ready file as the Trellis binaries write it: a temp file renamed into place.
        let ready_file = dir.path().join("sh.ready.json");
        cmd.args([
            "-c",
            r#"printf '{"program":"sh","pid":%d,"listeners":{}}' $$ > "$1.tmp" && mv "$1.tmp" "$1"; sleep 30 & sleep 30; wait"#,
            "sh",
        ])
        .arg(&ready_file);
        let mut proc = Proc::spawn("sh", cmd, dir.path()).expect("spawn sh");
        let ready = proc
            .wait_ready(&ready_file, Duration::from_secs(10))
            .expect("started");
        let pid = proc.pid();
        assert_eq!(ready.pid, pid);
        // Both sleeps are children of the shell; /proc shows them a moment after fork.
        let deadline = Instant::now() + Duration::from_secs(10);
        while descendants(pid).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let family = descendants(pid);
        assert_eq!(family.len(), 2, "{family:?}");
        assert!(tree_rss_kib(pid).expect("rss") > 0);
        drop(proc);
        for p in family.iter().chain([&pid]) {
            // SIGKILL is delivered asynchronously: wait (bounded) for the exit to show.
            let stat = || std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Gone, or a zombie awaiting its (dead) parent's reaper.
            let gone = |s: &str| s.is_empty() || s.contains(") Z ");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !gone(&stat()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let last = stat();
            assert!(gone(&last), "{p} still runs: {last}");
        }
    }
}
