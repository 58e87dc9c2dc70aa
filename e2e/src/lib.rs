//! A harness for end-to-end tests that run the real, built Trellis binaries together on
//! 127.0.0.1: find a binary, start it with its output captured, wait for what it prints,
//! stop it (always, even when a test panics), and retry checks until a deadline instead of
//! sleeping.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.

pub mod bin;
pub mod ca;
pub mod process;
pub mod retry;
pub mod run;

pub use bin::{binary, command};
pub use ca::Ca;
pub use process::Process;
pub use retry::{poll_until, retry_until};
pub use run::{Outcome, run};
