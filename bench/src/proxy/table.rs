//! The one table of a proxy run, in Markdown so it pastes into the README.

use std::time::Duration;

/// What was measured for one stack.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// (p50, p99) per request rate, in the order of the rates.
    pub latency: Vec<(Duration, Duration)>,
    /// Bulk payload MB/s.
    pub mbps: f64,
    /// Full mTLS handshakes per second at the inbound port (`None`: direct).
    pub handshakes: Option<f64>,
    /// RSS of both proxies with no connection, KiB.
    pub idle_rss_kib: Option<u64>,
    /// Extra RSS of both proxies per idle connection through the pair, KiB.
    pub per_conn_kib: Option<f64>,
}

impl Row {
    /// A row with nothing measured yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            latency: Vec::new(),
            mbps: 0.0,
            handshakes: None,
            idle_rss_kib: None,
            per_conn_kib: None,
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "—".to_owned())
}

/// Renders `direct` (absolute latencies) and `rows` (latency added over direct: proxied
/// percentile minus direct percentile, in µs) for `rates` (requests per second).
pub fn render(direct: &Row, rows: &[Row], rates: &[u32]) -> String {
    let mut header = vec!["stack".to_owned()];
    for rate in rates {
        header.push(format!("p50 µs @{rate}/s"));
        header.push(format!("p99 µs @{rate}/s"));
    }
    header.extend(["MB/s", "handshakes/s", "idle RSS MB", "KB per idle conn"].map(str::to_owned));
    let mut out = format!("| {} |\n", header.join(" | "));
    out += &format!("|---|{}\n", "---:|".repeat(header.len() - 1));
    let line = |row: &Row, added: bool| -> String {
        let mut cells = vec![if added {
            row.name.clone()
        } else {
            format!("{} (absolute)", row.name)
        }];
        for (i, (p50, p99)) in row.latency.iter().enumerate() {
            let (b50, b99) = direct.latency.get(i).copied().unwrap_or_default();
            if added {
                cells.push(format!("{:+}", micros(*p50) - micros(b50)));
                cells.push(format!("{:+}", micros(*p99) - micros(b99)));
            } else {
                cells.push(micros(*p50).to_string());
                cells.push(micros(*p99).to_string());
            }
        }
        cells.push(format!("{:.0}", row.mbps));
        cells.push(opt(row.handshakes, |h| format!("{h:.0}")));
        cells.push(opt(row.idle_rss_kib, |k| {
            format!("{:.1}", k as f64 / 1024.0)
        }));
        cells.push(opt(row.per_conn_kib, |k| format!("{k:.1}")));
        format!("| {} |\n", cells.join(" | "))
    };
    out += &line(direct, false);
    for row in rows {
        out += &line(row, true);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn proxied_rows_show_what_they_add_over_direct() {
        let direct = Row {
            name: "direct".into(),
            latency: vec![(us(50), us(120)), (us(60), us(300))],
            mbps: 2000.0,
            handshakes: None,
            idle_rss_kib: None,
            per_conn_kib: None,
        };
        let trellis = Row {
            name: "trellis".into(),
            latency: vec![(us(90), us(200)), (us(55), us(400))],
            mbps: 812.4,
            handshakes: Some(1503.6),
            idle_rss_kib: Some(9 * 1024 + 512),
            per_conn_kib: Some(35.56),
        };
        let table = render(&direct, &[trellis], &[1000, 5000]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| stack | p50 µs @1000/s | p99 µs @1000/s | p50 µs @5000/s | p99 µs @5000/s | MB/s | handshakes/s | idle RSS MB | KB per idle conn |"
        );
        assert_eq!(lines[1], "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        assert_eq!(
            lines[2],
            "| direct (absolute) | 50 | 120 | 60 | 300 | 2000 | — | — | — |"
        );
        assert_eq!(
            lines[3],
            "| trellis | +40 | +80 | -5 | +100 | 812 | 1504 | 9.5 | 35.6 |"
        );
    }
}
