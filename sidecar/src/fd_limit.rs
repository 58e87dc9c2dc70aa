//! The open-file limit: every proxied connection holds two descriptors (peer and app), so
//! the sidecar raises its soft `RLIMIT_NOFILE` to the hard limit at start-up (the usual
//! soft default of 1024 would cap it near 500 connections) and says how many connections
//! that allows.

/// Below this many descriptors the sidecar warns: fewer than ~8,000 proxied connections.
const LOW: u64 = 16_384;

/// What raising the limit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit and logs the outcome.
pub fn raise() -> Option<FdLimit> {
    let (before, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return None;
        }
    };
    let now = match rlimit::increase_nofile_limit(hard) {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, soft = before, hard, "cannot raise the open-file limit");
            before
        }
    };
    let limit = FdLimit { before, now, hard };
    let connections = now / 2;
    if now < LOW {
        tracing::warn!(
            open_files = now,
            hard_limit = hard,
            connections_at_most = connections,
            "open-file limit is low: each proxied connection needs two descriptors; raise the \
             hard limit (ulimit -Hn, LimitNOFILE= in systemd, or the container runtime's nofile)"
        );
    } else {
        tracing::info!(
            open_files = now,
            raised_from = before,
            connections_at_most = connections,
            "open-file limit"
        );
    }
    Some(limit)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = rlimit::Resource::NOFILE.get().expect("read");
        // Start from a low soft limit, as many systems do (lowering needs no privilege).
        rlimit::Resource::NOFILE
            .set(hard.min(1024), hard)
            .expect("lower the soft limit");
        let limit = super::raise().expect("limits readable on Linux");
        assert_eq!(limit.before, hard.min(1024));
        assert_eq!(limit.now, hard);
        assert_eq!(rlimit::Resource::NOFILE.get().expect("read"), (hard, hard));
    }
}
