//! Checking argument values before anything is sent, so a typo gets a usage error (exit 2)
//! that names the rule it broke.

use std::time::Duration;

use trellis_identity::SpiffeId;

use crate::error::usage;

/// Parses a SPIFFE ID given as `flag`.
pub fn spiffe_id(flag: &str, text: &str) -> anyhow::Result<SpiffeId> {
    SpiffeId::new(text).map_err(|e| {
        usage(format!(
            "{flag} {text:?} is not a valid SPIFFE ID: {e} (example: spiffe://cluster.local/ns/prod/sa/web)"
        ))
    })
}

/// Parses a human duration given as `flag` (`90s`, `10m`, `1h30m`).
pub fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    trellis_identity::duration::parse(text).map_err(|e| usage(format!("{flag}: {e}")))
}

/// Parses a lifetime for the API: whole seconds, at least 1, fitting the API's u32.
pub fn ttl_seconds(flag: &str, text: &str) -> anyhow::Result<u32> {
    let ttl = duration(flag, text)?;
    u32::try_from(ttl.as_secs())
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| usage(format!("{flag} {text:?} must be between 1s and 24h")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_USAGE, exit_code};

    #[test]
    fn ttl_is_checked_before_any_call() {
        assert_eq!(ttl_seconds("--ttl", "10m").expect("valid"), 600);
        for bad in ["10", "0s", "100000000d"] {
            let err = ttl_seconds("--ttl", bad).expect_err(bad);
            assert_eq!(exit_code(&err), EXIT_USAGE);
        }
    }

    #[test]
    fn bad_spiffe_id_names_the_rule() {
        let err = spiffe_id("--spiffe-id", "http://td/web").expect_err("wrong scheme");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        let text = err.to_string();
        assert!(text.contains("must start with \"spiffe://\""), "{text}");
        assert!(text.contains("--spiffe-id \"http://td/web\""), "{text}");
    }
}
