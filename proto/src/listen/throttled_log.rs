//! "Log at most once per interval": a flood of refusals or accept failures must not become a
//! flood of log lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a throttled event is logged at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counts events and says when one should be logged: the first, then at most one per
/// [`LOG_INTERVAL`], reporting how many were not logged in between.
#[derive(Debug, Default)]
pub struct ThrottledLog {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl ThrottledLog {
    /// Records one event; `Some(n)` if it should be logged now, `n` being the events since
    /// the last logged one that were not logged.
    pub fn event(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.last {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_of_a_burst_is_logged() {
        let log = ThrottledLog::default();
        assert_eq!(log.event(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.event(), None);
        }
    }
}
