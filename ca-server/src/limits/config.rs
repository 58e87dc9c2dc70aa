//! The `[limits]` table of the CA configuration, validated into [`LimitsConfig`].

use std::time::Duration;

use serde::Deserialize;
use trellis_identity::duration;

use super::bucket::Rate;
use crate::config::ConfigError;

/// `[limits]` as written in the TOML file (every key optional).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_concurrent_issuance: Option<u32>,
    pub busy_retry_after: Option<String>,
    pub renewals_per_minute: Option<u32>,
    pub renewal_burst: Option<u32>,
    pub bootstraps_per_minute: Option<u32>,
    pub bootstrap_burst: Option<u32>,
}

/// Validated overload limits (see `deploy/ca.example.toml` for what each one means).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Issuances (Certify and admin IssueCertificate) in progress at once.
    pub max_concurrent_issuance: u32,
    /// The retry hint when the CA is at `max_concurrent_issuance`.
    pub busy_retry_after: Duration,
    /// Renewals per workload identity.
    pub renewals: Rate,
    /// Bootstraps (join token, service-account token) per source address.
    pub bootstraps: Rate,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsFile::default()
            .build()
            .expect("the built-in limits are valid")
    }
}

const MAX_CONCURRENCY: u32 = 100_000;
const MIN_HINT: Duration = Duration::from_millis(100);
const MAX_HINT: Duration = Duration::from_secs(300);

impl LimitsFile {
    /// Fills defaults and checks ranges; errors name the setting.
    pub fn build(self) -> Result<LimitsConfig, ConfigError> {
        let positive = |name: &str, value: Option<u32>, default: u32, max: u32| {
            let v = value.unwrap_or(default);
            if v == 0 || v > max {
                Err(ConfigError(format!(
                    "limits.{name} is {v}; it must be between 1 and {max}"
                )))
            } else {
                Ok(v)
            }
        };
        let busy_retry_after = match self.busy_retry_after {
            None => Duration::from_secs(1),
            Some(text) => duration::parse(&text)
                .map_err(|e| ConfigError(format!("limits.busy_retry_after: {e}")))?,
        };
        if !(MIN_HINT..=MAX_HINT).contains(&busy_retry_after) {
            return Err(ConfigError(format!(
                "limits.busy_retry_after is {}; it must be between {} and {}",
                duration::format(busy_retry_after),
                duration::format(MIN_HINT),
                duration::format(MAX_HINT)
            )));
        }
        let per_minute_max = 6_000_000;
        Ok(LimitsConfig {
            max_concurrent_issuance: positive(
                "max_concurrent_issuance",
                self.max_concurrent_issuance,
                256,
                MAX_CONCURRENCY,
            )?,
            busy_retry_after,
            renewals: Rate {
                per_minute: positive(
                    "renewals_per_minute",
                    self.renewals_per_minute,
                    600,
                    per_minute_max,
                )?,
                burst: positive("renewal_burst", self.renewal_burst, 100, per_minute_max)?,
            },
            bootstraps: Rate {
                per_minute: positive(
                    "bootstraps_per_minute",
                    self.bootstraps_per_minute,
                    300,
                    per_minute_max,
                )?,
                burst: positive("bootstrap_burst", self.bootstrap_burst, 100, per_minute_max)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let d = LimitsConfig::default();
        assert_eq!(d.max_concurrent_issuance, 256);
        assert_eq!(d.busy_retry_after, Duration::from_secs(1));
        let cases = [
            (
                LimitsFile {
                    max_concurrent_issuance: Some(0),
                    ..LimitsFile::default()
                },
                "limits.max_concurrent_issuance is 0",
            ),
            (
                LimitsFile {
                    renewal_burst: Some(0),
                    ..LimitsFile::default()
                },
                "limits.renewal_burst",
            ),
            (
                LimitsFile {
                    busy_retry_after: Some("10ms".into()),
                    ..LimitsFile::default()
                },
                "limits.busy_retry_after is 10ms",
            ),
            (
                LimitsFile {
                    busy_retry_after: Some("soon".into()),
                    ..LimitsFile::default()
                },
                "limits.busy_retry_after",
            ),
        ];
        for (file, expected) in cases {
            let err = file.build().expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
