//! Transparent inbound capture: every inbound TCP connection of the pod is redirected by
//! the kernel (iptables `nat` REDIRECT, programmed by `trellis-sidecar init-network`) to the
//! inbound listener, so that the app's ports are reachable only through the sidecar.
//!
//! - `rules`: the rule set, as `iptables-restore` input, from the init step's settings;
//! - `init_network`: the init step itself (capability check, apply, `--dry-run`);
//! - `original_dst`: which port a redirected connection was meant for;
//! - `exposure`: the guard for pods without capture: app ports open beyond loopback.

pub mod exposure;
pub mod init_network;
pub mod original_dst;
pub mod rules;
