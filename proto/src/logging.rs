//! Log set-up shared by the servers: `TRELLIS_LOG` filters (default `info`), lines go to
//! stderr, as JSON when the server's `json_logs` setting asks for it.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once, at start.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_env("TRELLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
