//! The checks of `trellis check`, in the order they are shown. Each reads [`Facts`] and
//! returns its verdicts (one, or one per root); a check whose input could not be read says
//! so as `skipped`, and the check that covers the cause fails.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tonic_health::pb::health_check_response::ServingStatus;
use trellis_proto::admin::v1::{CertificateRecord, GetStatusResponse};

use super::verdict::{Level, Verdict, expiry_detail, judge_renewed};
use super::{Facts, Refusal};
use crate::timefmt;

/// One check: a name for the table, and what it concludes from the facts.
pub struct Check {
    pub name: &'static str,
    pub run: fn(&Facts) -> Vec<Verdict>,
}

/// Every check, in display order.
pub const CHECKS: &[Check] = &[
    Check {
        name: "CA reachable",
        run: ca_reachable,
    },
    Check {
        name: "admin certificate",
        run: admin_certificate,
    },
    Check {
        name: "certificate store",
        run: store_writable,
    },
    Check {
        name: "roots",
        run: roots,
    },
    Check {
        name: "signing intermediate",
        run: intermediate,
    },
    Check {
        name: "CA serving certificate",
        run: serving_certificate,
    },
    Check {
        name: "root rotation",
        run: rotation,
    },
    Check {
        name: "bundle convergence",
        run: convergence,
    },
    Check {
        name: "workload renewals",
        run: renewals,
    },
    Check {
        name: "clock skew",
        run: clock_skew,
    },
    Check {
        name: "CRL",
        run: crl,
    },
    Check {
        name: "audit log",
        run: audit_log,
    },
    Check {
        name: "federated bundles",
        run: federations,
    },
];

/// A federated bundle not refreshed for this long, while its endpoint fails, fails the
/// check: the other trust domain may have rotated its root by then, and its workloads
/// would be refused. Any failing refresh is a warning before that.
pub const FEDERATION_STALE_FAIL: Duration = Duration::from_secs(24 * 3600);

/// Clock skew this machine and the CA may have: above it a warning, above the second a
/// failure (the CA backdates NotBefore by at most 60 s, so a larger skew makes fresh
/// certificates "not yet valid" on one side).
pub const SKEW_WARN: Duration = Duration::from_secs(5);
pub const SKEW_FAIL: Duration = Duration::from_secs(60);

/// Sidecars renew at 40–60 % of a certificate's life and retry within seconds: a newest
/// certificate past 75 % of its life has missed its renewal (warning), past 90 % it is
/// about to lapse with no successor (failure).
pub const RENEWAL_OVERDUE_SHARE: f64 = 0.75;
pub const RENEWAL_LAPSING_SHARE: f64 = 0.90;

/// The CA re-signs a CRL after half of its hour; one with less than this left was not.
pub const CRL_WARN: Duration = Duration::from_secs(20 * 60);

fn skipped(check: &str, why: impl std::fmt::Display) -> Vec<Verdict> {
    vec![Verdict::new(
        check,
        Level::Skipped,
        format!("not checked: {why}"),
    )]
}

fn status(facts: &Facts) -> Result<&GetStatusResponse, &Refusal> {
    facts.status.as_ref().map(|(s, _)| s)
}

fn time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    timefmt::from_proto(ts)
}

fn ca_reachable(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "CA reachable";
    let verdict = match &facts.health {
        Ok(ServingStatus::Serving) => Verdict::new(NAME, Level::Ok, "serving"),
        Ok(other) => Verdict::new(
            NAME,
            Level::Fail,
            format!("health check says {}", other.as_str_name()),
        )
        .hint("the CA is shutting down or starting; see its log"),
        Err(why) => Verdict::new(NAME, Level::Fail, why.clone())
            .hint("start trellis-ca, or point --ca-addr (or `trellis login`) at it"),
    };
    vec![verdict]
}

fn admin_certificate(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "admin certificate";
    let info = match &facts.admin {
        Ok(info) => info,
        Err(why) => return vec![Verdict::new(NAME, Level::Fail, why.clone())],
    };
    let level = facts.thresholds.judge(info.not_after, facts.now);
    let mut detail = format!(
        "{} {}",
        facts.admin_cert,
        expiry_detail(info.not_after, facts.now)
    );
    let mut level = level;
    // The CA may refuse it for other reasons (revoked, unknown to this CA).
    if let Err(r) = &facts.status
        && r.code == tonic::Code::Unauthenticated
        && level < Level::Fail
    {
        level = Level::Fail;
        detail = r.text.clone();
    }
    vec![Verdict::new(NAME, level, detail).hint(
        "admin certificates are not renewed: get a new one from whoever runs the CA (a CA \
         started without admin/admin.pem in its data directory writes fresh admin \
         credentials there), then run `trellis login` again",
    )]
}

/// The CA's words for a store that cannot write (`certificate store unavailable, …`).
fn is_store_refusal(r: &Refusal) -> bool {
    r.code == tonic::Code::Unavailable && r.text.contains("certificate store unavailable")
}

fn store_writable(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "certificate store";
    const HINT: &str = "free space on the CA's data directory or remount it read-write; the \
                        CA resumes by itself, see docs/crash-safety.md";
    let verdict = match &facts.status {
        Ok((s, _)) if s.store_failure.is_empty() => Verdict::new(NAME, Level::Ok, "writable"),
        Ok((s, _)) => Verdict::new(NAME, Level::Fail, s.store_failure.clone()).hint(HINT),
        // While the store cannot write, the CA refuses admin calls before their handler
        // and says why.
        Err(r) if is_store_refusal(r) => Verdict::new(NAME, Level::Fail, r.text.clone()).hint(HINT),
        Err(r) => return skipped(NAME, r),
    };
    vec![verdict]
}

fn roots(facts: &Facts) -> Vec<Verdict> {
    let s = match status(facts) {
        Ok(s) => s,
        Err(r) => return skipped("roots", r),
    };
    s.roots
        .iter()
        .filter(|r| r.state != "retired")
        .map(|r| {
            let name = format!("root {} ({})", r.id, r.state);
            match time(r.not_after.as_ref()) {
                Some(not_after) => Verdict::new(
                    name,
                    facts.thresholds.judge(not_after, facts.now),
                    expiry_detail(not_after, facts.now),
                )
                .hint(format!(
                    "rotate: `trellis root add`, wait until `trellis root list` shows every \
                     workload converged, `trellis root activate <new>`, then retire {} once \
                     no workload uses it",
                    r.id
                )),
                None => Verdict::new(name, Level::Fail, "the CA reported no expiry"),
            }
        })
        .collect()
}

fn intermediate(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "signing intermediate";
    let s = match status(facts) {
        Ok(s) => s,
        Err(r) => return skipped(NAME, r),
    };
    let Some(not_after) = s
        .intermediate
        .as_ref()
        .and_then(|i| time(i.not_after.as_ref()))
    else {
        return vec![Verdict::new(NAME, Level::Fail, "the CA reported none")];
    };
    let root = s
        .intermediate
        .as_ref()
        .map(|i| i.root_id.as_str())
        .unwrap_or_default();
    vec![
        Verdict::new(
            NAME,
            facts.thresholds.judge(not_after, facts.now),
            format!("under root {root}, {}", expiry_detail(not_after, facts.now)),
        )
        .hint(
            "a new intermediate comes with a root activation: `trellis root add`, then \
             `trellis root activate <id>` once every workload has converged",
        ),
    ]
}

fn serving_certificate(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "CA serving certificate";
    let info = match &facts.serving {
        Ok(info) => info,
        Err(why) => return skipped(NAME, why),
    };
    let level = judge_renewed(info.not_before, info.not_after, facts.now);
    vec![
        Verdict::new(NAME, level, expiry_detail(info.not_after, facts.now)).hint(
            "the CA renews it at half its life: its renewal is failing, see the CA's log \
             (\"renewing the CA serving certificate failed\")",
        ),
    ]
}

fn rotation(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "root rotation";
    let s = match status(facts) {
        Ok(s) => s,
        Err(r) => return skipped(NAME, r),
    };
    let mut verdicts = Vec::new();
    for r in &s.roots {
        match r.state.as_str() {
            "pending" => verdicts.push(
                Verdict::new(
                    NAME,
                    Level::Warn,
                    format!(
                        "root {} was added (bundle version {}) but not activated",
                        r.id, r.added_in_bundle_version
                    ),
                )
                .hint(format!(
                    "finish the rotation: `trellis root activate {}` once `trellis root list` \
                     shows every workload converged (or `trellis root retire {}` if it was \
                     added by mistake)",
                    r.id, r.id
                )),
            ),
            "retiring" => verdicts.push(
                Verdict::new(
                    NAME,
                    Level::Warn,
                    format!(
                        "root {} no longer signs but is still in the bundle ({} workload(s) \
                         still use it)",
                        r.id, r.workloads_using
                    ),
                )
                .hint(if r.workloads_using == 0 {
                    format!("finish the rotation: `trellis root retire {}`", r.id)
                } else {
                    format!(
                        "wait until those workloads renew (at 40–60 % of their certificates' \
                         life), then `trellis root retire {}`",
                        r.id
                    )
                }),
            ),
            _ => {}
        }
    }
    if verdicts.is_empty() {
        verdicts.push(Verdict::new(NAME, Level::Ok, "no rotation in progress"));
    }
    verdicts
}

fn convergence(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "bundle convergence";
    let roots = match &facts.roots {
        Ok(roots) => roots,
        Err(r) => return skipped(NAME, r),
    };
    let behind = &roots.unconverged_workloads;
    let verdict = if behind.is_empty() {
        Verdict::new(
            NAME,
            Level::Ok,
            format!(
                "{} live workload(s) hold bundle version {}",
                roots.live_workloads, roots.bundle_version
            ),
        )
    } else {
        let shown: Vec<&str> = behind.iter().take(5).map(String::as_str).collect();
        let more = behind.len().saturating_sub(shown.len());
        Verdict::new(
            NAME,
            Level::Warn,
            format!(
                "{} of {} live workload(s) have not acknowledged bundle version {}: {}{}",
                behind.len(),
                roots.live_workloads,
                roots.bundle_version,
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        )
        .hint(
            "their sidecars cannot reach the CA's bundle stream: check their logs and \
             `trellis-sidecar check` in those pods",
        )
    };
    vec![verdict]
}

/// Whether a certificate was issued to a sidecar (which renews it), not to a tool.
fn renewed_by_a_sidecar(r: &CertificateRecord) -> bool {
    matches!(
        r.issued_via.as_str(),
        "join_token" | "renewal" | "service_account_token"
    )
}

/// Each sidecar identity's newest unrevoked certificate, judged by how far into its life it
/// is without a successor.
pub fn renewal_verdicts(records: &[CertificateRecord], now: SystemTime) -> Vec<Verdict> {
    const NAME: &str = "workload renewals";
    let mut newest: BTreeMap<&str, &CertificateRecord> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.revoked_at.is_none() && renewed_by_a_sidecar(r))
    {
        let issued = |r: &CertificateRecord| time(r.issued_at.as_ref());
        match newest.get(r.spiffe_id.as_str()) {
            Some(seen) if issued(seen) >= issued(r) => {}
            _ => {
                newest.insert(&r.spiffe_id, r);
            }
        }
    }
    let mut overdue = Vec::new();
    let mut worst = Level::Ok;
    for r in newest.values() {
        let (Some(not_before), Some(not_after)) =
            (time(r.not_before.as_ref()), time(r.not_after.as_ref()))
        else {
            continue;
        };
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        let used = now.duration_since(not_before).unwrap_or_default();
        let level = if used >= lifetime.mul_f64(RENEWAL_LAPSING_SHARE) {
            Level::Fail
        } else if used >= lifetime.mul_f64(RENEWAL_OVERDUE_SHARE) {
            Level::Warn
        } else {
            continue;
        };
        worst = worst.max(level);
        overdue.push(format!(
            "{} ({})",
            r.spiffe_id,
            timefmt::expiry(not_after, now)
        ));
    }
    if overdue.is_empty() {
        return vec![Verdict::new(
            NAME,
            Level::Ok,
            match newest.len() {
                1 => "1 sidecar identity renewing on time".to_owned(),
                n => format!("{n} sidecar identities renewing on time"),
            },
        )];
    }
    let shown: Vec<&str> = overdue.iter().take(5).map(String::as_str).collect();
    let more = overdue.len() - shown.len();
    vec![
        Verdict::new(
            NAME,
            worst,
            format!(
                "{} certificate(s) past their renewal with no successor: {}{}",
                overdue.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        )
        .hint(
            "their sidecars cannot renew: run `trellis-sidecar check` in those pods (a \
             workload that is gone shows here until its certificate expires; `trellis cert \
             revoke --spiffe-id` it to clear it)",
        ),
    ]
}

fn renewals(facts: &Facts) -> Vec<Verdict> {
    match &facts.certificates {
        Ok(records) => renewal_verdicts(records, facts.now),
        Err(r) => skipped("workload renewals", r),
    }
}

fn clock_skew(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "clock skew";
    let (s, midway) = match &facts.status {
        Ok(pair) => pair,
        Err(r) => return skipped(NAME, r),
    };
    let Some(ca_time) = time(s.current_time.as_ref()) else {
        return skipped(
            NAME,
            "this CA does not report its time (an older trellis-ca)",
        );
    };
    let (skew, direction) = match ca_time.duration_since(*midway) {
        Ok(ahead) => (ahead, "ahead of"),
        Err(e) => (e.duration(), "behind"),
    };
    let level = if skew > SKEW_FAIL {
        Level::Fail
    } else if skew > SKEW_WARN {
        Level::Warn
    } else {
        Level::Ok
    };
    vec![
        Verdict::new(
            NAME,
            level,
            format!(
                "the CA's clock is {:.1}s {direction} this machine's",
                skew.as_secs_f64()
            ),
        )
        .hint("run NTP (chrony, systemd-timesyncd) on this machine and the CA's node"),
    ]
}

fn crl(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "CRL";
    let s = match status(facts) {
        Ok(s) => s,
        Err(r) => return skipped(NAME, r),
    };
    const HINT: &str = "the CA cannot sign or record a new CRL: see its log, and the \
                        certificate store check above";
    if !s.crl_error.is_empty() {
        return vec![Verdict::new(NAME, Level::Fail, s.crl_error.clone()).hint(HINT)];
    }
    let Some(next_update) = time(s.crl_next_update.as_ref()) else {
        return skipped(
            NAME,
            "this CA does not report its CRL (an older trellis-ca)",
        );
    };
    let level = match next_update.duration_since(facts.now) {
        Err(_) => Level::Fail,
        Ok(left) if left < CRL_WARN => Level::Warn,
        Ok(_) => Level::Ok,
    };
    let when = timefmt::expiry(next_update, facts.now);
    let detail = if level == Level::Fail {
        format!(
            "stale: next update was due {}",
            when.trim_start_matches("expired ")
        )
    } else {
        format!("next update {when}")
    };
    vec![Verdict::new(NAME, level, detail).hint(HINT)]
}

fn audit_log(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "audit log";
    let verdict = match &facts.audit {
        Ok(Ok(v)) if v.entries > 0 && v.last_checkpoint.is_none() => Verdict::new(
            NAME,
            Level::Warn,
            format!(
                "{} entries chained, but no checkpoint signed yet: a rewrite of the whole log \
                 would not be detected",
                v.entries
            ),
        )
        .hint(
            "the CA signs one every [audit] checkpoint_interval, on root changes and at shutdown",
        ),
        Ok(Ok(v)) => Verdict::new(
            NAME,
            Level::Ok,
            format!(
                "intact: {} entries, {} signed checkpoints, {} entries after the last one",
                v.entries, v.checkpoints, v.unsigned_tail
            ),
        ),
        Ok(Err(tamper)) => Verdict::new(NAME, Level::Fail, tamper.to_string()).hint(
            "the CA's store was changed behind its back: keep a copy of the data directory for \
             investigation, see `trellis audit verify`",
        ),
        Err(why) => Verdict::new(NAME, Level::Skipped, format!("not read: {why}")),
    };
    vec![verdict]
}

fn federations(facts: &Facts) -> Vec<Verdict> {
    const NAME: &str = "federated bundles";
    let all = match &facts.federations {
        Ok(all) => all,
        // An older CA without federation answers UNIMPLEMENTED: nothing to check there.
        Err(r) if r.code == tonic::Code::Unimplemented => {
            return skipped(NAME, "this CA does not support federation");
        }
        Err(r) => return skipped(NAME, r),
    };
    if all.is_empty() {
        return vec![Verdict::new(NAME, Level::Ok, "no federated trust domains")];
    }
    all.iter()
        .map(|f| {
            let refreshed = time(f.refreshed_at.as_ref()).unwrap_or(facts.now);
            let age = timefmt::since(refreshed, facts.now);
            if f.last_error.is_empty() {
                return Verdict::new(
                    NAME,
                    Level::Ok,
                    format!(
                        "{}: bundle sequence {} fetched {age}",
                        f.trust_domain, f.sequence
                    ),
                );
            }
            let stale = facts
                .now
                .duration_since(refreshed)
                .is_ok_and(|d| d >= FEDERATION_STALE_FAIL);
            let level = if stale { Level::Fail } else { Level::Warn };
            Verdict::new(
                NAME,
                level,
                format!(
                    "{}: refresh failing, the bundle in force was fetched {age}: {}",
                    f.trust_domain, f.last_error
                ),
            )
            .hint(format!(
                "check that {} is reachable and serves with {}; `trellis federation refresh \
                 {}` retries now",
                f.endpoint_url, f.endpoint_spiffe_id, f.trust_domain
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    const MIN: Duration = Duration::from_secs(60);

    fn record(id: &str, via: &str, nb: SystemTime, lifetime: Duration) -> CertificateRecord {
        CertificateRecord {
            spiffe_id: id.into(),
            issued_via: via.into(),
            not_before: Some(Timestamp::from(nb)),
            not_after: Some(Timestamp::from(nb + lifetime)),
            issued_at: Some(Timestamp::from(nb)),
            ..Default::default()
        }
    }

    #[test]
    fn a_certificate_past_its_renewal_without_successor_is_flagged() {
        let t0 = SystemTime::UNIX_EPOCH + 1_000_000 * MIN;
        let hour = 60 * MIN;
        let records = vec![
            // Renewed on time: the old one is superseded by a newer one.
            record("spiffe://td/a", "join_token", t0, hour),
            record("spiffe://td/a", "renewal", t0 + 30 * MIN, hour),
            // Stuck at 80 % of its life: a warning.
            record("spiffe://td/b", "renewal", t0, hour),
            // An admin-issued certificate is nobody's to renew.
            record("spiffe://td/tool", "admin", t0 - 50 * MIN, hour),
        ];
        let now = t0 + 48 * MIN;
        let v = renewal_verdicts(&records, now);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].level, Level::Warn, "{v:?}");
        assert!(v[0].detail.contains("spiffe://td/b"), "{v:?}");
        assert!(!v[0].detail.contains("spiffe://td/a"), "{v:?}");
        assert!(!v[0].detail.contains("tool"), "{v:?}");
        // At 95 % of its life: a failure.
        let v = renewal_verdicts(&records, t0 + 57 * MIN);
        assert_eq!(v[0].level, Level::Fail, "{v:?}");
        // All on time.
        let v = renewal_verdicts(&records[..2], t0 + 40 * MIN);
        assert_eq!(v[0].level, Level::Ok, "{v:?}");
    }

    #[test]
    fn a_store_refusal_is_recognised_by_the_cas_words() {
        let r = Refusal {
            code: tonic::Code::Unavailable,
            text: "the CA at x cannot serve status right now: certificate store unavailable, \
                   nothing was done: disk full"
                .into(),
        };
        assert!(is_store_refusal(&r));
        let r = Refusal {
            code: tonic::Code::Unavailable,
            text: "cannot reach the CA".into(),
        };
        assert!(!is_store_refusal(&r));
    }
}
