//! Trust-root rotation at the CA: add → activate → retire, each safety refusal, and the
//! admin credentials following the new root.

mod common;

use std::time::SystemTime;

use common::*;
use rustls_pki_types::CertificateDer;
use tonic::Code;
use trellis_identity::bundle::Usage;
use trellis_identity::tls::Identity;
use trellis_identity::{TrustBundle, WorkloadKey};
use trellis_proto::admin::v1::{
    ActivateRootRequest, AddRootRequest, GetStatusRequest, ListRootsRequest, RetireRootRequest,
};
use trellis_proto::ca::v1::{AckTrustBundleRequest, CertifyResponse};

fn root_of(ca: &TestCa, issued: &CertifyResponse) -> String {
    let chain: Vec<CertificateDer> = issued
        .chain_der
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    ca.bundle()
        .verify(&chain, SystemTime::now(), Usage::Client)
        .expect("verifies against the current bundle")
        .root_id
}

async fn renew(ca: &TestCa, identity: &Identity, key: &WorkloadKey) -> CertifyResponse {
    ca.workload(Some(identity))
        .await
        .certify(renewal_request(key.csr_der(None).expect("csr")))
        .await
        .expect("renewal")
        .into_inner()
}

async fn add_activate_retire_with_every_safety_check(backend: Backend) {
    let ca = TestCa::start_with_store(backend).await;
    let mut admin = ca.admin().await;
    let old_root = ca.bundle().root_ids()[0].clone();

    // A live workload that reports its bundle version.
    let (key, issued) = ca.bootstrap("/ns/app/sa/web").await;
    let identity = identity_of(&key, &issued);
    let mut workload = ca.workload(Some(&identity)).await;
    workload
        .ack_trust_bundle(AckTrustBundleRequest { version: 1 })
        .await
        .expect("ack");

    // 1. Add: the bundle grows, the new root is pending.
    let new_root = admin
        .add_root(AddRootRequest::default())
        .await
        .expect("add")
        .into_inner();
    assert_eq!(new_root.state, "pending");
    assert_eq!(new_root.added_in_bundle_version, 2);
    assert_eq!(ca.bundle().version(), 2);
    assert_eq!(ca.bundle().roots().len(), 2);
    let on_disk = std::fs::read(ca.data_dir().join("bundle.pem")).expect("bundle.pem");
    assert_eq!(
        TrustBundle::from_pem(ca.trust_domain(), 0, &on_disk)
            .expect("pem")
            .roots()
            .len(),
        2,
        "bundle.pem follows"
    );

    // 2. Activation is refused while the workload has not acknowledged version 2.
    let refused = admin
        .activate_root(ActivateRootRequest {
            root_id: new_root.id.clone(),
            force: false,
        })
        .await
        .expect_err("not converged");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("1 of 1 live workload has not yet received"),
        "{}",
        refused.message()
    );
    assert!(
        refused
            .message()
            .contains("spiffe://cluster.local/ns/app/sa/web"),
        "{}",
        refused.message()
    );
    let roots = admin
        .list_roots(ListRootsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        roots.unconverged_workloads,
        vec!["spiffe://cluster.local/ns/app/sa/web".to_owned()]
    );

    workload
        .ack_trust_bundle(AckTrustBundleRequest { version: 2 })
        .await
        .expect("ack");
    let active = admin
        .activate_root(ActivateRootRequest {
            root_id: new_root.id.clone(),
            force: false,
        })
        .await
        .expect("converged: activates")
        .into_inner();
    assert_eq!(active.state, "active");
    let roots = admin
        .list_roots(ListRootsRequest {})
        .await
        .expect("list")
        .into_inner();
    let old = roots
        .roots
        .iter()
        .find(|r| r.id == old_root)
        .expect("old root listed");
    assert_eq!(old.state, "retiring");
    assert_eq!(
        ca.bundle().version(),
        2,
        "activation does not change the bundle"
    );

    // 3. Retiring the old root is refused while the workload's newest certificate uses it.
    let refused = admin
        .retire_root(RetireRootRequest {
            root_id: old_root.clone(),
            force: false,
        })
        .await
        .expect_err("still in use");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("ns/app/sa/web"),
        "{}",
        refused.message()
    );
    // The active root can never be retired.
    let refused = admin
        .retire_root(RetireRootRequest {
            root_id: new_root.id.clone(),
            force: true,
        })
        .await
        .expect_err("active root");
    assert!(
        refused.message().contains("active"),
        "{}",
        refused.message()
    );

    // 4. The workload renews onto the new root; now the old root can go.
    let renewed = renew(&ca, &identity, &key).await;
    assert_eq!(
        root_of(&ca, &renewed),
        new_root.id,
        "renewals move to the new root"
    );
    let retire = || {
        let mut admin = admin.clone();
        let root_id = old_root.clone();
        async move {
            admin
                .retire_root(RetireRootRequest {
                    root_id,
                    force: false,
                })
                .await
        }
    };
    let retired = match retire().await {
        Ok(retired) => retired,
        // On a store other replicas may share, they get a few seconds to follow the
        // activation before the root they may still serve under can go.
        Err(refused) if backend == Backend::Postgres => {
            assert!(
                refused.message().contains("other replicas"),
                "{}",
                refused.message()
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                match retire().await {
                    Ok(retired) => break retired,
                    Err(e) if std::time::Instant::now() < deadline => {
                        assert!(e.message().contains("other replicas"), "{}", e.message());
                    }
                    Err(e) => panic!("still refused: {}", e.message()),
                }
            }
        }
        Err(refused) => panic!("no longer used, yet refused: {}", refused.message()),
    }
    .into_inner();
    assert_eq!(retired.state, "retired");
    assert_eq!(ca.bundle().version(), 3);
    assert_eq!(ca.bundle().root_ids(), std::slice::from_ref(&new_root.id));

    // The admin credentials in the data directory moved to the new root and still work.
    let status = ca
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("admin still works");
    assert_eq!(
        status
            .into_inner()
            .intermediate
            .expect("intermediate")
            .root_id,
        new_root.id
    );
    // The old certificate no longer verifies; the renewed one does.
    let renewed_identity = identity_of(&key, &renewed);
    renew(&ca, &renewed_identity, &key).await;
}

async fn forced_steps_go_through_and_say_so_in_the_audit_log(backend: Backend) {
    let ca = TestCa::start_with_store(backend).await;
    let mut admin = ca.admin().await;
    let old_root = ca.bundle().root_ids()[0].clone();
    let (key, issued) = ca.bootstrap("/ns/app/sa/api").await;
    ca.workload(Some(&identity_of(&key, &issued)))
        .await
        .ack_trust_bundle(AckTrustBundleRequest { version: 1 })
        .await
        .expect("ack");
    let new_root = admin
        .add_root(AddRootRequest::default())
        .await
        .expect("add")
        .into_inner();
    admin
        .activate_root(ActivateRootRequest {
            root_id: new_root.id.clone(),
            force: true,
        })
        .await
        .expect("forced activation");
    admin
        .retire_root(RetireRootRequest {
            root_id: old_root,
            force: true,
        })
        .await
        .expect("forced retirement");
    // This connection's admin certificate chained to the retired root: it is refused now.
    let stale = admin
        .get_status(GetStatusRequest {})
        .await
        .expect_err("old admin cert refused");
    assert_eq!(stale.code(), Code::Unauthenticated);
    // The re-issued admin credentials in the data directory work.
    let mut admin = ca.admin().await;
    let events = admin
        .list_audit_events(trellis_proto::admin::v1::ListAuditEventsRequest {
            after_sequence: 0,
            limit: 0,
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "root_activated" && e.detail.contains("forced"))
    );
    assert!(events.iter().any(|e| e.kind == "root_retired"));
    // Unknown roots are NotFound.
    let missing = admin
        .activate_root(ActivateRootRequest {
            root_id: "0000".into(),
            force: false,
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);
}

async fn a_root_can_be_imported_with_or_without_its_key(backend: Backend) {
    use trellis_identity::profile::{SigningCa, new_root};
    let ca = TestCa::start_with_store(backend).await;
    let mut admin = ca.admin().await;
    let td = ca.trust_domain();
    let day = std::time::Duration::from_secs(86_400);
    let make = || {
        let root = new_root(&td, SystemTime::now(), 30 * day).expect("root");
        let signer = SigningCa::new(root.cert.clone(), root.key).expect("signer");
        (
            trellis_identity::pem::certs_to_pem(&[root.cert]),
            signer.key().serialize_pem(),
        )
    };

    // With its key: imported pending, and it can be activated.
    let (cert, key) = make();
    let imported = admin
        .add_root(AddRootRequest {
            certificate_pem: cert.clone().into_bytes(),
            private_key_pem: key.into_bytes(),
        })
        .await
        .expect("import")
        .into_inner();
    assert_eq!(imported.state, "pending");
    assert_eq!(ca.bundle().roots().len(), 2);
    let again = admin
        .add_root(AddRootRequest {
            certificate_pem: cert.into_bytes(),
            private_key_pem: vec![],
        })
        .await
        .expect_err("duplicate");
    assert_eq!(again.code(), Code::FailedPrecondition);
    admin
        .activate_root(ActivateRootRequest {
            root_id: imported.id.clone(),
            force: true,
        })
        .await
        .expect("an imported root with its key activates");

    // Without its key: trusted, but activation explains why it cannot sign.
    let (cert, _) = make();
    let keyless = ca
        .admin()
        .await
        .add_root(AddRootRequest {
            certificate_pem: cert.into_bytes(),
            private_key_pem: vec![],
        })
        .await
        .expect("import without key")
        .into_inner();
    let refused = ca
        .admin()
        .await
        .activate_root(ActivateRootRequest {
            root_id: keyless.id,
            force: true,
        })
        .await
        .expect_err("no key");
    assert!(
        refused.message().contains("private key"),
        "{}",
        refused.message()
    );

    // A key that does not belong to the certificate, and a leaf posing as a root: refused.
    let (cert, _) = make();
    let (_, other_key) = make();
    let mismatch = ca
        .admin()
        .await
        .add_root(AddRootRequest {
            certificate_pem: cert.into_bytes(),
            private_key_pem: other_key.into_bytes(),
        })
        .await
        .expect_err("mismatch");
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    let (_, leaf) = ca.bootstrap("/ns/app/sa/poser").await;
    let poser = ca
        .admin()
        .await
        .add_root(AddRootRequest {
            certificate_pem: trellis_identity::pem::certs_to_pem(&leaf.chain_der[..1]).into_bytes(),
            private_key_pem: vec![],
        })
        .await
        .expect_err("a leaf is not a root");
    assert!(
        poser.message().contains("self-signed CA"),
        "{}",
        poser.message()
    );
}

/// The activation check answers the same after a restart: acknowledgements are stored, and
/// a workload that never acknowledged counts as not converged rather than being skipped.
async fn acknowledgements_survive_a_restart_and_a_silent_workload_blocks_activation(
    backend: Backend,
) {
    let mut ca = TestCa::start_with_store(backend).await;
    let (web_key, web) = ca.bootstrap("/ns/app/sa/web").await;
    let web = identity_of(&web_key, &web);
    // A second workload that holds a certificate but never acknowledges a bundle.
    let _silent = ca.bootstrap("/ns/app/sa/silent").await;
    let new_root = ca
        .admin()
        .await
        .add_root(AddRootRequest::default())
        .await
        .expect("add")
        .into_inner();
    ca.workload(Some(&web))
        .await
        .ack_trust_bundle(AckTrustBundleRequest { version: 2 })
        .await
        .expect("ack");

    ca.restart().await;

    let refused = ca
        .admin()
        .await
        .activate_root(ActivateRootRequest {
            root_id: new_root.id.clone(),
            force: false,
        })
        .await
        .expect_err("the silent workload has not converged");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .starts_with("1 of 2 live workloads have not yet received"),
        "web's acknowledgement survived the restart: {}",
        refused.message()
    );
    assert!(
        refused
            .message()
            .contains("spiffe://cluster.local/ns/app/sa/silent")
            && !refused.message().contains("sa/web"),
        "{}",
        refused.message()
    );
    let roots = ca
        .admin()
        .await
        .list_roots(ListRootsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(roots.live_workloads, 2);
    assert_eq!(
        roots.unconverged_workloads,
        vec!["spiffe://cluster.local/ns/app/sa/silent".to_owned()]
    );
}

#[tokio::test]
async fn the_admin_directory_trusts_a_new_root_before_it_signs_and_keeps_its_key() {
    let ca = TestCa::start().await;
    let admin_dir = ca.data_dir().join("admin");
    let read = |name: &str| std::fs::read(admin_dir.join(name)).expect("admin file");
    let roots_in_admin_bundle = || {
        TrustBundle::from_pem(ca.trust_domain(), 0, &read("bundle.pem"))
            .expect("admin bundle")
            .root_ids()
            .to_vec()
    };
    let key_before = read("admin.key.pem");
    let cert_before = read("admin.pem");
    let mut admin = ca.admin().await;
    let new_root = admin
        .add_root(AddRootRequest::default())
        .await
        .expect("add")
        .into_inner();
    // A `trellis` reading the admin directory trusts the new root as soon as it is added,
    // before any serving certificate moves under it.
    assert!(
        roots_in_admin_bundle().contains(&new_root.id),
        "{:?}",
        roots_in_admin_bundle()
    );
    admin
        .activate_root(ActivateRootRequest {
            root_id: new_root.id.clone(),
            force: true,
        })
        .await
        .expect("activate");
    // Only the certificate changed: a reader never finds a key and a certificate that do
    // not match.
    // Compared, never printed: it is a private key.
    assert!(
        read("admin.key.pem") == key_before,
        "the admin key was replaced"
    );
    assert_ne!(
        read("admin.pem"),
        cert_before,
        "the admin certificate is new"
    );
    let chain = trellis_identity::pem::certs_from_pem(&read("admin.pem")).expect("chain");
    let verified = ca
        .bundle()
        .verify(&chain, SystemTime::now(), Usage::Client)
        .expect("the new admin certificate verifies");
    assert_eq!(verified.root_id, new_root.id);
}

on_both_stores!(
    forced_steps_go_through_and_say_so_in_the_audit_log,
    a_root_can_be_imported_with_or_without_its_key,
    add_activate_retire_with_every_safety_check,
    acknowledgements_survive_a_restart_and_a_silent_workload_blocks_activation,
);
