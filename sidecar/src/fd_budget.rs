//! How the sidecar's descriptors are shared between its listeners, so that a flood on one
//! cannot starve another: the admin port (reachable from the pod network when bound on
//! `0.0.0.0`) gets a small bound of its own, and the data path's listeners together never
//! hold more connections than the descriptors left for them.
//!
//! The split of `n` descriptors (the soft limit after `fd_limit::raise`):
//! - a reserve of n/16 (at least 128) for the CA connections, the Workload API, the SVID
//!   files, the runtimes;
//! - the admin port: its `admin.max_connections` (default 64), at most 1/8 of the rest;
//! - the data path: what is left, two descriptors per proxied connection, shared by the
//!   inbound and outbound listeners in proportion to their `max_connections` when those
//!   add up to more (each is then lowered; none below 1).
//!
//! With 20,000 descriptors, the defaults and one inbound and one outbound listener:
//! reserve 1,250, admin 64, data path 9,343 connections (4,671 each).

use crate::config::Config;

/// Descriptors kept for everything but accepted connections: n/16, at least this.
const RESERVE_MIN: u64 = 128;

/// What [`fit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub open_files: u64,
    pub admin: usize,
    /// Proxied connections all data-path listeners may hold together.
    pub data_path: usize,
    /// Whether listeners' `max_connections` were lowered to fit.
    pub lowered: bool,
}

/// Lowers `config`'s admin and data-path bounds to fit `open_files` descriptors.
pub fn fit(open_files: u64, config: &mut Config) -> Split {
    let reserve = (open_files / 16).max(RESERVE_MIN);
    let available = open_files.saturating_sub(reserve);
    let admin = (config.admin_limits.max_connections as u64)
        .min(available / 8)
        .max(1);
    let data_path = (available.saturating_sub(admin) / 2).max(1);
    let mut maxes: Vec<&mut usize> = config
        .inbound
        .iter_mut()
        .map(|i| &mut i.max_connections)
        .chain(config.outbound.iter_mut().map(|o| &mut o.max_connections))
        .collect();
    let wanted: u64 = maxes.iter().map(|m| **m as u64).sum();
    let lowered = wanted > data_path;
    if lowered {
        for max in &mut maxes {
            let share = (**max as u128 * data_path as u128 / wanted as u128) as usize;
            **max = share.max(1);
        }
    }
    config.admin_limits.max_connections = admin as usize;
    config.admin_limits.max_connections_per_source = config
        .admin_limits
        .max_connections_per_source
        .min(admin as usize);
    Split {
        open_files,
        admin: admin as usize,
        data_path: usize::try_from(data_path).unwrap_or(usize::MAX),
        lowered,
    }
}

/// [`fit`] with the current soft open-file limit, logged.
pub fn fit_current(config: &mut Config) -> Split {
    let open_files = match rlimit::Resource::NOFILE.get() {
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            1024
        }
    };
    let split = fit(open_files, config);
    let listeners: Vec<usize> = config
        .inbound
        .iter()
        .map(|i| i.max_connections)
        .chain(config.outbound.iter().map(|o| o.max_connections))
        .collect();
    if split.lowered {
        tracing::warn!(
            open_files,
            admin = split.admin,
            data_path = split.data_path,
            ?listeners,
            "max_connections lowered to fit the open-file limit (two descriptors per proxied \
             connection); raise the hard limit to allow more"
        );
    } else {
        tracing::info!(
            open_files,
            admin = split.admin,
            data_path = split.data_path,
            ?listeners,
            "connection bounds"
        );
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[ca]
address = "127.0.0.1:8443"
trust_bundle = "b.pem"
[inbound]
listen = "0.0.0.0:15006"
app = "127.0.0.1:8080"
[[outbound]]
listen = "127.0.0.1:7001"
upstream = "10.0.0.5:15006"
allow = ["spiffe://cluster.local/a"]
"#;

    fn config(text: &str) -> Config {
        Config::build(toml::from_str(text).expect("toml")).expect("valid")
    }

    #[test]
    fn the_split_stays_under_the_limit_and_keeps_a_reserve() {
        for n in [64, 1024, 20_000, 1 << 20] {
            let mut c = config(CONFIG);
            let split = fit(n, &mut c);
            let inbound = c.inbound.as_ref().expect("inbound").max_connections;
            let outbound = c.outbound[0].max_connections;
            let used = 2 * (inbound + outbound) as u64 + split.admin as u64;
            assert!(
                used + RESERVE_MIN <= n.max(2 * RESERVE_MIN + 5),
                "{n}: {split:?} {inbound} {outbound}"
            );
            assert!(inbound >= 1 && outbound >= 1 && split.admin >= 1);
        }
        let mut c = config(CONFIG);
        let split = fit(20_000, &mut c);
        assert_eq!(split.admin, 64);
        assert_eq!(split.data_path, 9_343);
        assert!(split.lowered);
        assert_eq!(c.inbound.as_ref().expect("inbound").max_connections, 4_671);
    }

    #[test]
    fn bounds_that_fit_are_kept() {
        let mut c = config(&format!("{CONFIG}max_connections = 100\n"));
        c.inbound.as_mut().expect("inbound").max_connections = 50;
        let split = fit(20_000, &mut c);
        assert!(!split.lowered);
        assert_eq!(c.inbound.as_ref().expect("inbound").max_connections, 50);
        assert_eq!(c.outbound[0].max_connections, 100);
    }
}
