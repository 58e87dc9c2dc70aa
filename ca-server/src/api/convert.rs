//! Conversions between the CA's types and the protobuf messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use trellis_identity::TrustBundle;
use trellis_proto::admin::v1 as admin;
use trellis_proto::ca::v1 as ca;

use crate::issuance::Issued;
use crate::jwt_svid::JwtKeyView;
use crate::roots::RootView;
use crate::store::{CertRecord, RevocationRecord};

pub fn timestamp(t: SystemTime) -> Option<Timestamp> {
    Some(Timestamp::from(t))
}

pub fn unix_timestamp(secs: u64) -> Option<Timestamp> {
    timestamp(UNIX_EPOCH + Duration::from_secs(secs))
}

pub fn bundle(b: &TrustBundle) -> ca::TrustBundle {
    ca::TrustBundle {
        federated_bundles: b.federated().values().map(|f| bundle(f)).collect(),
        trust_domain: b.trust_domain().to_string(),
        version: b.version(),
        root_certificates_der: b.roots().iter().map(|r| r.to_vec()).collect(),
        jwt_keys: b
            .jwt_keys()
            .iter()
            .map(|k| ca::JwtKey {
                key_id: k.key_id.clone(),
                public_key: k.public_key.clone(),
            })
            .collect(),
    }
}

pub fn issued(i: Issued) -> ca::CertifyResponse {
    ca::CertifyResponse {
        spiffe_id: i.spiffe_id.to_string(),
        chain_der: i.chain.iter().map(|c| c.to_vec()).collect(),
        serial: i.serial,
        not_before: timestamp(i.not_before),
        not_after: timestamp(i.not_after),
        bundle: Some(bundle(&i.bundle)),
    }
}

pub fn record(
    r: CertRecord,
    der: Vec<u8>,
    revocation: Option<RevocationRecord>,
) -> admin::CertificateRecord {
    admin::CertificateRecord {
        revoked_at: revocation
            .as_ref()
            .and_then(|v| unix_timestamp(v.revoked_at)),
        revocation_reason: revocation.map(|v| v.reason).unwrap_or_default(),
        serial: r.serial,
        spiffe_id: r.spiffe_id,
        dns_names: r.dns_names,
        not_before: unix_timestamp(r.not_before),
        not_after: unix_timestamp(r.not_after),
        issued_at: unix_timestamp(r.issued_at),
        root_id: r.root_id,
        issued_via: r.issued_via,
        certificate_der: der,
    }
}

/// A requested TTL in seconds; 0 means "the default".
pub fn ttl(seconds: u32) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(u64::from(seconds)))
}

pub fn root(view: RootView) -> admin::RootInfo {
    let fingerprint = trellis_identity::bundle::spki_sha256(&view.record.cert_der)
        .map(|fp| trellis_identity::hex::encode(&fp))
        .unwrap_or_default();
    admin::RootInfo {
        id: view.record.id,
        spki_sha256: fingerprint,
        state: view.record.state.as_str().into(),
        not_before: timestamp(view.info.not_before),
        not_after: timestamp(view.info.not_after),
        live_certificates: view.live_certificates,
        added_in_bundle_version: view.record.added_in_bundle_version,
        workloads_using: view.workloads_using,
        certificate: view.record.cert_der,
    }
}

pub fn federation(f: crate::federation::Federation) -> admin::FederationInfo {
    let next = f.next_refresh_at();
    admin::FederationInfo {
        trust_domain: f.record.trust_domain,
        endpoint_url: f.record.endpoint_url,
        endpoint_spiffe_id: f.record.endpoint_spiffe_id,
        sequence: f.bundle.sequence,
        x509_authorities: f
            .bundle
            .x509_authorities
            .iter()
            .map(|c| c.to_vec())
            .collect(),
        jwt_authorities: u32::try_from(f.bundle.jwt_authorities.len()).unwrap_or(u32::MAX),
        refreshed_at: unix_timestamp(f.record.refreshed_at),
        last_attempt_at: (f.record.last_attempt_at > 0)
            .then(|| unix_timestamp(f.record.last_attempt_at))
            .flatten(),
        last_error: f.record.last_error.unwrap_or_default(),
        next_refresh_at: unix_timestamp(next),
    }
}

pub fn jwt_key(view: JwtKeyView) -> admin::JwtKeyInfo {
    let key = trellis_identity::bundle::JwtKey {
        key_id: view.record.kid.clone(),
        public_key: view.record.public_key.clone(),
    };
    admin::JwtKeyInfo {
        public_jwk: trellis_identity::jwk::to_json(&key).unwrap_or_default(),
        key_id: view.record.kid,
        state: view.record.state.as_str().into(),
        created_at: unix_timestamp(view.record.created_at),
        added_in_bundle_version: view.record.added_in_bundle_version,
        deactivated_at: view.record.deactivated_at.and_then(unix_timestamp),
        retirable_at: view.retirable_at.and_then(timestamp),
    }
}
