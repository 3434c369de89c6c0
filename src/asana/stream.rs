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
//! stored event − `restart_margin` (never before the stream's own start),
//! and the dedup window drops the repeats.
//!
//! Before a page is committed, the users it names are resolved by the
//! source's [`Enricher`] (within its bound, never longer), and every
//! request, audit page or user lookup, takes a token of the source's
//! [`RateBudget`](crate::budget::RateBudget) first.
//!
//! Pipelining: a full page comes with the offset of the next one, so a task
//! ([`Ahead`]) follows the offsets from there, fetching one page after
//! another while a task of its own prepares them in order and the loop
//! commits, until a page is not full, a request fails, or the rate budget
//! holds requests back. One request at most per stream is in flight, at
//! most [`FETCHED_PAGES`] fetched pages wait to be prepared (and one more
//! to be handed over), and at most [`AHEAD_PAGES`] answers wait.
//! The loop commits every page that is ready, up to [`GROUP_PAGES`], in one
//! transaction with the cursor after the last of them (group commit: the
//! commit's fixed costs are paid once per group, not once per page). An
//! answer is used only if it continues the cursor the commit before it
//! stored; otherwise (the commit failed, shutdown) it is dropped and
//! nothing is lost: the stored cursor still points at it.
//!
//! Backfill: a source that starts more than `backfill_threshold` behind
//! cuts the backlog older than `settle` (the larger of `restart_margin` and
//! `backfill_threshold`) into time slices, each an offset stream over
//! `start_at`/`end_at` with its own cursor (`backfill_slice`), read
//! `parallel_slices` at a time beside the tail by the same loop
//! ([`Track::Slice`]). A slice ends at its first empty page; that page's
//! commit deletes it. Slices request only while the API accepts the
//! source's requests (`accepted`), so a revoked token is probed by the tail
//! alone.

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
use crate::health::Component;
use crate::retry::{rate_limit_wait, Backoff};
use crate::source::{sleep_or_cancel, SourceContext, SourceError, PRUNE_EVERY};
use crate::state::{NewEvent, Quarantined, SliceCursor, SourceCursor, StateError};

/// Asana deletes audit events after 90 days.
pub const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Starting this close to the retention edge would race the deletion.
const RETENTION_SLACK: Duration = Duration::from_secs(3600);

/// Added to every heartbeat deadline: scheduling delays are not hangs.
const BEAT_SLACK: Duration = Duration::from_secs(30);

/// The longest a page commit may take before the task counts as hung
/// (it queues behind other tasks' calls on the one connection).
const COMMIT_BOUND: Duration = Duration::from_secs(120);

/// Answers (prepared pages) the requests made ahead may hold for the loop.
const AHEAD_PAGES: usize = 8;

/// Pages fetched ahead that may wait to be prepared (besides the one being
/// prepared).
const FETCHED_PAGES: usize = 2;

/// The most pages committed in one transaction.
const GROUP_PAGES: usize = 8;

/// A request's answer: where it was sent from and its page, prepared.
type Answer = (Position, Result<Prepared, SourceError>);

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
    /// Turns pages into outbox entries; shared with the requests made ahead.
    mapper: Arc<Mapper>,
    ctx: SourceContext,
    /// Open while the API accepts the source's requests: opened by the
    /// tail's first stored page, closed by a rejected token or request
    /// (which only an operator fixes). Backfill slices request only while
    /// it is open, so a bad token costs the tail's slow retries, not one
    /// per slice.
    accepted: tokio::sync::watch::Sender<bool>,
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
        let mapper = Arc::new(Mapper {
            source_id: config.id.clone(),
            workspace_gid: config.workspace_gid.clone(),
            enricher,
        });
        Ok(Self {
            config,
            client,
            mapper,
            ctx,
            accepted: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Its id in the configuration.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Follows the stream until shutdown, and reads the slices of a backlog
    /// beside it. Errors from the API never end the loops; only a state
    /// file that cannot be read or written does.
    pub async fn run(&self) -> Result<(), StateError> {
        let (cursor, slices) = self.load_cursor().await?;
        tracing::info!(
            source = %self.config.id,
            workspace = %self.config.workspace_gid,
            resuming = cursor.position.is_some(),
            backfill_slices = slices.len(),
            "asana source started"
        );
        tokio::try_join!(
            self.follow(Track::Tail, cursor, &self.ctx),
            self.backfill(slices)
        )?;
        tracing::info!(source = %self.config.id, "asana source stopped");
        Ok(())
    }

    /// Reads `slices`, `parallel_slices` at a time, oldest first, each on
    /// its own [lane](crate::health::Component::lane). Returns when all are
    /// read, or on shutdown (the rest resume at the next start).
    async fn backfill(&self, slices: Vec<SliceCursor>) -> Result<(), StateError> {
        use futures::stream::{FuturesUnordered, StreamExt};

        let total = slices.len();
        if total == 0 {
            return Ok(());
        }
        let id = &self.config.id;
        let started = tokio::time::Instant::now();
        let stored_before = self.ctx.metrics.stored.get();
        let metrics = &self.ctx.metrics;
        metrics.backfill_slices.set(total as i64);
        tracing::info!(
            source = %id,
            slices = total,
            parallel = self.config.parallel_slices,
            from = %format_time(slices.iter().map(SliceCursor::read_through).min().unwrap_or_default()),
            to = %format_time(slices.iter().map(|s| s.end_ms).max().unwrap_or_default()),
            "backfill started"
        );
        let parallel = usize::try_from(self.config.parallel_slices.max(1)).unwrap_or(1);
        let mut queue = slices.into_iter();
        let mut running = FuturesUnordered::new();
        let mut finished = 0usize;
        loop {
            while running.len() < parallel && !self.ctx.shutdown.is_cancelled() {
                let Some(slice) = queue.next() else { break };
                let ctx = SourceContext {
                    health: self.ctx.health.lane(),
                    backfill: true,
                    ..self.ctx.clone()
                };
                running.push(async move {
                    let track = Track::Slice {
                        slice: slice.slice,
                        end_ms: slice.end_ms,
                    };
                    self.follow(track, slice.cursor, &ctx).await
                });
            }
            match running.next().await {
                None => break,
                Some(read) => {
                    if read? {
                        finished += 1;
                        metrics.backfill_slices.set((total - finished) as i64);
                    }
                }
            }
        }
        if finished == total {
            tracing::info!(
                source = %id,
                slices = total,
                // Includes what the live tail stored meanwhile.
                stored = metrics.stored.get().saturating_sub(stored_before),
                elapsed_s = started.elapsed().as_secs(),
                "backfill finished"
            );
        } else {
            tracing::info!(source = %id, read = finished, left = total - finished, "backfill stopped; the rest resumes at the next start");
        }
        Ok(())
    }

    /// Follows one stream: the live tail until shutdown, or a slice until
    /// its end. Returns whether it reached its end (a slice that was read
    /// completely, and deleted from the state file with its last page).
    async fn follow(
        &self,
        track: Track,
        mut cursor: SourceCursor,
        ctx: &SourceContext,
    ) -> Result<bool, StateError> {
        let id = self.config.id.as_str();
        let mut pacing = Pacing {
            backoff: Backoff::new(self.config.retry),
            expiry: Backoff::new(self.config.retry),
            expired_in_a_row: 0,
        };
        let mut last_prune = tokio::time::Instant::now();
        let shutdown = ctx.shutdown.clone();
        let health = &ctx.health;
        // The requests following this page, running while it is committed.
        let mut ahead: Option<Ahead<Answer>> = None;
        while !shutdown.is_cancelled() {
            if !ctx.wait_for_outbox_room(id).await? {
                break;
            }
            if let Track::Slice { slice, end_ms } = track {
                if !self.wait_until_accepted(ctx).await {
                    break;
                }
                if cursor.position.is_none() && self.expired(end_ms) {
                    self.ctx.metrics.retention_gaps.inc();
                    tracing::warn!(source = %id, slice, end = %format_time(end_ms), "a backfill slice fell out of asana's 90-day retention before it was read; its events are gone");
                    let gone = SliceCursor {
                        slice,
                        end_ms,
                        cursor: cursor.clone(),
                    };
                    health.beat("committing a page", COMMIT_BOUND);
                    ctx.commit_slice_page(id, (Vec::new(), Vec::new()), gone, true)
                        .await?;
                    return Ok(true);
                }
            }
            let Some((position, fetched)) = self.next_page(track, &cursor, &mut ahead, ctx).await
            else {
                break;
            };
            let delay = match fetched {
                Ok(page) => {
                    pacing.backoff.reset();
                    if position.offset.is_some() {
                        pacing.expiry.reset();
                        pacing.expired_in_a_row = 0;
                    }
                    let full = page.full(self.client.page_size());
                    // A running chain of requests goes on by itself.
                    if full && ahead.is_none() {
                        ahead = self.request_ahead(&position, &page, ctx);
                    }
                    // A slice ends at its first empty page (Asana's "caught
                    // up"; a short page may be a server cap), or at a page
                    // with no offset to go on from. Its end lies at least
                    // `settle` in the past, so no more events come into it.
                    let finished = matches!(track, Track::Slice { .. })
                        && (page.records == 0 || page.next_offset.is_none());
                    health.beat("committing a page", COMMIT_BOUND);
                    match self
                        .store_page(track, &mut cursor, page, &position, finished, ctx)
                        .await
                    {
                        Ok(()) => {
                            health.succeeded();
                            if track == Track::Tail {
                                self.accepted
                                    .send_if_modified(|open| !std::mem::replace(open, true));
                            }
                            if finished {
                                return Ok(true);
                            }
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
                    if track == Track::Tail && last_prune.elapsed() >= PRUNE_EVERY {
                        last_prune = tokio::time::Instant::now();
                        self.ctx.prune(id).await;
                    }
                    // A slice goes on at once: its events are all there.
                    (!full && track == Track::Tail).then_some(self.config.poll_interval)
                }
                Err(error) => {
                    // The requests ahead stopped at the error; what follows
                    // is asked from the cursor again.
                    ahead = None;
                    self.on_error(track, error, &mut cursor, &mut pacing, ctx)
                        .await?
                }
            };
            if let Some(delay) = delay {
                health.beat("waiting for the next poll", delay + BEAT_SLACK);
                if !sleep_or_cancel(delay, &shutdown).await {
                    break;
                }
            }
        }
        // Pages fetched ahead but not committed are dropped: the stored
        // cursor still points at them.
        drop(ahead);
        Ok(false)
    }

    /// Waits until the API accepts the source's requests (see `accepted`);
    /// false on shutdown. The tail probes meanwhile, under its own
    /// deadlines, so the wait is idle.
    async fn wait_until_accepted(&self, ctx: &SourceContext) -> bool {
        let mut accepted = self.accepted.subscribe();
        if *accepted.borrow_and_update() {
            return true;
        }
        ctx.health
            .idle("waiting for the live tail to show the api accepts requests");
        tokio::select! {
            open = accepted.wait_for(|open| *open) => open.is_ok(),
            () = ctx.shutdown.cancelled() => false,
        }
    }

    /// The next pages to commit and the position the last of them was
    /// requested with: the answers of the requests made ahead, if they go
    /// on from `cursor` (every page that is ready, see [`gather`]), else a
    /// page requested now from the cursor. `None` on shutdown (nothing is
    /// in hand yet, so dropping the requests loses nothing).
    async fn next_page(
        &self,
        track: Track,
        cursor: &SourceCursor,
        ahead: &mut Option<Ahead<Answer>>,
        ctx: &SourceContext,
    ) -> Option<Answer> {
        let health = &ctx.health;
        if let Some(chain) = ahead.as_mut() {
            // Its request took a budget token (or is still waiting for one
            // after a 429 that came meanwhile), and it resolves the page's
            // users within the enricher's bound.
            health.beat(
                "fetching a page",
                self.config.request_timeout
                    + self.client.budget().delay()
                    + self.mapper.enrich_bound()
                    + BEAT_SLACK,
            );
            match self.beating(ctx, chain.next()).await? {
                Some(answer) if continues(&answer.0, cursor) => {
                    return Some(gather(answer, chain, self.client.page_size()));
                }
                // Never the case: the requests ahead follow the offsets of
                // the pages committed. Should they ever differ, the cursor
                // wins.
                Some(_) => {
                    tracing::warn!(source = %self.config.id, "the page requested ahead does not follow the stored cursor; dropped");
                }
                // It stopped: after a page that was not full, or while
                // the rate budget holds requests back.
                None => {}
            }
            *ahead = None;
        }
        let position = self.position(track, cursor);
        if !ctx.wait_for_budget(self.client.budget()).await {
            return None;
        }
        // Parallel slices share the budget: the token this request takes
        // may still be a refill away.
        health.beat(
            "fetching a page",
            self.config.request_timeout + self.client.budget().delay() + BEAT_SLACK,
        );
        let fetched = match self.beating(ctx, self.client.fetch(&position)).await? {
            Ok(page) => Ok(self.mapper.prepare(page, &position, Some(health)).await),
            Err(e) => Err(e),
        };
        Some((position, fetched))
    }

    /// Awaits a request; `None` on shutdown. While the rate budget holds
    /// requests back (a 429 to another slice penalizes it after this
    /// request's heartbeat was set), the heartbeat is renewed by that
    /// wait: it is the budget's, not a hang.
    async fn beating<T>(&self, ctx: &SourceContext, request: impl Future<Output = T>) -> Option<T> {
        const RENEW_EVERY: Duration = Duration::from_secs(5);
        tokio::pin!(request);
        loop {
            tokio::select! {
                answer = &mut request => return Some(answer),
                () = ctx.shutdown.cancelled() => return None,
                () = tokio::time::sleep(RENEW_EVERY) => {
                    let delay = self.client.budget().delay();
                    if !delay.is_zero() {
                        ctx.health.beat(
                            "fetching a page",
                            self.config.request_timeout + delay + BEAT_SLACK,
                        );
                    }
                }
            }
        }
    }

    /// Starts following the stream from the page after `page` (sent at
    /// `sent`) while `page` is committed: each page is requested once the
    /// one before it answered full, and prepared for its commit. Each
    /// request is made only when the rate budget has a token at once (a
    /// wait stays in the loop, under its heartbeat), never on shutdown.
    fn request_ahead(
        &self,
        sent: &Position,
        page: &Prepared,
        ctx: &SourceContext,
    ) -> Option<Ahead<Answer>> {
        let offset = page.next_offset.clone()?;
        let shutdown = ctx.shutdown.clone();
        let go_on = move |client: &AsanaClient| {
            !shutdown.is_cancelled() && client.budget().delay().is_zero()
        };
        if !go_on(&self.client) {
            return None;
        }
        let mut position = following(sent, offset);
        // A clone shares the connection pool and the budget.
        let client = self.client.clone();
        let mapper = Arc::clone(&self.mapper);
        let page_size = client.page_size();
        Some(Ahead::start(AHEAD_PAGES, move |answers| async move {
            // Pages are prepared on a task of their own, in order, so that
            // preparing one and fetching the next run at the same time.
            let (fetched_pages, mut to_prepare) = tokio::sync::mpsc::channel(FETCHED_PAGES);
            let preparing = AbortOnDropHandle::new(tokio::spawn(async move {
                while let Some((position, fetched)) = to_prepare.recv().await {
                    let answer = match fetched {
                        // No heartbeat from here: the loop's covers this task.
                        Ok(page) => Ok(mapper.prepare(page, &position, None).await),
                        Err(e) => Err(e),
                    };
                    // The loop dropped the requests (a failed commit, an
                    // error, shutdown).
                    if answers.send((position, answer)).await.is_err() {
                        return;
                    }
                }
            }));
            loop {
                let fetched: Result<Page, SourceError> = client.fetch(&position).await;
                let next = match &fetched {
                    Ok(page) if is_full(page.records.len(), &page.next_offset, page_size) => page
                        .next_offset
                        .clone()
                        .map(|offset| following(&position, offset)),
                    _ => None,
                };
                if fetched_pages.send((position, fetched)).await.is_err() {
                    break;
                }
                match next {
                    Some(next) if go_on(&client) => position = next,
                    _ => break,
                }
            }
            drop(fetched_pages);
            // The pages still being prepared.
            join_carrying_panics(preparing).await;
        }))
    }

    /// The stored cursor, reconciled with the configuration (a first run
    /// gets its start point stored at once, so a restart before the first
    /// event does not move it; changed filters drop the offsets), and the
    /// slices of a backlog to read: those left from before, and a new
    /// backfill when the tail is more than `backfill_threshold` behind.
    async fn load_cursor(&self) -> Result<(SourceCursor, Vec<SliceCursor>), StateError> {
        let id = self.config.id.clone();
        let hash = filters_hash(&self.config);
        let (stored, mut slices, caught_up_at) = self
            .ctx
            .state
            .call(move |db| {
                let caught_up = db
                    .component_health("source", &id)?
                    .and_then(|h| h.caught_up_at);
                Ok((db.cursor(&id)?, db.slices(&id)?, caught_up))
            })
            .await?;
        let mut changed = true;
        let mut cursor = match stored {
            Some(cursor) if cursor.filters_hash == hash => {
                changed = false;
                cursor
            }
            Some(mut cursor) => {
                tracing::warn!(
                    source = %self.config.id,
                    "filters or workspace changed since the offset was stored; restarting the stream by time"
                );
                cursor.filters_hash.clone_from(&hash);
                self.restart(Track::Tail, &mut cursor);
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
                    filters_hash: hash.clone(),
                    stream_start: Some(start.timestamp_millis()),
                    last_event_time: None,
                    last_event_id: None,
                }
            }
        };
        // Slices left by an earlier run under other filters: their offsets
        // are void, their ranges still to be read.
        for slice in slices.iter_mut().filter(|s| s.cursor.filters_hash != hash) {
            slice.cursor.filters_hash.clone_from(&hash);
            self.restart(
                Track::Slice {
                    slice: slice.slice,
                    end_ms: slice.end_ms,
                },
                &mut slice.cursor,
            );
            self.save_slice(slice).await?;
        }
        let first = slices.last().map_or(0, |s| s.slice + 1);
        let now_ms = Utc::now().timestamp_millis();
        if let Some((tail, new)) = self.plan_backfill(&cursor, caught_up_at, now_ms, first) {
            let id = self.config.id.clone();
            let (to_store, to_insert) = (tail.clone(), new.clone());
            self.ctx
                .state
                .call(move |db| db.store_backfill(&id, "asana", &to_store, &to_insert))
                .await?;
            cursor = tail;
            slices.extend(new);
        } else if changed {
            self.save_cursor(&cursor).await?;
        }
        Ok((cursor, slices))
    }

    /// A backfill for the tail `cursor`, when what it has left to read
    /// begins more than `backfill_threshold` ago: slices over [that point,
    /// now − `settle`), numbered from `first`, and the tail's new cursor, a
    /// fresh stream from where the last slice ends. `None` when parallel
    /// slices are off or the backlog is short.
    ///
    /// `settle` is the larger of `restart_margin` and `backfill_threshold`:
    /// the tail reads that much of the newest events itself, so a slice
    /// only covers time that is old enough for late-indexed events to be
    /// there; and a stream that had an offset (which would have brought
    /// late events too) is re-read from that much before its read point.
    fn plan_backfill(
        &self,
        cursor: &SourceCursor,
        caught_up_at: Option<i64>,
        now_ms: i64,
        first: u32,
    ) -> Option<(SourceCursor, Vec<SliceCursor>)> {
        if self.config.parallel_slices <= 1 {
            return None;
        }
        let threshold = millis(self.config.backfill_threshold);
        let settle = millis(self.config.restart_margin).max(threshold);
        let start = cursor.stream_start?;
        let (read, overlap) = match cursor.position {
            // No offset: the stream begins at its start.
            None => (start, 0),
            // An offset goes on after what was read: the newest stored
            // event, or the last poll that found the end of the stream
            // (a quiet workspace).
            Some(_) => (
                [cursor.last_event_time, caught_up_at]
                    .into_iter()
                    .flatten()
                    .max()
                    .map_or(start, |read| read.max(start)),
                settle,
            ),
        };
        if now_ms.saturating_sub(read) <= threshold {
            return None;
        }
        let now = DateTime::from_timestamp_millis(now_ms)?;
        let from = read.saturating_sub(overlap).max(start);
        let from = self
            .clamp_to_retention(DateTime::from_timestamp_millis(from)?, now)
            .timestamp_millis();
        let split = now_ms.saturating_sub(settle);
        let count = self.config.parallel_slices.saturating_mul(SLICES_PER_LANE);
        let bounds = cut(from, split, count, MIN_SLICE_MS);
        if bounds.len() < 2 {
            return None;
        }
        let slices: Vec<SliceCursor> = bounds
            .windows(2)
            .zip(first..)
            .map(|(range, slice)| SliceCursor {
                slice,
                end_ms: range[1],
                cursor: SourceCursor {
                    position: None,
                    filters_hash: cursor.filters_hash.clone(),
                    stream_start: Some(range[0]),
                    last_event_time: None,
                    last_event_id: None,
                },
            })
            .collect();
        tracing::info!(
            source = %self.config.id,
            from = %format_time(from),
            to = %format_time(split),
            slices = slices.len(),
            "backlog is longer than backfill_threshold; reading it in parallel time slices while the live tail goes on"
        );
        let tail = SourceCursor {
            position: None,
            stream_start: Some(split),
            ..cursor.clone()
        };
        Some((tail, slices))
    }

    async fn save_cursor(&self, cursor: &SourceCursor) -> Result<(), StateError> {
        let id = self.config.id.clone();
        let cursor = cursor.clone();
        self.ctx
            .state
            .call(move |db| db.set_cursor(&id, "asana", &cursor))
            .await
    }

    async fn save_slice(&self, slice: &SliceCursor) -> Result<(), StateError> {
        let id = self.config.id.clone();
        let slice = slice.clone();
        self.ctx
            .state
            .call(move |db| db.set_slice(&id, &slice))
            .await
    }

    /// Whether everything before `end_ms` is past retention (a slice that
    /// waited too long to be read).
    fn expired(&self, end_ms: i64) -> bool {
        retention_floor(Utc::now()).timestamp_millis() >= end_ms
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
    /// latest offset once it has one (and a slice's end).
    fn position(&self, track: Track, cursor: &SourceCursor) -> Position {
        let now = Utc::now();
        let start_at = cursor
            .stream_start
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(now);
        let end_at = match track {
            Track::Tail => None,
            Track::Slice { end_ms, .. } => DateTime::from_timestamp_millis(end_ms),
        };
        match &cursor.position {
            // The offset is bound to the start it was issued for: send that
            // start unchanged, however old it is now.
            Some(offset) => Position {
                start_at,
                end_at,
                offset: Some(offset.clone()),
            },
            // A start beyond retention (an old `state reset --to`, a first
            // run that could not fetch for days) is reported here; the
            // clamped start is what gets stored with the page.
            None => Position {
                start_at: self.clamp_to_retention(start_at, now),
                end_at,
                offset: None,
            },
        }
    }

    /// Drops the offset and starts a new stream at the newest stored event
    /// minus the margin (never before the old stream's start: everything
    /// before it was read already, or never wanted); the dedup window drops
    /// what is read again.
    fn restart(&self, track: Track, cursor: &mut SourceCursor) {
        self.ctx.metrics.cursor_restarts.inc();
        let margin = millis(self.config.restart_margin);
        let start = match (cursor.last_event_time, cursor.stream_start) {
            (Some(last), Some(start)) => Some(last.saturating_sub(margin).max(start)),
            (Some(last), None) => Some(last.saturating_sub(margin)),
            (None, start) => start,
        };
        let now = Utc::now();
        let start = start
            .and_then(DateTime::from_timestamp_millis)
            .map(|at| self.clamp_to_retention(at, now));
        cursor.position = None;
        let start = start.unwrap_or(now).timestamp_millis();
        cursor.stream_start = Some(match track {
            Track::Tail => start,
            // A slice restarted past its end has nothing left but its last
            // (empty) page to ask for.
            Track::Slice { end_ms, .. } => start.min(end_ms),
        });
    }

    /// Turns a page into outbox entries and commits them with the new
    /// cursor (a slice's `finished` page deletes the slice instead).
    async fn store_page(
        &self,
        track: Track,
        cursor: &mut SourceCursor,
        page: Prepared,
        sent: &Position,
        finished: bool,
        ctx: &SourceContext,
    ) -> Result<(), StateError> {
        let Prepared {
            next_offset,
            events,
            quarantined,
            ..
        } = page;
        let mut next = cursor.clone();
        // The offset is bound to the start actually sent (which may have
        // been clamped to retention): keep them together.
        next.stream_start = Some(sent.start_at.timestamp_millis());
        // Once the stream has an offset, Asana keeps returning one; should
        // it ever not, keep ours rather than fall back to the stream start.
        next.position = next_offset.or_else(|| sent.offset.clone());
        if let Some(newest) = events.iter().max_by_key(|e| e.event_time) {
            if next.last_event_time.is_none_or(|t| newest.event_time >= t) {
                next.last_event_time = Some(newest.event_time);
                next.last_event_id = Some(newest.event_id.clone());
            }
        }
        let page = (events, quarantined);
        match track {
            Track::Tail => {
                ctx.commit_page(&self.config.id, "asana", page, next.clone())
                    .await?;
            }
            Track::Slice { slice, end_ms } => {
                let slice = SliceCursor {
                    slice,
                    end_ms,
                    cursor: next.clone(),
                };
                ctx.commit_slice_page(&self.config.id, page, slice, finished)
                    .await?;
            }
        }
        *cursor = next;
        Ok(())
    }

    /// Decides what an API error means for the cursor and how long to wait.
    async fn on_error(
        &self,
        track: Track,
        error: SourceError,
        cursor: &mut SourceCursor,
        pacing: &mut Pacing,
        ctx: &SourceContext,
    ) -> Result<Option<Duration>, StateError> {
        let id = &self.config.id;
        let backoff = &mut pacing.backoff;
        let metrics = &self.ctx.metrics;
        let n = metrics.error(error.class());
        ctx.health.failed(&error.to_string());
        Ok(Some(match error {
            SourceError::RateLimited { retry_after } => {
                let wait = rate_limit_wait(retry_after, backoff.next_delay());
                // User lookups and the other slices wait too: Asana counts
                // every request.
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
                self.restart(track, cursor);
                match track {
                    Track::Tail => self.save_cursor(cursor).await?,
                    Track::Slice { slice, end_ms } => {
                        self.save_slice(&SliceCursor {
                            slice,
                            end_ms,
                            cursor: cursor.clone(),
                        })
                        .await?;
                    }
                }
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
                self.accepted.send_replace(false);
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
                self.accepted.send_replace(false);
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

/// Which stream a loop follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    /// The source's own cursor: the live stream, followed forever.
    Tail,
    /// A slice of a backlog, read up to `end_ms` (exclusive), then deleted.
    Slice { slice: u32, end_ms: i64 },
}

/// Slices planned per slice read at once: a backlog is rarely spread
/// evenly, and a lane that finishes early takes the next slice.
const SLICES_PER_LANE: u32 = 4;

/// No slice is shorter than a minute.
const MIN_SLICE_MS: i64 = 60_000;

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Boundaries cutting [from, to) into at most `count` slices of equal
/// length, none shorter than `min_len` (fewer slices when the range is
/// short): `from`, …, `to`. Empty when the range is empty.
fn cut(from: i64, to: i64, count: u32, min_len: i64) -> Vec<i64> {
    if to <= from {
        return Vec::new();
    }
    let span = to - from;
    let count = i64::from(count.max(1)).min((span / min_len.max(1)).max(1));
    (0..=count)
        .map(|i| {
            // In i128: span × i overflows i64 for spans near its range.
            let offset = i128::from(span) * i128::from(i) / i128::from(count);
            from + i64::try_from(offset).unwrap_or(span)
        })
        .collect()
}

/// The request after a page sent at `sent` whose `next_page.offset` is
/// `offset`: what [`AsanaSource::position`] makes of the cursor that page
/// commits (the start it stores is whole milliseconds).
fn following(sent: &Position, offset: String) -> Position {
    let millis = sent.start_at.timestamp_millis();
    Position {
        start_at: DateTime::from_timestamp_millis(millis).unwrap_or(sent.start_at),
        end_at: sent.end_at,
        offset: Some(offset),
    }
}

/// Whether a request sent from `position` is the one `cursor` resumes
/// with (what [`AsanaSource::position`] makes of it, given an offset).
fn continues(position: &Position, cursor: &SourceCursor) -> bool {
    position.offset.is_some()
        && position.offset == cursor.position
        && Some(position.start_at.timestamp_millis()) == cursor.stream_start
}

/// The pages one commit stores: `first` and, while the page before is
/// full, every answer `chain` has ready, up to [`GROUP_PAGES`] pages, with
/// the position of the last. An error stops the group and stays in
/// `chain` for the loop's next turn, after this group is committed.
fn gather(first: Answer, chain: &mut Ahead<Answer>, page_size: usize) -> Answer {
    let (mut last, mut fetched) = first;
    if let Ok(group) = &mut fetched {
        let mut pages = 1;
        while pages < GROUP_PAGES && group.full(page_size) {
            let Some((position, Ok(page))) = chain.ready_if(|(_, answer)| answer.is_ok()) else {
                break;
            };
            group.append(page);
            last = position;
            pages += 1;
        }
    }
    (last, fetched)
}

/// A page's records as its commit stores them, made before the commit:
/// by the loop, or by the requests made ahead while the pages before
/// commit (so mapping and committing overlap). Consecutive pages of a
/// stream append into one ([`Prepared::append`]) to commit together.
#[derive(Debug)]
struct Prepared {
    /// How many records the last page had (a full page: more follow at
    /// once; an empty one ends a slice).
    records: usize,
    /// The last page's `next_page.offset`.
    next_offset: Option<String>,
    events: Vec<NewEvent>,
    quarantined: Vec<Quarantined>,
}

/// A page as a quarantine reason names it: by the offset it was requested
/// with, or as the first page of its stream.
fn page_name(sent: &Position) -> String {
    match &sent.offset {
        Some(offset) => format!("the page at offset {offset}"),
        None => format!(
            "the first page from {}",
            format_time(sent.start_at.timestamp_millis())
        ),
    }
}

/// Whether a page of `records` records is full and names the next page:
/// more follow at once. (A full page without a next offset would otherwise
/// be fetched again at once, forever.)
fn is_full(records: usize, next_offset: &Option<String>, page_size: usize) -> bool {
    records >= page_size && next_offset.is_some()
}

impl Prepared {
    /// Whether the page is full and names the next (see [`is_full`]).
    fn full(&self, page_size: usize) -> bool {
        is_full(self.records, &self.next_offset, page_size)
    }

    /// Appends the page that follows this one, so both commit together:
    /// what follows them is what follows `next`.
    fn append(&mut self, next: Prepared) {
        self.records = next.records;
        self.next_offset = next.next_offset;
        self.events.extend(next.events);
        self.quarantined.extend(next.quarantined);
    }
}

/// Turns a page into outbox entries: reads each record once, resolves the
/// users the page names, builds the envelopes.
#[derive(Debug)]
struct Mapper {
    source_id: String,
    workspace_gid: String,
    /// `None` when `[enrich] enabled = false`.
    enricher: Option<Enricher>,
}

impl Mapper {
    /// The longest the enricher holds a page back.
    fn enrich_bound(&self) -> Duration {
        self.enricher
            .as_ref()
            .map_or(Duration::ZERO, |e| e.config().bound)
    }

    /// Prepares `page`, requested at `sent`, for its commit. `health`: the
    /// loop's component, to beat while users are resolved (`None` in a
    /// request made ahead, whose wait the loop's heartbeat covers).
    async fn prepare(&self, page: Page, sent: &Position, health: Option<&Component>) -> Prepared {
        let records: Vec<event::Parsed<'_>> =
            page.records.iter().map(|r| event::parse(r)).collect();
        let users = self.resolve_users(&records, health).await;
        let observed_at = format_time(Utc::now().timestamp_millis());
        let origin = Origin {
            source_id: &self.source_id,
            workspace_gid: &self.workspace_gid,
        };
        let mut events: Vec<NewEvent> = Vec::with_capacity(records.len());
        let mut quarantined = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match record.to_outbox(origin, &observed_at, users.as_ref()) {
                Ok(event) => events.push(event),
                Err(reason) => {
                    tracing::warn!(source = %self.source_id, record = index, reason = %reason, "quarantined a record");
                    quarantined.push(Quarantined {
                        // Pages commit in groups: the reason names its page.
                        reason: format!("record {index} of {}: {reason}", page_name(sent)),
                        raw: page.records[index].get().to_string(),
                    });
                }
            }
        }
        Prepared {
            records: records.len(),
            next_offset: page.next_offset,
            events,
            quarantined,
        }
    }

    /// Resolves the users a page names, within the enricher's bound;
    /// `None` when enrichment is off.
    async fn resolve_users(
        &self,
        records: &[event::Parsed<'_>],
        health: Option<&Component>,
    ) -> Option<event::Users> {
        let enricher = self.enricher.as_ref()?;
        let ids: Vec<&str> = records
            .iter()
            .flat_map(event::Parsed::named_users)
            .collect();
        if ids.is_empty() {
            return Some(event::Users::new());
        }
        if let Some(health) = health {
            health.beat("enriching a page", enricher.config().bound + BEAT_SLACK);
        }
        Some(enricher.resolve(&ids).await)
    }
}

/// Requests made ahead: a task of their own that hands its answers over in
/// order, so that they proceed (and their pages are prepared) while the
/// loop commits the pages before them. At most `capacity` answers wait;
/// the task then waits too. Dropping it aborts the task.
#[derive(Debug)]
struct Ahead<T> {
    answers: tokio::sync::mpsc::Receiver<T>,
    /// An answer taken out but not used yet (see [`Ahead::ready_if`]).
    held: Option<T>,
    /// `None` once joined.
    task: Option<AbortOnDropHandle<()>>,
}

impl<T: Send + 'static> Ahead<T> {
    /// Starts `run` on its own task, with the sender of its answers.
    fn start<F, Fut>(capacity: usize, run: F) -> Self
    where
        F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, answers) = tokio::sync::mpsc::channel(capacity);
        Self {
            answers,
            held: None,
            task: Some(AbortOnDropHandle::new(tokio::spawn(run(sender)))),
        }
    }

    /// The next answer; `None` once the task stopped and every answer was
    /// taken. A panic in the task carries on here, in the loop's task.
    async fn next(&mut self) -> Option<T> {
        if let Some(answer) = self.held.take() {
            return Some(answer);
        }
        if let Some(answer) = self.answers.recv().await {
            return Some(answer);
        }
        if let Some(task) = self.task.take() {
            join_carrying_panics(task).await;
        }
        None
    }

    /// The next answer if it is there already and `wanted`; one that is not
    /// stays for [`Ahead::next`].
    fn ready_if(&mut self, wanted: impl FnOnce(&T) -> bool) -> Option<T> {
        let answer = match self.held.take() {
            Some(answer) => answer,
            None => self.answers.try_recv().ok()?,
        };
        if wanted(&answer) {
            Some(answer)
        } else {
            self.held = Some(answer);
            None
        }
    }
}

/// Waits for a task to end; a panic in it carries on in the caller's task
/// (an aborted task just ended).
async fn join_carrying_panics(task: AbortOnDropHandle<()>) {
    if let Err(e) = task.await {
        if let Ok(panic) = e.try_into_panic() {
            std::panic::resume_unwind(panic);
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
        sliced_source(base_url, token, state, 1)
    }

    /// A source reading a backlog in `parallel_slices`.
    fn sliced_source(
        base_url: &str,
        token: &str,
        state: &SharedState,
        parallel_slices: u32,
    ) -> AsanaSource {
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
            parallel_slices,
            backfill_threshold: Duration::from_secs(3600),
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
            backfill: false,
        };
        AsanaSource::new(config, ctx).unwrap()
    }

    /// Runs `source` until the outbox holds `until` events, then stops it.
    async fn run_until(source: Arc<AsanaSource>, state: &SharedState, until: i64) {
        run_while(source, state, until, false).await;
    }

    /// Runs `source` until the outbox holds `until` events and, if
    /// `backfill`, no slice is left; then stops it.
    async fn run_while(source: Arc<AsanaSource>, state: &SharedState, until: i64, backfill: bool) {
        let task = tokio::spawn({
            let source = Arc::clone(&source);
            async move { source.run().await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (depth, slices) = state
                .call(|db| Ok((db.outbox_depth()?, db.slices("asana_main")?.len())))
                .await
                .unwrap();
            if depth >= until && (!backfill || slices == 0) {
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
            end_at: None,
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
        assert!(continues(&next, &cursor));
        // Exactly the request the loop makes from that cursor.
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();
        let source = source("http://127.0.0.1:9/api/1.0", "t0ken", &state);
        assert_eq!(source.position(Track::Tail, &cursor), next);
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
            assert!(!continues(&next, &other), "{other:?}");
        }
    }

    #[tokio::test]
    async fn a_quarantined_record_names_the_page_it_came_in() {
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();
        let source = source("http://127.0.0.1:9/api/1.0", "t0ken", &state);
        let page = || {
            Page {
            records: [
                r#"{"gid":"1","created_at":"2026-01-01T00:00:00Z","event_type":"x","actor":{"actor_type":"asana_support"}}"#,
                r#"{"gid":"2","created_at":"not a time"}"#,
            ]
            .iter()
            .map(|r| serde_json::value::RawValue::from_string((*r).to_string()).unwrap())
            .collect(),
            next_offset: Some("next".into()),
        }
        };
        let start_at = DateTime::from_timestamp_millis(1_767_000_000_000).unwrap();
        let first = Position {
            start_at,
            end_at: None,
            offset: None,
        };
        let later = following(&first, "eyJvZmZzZXQiOjF9".into());
        let reasons = futures::future::join_all([&first, &later].map(|sent| {
            let mapper = Arc::clone(&source.mapper);
            async move {
                let prepared = mapper.prepare(page(), sent, None).await;
                assert_eq!(prepared.events.len(), 1);
                prepared.quarantined[0].reason.clone()
            }
        }))
        .await;
        assert!(
            reasons[0].starts_with("record 1 of the first page from 2025-12-29T09:20:00.000Z: "),
            "{}",
            reasons[0]
        );
        assert!(
            reasons[1].starts_with("record 1 of the page at offset eyJvZmZzZXQiOjF9: "),
            "{}",
            reasons[1]
        );
    }

    #[tokio::test]
    async fn requests_ahead_answer_in_order_abort_when_dropped_and_pass_panics_on() {
        let mut ahead = Ahead::start(2, |answers| async move {
            for n in 1..=3 {
                answers.send(n).await.unwrap();
            }
        });
        assert_eq!(ahead.next().await, Some(1));
        // One not wanted stays for the next call.
        assert_eq!(ahead.ready_if(|n| *n > 5), None);
        assert_eq!(ahead.next().await, Some(2));
        assert_eq!(ahead.next().await, Some(3));
        assert_eq!(ahead.next().await, None);
        assert_eq!(ahead.next().await, None);

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
        let ahead = Ahead::<()>::start(1, |_| async move {
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

        // A panic in the requests is a panic of the loop, as before, once
        // the answers sent before it are taken.
        let mut ahead = Ahead::start(1, |answers| async move {
            answers.send(1).await.unwrap();
            panic!("boom in the request")
        });
        assert_eq!(ahead.next().await, Some(1));
        let caller = tokio::spawn(async move { ahead.next().await })
            .await
            .unwrap_err();
        let panic = caller.into_panic();
        assert_eq!(
            panic.downcast_ref::<&str>().copied(),
            Some("boom in the request")
        );
    }

    /// A prepared page of `records` events named `first`, `first + 1`, …,
    /// sent with offset `sent`, naming `next` as the next.
    fn prepared(first: u32, records: u32, sent: &str, next: Option<&str>) -> Answer {
        let position = Position {
            start_at: DateTime::from_timestamp_millis(1_767_000_000_000).unwrap(),
            end_at: None,
            offset: Some(sent.into()),
        };
        let events = (first..first + records)
            .map(|n| NewEvent {
                event_id: n.to_string(),
                event_time: i64::from(n),
                payload: format!("{{\"n\":{n}}}"),
            })
            .collect();
        let page = Prepared {
            records: records as usize,
            next_offset: next.map(str::to_string),
            events,
            quarantined: vec![Quarantined {
                reason: format!("record 0 of page {sent}"),
                raw: sent.into(),
            }],
        };
        (position, Ok(page))
    }

    /// Requests ahead that have `answers` ready.
    async fn ready(answers: Vec<Answer>) -> Ahead<Answer> {
        let count = answers.len();
        let ahead = Ahead::start(count.max(1), |sender| async move {
            for answer in answers {
                sender.send(answer).await.unwrap();
            }
        });
        // Wait until all of them are in the channel.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ahead.answers.len() < count {
            assert!(tokio::time::Instant::now() < deadline, "answers not sent");
            tokio::task::yield_now().await;
        }
        ahead
    }

    fn ids(answer: &Answer) -> Vec<String> {
        let page = answer.1.as_ref().unwrap();
        page.events.iter().map(|e| e.event_id.clone()).collect()
    }

    #[tokio::test]
    async fn pages_ready_ahead_commit_together_up_to_a_short_page_an_error_or_the_cap() {
        // Full pages then a short one: one group, in order, ending as the
        // short page ends; what follows it stays.
        let mut chain = ready(vec![
            prepared(3, 3, "b", Some("c")),
            prepared(6, 1, "c", Some("d")),
            prepared(7, 3, "d", Some("e")),
        ])
        .await;
        let group = gather(prepared(0, 3, "a", Some("b")), &mut chain, 3);
        assert_eq!(
            group.0.offset.as_deref(),
            Some("c"),
            "the last page's position"
        );
        assert_eq!(ids(&group), ["0", "1", "2", "3", "4", "5", "6"]);
        let page = group.1.as_ref().unwrap();
        assert_eq!((page.records, page.next_offset.as_deref()), (1, Some("d")));
        assert!(!page.full(3));
        let reasons: Vec<&str> = page.quarantined.iter().map(|q| q.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "record 0 of page a",
                "record 0 of page b",
                "record 0 of page c"
            ]
        );
        assert_eq!(
            chain.next().await.map(|a| ids(&a)),
            Some(vec!["7".into(), "8".into(), "9".into()])
        );

        // An error ends the group and is the next answer.
        let mut chain = ready(vec![
            prepared(3, 3, "b", Some("c")),
            (
                prepared(0, 0, "c", None).0,
                Err(SourceError::Transient("reset".into())),
            ),
        ])
        .await;
        let group = gather(prepared(0, 3, "a", Some("b")), &mut chain, 3);
        assert_eq!(ids(&group), ["0", "1", "2", "3", "4", "5"]);
        assert!(group.1.as_ref().unwrap().full(3));
        let (position, error) = chain.next().await.unwrap();
        assert_eq!(position.offset.as_deref(), Some("c"));
        assert!(matches!(error, Err(SourceError::Transient(_))), "{error:?}");

        // At most GROUP_PAGES pages.
        let pages: Vec<Answer> = (1..=GROUP_PAGES as u32 + 2)
            .map(|n| prepared(n * 2, 2, &format!("p{n}"), Some(&format!("p{}", n + 1))))
            .collect();
        let mut chain = ready(pages).await;
        let group = gather(prepared(0, 2, "p0", Some("p1")), &mut chain, 2);
        assert_eq!(ids(&group).len(), GROUP_PAGES * 2);
        let last = format!("p{}", GROUP_PAGES - 1);
        assert_eq!(group.0.offset.as_deref(), Some(last.as_str()));
        let next = chain.next().await.unwrap();
        assert_eq!(
            next.0.offset.as_deref(),
            Some(format!("p{GROUP_PAGES}").as_str())
        );

        // An error first is passed on as it is, nothing taken after it.
        let mut chain = ready(vec![prepared(3, 3, "b", Some("c"))]).await;
        let first = (
            prepared(0, 0, "a", None).0,
            Err(SourceError::Transient("x".into())),
        );
        assert!(gather(first, &mut chain, 3).1.is_err());
        assert_eq!(
            chain.next().await.map(|a| ids(&a)),
            Some(vec!["3".into(), "4".into(), "5".into()])
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

    #[test]
    fn a_range_is_cut_into_equal_slices_none_shorter_than_the_minimum() {
        assert_eq!(cut(0, 400, 4, 10), vec![0, 100, 200, 300, 400]);
        // Uneven: the boundaries round down, the last slice ends at `to`.
        assert_eq!(cut(0, 10, 3, 1), vec![0, 3, 6, 10]);
        // Too short for 4 slices of at least 30.
        assert_eq!(cut(1_000, 1_100, 4, 30), vec![1_000, 1_033, 1_066, 1_100]);
        assert_eq!(cut(0, 50, 8, 60), vec![0, 50]);
        assert!(cut(5, 5, 4, 1).is_empty());
        assert!(cut(6, 5, 4, 1).is_empty());
        // Near the ends of i64 nothing overflows.
        let bounds = cut(i64::MIN / 2, i64::MAX / 2, 7, 1);
        assert_eq!(bounds.len(), 8);
        assert_eq!((bounds[0], bounds[7]), (i64::MIN / 2, i64::MAX / 2));
        assert!(bounds.windows(2).all(|w| w[0] < w[1]));
    }

    #[tokio::test]
    async fn a_backfill_is_planned_for_a_first_run_or_an_outage_longer_than_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();
        let base = "http://127.0.0.1:9/api/1.0";
        let source = sliced_source(base, "t0ken", &state, 4);
        let now = Utc::now().timestamp_millis();
        let hour = 3_600_000;
        // The larger of restart_margin (1 min) and backfill_threshold (1 h).
        let settle = hour;
        let fresh = SourceCursor {
            position: None,
            filters_hash: "h".into(),
            stream_start: Some(now - 5 * hour),
            last_event_time: None,
            last_event_id: None,
        };

        // No offset (a first run): everything from the stream's start.
        let (tail, slices) = source.plan_backfill(&fresh, None, now, 0).unwrap();
        assert_eq!(slices.len(), 16);
        assert_eq!(slices[0].cursor.stream_start, Some(now - 5 * hour));
        assert_eq!(slices[15].end_ms, now - settle);
        for pair in slices.windows(2) {
            assert_eq!(Some(pair[0].end_ms), pair[1].cursor.stream_start);
            assert_eq!(pair[0].slice + 1, pair[1].slice);
        }
        assert!(slices.iter().all(|s| s.cursor.position.is_none()));
        // The tail goes on where the last slice ends, as a new stream.
        assert_eq!(tail.stream_start, Some(now - settle));
        assert_eq!(tail.position, None);

        // An offset whose stream read up to 3 hours ago: from there, minus
        // `settle` (what that offset might still have brought, indexed
        // late); numbered after the slices still pending.
        let behind = SourceCursor {
            position: Some("offset".into()),
            last_event_time: Some(now - 4 * hour),
            last_event_id: Some("1".into()),
            ..fresh.clone()
        };
        let (tail, slices) = source
            .plan_backfill(&behind, Some(now - 3 * hour), now, 7)
            .unwrap();
        assert_eq!(slices[0].cursor.stream_start, Some(now - 3 * hour - settle));
        assert_eq!(slices[0].slice, 7);
        // The newest stored event stays: it is what the lag is measured by.
        assert_eq!(tail.last_event_time, Some(now - 4 * hour));

        // Caught up 30 minutes ago (a quiet workspace whose newest event is
        // old): shorter than the threshold, no backfill.
        assert!(source
            .plan_backfill(&behind, Some(now - hour / 2), now, 0)
            .is_none());
        // A first run with a short lookback: none either.
        let recent = SourceCursor {
            stream_start: Some(now - hour / 2),
            ..fresh.clone()
        };
        assert!(source.plan_backfill(&recent, None, now, 0).is_none());
        // parallel_slices = 1: a backlog is walked as one stream.
        let serial = sliced_source(base, "t0ken", &state, 1);
        assert!(serial.plan_backfill(&fresh, None, now, 0).is_none());
    }

    #[tokio::test]
    async fn slices_left_under_other_filters_restart_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();
        let source = sliced_source("http://127.0.0.1:9/api/1.0", "t0ken", &state, 4);
        let now = Utc::now().timestamp_millis();
        let hash = filters_hash(&source.config);
        let tail = SourceCursor {
            position: Some("tail-offset".into()),
            filters_hash: hash.clone(),
            stream_start: Some(now - 120_000),
            last_event_time: Some(now - 90_000),
            last_event_id: Some("9".into()),
        };
        let old = SliceCursor {
            slice: 3,
            end_ms: now - 200_000,
            cursor: SourceCursor {
                position: Some("slice-offset".into()),
                filters_hash: "other filters".into(),
                stream_start: Some(now - 900_000),
                last_event_time: Some(now - 500_000),
                last_event_id: Some("5".into()),
            },
        };
        state
            .call({
                let (tail, old) = (tail.clone(), old.clone());
                move |db| db.store_backfill("asana_main", "asana", &tail, &[old])
            })
            .await
            .unwrap();
        // Caught up just now: no new backfill is planned.
        source.ctx.health.caught_up();
        let record = source.ctx.health.record();
        state
            .call(move |db| db.record_health(&[record]))
            .await
            .unwrap();

        let (cursor, slices) = source.load_cursor().await.unwrap();
        assert_eq!(cursor, tail);
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        assert_eq!((slice.slice, slice.end_ms), (3, old.end_ms));
        assert_eq!(slice.cursor.position, None);
        assert_eq!(slice.cursor.filters_hash, hash);
        // From its newest event minus the margin.
        assert_eq!(slice.cursor.stream_start, Some(now - 500_000 - 60_000));
        let stored = state.call(|db| db.slices("asana_main")).await.unwrap();
        assert_eq!(&stored, &slices);
    }

    /// A simulator on loopback with `backlog` events over the last two
    /// hours and `live` more arriving at 50 per second after it.
    async fn simulator(
        backlog: u64,
        live: u64,
        latency: Duration,
    ) -> (Arc<Simulator>, String, tokio_util::sync::CancellationToken) {
        let sim = Simulator::new(SimConfig {
            backlog,
            backlog_span: Duration::from_secs(7000),
            rate: 50.0,
            max_live: Some(live),
            faults: Faults {
                latency,
                ..Faults::default()
            },
            ..SimConfig::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(Arc::clone(&sim).serve(listener, stop.clone().cancelled_owned()));
        (sim, format!("http://{addr}"), stop)
    }

    /// A sliced source on a fresh state file under `dir`, running.
    fn spawn_sliced(
        root: &str,
        token: &str,
        dir: &std::path::Path,
        lanes: u32,
    ) -> (
        Arc<AsanaSource>,
        SharedState,
        tokio::task::JoinHandle<Result<(), StateError>>,
    ) {
        let state = SharedState::open(&dir.join("state.db")).unwrap();
        let source = Arc::new(sliced_source(
            &format!("{root}/api/1.0"),
            token,
            &state,
            lanes,
        ));
        let task = tokio::spawn({
            let source = Arc::clone(&source);
            async move { source.run().await }
        });
        (source, state, task)
    }

    async fn sim_stats(root: &str) -> serde_json::Value {
        reqwest::get(format!("{root}/_sim/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every event id in the outbox, sorted.
    async fn stored_ids(state: &SharedState) -> Vec<String> {
        let mut ids: Vec<String> = state
            .call(|db| db.read_outbox(0, usize::MAX))
            .await
            .unwrap()
            .into_iter()
            .map(|record| record.event_id)
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_is_read_in_parallel_slices_beside_the_live_tail() {
        const BACKLOG: u64 = 3_000;
        const LIVE: u64 = 100;
        let (sim, root, stop) = simulator(BACKLOG, LIVE, Duration::from_millis(20)).await;
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();
        let source = Arc::new(sliced_source(
            &format!("{root}/api/1.0"),
            "sim-token",
            &state,
            4,
        ));
        run_while(Arc::clone(&source), &state, (BACKLOG + LIVE) as i64, true).await;

        let mut expected = sim.visible_gids(WORKSPACE);
        expected.sort();
        assert_eq!(expected.len() as u64, BACKLOG + LIVE);
        // Each once: slices and the tail do not overlap.
        assert_eq!(stored_ids(&state).await, expected);
        assert_eq!(source.ctx.metrics.duplicates.get(), 0);
        let stats = sim_stats(&root).await;
        assert!(
            stats["peak_in_flight"].as_u64().unwrap() > 1,
            "slices were not read in parallel: {stats}"
        );
        assert_eq!(stats["by_status"].get("429"), None, "{stats}");
        // Every slice was read to its end and deleted with its last page.
        assert!(state
            .call(|db| db.slices("asana_main"))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(source.ctx.metrics.backfill_slices.get(), 0);
        // The tail follows on from where the slices end.
        let cursor = state
            .call(|db| db.cursor("asana_main"))
            .await
            .unwrap()
            .unwrap();
        assert!(cursor.position.is_some());
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backfill_stopped_midway_resumes_each_slice_where_it_stopped() {
        const BACKLOG: u64 = 4_000;
        let (sim, root, stop) = simulator(BACKLOG, 0, Duration::from_millis(15)).await;
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();
        let base = format!("{root}/api/1.0");

        let first = Arc::new(sliced_source(&base, "sim-token", &state, 4));
        run_until(Arc::clone(&first), &state, 1_200).await;
        let pending = state.call(|db| db.slices("asana_main")).await.unwrap();
        assert!(!pending.is_empty(), "the backfill finished before the stop");
        assert!(
            pending.iter().any(|s| s.cursor.position.is_some()),
            "no slice was stopped midway: {pending:?}"
        );
        let stored = state.call(|db| db.outbox_depth()).await.unwrap() as u64;

        let second = Arc::new(sliced_source(&base, "sim-token", &state, 4));
        run_while(Arc::clone(&second), &state, BACKLOG as i64, true).await;
        // Each slice went on from its stored offset: nothing read twice.
        assert_eq!(second.ctx.metrics.received.get(), BACKLOG - stored);
        assert_eq!(second.ctx.metrics.duplicates.get(), 0);
        let mut expected = sim.visible_gids(WORKSPACE);
        expected.sort();
        assert_eq!(stored_ids(&state).await, expected);
        assert!(state
            .call(|db| db.slices("asana_main"))
            .await
            .unwrap()
            .is_empty());
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parallel_backfill_survives_429s_and_expired_offsets() {
        const BACKLOG: u64 = 4_000;
        let (sim, root, stop) = simulator(BACKLOG, 0, Duration::from_millis(15)).await;
        let dir = tempfile::tempdir().unwrap();
        let (source, state, task) = spawn_sliced(&root, "sim-token", dir.path(), 4);
        let wait = |until: i64, backfill_done: bool| {
            let state = state.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let (depth, slices) = state
                        .call(|db| Ok((db.outbox_depth()?, db.slices("asana_main")?)))
                        .await
                        .unwrap();
                    if depth >= until && (!backfill_done || slices.is_empty()) {
                        return slices;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "stuck at {depth}");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        let pending = wait(1_000, false).await;
        assert!(
            pending.iter().any(|s| s.cursor.position.is_some()),
            "no slice was following an offset: {pending:?}"
        );
        // Every offset issued so far is rejected from now on, and the next
        // three requests get 429.
        sim.update_faults(crate::simulator::FaultUpdate {
            expire_offsets: true,
            rate_limit_next: Some(3),
            retry_after_secs: Some(1),
            ..crate::simulator::FaultUpdate::default()
        })
        .unwrap();
        wait(BACKLOG as i64, true).await;
        source.ctx.shutdown.cancel();
        task.await.unwrap().unwrap();

        let stats = sim_stats(&root).await;
        assert_eq!(stats["by_status"]["429"], 3, "{stats}");
        assert!(stats["by_status"]["400"].as_u64().unwrap() >= 1, "{stats}");
        // The slices restarted by time: some events were read again and
        // dropped by the dedup window.
        assert!(source.ctx.metrics.cursor_restarts.get() >= 1);
        let mut expected = sim.visible_gids(WORKSPACE);
        expected.sort();
        assert_eq!(stored_ids(&state).await, expected);
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejected_token_holds_the_slices_back_while_the_tail_retries() {
        let (_sim, root, stop) = simulator(3_000, 0, Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let (source, state, task) = spawn_sliced(&root, "revoked-token", dir.path(), 8);
        // slow_retry_interval is 1 s: about three tries of the tail.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        source.ctx.shutdown.cancel();
        task.await.unwrap().unwrap();
        let stats = sim_stats(&root).await;
        let rejected = stats["by_status"]["401"].as_u64().unwrap();
        assert!(
            (1..=4).contains(&rejected),
            "{rejected} requests got 401: {stats}"
        );
        // The backfill is still all there, for when the token is fixed.
        let slices = state.call(|db| db.slices("asana_main")).await.unwrap();
        assert_eq!(slices.len(), 32);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_slice_past_retention_is_dropped_as_a_gap_without_a_request() {
        let (_sim, root, stop) = simulator(100, 0, Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();
        let source = Arc::new(sliced_source(
            &format!("{root}/api/1.0"),
            "sim-token",
            &state,
            4,
        ));
        let now = Utc::now().timestamp_millis();
        let day = 86_400_000;
        let hash = filters_hash(&source.config);
        let tail = SourceCursor {
            position: None,
            filters_hash: hash.clone(),
            stream_start: Some(now - 60_000),
            last_event_time: None,
            last_event_id: None,
        };
        let gone = SliceCursor {
            slice: 0,
            end_ms: now - 95 * day,
            cursor: SourceCursor {
                stream_start: Some(now - 100 * day),
                ..tail.clone()
            },
        };
        state
            .call(move |db| db.store_backfill("asana_main", "asana", &tail, &[gone]))
            .await
            .unwrap();
        run_while(Arc::clone(&source), &state, 0, true).await;
        assert!(source.ctx.metrics.retention_gaps.get() >= 1);
        let stats = sim_stats(&root).await;
        // Only the tail asked (no request for the slice's range).
        let requests = stats["by_endpoint"]["audit_log_events"]["200"]
            .as_u64()
            .unwrap();
        assert!(requests <= 2, "{stats}");
        stop.cancel();
    }
}
