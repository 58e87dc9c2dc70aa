//! Root rotation through different replicas of one CA on one PostgreSQL, with the real
//! binaries: a root added through A, activated through B and retired through C while
//! sidecars renew short-lived certificates from all three and the operator's `trellis`
//! calls each replica with that replica's own admin credentials, with no failed request;
//! the safety refusals (a sidecar without the new root, workloads still on the old one,
//! replicas that have not followed the activation yet) hold whichever replica is asked;
//! and two activations at the same moment through two replicas end with one active root.

mod mesh_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_support::*;
use serde_json::Value;
use trellis_e2e::process::{Signal, send_signal};
use trellis_e2e::{Ca, Outcome, Postgres, command, run};
use trellis_identity::pem;

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A CA on a fresh PostgreSQL and two more replicas of it.
fn three_replicas() -> (Postgres, [Ca; 3]) {
    let db = Postgres::start();
    let a = Ca::start_with(&db.ca_args());
    let (b, c) = (a.replica(), a.replica());
    (db, [a, b, c])
}

/// Where the operator reaches one replica and with what: its address and the admin
/// directory it writes (and rewrites at an activation through any replica).
#[derive(Clone)]
struct Operator {
    name: &'static str,
    addr: SocketAddr,
    admin_dir: PathBuf,
}

impl Operator {
    fn of(name: &'static str, ca: &Ca) -> Self {
        Self {
            name,
            addr: ca.addr,
            admin_dir: ca.admin_dir.clone(),
        }
    }

    /// `trellis ARGS` through this replica, trusting `bundle` for its serving certificate
    /// (the admin directory's own by default).
    fn trellis_trusting(&self, bundle: &Path, args: &[&str]) -> Outcome {
        let mut cmd = command("trellis");
        trellis_e2e::ca::admin_flags(&mut cmd, self.addr, &self.admin_dir, bundle).args(args);
        run(cmd, CLI_TIMEOUT)
    }

    fn trellis(&self, args: &[&str]) -> Outcome {
        self.trellis_trusting(&self.admin_dir.join("bundle.pem"), args)
    }

    fn roots(&self) -> Value {
        self.trellis(&["root", "list", "-o", "json"])
            .success()
            .json()
    }
}

/// The state of root `id` in a `root list`.
fn state(list: &Value, id: &str) -> String {
    root(list, id)["state"].as_str().expect("state").to_owned()
}

fn root<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no root {id} in {list}"))
}

fn active_roots(list: &Value) -> Vec<String> {
    list["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .filter(|r| r["state"] == "active")
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The line a refused `trellis` printed (exit code 1).
fn refusal(outcome: &Outcome) -> String {
    outcome.failure(1)
}

/// Writes root `id` alone, from `ca`'s published bundle, to `out`.
fn write_root(ca: &Ca, id: &str, out: &Path) {
    let bundle = std::fs::read(ca.bundle_pem()).expect("bundle.pem");
    let root = pem::certs_from_pem(&bundle)
        .expect("bundle PEM")
        .into_iter()
        .find(|der| trellis_identity::bundle::root_id(der).expect("root id") == id)
        .unwrap_or_else(|| panic!("root {id} is not in the CA's bundle"));
    std::fs::write(out, pem::certs_to_pem(&[root.to_vec()])).expect("write root");
}

/// `trellis ca status` through every replica in turn, each with its own admin directory,
/// every 100 ms until stopped: what an operator (or a monitoring job) does during a
/// rotation. Every call and every failure is counted.
struct AdminCalls {
    stop: Arc<AtomicBool>,
    calls: Arc<Mutex<(u64, Vec<String>)>>,
    thread: std::thread::JoinHandle<()>,
}

impl AdminCalls {
    fn start(operators: Vec<Operator>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(Mutex::new((0, Vec::new())));
        let thread = {
            let (stop, calls) = (stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    for operator in &operators {
                        let outcome = operator.trellis(&["ca", "status", "-o", "json"]);
                        let mut calls = calls.lock().expect("lock");
                        calls.0 += 1;
                        if outcome.code != Some(0) {
                            calls.1.push(format!(
                                "through {}: {}",
                                operator.name,
                                outcome.stderr.trim()
                            ));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            stop,
            calls,
            thread,
        }
    }

    fn calls(&self) -> u64 {
        self.calls.lock().expect("lock").0
    }

    /// Stops; returns (calls, failures).
    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("admin calls");
        std::mem::take(&mut *self.calls.lock().expect("lock"))
    }
}

/// Every replica's serving certificate chains to `root` (`root_file`, alone): a `trellis`
/// that trusts only that root reaches each of them.
fn serving_under(operators: &[Operator], root_file: &Path) -> bool {
    operators.iter().all(|o| {
        o.trellis_trusting(root_file, &["ca", "status", "-o", "json"])
            .code
            == Some(0)
    })
}

#[test]
fn a_root_added_activated_and_retired_through_three_replicas_under_traffic_fails_no_request() {
    let started = Instant::now();
    let (_db, [a, b, c]) = three_replicas();
    let operators = [
        Operator::of("A", &a),
        Operator::of("B", &b),
        Operator::of("C", &c),
    ];
    let [op_a, op_b, op_c] = operators.clone();
    let addresses = |order: [&Ca; 3]| {
        order
            .iter()
            .map(|ca| ca.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    // One-minute certificates, so every sidecar renews onto the new root within ~40 s.
    // Each sidecar starts at another replica and moves on when one does not answer.
    let ttl = "ttl = \"1m\"";
    let echo = Echo::start();
    let backend = sidecar_on(
        &a,
        &addresses([&b, &c, &a]),
        "backend",
        &id("/ns/demo/sa/backend"),
        ttl,
        &format!(
            "[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{}\"\npolicy = \"deny\"\nallow = [\"{}\"]\n",
            echo.addr,
            id("/ns/demo/sa/frontend")
        ),
    );
    let frontend = sidecar_on(
        &a,
        &addresses([&c, &a, &b]),
        "frontend",
        &id("/ns/demo/sa/frontend"),
        ttl,
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"{}\"]\n",
            backend.inbound.expect("backend inbound"),
            id("/ns/demo/sa/backend")
        ),
    );
    let agents: Vec<Sidecar> = [[&a, &b, &c], [&b, &c, &a], [&c, &a, &b]]
        .into_iter()
        .enumerate()
        .map(|(i, order)| {
            sidecar_on(
                &a,
                &addresses(order),
                &format!("agent-{i}"),
                &id(&format!("/ns/demo/sa/agent-{i}")),
                ttl,
                "",
            )
        })
        .collect();
    let sidecars: Vec<&Sidecar> = [&backend, &frontend].into_iter().chain(&agents).collect();

    // Bounded: at most 10 minutes of either.
    let traffic = SteadyTraffic::start(frontend.outbound[0], Duration::from_secs(600));
    let admin_calls = AdminCalls::start(operators.to_vec());

    let before = op_a.roots();
    let old_root = active_roots(&before).pop().expect("one active root");
    within(
        Duration::from_secs(20),
        "every sidecar acknowledges",
        || {
            let roots = op_c.roots();
            roots["live_workloads"].as_u64() >= Some(5)
                && roots["unconverged_workloads"] == serde_json::json!([])
        },
    );

    // 1. Add through A, while one sidecar (on B first) is held still: it cannot take the
    //    new bundle, and B refuses the activation on the acknowledgements of all replicas.
    let held = &agents[1];
    assert!(send_signal(held.process.id(), Signal::STOP));
    let added = op_a
        .trellis(&["root", "add", "-o", "json"])
        .success()
        .json();
    let new_root = added["root"]["id"].as_str().expect("id").to_owned();
    within(
        Duration::from_secs(5),
        "the other sidecars acknowledge",
        || op_b.roots()["unconverged_workloads"] == serde_json::json!([id("/ns/demo/sa/agent-1")]),
    );
    let line = refusal(&op_b.trellis(&["root", "activate", &new_root]));
    assert!(
        line.contains("/ns/demo/sa/agent-1") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(state(&op_c.roots(), &new_root), "pending");
    assert!(send_signal(held.process.id(), Signal::CONT));
    within(
        Duration::from_secs(5),
        "the held sidecar acknowledges",
        || op_b.roots()["unconverged_workloads"] == serde_json::json!([]),
    );

    // 2. Activate through B. Every replica signs under the new root and serves under it
    //    (a `trellis` trusting only the new root reaches each one) within the 5 s after
    //    which the CA lets the old root be retired; measured: about 0.4-1.3 s here.
    op_b.trellis(&["root", "activate", &new_root]).success();
    let activated_at = Instant::now();
    let new_root_file = a.scratch().join("new-root.pem");
    write_root(&a, &new_root, &new_root_file);
    let moved = within(
        Duration::from_secs(5),
        "every replica serves under the new root",
        || serving_under(&operators, &new_root_file),
    );
    eprintln!("every replica served under the new root {moved:?} after its activation through B");
    for operator in &operators {
        let status = operator
            .trellis(&["ca", "status", "-o", "json"])
            .success()
            .json();
        assert_eq!(
            status["intermediate"]["root_id"], new_root,
            "{} signs under the new root: {status}",
            operator.name
        );
    }

    // 3. Retire the old root through C: refused while workloads' newest certificates
    //    chain to it, whichever replica issued them; the refusal says they move at their
    //    next renewal, and once they have, the retirement goes through.
    let line = refusal(&op_c.trellis(&["root", "retire", &old_root]));
    assert!(
        line.contains("still use") && line.contains("next renewal"),
        "{line}"
    );
    within(
        Duration::from_secs(90),
        "every sidecar renews onto the new root",
        || root(&op_c.roots(), &old_root)["workloads_using"] == 0,
    );
    op_c.trellis(&["root", "retire", &old_root]).success();
    eprintln!(
        "retired through C {:?} after the activation through B",
        activated_at.elapsed()
    );

    // Traffic and admin calls through every replica go on after the retirement.
    let (ok_then, calls_then) = (traffic.ok(), admin_calls.calls());
    within(
        Duration::from_secs(20),
        "requests go on after retirement",
        || traffic.ok() >= ok_then + 40 && admin_calls.calls() >= calls_then + 30,
    );
    let (ok, failed) = traffic.stop();
    let (calls, failures) = admin_calls.stop();

    let after = op_a.roots();
    assert_eq!(active_roots(&after), vec![new_root.clone()]);
    assert_eq!(state(&after, &old_root), "retired");
    let mut renewals = 0;
    for sidecar in &sidecars {
        assert_eq!(
            metric(
                sidecar.admin,
                "trellis_sidecar_renewals_total{result=\"error\""
            ),
            0,
            "a renewal failed"
        );
        renewals += metric(
            sidecar.admin,
            "trellis_sidecar_renewals_total{result=\"ok\"",
        );
    }
    eprintln!(
        "{ok} requests through the mesh, {calls} admin calls through the replicas, {renewals} \
         renewals, in {:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} admin calls failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(failed, 0, "{ok} requests succeeded, {failed} failed");
    assert!(
        ok > 100 && calls > 100,
        "{ok} requests, {calls} admin calls"
    );
    assert!(renewals >= sidecars.len() as u64, "{renewals} renewals");
}

#[test]
fn two_activations_at_once_through_two_replicas_leave_one_active_root() {
    let (_db, [a, b, c]) = three_replicas();
    let operators = [
        Operator::of("A", &a),
        Operator::of("B", &b),
        Operator::of("C", &c),
    ];
    let [op_a, op_b, op_c] = operators.clone();
    // Each round starts at least 5 s after the last activation (the retirement in the
    // round before waits for that), when a new activation is no longer refused for it.
    let mut previous = active_roots(&op_a.roots()).pop().expect("one active root");
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let add = |operator: &Operator| {
            operator
                .trellis(&["root", "add", "-o", "json"])
                .success()
                .json()["root"]["id"]
                .as_str()
                .expect("id")
                .to_owned()
        };
        let (x, y) = (add(&op_a), add(&op_b));
        // Both replicas are told at the same moment, each to activate its own root.
        let go = Arc::new(std::sync::Barrier::new(2));
        let activations: Vec<_> = [(op_a.clone(), x.clone()), (op_b.clone(), y.clone())]
            .into_iter()
            .map(|(operator, id)| {
                let go = go.clone();
                std::thread::spawn(move || {
                    go.wait();
                    operator.trellis(&["root", "activate", &id])
                })
            })
            .collect();
        let outcomes: Vec<Outcome> = activations
            .into_iter()
            .map(|t| t.join().expect("activation"))
            .collect();
        let succeeded: Vec<&str> = outcomes
            .iter()
            .zip([&x, &y])
            .filter(|(o, _)| o.code == Some(0))
            .map(|(_, id)| id.as_str())
            .collect();
        let list = op_c.roots();
        assert_eq!(
            active_roots(&list),
            succeeded,
            "round {round}: one root active, the one whose activation succeeded: {list}"
        );
        let winner = succeeded[0].to_owned();
        let loser = if winner == x { &y } else { &x };
        let refused = outcomes
            .iter()
            .find(|o| o.code != Some(0))
            .expect("one refused");
        let line = refusal(refused);
        assert!(
            line.contains("activated") && line.contains("--force"),
            "{line}"
        );
        assert_eq!(state(&list, loser), "pending", "{list}");
        assert_eq!(state(&list, &previous), "retiring", "{list}");

        // The root that signed until now cannot be retired through C before every replica
        // has followed the activation; then it can (no workload uses it).
        let line = refusal(&op_c.trellis(&["root", "retire", &previous]));
        assert!(
            line.contains("replicas") && line.contains("--force"),
            "{line}"
        );
        within(
            Duration::from_secs(10),
            "the retirement goes through",
            || op_c.trellis(&["root", "retire", &previous]).code == Some(0),
        );
        // The pending loser goes too, so that the next round starts from one root in use.
        op_a.trellis(&["root", "retire", loser]).success();
        // Each replica's own admin credentials moved with the activation, wherever it
        // was made: the operator still reaches every replica with them.
        for operator in &operators {
            operator.trellis(&["ca", "status"]).success();
        }
        previous = winner;
    }
}
