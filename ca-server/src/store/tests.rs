//! The store's write rules that no API test reaches: a serial collision.

use super::*;

fn record(serial: &[u8], spiffe_id: &str) -> CertRecord {
    CertRecord {
        serial: trellis_identity::hex::encode(serial),
        spiffe_id: spiffe_id.into(),
        dns_names: Vec::new(),
        not_before: 1,
        not_after: 2,
        issued_at: 1,
        issued_at_ns: 1,
        root_id: "root".into(),
        intermediate_id: "inter".into(),
        issued_via: "renewal".into(),
    }
}

#[tokio::test]
async fn a_taken_serial_is_refused_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let serial = [0x42u8; 9];
    let first = record(&serial, "spiffe://td/a");
    store
        .record_issuance(&first, b"first", &serial, None, &[])
        .unwrap();

    let second = record(&serial, "spiffe://td/b");
    let refused = store.record_issuance(&second, b"second", &serial, None, &[]);
    assert!(
        matches!(refused, Err(RecordError::SerialTaken)),
        "{refused:?}"
    );
    assert!(store.certificates_of("spiffe://td/b").unwrap().is_empty());
    let (kept, der) = store.certificate(&serial).unwrap().unwrap();
    assert_eq!(
        (kept.spiffe_id.as_str(), der.as_slice()),
        ("spiffe://td/a", &b"first"[..])
    );

    // With a join token, the collision costs the client nothing: the token stays unused.
    let hash = [7u8; 32];
    let token = TokenRecord {
        spiffe_id: "spiffe://td/b".into(),
        created_at: 0,
        expires_at: 100,
        created_by: "test".into(),
        used_at: None,
        used_for_serial: None,
    };
    store.put_token(&hash, &token).unwrap();
    let refused = store.record_issuance(
        &second,
        b"second",
        &serial,
        Some(TokenUse { hash, now: 10 }),
        &[],
    );
    assert!(
        matches!(refused, Err(RecordError::SerialTaken)),
        "{refused:?}"
    );
    assert!(
        store.check_token(&hash, 10).is_ok(),
        "the token is still redeemable"
    );
}
