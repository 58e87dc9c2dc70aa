//! The guard for pods without capture. Containers of a pod share one network namespace, so
//! the sidecar sees every listening socket of the pod in `/proc/net/tcp{,6}`. A port open on
//! an address other than loopback, and not one of the sidecar's own, is reachable by any
//! peer on the pod network without passing the sidecar: without capture that is a hole, and
//! the sidecar says so (a warning, `trellis_sidecar_app_ports_exposed`, `/identity`).
//!
//! Which ports count ([`Scope`]): in a pod (the kubelet sets `KUBERNETES_SERVICE_HOST` in
//! every container) all of them but the sidecar's own; elsewhere, on a host whose other
//! services are none of the sidecar's business, only the inbound app's port.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the listening sockets are read again (apps start after the sidecar).
pub const RECHECK: Duration = Duration::from_secs(10);

/// The TCP state number of a listening socket in `/proc/net/tcp`.
const LISTEN: &str = "0A";

/// Which listening ports are the app's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every port but these (the sidecar's own): in a pod, every port is the pod's.
    AllBut(Vec<u16>),
    /// Only these (the inbound app's): on a shared host.
    Only(Vec<u16>),
}

impl Default for Scope {
    fn default() -> Self {
        Self::Only(Vec::new())
    }
}

impl Scope {
    /// The scope for a sidecar with `own` ports and `app` ports: all but its own in a
    /// Kubernetes pod, else only the app's.
    pub fn detect(own: Vec<u16>, app: Vec<u16>) -> Self {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            Self::AllBut(own)
        } else {
            Self::Only(app)
        }
    }

    fn counts(&self, port: u16) -> bool {
        match self {
            Self::AllBut(own) => !own.contains(&port),
            Self::Only(app) => app.contains(&port),
        }
    }
}

/// What the sidecar knows about its pod's exposure, for `/identity`.
#[derive(Debug, Default)]
pub struct Exposure {
    capture: bool,
    scope: Scope,
    exposed: Mutex<Vec<u16>>,
}

/// `/identity`'s view of it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExposureView {
    /// Inbound capture is configured: every inbound connection passes the sidecar.
    pub capture: bool,
    /// Without capture: ports open beyond loopback that bypass the sidecar.
    pub exposed_ports: Vec<u16>,
}

impl Exposure {
    /// The state for a sidecar with or without capture, watching the ports of `scope`.
    pub fn new(capture: bool, scope: Scope) -> Self {
        Self {
            capture,
            scope,
            exposed: Mutex::new(Vec::new()),
        }
    }

    /// The current view.
    pub fn view(&self) -> ExposureView {
        ExposureView {
            capture: self.capture,
            exposed_ports: self
                .exposed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Records a new reading; warns when the set of exposed ports changes to a non-empty one.
    pub fn update(&self, ports: Vec<u16>, metrics: &Metrics) {
        let mut exposed = self.exposed.lock().unwrap_or_else(|p| p.into_inner());
        if *exposed == ports {
            return;
        }
        if ports.is_empty() {
            tracing::info!("no app port is reachable around the sidecar any more");
        } else {
            tracing::warn!(
                ports = ?ports,
                "UNPROTECTED: app port(s) listen beyond loopback and inbound capture is off, so \
                 any peer on the pod network reaches them without mTLS or policy; turn capture \
                 on (trellis-sidecar init-network, on by default with Trellis injection) or \
                 bind the app to 127.0.0.1"
            );
        }
        metrics.app_ports_exposed.store(ports.len() as u64, Relaxed);
        *exposed = ports;
    }

    /// Reads the pod's listening sockets now and records the outcome. Under capture there
    /// is nothing to report. Cheap (two small /proc files), so start-up runs it before it
    /// says it is up.
    pub fn check(&self, metrics: &Metrics) {
        if !self.capture {
            let ports = exposed_ports(&read("/proc/net/tcp"), &read("/proc/net/tcp6"), &self.scope);
            self.update(ports, metrics);
        }
    }

    /// Checks again every [`RECHECK`] until `stop` (apps start after the sidecar).
    pub async fn watch(
        self: std::sync::Arc<Self>,
        metrics: std::sync::Arc<Metrics>,
        stop: CancellationToken,
    ) {
        if self.capture {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RECHECK) => {}
                _ = stop.cancelled() => return,
            }
            let (exposure, metrics) = (self.clone(), metrics.clone());
            let _ = tokio::task::spawn_blocking(move || exposure.check(&metrics)).await;
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Listening ports on a non-loopback address within `scope`, sorted and unique.
pub fn exposed_ports(tcp: &str, tcp6: &str, scope: &Scope) -> Vec<u16> {
    let mut ports: Vec<u16> = tcp
        .lines()
        .chain(tcp6.lines())
        .filter_map(listening_beyond_loopback)
        .filter(|port| scope.counts(*port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// For a `/proc/net/tcp{,6}` line of a listening socket not on loopback: its port.
fn listening_beyond_loopback(line: &str) -> Option<u16> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != LISTEN {
        return None;
    }
    let (addr, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let loopback = match addr.len() {
        8 => Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.swap_bytes()).is_loopback(),
        32 => {
            // Four 32-bit words, each in the kernel's (little-endian) byte order.
            let mut octets = [0u8; 16];
            for (i, word) in octets.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                word.copy_from_slice(&w.swap_bytes().to_be_bytes());
            }
            let ip = Ipv6Addr::from(octets);
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        _ => return None,
    };
    (!loopback).then_some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn tcp_line(local: &str, state: &str) -> String {
        format!(
            "   0: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0"
        )
    }

    #[test]
    fn only_listeners_beyond_loopback_and_not_ours_count() {
        let tcp = [
            HEADER.to_owned(),
            tcp_line("0100007F:1F90", LISTEN), // 127.0.0.1:8080
            tcp_line("00000000:1F91", LISTEN), // 0.0.0.0:8081
            tcp_line("0300000A:1F92", LISTEN), // 10.0.0.3:8082
            tcp_line("00000000:3A9E", LISTEN), // 0.0.0.0:15006 (ours)
            tcp_line("00000000:1F93", "01"),   // an established connection
        ]
        .join("\n");
        let tcp6 = [
            HEADER.to_owned(),
            tcp_line("00000000000000000000000001000000:1F94", LISTEN), // [::1]:8084
            tcp_line("00000000000000000000000000000000:1F95", LISTEN), // [::]:8085
            tcp_line("0000000000000000FFFF00000100007F:1F96", LISTEN), // [::ffff:127.0.0.1]
        ]
        .join("\n");
        let pod = Scope::AllBut(vec![15006]);
        assert_eq!(exposed_ports(&tcp, &tcp6, &pod), vec![8081, 8082, 8085]);
        let host = Scope::Only(vec![8080, 8081]);
        assert_eq!(exposed_ports(&tcp, &tcp6, &host), vec![8081]);
    }

    #[test]
    fn a_change_is_recorded_in_the_metric_and_the_view() {
        let metrics = Metrics::default();
        let exposure = Exposure::new(false, Scope::default());
        exposure.update(vec![8080], &metrics);
        assert_eq!(metrics.app_ports_exposed.load(Relaxed), 1);
        assert_eq!(exposure.view().exposed_ports, vec![8080]);
        exposure.update(Vec::new(), &metrics);
        assert_eq!(metrics.app_ports_exposed.load(Relaxed), 0);
        assert!(!exposure.view().capture);
    }

    /// This process's own namespace: a listener on 0.0.0.0 is seen, one on loopback is not.
    #[test]
    fn reads_the_real_proc_files() {
        let open = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
        let private = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let ports = exposed_ports(
            &read("/proc/net/tcp"),
            &read("/proc/net/tcp6"),
            &Scope::AllBut(Vec::new()),
        );
        assert!(ports.contains(&open.local_addr().expect("addr").port()));
        assert!(!ports.contains(&private.local_addr().expect("addr").port()));
    }
}
