//! Token buckets by client key: `burst` requests at once, refilled at `per_minute`.
//!
//! Time comes from the CA's injected clock, so tests refill a bucket by moving the clock. A
//! clock that steps backwards refills nothing (elapsed time saturates at zero).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Keys tracked at most per table. Buckets that have refilled completely carry no
/// information and are dropped first; if every tracked key is still draining, a new key
/// is refused rather than growing the table without bound.
const MAX_TRACKED: usize = 100_000;

/// A rate: `burst` at once, then `per_minute` sustained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    fn per_second(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: SystemTime,
}

/// Why a bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// This key used up its allowance; one more request is allowed after this long.
    RetryAfter(Duration),
    /// Too many keys are being tracked at once (a flood of distinct clients).
    TooManyClients,
}

/// One token bucket per key.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: Rate,
    table: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token from `key`'s bucket, or says how long until one is available.
    pub fn take(&self, key: &K, now: SystemTime) -> Result<(), Empty> {
        let burst = f64::from(self.rate.burst);
        let per_second = self.rate.per_second();
        let refill = |b: &Bucket| {
            let elapsed = now.duration_since(b.updated).unwrap_or_default();
            (b.tokens + elapsed.as_secs_f64() * per_second).min(burst)
        };
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(key) && table.len() >= MAX_TRACKED {
            table.retain(|_, b| refill(b) < burst);
            if table.len() >= MAX_TRACKED {
                return Err(Empty::TooManyClients);
            }
        }
        let bucket = table.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let tokens = refill(bucket);
        bucket.updated = now.max(bucket.updated);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            let wait = Duration::from_secs_f64((1.0 - tokens) / per_second);
            // Whole milliseconds, rounded up, so a client that waits exactly this long finds
            // a token.
            let wait_ms = wait.as_nanos().div_ceil(1_000_000) as u64;
            Err(Empty::RetryAfter(Duration::from_millis(wait_ms.max(1))))
        }
    }

    /// Keys tracked right now.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let buckets = Buckets::new(Rate {
            per_minute: 60,
            burst: 3,
        });
        for _ in 0..3 {
            assert_eq!(buckets.take(&"a", T0), Ok(()));
        }
        assert_eq!(
            buckets.take(&"a", T0),
            Err(Empty::RetryAfter(Duration::from_secs(1)))
        );
        // Another key has its own allowance.
        assert_eq!(buckets.take(&"b", T0), Ok(()));
        // Half a token later: still refused, and told the remaining half.
        let half = T0 + Duration::from_millis(500);
        assert_eq!(
            buckets.take(&"a", half),
            Err(Empty::RetryAfter(Duration::from_millis(500)))
        );
        // Waiting exactly as told is enough.
        assert_eq!(buckets.take(&"a", T0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let buckets = Buckets::new(Rate {
            per_minute: 60,
            burst: 1,
        });
        let later = T0 + Duration::from_secs(100);
        assert_eq!(buckets.take(&"a", later), Ok(()));
        assert!(matches!(buckets.take(&"a", T0), Err(Empty::RetryAfter(_))));
    }

    #[test]
    fn full_buckets_are_forgotten_when_the_table_fills() {
        let buckets = Buckets::new(Rate {
            per_minute: 60,
            burst: 1,
        });
        for k in 0..MAX_TRACKED {
            assert_eq!(buckets.take(&k, T0), Ok(()));
        }
        // Every key is still draining: a new one is refused, not tracked.
        assert_eq!(buckets.take(&usize::MAX, T0), Err(Empty::TooManyClients));
        // A second later all have refilled, so they are dropped to make room.
        assert_eq!(
            buckets.take(&usize::MAX, T0 + Duration::from_secs(1)),
            Ok(())
        );
        assert_eq!(buckets.tracked(), 1);
    }
}
