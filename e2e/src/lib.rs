//! A harness for end-to-end tests that run the real, built Trellis binaries together on
//! 127.0.0.1: find a binary, start it with its output captured, wait for its ready file
//! (`--ready-file`: every listener bound, with their addresses) or for what it prints,
//! stop it (always, even when a test panics), kill and restart it on the same data, mount a
//! small tmpfs to fill up or make read-only, run pods as network namespaces on a bridge, and
//! retry checks until a deadline instead of sleeping.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.
//!
//! A test typically reads:
//! ```text
//! let ca = Ca::start();                                   // real trellis-ca on 127.0.0.1:0
//! let mut cmd = command("trellis-sidecar");               // TRELLIS_* from the caller removed
//! let ready = ready_path(ca.scratch(), "sidecar");
//! cmd.args(["--ca-addr", &ca.addr.to_string()]).arg("--ready-file").arg(&ready);
//! let mut sidecar = Process::spawn("sidecar", cmd, ca.scratch());
//! let admin = sidecar.wait_for_ready(&ready, Duration::from_secs(30)).addr("admin");
//! let mut status = command("trellis");
//! status.args(["ca", "status", "--ca-addr", &ca.addr.to_string()]);
//! let outcome = run(status, Duration::from_secs(60));     // exit code, stdout, stderr
//! ```
//! Every `Process` is killed when dropped, and its stderr is printed if the test failed.

pub mod bin;
pub mod ca;
pub mod http;
pub mod netns;
pub mod pod_sidecar;
pub mod postgres;
pub mod process;
pub mod python;
pub mod retry;
pub mod run;
pub mod tmpfs;

pub use bin::{binary, command, command_with_open_files};
pub use ca::Ca;
pub use netns::{Lan, Netns, Pod};
pub use pod_sidecar::PodSidecar;
pub use postgres::Postgres;
pub use process::{Process, ready_path};
pub use retry::{poll_until, retry_until};
pub use run::{Outcome, run, try_run};
pub use tmpfs::Tmpfs;
