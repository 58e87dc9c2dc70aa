//! Patterns that say which SPIFFE IDs a peer may have: exact IDs, path prefixes
//! (`spiffe://td/ns/prod/*`) and a whole trust domain (`spiffe://td/*`).

use std::fmt;
use std::str::FromStr;

use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// One allowed identity or family of identities.
#[derive(Clone, PartialEq, Eq)]
pub enum IdPattern {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// This path or anything below it, segment-wise, in this trust domain.
    Prefix {
        trust_domain: TrustDomain,
        path: String,
    },
}

impl IdPattern {
    /// Any identity in the trust domain.
    pub fn any_in(trust_domain: &TrustDomain) -> Self {
        Self::Prefix {
            trust_domain: trust_domain.clone(),
            path: String::new(),
        }
    }

    /// True if `id` is allowed by this pattern.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(exact) => exact == id,
            Self::Prefix { trust_domain, path } => id.is_under(trust_domain.as_str(), path),
        }
    }
}

impl FromStr for IdPattern {
    type Err = SpiffeIdError;
    /// `spiffe://td/a/b` is exact; `spiffe://td/a/*` is a prefix; `spiffe://td/*` the domain.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_suffix("/*") {
            Some(base) => {
                let id = SpiffeId::new(base)?;
                Ok(Self::Prefix {
                    trust_domain: id.trust_domain(),
                    path: id.path().to_owned(),
                })
            }
            None => Ok(Self::Exact(SpiffeId::new(s)?)),
        }
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::Prefix { trust_domain, path } => write!(f, "spiffe://{trust_domain}{path}/*"),
        }
    }
}

impl fmt::Debug for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdPattern({self})")
    }
}

/// A set of patterns: an identity is allowed if any pattern matches it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMatcher(pub Vec<IdPattern>);

impl IdMatcher {
    /// Allows exactly one identity.
    pub fn exact(id: SpiffeId) -> Self {
        Self(vec![IdPattern::Exact(id)])
    }

    /// True if any pattern allows `id`.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        self.0.iter().any(|p| p.matches(id))
    }
}

impl fmt::Display for IdMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).expect("valid id")
    }

    #[test]
    fn exact_prefix_and_domain_patterns() {
        let exact: IdPattern = "spiffe://td/ns/a/sa/web".parse().expect("pattern");
        let prefix: IdPattern = "spiffe://td/ns/a/*".parse().expect("pattern");
        let domain: IdPattern = "spiffe://td/*".parse().expect("pattern");
        let web = id("spiffe://td/ns/a/sa/web");
        let other_ns = id("spiffe://td/ns/ab/sa/web");
        let foreign = id("spiffe://other/ns/a/sa/web");
        assert!(exact.matches(&web) && !exact.matches(&other_ns));
        assert!(prefix.matches(&web) && !prefix.matches(&other_ns));
        assert!(domain.matches(&web) && domain.matches(&other_ns) && !domain.matches(&foreign));
        assert_eq!(prefix.to_string(), "spiffe://td/ns/a/*");
        assert_eq!(domain.to_string(), "spiffe://td/*");
        assert!("spiffe://td/a//*".parse::<IdPattern>().is_err());
    }
}
