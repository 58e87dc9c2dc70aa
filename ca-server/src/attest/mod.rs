//! Workload attestation: proving who a workload is from evidence its platform vouches for,
//! so it needs no hand-made join token. `kubernetes` verifies projected service-account
//! tokens; `jwt` and `jwks` are the token and key-set machinery it needs.

pub mod jwks;
pub mod jwt;
pub mod kubernetes;
