//! Live connections by the serial of the peer's certificate, so that a revoked peer's
//! connections can be closed ([`Registry::close_peer_serial`]), and by its trust domain, so
//! that the connections of a trust domain no longer federated are closed too
//! ([`Registry::set_trusted_domains`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::shutdown::cancel_once;

#[derive(Debug, Default)]
struct Connections {
    next_id: u64,
    by_serial: HashMap<String, HashMap<u64, Entry>>,
    /// Peers revoked so far (normalised serials): a connection whose handshake was already
    /// under way when its peer was revoked is closed the moment it registers.
    revoked: HashSet<String>,
    /// The trust domains whose peers may stay connected (the own one and the federated
    /// ones), once a bundle has been installed; like `revoked`, a connection registering
    /// with another one is closed at once.
    trusted: Option<HashSet<String>>,
}

#[derive(Debug)]
struct Entry {
    closed: CancellationToken,
    trust_domain: String,
}

/// Live connections by the serial of the peer's certificate, shared by all listeners.
#[derive(Clone, Debug, Default)]
pub struct Registry(Arc<Mutex<Connections>>);

/// A connection's entry in the [`Registry`]; dropping it removes the entry.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    serial: String,
    id: u64,
    closed: CancellationToken,
}

impl Registration {
    /// Set when someone asked for this connection to be closed.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut conns = self.registry.lock();
        if let Some(entries) = conns.by_serial.get_mut(&self.serial) {
            entries.remove(&self.id);
            if entries.is_empty() {
                conns.by_serial.remove(&self.serial);
            }
        }
    }
}

/// Serials compare as hex numbers: case, `:` separators and leading zeros do not matter.
fn normalize_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    hex.trim_start_matches('0').to_owned()
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a live connection whose peer presented the certificate `serial` (hex) of
    /// a SPIFFE ID in `trust_domain`.
    pub fn register(&self, serial: &str, trust_domain: &str) -> Registration {
        let serial = normalize_serial(serial);
        let closed = CancellationToken::new();
        let mut conns = self.lock();
        let id = conns.next_id;
        conns.next_id += 1;
        let untrusted = conns
            .trusted
            .as_ref()
            .is_some_and(|t| !t.contains(trust_domain));
        if conns.revoked.contains(&serial) || untrusted {
            closed.cancel();
        }
        let entry = Entry {
            closed: closed.clone(),
            trust_domain: trust_domain.to_owned(),
        };
        conns
            .by_serial
            .entry(serial.clone())
            .or_default()
            .insert(id, entry);
        drop(conns);
        Registration {
            registry: self.clone(),
            serial,
            id,
            closed,
        }
    }

    /// Replaces the set of revoked peer serials and closes every live connection of any of
    /// them; returns how many connections were told to close. Connections registering later
    /// with a revoked serial are closed at once (see [`Registry::register`]).
    pub fn set_revoked<'a>(&self, serials: impl IntoIterator<Item = &'a String>) -> usize {
        let revoked: HashSet<String> = serials.into_iter().map(|s| normalize_serial(s)).collect();
        let mut conns = self.lock();
        let mut closed = 0;
        for serial in &revoked {
            if let Some(entries) = conns.by_serial.get(serial) {
                for entry in entries.values() {
                    if cancel_once(&entry.closed) {
                        closed += 1;
                    }
                }
            }
        }
        conns.revoked = revoked;
        closed
    }

    /// Replaces the set of trust domains whose peers may stay connected and closes every
    /// live connection of any other; returns how many were told to close.
    pub fn set_trusted_domains<'a>(&self, domains: impl IntoIterator<Item = &'a str>) -> usize {
        let trusted: HashSet<String> = domains.into_iter().map(str::to_owned).collect();
        let mut conns = self.lock();
        let closed = conns
            .by_serial
            .values()
            .flat_map(HashMap::values)
            .filter(|e| !trusted.contains(&e.trust_domain))
            .filter(|e| cancel_once(&e.closed))
            .count();
        conns.trusted = Some(trusted);
        closed
    }

    /// Closes every live connection whose peer presented the certificate `serial` (hex, as
    /// `CertInfo::serial` prints it); returns how many were told to close. The caller
    /// counts them (e.g. in `Metrics::revoked_closed`).
    pub fn close_peer_serial(&self, serial: &str) -> usize {
        let entries = self.lock().by_serial.remove(&normalize_serial(serial));
        entries.map_or(0, |e| e.values().filter(|e| cancel_once(&e.closed)).count())
    }

    /// How many live connections have a peer with certificate `serial`.
    pub fn count_serial(&self, serial: &str) -> usize {
        self.lock()
            .by_serial
            .get(&normalize_serial(serial))
            .map_or(0, HashMap::len)
    }

    /// How many live connections are registered.
    pub fn len(&self) -> usize {
        self.lock().by_serial.values().map(HashMap::len).sum()
    }

    /// True if no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_closes_exactly_one_serials_connections() {
        let r = Registry::new();
        let a1 = r.register("4A:0b", "td");
        let a2 = r.register("4a0b", "td");
        let b = r.register("77", "td");
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.count_serial("004a0b"),
            2,
            "leading zeros and case do not matter"
        );
        assert_eq!(r.close_peer_serial("4a0b"), 2);
        assert!(a1.closed().is_cancelled() && a2.closed().is_cancelled());
        assert!(!b.closed().is_cancelled());
        assert_eq!(r.close_peer_serial("4a0b"), 0, "already closed");
        assert_eq!(r.len(), 1);
        drop((a1, a2));
        assert_eq!(r.len(), 1);
        drop(b);
        assert!(r.is_empty());
    }

    #[test]
    fn a_connection_registering_after_its_peer_was_revoked_is_closed_at_once() {
        let r = Registry::new();
        let live = r.register("0a0b", "td");
        let other = r.register("0c", "td");
        assert_eq!(r.set_revoked([&"0A:0B".to_owned()]), 1);
        assert!(live.closed().is_cancelled() && !other.closed().is_cancelled());
        let late = r.register("a0b", "td");
        assert!(
            late.closed().is_cancelled(),
            "registered after the revocation: closed"
        );
        assert_eq!(r.set_revoked([]), 0);
        assert!(
            !r.register("a0b", "td").closed().is_cancelled(),
            "no longer revoked"
        );
    }

    #[test]
    fn connections_of_a_trust_domain_no_longer_trusted_are_closed_and_stay_closed() {
        let r = Registry::new();
        let own = r.register("01", "home.example");
        let partner = r.register("02", "partner.example");
        let before_any_bundle = r.register("03", "elsewhere.example");
        assert!(
            !before_any_bundle.closed().is_cancelled(),
            "nothing is judged before the first bundle"
        );
        assert_eq!(
            r.set_trusted_domains(["home.example", "partner.example"]),
            1
        );
        assert!(before_any_bundle.closed().is_cancelled());
        assert!(!own.closed().is_cancelled() && !partner.closed().is_cancelled());
        // The federation with the partner ends.
        assert_eq!(r.set_trusted_domains(["home.example"]), 1);
        assert!(partner.closed().is_cancelled() && !own.closed().is_cancelled());
        assert!(
            r.register("04", "partner.example").closed().is_cancelled(),
            "a handshake that finished on the old bundle is closed as it registers"
        );
        assert!(!r.register("05", "home.example").closed().is_cancelled());
    }
}
