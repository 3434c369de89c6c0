//! Prometheus metrics: one registry per process, handed to each source and
//! sink as a small handle of counters and gauges with its labels bound.
//!
//! Labels are low-cardinality by construction: a source or sink id (from
//! the configuration), its kind, an HTTP status, an error class. Never an
//! event, user or workspace id. The exposed names are listed in
//! `deploy/metrics.txt`, which the dashboards and alert rules are checked
//! against.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// A gauge holding an `f64`.
pub type FloatGauge = Gauge<f64, AtomicU64>;
/// A counter of seconds (or other fractional amounts).
pub type FloatCounter = Counter<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    source: String,
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    source: String,
    kind: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Debug, Default)]
struct SourceFamilies {
    requests: Family<StatusLabels, Counter>,
    received: Family<SourceLabels, Counter>,
    stored: Family<SourceLabels, Counter>,
    duplicates: Family<SourceLabels, Counter>,
    quarantined: Family<SourceLabels, Counter>,
    errors: Family<ClassLabels, Counter>,
    rate_limit_waits: Family<SourceLabels, Counter>,
    rate_limit_wait_seconds: Family<SourceLabels, FloatCounter>,
    cursor_restarts: Family<SourceLabels, Counter>,
    retention_gaps: Family<SourceLabels, Counter>,
    lag: Family<SourceLabels, FloatGauge>,
    cursor_age: Family<SourceLabels, FloatGauge>,
    retention: Family<SourceLabels, FloatGauge>,
    retention_warning: Family<SourceLabels, Gauge>,
    last_success: Family<SourceLabels, FloatGauge>,
    paused: Family<SourceLabels, Gauge>,
    backfill_slices: Family<SourceLabels, Gauge>,
    cache_hits: Family<SourceLabels, Counter>,
    cache_misses: Family<SourceLabels, Counter>,
}

#[derive(Debug, Default)]
struct SinkFamilies {
    sent: Family<SinkLabels, Counter>,
    acknowledged: Family<SinkLabels, Counter>,
    retries: Family<SinkLabels, Counter>,
    errors: Family<SinkLabels, Counter>,
    dead_lettered: Family<SinkLabels, Counter>,
    outbox_events: Family<SinkLabels, Gauge>,
    outbox_bytes: Family<SinkLabels, Gauge>,
    dead_letters: Family<SinkLabels, Gauge>,
    last_ack: Family<SinkLabels, FloatGauge>,
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sources: SourceFamilies,
    sinks: SinkFamilies,
    reloads: Family<ResultLabels, Counter>,
    last_reload_ok: Gauge,
    outbox_events: Gauge,
    outbox_limit: Gauge,
    state_file_bytes: Gauge,
}

impl Metrics {
    /// A registry with every family registered (families without a member
    /// yet still show their `# HELP` and `# TYPE`).
    pub fn new() -> Arc<Self> {
        let sources = SourceFamilies::default();
        let sinks = SinkFamilies::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        let outbox_events = Gauge::default();
        let outbox_limit = Gauge::default();
        let state_file_bytes = Gauge::default();
        let start_time = FloatGauge::default();
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        );

        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("auditrelay");
        r.register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        );
        r.register(
            "start_time_seconds",
            "When the process started, in seconds since the Unix epoch",
            start_time,
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result",
            reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 if the last reload was applied (or none was tried), 0 if it was rejected",
            last_reload_ok.clone(),
        );
        r.register(
            "outbox_events",
            "Events in the outbox, waiting for at least one sink",
            outbox_events.clone(),
        );
        r.register(
            "outbox_limit_events",
            "Outbox depth at which sources pause (state.max_outbox_events)",
            outbox_limit.clone(),
        );
        r.register(
            "state_file_bytes",
            "Size of the state database and its write-ahead log",
            state_file_bytes.clone(),
        );

        let s = &sources;
        let src = r.sub_registry_with_prefix("source");
        src.register(
            "requests",
            "API requests by HTTP status (\"error\": no response)",
            s.requests.clone(),
        );
        src.register(
            "events_received",
            "Events received from the API, before dedup",
            s.received.clone(),
        );
        src.register(
            "events_stored",
            "Events committed to the outbox",
            s.stored.clone(),
        );
        src.register(
            "events_duplicate",
            "Events dropped as already seen",
            s.duplicates.clone(),
        );
        src.register(
            "events_quarantined",
            "Records that could not be read, kept in the quarantine table",
            s.quarantined.clone(),
        );
        src.register(
            "errors",
            "Failed polls by class (transient, rate_limited, cursor_expired, unauthorized, rejected, state, unstable_window)",
            s.errors.clone(),
        );
        src.register(
            "rate_limit_waits",
            "Waits imposed by the API's rate limit (HTTP 429)",
            s.rate_limit_waits.clone(),
        );
        src.register(
            "rate_limit_wait_seconds",
            "Time spent waiting on the API's rate limit",
            s.rate_limit_wait_seconds.clone(),
        );
        src.register(
            "cursor_restarts",
            "Times the stored cursor was rejected and the stream restarted by time",
            s.cursor_restarts.clone(),
        );
        src.register(
            "retention_gaps",
            "Times a start point lay beyond the API's retention (events lost upstream)",
            s.retention_gaps.clone(),
        );
        src.register(
            "lag_seconds",
            "Now minus the time of the newest committed event",
            s.lag.clone(),
        );
        src.register(
            "cursor_age_seconds",
            "Now minus the point up to which the source has read everything",
            s.cursor_age.clone(),
        );
        src.register(
            "retention_seconds",
            "How long the API keeps events",
            s.retention.clone(),
        );
        src.register(
            "retention_warning",
            "1 while the cursor is close to falling out of the API's retention",
            s.retention_warning.clone(),
        );
        src.register(
            "last_success_timestamp_seconds",
            "When the last poll succeeded, in seconds since the Unix epoch",
            s.last_success.clone(),
        );
        src.register(
            "paused",
            "1 while the source waits for room in the outbox",
            s.paused.clone(),
        );
        src.register(
            "backfill_slices",
            "Time slices of a backlog the source has still to read (0 outside a backfill)",
            s.backfill_slices.clone(),
        );

        let k = &sinks;
        let snk = r.sub_registry_with_prefix("sink");
        snk.register(
            "events_sent",
            "Events handed to the destination, every attempt (retries included)",
            k.sent.clone(),
        );
        snk.register(
            "events_acknowledged",
            "Events the destination acknowledged",
            k.acknowledged.clone(),
        );
        snk.register(
            "retries",
            "Batches delivered again after a failure",
            k.retries.clone(),
        );
        snk.register("errors", "Failed deliveries", k.errors.clone());
        snk.register(
            "dead_lettered",
            "Events refused for good and moved to the dead-letter table",
            k.dead_lettered.clone(),
        );
        snk.register(
            "outbox_events",
            "Events in the outbox this sink has not acknowledged",
            k.outbox_events.clone(),
        );
        snk.register(
            "outbox_bytes",
            "Payload bytes in the outbox this sink has not acknowledged",
            k.outbox_bytes.clone(),
        );
        snk.register(
            "dead_letters",
            "Rows in the dead-letter table for this sink",
            k.dead_letters.clone(),
        );
        snk.register(
            "last_ack_timestamp_seconds",
            "When the destination last acknowledged a batch",
            k.last_ack.clone(),
        );

        let enrich = r.sub_registry_with_prefix("enrichment_cache");
        enrich.register(
            "hits",
            "User lookups answered by the cache",
            s.cache_hits.clone(),
        );
        enrich.register(
            "misses",
            "User lookups that needed the API",
            s.cache_misses.clone(),
        );

        Arc::new(Self {
            registry: root,
            sources,
            sinks,
            reloads,
            last_reload_ok,
            outbox_events,
            outbox_limit,
            state_file_bytes,
        })
    }

    /// The handle a source records into.
    pub fn source(&self, id: &str, kind: &str) -> SourceMetrics {
        let labels = SourceLabels {
            source: id.to_string(),
            kind: kind.to_string(),
        };
        let s = &self.sources;
        let get = |f: &Family<SourceLabels, Counter>| f.get_or_create_owned(&labels);
        SourceMetrics {
            received: get(&s.received),
            stored: get(&s.stored),
            duplicates: get(&s.duplicates),
            quarantined: get(&s.quarantined),
            rate_limit_waits: get(&s.rate_limit_waits),
            rate_limit_wait_seconds: s.rate_limit_wait_seconds.get_or_create_owned(&labels),
            cursor_restarts: get(&s.cursor_restarts),
            retention_gaps: get(&s.retention_gaps),
            cache_hits: get(&s.cache_hits),
            cache_misses: get(&s.cache_misses),
            lag: s.lag.get_or_create_owned(&labels),
            cursor_age: s.cursor_age.get_or_create_owned(&labels),
            retention: s.retention.get_or_create_owned(&labels),
            retention_warning: s.retention_warning.get_or_create_owned(&labels),
            last_success: s.last_success.get_or_create_owned(&labels),
            paused: s.paused.get_or_create_owned(&labels),
            backfill_slices: s.backfill_slices.get_or_create_owned(&labels),
            requests: s.requests.clone(),
            errors: s.errors.clone(),
            labels: Arc::new(labels),
        }
    }

    /// The handle a sink records into.
    pub fn sink(&self, id: &str, kind: &str) -> SinkMetrics {
        let labels = SinkLabels {
            sink: id.to_string(),
            kind: kind.to_string(),
        };
        let k = &self.sinks;
        SinkMetrics {
            sent: k.sent.get_or_create_owned(&labels),
            acknowledged: k.acknowledged.get_or_create_owned(&labels),
            retries: k.retries.get_or_create_owned(&labels),
            errors: k.errors.get_or_create_owned(&labels),
            dead_lettered: k.dead_lettered.get_or_create_owned(&labels),
            outbox_events: k.outbox_events.get_or_create_owned(&labels),
            outbox_bytes: k.outbox_bytes.get_or_create_owned(&labels),
            dead_letters: k.dead_letters.get_or_create_owned(&labels),
            last_ack: k.last_ack.get_or_create_owned(&labels),
        }
    }

    /// Drops a removed source's series, so a dashboard does not show a
    /// source that is no longer configured as stuck.
    pub fn remove_source(&self, id: &str, kind: &str) {
        let labels = SourceLabels {
            source: id.to_string(),
            kind: kind.to_string(),
        };
        let s = &self.sources;
        for f in [
            &s.received,
            &s.stored,
            &s.duplicates,
            &s.quarantined,
            &s.rate_limit_waits,
            &s.cursor_restarts,
            &s.retention_gaps,
            &s.cache_hits,
            &s.cache_misses,
        ] {
            f.remove(&labels);
        }
        for f in [&s.lag, &s.cursor_age, &s.retention, &s.last_success] {
            f.remove(&labels);
        }
        s.rate_limit_wait_seconds.remove(&labels);
        s.retention_warning.remove(&labels);
        s.paused.remove(&labels);
        s.backfill_slices.remove(&labels);
    }

    /// Drops a removed sink's series.
    pub fn remove_sink(&self, id: &str, kind: &str) {
        let labels = SinkLabels {
            sink: id.to_string(),
            kind: kind.to_string(),
        };
        let k = &self.sinks;
        for f in [
            &k.sent,
            &k.acknowledged,
            &k.retries,
            &k.errors,
            &k.dead_lettered,
        ] {
            f.remove(&labels);
        }
        for f in [&k.outbox_events, &k.outbox_bytes, &k.dead_letters] {
            f.remove(&labels);
        }
        k.last_ack.remove(&labels);
    }

    /// Records a configuration reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        self.last_reload_ok.set(i64::from(ok));
    }

    /// Sets the process-wide outbox gauges.
    pub fn set_outbox(&self, events: i64, limit: u64, state_file_bytes: u64) {
        self.outbox_events.set(events);
        self.outbox_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
        self.state_file_bytes
            .set(i64::try_from(state_file_bytes).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition (OpenMetrics flavour, which
    /// Prometheus reads natively).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One source's metrics.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    labels: Arc<SourceLabels>,
    requests: Family<StatusLabels, Counter>,
    errors: Family<ClassLabels, Counter>,
    pub received: Counter,
    pub stored: Counter,
    pub duplicates: Counter,
    pub quarantined: Counter,
    pub rate_limit_waits: Counter,
    pub rate_limit_wait_seconds: FloatCounter,
    pub cursor_restarts: Counter,
    pub retention_gaps: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub lag: FloatGauge,
    pub cursor_age: FloatGauge,
    pub retention: FloatGauge,
    pub retention_warning: Gauge,
    pub last_success: FloatGauge,
    pub paused: Gauge,
    pub backfill_slices: Gauge,
}

impl SourceMetrics {
    /// A handle on a private registry, for tests and tools.
    pub fn detached(id: &str, kind: &str) -> Self {
        Metrics::new().source(id, kind)
    }

    /// Counts a request by its HTTP status, or `None` when no response came.
    pub fn request(&self, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.requests
            .get_or_create(&StatusLabels {
                source: self.labels.source.clone(),
                kind: self.labels.kind.clone(),
                status,
            })
            .inc();
    }

    /// Counts a failed poll by class.
    pub fn error(&self, class: &str) -> u64 {
        self.errors
            .get_or_create(&ClassLabels {
                source: self.labels.source.clone(),
                kind: self.labels.kind.clone(),
                class: class.to_string(),
            })
            .inc()
            + 1
    }
}

/// One sink's metrics.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    pub sent: Counter,
    pub acknowledged: Counter,
    pub retries: Counter,
    pub errors: Counter,
    pub dead_lettered: Counter,
    pub outbox_events: Gauge,
    pub outbox_bytes: Gauge,
    pub dead_letters: Gauge,
    pub last_ack: FloatGauge,
}

impl SinkMetrics {
    /// A handle on a private registry, for tests and tools.
    pub fn detached(id: &str, kind: &str) -> Self {
        Metrics::new().sink(id, kind)
    }
}

/// Seconds since the Unix epoch, as Prometheus timestamps are.
pub fn unix_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample names of an exposition (`name{labels} value`).
    fn sample_names(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn exposes_exactly_the_documented_names() {
        let metrics = Metrics::new();
        let source = metrics.source("asana-main", "asana");
        source.request(Some(200));
        source.error("transient");
        metrics.sink("siem", "syslog");
        metrics.reload(true);
        let text = metrics.encode();
        let exposed = sample_names(&text);
        let documented: std::collections::BTreeSet<String> = include_str!("../deploy/metrics.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        assert_eq!(exposed, documented, "exposition:\n{text}");
    }

    #[test]
    fn labels_carry_ids_and_values_move() {
        let metrics = Metrics::new();
        let source = metrics.source("asana-main", "asana");
        source.request(Some(429));
        source.request(Some(429));
        source.request(None);
        source.stored.inc_by(5);
        assert_eq!(source.error("unauthorized"), 1);
        assert_eq!(source.error("unauthorized"), 2);
        let text = metrics.encode();
        assert!(text.contains(
            r#"auditrelay_source_requests_total{source="asana-main",kind="asana",status="429"} 2"#
        ), "{text}");
        assert!(text.contains(r#"status="error"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"auditrelay_source_events_stored_total{source="asana-main",kind="asana"} 5"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"class="unauthorized"} 2"#), "{text}");

        metrics.remove_source("asana-main", "asana");
        let text = metrics.encode();
        assert!(
            !text.contains(r#"auditrelay_source_events_stored_total{"#),
            "{text}"
        );
    }

    #[test]
    fn reload_failure_flips_the_gauge() {
        let metrics = Metrics::new();
        metrics.reload(false);
        let text = metrics.encode();
        assert!(
            text.contains("auditrelay_config_last_reload_successful 0"),
            "{text}"
        );
        assert!(
            text.contains(r#"auditrelay_config_reloads_total{result="failure"} 1"#),
            "{text}"
        );
    }
}
