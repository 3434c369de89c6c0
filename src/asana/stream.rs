//! Following an Asana audit log stream.
//!
//! The cursor is the opaque `next_page.offset`, which Asana keeps returning
//! even when there is nothing new: an empty `data` means caught up. So:
//! a full page → fetch the next at once; a short or empty page → sleep
//! `poll_interval`, then ask again with the same offset.
//!
//! A page's new events and the new offset are committed in one transaction
//! ([`crate::state::StateDb::commit_page`]); the offset is never stored ahead
//! of the events it covers. When the offset is lost (Asana rejects it with
//! 400, or the filters changed) the stream restarts at `start_at` = newest
//! stored event − `restart_margin`, and the dedup window drops the repeats.
//!
//! Before a page is committed, the users it names are resolved by the
//! source's [`Enricher`] (within its bound, never longer), and every
//! request, audit page or user lookup, takes a token of the source's
//! [`RateBudget`](crate::budget::RateBudget) first.
//!
//! Pipelining: a full page comes with the offset of the next one, so that
//! page is requested ([`Ahead`]) while this one is mapped and committed.
//! One request at most is in flight, and its answer is used only after the
//! page before it committed, with the cursor that commit stored; otherwise
//! (the commit failed, shutdown) it is dropped and nothing is lost: the
//! stored cursor still points at it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio_util::task::AbortOnDropHandle;

use super::client::{AsanaClient, Page, Position};
use super::event::{self, Origin};
use super::users::AsanaUsers;
use crate::config::{AsanaConfig, StartAt};
use crate::enrich::Enricher;
use crate::envelope::format_time;
use crate::retry::{rate_limit_wait, Backoff};
use crate::source::{sleep_or_cancel, SourceContext, SourceError, PRUNE_EVERY};
use crate::state::{NewEvent, Quarantined, SourceCursor, StateError};

/// Asana deletes audit events after 90 days.
pub const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Starting this close to the retention edge would race the deletion.
const RETENTION_SLACK: Duration = Duration::from_secs(3600);

/// Added to every heartbeat deadline: scheduling delays are not hangs.
const BEAT_SLACK: Duration = Duration::from_secs(30);

/// The longest a page commit may take before the task counts as hung
/// (it queues behind other tasks' calls on the one connection).
const COMMIT_BOUND: Duration = Duration::from_secs(120);

/// A hash of what an offset is bound to: the workspace and the filters.
pub fn filters_hash(config: &AsanaConfig) -> String {
    let mut hasher = Sha256::new();
    hasher.update(config.workspace_gid.as_bytes());
    for (name, value) in config.filters.pairs() {
        hasher.update(b"\0");
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// One Asana workspace's stream, run as its own task.
#[derive(Debug)]
pub struct AsanaSource {
    config: AsanaConfig,
    client: AsanaClient,
    /// `None` when `[enrich] enabled = false`.
    enricher: Option<Enricher>,
    ctx: SourceContext,
}

impl AsanaSource {
    /// Builds the source; nothing is requested yet.
    pub fn new(config: AsanaConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let client = AsanaClient::new(&config, ctx.metrics.clone())?;
        let enricher = if config.enrich.enabled {
            let users = AsanaUsers::new(&config, &client, ctx.metrics.clone())?;
            Some(Enricher::new(
                config.enrich,
                ctx.state.clone(),
                &config.id,
                ctx.metrics.clone(),
                Arc::clone(client.budget()),
                Arc::new(users),
            ))
        } else {
            None
        };
        ctx.metrics.retention.set(RETENTION.as_secs_f64());
        // A previous instance may have stopped while paused.
        ctx.metrics.paused.set(0);
        Ok(Self {
            config,
            client,
            enricher,
            ctx,
        })
    }

    /// Its id in the configuration.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Follows the stream until shutdown. Errors from the API never end the
    /// loop; only a state file that cannot be read or written does.
    pub async fn run(&self) -> Result<(), StateError> {
        let id = self.config.id.clone();
        let mut cursor = self.load_cursor().await?;
        let mut pacing = Pacing {
            backoff: Backoff::new(self.config.retry),
            expiry: Backoff::new(self.config.retry),
            expired_in_a_row: 0,
        };
        let mut last_prune = tokio::time::Instant::now();
        tracing::info!(
            source = %id,
            workspace = %self.config.workspace_gid,
            resuming = cursor.position.is_some(),
            "asana source started"
        );
        let shutdown = self.ctx.shutdown.clone();
        // The next page's request, running while this page is committed.
        let mut ahead: Option<Ahead<Result<Page, SourceError>>> = None;
        while !shutdown.is_cancelled() {
            if !self.ctx.wait_for_outbox_room(&self.config.id).await? {
                break;
            }
            let health = &self.ctx.health;
            let Some((position, fetched)) = self.next_page(&cursor, ahead.take()).await else {
                break;
            };
            let delay = match fetched {
                Ok(page) => {
                    pacing.backoff.reset();
                    if position.offset.is_some() {
                        pacing.expiry.reset();
                        pacing.expired_in_a_row = 0;
                    }
                    // A full page without a next offset would otherwise be
                    // fetched again at once, forever.
                    let full =
                        page.records.len() >= self.client.page_size() && page.next_offset.is_some();
                    if full {
                        ahead = self.request_ahead(&position, &page);
                    }
                    health.beat("committing a page", COMMIT_BOUND);
                    match self.store_page(&mut cursor, page, &position).await {
                        Ok(()) => {
                            // Never the case: the request ahead was made with
                            // the cursor this commit stored. Should they ever
                            // differ, the cursor wins.
                            if ahead.as_ref().is_some_and(|next| !next.continues(&cursor)) {
                                tracing::warn!(source = %id, "the page requested ahead does not follow the stored cursor; dropped");
                                ahead = None;
                            }
                            health.succeeded();
                            if !full {
                                health.caught_up();
                            }
                            self.ctx
                                .metrics
                                .last_success
                                .set(crate::metrics::unix_seconds(Utc::now().timestamp_millis()));
                        }
                        Err(e) => {
                            self.ctx.metrics.error("state");
                            health.failed(&format!("storing a page: {e}"));
                            // The page is not stored and the cursor did not
                            // move: the same request is made again, and the
                            // one made ahead of it is dropped.
                            ahead = None;
                            tracing::error!(source = %id, error = %e, "storing a page failed");
                            let delay = pacing.backoff.next_delay();
                            health.beat("backing off", delay + BEAT_SLACK);
                            if !sleep_or_cancel(delay, &shutdown).await {
                                break;
                            }
                            continue;
                        }
                    }
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        last_prune = tokio::time::Instant::now();
                        self.ctx.prune(&self.config.id).await;
                    }
                    (!full).then_some(self.config.poll_interval)
                }
                Err(error) => self.on_error(error, &mut cursor, &mut pacing).await?,
            };
            if let Some(delay) = delay {
                health.beat("waiting for the next poll", delay + BEAT_SLACK);
                if !sleep_or_cancel(delay, &shutdown).await {
                    break;
                }
            }
        }
        // A page fetched ahead but not committed is dropped: the stored
        // cursor still points at it.
        drop(ahead);
        tracing::info!(source = %id, "asana source stopped");
        Ok(())
    }

    /// The next page and the position it was requested with: the answer of
    /// the request made ahead, if there is one, else a request made now
    /// from the cursor. `None` on shutdown (nothing is in hand yet, so
    /// dropping the request loses nothing).
    async fn next_page(
        &self,
        cursor: &SourceCursor,
        ahead: Option<Ahead<Result<Page, SourceError>>>,
    ) -> Option<(Position, Result<Page, SourceError>)> {
        let shutdown = &self.ctx.shutdown;
        let health = &self.ctx.health;
        if let Some(ahead) = ahead {
            // It took its budget token when it started (or is still waiting
            // for one after a 429 that came meanwhile).
            health.beat(
                "fetching a page",
                self.config.request_timeout + self.client.budget().delay() + BEAT_SLACK,
            );
            let position = ahead.position.clone();
            let fetched = tokio::select! {
                fetched = ahead.finish() => fetched.unwrap_or_else(|| {
                    Err(SourceError::Transient("the request was cancelled".to_string()))
                }),
                () = shutdown.cancelled() => return None,
            };
            return Some((position, fetched));
        }
        let position = self.position(cursor);
        if !self.ctx.wait_for_budget(self.client.budget()).await {
            return None;
        }
        health.beat("fetching a page", self.config.request_timeout + BEAT_SLACK);
        tokio::select! {
            fetched = self.client.fetch(&position) => Some((position, fetched)),
            () = shutdown.cancelled() => None,
        }
    }

    /// Starts the request for the page after `page` (sent at `sent`), to
    /// run while `page` is committed: only when its offset is known and the
    /// rate budget has a token now (a wait stays in the loop, under its
    /// heartbeat), never on shutdown.
    fn request_ahead(
        &self,
        sent: &Position,
        page: &Page,
    ) -> Option<Ahead<Result<Page, SourceError>>> {
        let offset = page.next_offset.clone()?;
        if self.ctx.shutdown.is_cancelled() || !self.client.budget().delay().is_zero() {
            return None;
        }
        let position = following(sent, offset);
        // A clone shares the connection pool and the budget.
        let client = self.client.clone();
        let request = position.clone();
        Some(Ahead::start(position, async move {
            client.fetch(&request).await
        }))
    }

    /// The stored cursor, reconciled with the configuration: a first run
    /// gets its start point stored at once (so a restart before the first
    /// event does not move it), and changed filters drop the offset.
    async fn load_cursor(&self) -> Result<SourceCursor, StateError> {
        let id = self.config.id.clone();
        let hash = filters_hash(&self.config);
        let stored = self.ctx.state.call(move |db| db.cursor(&id)).await?;
        let cursor = match stored {
            Some(cursor) if cursor.filters_hash == hash => return Ok(cursor),
            Some(mut cursor) => {
                tracing::warn!(
                    source = %self.config.id,
                    "filters or workspace changed since the offset was stored; restarting the stream by time"
                );
                cursor.filters_hash = hash;
                self.restart(&mut cursor);
                cursor
            }
            None => {
                let now = Utc::now();
                let start = match self.config.start_at {
                    StartAt::At(at) => at,
                    // A lookback past the epoch is simply "as far back as
                    // retention allows": the clamp below handles it.
                    StartAt::Lookback(lookback) => chrono::TimeDelta::from_std(lookback)
                        .ok()
                        .and_then(|back| now.checked_sub_signed(back))
                        .unwrap_or(DateTime::<Utc>::MIN_UTC),
                };
                let start = self.clamp_to_retention(start, now);
                tracing::info!(source = %self.config.id, start_at = %format_time(start.timestamp_millis()), "first run");
                SourceCursor {
                    position: None,
                    filters_hash: hash,
                    stream_start: Some(start.timestamp_millis()),
                    last_event_time: None,
                    last_event_id: None,
                }
            }
        };
        self.save_cursor(&cursor).await?;
        Ok(cursor)
    }

    async fn save_cursor(&self, cursor: &SourceCursor) -> Result<(), StateError> {
        let id = self.config.id.clone();
        let cursor = cursor.clone();
        self.ctx
            .state
            .call(move |db| db.set_cursor(&id, "asana", &cursor))
            .await
    }

    /// The earliest time still worth asking for; an earlier start is a gap.
    fn clamp_to_retention(&self, start: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        let floor = retention_floor(now);
        if start < floor {
            self.ctx.metrics.retention_gaps.inc();
            tracing::warn!(
                source = %self.config.id,
                wanted = %format_time(start.timestamp_millis()),
                earliest = %format_time(floor.timestamp_millis()),
                "start point is beyond asana's 90-day retention; events before the earliest time are gone"
            );
            floor
        } else {
            start
        }
    }

    /// Where the next request starts: the current stream's start, with its
    /// latest offset once it has one.
    fn position(&self, cursor: &SourceCursor) -> Position {
        let now = Utc::now();
        let start_at = cursor
            .stream_start
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(now);
        match &cursor.position {
            // The offset is bound to the start it was issued for: send that
            // start unchanged, however old it is now.
            Some(offset) => Position {
                start_at,
                offset: Some(offset.clone()),
            },
            // A start beyond retention (an old `state reset --to`, a first
            // run that could not fetch for days) is reported here; the
            // clamped start is what gets stored with the page.
            None => Position {
                start_at: self.clamp_to_retention(start_at, now),
                offset: None,
            },
        }
    }

    /// Drops the offset and starts a new stream at the newest stored event
    /// minus the margin (or where the old stream started, if it stored
    /// nothing); the dedup window drops what is read again.
    fn restart(&self, cursor: &mut SourceCursor) {
        self.ctx.metrics.cursor_restarts.inc();
        let margin = i64::try_from(self.config.restart_margin.as_millis()).unwrap_or(i64::MAX);
        let start = match cursor.last_event_time {
            Some(last) => Some(last.saturating_sub(margin)),
            None => cursor.stream_start,
        };
        let now = Utc::now();
        let start = start
            .and_then(DateTime::from_timestamp_millis)
            .map(|at| self.clamp_to_retention(at, now));
        cursor.position = None;
        cursor.stream_start = Some(start.unwrap_or(now).timestamp_millis());
    }

    /// Turns a page into outbox entries and commits them with the new cursor.
    async fn store_page(
        &self,
        cursor: &mut SourceCursor,
        page: Page,
        sent: &Position,
    ) -> Result<(), StateError> {
        let observed_at = format_time(Utc::now().timestamp_millis());
        let origin = Origin {
            source_id: &self.config.id,
            workspace_gid: &self.config.workspace_gid,
        };
        let users = self.resolve_users(&page).await;
        self.ctx.health.beat("committing a page", COMMIT_BOUND);
        let mut events: Vec<NewEvent> = Vec::with_capacity(page.records.len());
        let mut quarantined = Vec::new();
        for (index, raw) in page.records.iter().enumerate() {
            match event::to_outbox(raw, origin, &observed_at, users.as_ref()) {
                Ok(event) => events.push(event),
                Err(reason) => {
                    tracing::warn!(source = %self.config.id, record = index, reason = %reason, "quarantined a record");
                    quarantined.push(Quarantined {
                        reason: format!("record {index} of page: {reason}"),
                        raw: raw.get().to_string(),
                    });
                }
            }
        }
        let mut next = cursor.clone();
        // The offset is bound to the start actually sent (which may have
        // been clamped to retention): keep them together.
        next.stream_start = Some(sent.start_at.timestamp_millis());
        // Once the stream has an offset, Asana keeps returning one; should
        // it ever not, keep ours rather than fall back to the stream start.
        next.position = page.next_offset.or_else(|| sent.offset.clone());
        if let Some(newest) = events.iter().max_by_key(|e| e.event_time) {
            if next.last_event_time.is_none_or(|t| newest.event_time >= t) {
                next.last_event_time = Some(newest.event_time);
                next.last_event_id = Some(newest.event_id.clone());
            }
        }
        self.ctx
            .commit_page(
                &self.config.id,
                "asana",
                (events, quarantined),
                next.clone(),
            )
            .await?;
        *cursor = next;
        Ok(())
    }

    /// Resolves the users a page names, within the enricher's bound;
    /// `None` when enrichment is off.
    async fn resolve_users(&self, page: &Page) -> Option<event::Users> {
        let enricher = self.enricher.as_ref()?;
        let named: Vec<String> = page
            .records
            .iter()
            .flat_map(|raw| event::named_users(raw))
            .collect();
        if named.is_empty() {
            return Some(event::Users::new());
        }
        let ids: Vec<&str> = named.iter().map(String::as_str).collect();
        self.ctx
            .health
            .beat("enriching a page", enricher.config().bound + BEAT_SLACK);
        Some(enricher.resolve(&ids).await)
    }

    /// Decides what an API error means for the cursor and how long to wait.
    async fn on_error(
        &self,
        error: SourceError,
        cursor: &mut SourceCursor,
        pacing: &mut Pacing,
    ) -> Result<Option<Duration>, StateError> {
        let id = &self.config.id;
        let backoff = &mut pacing.backoff;
        let metrics = &self.ctx.metrics;
        let n = metrics.error(error.class());
        self.ctx.health.failed(&error.to_string());
        Ok(Some(match error {
            SourceError::RateLimited { retry_after } => {
                let wait = rate_limit_wait(retry_after, backoff.next_delay());
                // User lookups wait too: Asana counts every request.
                self.client.budget().penalize(wait);
                metrics.rate_limit_waits.inc();
                metrics.rate_limit_wait_seconds.inc_by(wait.as_secs_f64());
                tracing::warn!(source = %id, wait_ms = wait.as_millis() as u64, rate_limited = n, "rate limited by asana");
                wait
            }
            SourceError::Transient(message) => {
                let wait = backoff.next_delay();
                tracing::warn!(source = %id, error = %message, attempt = backoff.failures(), transient_errors = n, retry_in_ms = wait.as_millis() as u64, "request failed; retrying with the same offset");
                wait
            }
            SourceError::CursorExpired { status, message } => {
                tracing::warn!(source = %id, status, error = %message, "asana rejected the stored offset; restarting from the newest stored event minus the margin");
                self.restart(cursor);
                self.save_cursor(cursor).await?;
                // The first rejection restarts at once. If the fresh stream's
                // offsets are rejected too, something else is wrong: back
                // off instead of spinning through the rate limit.
                pacing.expired_in_a_row += 1;
                if pacing.expired_in_a_row == 1 {
                    return Ok(None);
                }
                let wait = pacing.expiry.next_delay();
                tracing::error!(source = %id, rejections = pacing.expired_in_a_row, retry_in_ms = wait.as_millis() as u64, "offsets keep being rejected; backing off");
                wait
            }
            SourceError::Unauthorized { status, message } => {
                tracing::error!(
                    source = %id,
                    status,
                    error = %message,
                    auth_failures = n,
                    retry_in_s = self.config.slow_retry_interval.as_secs(),
                    "asana rejected the token: check that it is a valid service account token of an Enterprise+ workspace"
                );
                self.config.slow_retry_interval
            }
            SourceError::Rejected { status, message } => {
                tracing::error!(
                    source = %id,
                    status,
                    error = %message,
                    retry_in_s = self.config.slow_retry_interval.as_secs(),
                    "asana rejected the request: check workspace_gid and filters"
                );
                self.config.slow_retry_interval
            }
        }))
    }
}

/// The request after a page sent at `sent` whose `next_page.offset` is
/// `offset`: what [`AsanaSource::position`] makes of the cursor that page
/// commits (the start it stores is whole milliseconds).
fn following(sent: &Position, offset: String) -> Position {
    let millis = sent.start_at.timestamp_millis();
    Position {
        start_at: DateTime::from_timestamp_millis(millis).unwrap_or(sent.start_at),
        offset: Some(offset),
    }
}

/// A request made ahead: it runs on its own task, so that it proceeds while
/// the loop maps and commits the page before it. Dropping it aborts the
/// request.
#[derive(Debug)]
struct Ahead<T> {
    /// Where it was sent from.
    position: Position,
    task: AbortOnDropHandle<T>,
}

impl<T: Send + 'static> Ahead<T> {
    /// Starts `request` (sent from `position`) on its own task.
    fn start(position: Position, request: impl Future<Output = T> + Send + 'static) -> Self {
        Self {
            position,
            task: AbortOnDropHandle::new(tokio::spawn(request)),
        }
    }

    /// Whether it is the request `cursor` resumes with.
    fn continues(&self, cursor: &SourceCursor) -> bool {
        self.position.offset.is_some()
            && self.position.offset == cursor.position
            && Some(self.position.start_at.timestamp_millis()) == cursor.stream_start
    }

    /// Its answer; `None` when its task was cancelled (the runtime is
    /// shutting down). A panic in it carries on here, in the loop's task.
    async fn finish(self) -> Option<T> {
        match self.task.await {
            Ok(answer) => Some(answer),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => None,
            },
        }
    }
}

/// Retry timing of one stream.
#[derive(Debug)]
struct Pacing {
    /// Transient failures and 429s; reset by any success.
    backoff: Backoff,
    /// Repeated offset rejections; reset only when a request carrying an
    /// offset succeeds (a restart's first, offset-less page does not count).
    expiry: Backoff,
    expired_in_a_row: u32,
}

/// The earliest start still inside retention, with some slack.
fn retention_floor(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::from_std(RETENTION - RETENTION_SLACK).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::config::AsanaFilters;
    use crate::health::{Health, Role};
    use crate::metrics::SourceMetrics;
    use crate::retry::BackoffPolicy;
    use crate::simulator::{Faults, SimConfig, Simulator};
    use crate::state::SharedState;

    const WORKSPACE: &str = "1200000000000000";

    fn source(base_url: &str, token: &str, state: &SharedState) -> AsanaSource {
        let config = AsanaConfig {
            id: "asana_main".into(),
            base_url: base_url.into(),
            workspace_gid: WORKSPACE.into(),
            token: crate::secret::Secret::new(token),
            filters: AsanaFilters::default(),
            page_size: 100,
            start_at: StartAt::Lookback(Duration::from_secs(7200)),
            poll_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(10),
            restart_margin: Duration::from_secs(60),
            retry: BackoffPolicy::default(),
            slow_retry_interval: Duration::from_secs(1),
            requests_per_minute: 100_000,
            enrich: crate::enrich::EnrichConfig {
                enabled: false,
                ..crate::enrich::EnrichConfig::default()
            },
        };
        let ctx = SourceContext {
            state: state.clone(),
            stored: Arc::new(tokio::sync::watch::channel(0).0),
            shutdown: tokio_util::sync::CancellationToken::new(),
            max_outbox_events: Arc::new(std::sync::atomic::AtomicU64::new(1_000_000)),
            dedup_window: Duration::from_secs(86400),
            metrics: SourceMetrics::detached("asana_main", "asana"),
            health: Health::new().register(
                Role::Source,
                "asana_main",
                "asana",
                Duration::ZERO,
                vec![],
            ),
        };
        AsanaSource::new(config, ctx).unwrap()
    }

    /// Runs `source` until the outbox holds `until` events, then stops it.
    async fn run_until(source: Arc<AsanaSource>, state: &SharedState, until: i64) {
        let task = tokio::spawn({
            let source = Arc::clone(&source);
            async move { source.run().await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let depth = state.call(|db| db.outbox_depth()).await.unwrap();
            if depth >= until {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck at {depth} events"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        source.ctx.shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_request_ahead_is_the_one_the_committed_cursor_resumes_with() {
        // A start clamped to retention has sub-millisecond digits; the
        // cursor stores whole milliseconds.
        let start_at = DateTime::from_timestamp(1_767_000_000, 123_456_789).unwrap();
        let sent = Position {
            start_at,
            offset: Some("first".into()),
        };
        let next = following(&sent, "second".into());
        // What `store_page` stores for that page.
        let cursor = SourceCursor {
            position: Some("second".into()),
            filters_hash: "h".into(),
            stream_start: Some(start_at.timestamp_millis()),
            last_event_time: None,
            last_event_id: None,
        };
        let ahead = Ahead::start(next.clone(), async {});
        assert!(ahead.continues(&cursor));
        // Exactly the request the loop makes from that cursor.
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();
        let source = source("http://127.0.0.1:9/api/1.0", "t0ken", &state);
        assert_eq!(source.position(&cursor), next);
        for other in [
            SourceCursor {
                position: Some("first".into()),
                ..cursor.clone()
            },
            SourceCursor {
                stream_start: Some(start_at.timestamp_millis() - 1),
                ..cursor.clone()
            },
            SourceCursor {
                position: None,
                ..cursor.clone()
            },
        ] {
            assert!(!ahead.continues(&other), "{other:?}");
        }
    }

    #[tokio::test]
    async fn a_request_ahead_answers_aborts_when_dropped_and_passes_panics_on() {
        let position = Position {
            start_at: Utc::now(),
            offset: Some("o".into()),
        };
        let ahead = Ahead::start(position.clone(), async { 7 });
        assert_eq!(ahead.finish().await, Some(7));

        // Dropped while in flight: the request stops (its future is dropped).
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let flag = Flag(Arc::clone(&dropped));
        let ahead = Ahead::start(position.clone(), async move {
            let _flag = flag;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        started.await.unwrap();
        drop(ahead);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !dropped.load(Ordering::SeqCst) {
            assert!(tokio::time::Instant::now() < deadline, "not aborted");
            tokio::task::yield_now().await;
        }

        // A panic in the request is a panic of the loop, as before.
        let ahead = Ahead::<()>::start(position, async { panic!("boom in the request") });
        let caller = tokio::spawn(ahead.finish()).await.unwrap_err();
        let panic = caller.into_panic();
        assert_eq!(
            panic.downcast_ref::<&str>().copied(),
            Some("boom in the request")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipelined_backfill_stops_and_resumes_without_repeats_or_gaps() {
        const EVENTS: u64 = 2_050;
        let sim = Simulator::new(SimConfig {
            backlog: EVENTS,
            rate: 0.0,
            max_live: Some(0),
            tokens: vec!["first-token".into(), "second-token".into()],
            // A second request in flight would get a 429.
            max_concurrent: 1,
            // Requests take a while, so a stop finds one running ahead.
            faults: Faults {
                latency: Duration::from_millis(15),
                ..Faults::default()
            },
            ..SimConfig::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base_url = format!("http://{addr}/api/1.0");
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(Arc::clone(&sim).serve(listener, stop.clone().cancelled_owned()));
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();

        let first = Arc::new(source(&base_url, "first-token", &state));
        run_until(Arc::clone(&first), &state, 700).await;
        let stored = state.call(|db| db.outbox_depth()).await.unwrap() as u64;
        assert!(stored < EVENTS, "the first run read everything: {stored}");
        let cursor = state
            .call(|db| db.cursor("asana_main"))
            .await
            .unwrap()
            .unwrap();
        assert!(cursor.position.is_some());

        let second = Arc::new(source(&base_url, "second-token", &state));
        run_until(Arc::clone(&second), &state, EVENTS as i64).await;

        // The second run started exactly after the last committed page: it
        // received each remaining event once and none of the first run's.
        assert_eq!(second.ctx.metrics.received.get(), EVENTS - stored);
        assert_eq!(second.ctx.metrics.duplicates.get(), 0);
        let stats: serde_json::Value = reqwest::get(format!("http://{addr}/_sim/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            stats["by_status"].get("429"),
            None,
            "two requests were in flight: {stats}"
        );
        let ids: Vec<String> = state
            .call(|db| db.read_outbox(0, usize::MAX))
            .await
            .unwrap()
            .into_iter()
            .map(|record| record.event_id)
            .collect();
        assert_eq!(ids, sim.visible_gids(WORKSPACE));
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
