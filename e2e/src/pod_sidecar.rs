//! A `trellis-sidecar` inside a pod of a [`crate::Lan`], bootstrapped with a join token from
//! a CA that runs in the LAN's bridge namespace ([`Ca::start_in`]).

use std::net::SocketAddr;
use std::time::Duration;

use trellis_identity::ready::Ready;

use crate::{Ca, Netns, Process, command, http, ready_path};

/// How long a sidecar may take to start and get its first certificate.
const START: Duration = Duration::from_secs(60);

/// A sidecar running in a pod; stopped when dropped.
#[derive(Debug)]
pub struct PodSidecar {
    pub process: Process,
    /// Its admin address as bound (reach it from inside the pod).
    pub admin: SocketAddr,
    /// Its outbound listeners, in the order of the config (loopback of the pod).
    pub outbound: Vec<SocketAddr>,
}

impl PodSidecar {
    /// Starts a sidecar named `name` for `spiffe_id` in `ns`; `tables` follow its `[ca]`
    /// table (`[admin]`, `[inbound]`, `[[outbound]]`), `env` is added to its environment.
    /// Returns once it is ready (holds a certificate).
    pub fn start(
        ns: &Netns,
        ca: &Ca,
        name: &str,
        spiffe_id: &str,
        tables: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let token = ca.token_file(spiffe_id);
        let config = ca.scratch().join(format!("{name}.toml"));
        let text = format!(
            "trust_domain = \"{}\"\n\n[ca]\naddress = \"{}\"\ntrust_bundle = \"{}\"\n\
             join_token_file = \"{}\"\n\n[timeouts]\ndrain = \"3s\"\n\n{tables}\n",
            ca.trust_domain,
            ca.addr,
            ca.bundle_pem().display(),
            token.display(),
        );
        std::fs::write(&config, text).expect("write sidecar config");
        let ready_file = ready_path(ca.scratch(), name);
        let mut cmd = command("trellis-sidecar");
        cmd.arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready_file)
            .envs(env.iter().copied());
        let mut process = Process::spawn(name, ns.wrap(&cmd), ca.scratch());
        let ready = process.wait_for_ready(&ready_file, START);
        let admin = ready.addr("admin").expect("admin address");
        let local_admin = SocketAddr::from(([127, 0, 0, 1], admin.port()));
        ns.enter(|| http::wait_ready(local_admin, START));
        Self {
            process,
            admin,
            outbound: outbound_addrs(&ready),
        }
    }
}

/// A sidecar's outbound listeners from its ready file (`outbound.0`, `outbound.1`, …), in
/// the order of its config.
pub fn outbound_addrs(ready: &Ready) -> Vec<SocketAddr> {
    (0..)
        .map_while(|i| ready.addr(&format!("outbound.{i}")))
        .collect()
}
