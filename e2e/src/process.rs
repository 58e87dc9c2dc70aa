//! A long-running child process (a CA, a sidecar, a demo app) whose stderr is kept in a
//! log file and can be waited on line by line, and which is always stopped on drop.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trellis_identity::ready::Ready;

use crate::retry::poll_until;

/// A running child. Dropping it kills the child (and prints its stderr if the test is
/// failing, so the reason is in the test output).
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stderr_log: PathBuf,
    stdout_log: PathBuf,
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

pub use rustix::process::Signal;

/// Sends `signal` to process `pid` (std has no signal API; rustix sends it without unsafe
/// code). False if the process does not exist or may not be signalled.
pub fn send_signal(pid: u32, signal: Signal) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|pid| rustix::process::kill_process(pid, signal).is_ok())
}

/// The ready file (`--ready-file`) of process `name` in `log_dir`, removed if an earlier
/// start left one, so that [`Process::wait_for_ready`] reads this start's.
pub fn ready_path(log_dir: &Path, name: &str) -> PathBuf {
    let path = log_dir.join(format!("{name}.ready.json"));
    let _ = std::fs::remove_file(&path);
    path
}

impl Process {
    /// Starts `command`; stdout goes to `<log_dir>/<name>.stdout.log`, stderr to
    /// `<log_dir>/<name>.stderr.log` and to [`Process::wait_for_line`].
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Self {
        let stdout_log = log_dir.join(format!("{name}.stdout.log"));
        let stderr_log = log_dir.join(format!("{name}.stderr.log"));
        let stdout = File::create(&stdout_log).expect("create stdout log");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut log = File::create(&stderr_log).expect("create stderr log");
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                // The receiver may be gone (nobody waits any more); keep logging anyway.
                let _ = tx.send(line);
            }
        });
        Self {
            name: name.to_owned(),
            child,
            stderr_log,
            stdout_log,
            lines,
            reader: Some(reader),
            exited: None,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Everything the process has written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_log).unwrap_or_default()
    }

    /// Waits for the next stderr line that `matches`, skipping others. Panics (with the
    /// log) if the process exits first or `timeout` passes.
    pub fn wait_for_line(&mut self, timeout: Duration, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: expected line not printed within {timeout:?}; stderr so far:\n{}",
                    self.name,
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "{} exited ({status:?}) before printing the expected line; stderr:\n{}",
                        self.name,
                        self.stderr()
                    )
                }
            }
        }
    }

    /// Waits until the process has written its ready file at `path` (`--ready-file`) and
    /// returns it. Panics (with the log) if the process exits first or `timeout` passes.
    pub fn wait_for_ready(&mut self, path: &Path, timeout: Duration) -> Ready {
        // An exit ends the wait at once (`Ok(Err)`); a missing file is waited for.
        let waited = poll_until(timeout, || {
            if !self.is_running() {
                return Ok(Err(format!("exited ({:?})", self.exited)));
            }
            match Ready::read(path) {
                Ok(Some(ready)) => Ok(Ok(ready)),
                Ok(None) => Err(format!("no {}", path.display())),
                Err(e) => Err(e.to_string()),
            }
        });
        match waited {
            Ok(Ok(ready)) => ready,
            Ok(Err(why)) | Err(why) => panic!(
                "{}: not ready within {timeout:?} ({why}); stderr so far:\n{}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for a graceful exit; kills it after that.
    /// Returns the exit status (a signal death if it had to be killed).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let sent = send_signal(self.id(), Signal::TERM);
        let graceful = if sent {
            poll_until(timeout, || match self.child.try_wait() {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err("still running".to_owned()),
                Err(e) => Err(e.to_string()),
            })
            .ok()
        } else {
            None
        };
        let status = match graceful {
            Some(status) => status,
            None => self.kill(),
        };
        self.finish_reader();
        self.exited = Some(status);
        status
    }

    /// Kills the child at once and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("reap killed child");
        self.finish_reader();
        self.exited = Some(status);
        status
    }

    fn finish_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} stderr ({}) ---\n{}",
                self.name,
                self.stderr_log.display(),
                self.stderr()
            );
        }
    }
}
