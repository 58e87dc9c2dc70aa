//! The JWT-SVID signing keys of a bundle as JSON Web Keys (RFC 7517) and as verification
//! keys, through `jsonwebtoken` (ES256 on P-256 only).
//!
//! A key set is the SPIFFE bundle format's JWK Set (SPIFFE Trust Domain and Bundle,
//! section 4): each key with `use` "jwt-svid" and its `kid`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};

use crate::bundle::JwtKey;

/// The `use` of a JWT-SVID key in a SPIFFE bundle.
pub const JWT_SVID_USE: &str = "jwt-svid";

/// The key as a JWK; None if it is not a well-formed P-256 point.
pub fn to_jwk(key: &JwtKey) -> Option<Jwk> {
    let (x, y) = key.coordinates()?;
    Some(Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Other(JWT_SVID_USE.into())),
            key_algorithm: Some(KeyAlgorithm::ES256),
            key_id: Some(key.key_id.clone()),
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
            key_type: EllipticCurveKeyType::EC,
            curve: EllipticCurve::P256,
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
        }),
    })
}

/// The key as JWK JSON; None if it is not a well-formed P-256 point.
pub fn to_json(key: &JwtKey) -> Option<String> {
    serde_json::to_string(&to_jwk(key)?).ok()
}

/// The keys as a JWK Set, JSON (malformed keys left out).
pub fn set_json(keys: &[JwtKey]) -> Vec<u8> {
    let set = JwkSet {
        keys: keys.iter().filter_map(to_jwk).collect(),
    };
    serde_json::to_vec(&set).expect("a JWK set is plain data and always serialises")
}

/// The key to verify ES256 signatures with; None if it is not a well-formed P-256 point.
pub fn decoding_key(key: &JwtKey) -> Option<DecodingKey> {
    let (x, y) = key.coordinates()?;
    DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(x), &URL_SAFE_NO_PAD.encode(y)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_p256_point_becomes_an_ec_jwk_and_anything_else_is_left_out() {
        let mut point = vec![0x04];
        point.extend((1..=64).map(|b: u8| b));
        let key = JwtKey {
            key_id: "k1".into(),
            public_key: point,
        };
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&key).expect("jwk")).expect("json");
        assert_eq!(json["kty"], "EC");
        assert_eq!(json["crv"], "P-256");
        assert_eq!(json["kid"], "k1");
        assert_eq!(json["use"], "jwt-svid");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(json["x"].as_str().expect("x"))
                .expect("b64"),
            (1..=32).collect::<Vec<u8>>()
        );
        let compressed = JwtKey {
            key_id: "k2".into(),
            public_key: vec![0x02; 33],
        };
        assert!(to_jwk(&compressed).is_none());
        let set: serde_json::Value =
            serde_json::from_slice(&set_json(&[key, compressed])).expect("json");
        assert_eq!(set["keys"].as_array().expect("keys").len(), 1);
    }
}
