//! The CA's CSR check (`trellis_ca::csr::check`) on arbitrary bytes, and for every CSR it
//! accepts, the next step of issuance: signing a leaf for the checked public point.
//! Invariants: no panic; an accepted CSR yields a certificate that parses back with the
//! granted SPIFFE ID and nothing else.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use trellis_identity::profile::{LeafSpec, SigningCa, new_intermediate, new_root};
use trellis_identity::{CertInfo, SpiffeId, TrustDomain};

fn signer() -> &'static SigningCa {
    static SIGNER: OnceLock<SigningCa> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let td = TrustDomain::new("fuzz.local").expect("valid trust domain");
        let start = SystemTime::now() - Duration::from_secs(3600);
        let year = Duration::from_secs(365 * 86_400);
        let root = new_root(&td, start, year).expect("root");
        let root = SigningCa::new(root.cert, root.key).expect("root signer");
        let inter = new_intermediate(&td, &root, start, year).expect("intermediate");
        SigningCa::new(inter.cert, inter.key).expect("intermediate signer")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(checked) = trellis_ca::csr::check(data) else {
        return;
    };
    if let Some(uri) = &checked.requested_uri {
        // The CA compares this with the granted ID; parsing it must not panic either.
        let _ = SpiffeId::new(uri);
    }
    let granted = SpiffeId::new("spiffe://fuzz.local/ns/fuzz/sa/csr").expect("valid ID");
    let spec = LeafSpec {
        spiffe_id: granted.clone(),
        dns_names: Vec::new(),
        public_point: checked.public_point,
        lifetime: Duration::from_secs(3600),
    };
    // A point the signature verified with is a valid P-256 point, so signing must succeed.
    let leaf = signer()
        .sign_leaf(&spec, SystemTime::now())
        .expect("an accepted CSR can be signed");
    let info = CertInfo::parse(&leaf.der).expect("the signed leaf parses");
    assert_eq!(info.spiffe_id().expect("one URI SAN"), granted);
});
