//! Why a certificate was revoked, as a CRL entry says it: RFC 5280, section 5.3.1,
//! `CRLReason`.
//!
//! Only the final reasons are offered: `certificateHold` and `removeFromCRL` describe a
//! suspension that can be lifted, and a Trellis revocation cannot; `unspecified` is left
//! out because RFC 5280 asks for no reason code instead of that one.

use std::fmt;

/// An RFC 5280 `CRLReason` that a Trellis revocation can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrlReason {
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl CrlReason {
    /// Every reason, in code order.
    pub const ALL: [CrlReason; 7] = [
        CrlReason::KeyCompromise,
        CrlReason::CaCompromise,
        CrlReason::AffiliationChanged,
        CrlReason::Superseded,
        CrlReason::CessationOfOperation,
        CrlReason::PrivilegeWithdrawn,
        CrlReason::AaCompromise,
    ];

    /// The `CRLReason` code (ENUMERATED value) of RFC 5280.
    pub fn code(self) -> u8 {
        match self {
            CrlReason::KeyCompromise => 1,
            CrlReason::CaCompromise => 2,
            CrlReason::AffiliationChanged => 3,
            CrlReason::Superseded => 4,
            CrlReason::CessationOfOperation => 5,
            CrlReason::PrivilegeWithdrawn => 9,
            CrlReason::AaCompromise => 10,
        }
    }

    /// The reason with `code`, if it is one of these.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| u32::from(r.code()) == code)
    }

    /// The name RFC 5280 gives it (`keyCompromise`), as openssl also prints it in words.
    pub fn rfc_name(self) -> &'static str {
        match self {
            CrlReason::KeyCompromise => "keyCompromise",
            CrlReason::CaCompromise => "cACompromise",
            CrlReason::AffiliationChanged => "affiliationChanged",
            CrlReason::Superseded => "superseded",
            CrlReason::CessationOfOperation => "cessationOfOperation",
            CrlReason::PrivilegeWithdrawn => "privilegeWithdrawn",
            CrlReason::AaCompromise => "aACompromise",
        }
    }

    /// Reads a free-text reason that names one of these, in any case and with any
    /// spaces, hyphens or underscores between the words ("key compromise",
    /// "Key-Compromise", "keyCompromise", "CA compromise"); any other text is `None`.
    pub fn from_text(text: &str) -> Option<Self> {
        let squash = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let wanted = squash(text);
        Self::ALL
            .into_iter()
            .find(|r| squash(r.rfc_name()) == wanted)
    }
}

impl fmt::Display for CrlReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.rfc_name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_rfc_5280s_and_round_trip() {
        let codes: Vec<u8> = CrlReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 9, 10]);
        for r in CrlReason::ALL {
            assert_eq!(CrlReason::from_code(r.code().into()), Some(r));
            assert_eq!(CrlReason::from_text(r.rfc_name()), Some(r));
        }
        for absent in [0, 6, 7, 8, 11] {
            assert_eq!(CrlReason::from_code(absent), None, "{absent}");
        }
    }

    #[test]
    fn free_text_that_names_a_reason_is_read() {
        assert_eq!(
            CrlReason::from_text("key compromise"),
            Some(CrlReason::KeyCompromise)
        );
        assert_eq!(
            CrlReason::from_text("CA-Compromise"),
            Some(CrlReason::CaCompromise)
        );
        assert_eq!(
            CrlReason::from_text(" cessation_of_operation "),
            Some(CrlReason::CessationOfOperation)
        );
        for other in ["", "unspecified", "left the company", "key compromised"] {
            assert_eq!(CrlReason::from_text(other), None, "{other:?}");
        }
    }
}
