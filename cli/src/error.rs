//! How failures leave the CLI: one line on stderr and an exit code that tells a script
//! whether the operation failed (1) or the command line / configuration was wrong (2).

use std::fmt;

/// Exit code for an operation that was attempted and failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for a usage or configuration problem: nothing was attempted.
pub const EXIT_USAGE: u8 = 2;

/// A problem with the command line or configuration (exit code 2). The message says what
/// is wrong and how to fix it.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Builds a usage/configuration error.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// A command that ran and chose its exit code (`trellis check`); the message is a summary,
/// the details are already on stdout.
#[derive(Debug)]
pub struct ExitWith {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for ExitWith {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitWith {}

/// Ends the command with `code` and a one-line summary.
pub fn exit_with(code: u8, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(ExitWith {
        code,
        message: message.into(),
    })
}

/// The exit code for an error: the one an [`ExitWith`] chose, 2 if anything in its chain
/// is a [`UsageError`], else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(exit) = e.downcast_ref::<ExitWith>() {
        return exit.code;
    }
    if e.chain().any(|cause| cause.is::<UsageError>()) {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    }
}

/// The error and its causes on one line, so scripts and people see a single message.
pub fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_exit_2_even_with_context() {
        let e: anyhow::Result<()> = Err(usage("bad flag"));
        let e = e.context("while reading settings").unwrap_err();
        assert_eq!(exit_code(&e), EXIT_USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("refused")), EXIT_FAILED);
    }

    #[test]
    fn messages_are_one_line() {
        let e = anyhow::anyhow!("first\nsecond  line").context("outer");
        assert_eq!(one_line(&e), "outer: first second line");
    }
}
