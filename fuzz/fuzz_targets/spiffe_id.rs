//! SPIFFE ID, trust domain and ID pattern parsing on arbitrary text (the first line is
//! read as a pattern, the rest as an ID, so matching sees related inputs too).
//! Invariants: no panic; whatever parses prints back to something that parses the same.

#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use trellis_identity::{IdPattern, SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, rest) = text.split_once('\n').unwrap_or((text, text));
    for candidate in [first, rest] {
        if let Ok(id) = SpiffeId::new(candidate) {
            let again = SpiffeId::new(id.as_str()).expect("a parsed ID re-parses");
            assert_eq!(again, id);
            assert!(id.as_str().starts_with("spiffe://"));
            assert_eq!(id.trust_domain().as_str(), id.trust_domain_name());
            assert!(TrustDomain::new(id.trust_domain_name()).is_ok());
            let _ = id.path();
        }
        if let Ok(td) = TrustDomain::new(candidate) {
            let again = TrustDomain::new(td.as_str()).expect("a parsed domain re-parses");
            assert_eq!(again.as_str(), td.as_str());
            let _ = td.id("/ns/a/sa/b");
            let _ = td.id(rest);
        }
    }
    if let Ok(pattern) = IdPattern::from_str(first) {
        let printed = pattern.to_string();
        let again = IdPattern::from_str(&printed).expect("a printed pattern re-parses");
        assert_eq!(again.to_string(), printed);
        if let Ok(id) = SpiffeId::new(rest) {
            assert_eq!(pattern.matches(&id), again.matches(&id));
            // A pattern that is an exact ID matches that ID.
            if let Ok(exact) = SpiffeId::new(first) {
                if exact == id {
                    assert!(pattern.matches(&id), "{first:?} should match itself");
                }
            }
        }
    }
});
