//! Waiting for something to become true without guessing how long it takes.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// Calls `check` until it returns `Ok`, backing off from 10 ms to 200 ms between tries.
/// Panics with `what` and the last error once `timeout` has passed.
pub fn retry_until<T, E: Debug>(
    timeout: Duration,
    what: &str,
    check: impl FnMut() -> Result<T, E>,
) -> T {
    poll_until(timeout, check)
        .unwrap_or_else(|e| panic!("{what}: still failing after {timeout:?}: {e:?}"))
}

/// Like [`retry_until`], but returns the last error at the deadline instead of panicking.
pub fn poll_until<T, E>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                // Not a synchronisation sleep: the condition is re-checked after it.
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_check_passes() {
        let mut tries = 0;
        let value = retry_until(Duration::from_secs(5), "counting", || {
            tries += 1;
            if tries < 3 { Err(tries) } else { Ok("done") }
        });
        assert_eq!(value, "done");
        assert_eq!(tries, 3);
    }

    #[test]
    fn poll_returns_the_last_error() {
        let mut tries = 0;
        let result = poll_until(Duration::from_millis(30), || {
            tries += 1;
            Err::<(), _>(tries)
        });
        assert_eq!(result, Err(tries));
        assert!(tries >= 2, "{tries}");
    }

    #[test]
    #[should_panic(expected = "never: still failing")]
    fn panics_at_the_deadline() {
        retry_until(Duration::from_millis(50), "never", || Err::<(), _>("no"));
    }
}
