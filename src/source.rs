//! What every source shares: the error classes its loop branches on and
//! the handles it runs with.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::health::Component;
use crate::metrics::SourceMetrics;
use crate::state::{
    NewEvent, PageOutcome, Quarantined, SharedState, SliceCursor, SourceCursor, StateError,
};

/// Why a request to a source's API failed, by what the loop does next.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// 429: wait at least `retry_after` (when the API said), then retry.
    #[error("rate limited (HTTP 429){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, timeouts, connection errors, truncated or non-JSON bodies:
    /// retry with backoff, cursor unchanged.
    #[error("{0}")]
    Transient(String),
    /// The API no longer accepts the stored cursor: restart by time.
    #[error("cursor rejected (HTTP {status}): {message}")]
    CursorExpired { status: u16, message: String },
    /// 401/403: the credentials are wrong, revoked or lack the right; only
    /// an operator can fix it, so retry slowly.
    #[error("credentials rejected (HTTP {status}): {message}")]
    Unauthorized { status: u16, message: String },
    /// Any other 4xx: the request itself is wrong (a bad filter, an unknown
    /// workspace); retry slowly in case it was the API's mistake.
    #[error("request rejected (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
}

/// Everything a source task runs with.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The state file.
    pub state: SharedState,
    /// Bumped after every commit that stored events, to wake the sinks.
    pub stored: Arc<watch::Sender<u64>>,
    /// Cancelled when the process should stop fetching.
    pub shutdown: CancellationToken,
    /// Sources pause while the outbox holds this many events (shared: a
    /// reload changes it for every source at once).
    pub max_outbox_events: Arc<std::sync::atomic::AtomicU64>,
    /// How long event ids stay in the dedup window.
    pub dedup_window: Duration,
    /// Its metrics.
    pub metrics: SourceMetrics,
    /// Its liveness and readiness.
    pub health: Arc<Component>,
    /// A backfill slice's context: it pauses at [`BACKFILL_OUTBOX_SHARE`]
    /// of `max_outbox_events`, leaving the rest to the live tail, so a
    /// slow sink holds back the backlog before it holds back new events.
    pub backfill: bool,
}

/// The share of `max_outbox_events` backfill slices may fill.
pub const BACKFILL_OUTBOX_SHARE: (u64, u64) = (3, 4);

impl SourceError {
    /// The class in metrics (`auditrelay_source_errors_total{class}`).
    pub fn class(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::Transient(_) => "transient",
            Self::CursorExpired { .. } => "cursor_expired",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Rejected { .. } => "rejected",
        }
    }
}

/// Quarantined records kept in the state file (the newest).
pub const QUARANTINE_KEEP: u64 = 100_000;

/// How often a source prunes the state file.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl SourceContext {
    /// Commits a page (events, quarantined records, the cursor) in one
    /// transaction, counts it, and wakes the sinks if it stored anything.
    pub async fn commit_page(
        &self,
        source: &str,
        kind: &'static str,
        page: (Vec<NewEvent>, Vec<Quarantined>),
        cursor: SourceCursor,
    ) -> Result<PageOutcome, StateError> {
        let (events, quarantined) = page;
        let received = (events.len() + quarantined.len()) as u64;
        let outcome = self
            .state
            .commit_page(source.to_string(), kind, events, quarantined, cursor)
            .await?;
        self.count_page(source, received, outcome);
        Ok(outcome)
    }

    /// Commits a page of a backfill slice like [`Self::commit_page`], with
    /// the slice's cursor; a `finished` slice is deleted instead.
    pub async fn commit_slice_page(
        &self,
        source: &str,
        page: (Vec<NewEvent>, Vec<Quarantined>),
        slice: SliceCursor,
        finished: bool,
    ) -> Result<PageOutcome, StateError> {
        let (events, quarantined) = page;
        let received = (events.len() + quarantined.len()) as u64;
        let outcome = self
            .state
            .commit_slice_page(source.to_string(), events, quarantined, slice, finished)
            .await?;
        self.count_page(source, received, outcome);
        Ok(outcome)
    }

    /// Counts a committed page and wakes the sinks if it stored anything.
    fn count_page(&self, source: &str, received: u64, outcome: PageOutcome) {
        self.metrics.received.inc_by(received);
        self.metrics.stored.inc_by(outcome.stored);
        self.metrics.duplicates.inc_by(outcome.duplicates);
        self.metrics.quarantined.inc_by(outcome.quarantined);
        if outcome.stored > 0 {
            self.notify_stored();
        }
        tracing::debug!(
            source = %source,
            stored = outcome.stored,
            duplicates = outcome.duplicates,
            quarantined = outcome.quarantined,
            "page committed"
        );
    }

    /// Keeps the state file bounded: the source's dedup window, the newest
    /// [`QUARANTINE_KEEP`] quarantined records, unexpired cached users.
    pub async fn prune(&self, source: &str) {
        let id = source.to_string();
        let window = self.dedup_window;
        let pruned = self
            .state
            .call(move |db| {
                Ok((
                    db.prune_seen(&id, window)?,
                    db.prune_quarantine(QUARANTINE_KEEP)?,
                    db.prune_user_cache(crate::state::unix_ms_now())?,
                ))
            })
            .await;
        match pruned {
            Ok((seen, quarantined, users)) => {
                tracing::debug!(source = %source, seen, quarantined, users, "pruned the state file");
                if quarantined > 0 {
                    tracing::warn!(source = %source, dropped = quarantined, keep = QUARANTINE_KEEP, "dropped the oldest quarantined records");
                }
            }
            Err(e) => {
                tracing::warn!(source = %source, error = %e, "pruning the state file failed")
            }
        }
    }

    /// Waits while `budget` holds requests back (after a 429, or while user
    /// lookups used it up), with a heartbeat covering the wait. Returns
    /// false on shutdown.
    pub async fn wait_for_budget(&self, budget: &crate::budget::RateBudget) -> bool {
        loop {
            let delay = budget.delay();
            if delay.is_zero() {
                return true;
            }
            self.health.beat(
                "waiting for the rate budget",
                delay + Duration::from_secs(30),
            );
            if !sleep_or_cancel(delay, &self.shutdown).await {
                return false;
            }
        }
    }

    /// Waits while the outbox holds `max_outbox_events` (sinks are behind),
    /// never dropping anything. Returns false on shutdown.
    ///
    /// The depth noted at the latest commit is at least the depth now
    /// (sinks only lower it), so while that is below the limit there is
    /// room without asking the database; otherwise the database is asked.
    pub async fn wait_for_outbox_room(
        &self,
        source: &str,
    ) -> Result<bool, crate::state::StateError> {
        /// How long one outbox check may take before the task is hung.
        const CHECK_BOUND: Duration = Duration::from_secs(120);
        let mut warned = false;
        loop {
            let mut limit = self
                .max_outbox_events
                .load(std::sync::atomic::Ordering::Relaxed);
            if self.backfill {
                let (num, den) = BACKFILL_OUTBOX_SHARE;
                limit = limit / den * num;
            }
            let below = |depth: i64| u64::try_from(depth).unwrap_or(0) < limit;
            let known = self.state.outbox_depth_hint();
            let depth = if !warned && below(known) {
                known
            } else {
                self.health.beat(
                    if warned {
                        "paused: the outbox is full"
                    } else {
                        "checking the outbox depth"
                    },
                    CHECK_BOUND,
                );
                self.state.outbox_depth().await?
            };
            if below(depth) {
                if warned {
                    tracing::info!(source = %source, depth, "outbox has room again; resuming");
                    self.metrics.paused.set(0);
                }
                return Ok(true);
            }
            if !warned {
                tracing::warn!(source = %source, depth, limit, "outbox full; pausing until sinks catch up");
                warned = true;
                self.metrics.paused.set(1);
            }
            if !sleep_or_cancel(Duration::from_millis(500), &self.shutdown).await {
                return Ok(false);
            }
        }
    }

    /// Tells the sinks that new events are in the outbox.
    pub fn notify_stored(&self) {
        self.stored.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Sleeps for `duration` unless `token` is cancelled first. Returns false
/// when cancelled.
pub async fn sleep_or_cancel(duration: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = token.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Health, Role};
    use crate::state::StateDb;

    fn page(from: u64, n: u64) -> (Vec<NewEvent>, Vec<Quarantined>) {
        let events = (from..from + n)
            .map(|i| NewEvent {
                event_id: i.to_string(),
                event_time: i as i64,
                payload: format!("{{\"n\":{i}}}"),
            })
            .collect();
        (events, Vec::new())
    }

    #[tokio::test]
    async fn a_source_pauses_at_the_outbox_limit_and_resumes_after_a_trim() {
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::new(StateDb::open(&dir.path().join("state.db")).unwrap());
        state
            .call(|db| db.register_sinks(&[("file".to_string(), "file")]))
            .await
            .unwrap();
        let ctx = SourceContext {
            state: state.clone(),
            stored: Arc::new(watch::channel(0).0),
            shutdown: CancellationToken::new(),
            max_outbox_events: Arc::new(std::sync::atomic::AtomicU64::new(150)),
            dedup_window: Duration::from_secs(86400),
            metrics: SourceMetrics::detached("a", "asana"),
            health: Health::new().register(Role::Source, "a", "asana", Duration::ZERO, vec![]),
            backfill: false,
        };
        let check = Duration::from_millis(200);
        assert!(ctx.wait_for_outbox_room("a").await.unwrap());
        ctx.commit_page("a", "asana", page(1, 100), SourceCursor::default())
            .await
            .unwrap();
        assert_eq!(state.outbox_depth_hint(), 100);
        assert!(ctx.wait_for_outbox_room("a").await.unwrap());
        ctx.commit_page("a", "asana", page(101, 100), SourceCursor::default())
            .await
            .unwrap();
        // 200 events, limit 150: the source waits.
        assert!(
            tokio::time::timeout(check, ctx.wait_for_outbox_room("a"))
                .await
                .is_err(),
            "a full outbox let the source go on"
        );
        // A sink takes 100; the depth noted at the commit is stale now,
        // and the database says there is room.
        state
            .call(|db| {
                db.ack("file", 100)?;
                db.trim_outbox()
            })
            .await
            .unwrap();
        assert_eq!(state.outbox_depth_hint(), 200);
        let resumed = tokio::time::timeout(Duration::from_secs(5), ctx.wait_for_outbox_room("a"))
            .await
            .expect("room after the trim")
            .unwrap();
        assert!(resumed);
        assert_eq!(state.outbox_depth_hint(), 100);

        // A backfill slice stops at 3/4 of the limit (112 of 150); the live
        // tail goes on up to the limit.
        ctx.commit_page("a", "asana", page(201, 20), SourceCursor::default())
            .await
            .unwrap();
        let slice = SourceContext {
            backfill: true,
            ..ctx.clone()
        };
        assert!(
            tokio::time::timeout(check, slice.wait_for_outbox_room("a"))
                .await
                .is_err(),
            "a slice filled the room kept for the tail"
        );
        assert!(ctx.wait_for_outbox_room("a").await.unwrap());
    }
}
