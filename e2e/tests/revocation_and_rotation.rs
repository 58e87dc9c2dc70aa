//! Revocation and rotation end to end with the real binaries: a revocation closes a live connection and
//! refuses new ones within 2 s, and a full add → activate → retire root rotation under a
//! steady stream of requests completes with zero failed requests.

mod mesh_support;

use std::io::Read;
use std::time::{Duration, Instant};

use mesh_support::*;
use trellis_e2e::Ca;
use trellis_proto::admin::v1::{
    ActivateRootRequest, AddRootRequest, ListRootsRequest, RetireRootRequest,
};

#[test]
fn a_revocation_closes_live_connections_and_refuses_new_ones_within_two_seconds() {
    let ca = Ca::start();
    let echo = Echo::start();
    let (backend, frontend) = pair(&ca, &echo, "");
    let outbound = frontend.outbound[0];

    let mut live = live_connection(outbound);

    let mut admin = Admin::connect(&ca);
    let revoked_at = Instant::now();
    let serials = admin
        .revoke_identity(id("/ns/demo/sa/frontend"))
        .expect("revoke");
    assert_eq!(serials.len(), 1);

    // The live connection is closed by the backend's sidecar.
    live.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut rest = Vec::new();
    let closed = matches!(live.read_to_end(&mut rest), Ok(_) | Err(_));
    assert!(closed && rest.is_empty());
    let closed_after = revoked_at.elapsed();
    assert!(
        closed_after < Duration::from_secs(2),
        "live connection closed after {closed_after:?}"
    );

    // A new connection from the revoked frontend is refused.
    let refused_after = within(Duration::from_secs(2), "new connections refused", || {
        round_trip(outbound, b"again")
            .map(|r| r.is_empty())
            .unwrap_or(true)
    });
    assert!(revoked_at.elapsed() < Duration::from_secs(2) + refused_after);
    assert!(
        metric(
            backend.admin,
            "trellis_sidecar_revoked_connections_closed_total"
        ) >= 1
    );
}

#[test]
fn a_full_root_rotation_under_steady_traffic_fails_no_request() {
    let ca = Ca::start();
    let echo = Echo::start();
    // One-minute certificates, so both sidecars renew onto the new root within ~40 s.
    let (_backend, frontend) = pair(&ca, &echo, "ttl = \"1m\"");
    let outbound = frontend.outbound[0];

    // Bounded: at most 10 minutes of requests.
    let traffic = SteadyTraffic::start(outbound, Duration::from_secs(600));

    let mut admin = Admin::connect(&ca);
    let list = |admin: &mut Admin| {
        admin
            .call(|mut c| async move { c.list_roots(ListRootsRequest {}).await })
            .expect("list roots")
    };
    let old_root = list(&mut admin).roots[0].id.clone();

    // 1. Add: both sidecars receive and acknowledge the new bundle.
    let new_root = admin
        .call(|mut c| async move { c.add_root(AddRootRequest::default()).await })
        .expect("add")
        .id;
    within(
        Duration::from_secs(10),
        "both sidecars acknowledge the new bundle",
        || {
            let roots = list(&mut admin);
            roots.live_workloads >= 2 && roots.unconverged_workloads.is_empty()
        },
    );

    // 2. Activate: the safety check passes because every live sidecar has the root.
    let activate_id = new_root.clone();
    admin
        .call(|mut c| async move {
            c.activate_root(ActivateRootRequest {
                root_id: activate_id,
                force: false,
            })
            .await
        })
        .expect("activate");

    // 3. Retire once no workload's newest certificate chains to the old root.
    within(
        Duration::from_secs(90),
        "both sidecars renew onto the new root",
        || {
            let roots = list(&mut admin);
            roots
                .roots
                .iter()
                .find(|r| r.id == old_root)
                .is_some_and(|r| r.workloads_using == 0)
        },
    );
    let retire_id = old_root.clone();
    admin
        .call(|mut c| async move {
            c.retire_root(RetireRootRequest {
                root_id: retire_id,
                force: false,
            })
            .await
        })
        .expect("retire");
    // Keep traffic flowing while both sidecars drop the old root from their bundles.
    let after_retire = traffic.ok();
    within(
        Duration::from_secs(10),
        "requests keep succeeding after retirement",
        || traffic.ok() >= after_retire + 20,
    );
    let (ok, failed) = traffic.stop();

    // The old admin connection's certificate chained to the retired root: reconnect with
    // the admin credentials the CA re-issued under the new root at activation.
    let mut admin = Admin::connect(&ca);
    let roots = list(&mut admin);
    let new = roots
        .roots
        .iter()
        .find(|r| r.id == new_root)
        .expect("new root");
    assert!(
        new.workloads_using >= 2,
        "both sidecars now use the new root"
    );
    assert_eq!(
        roots
            .roots
            .iter()
            .find(|r| r.id == old_root)
            .expect("old")
            .state,
        "retired"
    );
    assert_eq!(failed, 0, "{ok} requests succeeded, some failed");
    assert!(ok > 100);
}
