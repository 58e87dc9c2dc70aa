//! The flags that say what goes into every injected pod, shared by `trellis inject` and
//! `trellis-injector` so that the two cannot drift apart.

use trellis_identity::TrustDomain;

use crate::pod::{Settings, Trust};

/// What goes into every injected pod.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Sidecar")]
pub struct SidecarFlags {
    /// The sidecar container image.
    #[arg(long, value_name = "IMAGE", default_value = concat!("trellis/sidecar:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// The sidecar's imagePullPolicy (Always, IfNotPresent, Never); unset by default.
    #[arg(long, value_name = "POLICY")]
    pub image_pull_policy: Option<String>,
    /// The CA's address as pods reach it.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "trellis-ca.trellis-system.svc:8443"
    )]
    pub ca_service: String,
    /// ConfigMap in the pod's namespace holding the trust bundle under `bundle.pem`.
    #[arg(long, value_name = "NAME", default_value = "trellis-trust-bundle")]
    pub bundle_config_map: String,
    /// Instead of the ConfigMap: the root's SPKI SHA-256 (64 hex digits, from `trellis ca
    /// status`); sidecars fetch the bundle from the CA and accept it only if it holds that
    /// root, so namespaces need no ConfigMap.
    #[arg(long, value_name = "SHA256", conflicts_with = "bundle_config_map")]
    pub trust_fingerprint: Option<String>,
}

/// A flag value that cannot be used; the message names the flag and what it expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(String);

impl SidecarFlags {
    /// Checks the flags and returns the settings of every injected pod; `trust_domain` is
    /// the mesh's (`cluster.local` when unset).
    pub fn settings(&self, trust_domain: Option<&str>) -> Result<Settings, FlagError> {
        let trust_domain = trust_domain.unwrap_or("cluster.local").to_owned();
        TrustDomain::new(&trust_domain)
            .map_err(|e| FlagError(format!("--trust-domain {trust_domain:?}: {e}")))?;
        if self.image.trim().is_empty() || self.image.contains(char::is_whitespace) {
            return Err(FlagError(format!(
                "--image {:?} is not an image reference",
                self.image
            )));
        }
        if let Some(policy) = &self.image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
        {
            return Err(FlagError(format!(
                "--image-pull-policy {policy:?}: expected Always, IfNotPresent or Never"
            )));
        }
        let port_ok = self
            .ca_service
            .rsplit_once(':')
            .is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
        if !port_ok {
            return Err(FlagError(format!(
                "--ca-service {:?}: expected HOST:PORT, e.g. trellis-ca.trellis-system.svc:8443",
                self.ca_service
            )));
        }
        let trust = match &self.trust_fingerprint {
            Some(hex) => {
                let hex = hex.trim().to_ascii_lowercase();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(FlagError(format!(
                        "--trust-fingerprint {hex:?}: expected the root's SHA-256 as 64 hex \
                         digits (`trellis ca status` shows it)"
                    )));
                }
                Trust::Fingerprint(hex)
            }
            None => Trust::ConfigMap(self.bundle_config_map.clone()),
        };
        Ok(Settings {
            image: self.image.clone(),
            pull_policy: self.image_pull_policy.clone(),
            ca_address: self.ca_service.clone(),
            trust_domain,
            trust,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> SidecarFlags {
        SidecarFlags {
            image: "trellis/sidecar:1".into(),
            image_pull_policy: None,
            ca_service: "ca.example:8443".into(),
            bundle_config_map: "bundle".into(),
            trust_fingerprint: None,
        }
    }

    #[test]
    fn good_flags_become_settings() {
        let settings = flags().settings(None).expect("valid");
        assert_eq!(settings.trust_domain, "cluster.local");
        assert_eq!(settings.trust, Trust::ConfigMap("bundle".into()));
        let pinned = SidecarFlags {
            trust_fingerprint: Some("AB".repeat(32)),
            ..flags()
        };
        assert_eq!(
            pinned.settings(Some("example.org")).expect("valid").trust,
            Trust::Fingerprint("ab".repeat(32))
        );
    }

    #[test]
    fn each_bad_flag_is_named() {
        let cases = [
            (
                SidecarFlags {
                    image: "a b".into(),
                    ..flags()
                },
                None,
                "--image",
            ),
            (
                SidecarFlags {
                    image_pull_policy: Some("Sometimes".into()),
                    ..flags()
                },
                None,
                "--image-pull-policy",
            ),
            (
                SidecarFlags {
                    ca_service: "ca".into(),
                    ..flags()
                },
                None,
                "--ca-service",
            ),
            (
                SidecarFlags {
                    trust_fingerprint: Some("00".into()),
                    ..flags()
                },
                None,
                "--trust-fingerprint",
            ),
            (flags(), Some("Not A Domain"), "--trust-domain"),
        ];
        for (flags, domain, named) in cases {
            let error = flags.settings(domain).expect_err(named).to_string();
            assert!(error.starts_with(named), "{error}");
        }
    }
}
