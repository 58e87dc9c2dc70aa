//! `trellis-sidecar init-network`: programs the capture rules ([`super::rules`]) in the
//! pod's network namespace. Run by an init container with `NET_ADMIN` (and `NET_RAW`, which
//! iptables needs for its own sockets) before any other container starts; idempotent, so a
//! restarted init container leaves the same rules.

use std::io::Write as _;
use std::process::{Command, Stdio};

use clap::Parser;

use super::rules::{Cidr, Family, JUMP, Settings};

/// Flags of `trellis-sidecar init-network`.
#[derive(Debug, Parser)]
#[command(
    name = "trellis-sidecar init-network",
    about = "Redirect every inbound TCP connection of this network namespace to the sidecar"
)]
pub struct InitNetworkFlags {
    /// The sidecar's inbound listener port: captured connections go there.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The sidecar's admin port (probes, metrics): never captured.
    #[arg(long, default_value_t = 15020)]
    pub admin_port: u16,
    /// Ports that stay reachable without the sidecar (comma-separated), e.g. a metrics port
    /// scraped in plaintext.
    #[arg(long, value_delimiter = ',', env = "TRELLIS_SKIP_INBOUND_PORTS")]
    pub skip_inbound_ports: Vec<u16>,
    /// Source CIDRs whose connections are not captured (comma-separated).
    #[arg(long, value_delimiter = ',', env = "TRELLIS_SKIP_INBOUND_CIDRS")]
    pub skip_inbound_cidrs: Vec<Cidr>,
    /// Print the rules that would be applied and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Check the flags, print the settings and exit (as every Trellis binary does).
    #[arg(long)]
    pub check_config: bool,
}

/// Why the init step could not program the rules; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum InitNetworkError {
    #[error(
        "missing the NET_ADMIN capability, needed to program iptables in the pod's network \
         namespace: add NET_ADMIN and NET_RAW to the init container's \
         securityContext.capabilities.add (Trellis injection does), or, where the cluster \
         forbids NET_ADMIN in pods, turn capture off with the pod annotation \
         trellis.dev/capture: disabled and keep apps on loopback"
    )]
    NoNetAdmin,
    #[error("{0} not found: the image must include iptables (Debian's iptables package)")]
    NoIptables(&'static str),
    #[error(
        "{command} failed: {stderr}; if it names a missing table or target, the node's kernel \
         lacks NAT support for {family} (modules nf_nat and xt_REDIRECT, or nft_redir)"
    )]
    Rejected {
        command: &'static str,
        family: &'static str,
        stderr: String,
    },
    #[error("cannot run {command}: {error}")]
    Io {
        command: &'static str,
        error: std::io::Error,
    },
}

impl InitNetworkFlags {
    /// The rule settings these flags describe.
    pub fn settings(&self) -> Settings {
        let mut skip_ports = vec![self.admin_port];
        skip_ports.extend(&self.skip_inbound_ports);
        Settings {
            inbound_port: self.inbound_port,
            skip_ports,
            skip_cidrs: self.skip_inbound_cidrs.clone(),
        }
    }
}

/// Runs the init step; returns what to print on success.
pub fn run(flags: &InitNetworkFlags) -> Result<String, InitNetworkError> {
    let settings = flags.settings();
    if flags.check_config {
        return Ok(format!("configuration OK: {settings:?}"));
    }
    let families = families();
    if flags.dry_run {
        let mut out = String::new();
        for family in &families {
            out.push_str(&format!(
                "# {} --noflush\n{}# then, unless present: {} -t nat -A {}\n",
                family.restore_command(),
                settings.restore_input(*family),
                family.command(),
                JUMP.join(" ")
            ));
        }
        return Ok(out);
    }
    if !has_net_admin(&std::fs::read_to_string("/proc/self/status").unwrap_or_default()) {
        return Err(InitNetworkError::NoNetAdmin);
    }
    for family in &families {
        apply(*family, &settings)?;
    }
    let mut skipped = settings.skip_ports.clone();
    skipped.insert(0, settings.inbound_port);
    Ok(format!(
        "trellis-sidecar init-network: inbound TCP to every port except {} now goes to the \
         sidecar on {} ({})",
        skipped
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        settings.inbound_port,
        families
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(" and ")
    ))
}

/// IPv4 always; IPv6 too when any interface but loopback has an IPv6 address (a link-local
/// one is enough for a neighbour to connect).
fn families() -> Vec<Family> {
    let v6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    if has_ipv6_beyond_loopback(&v6) {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

fn has_ipv6_beyond_loopback(if_inet6: &str) -> bool {
    if_inet6
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .any(|name| name != "lo")
}

/// CAP_NET_ADMIN (bit 12) in the effective set, from `/proc/self/status`.
fn has_net_admin(status: &str) -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

fn apply(family: Family, settings: &Settings) -> Result<(), InitNetworkError> {
    let restore = family.restore_command();
    let spawn_error = |command: &'static str, error: std::io::Error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            InitNetworkError::NoIptables(command)
        } else {
            InitNetworkError::Io { command, error }
        }
    };
    let mut child = Command::new(restore)
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(restore, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(settings.restore_input(family).as_bytes())
            .map_err(|error| InitNetworkError::Io {
                command: restore,
                error,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| spawn_error(restore, e))?;
    if !out.status.success() {
        return Err(InitNetworkError::Rejected {
            command: restore,
            family: family.name(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let iptables = family.command();
    let jump = |op: &str| {
        Command::new(iptables)
            .args(["--wait", "-t", "nat", op])
            .args(JUMP)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| spawn_error(iptables, e))
    };
    // -C exits 1 when the rule is missing, other codes for real failures.
    let check = jump("-C")?;
    if check.status.code() == Some(1) {
        let added = jump("-A")?;
        if !added.status.success() {
            return Err(InitNetworkError::Rejected {
                command: iptables,
                family: family.name(),
                stderr: String::from_utf8_lossy(&added.stderr).trim().to_owned(),
            });
        }
    } else if !check.status.success() {
        return Err(InitNetworkError::Rejected {
            command: iptables,
            family: family.name(),
            stderr: String::from_utf8_lossy(&check.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_admin_is_bit_twelve_of_the_effective_set() {
        assert!(has_net_admin("Name:\tx\nCapEff:\t000001fffeffffff\n"));
        assert!(has_net_admin("CapEff:\t0000000000001000\n"));
        assert!(!has_net_admin("CapEff:\t0000000000000000\n"));
        assert!(!has_net_admin("CapEff:\t00000000a80425fb\n"));
        assert!(!has_net_admin("nothing"));
    }

    #[test]
    fn ipv6_counts_beyond_loopback_only() {
        let lo = "00000000000000000000000000000001 01 80 10 80       lo\n";
        assert!(!has_ipv6_beyond_loopback(lo));
        assert!(has_ipv6_beyond_loopback(&format!(
            "{lo}fe800000000000000000000000000001 02 40 20 80     eth0\n"
        )));
        assert!(!has_ipv6_beyond_loopback(""));
    }

    #[test]
    fn the_admin_port_is_always_skipped() {
        let flags = InitNetworkFlags::parse_from([
            "init-network",
            "--skip-inbound-ports",
            "9090,9091",
            "--skip-inbound-cidrs",
            "10.0.0.0/8",
        ]);
        let settings = flags.settings();
        assert_eq!(settings.inbound_port, 15006);
        assert_eq!(settings.skip_ports, vec![15020, 9090, 9091]);
        assert_eq!(settings.skip_cidrs.len(), 1);
    }
}
