//! Connection settings: flags, then `TRELLIS_*` environment variables (both via clap), then
//! the context file that `trellis login` writes. Day-to-day commands need no flags.
//!
//! The context file is TOML:
//! ```toml
//! ca_addr = "127.0.0.1:8443"
//! trust_domain = "cluster.local"
//! admin_cert = "/home/me/trellis/admin.pem"
//! admin_key = "/home/me/trellis/admin.key.pem"
//! bundle = "/home/me/trellis/bundle.pem"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::usage;

/// Flags that say where the CA is and which credentials to use.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionFlags {
    /// The CA's address, host:port.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_CA_ADDR",
        value_name = "HOST:PORT",
        help_heading = "Connection"
    )]
    pub ca_addr: Option<String>,
    /// Admin client certificate chain (admin.pem).
    #[arg(
        long,
        global = true,
        env = "TRELLIS_ADMIN_CERT",
        value_name = "FILE",
        help_heading = "Connection"
    )]
    pub admin_cert: Option<PathBuf>,
    /// The admin certificate's private key (admin.key.pem, mode 0600).
    #[arg(
        long,
        global = true,
        env = "TRELLIS_ADMIN_KEY",
        value_name = "FILE",
        help_heading = "Connection"
    )]
    pub admin_key: Option<PathBuf>,
    /// Trust bundle that verifies the CA (bundle.pem).
    #[arg(
        long,
        global = true,
        env = "TRELLIS_BUNDLE",
        value_name = "FILE",
        help_heading = "Connection"
    )]
    pub bundle: Option<PathBuf>,
    /// Trust domain; defaults to the one in the admin certificate's SPIFFE ID.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_TRUST_DOMAIN",
        value_name = "TD",
        help_heading = "Connection"
    )]
    pub trust_domain: Option<String>,
    /// Context file [default: $XDG_CONFIG_HOME/trellis/context.toml or
    /// ~/.config/trellis/context.toml].
    #[arg(
        long,
        global = true,
        env = "TRELLIS_CONTEXT",
        value_name = "FILE",
        help_heading = "Connection"
    )]
    pub context: Option<PathBuf>,
}

/// The saved connection settings. Paths are absolute (login writes them so).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
}

/// Settings after every source was consulted; any may still be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub ca_addr: Option<String>,
    pub trust_domain: Option<String>,
    pub admin_cert: Option<PathBuf>,
    pub admin_key: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
    /// The context file consulted, if one exists.
    pub context_file: Option<PathBuf>,
}

/// Where the context file lives, from `--context`/`TRELLIS_CONTEXT`, else the XDG config
/// directory. `None` if there is no home directory to put it in.
pub fn context_path(
    flag: Option<&Path>,
    xdg_config_home: Option<&Path>,
    home: Option<&Path>,
) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_owned());
    }
    let config_dir = match (xdg_config_home, home) {
        (Some(xdg), _) if xdg.is_absolute() => xdg.to_owned(),
        (_, Some(home)) => home.join(".config"),
        _ => return None,
    };
    Some(config_dir.join("trellis").join("context.toml"))
}

/// The context file path for this process's flags and environment.
pub fn default_context_path(flags: &ConnectionFlags) -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    context_path(flags.context.as_deref(), xdg.as_deref(), home.as_deref())
}

/// Reads a context file; a missing file is an empty context (nobody logged in yet).
pub fn read_context(path: &Path) -> anyhow::Result<Option<ContextFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(usage(format!(
                "cannot read context file {}: {e}",
                path.display()
            )));
        }
    };
    toml::from_str(&text).map(Some).map_err(|e| {
        usage(format!(
            "context file {} is invalid: {}; fix it or run `trellis login` again",
            path.display(),
            e.message()
        ))
    })
}

/// Layers the sources: a flag or environment variable wins over the context file.
pub fn merge(flags: &ConnectionFlags, file: Option<ContextFile>, path: Option<&Path>) -> Settings {
    let context_file = file.as_ref().and(path.map(Path::to_owned));
    let file = file.unwrap_or_default();
    Settings {
        ca_addr: flags.ca_addr.clone().or(file.ca_addr),
        trust_domain: flags.trust_domain.clone().or(file.trust_domain),
        admin_cert: flags.admin_cert.clone().or(file.admin_cert),
        admin_key: flags.admin_key.clone().or(file.admin_key),
        bundle: flags.bundle.clone().or(file.bundle),
        context_file,
    }
}

/// The settings for this invocation.
pub fn resolve(flags: &ConnectionFlags) -> anyhow::Result<Settings> {
    let path = default_context_path(flags);
    let file = match &path {
        Some(path) => read_context(path)?,
        None => None,
    };
    Ok(merge(flags, file, path.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_context_file() {
        let flags = ConnectionFlags {
            ca_addr: Some("10.0.0.1:8443".into()),
            ..Default::default()
        };
        let file = ContextFile {
            ca_addr: Some("127.0.0.1:1".into()),
            admin_cert: Some("/ctx/admin.pem".into()),
            trust_domain: Some("example.org".into()),
            ..Default::default()
        };
        let settings = merge(&flags, Some(file), Some(Path::new("/ctx/context.toml")));
        assert_eq!(settings.ca_addr.as_deref(), Some("10.0.0.1:8443"));
        assert_eq!(
            settings.admin_cert.as_deref(),
            Some(Path::new("/ctx/admin.pem"))
        );
        assert_eq!(settings.trust_domain.as_deref(), Some("example.org"));
        assert_eq!(settings.admin_key, None);
        assert_eq!(
            settings.context_file.as_deref(),
            Some(Path::new("/ctx/context.toml"))
        );
    }

    #[test]
    fn no_file_means_only_flags() {
        let settings = merge(&ConnectionFlags::default(), None, Some(Path::new("/x")));
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn context_path_prefers_flag_then_xdg_then_home() {
        let flag = Path::new("/flag/ctx.toml");
        let xdg = Path::new("/xdg");
        let home = Path::new("/home/me");
        assert_eq!(
            context_path(Some(flag), Some(xdg), Some(home)),
            Some(flag.to_owned())
        );
        assert_eq!(
            context_path(None, Some(xdg), Some(home)),
            Some(PathBuf::from("/xdg/trellis/context.toml"))
        );
        assert_eq!(
            context_path(None, Some(Path::new("relative")), Some(home)),
            Some(PathBuf::from("/home/me/.config/trellis/context.toml"))
        );
        assert_eq!(context_path(None, None, None), None);
    }

    #[test]
    fn reads_missing_valid_and_invalid_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("context.toml");
        assert_eq!(read_context(&path).expect("missing is fine"), None);
        let file = ContextFile {
            ca_addr: Some("127.0.0.1:8443".into()),
            bundle: Some("/b.pem".into()),
            ..Default::default()
        };
        std::fs::write(&path, toml::to_string(&file).expect("serialises")).expect("write");
        assert_eq!(read_context(&path).expect("valid"), Some(file));
        std::fs::write(&path, "ca_adr = \"typo\"").expect("write");
        let err = read_context(&path).expect_err("unknown key");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("trellis login"), "{err}");
    }
}
