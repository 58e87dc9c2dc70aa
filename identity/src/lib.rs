//! Identity primitives shared by every Trellis part: SPIFFE IDs, the X.509-SVID profile,
//! trust bundles, PEM helpers, workload keys and CSRs, and rustls configs that verify peers
//! by SPIFFE ID.
//!
//! Architecture invariant: this crate knows nothing of gRPC, sockets or storage. It depends
//! on no other Trellis crate.

pub mod audit_log;
pub mod bundle;
pub mod ca_files;
pub mod check;
pub mod cidr;
pub mod clock;
pub mod crl_reason;
pub mod duration;
pub mod files;
pub mod hex;
pub mod jwk;
pub mod jwt_svid;
pub mod key;
pub mod pattern;
pub mod pem;
pub mod profile;
pub mod ready;
pub mod spiffe;
pub mod spiffe_bundle;
pub mod svid;
pub mod tls;

pub use bundle::{TrustBundle, VerifiedSvid};
pub use key::WorkloadKey;
pub use pattern::{IdMatcher, IdPattern};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{CertInfo, SvidError};
