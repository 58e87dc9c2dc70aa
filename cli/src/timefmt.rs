//! Times for people ("in 59m", "expired 3m ago") and for scripts (RFC 3339, seconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

/// An RFC 3339 UTC time, e.g. `2026-01-31T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    trellis_identity::bundle::format_time(t)
}

/// A protobuf timestamp as a `SystemTime`; `None` if absent or out of range.
pub fn from_proto(ts: Option<&Timestamp>) -> Option<SystemTime> {
    ts.and_then(|ts| SystemTime::try_from(*ts).ok())
}

/// Seconds since the Unix epoch (negative before it), for JSON.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A duration with its two largest units, rounded down: `89d23h`, `59m58s`, `5s`.
pub fn short(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        } else if !parts.is_empty() {
            // Keep units adjacent: "1d0h" reads better than skipping to "1d5m".
            parts.push(format!("0{unit}"));
        }
        if parts.len() == 2 {
            break;
        }
    }
    if parts.len() == 2 && parts[1].starts_with('0') {
        parts.pop();
    }
    parts.concat()
}

/// How far `t` is from `now`, signed: positive if `t` is in the future.
fn signed_gap(t: SystemTime, now: SystemTime) -> (bool, Duration) {
    match t.duration_since(now) {
        Ok(ahead) => (true, ahead),
        Err(e) => (false, e.duration()),
    }
}

/// An expiry relative to now: `in 59m58s`, or `expired 3m ago`.
pub fn expiry(not_after: SystemTime, now: SystemTime) -> String {
    match signed_gap(not_after, now) {
        (true, left) => format!("in {}", short(left)),
        (false, ago) => format!("expired {} ago", short(ago)),
    }
}

/// A start time relative to now: `3m ago`, or `in 2m` (not valid yet).
pub fn since(not_before: SystemTime, now: SystemTime) -> String {
    match signed_gap(not_before, now) {
        (true, ahead) => format!("in {}, not valid yet", short(ahead)),
        (false, ago) => format!("{} ago", short(ago)),
    }
}

/// True if `not_after` has passed.
pub fn is_expired(not_after: SystemTime, now: SystemTime) -> bool {
    not_after <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;

    #[test]
    fn short_keeps_two_units() {
        let s = |secs| short(Duration::from_secs(secs));
        assert_eq!(s(0), "0s");
        assert_eq!(s(5), "5s");
        assert_eq!(s(59 * MIN + 58), "59m58s");
        assert_eq!(s(HOUR), "1h");
        assert_eq!(s(HOUR + 5), "1h");
        assert_eq!(s(89 * DAY + 23 * HOUR + 59 * MIN), "89d23h");
        assert_eq!(s(DAY + 30 * MIN), "1d");
    }

    #[test]
    fn expiry_says_left_or_ago() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(expiry(now + Duration::from_secs(600), now), "in 10m");
        assert_eq!(
            expiry(now - Duration::from_secs(185), now),
            "expired 3m5s ago"
        );
        assert_eq!(since(now - Duration::from_secs(60), now), "1m ago");
        assert!(is_expired(now, now));
    }

    #[test]
    fn proto_timestamps_convert() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_434_245);
        let ts = Timestamp::from(t);
        assert_eq!(from_proto(Some(&ts)), Some(t));
        assert_eq!(from_proto(None), None);
        assert_eq!(rfc3339(t), "2026-11-23T11:44:05Z");
        assert_eq!(unix_seconds(t), 1_795_434_245);
    }
}
