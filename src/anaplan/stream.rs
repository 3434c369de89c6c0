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
//!   again until a pass sees the same `totalSize` from start to end and
//!   received as many records as that.
//! - Progress (window, offset, pass) is stored with every page, so a
//!   restart resumes mid-window.
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
    /// Records received in this pass.
    received: u64,
    pass: u32,
}

/// The filter the stored position belongs to.
fn filters_hash(config: &AnaplanConfig) -> String {
    format!("anaplan:type={}", config.event_type)
}

/// One Anaplan tenant's audit events, run as its own task.
#[derive(Debug)]
pub struct AnaplanSource {
    config: AnaplanConfig,
    client: AnaplanClient,
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
            client,
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
        let health = &self.ctx.health;
        tracing::info!(source = %id, resuming = cursor.last_event_time.is_some(), "anaplan source started");
        while !shutdown.is_cancelled() {
            if !self.ctx.wait_for_outbox_room(&self.config.id).await? {
                break;
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
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                self.ctx.prune(&self.config.id).await;
            }
            if !self.ctx.wait_for_budget(self.client.budget()).await {
                break;
            }
            // A fetch may log in (twice after a 401) and wait for the
            // budget if a user lookup met a 429 meanwhile.
            health.beat(
                "fetching a page",
                self.config.request_timeout * 5 + crate::retry::MAX_RATE_LIMIT_WAIT + BEAT_SLACK,
            );
            let fetched = tokio::select! {
                fetched = self.client.fetch(Window { from: window.from, to: window.to }, window.offset) => fetched,
                () = shutdown.cancelled() => break,
            };
            let delay = match fetched {
                Ok(page) => {
                    backoff.reset();
                    health.beat("committing a page", COMMIT_BOUND);
                    match self
                        .store_page(&mut cursor, &mut progress, window, page)
                        .await
                    {
                        Ok(more) => {
                            health.succeeded();
                            self.ctx
                                .metrics
                                .last_success
                                .set(crate::metrics::unix_seconds(Utc::now().timestamp_millis()));
                            if more {
                                None
                            } else {
                                health.caught_up();
                                Some(self.config.poll_interval)
                            }
                        }
                        Err(e) => {
                            self.ctx.metrics.error("state");
                            health.failed(&format!("storing a page: {e}"));
                            tracing::error!(source = %id, error = %e, "storing a page failed");
                            // Nothing moved: the same page is asked again.
                            progress = self.stored_progress(&cursor);
                            Some(backoff.next_delay())
                        }
                    }
                }
                Err(error) => {
                    // The API refuses this window (a 400): compute it anew
                    // next time rather than repeat it forever.
                    if matches!(error, SourceError::Rejected { .. }) {
                        progress.window = None;
                    }
                    Some(self.on_error(error, &mut backoff))
                }
            };
            if let Some(delay) = delay {
                health.beat("waiting for the next poll", delay + BEAT_SLACK);
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
                        reason: format!("record {index} of page: {reason}"),
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
        let total = page.total.unwrap_or(window.offset);
        let mut more = !end_of_pass;
        if end_of_pass {
            // Stable: the same `totalSize` at the start and the end of the
            // pass, and that many records received (nothing shifted).
            // Without paging data there is nothing to compare.
            let stable = match (window.first_total, page.total) {
                (Some(first), Some(last)) => first == last && window.received == last,
                _ => true,
            };
            if !stable && window.pass >= MAX_PASSES {
                tracing::warn!(
                    source = %self.config.id,
                    passes = window.pass,
                    first_total = window.first_total,
                    total,
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
                    received = window.received,
                    "the window changed while it was read; reading it again"
                );
                window = WindowProgress {
                    offset: 0,
                    first_total: None,
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

    fn source(dir: &std::path::Path) -> AnaplanSource {
        let config = AnaplanConfig {
            id: "ap".into(),
            auth_url: "http://127.0.0.1:9".into(),
            audit_url: "http://127.0.0.1:9/audit/api/1".into(),
            api_url: "http://127.0.0.1:9/2/0".into(),
            credentials: AnaplanCredentials::Token(crate::secret::Secret::new("t0ken-value")),
            event_type: "all".into(),
            page_size: 100,
            start_at: StartAt::Lookback(Duration::from_secs(3600)),
            poll_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            overlap: Duration::from_secs(600),
            retry: BackoffPolicy::default(),
            slow_retry_interval: Duration::from_secs(1),
            requests_per_minute: 600,
            enrich: crate::enrich::EnrichConfig {
                enabled: false,
                ..crate::enrich::EnrichConfig::default()
            },
        };
        let ctx = SourceContext {
            state: SharedState::open(&dir.join("state.db")).unwrap(),
            stored: Arc::new(tokio::sync::watch::channel(0).0),
            shutdown: tokio_util::sync::CancellationToken::new(),
            max_outbox_events: Arc::new(std::sync::atomic::AtomicU64::new(1000)),
            dedup_window: Duration::from_secs(86400),
            metrics: SourceMetrics::detached("ap", "anaplan"),
            health: Health::new().register(Role::Source, "ap", "anaplan", Duration::ZERO, vec![]),
        };
        AnaplanSource::new(config, ctx).unwrap()
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
    async fn a_short_page_is_not_the_end_when_the_total_says_more() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let mut cursor = SourceCursor {
            position: None,
            filters_hash: filters_hash(&source.config),
            stream_start: Some(0),
            last_event_time: None,
            last_event_id: None,
        };
        let mut progress = Progress::default();
        let window = WindowProgress {
            from: 0,
            to: 10_000,
            offset: 0,
            first_total: None,
            received: 0,
            pass: 1,
        };
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
        let mut cursor = SourceCursor {
            position: None,
            filters_hash: filters_hash(&source.config),
            stream_start: Some(0),
            last_event_time: None,
            last_event_id: None,
        };
        let mut progress = Progress::default();
        let window = WindowProgress {
            from: 0,
            to: 10_000,
            offset: 0,
            first_total: None,
            received: 0,
            pass: 1,
        };
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
}
