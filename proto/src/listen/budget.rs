//! A listener's connection budget: how many connections it may hold open, in total and
//! per source address. A permit is taken right after `accept` and held by the connection's
//! task until it ends; a connection over budget is closed at once (its descriptor given
//! back), counted, and logged at most once per interval.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::ThrottledLog;

/// The bounded connections of one listener. Share it as `Arc<ConnBudget>`.
#[derive(Debug)]
pub struct ConnBudget {
    name: &'static str,
    max: usize,
    max_per_source: usize,
    open: Mutex<Open>,
    refused: AtomicU64,
    log: ThrottledLog,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnPermit {
    budget: Arc<ConnBudget>,
    source: IpAddr,
}

/// The address a per-source limit counts by: IPv4 as is (IPv4-mapped IPv6 as IPv4), IPv6
/// by its /64, since one host usually holds a whole /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl ConnBudget {
    /// A budget named `name` (the `listener` label of its metrics) of at most `max`
    /// connections, at most `max_per_source` of them from one address. Both are at least 1.
    pub fn new(name: &'static str, max: usize, max_per_source: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            name,
            max,
            max_per_source: max_per_source.clamp(1, max),
            open: Mutex::default(),
            refused: AtomicU64::new(0),
            log: ThrottledLog::default(),
        })
    }

    /// A slot for a connection from `peer`, or `None` (counted and, at most once per
    /// interval, logged) if the listener or that source is at its bound.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<ConnPermit> {
        let source = source_key(peer);
        let over = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let from_source = open.by_source.get(&source).copied().unwrap_or(0);
            if open.total >= self.max {
                Some("listener")
            } else if from_source >= self.max_per_source {
                Some("source address")
            } else {
                open.total += 1;
                *open.by_source.entry(source).or_insert(0) += 1;
                None
            }
        };
        match over {
            None => Some(ConnPermit {
                budget: self.clone(),
                source,
            }),
            Some(bound) => {
                self.refused.fetch_add(1, Relaxed);
                if let Some(suppressed) = self.log.event() {
                    tracing::warn!(
                        listener = self.name,
                        %peer,
                        bound,
                        max = self.max,
                        max_per_source = self.max_per_source,
                        refused_total = self.refused(),
                        not_logged_since_last = suppressed,
                        "connection refused: the {bound} is at its connection bound (logged at \
                         most every 10s; see the connections_refused_total metric)"
                    );
                }
                None
            }
        }
    }

    /// The listener's name, as in its metrics.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The bound on open connections.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The bound on open connections from one source address.
    pub fn max_per_source(&self) -> usize {
        self.max_per_source
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Connections closed at accept because a bound was reached, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// The `/metrics` families of `budgets`, one sample per listener, named under
    /// `prefix`.
    pub fn collect(
        prefix: &str,
        budgets: &[&ConnBudget],
        families: &mut crate::metrics::Families<'_>,
    ) -> std::fmt::Result {
        use crate::metrics::label;
        let per_listener = |value: fn(&ConnBudget) -> u64| {
            budgets
                .iter()
                .map(move |b| (label("listener", b.name()), value(b)))
        };
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        families.gauge(
            &format!("{prefix}_connections_open"),
            "Connections open on each listener.",
            per_listener(|b| b.open() as u64).map(|(l, v)| (l, as_i64(v))),
        )?;
        families.gauge(
            &format!("{prefix}_connections_max"),
            "The bound on open connections of each listener (sized from the open-file limit).",
            per_listener(|b| b.max() as u64).map(|(l, v)| (l, as_i64(v))),
        )?;
        families.counter(
            &format!("{prefix}_connections_refused_total"),
            "Connections closed at accept because the listener or the source address was at its bound.",
            per_listener(|b| b.refused()),
        )
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.budget.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn the_total_and_each_source_are_bounded_and_slots_come_back() {
        let budget = ConnBudget::new("test", 3, 2);
        let a1 = budget.admit(ip("10.0.0.1")).expect("first");
        let _a2 = budget.admit(ip("10.0.0.1")).expect("second from a");
        assert!(budget.admit(ip("10.0.0.1")).is_none(), "a third from a");
        let _b1 = budget.admit(ip("10.0.0.2")).expect("first from b");
        assert!(budget.admit(ip("10.0.0.3")).is_none(), "over the total");
        assert_eq!(budget.refused(), 2);
        assert_eq!(budget.open(), 3);
        drop(a1);
        assert_eq!(budget.open(), 2);
        let _c1 = budget.admit(ip("10.0.0.3")).expect("a slot came back");
        struct Budgets(Arc<ConnBudget>);
        impl crate::metrics::Source for Budgets {
            fn collect(&self, families: &mut crate::metrics::Families<'_>) -> std::fmt::Result {
                ConnBudget::collect("x", &[&self.0], families)
            }
        }
        let text = crate::metrics::render(&std::sync::Arc::new(Budgets(budget.clone())));
        assert!(
            text.contains("x_connections_refused_total{listener=\"test\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("x_connections_open{listener=\"test\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(source_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let budget = ConnBudget::new("test", 10, 1);
        let _a = budget.admit(ip("2001:db8::1")).expect("first of the /64");
        assert!(budget.admit(ip("2001:db8::2")).is_none(), "same /64");
        assert!(budget.admit(ip("2001:db8:0:1::1")).is_some(), "another /64");
    }
}
