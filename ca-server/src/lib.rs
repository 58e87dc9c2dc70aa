//! `trellis-ca`: the Trellis certificate authority, as a library so tests and benchmarks
//! drive the real server in-process. `main.rs` is only flag parsing and signal handling.
//!
//! Flow of a request: `server` (TLS accept, tonic) → `api` (protobuf adapters, with
//! `auth` for the admin check) → `issuance` / `tokens` (decisions) → `trellis_identity::profile` (signing)
//! and `store` (durable records, group commit).

pub mod api;
pub mod attest;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod bundle_endpoint;
pub mod config;
pub mod connections;
pub mod crl;
pub mod csr;
pub mod error;
pub mod federation;
pub mod first_request;
mod grantable;
pub mod http;
mod https_get;
pub mod issuance;
pub mod jwt_svid;
pub mod limits;
mod metrics;
pub mod peer;
pub mod retention;
pub mod revocation;
pub mod roots;
pub mod server;
pub mod state;
pub mod store;
pub mod tokens;

pub use config::Config;
pub use error::CaError;
pub use server::{RunningCa, start, start_with_clock};
