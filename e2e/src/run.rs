//! Running a short-lived command (a CLI invocation) to completion, as a user would, with a
//! deadline so a hang fails the test instead of stalling it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command line, for messages.
    pub command: String,
    /// The exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Asserts exit code 0 and returns self.
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "`{}` failed\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts that the command failed with `code` and printed exactly one line on stderr;
    /// returns that line.
    #[track_caller]
    pub fn failure(&self, code: i32) -> String {
        assert_eq!(
            self.code,
            Some(code),
            "`{}`: expected exit code {code}\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.stdout,
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "`{}`: expected one line on stderr, got:\n{}",
            self.command,
            self.stderr
        );
        lines[0].to_owned()
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}`: stdout is not JSON ({e}):\n{}",
                self.command, self.stdout
            )
        })
    }
}

/// Runs `command` to completion (stdin closed), killing it after `timeout`; panics if it
/// cannot start or does not finish in time.
pub fn run(command: Command, timeout: Duration) -> Outcome {
    try_run(command, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run`], with a failure to start or to finish in time as an error.
pub fn try_run(mut command: Command, timeout: Duration) -> Result<Outcome, String> {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {description}: {e}"))?;
    // Read both pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    // Checked every millisecond, not with `poll_until`'s growing pauses: benches time
    // commands with this, and pauses of 10, 20, 40, 80 and 160 ms would round a 200 ms
    // command up to 310.
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            _ if Instant::now() >= deadline => break None,
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{description} did not finish within {timeout:?}"));
        }
    };
    Ok(Outcome {
        command: description,
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}
