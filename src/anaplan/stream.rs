//! The Anaplan polling loop: pinned time windows read by offset, again
//! from the newest stored event minus an overlap at every poll.
//!
//! - Each poll reads the window `[high-water mark − overlap, now]`, with
//!   explicit `dateFrom`/`dateTo` (never an unfiltered call, never more
//!   than the 30-day cap). The high-water mark is the newest `eventDate`
//!   received, never the local clock, so an event stored late (its
//!   `createdDate` after others were read) within the overlap is read on
//!   the next poll; dedup drops the repeats.
//! - A window is paged by `limit`/`offset`. Events inserted while paging
//!   shift the offsets: repeats are dropped by dedup, and the ones that
//!   landed before the current offset are caught by reading the window
//!   again until a pass sees the same `totalSize` on every page and
//!   received as many records as that.
//! - Once the first page of a pass told `totalSize`, the pages after the
//!   cursor are requested together, up to `parallel_pages` at a time
//!   ([`Pager`]), and committed strictly in offset order. Pages requested
//!   together come from slightly different moments, which is why every
//!   page's `totalSize` is compared, not only the first and the last.
//! - Progress (window, offset, pass) is stored with every page, so a
//!   restart resumes mid-window. It is the first offset not committed:
//!   pages fetched ahead of it are dropped on a stop, a crash or a failed
//!   commit, and asked again.
//! - When the point read through is older than the 30-day retention (a
//!   long outage), the span lost upstream is counted, logged, and emitted
//!   as a gap marker event.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::client::{AnaplanClient, Page, Window, ROLE_MISSING};
use super::event::{self, Origin};
use super::pager::{Arrival, Pager, PassKey};
use super::users::{AnaplanUsers, AuthHeader};
use crate::config::{AnaplanConfig, AnaplanCredentials, StartAt};
use crate::enrich::{Enricher, Users};
use crate::envelope::format_time;
use crate::retry::Backoff;
use crate::source::{sleep_or_cancel, SourceContext, SourceError, PRUNE_EVERY};
use crate::state::{NewEvent, Quarantined, SourceCursor, StateError};

/// Anaplan keeps events 30 days.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The window never starts closer than this to the retention edge, so
/// that it is not rejected while it is read.
const RETENTION_SLACK: Duration = Duration::from_secs(3600);

/// Passes over one window before accepting it as read (events keep being
/// stored late into a busy window; the next poll's overlap reads them).
const MAX_PASSES: u32 = 5;

/// How often a pre-issued token is checked (and refreshed when due).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5 * 60);

/// Added to heartbeat deadlines.
const BEAT_SLACK: Duration = Duration::from_secs(30);
const COMMIT_BOUND: Duration = Duration::from_secs(120);

/// Where a source stands, stored as the cursor's `position`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    /// The end of the last window read completely (local clock): below
    /// it, everything was read.
    read_to: Option<i64>,
    /// The window being read, if any.
    window: Option<WindowProgress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct WindowProgress {
    from: i64,
    to: i64,
    offset: u64,
    /// `totalSize` on the first page of this pass.
    first_total: Option<u64>,
    /// A later page of this pass told another `totalSize` (pages requested
    /// together come from slightly different moments: any of them may be
    /// the one that saw the window change).
    #[serde(default)]
    total_changed: bool,
    /// Records received in this pass.
    received: u64,
    pass: u32,
}

impl PassKey {
    /// The pass `window` is in.
    fn of(window: &WindowProgress) -> Self {
        Self {
            from: window.from,
            to: window.to,
            pass: window.pass,
        }
    }
}

/// The filter the stored position belongs to.
fn filters_hash(config: &AnaplanConfig) -> String {
    format!("anaplan:type={}", config.event_type)
}

/// One Anaplan tenant's audit events, run as its own task.
#[derive(Debug)]
pub struct AnaplanSource {
    config: AnaplanConfig,
    /// Shared with the page requests running ahead of the cursor.
    client: Arc<AnaplanClient>,
    auth: Arc<Auth>,
    /// `None` when `[enrich] enabled = false`.
    enricher: Option<Enricher>,
    ctx: SourceContext,
}

impl AnaplanSource {
    /// Builds the source; nothing is requested yet.
    pub fn new(config: AnaplanConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let (client, auth) = AnaplanClient::new(&config, ctx.metrics.clone())?;
        let enricher = if config.enrich.enabled {
            // The users API lives at the Integration API's origin.
            let origin = config.api_url.trim_end_matches("/2/0");
            let users = AnaplanUsers::new(
                origin,
                client.http().clone(),
                Arc::clone(&auth) as Arc<dyn AuthHeader>,
                ctx.metrics.clone(),
                Arc::clone(client.budget()),
            )?;
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
        ctx.metrics.paused.set(0);
        Ok(Self {
            config,
            client: Arc::new(client),
            auth,
            enricher,
            ctx,
        })
    }

    /// Its id in the configuration.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The login, shared with user lookups.
    pub fn auth(&self) -> Arc<Auth> {
        Arc::clone(&self.auth)
    }

    /// Polls until shutdown. API errors never end the loop; only a state
    /// file that cannot be read or written does.
    ///
    /// Each turn requests what the [`Pager`] plans from the cursor (up to
    /// `parallel_pages` pages, running or arrived), then commits the page
    /// at the cursor if it arrived, or else waits for the next answer. So
    /// the pages after the cursor are downloading while it commits. A
    /// failed request is counted and waited for once however many of the
    /// pages in flight it hit, then made again: the cursor never passes it.
    pub async fn run(&self) -> Result<(), StateError> {
        let id = self.config.id.clone();
        let (mut cursor, mut progress) = self.load_cursor().await?;
        let mut backoff = Backoff::new(self.config.retry);
        let mut last_prune = tokio::time::Instant::now();
        let shutdown = self.ctx.shutdown.clone();
        // A pre-issued token has nobody to log in again: keep it alive even
        // while the source waits (a full outbox, a long rate limit).
        let keepalive = matches!(self.config.credentials, AnaplanCredentials::Token(_)).then(|| {
            let auth = Arc::clone(&self.auth);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                while sleep_or_cancel(KEEPALIVE_EVERY, &stop).await {
                    if let Err(error) = auth.header().await {
                        tracing::warn!(error = %error, "keeping the anaplan token alive failed");
                    }
                }
            })
        });
        // Pages requested ahead of the cursor; dropped (and their requests
        // aborted) whenever the loop ends.
        let mut pager: Pager<Page, SourceError> = Pager::new(self.config.parallel_pages);
        let health = &self.ctx.health;
        tracing::info!(
            source = %id,
            resuming = cursor.last_event_time.is_some(),
            parallel_pages = self.config.parallel_pages,
            "anaplan source started"
        );
        // Once per page: before the first request and after each commit.
        let mut check_room = true;
        while !shutdown.is_cancelled() {
            if check_room {
                if !self.ctx.wait_for_outbox_room(&self.config.id).await? {
                    break;
                }
                check_room = false;
            }
            // A window that started reading before a long outage may have
            // slid out of retention meanwhile: what is gone is a gap, and
            // the window starts again within retention.
            let floor = retention_floor(Utc::now().timestamp_millis());
            if progress.window.is_some_and(|w| w.from < floor - 60_000) {
                progress.window = None;
            }
            let window = match progress.window {
                Some(window) => window,
                None => {
                    let window = self.next_window(&mut cursor, &mut progress).await?;
                    progress.window = Some(window);
                    window
                }
            };
            pager.start_pass(PassKey::of(&window));
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                self.ctx.prune(&self.config.id).await;
            }
            // Nothing in flight or in hand: wait here for the budget (after
            // a 429, or while user lookups used it), so that the heartbeat
            // says so. Requests made while others run wait in the budget.
            if !pager.has_arrived(window.offset)
                && pager.running() == 0
                && !self.ctx.wait_for_budget(self.client.budget()).await
            {
                break;
            }
            let span = Window {
                from: window.from,
                to: window.to,
            };
            pager.request(window.offset, |offset| {
                let client = Arc::clone(&self.client);
                async move { client.fetch(span, offset).await }
            });
            // The page at the cursor commits as soon as it is there.
            if let Some(page) = pager.take(window.offset) {
                check_room = true;
                let (count, total) = (page.records.len() as u64, page.total);
                health.beat("committing a page", COMMIT_BOUND);
                let delay = match self
                    .store_page(&mut cursor, &mut progress, window, page)
                    .await
                {
                    Ok(more) => {
                        pager.committed(count, total);
                        // A pass or window that ended takes the requests
                        // still running for it along now, not after the
                        // poll interval.
                        match progress.window {
                            Some(next) => pager.start_pass(PassKey::of(&next)),
                            None => pager.clear(),
                        }
                        health.succeeded();
                        self.ctx
                            .metrics
                            .last_success
                            .set(crate::metrics::unix_seconds(Utc::now().timestamp_millis()));
                        if more {
                            None
                        } else {
                            health.caught_up();
                            Some(("waiting for the next poll", self.config.poll_interval))
                        }
                    }
                    Err(e) => {
                        self.ctx.metrics.error("state");
                        health.failed(&format!("storing a page: {e}"));
                        tracing::error!(source = %id, error = %e, "storing a page failed");
                        // Nothing moved: the same page is asked again, and
                        // the pages fetched ahead of it are dropped.
                        progress = self.stored_progress(&cursor);
                        pager.clear();
                        Some(("backing off", backoff.next_delay()))
                    }
                };
                if let Some((doing, delay)) = delay {
                    health.beat(doing, delay + BEAT_SLACK);
                    if !sleep_or_cancel(delay, &shutdown).await {
                        break;
                    }
                }
                continue;
            }
            // A fetch may log in (twice after a 401) and wait for the
            // budget if a user lookup met a 429 meanwhile.
            health.beat(
                "fetching pages",
                self.config.request_timeout * 5 + crate::retry::MAX_RATE_LIMIT_WAIT + BEAT_SLACK,
            );
            let arrival = tokio::select! {
                arrival = pager.next() => arrival,
                () = shutdown.cancelled() => break,
            };
            let delay = match arrival {
                Some(Arrival::Page { offset }) => {
                    tracing::trace!(source = %id, offset, cursor = window.offset, "page arrived");
                    backoff.reset();
                    None
                }
                None => None,
                Some(Arrival::Failed {
                    offset,
                    error,
                    fresh: false,
                }) => {
                    // A request sent before the failure just waited for:
                    // the same trouble. Counted; asked again at once.
                    self.ctx.metrics.error(error.class());
                    tracing::debug!(source = %id, offset, error = %error, "a page requested before the last failure failed too; asking again");
                    None
                }
                Some(Arrival::Failed {
                    error, fresh: true, ..
                }) => {
                    // The API refuses this window (a 400): compute it anew
                    // next time rather than repeat it forever.
                    if matches!(error, SourceError::Rejected { .. }) {
                        progress.window = None;
                        pager.clear();
                    }
                    pager.failure_handled();
                    Some(self.on_error(error, &mut backoff))
                }
            };
            if let Some(delay) = delay {
                health.beat("waiting after a failure", delay + BEAT_SLACK);
                if !sleep_or_cancel(delay, &shutdown).await {
                    break;
                }
            }
        }
        if let Some(keepalive) = keepalive {
            keepalive.abort();
        }
        tracing::info!(source = %id, "anaplan source stopped");
        Ok(())
    }

    fn stored_progress(&self, cursor: &SourceCursor) -> Progress {
        cursor
            .position
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default()
    }

    /// The stored cursor, or a first-run one (stored at once).
    async fn load_cursor(&self) -> Result<(SourceCursor, Progress), StateError> {
        let id = self.config.id.clone();
        let hash = filters_hash(&self.config);
        let stored = self.ctx.state.call(move |db| db.cursor(&id)).await?;
        let now = Utc::now().timestamp_millis();
        let cursor = match stored {
            Some(cursor) if cursor.filters_hash == hash => {
                let progress = self.stored_progress(&cursor);
                return Ok((cursor, progress));
            }
            Some(mut cursor) => {
                // A different `type`: the window in hand was for the old
                // filter; the new one reads from the same high-water mark.
                tracing::warn!(source = %self.config.id, "event_type changed; reading again from the newest stored event minus the overlap");
                cursor.filters_hash = hash;
                let mut progress = self.stored_progress(&cursor);
                progress.window = None;
                cursor.position = serde_json::to_string(&progress).ok();
                cursor
            }
            None => {
                let wanted = match self.config.start_at {
                    StartAt::At(at) => at.timestamp_millis(),
                    StartAt::Lookback(back) => {
                        now.saturating_sub(i64::try_from(back.as_millis()).unwrap_or(i64::MAX))
                    }
                };
                let floor = retention_floor(now);
                let start = if wanted < floor {
                    self.ctx.metrics.retention_gaps.inc();
                    tracing::warn!(
                        source = %self.config.id,
                        wanted = %format_time(wanted),
                        earliest = %format_time(floor),
                        "start point is beyond anaplan's 30-day retention; events before the earliest time are gone"
                    );
                    floor
                } else {
                    wanted
                };
                tracing::info!(source = %self.config.id, start_at = %format_time(start), "first run");
                SourceCursor {
                    position: serde_json::to_string(&Progress::default()).ok(),
                    filters_hash: hash,
                    stream_start: Some(start),
                    last_event_time: None,
                    last_event_id: None,
                }
            }
        };
        let id = self.config.id.clone();
        let to_store = cursor.clone();
        self.ctx
            .state
            .call(move |db| db.set_cursor(&id, "anaplan", &to_store))
            .await?;
        let progress = self.stored_progress(&cursor);
        Ok((cursor, progress))
    }

    /// The next window: from the newest stored event minus the overlap (or
    /// the first-run start) to now, within retention. A point read through
    /// that is older than retention is a gap, emitted as a marker.
    async fn next_window(
        &self,
        cursor: &mut SourceCursor,
        progress: &mut Progress,
    ) -> Result<WindowProgress, StateError> {
        let now = Utc::now().timestamp_millis();
        let floor = retention_floor(now);
        let overlap = i64::try_from(self.config.overlap.as_millis()).unwrap_or(0);
        let start = cursor.stream_start.unwrap_or(floor);
        let base = cursor
            .last_event_time
            .map_or(start, |hwm| hwm.saturating_sub(overlap));
        let read_through = progress.read_to.unwrap_or(start);
        // A minute of tolerance: the floor moves with the clock.
        if read_through < floor - 60_000 {
            self.emit_gap(cursor, progress, read_through, floor).await?;
        }
        Ok(WindowProgress {
            from: base.max(floor),
            to: now.max(base.max(floor)),
            offset: 0,
            first_total: None,
            total_changed: false,
            received: 0,
            pass: 1,
        })
    }

    async fn emit_gap(
        &self,
        cursor: &mut SourceCursor,
        progress: &mut Progress,
        from: i64,
        to: i64,
    ) -> Result<(), StateError> {
        self.ctx.metrics.retention_gaps.inc();
        tracing::error!(
            source = %self.config.id,
            from = %format_time(from),
            to = %format_time(to),
            "the source fell behind anaplan's 30-day retention; events in this span are lost upstream (a gap marker event is sent)"
        );
        let marker = event::gap_marker(
            Origin {
                source_id: &self.config.id,
            },
            from,
            to,
            &format_time(Utc::now().timestamp_millis()),
        );
        progress.read_to = Some(to);
        let mut next = cursor.clone();
        next.position = serde_json::to_string(&*progress).ok();
        let id = self.config.id.clone();
        let commit = next.clone();
        self.ctx
            .state
            .call(move |db| db.commit_page(&id, "anaplan", &[marker], &[], &commit))
            .await?;
        *cursor = next;
        self.ctx.notify_stored();
        Ok(())
    }

    /// Stores a page with the progress it makes. Returns whether the next
    /// page (or the next pass) follows at once.
    async fn store_page(
        &self,
        cursor: &mut SourceCursor,
        progress: &mut Progress,
        mut window: WindowProgress,
        page: Page,
    ) -> Result<bool, StateError> {
        let observed_at = format_time(Utc::now().timestamp_millis());
        let origin = Origin {
            source_id: &self.config.id,
        };
        let count = page.records.len() as u64;
        let users = self.resolve_users(&page).await;
        self.ctx.health.beat("committing a page", COMMIT_BOUND);
        let mut events: Vec<NewEvent> = Vec::with_capacity(page.records.len());
        let mut quarantined = Vec::new();
        for (index, raw) in page.records.iter().enumerate() {
            match event::to_outbox(raw, origin, &observed_at, users.as_ref()) {
                Ok(parsed) => events.push(parsed.event),
                Err(reason) => {
                    tracing::warn!(source = %self.config.id, record = index, reason = %reason, "quarantined a record");
                    quarantined.push(Quarantined {
                        reason: format!(
                            "record {index} of the page at offset {} of window {}..{}: {reason}",
                            window.offset,
                            format_time(window.from),
                            format_time(window.to)
                        ),
                        raw: raw.get().to_string(),
                    });
                }
            }
        }
        window.offset += count;
        window.received += count;
        // With paging data, a pass ends at `totalSize` (a short page from a
        // server that caps `limit` is not the end) or on an empty page.
        // Without it (small results), a page shorter than asked is the end.
        let end_of_pass = match page.total {
            Some(total) => count == 0 || window.offset >= total,
            None => count < u64::from(self.client.page_size()),
        };
        if window.first_total.is_none() {
            window.first_total = page.total;
        }
        if let (Some(first), Some(total)) = (window.first_total, page.total) {
            window.total_changed |= first != total;
        }
        let total = page.total.unwrap_or(window.offset);
        let mut more = !end_of_pass;
        if end_of_pass {
            // Stable: every page of the pass told the same `totalSize`, and
            // that many records were received (nothing shifted). Comparing
            // only the first and the last page is not enough once pages are
            // requested together: the last page may have been answered
            // before an insert that a middle page saw, and the records that
            // insert pushed past the middle page would be missed. Without
            // paging data there is nothing to compare.
            let stable = !window.total_changed
                && match (window.first_total, page.total) {
                    (Some(first), Some(last)) => first == last && window.received == last,
                    _ => true,
                };
            if !stable && window.pass >= MAX_PASSES {
                tracing::warn!(
                    source = %self.config.id,
                    passes = window.pass,
                    first_total = window.first_total,
                    total,
                    total_changed = window.total_changed,
                    received = window.received,
                    "the window kept changing while it was read; accepting it (the next poll's overlap reads again from the newest event)"
                );
                self.ctx.metrics.error("unstable_window");
            }
            if !stable && window.pass < MAX_PASSES {
                tracing::debug!(
                    source = %self.config.id,
                    pass = window.pass,
                    first_total = window.first_total,
                    total,
                    total_changed = window.total_changed,
                    received = window.received,
                    "the window changed while it was read; reading it again"
                );
                window = WindowProgress {
                    offset: 0,
                    first_total: None,
                    total_changed: false,
                    received: 0,
                    pass: window.pass + 1,
                    ..window
                };
                progress.window = Some(window);
                more = true;
            } else {
                progress.read_to = Some(window.to);
                progress.window = None;
            }
        } else {
            progress.window = Some(window);
        }
        let mut next = cursor.clone();
        if let Some(newest) = events.iter().max_by_key(|e| e.event_time) {
            // An event dated past the window (a server quirk) must not move
            // the next window beyond events never read.
            let newest_time = newest.event_time.min(window.to);
            if next.last_event_time.is_none_or(|t| newest_time >= t) {
                next.last_event_time = Some(newest_time);
                next.last_event_id = Some(newest.event_id.clone());
            }
        }
        next.position = serde_json::to_string(&*progress).ok();
        self.ctx
            .commit_page(
                &self.config.id,
                "anaplan",
                (events, quarantined),
                next.clone(),
            )
            .await?;
        *cursor = next;
        Ok(more)
    }

    /// Resolves the users a page names, within the enricher's bound;
    /// `None` when enrichment is off.
    async fn resolve_users(&self, page: &Page) -> Option<Users> {
        let enricher = self.enricher.as_ref()?;
        let named: Vec<String> = page
            .records
            .iter()
            .flat_map(|raw| event::named_users(raw))
            .collect();
        if named.is_empty() {
            return Some(Users::new());
        }
        let ids: Vec<&str> = named.iter().map(String::as_str).collect();
        self.ctx
            .health
            .beat("enriching a page", enricher.config().bound + BEAT_SLACK);
        Some(enricher.resolve(&ids).await)
    }

    /// What an API error means and how long to wait.
    fn on_error(&self, error: SourceError, backoff: &mut Backoff) -> Duration {
        let id = &self.config.id;
        let metrics = &self.ctx.metrics;
        metrics.error(error.class());
        self.ctx.health.failed(&error.to_string());
        match error {
            SourceError::RateLimited { retry_after } => {
                let wait = crate::retry::rate_limit_wait(retry_after, backoff.next_delay());
                // User lookups share the budget: they wait too.
                self.client.budget().penalize(wait);
                metrics.rate_limit_waits.inc();
                metrics.rate_limit_wait_seconds.inc_by(wait.as_secs_f64());
                tracing::warn!(source = %id, wait_ms = wait.as_millis() as u64, "rate limited by anaplan");
                wait
            }
            SourceError::Transient(message) => {
                let wait = backoff.next_delay();
                tracing::warn!(source = %id, error = %message, attempt = backoff.failures(), retry_in_ms = wait.as_millis() as u64, "request failed; retrying the same page");
                wait
            }
            SourceError::Unauthorized { status, message } if message.contains(ROLE_MISSING) => {
                tracing::error!(
                    source = %id,
                    status,
                    error = %message,
                    retry_in_s = self.config.slow_retry_interval.as_secs(),
                    "anaplan refuses the audit log to this login: give it the Tenant Auditor role (and enable audit for the tenant)"
                );
                self.config.slow_retry_interval
            }
            SourceError::Unauthorized { status, message } => {
                tracing::error!(
                    source = %id,
                    status,
                    error = %message,
                    retry_in_s = self.config.slow_retry_interval.as_secs(),
                    "anaplan rejected the login: check the credentials"
                );
                self.config.slow_retry_interval
            }
            SourceError::CursorExpired { status, message }
            | SourceError::Rejected { status, message } => {
                tracing::error!(
                    source = %id,
                    status,
                    error = %message,
                    retry_in_s = self.config.slow_retry_interval.as_secs(),
                    "anaplan rejected the request"
                );
                self.config.slow_retry_interval
            }
        }
    }
}

/// The earliest event time still worth asking for.
fn retention_floor(now_ms: i64) -> i64 {
    let keep = RETENTION.saturating_sub(RETENTION_SLACK);
    now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AnaplanCredentials;
    use crate::health::{Health, Role};
    use crate::metrics::SourceMetrics;
    use crate::retry::BackoffPolicy;
    use crate::state::SharedState;

    fn context(state: SharedState) -> SourceContext {
        SourceContext {
            state,
            stored: Arc::new(tokio::sync::watch::channel(0).0),
            shutdown: tokio_util::sync::CancellationToken::new(),
            max_outbox_events: Arc::new(std::sync::atomic::AtomicU64::new(1_000_000)),
            dedup_window: Duration::from_secs(86400),
            metrics: SourceMetrics::detached("ap", "anaplan"),
            health: Health::new().register(Role::Source, "ap", "anaplan", Duration::ZERO, vec![]),
            backfill: false,
        }
    }

    /// A fresh cursor and the first pass over the window [0, 10000].
    fn first_pass(source: &AnaplanSource) -> (SourceCursor, Progress, WindowProgress) {
        let cursor = SourceCursor {
            position: None,
            filters_hash: filters_hash(&source.config),
            stream_start: Some(0),
            last_event_time: None,
            last_event_id: None,
        };
        let window = WindowProgress {
            from: 0,
            to: 10_000,
            offset: 0,
            first_total: None,
            total_changed: false,
            received: 0,
            pass: 1,
        };
        (cursor, Progress::default(), window)
    }

    fn source(dir: &std::path::Path) -> AnaplanSource {
        let config = AnaplanConfig {
            credentials: AnaplanCredentials::Token(crate::secret::Secret::new("t0ken-value")),
            start_at: StartAt::Lookback(Duration::from_secs(3600)),
            poll_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            retry: BackoffPolicy::default(),
            requests_per_minute: 600,
            ..super::super::testing::config("http://127.0.0.1:9")
        };
        let state = SharedState::open(&dir.join("state.db")).unwrap();
        AnaplanSource::new(config, context(state)).unwrap()
    }

    #[tokio::test]
    async fn a_cursor_older_than_retention_emits_one_gap_marker() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let day = 86_400_000;
        let now = Utc::now().timestamp_millis();
        let mut cursor = SourceCursor {
            position: None,
            filters_hash: filters_hash(&source.config),
            stream_start: Some(now - 50 * day),
            last_event_time: Some(now - 40 * day),
            last_event_id: Some("1".into()),
        };
        let mut progress = Progress {
            read_to: Some(now - 40 * day),
            window: None,
        };
        let window = source
            .next_window(&mut cursor, &mut progress)
            .await
            .unwrap();
        let floor = retention_floor(now);
        assert!(
            (window.from - floor).abs() < 5_000,
            "window starts at the retention floor"
        );
        assert!(window.to >= now);
        assert_eq!(
            progress.read_to.map(|t| (t - floor).abs() < 5_000),
            Some(true)
        );
        assert_eq!(source.ctx.metrics.retention_gaps.get(), 1);
        let outbox = source
            .ctx
            .state
            .call(|db| db.read_outbox(0, 10))
            .await
            .unwrap();
        assert_eq!(outbox.len(), 1);
        let marker: serde_json::Value = serde_json::from_str(&outbox[0].payload).unwrap();
        assert_eq!(marker["type"], "auditrelay.gap");
        // The cursor moved past the gap: the next window reports none.
        let _ = source
            .next_window(&mut cursor, &mut progress)
            .await
            .unwrap();
        assert_eq!(source.ctx.metrics.retention_gaps.get(), 1);
    }

    #[tokio::test]
    async fn a_quiet_tenant_is_not_a_gap_and_the_window_follows_the_newest_event() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let day = 86_400_000;
        let now = Utc::now().timestamp_millis();
        let mut cursor = SourceCursor {
            position: None,
            filters_hash: filters_hash(&source.config),
            stream_start: Some(now - 35 * day),
            // Nothing happened for 3 days, but the source kept polling.
            last_event_time: Some(now - 3 * day),
            last_event_id: Some("1".into()),
        };
        let mut progress = Progress {
            read_to: Some(now - 60_000),
            window: None,
        };
        let window = source
            .next_window(&mut cursor, &mut progress)
            .await
            .unwrap();
        assert_eq!(
            window.from,
            now - 3 * day - 600_000,
            "newest event minus the overlap"
        );
        assert_eq!(source.ctx.metrics.retention_gaps.get(), 0);
    }

    fn page(ids: std::ops::Range<u64>, total: Option<u64>) -> Page {
        Page {
            records: ids
                .map(|id| {
                    serde_json::value::to_raw_value(&serde_json::json!({
                        "id": id,
                        "eventTypeId": "USR-8",
                        "userId": "INTERNAL_1",
                        "eventDate": 1_000 + id as i64,
                    }))
                    .unwrap()
                })
                .collect(),
            total,
        }
    }

    #[tokio::test]
    async fn a_quarantined_record_names_its_page_and_window() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let (mut cursor, mut progress, window) = first_pass(&source);
        source
            .store_page(&mut cursor, &mut progress, window, page(0..50, Some(100)))
            .await
            .unwrap();
        let mut second = page(50..100, Some(100));
        second.records[10] =
            serde_json::value::to_raw_value(&serde_json::json!({"id": 60, "eventDate": "soon"}))
                .unwrap();
        let window = progress.window.unwrap();
        source
            .store_page(&mut cursor, &mut progress, window, second)
            .await
            .unwrap();
        let reason: String = rusqlite::Connection::open(dir.path().join("state.db"))
            .unwrap()
            .query_row("SELECT reason FROM quarantine", [], |row| row.get(0))
            .unwrap();
        assert!(
            reason.starts_with(
                "record 10 of the page at offset 50 of window \
                 1970-01-01T00:00:00.000Z..1970-01-01T00:00:10.000Z: "
            ),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_short_page_is_not_the_end_when_the_total_says_more() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let (mut cursor, mut progress, window) = first_pass(&source);
        // The server caps pages at 50 though 100 were asked for.
        let more = source
            .store_page(&mut cursor, &mut progress, window, page(0..50, Some(120)))
            .await
            .unwrap();
        assert!(more, "a capped page ended the pass");
        let window = progress.window.unwrap();
        assert_eq!(window.offset, 50);
        let more = source
            .store_page(&mut cursor, &mut progress, window, page(50..120, Some(120)))
            .await
            .unwrap();
        assert!(!more);
        assert!(
            progress.window.is_none(),
            "a stable pass completes the window"
        );
        assert_eq!(progress.read_to, Some(10_000));
        assert_eq!(cursor.last_event_time, Some(1_119));
    }

    #[tokio::test]
    async fn a_window_that_grew_while_read_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let (mut cursor, mut progress, window) = first_pass(&source);
        source
            .store_page(&mut cursor, &mut progress, window, page(0..100, Some(150)))
            .await
            .unwrap();
        // Five events were inserted before offset 100: the total grew.
        let window = progress.window.unwrap();
        let more = source
            .store_page(&mut cursor, &mut progress, window, page(95..155, Some(155)))
            .await
            .unwrap();
        assert!(more);
        let window = progress.window.unwrap();
        assert_eq!((window.pass, window.offset, window.received), (2, 0, 0));
        // An event dated past the window does not move the high-water mark
        // beyond the window.
        let mut late = page(200..201, Some(1));
        late.records[0] = serde_json::value::to_raw_value(
            &serde_json::json!({"id": 200, "eventDate": 99_999_999}),
        )
        .unwrap();
        source
            .store_page(&mut cursor, &mut progress, window, late)
            .await
            .unwrap();
        assert_eq!(cursor.last_event_time, Some(10_000));
    }

    #[tokio::test]
    async fn a_window_that_slid_out_of_retention_is_a_gap_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let day = 86_400_000;
        let now = Utc::now().timestamp_millis();
        // A first-run window begun 40 days ago, never finished.
        let mut cursor = SourceCursor {
            position: None,
            filters_hash: filters_hash(&source.config),
            stream_start: Some(now - 47 * day),
            last_event_time: None,
            last_event_id: None,
        };
        let mut progress = Progress {
            read_to: None,
            window: None,
        };
        source
            .next_window(&mut cursor, &mut progress)
            .await
            .unwrap();
        let outbox = source
            .ctx
            .state
            .call(|db| db.read_outbox(0, 10))
            .await
            .unwrap();
        let marker: serde_json::Value = serde_json::from_str(&outbox[0].payload).unwrap();
        assert_eq!(marker["gap"]["from"], format_time(now - 47 * day));
    }

    #[tokio::test]
    async fn a_pass_whose_middle_page_saw_another_total_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let (mut cursor, mut progress, window) = first_pass(&source);
        // Pages requested together: the middle one was answered after an
        // event was inserted before it (301), the last one before (300).
        // First and last agree and 300 records arrived, yet the record the
        // insert pushed from the middle page into the last one was missed.
        source
            .store_page(&mut cursor, &mut progress, window, page(0..100, Some(300)))
            .await
            .unwrap();
        let window = progress.window.unwrap();
        source
            .store_page(&mut cursor, &mut progress, window, page(99..199, Some(301)))
            .await
            .unwrap();
        let window = progress.window.unwrap();
        assert!(window.total_changed);
        let more = source
            .store_page(
                &mut cursor,
                &mut progress,
                window,
                page(200..300, Some(300)),
            )
            .await
            .unwrap();
        assert!(more);
        let window = progress.window.unwrap();
        assert_eq!(
            (window.pass, window.offset, window.total_changed),
            (2, 0, false),
            "the window is read again"
        );
        assert_eq!(progress.read_to, None);
    }

    #[test]
    fn a_position_stored_before_total_changed_existed_still_reads() {
        let stored = r#"{"read_to":5,"window":{"from":1,"to":9,"offset":200,"first_total":700,"received":200,"pass":2}}"#;
        let progress: Progress = serde_json::from_str(stored).unwrap();
        let window = progress.window.unwrap();
        assert_eq!((window.offset, window.pass), (200, 2));
        assert!(!window.total_changed);
    }

    /// A source reading `url` (the simulator) into `state`.
    fn sim_source(url: &str, state: &SharedState, parallel_pages: u32) -> Arc<AnaplanSource> {
        let config = AnaplanConfig {
            parallel_pages,
            // Once a window is read, no poll reads its overlap again
            // before the test stops the source.
            poll_interval: Duration::from_secs(600),
            ..super::super::testing::config(url)
        };
        Arc::new(AnaplanSource::new(config, context(state.clone())).unwrap())
    }

    /// Runs `source` until the outbox holds `until` events, then stops it.
    async fn run_until(source: &Arc<AnaplanSource>, state: &SharedState, until: i64) {
        let task = tokio::spawn({
            let source = Arc::clone(source);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parallel_backfill_stops_and_resumes_without_repeats_or_gaps() {
        use crate::simulator::anaplan::{AnaplanFaults, AnaplanSimConfig};
        const EVENTS: u64 = 2_050;
        let (sim, url, stop) = super::super::testing::serve(AnaplanSimConfig {
            backlog: EVENTS,
            rate: 0.0,
            max_live: Some(0),
            late_share: 0.0,
            epoch: Utc::now() - chrono::Duration::minutes(20),
            // Requests take a while, so a stop finds pages running ahead.
            faults: AnaplanFaults {
                latency: Duration::from_millis(20),
                ..AnaplanFaults::default()
            },
            ..AnaplanSimConfig::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::open(&dir.path().join("state.db")).unwrap();

        let first = sim_source(&url, &state, 4);
        run_until(&first, &state, 700).await;
        let stored = state.call(|db| db.outbox_depth()).await.unwrap() as u64;
        assert!(stored < EVENTS, "the first run read everything: {stored}");
        assert!(
            sim.max_concurrent_event_requests() > 1,
            "the pages were not requested together"
        );
        // The stored cursor is the first offset not committed; what was
        // fetched ahead of it is gone with the first run.
        let cursor = state.call(|db| db.cursor("ap")).await.unwrap().unwrap();
        let progress: Progress = serde_json::from_str(cursor.position.as_deref().unwrap()).unwrap();
        assert_eq!(progress.window.map(|w| w.offset), Some(stored));

        let second = sim_source(&url, &state, 4);
        run_until(&second, &state, EVENTS as i64).await;
        // The second run started exactly after the last committed page: it
        // received each remaining event once and none of the first run's.
        assert_eq!(second.ctx.metrics.received.get(), EVENTS - stored);
        assert_eq!(second.ctx.metrics.duplicates.get(), 0);
        // Committed strictly in offset order: the outbox is in API order.
        let ids: Vec<u64> = state
            .call(|db| db.read_outbox(0, usize::MAX))
            .await
            .unwrap()
            .into_iter()
            .map(|record| record.event_id.parse().unwrap())
            .collect();
        assert_eq!(ids, sim.visible_ids());
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_while_pages_run_ahead_loses_nothing_and_keeps_the_order() {
        use crate::simulator::anaplan::{AnaplanFaults, AnaplanSimConfig};
        const EVENTS: usize = 1_000;
        let (sim, url, stop) = super::super::testing::serve(AnaplanSimConfig {
            backlog: EVENTS as u64,
            rate: 0.0,
            max_live: Some(0),
            late_share: 0.0,
            epoch: Utc::now() - chrono::Duration::minutes(20),
            faults: AnaplanFaults {
                latency: Duration::from_millis(20),
                ..AnaplanFaults::default()
            },
            ..AnaplanSimConfig::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let state = SharedState::open(&path).unwrap();
        // Storing the page at offset 300 fails (as a full disk would) until
        // the trigger is dropped; the pages after it are in flight by then.
        let failing = sim.visible_ids()[350];
        let other = rusqlite::Connection::open(&path).unwrap();
        other.busy_timeout(Duration::from_secs(10)).unwrap();
        other
            .execute_batch(&format!(
                "CREATE TRIGGER fail_page BEFORE INSERT ON seen WHEN NEW.event_id = '{failing}'
                 BEGIN SELECT RAISE(ABORT, 'injected'); END;"
            ))
            .unwrap();
        let source = sim_source(&url, &state, 4);
        let task = tokio::spawn({
            let source = Arc::clone(&source);
            async move { source.run().await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !source
            .ctx
            .health
            .record()
            .last_error
            .is_some_and(|e| e.contains("storing a page"))
        {
            assert!(tokio::time::Instant::now() < deadline, "no commit failed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state.call(|db| db.outbox_depth()).await.unwrap(), 300);
        other.execute_batch("DROP TRIGGER fail_page").unwrap();
        while state.call(|db| db.outbox_depth()).await.unwrap() < EVENTS as i64 {
            assert!(tokio::time::Instant::now() < deadline, "stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        source.ctx.shutdown.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(source.ctx.metrics.received.get(), EVENTS as u64);
        assert_eq!(source.ctx.metrics.duplicates.get(), 0);
        let ids: Vec<u64> = state
            .call(|db| db.read_outbox(0, usize::MAX))
            .await
            .unwrap()
            .into_iter()
            .map(|record| record.event_id.parse().unwrap())
            .collect();
        assert_eq!(ids, sim.visible_ids());
        stop.cancel();
    }
}
