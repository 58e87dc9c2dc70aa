//! Just enough JWT ([RFC 7519]) and JWK ([RFC 7517]) to verify a Kubernetes projected
//! service-account token offline: compact JWS parsing, RS256 and ES256 signatures
//! ([RFC 7518 §3.3, §3.4]) checked with aws-lc-rs, and a JWK Set of RSA and P-256 keys.
//! Nothing else is accepted: `alg: none`, HMAC, other curves and key types are refused.
//!
//! [RFC 7519]: https://www.rfc-editor.org/rfc/rfc7519
//! [RFC 7517]: https://www.rfc-editor.org/rfc/rfc7517
//! [RFC 7518 §3.3, §3.4]: https://www.rfc-editor.org/rfc/rfc7518#section-3.3

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde::Deserialize;
use serde_json::Value;

/// Tokens longer than this are refused before any parsing (Kubernetes tokens are ~1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A signature algorithm this module verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

/// A public key from a JWK Set.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed P-256 point (0x04 ‖ x ‖ y).
    P256 { point: Vec<u8> },
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            Self::P256 { .. } => f.write_str("P256"),
        }
    }
}

/// One signing key with its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: String,
    pub key: PublicKey,
}

/// The verification keys of an issuer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

/// Why a key set could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JWK Set: {0}")]
pub struct KeySetError(String);

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl KeySet {
    /// Parses a JWK Set document. Keys that are not RSA or P-256 signing keys are skipped
    /// (an issuer may publish others); a key that claims to be one but is malformed is an
    /// error, and so is a set with no usable key.
    pub fn parse(json: &[u8]) -> Result<Self, KeySetError> {
        let raw: RawSet =
            serde_json::from_slice(json).map_err(|e| KeySetError(format!("not a JWK Set: {e}")))?;
        let mut keys = Vec::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            if k.usage.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let field = |name: &str, value: Option<String>| {
                value
                    .ok_or_else(|| KeySetError(format!("key {i}: no {name}")))
                    .and_then(|v| {
                        base64url(&v)
                            .ok_or_else(|| KeySetError(format!("key {i}: {name} is not base64url")))
                    })
            };
            let key = match (k.kty.as_deref(), k.crv.as_deref()) {
                (Some("RSA"), _) => {
                    let n = strip_zeros(field("n", k.n)?);
                    let e = strip_zeros(field("e", k.e)?);
                    if n.len() < 256 {
                        return Err(KeySetError(format!(
                            "key {i}: RSA modulus of {} bits; at least 2048 are required",
                            n.len() * 8
                        )));
                    }
                    PublicKey::Rsa { n, e }
                }
                (Some("EC"), Some("P-256")) => {
                    let x = field("x", k.x)?;
                    let y = field("y", k.y)?;
                    if x.len() != 32 || y.len() != 32 {
                        return Err(KeySetError(format!(
                            "key {i}: P-256 coordinates must be 32 bytes"
                        )));
                    }
                    let mut point = Vec::with_capacity(65);
                    point.push(4);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    PublicKey::P256 { point }
                }
                _ => continue,
            };
            let kid = k.kid.unwrap_or_default();
            keys.push(Jwk { kid, key });
        }
        if keys.is_empty() {
            return Err(KeySetError("no RSA or P-256 signing key in the set".into()));
        }
        Ok(Self { keys })
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn strip_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// A token split into its parts, signature not yet checked.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub alg: Alg,
    pub kid: String,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

/// Decodes unpadded base64url (RFC 4648 §5), refusing anything else.
pub fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(((bits >> count) & 0xff) as u8);
        }
    }
    // A lone trailing character (6 bits) cannot encode a byte; leftover bits must be zero.
    if count >= 6 || bits & ((1 << count) - 1) != 0 {
        return None;
    }
    Some(out)
}

/// Splits a compact JWS and reads its header. Refuses unsigned and unsupported algorithms
/// and tokens without a key id, before any key is looked up.
pub fn parse(token: &str) -> Result<Unverified<'_>, String> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("token is longer than {MAX_TOKEN_LEN} bytes"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT: expected three dot-separated parts".into());
    };
    let header_json = base64url(header).ok_or("JWT header is not base64url")?;
    let header: Value =
        serde_json::from_slice(&header_json).map_err(|_| "JWT header is not JSON")?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Alg::Rs256,
        Some("ES256") => Alg::Es256,
        Some(a) if a.eq_ignore_ascii_case("none") => {
            return Err("unsigned token (alg \"none\") refused".into());
        }
        Some(other) => {
            return Err(format!(
                "token algorithm {other:?} is not accepted (RS256 or ES256)"
            ));
        }
        None => return Err("JWT header has no alg".into()),
    };
    if header.get("crit").is_some() {
        return Err("JWT header has critical extensions, which are not supported".into());
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or("JWT header has no kid (key id)")?
        .to_owned();
    let payload = base64url(payload).ok_or("JWT payload is not base64url")?;
    let signature = base64url(signature).ok_or("JWT signature is not base64url")?;
    let signing_input = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
    Ok(Unverified {
        alg,
        kid,
        signing_input,
        payload,
        signature,
    })
}

impl Unverified<'_> {
    /// Checks the signature with `key` and returns the claims. The key's type must match
    /// the header's algorithm (an RSA key never verifies an ES256 token, and so on).
    pub fn verify(self, key: &PublicKey) -> Result<Value, String> {
        let message = self.signing_input.as_bytes();
        let ok = match (self.alg, key) {
            (Alg::Rs256, PublicKey::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, &self.signature)
                .is_ok(),
            (Alg::Es256, PublicKey::P256 { point }) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, &self.signature)
                    .is_ok()
            }
            (alg, key) => {
                return Err(format!(
                    "key {:?} is {key:?} but the token says {alg:?}",
                    self.kid
                ));
            }
        };
        if !ok {
            return Err(format!("bad signature (key {:?})", self.kid));
        }
        let claims: Value =
            serde_json::from_slice(&self.payload).map_err(|_| "JWT payload is not JSON")?;
        if !claims.is_object() {
            return Err("JWT claims are not a JSON object".into());
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_strict() {
        assert_eq!(base64url("").as_deref(), Some(&b""[..]));
        assert_eq!(base64url("Zm9vYmFy").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(base64url("Zm9vYg").as_deref(), Some(&b"foob"[..]));
        assert_eq!(base64url("_-8").as_deref(), Some(&[0xff, 0xef][..]));
        for bad in ["Zm9vYg==", "Zm9v+g", "Z", "Zm9vYh"] {
            assert_eq!(base64url(bad), None, "{bad}");
        }
    }

    #[test]
    fn headers_are_checked_before_keys() {
        let enc = |json: &str| {
            let mut out = String::new();
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            for chunk in json.as_bytes().chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(char::from(alphabet[(n >> (18 - 6 * i)) as usize & 63]));
                }
            }
            out
        };
        let token = |header: &str| format!("{}.{}.", enc(header), enc("{}"));
        let cases = [
            (r#"{"alg":"none","kid":"k"}"#, "alg \"none\""),
            (r#"{"alg":"HS256","kid":"k"}"#, "\"HS256\" is not accepted"),
            (r#"{"alg":"RS256"}"#, "no kid"),
            (r#"{"kid":"k"}"#, "no alg"),
            (r#"{"alg":"ES256","kid":"k","crit":["x"]}"#, "critical"),
        ];
        for (header, expected) in cases {
            let e = parse(&token(header)).expect_err(header);
            assert!(e.contains(expected), "{header}: {e}");
        }
        assert!(parse("a.b").is_err());
        assert!(parse(&"a".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn key_sets_skip_foreign_keys_and_refuse_weak_ones() {
        let p256 = r#"{"kty":"EC","crv":"P-256","kid":"ec","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#;
        let set = KeySet::parse(
            format!(r#"{{"keys":[{{"kty":"oct","k":"c2VjcmV0"}},{{"kty":"EC","crv":"P-384","x":"","y":""}},{p256}]}}"#)
                .as_bytes(),
        )
        .expect("one usable key");
        assert_eq!(set.len(), 1);
        assert!(set.get("ec").is_some());
        let weak = r#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}"#;
        assert!(
            KeySet::parse(weak.as_bytes())
                .expect_err("weak")
                .to_string()
                .contains("2048")
        );
        assert!(KeySet::parse(br#"{"keys":[]}"#).is_err());
        assert!(KeySet::parse(b"[]").is_err());
    }
}
