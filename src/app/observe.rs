//! The daemon watching itself: every few seconds it stores each
//! component's health, reads the backlog figures from the state file into
//! the gauges, raises the retention alarm, and tells systemd the worst lag;
//! and it feeds the systemd watchdog while every task keeps its promises.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::{Metrics, SinkMetrics, SourceMetrics};
use crate::source::sleep_or_cancel;
use crate::state::{unix_ms_now, Observation, SharedState, StateProbe};
use crate::status::SourceFigures;
use crate::systemd::Notifier;

/// How often gauges, stored health and the systemd status are refreshed.
const OBSERVE_EVERY: Duration = Duration::from_secs(5);

/// A cursor this far into its API's retention raises the alarm (a warning
/// log and `auditrelay_source_retention_warning`).
pub(crate) const RETENTION_WARNING_FRACTION: f64 = 0.75;

/// While the alarm stands, the warning is logged again this often.
const RETENTION_WARNING_REPEAT: Duration = Duration::from_secs(3600);

/// The sources and sinks running now, with their metric handles.
#[derive(Debug, Default)]
pub(super) struct Topology {
    pub(super) sources: BTreeMap<String, SourceEntry>,
    pub(super) sinks: BTreeMap<String, SinkMetrics>,
}

#[derive(Debug)]
pub(super) struct SourceEntry {
    retention: Duration,
    metrics: SourceMetrics,
    warned_at: Option<Instant>,
}

impl Topology {
    pub(super) fn add_source(&mut self, id: &str, retention: Duration, metrics: SourceMetrics) {
        let warned_at = self.sources.get(id).and_then(|e| e.warned_at);
        self.sources.insert(
            id.to_string(),
            SourceEntry {
                retention,
                metrics,
                warned_at,
            },
        );
    }
}

/// Reads the state file into gauges and the status line.
#[derive(Debug, Clone)]
pub(super) struct Observer {
    pub(super) state: SharedState,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    pub(super) notifier: Arc<Notifier>,
    pub(super) topology: Arc<Mutex<Topology>>,
    /// `state.max_outbox_events` in force (a reload may change it).
    pub(super) outbox_limit: Arc<AtomicU64>,
}

impl Observer {
    /// Refreshes every [`OBSERVE_EVERY`] until `stop`.
    pub(super) async fn run(self, stop: CancellationToken) {
        loop {
            if let Some(observation) = self.tick().await {
                self.notifier.status(&self.describe(&observation));
            }
            if !sleep_or_cancel(OBSERVE_EVERY, &stop).await {
                break;
            }
        }
    }

    /// Stores the health of components that changed since the last write.
    pub(super) async fn persist_health(&self) {
        let records = self.health.changed_records();
        if records.is_empty() {
            return;
        }
        if let Err(error) = self.state.call(move |db| db.record_health(&records)).await {
            self.health.mark_all_changed();
            tracing::warn!(error = %error, "storing component health failed");
        }
    }

    async fn tick(&self) -> Option<Observation> {
        self.persist_health().await;
        let observation = match self.state.call(|db| db.observe()).await {
            Ok(observation) => observation,
            Err(error) => {
                tracing::warn!(error = %error, "reading the state file for metrics failed");
                return None;
            }
        };
        self.apply(&observation, unix_ms_now());
        Some(observation)
    }

    /// Sets the gauges from `observation`, and raises or clears the
    /// retention alarm.
    fn apply(&self, observation: &Observation, now_ms: i64) {
        let mut topology = lock(&self.topology);
        let limit = self.outbox_limit.load(Ordering::Relaxed);
        self.metrics
            .set_outbox(observation.outbox_events, limit, observation.file_bytes);
        for (id, entry) in topology.sources.iter_mut() {
            let Some(figures) = SourceFigures::of(observation, id, now_ms) else {
                continue;
            };
            let m = &entry.metrics;
            m.lag.set(figures.lag_ms as f64 / 1000.0);
            m.cursor_age.set(figures.cursor_age_ms as f64 / 1000.0);
            if let Some(at) = figures.last_success_ms {
                m.last_success.set(crate::metrics::unix_seconds(at));
            }
            let retention_ms = entry.retention.as_millis() as f64;
            let alarm = figures.cursor_age_ms as f64 >= retention_ms * RETENTION_WARNING_FRACTION;
            m.retention_warning.set(i64::from(alarm));
            let days = |ms: f64| format!("{:.1}", ms / 86_400_000.0);
            match (alarm, entry.warned_at) {
                (true, last) if last.is_none_or(|at| at.elapsed() >= RETENTION_WARNING_REPEAT) => {
                    tracing::warn!(
                        source = %id,
                        cursor_age_days = %days(figures.cursor_age_ms as f64),
                        retention_days = %days(retention_ms),
                        "cursor is close to falling out of the api's retention; events older than the retention are lost upstream unless the source catches up"
                    );
                    entry.warned_at = Some(Instant::now());
                }
                (false, Some(_)) => {
                    tracing::info!(source = %id, "cursor is clear of the retention limit again");
                    entry.warned_at = None;
                }
                _ => {}
            }
        }
        for sink in &observation.sinks {
            if let Some(m) = topology.sinks.get(&sink.sink_id) {
                m.outbox_events.set(sink.events);
                m.outbox_bytes.set(sink.bytes);
                m.dead_letters.set(sink.dead_letters);
                // Also after a restart, before the first delivery.
                let acked = observation
                    .health
                    .iter()
                    .find(|h| h.role == "sink" && h.id == sink.sink_id)
                    .and_then(|h| h.last_success_at);
                if let Some(at) = acked {
                    m.last_ack.set(crate::metrics::unix_seconds(at));
                }
            }
        }
    }

    /// The line systemd shows: the worst lag and the outbox depth.
    fn describe(&self, observation: &Observation) -> String {
        let now = unix_ms_now();
        let topology = lock(&self.topology);
        let worst = topology
            .sources
            .keys()
            .filter_map(|id| SourceFigures::of(observation, id, now).map(|f| (id, f)))
            .max_by_key(|(_, f)| f.lag_ms);
        let lag = match worst {
            Some((id, f)) => format!("worst lag {id} {}s", f.lag_ms / 1000),
            None => "no source has stored a cursor yet".to_string(),
        };
        format!(
            "{} sources, {} sinks; {lag}; outbox {} events",
            topology.sources.len(),
            topology.sinks.len(),
            observation.outbox_events
        )
    }

    /// The status line from a fresh read.
    pub(super) async fn status_line(&self) -> String {
        match self.tick().await {
            Some(observation) => self.describe(&observation),
            None => "running; the state file could not be read".to_string(),
        }
    }
}

/// Feeds the systemd watchdog at a quarter of its timeout while every task
/// is within its promised deadline and the state file answers (on its own
/// read-only connection, so a long write does not count); after two failed
/// checks in a row it stops feeding it, so systemd restarts the process.
pub(super) async fn watchdog(
    observer: Observer,
    probe: StateProbe,
    timeout: Duration,
    stop: CancellationToken,
) {
    let every = (timeout / 4).max(Duration::from_millis(50));
    tracing::info!(
        timeout_s = timeout.as_secs_f64(),
        "systemd watchdog enabled"
    );
    let mut failed_in_a_row = 0u32;
    loop {
        let overdue = observer.health.overdue();
        let state_ok = matches!(tokio::time::timeout(every, probe.ping()).await, Ok(Ok(())));
        failed_in_a_row = if overdue.is_empty() && state_ok {
            0
        } else {
            failed_in_a_row + 1
        };
        if failed_in_a_row < 2 {
            observer.notifier.watchdog();
        } else {
            for (component, activity, late) in &overdue {
                tracing::error!(
                    component = %component.name(),
                    activity,
                    overdue_s = late.as_secs(),
                    "task is hung; not feeding the systemd watchdog"
                );
            }
            if !state_ok {
                tracing::error!("the state file does not answer; not feeding the systemd watchdog");
            }
        }
        if !sleep_or_cancel(every, &stop).await {
            break;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ComponentRecord, SourceCursor};

    fn observation(last_event: Option<i64>, caught_up: Option<i64>, start: i64) -> Observation {
        let mut health = ComponentRecord::new("source", "a", "asana");
        health.caught_up_at = caught_up;
        health.last_success_at = caught_up;
        Observation {
            sources: vec![(
                "a".into(),
                "asana".into(),
                SourceCursor {
                    position: None,
                    filters_hash: String::new(),
                    stream_start: Some(start),
                    last_event_time: last_event,
                    last_event_id: None,
                },
            )],
            sinks: vec![],
            health: vec![health],
            outbox_events: 0,
            file_bytes: 0,
            backfills: vec![],
        }
    }

    #[test]
    fn a_caught_up_quiet_source_has_a_young_cursor_but_a_long_lag() {
        let now = 1_000_000_000_000;
        let day = 86_400_000;
        let obs = observation(Some(now - 10 * day), Some(now - 5_000), now - 20 * day);
        let f = SourceFigures::of(&obs, "a", now).unwrap();
        assert_eq!(f.lag_ms, 10 * day);
        assert_eq!(f.cursor_age_ms, 5_000);
        assert_eq!(f.last_success_ms, Some(now - 5_000));
    }

    #[test]
    fn during_a_backfill_the_oldest_unread_slice_is_the_read_through_point() {
        let now = 1_000_000_000_000;
        let day = 86_400_000;
        // The live tail is caught up; slices still read 40 days back.
        let mut obs = observation(Some(now - 1_000), Some(now - 500), now - 60_000);
        obs.backfills.push((
            "a".into(),
            crate::state::BackfillProgress {
                pending: 12,
                read_through_ms: now - 40 * day,
            },
        ));
        let f = SourceFigures::of(&obs, "a", now).unwrap();
        assert_eq!(f.cursor_age_ms, 40 * day);
        assert_eq!(f.read_through_ms, now - 40 * day);
        // The lag is the newest event's: the tail keeps it low.
        assert_eq!(f.lag_ms, 1_000);
        assert_eq!(f.backfill.map(|b| b.pending), Some(12));
    }

    #[test]
    fn before_any_event_the_stream_start_counts() {
        let now = 1_000_000_000_000;
        let obs = observation(None, None, now - 60_000);
        let f = SourceFigures::of(&obs, "a", now).unwrap();
        assert_eq!((f.lag_ms, f.cursor_age_ms), (60_000, 60_000));
        assert!(SourceFigures::of(&obs, "other", now).is_none());
    }

    #[test]
    fn the_retention_alarm_rises_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();
        let metrics = Metrics::new();
        let observer = Observer {
            state,
            metrics: Arc::clone(&metrics),
            health: Health::new(),
            notifier: Arc::new(Notifier::from_env()),
            topology: Arc::default(),
            outbox_limit: Arc::new(AtomicU64::new(1000)),
        };
        let id = "a".to_string();
        lock(&observer.topology).add_source(
            &id,
            crate::asana::RETENTION,
            metrics.source(&id, "asana"),
        );
        let now = 2_000_000_000_000;
        let day = 86_400_000;
        let mut obs = observation(Some(now - 80 * day), None, now - 85 * day);
        observer.apply(&obs, now);
        let text = metrics.encode();
        assert!(
            text.contains(&format!(
                "auditrelay_source_retention_warning{{source=\"{id}\",kind=\"asana\"}} 1"
            )),
            "{text}"
        );
        assert!(lock(&observer.topology).sources[&id].warned_at.is_some());

        obs.sources[0].2.last_event_time = Some(now - day);
        observer.apply(&obs, now);
        let text = metrics.encode();
        assert!(
            text.contains(&format!(
                "auditrelay_source_retention_warning{{source=\"{id}\",kind=\"asana\"}} 0"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "auditrelay_source_lag_seconds{{source=\"{id}\",kind=\"asana\"}} 86400"
            )),
            "{text}"
        );
        assert!(lock(&observer.topology).sources[&id].warned_at.is_none());
    }

    #[tokio::test]
    async fn the_watchdog_starves_while_a_task_is_overdue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let notifier =
            Notifier::from_vars(Some(path.into_os_string()), Some("200000".into()), None);
        let timeout = notifier.watchdog_timeout().unwrap();
        let health = Health::new();
        let source = health.register(
            crate::health::Role::Source,
            "a",
            "asana",
            Duration::ZERO,
            vec![],
        );
        source.beat("fetching a page", Duration::ZERO);
        let observer = Observer {
            state: SharedState::open(&dir.path().join("state.db")).unwrap(),
            metrics: Metrics::new(),
            health,
            notifier: Arc::new(notifier),
            topology: Arc::default(),
            outbox_limit: Arc::new(AtomicU64::new(1)),
        };
        let stop = CancellationToken::new();
        let probe = StateProbe::new(&dir.path().join("state.db"));
        let task = tokio::spawn(watchdog(observer, probe, timeout, stop.clone()));
        let received = |socket: &std::os::unix::net::UnixDatagram| {
            let mut buf = [0u8; 64];
            let mut messages = Vec::new();
            while let Ok(n) = socket.recv(&mut buf) {
                messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            messages
        };
        // One miss is forgiven (a slow check), the second stops the feed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(received(&socket).len() <= 1, "fed the watchdog while hung");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(received(&socket).is_empty(), "fed the watchdog while hung");
        source.beat("waiting for the next poll", Duration::from_secs(60));
        let mut fed = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if received(&socket).iter().any(|m| m == "WATCHDOG=1") {
                fed = true;
                break;
            }
        }
        assert!(
            fed,
            "the watchdog was not fed once the task kept its promise"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
