//! `trellis-ca`: the Trellis certificate authority, as a library so tests and benchmarks
//! drive the real server in-process. `main.rs` is only flag parsing and signal handling.
//!
//! Flow of a request: `server` (TLS accept, tonic) → `api` (protobuf adapters, with
//! `auth` for the admin check) → a service (`issuance`, `tokens`, `roots`, `revocation`,
//! `federation`, `jwt_svid`, …, wired in `services` over the shared core in `state`) →
//! `trellis_identity::profile` (signing) and `store` (durable records, group commit).

mod acks;
pub(crate) mod api;
pub mod attest;
pub mod audit;
pub(crate) mod auth;
pub(crate) mod bootstrap;
pub(crate) mod bundle_endpoint;
pub mod config;
pub(crate) mod connections;
pub(crate) mod crl;
pub mod csr;
pub(crate) mod error;
pub(crate) mod federation;
pub(crate) mod first_request;
mod follow;
mod grantable;
pub(crate) mod http;
mod https_get;
pub(crate) mod issuance;
pub(crate) mod jwt_svid;
pub mod keys;
pub mod limits;
mod metrics;
pub(crate) mod peer;
pub(crate) mod recent;
pub mod retention;
pub(crate) mod revocation;
pub(crate) mod roots;
pub(crate) mod server;
mod services;
mod serving;
pub(crate) mod state;
pub mod store;
pub(crate) mod tokens;

pub use config::Config;
pub use error::CaError;
pub use server::{RunningCa, start, start_with_clock};
