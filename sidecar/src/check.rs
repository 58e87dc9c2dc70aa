//! `trellis-sidecar check`: the verdicts of `trellis check` for one pod, from the sidecar's
//! admin endpoint (`/identity`): its certificate and renewal, the last renewal error, its
//! trust bundle's expiry and the CA's streams. Run inside the pod (`kubectl exec`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use trellis_identity::check::{self, Level, Thresholds, Verdict};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate past this share of its life has missed its renewal (which is due at
/// 40–60 %), past the second it is about to lapse (as `trellis check`).
const OVERDUE_SHARE: f64 = 0.75;
const LAPSING_SHARE: f64 = 0.90;

/// Flags of `trellis-sidecar check`.
#[derive(Debug, Parser)]
#[command(
    name = "trellis-sidecar check",
    about = "Check this pod's sidecar: certificate, renewal, trust bundle, CA streams",
    after_help = "Exit codes: 0 every check passed (warnings too, unless --fail-on-warning); \
                  1 warnings only, with --fail-on-warning; 2 a check failed"
)]
pub struct CheckFlags {
    /// The sidecar's admin endpoint.
    #[arg(long, default_value = "127.0.0.1:15020")]
    pub admin: SocketAddr,
    /// Warn when the trust bundle's last root expires within this.
    #[arg(long, value_name = "DURATION", default_value = check::DEFAULT_WARN)]
    pub warn_within: String,
    /// Fail when it expires within this.
    #[arg(long, value_name = "DURATION", default_value = check::DEFAULT_FAIL)]
    pub fail_within: String,
    /// Exit 1 when a check warns (and nothing fails).
    #[arg(long)]
    pub fail_on_warning: bool,
    /// Print one JSON document instead of text.
    #[arg(long, short = 'o', value_parser = ["human", "json"], default_value = "human")]
    pub output: String,
}

/// The parts of `/identity` the checks read.
#[derive(Debug, Deserialize)]
struct Identity {
    spiffe_id: String,
    not_after: String,
    seconds_left: u64,
    lifetime_seconds: u64,
    seconds_until_renewal: i64,
    last_renewal_error: Option<String>,
    ca_streams: Streams,
    bundle: Bundle,
}

#[derive(Debug, Deserialize)]
struct Streams {
    trust_bundle: bool,
    revocations: bool,
}

#[derive(Debug, Deserialize)]
struct Bundle {
    version: u64,
    not_after: String,
    seconds_left: i64,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    admin: String,
    verdicts: &'a [Verdict],
    exit_code: u8,
}

/// Runs the checks; returns what to print and the exit code.
pub fn run(flags: &CheckFlags) -> (String, u8) {
    let thresholds = match thresholds(flags) {
        Ok(t) => t,
        Err(e) => return (e, check::EXIT_FAILURES),
    };
    let verdicts = match get_identity(flags.admin) {
        Ok(identity) => verdicts(&identity, thresholds),
        Err(why) => vec![
            Verdict::new("sidecar", Level::Fail, why)
                .hint("is trellis-sidecar running in this pod, with [admin] listen on --admin?"),
        ],
    };
    let code = check::exit_code(&verdicts, flags.fail_on_warning);
    let text = if flags.output == "json" {
        serde_json::to_string_pretty(&Report {
            admin: flags.admin.to_string(),
            verdicts: &verdicts,
            exit_code: code,
        })
        .unwrap_or_default()
    } else {
        check::render(&verdicts, false, |_, s| s.to_owned())
    };
    (text, code)
}

fn thresholds(flags: &CheckFlags) -> Result<Thresholds, String> {
    let parse = |flag: &str, text: &str| {
        trellis_identity::duration::parse(text).map_err(|e| format!("{flag}: {e}"))
    };
    Ok(Thresholds {
        warn: parse("--warn-within", &flags.warn_within)?,
        fail: parse("--fail-within", &flags.fail_within)?,
    })
}

fn verdicts(id: &Identity, thresholds: Thresholds) -> Vec<Verdict> {
    let life = id.lifetime_seconds as f64;
    let used = life - id.seconds_left as f64;
    let certificate = if id.seconds_left == 0 || used >= life * LAPSING_SHARE {
        Level::Fail
    } else if used >= life * OVERDUE_SHARE {
        Level::Warn
    } else {
        Level::Ok
    };
    let renewal = if id.seconds_until_renewal >= 0 {
        format!("renews in {}s", id.seconds_until_renewal)
    } else {
        format!("renewal overdue by {}s", -id.seconds_until_renewal)
    };
    let why = id
        .last_renewal_error
        .clone()
        .unwrap_or_else(|| "no error recorded".into());
    let mut out = vec![
        Verdict::new(
            "certificate",
            certificate,
            format!(
                "{}: {}s left (until {}), {renewal}",
                id.spiffe_id, id.seconds_left, id.not_after
            ),
        )
        .hint(format!(
            "the sidecar cannot renew ({why}); check that the CA is reachable from the pod"
        )),
    ];
    out.push(match &id.last_renewal_error {
        None => Verdict::new("renewal", Level::Ok, "last attempt succeeded"),
        Some(e) => Verdict::new("renewal", Level::Warn, format!("last attempt failed: {e}"))
            .hint("it retries by itself; the error says what to fix"),
    });
    let bundle_left = Duration::from_secs(id.bundle.seconds_left.max(0).unsigned_abs());
    let now = std::time::SystemTime::now();
    let level = if id.bundle.seconds_left <= 0 {
        Level::Fail
    } else {
        thresholds.judge(now + bundle_left, now)
    };
    out.push(
        Verdict::new(
            "trust bundle",
            level,
            format!(
                "version {}, last root expires {} ({}s)",
                id.bundle.version, id.bundle.not_after, id.bundle.seconds_left
            ),
        )
        .hint("rotate the CA's root (`trellis root add`, then `trellis root activate`)"),
    );
    let down: Vec<&str> = [
        ("trust bundle", id.ca_streams.trust_bundle),
        ("revocations", id.ca_streams.revocations),
    ]
    .into_iter()
    .filter(|(_, up)| !up)
    .map(|(name, _)| name)
    .collect();
    out.push(if down.is_empty() {
        Verdict::new(
            "CA streams",
            Level::Ok,
            "trust bundle and revocations connected",
        )
    } else {
        Verdict::new(
            "CA streams",
            Level::Warn,
            format!("not connected: {}", down.join(", ")),
        )
        .hint("revocations and new roots do not reach this pod; check that the CA is reachable")
    });
    out
}

fn get_identity(admin: SocketAddr) -> Result<Identity, String> {
    let fail = |e: std::io::Error| format!("sidecar admin endpoint {admin} not answering: {e}");
    let mut conn = TcpStream::connect_timeout(&admin, TIMEOUT).map_err(fail)?;
    conn.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
    write!(conn, "GET /identity HTTP/1.0\r\nHost: {admin}\r\n\r\n").map_err(fail)?;
    let mut response = String::new();
    conn.read_to_string(&mut response).map_err(fail)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{admin} did not answer HTTP"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "the sidecar holds no certificate yet: {}",
            body.trim()
        ));
    }
    serde_json::from_str(body)
        .map_err(|e| format!("/identity at {admin} is not what this version reads: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(left: u64, until_renewal: i64, error: Option<&str>) -> Identity {
        Identity {
            spiffe_id: "spiffe://td/web".into(),
            not_after: "2030-01-01T00:00:00Z".into(),
            seconds_left: left,
            lifetime_seconds: 3600,
            seconds_until_renewal: until_renewal,
            last_renewal_error: error.map(str::to_owned),
            ca_streams: Streams {
                trust_bundle: true,
                revocations: true,
            },
            bundle: Bundle {
                version: 1,
                not_after: "2035-01-01T00:00:00Z".into(),
                seconds_left: 10 * 365 * 86_400,
            },
        }
    }

    fn defaults() -> Thresholds {
        Thresholds {
            warn: Duration::from_secs(30 * 86_400),
            fail: Duration::from_secs(7 * 86_400),
        }
    }

    #[test]
    fn a_certificate_renewing_on_time_passes_and_a_stuck_one_does_not() {
        let v = verdicts(&identity(3000, 1000, None), defaults());
        assert!(v.iter().all(|v| v.level == Level::Ok), "{v:?}");
        let v = verdicts(&identity(800, -1000, Some("CA unreachable")), defaults());
        assert_eq!(v[0].level, Level::Warn, "{v:?}");
        assert!(v[0].hint.contains("CA unreachable"), "{v:?}");
        assert_eq!(v[1].level, Level::Warn);
        let v = verdicts(&identity(300, -1500, None), defaults());
        assert_eq!(v[0].level, Level::Fail, "{v:?}");
        assert_eq!(check::exit_code(&v, false), check::EXIT_FAILURES);
    }

    #[test]
    fn a_bundle_near_its_end_and_a_dropped_stream_warn() {
        let mut id = identity(3000, 1000, None);
        id.bundle.seconds_left = 20 * 86_400;
        id.ca_streams.revocations = false;
        let v = verdicts(&id, defaults());
        assert_eq!(v[2].level, Level::Warn, "{v:?}");
        assert_eq!(v[3].level, Level::Warn, "{v:?}");
        assert!(v[3].detail.contains("revocations"), "{v:?}");
        id.bundle.seconds_left = -5;
        assert_eq!(verdicts(&id, defaults())[2].level, Level::Fail);
    }

    #[test]
    fn nothing_listening_fails_and_says_so() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let admin = closed.local_addr().expect("addr");
        drop(closed);
        let (text, code) = run(&CheckFlags::parse_from([
            "check",
            "--admin",
            &admin.to_string(),
        ]));
        assert_eq!(code, check::EXIT_FAILURES);
        assert!(text.contains("not answering"), "{text}");
    }
}
