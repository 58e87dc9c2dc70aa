//! Inbound authorisation: may an authenticated peer (its SPIFFE ID already proven by a chain
//! that verified against the trust bundle) talk to this workload?
//!
//! - `strict`: any identity in our trust domain, plus anything `allow` names;
//! - `deny`: only what `allow` names.

use trellis_identity::{IdMatcher, SpiffeId, TrustDomain};

use crate::config::PolicyMode;

/// The outcome of a policy check, with the rule that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An `allow` entry matched.
    AllowListed,
    /// Strict mode: the peer is in our trust domain.
    SameTrustDomain,
    /// Deny mode: no `allow` entry matched.
    NotAllowListed,
    /// Strict mode: the peer is in another trust domain and no `allow` entry matched.
    ForeignTrustDomain,
}

impl Decision {
    /// True if the connection may proceed.
    pub fn is_allowed(self) -> bool {
        matches!(self, Self::AllowListed | Self::SameTrustDomain)
    }

    /// A short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::AllowListed => "allow_listed",
            Self::SameTrustDomain => "same_trust_domain",
            Self::NotAllowListed => "not_allow_listed",
            Self::ForeignTrustDomain => "foreign_trust_domain",
        }
    }
}

/// An inbound listener's policy.
#[derive(Debug, Clone)]
pub struct Policy {
    mode: PolicyMode,
    allow: IdMatcher,
    trust_domain: TrustDomain,
}

impl Policy {
    /// The policy for a listener in `trust_domain`.
    pub fn new(mode: PolicyMode, allow: IdMatcher, trust_domain: TrustDomain) -> Self {
        Self {
            mode,
            allow,
            trust_domain,
        }
    }

    /// Decides on an authenticated peer.
    pub fn check(&self, peer: &SpiffeId) -> Decision {
        if self.allow.matches(peer) {
            return Decision::AllowListed;
        }
        match self.mode {
            PolicyMode::Deny => Decision::NotAllowListed,
            PolicyMode::Strict if peer.trust_domain_name() == self.trust_domain.as_str() => {
                Decision::SameTrustDomain
            }
            PolicyMode::Strict => Decision::ForeignTrustDomain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).expect("valid id")
    }

    fn allow(patterns: &[&str]) -> IdMatcher {
        IdMatcher(
            patterns
                .iter()
                .map(|p| p.parse().expect("pattern"))
                .collect(),
        )
    }

    #[test]
    fn strict_allows_the_trust_domain_and_the_allow_list() {
        let td = TrustDomain::new("td").expect("td");
        let p = Policy::new(PolicyMode::Strict, allow(&["spiffe://other/ns/a/sa/x"]), td);
        assert_eq!(
            p.check(&id("spiffe://td/ns/b/sa/y")),
            Decision::SameTrustDomain
        );
        assert_eq!(
            p.check(&id("spiffe://other/ns/a/sa/x")),
            Decision::AllowListed
        );
        let foreign = p.check(&id("spiffe://other/ns/a/sa/z"));
        assert_eq!(foreign, Decision::ForeignTrustDomain);
        assert!(!foreign.is_allowed());
        assert_eq!(foreign.reason(), "foreign_trust_domain");
    }

    #[test]
    fn deny_allows_only_the_allow_list() {
        let td = TrustDomain::new("td").expect("td");
        let p = Policy::new(
            PolicyMode::Deny,
            allow(&["spiffe://td/ns/prod/*", "spiffe://td/ns/dev/sa/web"]),
            td,
        );
        assert!(p.check(&id("spiffe://td/ns/prod/sa/db")).is_allowed());
        assert!(p.check(&id("spiffe://td/ns/dev/sa/web")).is_allowed());
        let d = p.check(&id("spiffe://td/ns/dev/sa/db"));
        assert_eq!(d, Decision::NotAllowListed);
        assert!(!d.is_allowed());
        assert!(!p.check(&id("spiffe://td/ns/production/sa/db")).is_allowed());
    }
}
