use std::time::SystemTime;

use super::*;
use crate::profile;

fn roots(n: usize) -> (TrustDomain, Vec<CertificateDer<'static>>) {
    let td = TrustDomain::new("example.org").unwrap();
    let roots = (0..n)
        .map(|_| {
            profile::new_root(&td, SystemTime::now(), Duration::from_secs(86_400))
                .unwrap()
                .cert
        })
        .collect();
    (td, roots)
}

fn bundle() -> SpiffeBundle {
    let (td, roots) = roots(2);
    SpiffeBundle {
        trust_domain: td,
        sequence: 7,
        refresh_hint: Some(Duration::from_secs(300)),
        x509_authorities: roots,
        jwt_authorities: vec![JwtKey {
            key_id: "k1".into(),
            public_key: [vec![4u8], vec![1u8; 32], vec![2u8; 32]].concat(),
        }],
    }
}

#[test]
fn a_bundle_survives_its_json_form() {
    let original = bundle();
    let json = original.to_json();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["spiffe_sequence"], 7);
    assert_eq!(value["spiffe_refresh_hint"], 300);
    assert_eq!(value["keys"][0]["use"], "x509-svid");
    assert_eq!(value["keys"][0]["crv"], "P-256");
    assert_eq!(value["keys"][2]["use"], "jwt-svid");
    let parsed = SpiffeBundle::parse(original.trust_domain.clone(), json.as_bytes()).unwrap();
    assert_eq!(parsed, original);
}

#[test]
fn unknown_keys_are_ignored_and_malformed_known_ones_refused() {
    let original = bundle();
    let mut value: serde_json::Value = serde_json::from_str(&original.to_json()).unwrap();
    let keys = value["keys"].as_array_mut().unwrap();
    keys.push(serde_json::json!({"kty": "OKP", "use": "jwt-svid", "kid": "ed"}));
    keys.push(serde_json::json!({"kty": "EC", "use": "something-else"}));
    keys.push(serde_json::json!({"no": "kty"}));
    let parsed =
        SpiffeBundle::parse(original.trust_domain.clone(), value.to_string().as_bytes()).unwrap();
    assert_eq!(parsed, original);

    // The key parameters of another certificate: refused.
    let (_, other) = roots(1);
    let (_, x, _) = ec_point(&other[0]).unwrap();
    let mut forged = serde_json::from_str::<serde_json::Value>(&original.to_json()).unwrap();
    forged["keys"][0]["x"] = x.into();
    let err = SpiffeBundle::parse(original.trust_domain.clone(), forged.to_string().as_bytes())
        .unwrap_err();
    assert!(
        matches!(err, BundleFormatError::BadKey { index: 0, .. }),
        "{err}"
    );

    // Two certificates in one x5c: refused.
    let mut two = serde_json::from_str::<serde_json::Value>(&original.to_json()).unwrap();
    let extra = two["keys"][1]["x5c"][0].clone();
    two["keys"][0]["x5c"].as_array_mut().unwrap().push(extra);
    let err =
        SpiffeBundle::parse(original.trust_domain.clone(), two.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("exactly one"), "{err}");
}

#[test]
fn garbage_and_empty_bundles_are_refused() {
    let td = TrustDomain::new("example.org").unwrap();
    assert!(matches!(
        SpiffeBundle::parse(td.clone(), b"<html>not json</html>"),
        Err(BundleFormatError::Json(_))
    ));
    assert_eq!(
        SpiffeBundle::parse(td.clone(), br#"{"keys": []}"#),
        Err(BundleFormatError::NoX509Authority)
    );
    assert!(matches!(
        SpiffeBundle::parse(td, &vec![b' '; MAX_BUNDLE_BYTES + 1]),
        Err(BundleFormatError::TooLarge(_))
    ));
}

#[test]
fn a_root_naming_another_trust_domain_is_refused() {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://other.example".try_into().unwrap(),
    )];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let root = params.self_signed(&key).unwrap().der().clone();
    let foreign = SpiffeBundle {
        trust_domain: TrustDomain::new("other.example").unwrap(),
        sequence: 1,
        refresh_hint: None,
        x509_authorities: vec![root],
        jwt_authorities: Vec::new(),
    };
    let json = foreign.to_json();
    assert!(SpiffeBundle::parse(foreign.trust_domain.clone(), json.as_bytes()).is_ok());
    let err =
        SpiffeBundle::parse(TrustDomain::new("example.org").unwrap(), json.as_bytes()).unwrap_err();
    assert!(
        matches!(err, BundleFormatError::ForeignRoot { ref found, .. } if found == "other.example"),
        "{err}"
    );
}
