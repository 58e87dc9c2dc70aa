//! `/metrics` for every binary, through `prometheus-client` (as linkerd2-proxy does): the
//! OpenMetrics text format, its types and suffixes, written by the library.
//!
//! The values are read at scrape time from each binary's own state (atomics, the store's
//! counters), so a binary implements [`Source`] and [`render`] encodes it. A counter is
//! named here by its sample name (`…_total`), as alerts and dashboards use it; the family
//! name without the suffix is the library's business.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

mod histogram;
pub use histogram::{Histogram, LATENCY_BUCKETS};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the Prometheus text format (0.0.4), for scrapers that do not ask
/// for OpenMetrics.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The labels of one sample, in order.
pub type Labels = Vec<(&'static str, String)>;

/// What a binary exports.
pub trait Source: Send + Sync + 'static {
    /// Writes every family, in the order they should appear.
    fn collect(&self, families: &mut Families<'_>) -> fmt::Result;
}

/// Where a [`Source`] writes its families.
pub struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl fmt::Debug for Families<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Families")
    }
}

impl Families<'_> {
    /// A counter family; `name` is the sample name and ends in `_total`.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> fmt::Result {
        debug_assert!(name.ends_with("_total"), "{name}: a counter ends in _total");
        let base = name.strip_suffix("_total").unwrap_or(name);
        let mut family = self
            .encoder
            .encode_descriptor(base, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            sample(&mut family, labels, |m| {
                m.encode_counter::<NoLabelSet, u64, u64>(&value, None)
            })?;
        }
        Ok(())
    }

    /// A gauge family.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, i64)>,
    ) -> fmt::Result {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            sample(&mut family, labels, |m| m.encode_gauge(&value))?;
        }
        Ok(())
    }

    /// A histogram family of [`LATENCY_BUCKETS`].
    pub fn histogram<'h>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, &'h Histogram)>,
    ) -> fmt::Result {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, histogram) in samples {
            let snapshot = histogram.snapshot();
            sample(&mut family, labels, |m| {
                m.encode_histogram::<NoLabelSet>(
                    snapshot.sum_seconds,
                    snapshot.count,
                    &snapshot.buckets,
                    None,
                )
            })?;
        }
        Ok(())
    }
}

/// One sample of `family` with `labels` (escaped as the text format wants: the library
/// writes label values as given).
fn sample(
    family: &mut MetricEncoder<'_>,
    labels: Labels,
    encode: impl FnOnce(&mut MetricEncoder<'_>) -> fmt::Result,
) -> fmt::Result {
    if labels.is_empty() {
        return encode(family);
    }
    let labels: Vec<(&str, String)> = labels
        .into_iter()
        .map(|(name, value)| (name, escape(&value)))
        .collect();
    encode(&mut family.encode_family(&labels)?)
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Adapts a [`Source`] to the library's collector.
struct Collected<S>(Arc<S>);

impl<S> fmt::Debug for Collected<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Collected")
    }
}

impl<S: Source> Collector for Collected<S> {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.0.collect(&mut Families { encoder })
    }
}

/// `source`'s families in the OpenMetrics text format, ending with `# EOF`. A source that
/// fails half way (it cannot: writing to a `String` does not fail) yields what it wrote.
pub fn render<S: Source>(source: &Arc<S>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collected(source.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding /metrics failed");
    }
    out
}

/// The exposition a scraper asked for with `accept` (its `Accept` header): OpenMetrics
/// if it names it (Prometheus does), else the Prometheus text format, which older tools
/// (`promtool check metrics`, many agents, a human with curl) read. Returns the content
/// type and the body.
pub fn negotiate<S: Source>(accept: Option<&str>, source: &Arc<S>) -> (&'static str, String) {
    let openmetrics = render(source);
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (CONTENT_TYPE, openmetrics)
    } else {
        (PROMETHEUS_TEXT, prometheus_text(&openmetrics))
    }
}

/// The Prometheus text format of an OpenMetrics exposition: the two differ only in a
/// counter family's name (OpenMetrics names it without `_total`, the samples keep it) and
/// the `# EOF` marker; samples and label escaping are the same.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let declared = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match declared {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// One label: `labels("direction", "inbound")`.
pub fn label(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Default)]
    struct Example {
        latency: Histogram,
    }

    impl Source for Example {
        fn collect(&self, families: &mut Families<'_>) -> fmt::Result {
            families.counter(
                "x_requests_total",
                "Requests.",
                [
                    (label("outcome", "ok"), 3),
                    (label("outcome", "say \"no\"\\\n"), 1),
                ],
            )?;
            families.gauge("x_open", "Open now.", [(Labels::new(), -1)])?;
            families.histogram(
                "x_duration_seconds",
                "Time taken.",
                [(label("direction", "inbound"), &self.latency)],
            )
        }
    }

    #[test]
    fn renders_openmetrics_with_suffixes_escapes_and_cumulative_buckets() {
        let source = Arc::new(Example::default());
        source.latency.observe(Duration::from_micros(200));
        source.latency.observe(Duration::from_millis(3));
        source.latency.observe(Duration::from_secs(60));
        let text = render(&source);
        for line in [
            "# HELP x_requests Requests.",
            "# TYPE x_requests counter",
            "x_requests_total{outcome=\"ok\"} 3",
            "x_requests_total{outcome=\"say \\\"no\\\"\\\\\\n\"} 1",
            "# TYPE x_open gauge",
            "x_open -1",
            "# TYPE x_duration_seconds histogram",
            "x_duration_seconds_bucket{le=\"0.00025\",direction=\"inbound\"} 1",
            "x_duration_seconds_bucket{le=\"0.005\",direction=\"inbound\"} 2",
            "x_duration_seconds_bucket{le=\"10.0\",direction=\"inbound\"} 2",
            "x_duration_seconds_bucket{le=\"+Inf\",direction=\"inbound\"} 3",
            "x_duration_seconds_sum{direction=\"inbound\"} 60.0032",
            "x_duration_seconds_count{direction=\"inbound\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");

        let (content_type, body) = negotiate(
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
            &source,
        );
        assert_eq!((content_type, body.as_str()), (CONTENT_TYPE, text.as_str()));
        let (content_type, plain) = negotiate(None, &source);
        assert_eq!(content_type, PROMETHEUS_TEXT);
        for line in [
            "# HELP x_requests_total Requests.",
            "# TYPE x_requests_total counter",
            "x_requests_total{outcome=\"ok\"} 3",
            "# TYPE x_open gauge",
            "# TYPE x_duration_seconds histogram",
            "x_duration_seconds_count{direction=\"inbound\"} 3",
        ] {
            assert!(
                plain.lines().any(|l| l == line),
                "{line:?} missing:\n{plain}"
            );
        }
        assert!(!plain.contains("# EOF"), "{plain}");
    }
}
