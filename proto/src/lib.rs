//! The Trellis gRPC APIs, generated from `proto/trellis/**/v1/*.proto`.
//!
//! - [`ca::v1`]: the workload API every sidecar uses (certify, trust bundle, watch).
//! - [`admin::v1`]: the admin API, callable only with an admin client certificate.

/// `trellis.ca.*`: the workload-facing certificate authority API.
pub mod ca {
    /// Version 1 of the workload API.
    pub mod v1 {
        #![allow(missing_docs, missing_debug_implementations, clippy::all)]
        tonic::include_proto!("trellis.ca.v1");
    }
}

/// `trellis.admin.*`: the operator-facing admin API.
pub mod admin {
    /// Version 1 of the admin API.
    pub mod v1 {
        #![allow(missing_docs, missing_debug_implementations, clippy::all)]
        tonic::include_proto!("trellis.admin.v1");
    }
}

pub mod channel;
mod redact;
