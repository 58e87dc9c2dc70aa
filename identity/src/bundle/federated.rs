//! Other trust domains' bundles, and verification that picks the bundle by the trust domain
//! the peer's certificate names. A certificate of a trust domain that has no bundle here is
//! refused as of an unknown issuer; one of a federated trust domain must chain to that
//! domain's roots, never to another's (each bundle checks the leaf is in its own domain).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::{TrustBundle, Usage, VerifiedSvid};
use crate::spiffe::TrustDomain;
use crate::svid::{SvidError, spiffe_id_of};

/// Bundles of federated trust domains, by trust domain.
pub type Federated = Arc<BTreeMap<TrustDomain, Arc<TrustBundle>>>;

/// Verifies `chain` against `own` if its leaf is in `own`'s trust domain, else against the
/// federated bundle of the leaf's trust domain.
pub fn verify_federated(
    own: &TrustBundle,
    federated: &Federated,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
    usage: Usage,
) -> Result<VerifiedSvid, SvidError> {
    let leaf = chain.first().ok_or(SvidError::Empty)?;
    // Only a chain that says it belongs elsewhere is looked up; everything else (and every
    // error) takes the usual path, with its usual message.
    let foreign = match spiffe_id_of(leaf) {
        Ok(id) if id.trust_domain_name() != own.trust_domain().as_str() => id.trust_domain(),
        _ => return own.verify(chain, now, usage),
    };
    match federated.get(&foreign) {
        Some(bundle) => bundle.verify(chain, now, usage),
        None => Err(SvidError::UnknownIssuer),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::WorkloadKey;
    use crate::profile::{LeafSpec, SigningCa, new_intermediate, new_root};

    /// A trust domain's bundle and a leaf chain (leaf, intermediate) issued in it.
    fn domain(name: &str) -> (Arc<TrustBundle>, Vec<CertificateDer<'static>>) {
        let td = TrustDomain::new(name).unwrap();
        let now = SystemTime::now() - Duration::from_secs(60);
        let day = Duration::from_secs(86_400);
        let root = new_root(&td, now, day).unwrap();
        let bundle = TrustBundle::new(td.clone(), 1, vec![root.cert.clone()]).unwrap();
        let root = SigningCa::new(root.cert, root.key).unwrap();
        let inter = new_intermediate(&td, &root, now, day).unwrap();
        let inter = SigningCa::new(inter.cert, inter.key).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let spki = key.public_key_der();
        let leaf = inter
            .sign_leaf(
                &LeafSpec {
                    spiffe_id: td.id("/ns/billing/sa/api").unwrap(),
                    dns_names: vec![],
                    public_point: spki[spki.len() - 65..].to_vec(),
                    lifetime: Duration::from_secs(3600),
                },
                SystemTime::now(),
            )
            .unwrap();
        (Arc::new(bundle), vec![leaf.der, inter.cert.clone()])
    }

    #[test]
    fn a_foreign_chain_verifies_only_against_its_own_domains_bundle() {
        let (own, own_chain) = domain("home.example");
        let (partner, partner_chain) = domain("partner.example");
        let (_, impostor_chain) = domain("partner.example");
        let now = SystemTime::now();
        let none = Federated::default();
        let with_partner: Federated = Arc::new(BTreeMap::from([(
            partner.trust_domain().clone(),
            partner.clone(),
        )]));

        // Own domain as before, federated or not.
        for federated in [&none, &with_partner] {
            let ok = verify_federated(&own, federated, &own_chain, now, Usage::Client).unwrap();
            assert_eq!(ok.spiffe_id.trust_domain_name(), "home.example");
        }
        // A partner chain: unknown without federation, verified with it.
        assert_eq!(
            verify_federated(&own, &none, &partner_chain, now, Usage::Client),
            Err(SvidError::UnknownIssuer)
        );
        let ok = verify_federated(&own, &with_partner, &partner_chain, now, Usage::Client).unwrap();
        assert_eq!(
            ok.spiffe_id.as_str(),
            "spiffe://partner.example/ns/billing/sa/api"
        );
        // A chain claiming the partner's trust domain under other roots: refused.
        assert!(
            verify_federated(&own, &with_partner, &impostor_chain, now, Usage::Client).is_err()
        );
    }

    #[test]
    fn a_foreign_server_needs_federation_and_a_policy_that_names_it() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::{ServerName, UnixTime};

        use crate::tls::SpiffeServerVerifier;
        use crate::{IdMatcher, IdPattern};

        let (own, _) = domain("home.example");
        let (partner, partner_chain) = domain("partner.example");
        let federated: Federated = Arc::new(BTreeMap::from([(
            partner.trust_domain().clone(),
            partner.clone(),
        )]));
        let name = ServerName::try_from("partner").unwrap();
        let check = |verifier: SpiffeServerVerifier| {
            verifier
                .verify_server_cert(
                    &partner_chain[0],
                    &partner_chain[1..],
                    &name,
                    &[],
                    UnixTime::now(),
                )
                .is_ok()
        };
        let own_domain = IdMatcher(vec![IdPattern::any_in(own.trust_domain())]);
        let partner_api: IdMatcher = IdMatcher(vec![
            "spiffe://partner.example/ns/billing/*".parse().unwrap(),
        ]);
        // Named by the policy but not federated; federated but the policy names only the
        // own domain; both: accepted.
        assert!(!check(SpiffeServerVerifier::new(
            own.clone(),
            partner_api.clone()
        )));
        assert!(!check(
            SpiffeServerVerifier::new(own.clone(), own_domain).federating(federated.clone())
        ));
        assert!(check(
            SpiffeServerVerifier::new(own.clone(), partner_api).federating(federated)
        ));
    }
}
