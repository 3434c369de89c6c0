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

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

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
        while !shutdown.is_cancelled() {
            if !self.ctx.wait_for_outbox_room(&self.config.id).await? {
                break;
            }
            let position = self.position(&cursor);
            let health = &self.ctx.health;
            if !self.ctx.wait_for_budget(self.client.budget()).await {
                break;
            }
            health.beat("fetching a page", self.config.request_timeout + BEAT_SLACK);
            let fetched = tokio::select! {
                fetched = self.client.fetch(&position) => fetched,
                // Nothing is in hand yet: dropping the request loses nothing.
                () = shutdown.cancelled() => break,
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
                    health.beat("committing a page", COMMIT_BOUND);
                    match self.store_page(&mut cursor, page, &position).await {
                        Ok(()) => {
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
                            // move: the same request is made again.
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
        tracing::info!(source = %id, "asana source stopped");
        Ok(())
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
