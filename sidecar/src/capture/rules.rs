//! The capture rule set: one chain of our own in the `nat` table, jumped to from
//! `PREROUTING` for TCP. `PREROUTING` sees only packets that arrive from outside the pod:
//! connections the pod makes itself (the sidecar's to the app and to the CA included) are
//! never captured, so no UID or mark exclusion is needed, and loopback is excluded anyway.
//!
//! The chain is written with `iptables-restore --noflush`, which replaces our chain's
//! contents in one transaction and leaves every other chain alone; the jump is added only if
//! it is missing. Applying the same settings twice yields the same rules.

use std::fmt::Write as _;
use std::net::IpAddr;

pub use trellis_identity::cidr::Cidr;

/// Our chain in the `nat` table.
pub const CHAIN: &str = "TRELLIS_INBOUND";

/// The IP version a rule set is for (iptables and ip6tables keep separate tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The `*-restore` command for this family.
    pub fn restore_command(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    /// The plain command for this family (for the jump check).
    pub fn command(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    /// "IPv4" or "IPv6", for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    fn holds(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Self::V4, IpAddr::V4(_)) | (Self::V6, IpAddr::V6(_))
        )
    }
}

/// What the init step captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The sidecar's inbound listener port, where captured connections go.
    pub inbound_port: u16,
    /// Ports never captured: the sidecar's own (inbound, admin) and the user's.
    pub skip_ports: Vec<u16>,
    /// Sources never captured.
    pub skip_cidrs: Vec<Cidr>,
}

impl Settings {
    /// `iptables-restore --noflush` input for `family`: our chain, flushed and refilled.
    pub fn restore_input(&self, family: Family) -> String {
        let mut ports = vec![self.inbound_port];
        ports.extend(&self.skip_ports);
        ports.sort_unstable();
        ports.dedup();
        let mut out = format!("*nat\n:{CHAIN} - [0:0]\n-A {CHAIN} -i lo -j RETURN\n");
        for port in ports {
            let _ = writeln!(out, "-A {CHAIN} -p tcp --dport {port} -j RETURN");
        }
        for cidr in self.skip_cidrs.iter().filter(|c| family.holds(c.ip)) {
            let _ = writeln!(out, "-A {CHAIN} -s {cidr} -j RETURN");
        }
        let _ = writeln!(
            out,
            "-A {CHAIN} -p tcp -j REDIRECT --to-ports {}\nCOMMIT",
            self.inbound_port
        );
        out
    }
}

/// The jump from `PREROUTING` into our chain, as arguments after `-t nat -C|-A`.
pub const JUMP: [&str; 5] = ["PREROUTING", "-p", "tcp", "-j", CHAIN];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ports_skipped_ports_and_cidrs_return_before_the_redirect() {
        let settings = Settings {
            inbound_port: 15006,
            skip_ports: vec![15020, 9090, 15020],
            skip_cidrs: vec![
                "10.0.0.0/8".parse().expect("cidr"),
                "fd00::/8".parse().expect("cidr"),
            ],
        };
        assert_eq!(
            settings.restore_input(Family::V4),
            "*nat\n:TRELLIS_INBOUND - [0:0]\n-A TRELLIS_INBOUND -i lo -j RETURN\n\
             -A TRELLIS_INBOUND -p tcp --dport 9090 -j RETURN\n\
             -A TRELLIS_INBOUND -p tcp --dport 15006 -j RETURN\n\
             -A TRELLIS_INBOUND -p tcp --dport 15020 -j RETURN\n\
             -A TRELLIS_INBOUND -s 10.0.0.0/8 -j RETURN\n\
             -A TRELLIS_INBOUND -p tcp -j REDIRECT --to-ports 15006\nCOMMIT\n"
        );
        let v6 = settings.restore_input(Family::V6);
        assert!(v6.contains("-s fd00::/8 -j RETURN") && !v6.contains("10.0.0.0"));
    }
}
