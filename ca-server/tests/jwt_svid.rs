//! JWT-SVIDs at the CA: signed only for a verified, unrevoked client certificate, with `sub`
//! from it, audience required and lifetime capped; the key is its own (0600 file, in the
//! bundle), created for a data directory that predates it, and its rotation refuses what
//! would break validation.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tonic::Code;
use trellis_identity::clock::{Clock, ManualClock};
use trellis_identity::jwt_svid::{self, JwtSvidError};
use trellis_proto::admin::v1::{
    ActivateJwtKeyRequest, AddJwtKeyRequest, ListJwtKeysRequest, RetireJwtKeyRequest,
    RevokeCertificateRequest,
};
use trellis_proto::ca::v1::{MintJwtSvidRequest, MintJwtSvidResponse};

fn mint(audience: &[&str], ttl_seconds: u32) -> MintJwtSvidRequest {
    MintJwtSvidRequest {
        audience: audience.iter().map(|a| a.to_string()).collect(),
        ttl_seconds,
    }
}

async fn minted(
    ca: &TestCa,
    identity: &trellis_identity::tls::Identity,
    audience: &[&str],
    ttl: u32,
) -> Result<MintJwtSvidResponse, tonic::Status> {
    ca.workload(Some(identity))
        .await
        .mint_jwt_svid(mint(audience, ttl))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_jwt_svid_names_the_client_certificate_and_verifies_with_the_bundle_key() {
    let clock = Arc::new(ManualClock::new(std::time::SystemTime::now()));
    let ca = TestCa::start_with_clock(clock.clone()).await;
    let (key, issued) = ca.bootstrap("/ns/a/sa/web").await;
    let identity = identity_of(&key, &issued);

    let token = minted(&ca, &identity, &["billing"], 0)
        .await
        .expect("minted");
    assert_eq!(token.spiffe_id, "spiffe://cluster.local/ns/a/sa/web");
    let bundle = ca.bundle();
    assert_eq!(
        bundle.jwt_keys().len(),
        1,
        "one JWT key from the first start"
    );
    let valid = jwt_svid::validate(&token.token, "billing", &bundle, clock.now()).expect("valid");
    assert_eq!(valid.spiffe_id.as_str(), token.spiffe_id);
    let exp = valid.claims["exp"].as_u64().expect("exp");
    let iat = valid.claims["iat"].as_u64().expect("iat");
    assert_eq!(exp - iat, 300, "default 5 minutes");
    assert!(
        !format!("{token:?}").contains(&token.token),
        "Debug redacts"
    );

    // Capped at the configured maximum (1 h by default).
    let long = minted(&ca, &identity, &["billing"], 86_400)
        .await
        .expect("minted");
    let claims = jwt_svid::validate(&long.token, "billing", &bundle, clock.now())
        .expect("valid")
        .claims;
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        3600
    );
    clock.advance(Duration::from_secs(301));
    assert!(matches!(
        jwt_svid::validate(&token.token, "billing", &bundle, clock.now()),
        Err(JwtSvidError::Expired(_))
    ));

    // The key file is 0600 and not an X.509 key.
    let keys = ca.data_dir().join("keys");
    let kid = &bundle.jwt_keys()[0].key_id;
    let mode = std::fs::metadata(keys.join(format!("jwt-{kid}.key.pem")))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn no_certificate_a_revoked_one_or_no_audience_gets_no_token() {
    let ca = TestCa::start().await;
    let (key, issued) = ca.bootstrap("/ns/a/sa/web").await;
    let identity = identity_of(&key, &issued);

    let (code, message) = code_and_message(
        ca.workload(None)
            .await
            .mint_jwt_svid(mint(&["billing"], 0))
            .await
            .expect_err("no client certificate"),
    );
    assert_eq!(code, Code::Unauthenticated, "{message}");

    for audience in [&[][..], &[""][..], &["billing", " "][..]] {
        let (code, message) = code_and_message(
            minted(&ca, &identity, audience, 0)
                .await
                .expect_err("no audience"),
        );
        assert_eq!(code, Code::InvalidArgument, "{audience:?}: {message}");
    }

    ca.admin()
        .await
        .revoke_certificate(RevokeCertificateRequest {
            serial: issued.serial.clone(),
            spiffe_id: String::new(),
            reason: "key compromise".into(),
            reason_code: 0,
        })
        .await
        .expect("revoked");
    let (code, message) = code_and_message(
        minted(&ca, &identity, &["billing"], 0)
            .await
            .expect_err("revoked"),
    );
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("revoked"), "{message}");
}

#[tokio::test]
async fn rotation_refuses_an_unacknowledged_key_and_retiring_a_key_whose_tokens_live() {
    let clock = Arc::new(ManualClock::new(std::time::SystemTime::now()));
    let ca = TestCa::start_with_clock(clock.clone()).await;
    let (key, issued) = ca.bootstrap("/ns/a/sa/web").await;
    let identity = identity_of(&key, &issued);
    let mut workload = ca.workload(Some(&identity)).await;
    workload
        .ack_trust_bundle(trellis_proto::ca::v1::AckTrustBundleRequest {
            version: ca.bundle().version(),
        })
        .await
        .expect("ack");
    let mut admin = ca.admin().await;
    let old = ca.bundle().jwt_keys()[0].key_id.clone();
    let old_token = minted(&ca, &identity, &["billing"], 0)
        .await
        .expect("minted");

    let added = admin
        .add_jwt_key(AddJwtKeyRequest {})
        .await
        .expect("add")
        .into_inner();
    assert_eq!(added.state, "pending");
    let bundle = ca.bundle();
    assert_eq!(
        bundle.jwt_keys().len(),
        2,
        "the pending key is in the bundle"
    );
    assert_eq!(bundle.version(), added.added_in_bundle_version);

    let activate = |force| ActivateJwtKeyRequest {
        key_id: added.key_id.clone(),
        force,
    };
    let (code, message) = code_and_message(
        admin
            .activate_jwt_key(activate(false))
            .await
            .expect_err("unacked"),
    );
    assert_eq!(code, Code::FailedPrecondition);
    assert!(
        message.contains("spiffe://cluster.local/ns/a/sa/web"),
        "{message}"
    );
    workload
        .ack_trust_bundle(trellis_proto::ca::v1::AckTrustBundleRequest {
            version: bundle.version(),
        })
        .await
        .expect("ack");
    admin
        .activate_jwt_key(activate(false))
        .await
        .expect("activated once acknowledged");

    let new_token = minted(&ca, &identity, &["billing"], 0)
        .await
        .expect("minted");
    let kid = |t: &str| jsonwebtoken::decode_header(t).expect("header").kid;
    assert_eq!(kid(&new_token.token), Some(added.key_id.clone()));
    assert_eq!(kid(&old_token.token), Some(old.clone()));
    // Both validate: the retiring key stays in the bundle.
    for t in [&old_token.token, &new_token.token] {
        jwt_svid::validate(t, "billing", &ca.bundle(), clock.now()).expect("valid");
    }

    let retire = |force| RetireJwtKeyRequest {
        key_id: old.clone(),
        force,
    };
    let (code, message) = code_and_message(
        admin
            .retire_jwt_key(retire(false))
            .await
            .expect_err("live tokens"),
    );
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    let keys = admin
        .list_jwt_keys(ListJwtKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys;
    let states: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| (k.key_id.as_str(), k.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            (old.as_str(), "retiring"),
            (added.key_id.as_str(), "active")
        ]
    );
    let (code, _) = code_and_message(
        admin
            .retire_jwt_key(RetireJwtKeyRequest {
                key_id: added.key_id.clone(),
                force: true,
            })
            .await
            .expect_err("the active key"),
    );
    assert_eq!(code, Code::FailedPrecondition);

    clock.advance(Duration::from_secs(3600 + 6));
    admin.retire_jwt_key(retire(false)).await.expect("retired");
    let bundle = ca.bundle();
    assert_eq!(bundle.jwt_keys().len(), 1);
    assert!(matches!(
        jwt_svid::validate(&old_token.token, "billing", &bundle, clock.now()),
        Err(JwtSvidError::UnknownKey(..) | JwtSvidError::Expired(_))
    ));
}

#[tokio::test]
async fn a_data_directory_from_before_jwt_svids_gets_a_key_at_start() {
    let mut ca = TestCa::start().await;
    let kid = ca.bundle().jwt_keys()[0].key_id.clone();
    assert_eq!(
        ca.bundle().version(),
        1,
        "a new CA's key is in its first bundle"
    );
    ca.restart().await;
    assert_eq!(
        ca.bundle().jwt_keys()[0].key_id,
        kid,
        "the key survives a restart"
    );
    // Simulate an older data directory: no JWT key records, no key file.
    let data = ca.data_dir();
    ca.running
        .take()
        .expect("running")
        .shutdown()
        .await
        .expect("stop");
    {
        let db = sled::open(data.join("db")).expect("db");
        db.drop_tree("jwt_keys").expect("drop");
        db.flush().expect("flush");
    }
    std::fs::remove_file(data.join("keys").join(format!("jwt-{kid}.key.pem"))).expect("rm");
    ca.running = Some(
        trellis_ca::start_with_clock(config_for(data), ca.clock.clone())
            .await
            .expect("CA starts"),
    );
    let keys = ca.bundle().jwt_keys().to_vec();
    assert_eq!(keys.len(), 1);
    assert_ne!(keys[0].key_id, kid, "a new key");
    assert_eq!(
        ca.bundle().version(),
        2,
        "a new bundle version, so sidecars holding version 1 take the key in"
    );
}
