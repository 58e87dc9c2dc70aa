//! What every server socket of both binaries shares, so that an unauthenticated peer cannot
//! take the process's descriptors: a connection budget per listener (in total and per
//! source address), an accept loop that survives `EMFILE`, and an HTTP/1 server with a
//! header timeout. One implementation for the CA (gRPC, HTTP) and the sidecar (admin).
//!
//! - [`ConnBudget`] (`budget.rs`): at most N open connections, at most M per source address
//!   (IPv6 per /64); a connection over either is closed at once and counted.
//! - [`accept`] (`accept.rs`): `accept` with a short back-off after a failure, logged at
//!   most once per interval.
//! - [`serve_http1`] (`http1.rs`): HTTP/1.1 on a budget, with a header read timeout that
//!   also closes connections that never send a request or sit idle between requests.

mod accept;
mod budget;
mod http1;
mod throttled_log;

pub use accept::{ACCEPT_BACKOFF, accept};
pub use budget::{ConnBudget, ConnPermit, source_key};
pub use http1::{Http1Settings, HttpService, ResponseBody, serve_http1, serve_https1};
pub use throttled_log::ThrottledLog;
