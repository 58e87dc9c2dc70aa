//! Which SPIFFE IDs an administrator may hand out (a join token, an admin-issued
//! certificate): shared by `tokens.rs` and `issuance.rs`, and needing only the trust domain.

use trellis_identity::spiffe::reserved::PREFIX as RESERVED_PREFIX;
use trellis_identity::{SpiffeId, TrustDomain};

use crate::error::CaError;

/// Checks that an administrator may hand out `id`: right trust domain, a path, not reserved.
pub(crate) fn check_grantable(td: &TrustDomain, id: &SpiffeId) -> Result<(), CaError> {
    if id.trust_domain_name() != td.as_str() {
        return Err(CaError::InvalidArgument(format!(
            "{id} is not in this CA's trust domain {td}"
        )));
    }
    if id.path().is_empty() {
        return Err(CaError::InvalidArgument(format!(
            "{id} has no path; workload IDs look like spiffe://{td}/ns/<namespace>/sa/<account>"
        )));
    }
    if id.is_under(td.as_str(), RESERVED_PREFIX) {
        return Err(CaError::InvalidArgument(format!(
            "{id} is under {RESERVED_PREFIX}/, which is reserved for the CA and its admins"
        )));
    }
    Ok(())
}
