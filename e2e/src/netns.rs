//! Pods as network namespaces: a [`Lan`] is a bridge in a namespace of its own with pods
//! attached by veth pairs, each pod a namespace with one address on `198.18.<lan>.0/24`
//! (RFC 2544's benchmarking range: never routed, and only ever inside namespaces the test
//! made). Nothing is added to the machine's own namespace, and everything is removed on drop.
//!
//! Programs run inside a pod with [`Netns::wrap`] (`ip netns exec`); the test's own sockets
//! (an app, a rogue client) are opened inside one with [`Netns::enter`], which runs a
//! closure on a thread moved into the namespace: a socket stays in the namespace it was
//! created in, whichever thread uses it later.
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip` from iproute2; where namespaces
//! cannot be created, [`Lan::new`] panics saying so rather than letting a test pass unseen.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `command` run inside the network namespace `name` (`ip netns exec`), with its arguments,
/// its environment changes and its working directory.
pub fn wrap_in(name: &str, command: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", name])
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self, String> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `command` run inside this namespace (`ip netns exec`), with its arguments, its
    /// environment changes and its working directory.
    pub fn wrap(&self, command: &Command) -> Command {
        wrap_in(&self.name, command)
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path)
                        .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .unwrap_or_else(|e| panic!("cannot enter network namespace {path}: {e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A pod on a [`Lan`].
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

/// A bridge joining pods, like a node's pod network.
#[derive(Debug)]
pub struct Lan {
    /// The bridge's namespace; it holds `BRIDGE_IP` too, so a "cluster service" (the CA)
    /// can run there.
    pub bridge: Netns,
    pub bridge_ip: Ipv4Addr,
    subnet: u8,
    prefix: String,
    pods: u8,
}

impl Lan {
    /// A new, empty LAN; panics with the reason where namespaces cannot be made (not root,
    /// no iproute2, a sandbox without CAP_SYS_ADMIN).
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet = u8::try_from(n % 250).unwrap_or(0) + 1;
        let prefix = format!("tr{}x{n}", std::process::id());
        let bridge = Netns::create(&format!("{prefix}-lan")).unwrap_or_else(|e| {
            panic!(
                "network namespaces are needed for this test (pods as namespaces) and cannot \
                 be created here: {e}; run as root with iproute2 installed \
                 (scripts/install-test-deps.sh)"
            )
        });
        let bridge_ip = Ipv4Addr::new(198, 18, subnet, 1);
        let setup = || -> Result<(), String> {
            let ns = bridge.name.as_str();
            ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{bridge_ip}/24"),
                "dev",
                "br0",
            ])?;
            ip(&["-n", ns, "link", "set", "br0", "up"])
        };
        setup().unwrap_or_else(|e| panic!("cannot build the LAN: {e}"));
        Self {
            bridge,
            bridge_ip,
            subnet,
            prefix,
            pods: 0,
        }
    }

    /// Adds a pod named `name`: a namespace with `eth0` on the bridge and an address of
    /// its own.
    pub fn pod(&mut self, name: &str) -> Pod {
        self.pods += 1;
        let ip4 = Ipv4Addr::new(198, 18, self.subnet, 10 + self.pods);
        let ns = Netns::create(&format!("{}-{name}", self.prefix))
            .unwrap_or_else(|e| panic!("cannot create pod {name}: {e}"));
        let port = format!("veth{}", self.pods);
        let lan = self.bridge.name.as_str();
        let setup = || -> Result<(), String> {
            ip(&[
                "-n", lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns.name,
            ])?;
            ip(&["-n", lan, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{ip4}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns.name, "link", "set", "eth0", "up"])
        };
        setup().unwrap_or_else(|e| panic!("cannot attach pod {name}: {e}"));
        Pod { ns, ip: ip4 }
    }
}

impl Default for Lan {
    fn default() -> Self {
        Self::new()
    }
}
