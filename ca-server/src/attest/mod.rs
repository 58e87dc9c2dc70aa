//! Workload attestation: proving who a workload is from evidence its platform vouches for,
//! so it needs no hand-made join token. `kubernetes` verifies projected service-account
//! tokens; `jwks` reads the issuer's keys and `refresh` keeps them fresh in the background.

pub mod jwks;
pub mod kubernetes;
pub mod refresh;
