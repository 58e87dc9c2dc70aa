//! A `trellis-sidecar` inside a pod of a [`crate::Lan`], bootstrapped with a join token from
//! a CA that runs in the LAN's bridge namespace ([`Ca::start_in`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::{Ca, Netns, Process, command, http};

/// How long a sidecar may take to start and get its first certificate.
const START: Duration = Duration::from_secs(60);

/// A sidecar running in a pod; stopped when dropped.
#[derive(Debug)]
pub struct PodSidecar {
    pub process: Process,
    /// Its admin address as printed (reach it from inside the pod).
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
        let mut cmd = command("trellis-sidecar");
        cmd.arg("--config").arg(&config).envs(env.iter().copied());
        let mut process = Process::spawn(name, ns.wrap(&cmd), ca.scratch());
        let line = process.wait_for_line(START, |l| l.starts_with("trellis-sidecar admin on"));
        let admin = addr_after(&line, "admin on").expect("admin address");
        let local_admin = SocketAddr::from(([127, 0, 0, 1], admin.port()));
        ns.enter(|| http::wait_ready(local_admin, START));
        Self {
            process,
            admin,
            outbound: outbound_addrs(&line),
        }
    }
}

/// The first socket address after `after` in a sidecar's start line.
pub fn addr_after(line: &str, after: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(after)? + after.len()..];
    rest.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|w| w.parse().ok())
}

/// Every outbound listener's address in a sidecar's start line.
pub fn outbound_addrs(line: &str) -> Vec<SocketAddr> {
    line.match_indices("outbound on ")
        .filter_map(|(i, m)| addr_after(&line[i..], m))
        .collect()
}
