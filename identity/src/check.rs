//! Health checks' verdicts, shared by `trellis check` and `trellis-sidecar check`: what one
//! check concluded, how an expiry is judged against warn and fail thresholds, and the exit
//! code a set of verdicts gives.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How a check came out, worst last (so `max` is the overall result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Not run: something it needs could not be read (the reason is its detail).
    Skipped,
    Ok,
    Warn,
    Fail,
}

impl Level {
    /// The mark on a terminal, and the word without one.
    pub fn mark(self, terminal: bool) -> &'static str {
        match (self, terminal) {
            (Level::Skipped, true) => "-",
            (Level::Ok, true) => "✔",
            (Level::Warn, true) => "‼",
            (Level::Fail, true) => "✘",
            (Level::Skipped, false) => "skip",
            (Level::Ok, false) => "ok",
            (Level::Warn, false) => "warn",
            (Level::Fail, false) => "FAIL",
        }
    }
}

/// One verdict line: what was checked, how it came out, the facts, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The check's name, e.g. "signing intermediate".
    pub check: String,
    pub level: Level,
    /// What was found, e.g. "expires in 9d23h (2026-01-31T12:00:00Z)".
    pub detail: String,
    /// How to fix it; empty when there is nothing to do.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

impl Verdict {
    pub fn new(check: impl Into<String>, level: Level, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            level,
            detail: detail.into(),
            hint: String::new(),
        }
    }

    /// The same verdict with a hint; a hint is only shown for warnings and failures.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        if self.level >= Level::Warn {
            self.hint = hint.into();
        }
        self
    }
}

/// How much validity a long-lived certificate (root, intermediate, admin) must have left:
/// less than `warn` is a warning, less than `fail` a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub warn: Duration,
    pub fail: Duration,
}

/// Defaults of `--warn-within` and `--fail-within`: a month to plan a rotation, a week
/// before it is an emergency.
pub const DEFAULT_WARN: &str = "30d";
pub const DEFAULT_FAIL: &str = "7d";

/// Certificates the CA renews by itself (its serving certificate, at half its life) are
/// judged by the share of their lifetime left instead: under a quarter means the renewal
/// is overdue, under a tenth that it is about to lapse.
pub const RENEWED_WARN_SHARE: f64 = 0.25;
pub const RENEWED_FAIL_SHARE: f64 = 0.10;

impl Thresholds {
    /// How a certificate expiring at `not_after` stands at `now`.
    pub fn judge(&self, not_after: SystemTime, now: SystemTime) -> Level {
        match not_after.duration_since(now) {
            Err(_) => Level::Fail,
            Ok(left) if left <= self.fail => Level::Fail,
            Ok(left) if left <= self.warn => Level::Warn,
            Ok(_) => Level::Ok,
        }
    }
}

/// How a certificate that is renewed automatically stands: by the share of its life left.
pub fn judge_renewed(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Level {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    match not_after.duration_since(now) {
        Err(_) => Level::Fail,
        Ok(left) if left <= lifetime.mul_f64(RENEWED_FAIL_SHARE) => Level::Fail,
        Ok(left) if left <= lifetime.mul_f64(RENEWED_WARN_SHARE) => Level::Warn,
        Ok(_) => Level::Ok,
    }
}

/// Exit codes of `trellis check`.
pub const EXIT_OK: u8 = 0;
pub const EXIT_WARNINGS: u8 = 1;
pub const EXIT_FAILURES: u8 = 2;

/// 2 if any check failed; 1 if any warned and warnings count as failing; else 0.
pub fn exit_code(verdicts: &[Verdict], fail_on_warning: bool) -> u8 {
    match verdicts.iter().map(|v| v.level).max() {
        Some(Level::Fail) => EXIT_FAILURES,
        Some(Level::Warn) if fail_on_warning => EXIT_WARNINGS,
        _ => EXIT_OK,
    }
}

/// The verdicts as text, one line each (mark, check, detail) with the hint on the line
/// below, then a count. `terminal` picks marks over words; `paint` colours a mark (or
/// leaves it), and a hint with [`Level::Skipped`] (dim).
pub fn render(
    verdicts: &[Verdict],
    terminal: bool,
    paint: impl Fn(Level, &str) -> String,
) -> String {
    let width = verdicts
        .iter()
        .map(|v| v.check.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for v in verdicts {
        let mark = format!("{:<4}", v.level.mark(terminal));
        out.push_str(&format!(
            "{} {:<width$}  {}\n",
            paint(v.level, &mark),
            v.check,
            v.detail
        ));
        if !v.hint.is_empty() {
            let hint = format!("fix: {}", v.hint);
            out.push_str(&format!(
                "     {:<width$}  {}\n",
                "",
                paint(Level::Skipped, &hint)
            ));
        }
    }
    let count = |level| verdicts.iter().filter(|v| v.level == level).count();
    out.push_str(&format!(
        "\n{} passed, {} warning(s), {} failed, {} skipped\n",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail),
        count(Level::Skipped)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn defaults() -> Thresholds {
        Thresholds {
            warn: 30 * DAY,
            fail: 7 * DAY,
        }
    }

    #[test]
    fn expiry_is_ok_then_warn_then_fail_at_the_thresholds() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let t = defaults();
        assert_eq!(t.judge(now + 31 * DAY, now), Level::Ok);
        assert_eq!(t.judge(now + 30 * DAY, now), Level::Warn);
        assert_eq!(t.judge(now + 10 * DAY, now), Level::Warn);
        assert_eq!(
            t.judge(now + 7 * DAY + Duration::from_secs(1), now),
            Level::Warn
        );
        assert_eq!(t.judge(now + 7 * DAY, now), Level::Fail);
        assert_eq!(t.judge(now + Duration::from_secs(1), now), Level::Fail);
        assert_eq!(t.judge(now - DAY, now), Level::Fail, "expired");
        // A fail threshold above the warn one makes every warning a failure.
        let strict = Thresholds {
            warn: DAY,
            fail: 30 * DAY,
        };
        assert_eq!(strict.judge(now + 10 * DAY, now), Level::Fail);
    }

    #[test]
    fn renewed_certificates_are_judged_by_the_share_of_life_left() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let end = start + DAY; // the CA's serving certificate: 24 h, renewed at 12 h
        let hour = Duration::from_secs(3600);
        assert_eq!(judge_renewed(start, end, start + 12 * hour), Level::Ok);
        assert_eq!(judge_renewed(start, end, start + 18 * hour), Level::Warn);
        assert_eq!(judge_renewed(start, end, start + 22 * hour), Level::Fail);
        assert_eq!(judge_renewed(start, end, end + hour), Level::Fail);
    }

    #[test]
    fn exit_codes_follow_the_worst_verdict() {
        let v = |level| Verdict::new("x", level, "");
        assert_eq!(exit_code(&[v(Level::Ok), v(Level::Skipped)], true), 0);
        assert_eq!(exit_code(&[v(Level::Ok), v(Level::Warn)], false), 0);
        assert_eq!(exit_code(&[v(Level::Ok), v(Level::Warn)], true), 1);
        assert_eq!(exit_code(&[v(Level::Warn), v(Level::Fail)], false), 2);
        assert_eq!(exit_code(&[], false), 0);
    }

    #[test]
    fn renders_one_line_per_verdict_with_the_hint_below() {
        let verdicts = [
            Verdict::new("clock skew", Level::Ok, "0.1s"),
            Verdict::new("CRL", Level::Fail, "stale").hint("see the log"),
        ];
        let text = render(&verdicts, false, |_, s| s.to_owned());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ok   clock skew  0.1s");
        assert_eq!(lines[1], "FAIL CRL         stale");
        assert_eq!(lines[2], "                 fix: see the log");
        assert!(
            text.ends_with("1 passed, 0 warning(s), 1 failed, 0 skipped\n"),
            "{text}"
        );
        assert!(render(&verdicts, true, |_, s| s.to_owned()).contains("✘    CRL"));
    }

    #[test]
    fn hints_only_for_problems() {
        assert_eq!(Verdict::new("x", Level::Ok, "").hint("do").hint, "");
        assert_eq!(Verdict::new("x", Level::Warn, "").hint("do").hint, "do");
    }
}
