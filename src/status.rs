//! `auditrelay status`: per source and per sink, how far along and how
//! healthy, read from the state file (safe while the daemon runs: the file
//! is opened read-only, and the daemon stores each component's health every
//! few seconds).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::envelope::format_time;
use crate::state::{BackfillProgress, Observation};

/// One source's figures at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFigures {
    /// Now minus the newest committed event (or, before the first event,
    /// the cursor age).
    pub lag_ms: i64,
    /// Now minus the point up to which everything was read: the newest
    /// event, or the last poll that reached the end of the stream, or the
    /// stream's start.
    pub cursor_age_ms: i64,
    /// The point up to which everything was read (Unix ms): during a
    /// backfill, by the live tail and every slice.
    pub read_through_ms: i64,
    pub last_success_ms: Option<i64>,
    /// The backfill under way, if any.
    pub backfill: Option<BackfillProgress>,
}

impl SourceFigures {
    /// Source `id`'s figures in `observation`, at `now_ms`; `None` before
    /// it stored a cursor.
    pub fn of(observation: &Observation, id: &str, now_ms: i64) -> Option<Self> {
        let (_, _, cursor) = observation.sources.iter().find(|(s, _, _)| s == id)?;
        let health = observation
            .health
            .iter()
            .find(|h| h.role == "source" && h.id == id);
        let caught_up = health.and_then(|h| h.caught_up_at);
        let tail = [cursor.last_event_time, caught_up]
            .into_iter()
            .flatten()
            .max()
            .or(cursor.stream_start)?;
        let backfill = observation
            .backfills
            .iter()
            .find(|(s, _)| s == id)
            .map(|(_, b)| *b);
        // Slices of a backlog are older than anything the tail reads.
        let read_through = backfill.map_or(tail, |b| b.read_through_ms.min(tail));
        let cursor_age_ms = now_ms.saturating_sub(read_through).max(0);
        let lag_ms = cursor
            .last_event_time
            .map_or(cursor_age_ms, |t| now_ms.saturating_sub(t).max(0));
        Some(Self {
            lag_ms,
            cursor_age_ms,
            read_through_ms: read_through,
            last_success_ms: health.and_then(|h| h.last_success_at),
            backfill,
        })
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Status {
    pub state: String,
    /// Whether a daemon holds the state file's lock.
    pub daemon_running: bool,
    pub outbox_events: i64,
    pub state_file_bytes: u64,
    pub sources: Vec<SourceStatus>,
    pub sinks: Vec<SinkStatus>,
}

/// One source's line.
#[derive(Debug, Serialize)]
pub struct SourceStatus {
    pub id: String,
    pub kind: String,
    /// Whether the configuration still has it.
    pub configured: bool,
    pub read_through: Option<String>,
    /// Time slices of a backlog still being read (absent outside a
    /// backfill).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill_slices_left: Option<u64>,
    pub newest_event: Option<String>,
    pub lag_seconds: Option<i64>,
    pub cursor_age_seconds: Option<i64>,
    /// How much of the API's retention the cursor age uses, in percent.
    pub retention_used_percent: Option<u32>,
    pub last_success: Option<String>,
    pub last_error_at: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
}

/// One sink's line.
#[derive(Debug, Serialize)]
pub struct SinkStatus {
    pub id: String,
    pub kind: String,
    pub configured: bool,
    pub acked_seq: i64,
    pub pending_events: i64,
    pub pending_bytes: i64,
    pub dead_letters: i64,
    pub last_ack: Option<String>,
    pub last_error_at: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
}

/// Builds the report from a snapshot of the state file.
pub fn build(config: &Config, observation: &Observation, running: bool, now_ms: i64) -> Status {
    let health = |role: &str, id: &str| {
        observation
            .health
            .iter()
            .find(|h| h.role == role && h.id == id)
            .cloned()
    };
    let time = |ms: Option<i64>| ms.map(format_time);
    let sources = observation
        .sources
        .iter()
        .map(|(id, kind, cursor)| {
            let configured = config.sources.iter().find(|s| s.id() == id);
            let figures = SourceFigures::of(observation, id, now_ms);
            let h = health("source", id);
            let retention = configured.map(|s| s.retention()).unwrap_or(Duration::ZERO);
            SourceStatus {
                id: id.clone(),
                kind: kind.clone(),
                configured: configured.is_some(),
                read_through: time(figures.map(|f| f.read_through_ms)),
                backfill_slices_left: figures.and_then(|f| f.backfill).map(|b| b.pending),
                newest_event: time(cursor.last_event_time),
                lag_seconds: figures.map(|f| f.lag_ms / 1000),
                cursor_age_seconds: figures.map(|f| f.cursor_age_ms / 1000),
                retention_used_percent: figures.filter(|_| !retention.is_zero()).map(|f| {
                    (f.cursor_age_ms as f64 * 100.0 / retention.as_millis() as f64).round() as u32
                }),
                last_success: time(h.as_ref().and_then(|h| h.last_success_at)),
                last_error_at: time(h.as_ref().and_then(|h| h.last_error_at)),
                last_error: h.as_ref().and_then(|h| h.last_error.clone()),
                consecutive_failures: h.map_or(0, |h| h.consecutive_failures),
            }
        })
        .collect();
    let sinks = observation
        .sinks
        .iter()
        .map(|sink| {
            let h = health("sink", &sink.sink_id);
            SinkStatus {
                id: sink.sink_id.clone(),
                kind: sink.kind.clone(),
                configured: config.sinks.iter().any(|s| s.id == sink.sink_id),
                acked_seq: sink.acked_seq,
                pending_events: sink.events,
                pending_bytes: sink.bytes,
                dead_letters: sink.dead_letters,
                last_ack: time(h.as_ref().and_then(|h| h.last_success_at)),
                last_error_at: time(h.as_ref().and_then(|h| h.last_error_at)),
                last_error: h.as_ref().and_then(|h| h.last_error.clone()),
                consecutive_failures: h.map_or(0, |h| h.consecutive_failures),
            }
        })
        .collect();
    Status {
        state: config.state.path.display().to_string(),
        daemon_running: running,
        outbox_events: observation.outbox_events,
        state_file_bytes: observation.file_bytes,
        sources,
        sinks,
    }
}

/// The report as text for a terminal.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "state {} ({} bytes), daemon {}, outbox {} events",
        status.state,
        status.state_file_bytes,
        if status.daemon_running {
            "running"
        } else {
            "not running"
        },
        status.outbox_events
    );
    section(&mut out, "sources", status.sources.is_empty());
    for s in &status.sources {
        let backfill = s
            .backfill_slices_left
            .map(|n| format!(" (backfill: {n} time slices left)"))
            .unwrap_or_default();
        let detail = format!(
            "read through {}{backfill}, newest event {}, lag {}, retention used {}\n    last success {}",
            dash(&s.read_through),
            dash(&s.newest_event),
            s.lag_seconds.map_or("-".into(), human_seconds),
            s.retention_used_percent
                .map_or("-".into(), |p| format!("{p}%")),
            dash(&s.last_success),
        );
        let error = (&s.last_error, &s.last_error_at, s.consecutive_failures);
        entry(&mut out, (&s.id, &s.kind, s.configured), &detail, error);
    }
    section(&mut out, "sinks", status.sinks.is_empty());
    for s in &status.sinks {
        let detail = format!(
            "pending {} events ({} bytes), acknowledged through seq {}, dead letters {}\n    last acknowledgement {}",
            s.pending_events,
            s.pending_bytes,
            s.acked_seq,
            s.dead_letters,
            dash(&s.last_ack),
        );
        let error = (&s.last_error, &s.last_error_at, s.consecutive_failures);
        entry(&mut out, (&s.id, &s.kind, s.configured), &detail, error);
    }
    out
}

fn dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".to_string())
}

fn section(out: &mut String, name: &str, empty: bool) {
    let _ = writeln!(out, "\n{name}:");
    if empty {
        let _ = writeln!(out, "  (none has run yet)");
    }
}

/// One source or sink: its name, the detail lines, its last error.
fn entry(
    out: &mut String,
    (id, kind, configured): (&str, &str, bool),
    detail: &str,
    (error, at, in_a_row): (&Option<String>, &Option<String>, u64),
) {
    let gone = if configured {
        ""
    } else {
        " [no longer configured]"
    };
    let _ = writeln!(out, "  {id} ({kind}){gone}\n    {detail}");
    if let Some(error) = error {
        let _ = writeln!(
            out,
            "    last error {} ({in_a_row} in a row): {error}",
            dash(at)
        );
    }
}

fn human_seconds(seconds: i64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(0).unsigned_abs())).to_string()
}
