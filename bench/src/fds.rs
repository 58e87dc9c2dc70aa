//! Open-file limits for the benchmarks, raised with `rlimit` (no unsafe code), and said out
//! loud: what the limit was, what it is now, and why.

/// Raises the soft limit to the hard limit; returns a description of the result.
pub fn raise_soft() -> String {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => match rlimit::increase_nofile_limit(hard) {
            Ok(now) if now > soft => format!("{now} (soft limit raised from {soft})"),
            Ok(now) => format!("{now}"),
            Err(e) => format!("{soft} (could not raise to {hard}: {e})"),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

/// Raises soft and hard limits to at least `needed` for this process and so for every
/// child it starts (limits are inherited). Raising the hard limit needs root
/// (CAP_SYS_RESOURCE); without it the limits stay as they were and the result says so.
pub fn raise_to(needed: u64) -> String {
    let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else {
        return "open-file limit unknown".into();
    };
    if soft >= needed {
        return format!("open files {soft} (enough for {needed})");
    }
    let target = needed.max(hard);
    match rlimit::Resource::NOFILE.set(needed.max(soft), target) {
        Ok(()) => format!(
            "open files raised from soft {soft} / hard {hard} to {} / {target} for this process \
             and its children (as root; needed about {needed})",
            needed.max(soft)
        ),
        Err(e) => {
            let now = rlimit::increase_nofile_limit(hard).unwrap_or(soft);
            format!(
                "open files {now}: could not raise the hard limit {hard} to {needed} ({e}: raising it \
                 needs CAP_SYS_RESOURCE, which root in a container may lack), expect failures beyond about {} connections",
                now / 2
            )
        }
    }
}
