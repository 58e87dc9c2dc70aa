//! SPIFFE IDs and trust domains, validated per the SPIFFE ID specification
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>, sections 2 and 2.1–2.3).

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID accepted, in bytes (SPIFFE-ID.md §2.3: URIs of up to 2048 bytes).
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name accepted, in bytes (SPIFFE-ID.md §2.1: 255 bytes).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
const SCHEME: &str = "spiffe://";

/// Paths reserved for Trellis itself, under every trust domain. One definition for the CA,
/// the sidecar and the CLI.
pub mod reserved {
    /// Everything under this is reserved: no join token or admin issuance may grant it.
    pub const PREFIX: &str = "/trellis";
    /// The CA's own serving identity.
    pub const CA: &str = "/trellis/ca";
    /// Admin identities live below this.
    pub const ADMIN_PREFIX: &str = "/trellis/admin";
    /// The admin identity created when a CA is initialised.
    pub const DEFAULT_ADMIN: &str = "/trellis/admin/default";
}

/// Why a string is not a SPIFFE ID or trust domain. Each message names the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error(
        "SPIFFE ID must start with \"spiffe://\" (scheme is missing or not lowercase \"spiffe\")"
    )]
    WrongScheme,
    #[error("SPIFFE ID has no trust domain (expected spiffe://<trust-domain>/<path>)")]
    MissingTrustDomain,
    #[error(
        "trust domain contains {0:?}: only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    #[error("SPIFFE ID must not contain a port (':' in the trust domain)")]
    Port,
    #[error("SPIFFE ID must not contain user info ('@' in the trust domain)")]
    UserInfo,
    #[error("SPIFFE ID must not contain a query ('?')")]
    Query,
    #[error("SPIFFE ID must not contain a fragment ('#')")]
    Fragment,
    #[error("SPIFFE ID path contains an empty segment ('//')")]
    EmptySegment,
    #[error("SPIFFE ID path contains a '.' or '..' segment")]
    DotSegment,
    #[error("SPIFFE ID path must not end with '/'")]
    TrailingSlash,
    #[error(
        "SPIFFE ID path contains {0:?}: only letters, digits, '.', '-' and '_' are allowed in segments"
    )]
    BadPathChar(char),
    #[error("SPIFFE ID is {0} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong(usize),
    #[error("trust domain is {0} bytes long; the limit is {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong(usize),
}

/// A trust domain name such as `cluster.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a SPIFFE ID with no path
    /// (`spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        let name = name.strip_prefix(SCHEME).unwrap_or(name);
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID with this trust domain and the given path (which must start with '/').
    pub fn id(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::new(&format!("{SCHEME}{}{path}", self.0))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID: `spiffe://<trust-domain><path>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (the end of the trust domain).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(id: &str) -> Result<Self, SpiffeIdError> {
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(id.len()));
        }
        let rest = id.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        // A query or fragment would otherwise be reported as a bad character; name it instead.
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let td_len = rest.find('/').unwrap_or(rest.len());
        validate_trust_domain(&rest[..td_len])?;
        validate_path(&rest[td_len..])?;
        Ok(Self {
            id: id.to_owned(),
            path_start: SCHEME.len() + td_len,
        })
    }

    /// The trust domain name, e.g. `cluster.local`.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, e.g. `/ns/prod/sa/web`; empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// True if this ID equals `prefix` or lies below it (segment-wise, so `/ns/prod` is under
    /// `/ns` but not under `/n`). `prefix` is a path starting with '/'.
    pub fn is_under(&self, trust_domain: &str, prefix: &str) -> bool {
        if self.trust_domain_name() != trust_domain {
            return false;
        }
        let prefix = prefix.trim_end_matches('/');
        let path = self.path();
        prefix.is_empty()
            || path == prefix
            || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(SpiffeIdError::Port),
            '@' => return Err(SpiffeIdError::UserInfo),
            other => return Err(SpiffeIdError::BadTrustDomainChar(other)),
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    // The path starts with '/', so the first split element is the empty string before it.
    for segment in path.split('/').skip(1) {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::BadPathChar(bad));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        let id = SpiffeId::new("spiffe://cluster.local/ns/prod/sa/web").expect("valid");
        assert_eq!(id.trust_domain_name(), "cluster.local");
        assert_eq!(id.path(), "/ns/prod/sa/web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/prod/sa/web");
        let bare = SpiffeId::new("spiffe://example.org").expect("trust domain id");
        assert_eq!(bare.path(), "");
        SpiffeId::new("spiffe://a-b_c.d9/Upper.Case-ok_9").expect("path may have uppercase");
    }

    #[test]
    fn rejects_each_rule_with_its_own_error() {
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", SpiffeIdError::Empty),
            ("http://example.org/a", SpiffeIdError::WrongScheme),
            ("SPIFFE://example.org/a", SpiffeIdError::WrongScheme),
            ("spiffe:/example.org", SpiffeIdError::WrongScheme),
            ("spiffe://", SpiffeIdError::MissingTrustDomain),
            ("spiffe:///path", SpiffeIdError::MissingTrustDomain),
            (
                "spiffe://Example.org/a",
                SpiffeIdError::BadTrustDomainChar('E'),
            ),
            ("spiffe://example.org:8080/a", SpiffeIdError::Port),
            ("spiffe://user@example.org/a", SpiffeIdError::UserInfo),
            ("spiffe://example.org/a?x=1", SpiffeIdError::Query),
            ("spiffe://example.org/a#frag", SpiffeIdError::Fragment),
            ("spiffe://example.org/a//b", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a/../b", SpiffeIdError::DotSegment),
            ("spiffe://example.org/./b", SpiffeIdError::DotSegment),
            ("spiffe://example.org/a/", SpiffeIdError::TrailingSlash),
            ("spiffe://example.org/", SpiffeIdError::TrailingSlash),
            (
                "spiffe://example.org/a%20b",
                SpiffeIdError::BadPathChar('%'),
            ),
            ("spiffe://example.org/a b", SpiffeIdError::BadPathChar(' ')),
        ];
        for (input, expected) in cases {
            assert_eq!(
                SpiffeId::new(input).as_ref(),
                Err(expected),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn enforces_length_limits() {
        let long_path = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        assert!(matches!(
            SpiffeId::new(&long_path),
            Err(SpiffeIdError::TooLong(_))
        ));
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert_eq!(
            SpiffeId::new(&long_td),
            Err(SpiffeIdError::TrustDomainTooLong(256))
        );
        let ok = format!(
            "spiffe://td/{}",
            "a".repeat(MAX_ID_LEN - "spiffe://td/".len())
        );
        assert!(SpiffeId::new(&ok).is_ok());
    }

    #[test]
    fn under_is_segment_wise() {
        let id = SpiffeId::new("spiffe://td/ns/prod/sa/web").expect("valid");
        assert!(id.is_under("td", "/ns/prod"));
        assert!(id.is_under("td", "/ns/prod/"));
        assert!(id.is_under("td", ""));
        assert!(id.is_under("td", "/ns/prod/sa/web"));
        assert!(!id.is_under("td", "/ns/pro"));
        assert!(!id.is_under("other", "/ns/prod"));
    }

    #[test]
    fn trust_domain_accepts_bare_or_uri_form() {
        assert_eq!(
            TrustDomain::new("spiffe://example.org")
                .expect("valid")
                .as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("Bad").unwrap_err(),
            SpiffeIdError::BadTrustDomainChar('B')
        );
    }
}
