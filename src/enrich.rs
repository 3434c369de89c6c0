//! User enrichment: the name and email of the users an event names, from
//! the source's user directory, cached in the state file.
//!
//! A source hands [`Enricher::resolve`] the user ids of a page before it
//! builds the page's envelopes. What it gets back is, per id, the user
//! ([`Resolution::Found`]), "the API has no such user"
//! ([`Resolution::Unknown`]) or "not known in time"
//! ([`Resolution::Unavailable`]). The rules:
//!
//! - **Cached.** An in-memory map sits in front of the `user_cache` table.
//!   Found users are kept for `ttl` (default 24h), unknown ids (404, deleted,
//!   `INTERNAL_*`) for `negative_ttl` (default 1h); then they are fetched
//!   again. The cache survives restarts.
//! - **One request per user.** Concurrent callers asking for the same id
//!   share one lookup. A directory with a full list (Anaplan `/users`) is
//!   walked once per `ttl`; ids the fresh list lacks are then looked up one
//!   by one (the list may lag).
//! - **Bounded.** `resolve` returns within `bound` (default 2s). A lookup
//!   still running then is reported `Unavailable` and keeps running in the
//!   background (at most [`MAX_CONCURRENT_LOOKUPS`] at a time, at most
//!   [`MAX_PENDING_LOOKUPS`] queued, all cancelled when the enricher is
//!   dropped), so the next page finds the user cached. Enrichment never
//!   holds a commit back longer than `bound`, and never blocks it on the
//!   users API.
//! - **Polite.** Each request takes a token from the source's
//!   [`RateBudget`] (the directory does that). A failed lookup opens a
//!   breaker: until its backoff (1s growing to 5 min) passes, misses are
//!   `Unavailable` at once instead of hammering an API that is down. A 429
//!   also penalizes the budget, so the audit stream waits too.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::budget::RateBudget;
use crate::metrics::SourceMetrics;
use crate::retry::{rate_limit_wait, Backoff, BackoffPolicy};
use crate::source::SourceError;
use crate::state::{CachedUser, CachedUserStatus, SharedState};

/// Lookups (or list walks) running at once per source.
pub const MAX_CONCURRENT_LOOKUPS: usize = 4;
/// Distinct users waiting for a lookup per source; beyond, a miss is
/// `Unavailable` without one (a later page asks again).
pub const MAX_PENDING_LOOKUPS: usize = 1_000;
/// Users kept in memory per source (the state file keeps them all).
const MAX_MEMORY_ENTRIES: usize = 100_000;
/// Pace of lookups after failures.
const BREAKER: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// How a source enriches events (`[sources.ID.enrich]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrichConfig {
    /// Look users up at all; off, events carry only what the API sent and
    /// no `enrichment` field.
    pub enabled: bool,
    /// How long a found user is used before it is fetched again.
    pub ttl: Duration,
    /// How long an unknown id (404, deleted) is remembered as unknown.
    pub negative_ttl: Duration,
    /// How long a page's commit may wait for lookups.
    pub bound: Duration,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(3600),
            bound: Duration::from_secs(2),
        }
    }
}

/// What the directory says about a user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// The outcome of resolving one user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The directory knows the user.
    Found(UserInfo),
    /// The directory has no such user: 404, deleted, or an id that is never
    /// a user (Anaplan `INTERNAL_*`).
    Unknown,
    /// The lookup failed or did not finish within the bound.
    Unavailable,
}

/// A source's user directory.
#[async_trait]
pub trait UserDirectory: Send + Sync + Debug {
    /// One user. `Ok(None)`: the API says there is no such user (404).
    /// Each request takes a token of the source's [`RateBudget`] first.
    async fn user(&self, id: &str) -> Result<Option<UserInfo>, SourceError>;

    /// Every user, when the API can list them (Anaplan `GET /2/0/users`,
    /// paged); `None`: not supported.
    async fn all_users(&self) -> Option<Result<Vec<(String, UserInfo)>, SourceError>> {
        None
    }

    /// Ids that are never users and need no lookup (Anaplan `INTERNAL_*`).
    fn is_never_a_user(&self, _id: &str) -> bool {
        false
    }
}

/// One source's enrichment. Dropping it cancels its background lookups.
pub struct Enricher {
    inner: Arc<Inner>,
    _stop: DropGuard,
}

type Lookup = Shared<BoxFuture<'static, Resolution>>;
type Walk = Shared<BoxFuture<'static, ()>>;

struct Inner {
    config: EnrichConfig,
    state: SharedState,
    source_id: String,
    metrics: SourceMetrics,
    budget: Arc<RateBudget>,
    directory: Arc<dyn UserDirectory>,
    /// Found and unknown users with their expiry (unix ms).
    memory: Mutex<HashMap<String, (Resolution, i64)>>,
    /// Lookups in flight, by user id.
    pending: Mutex<HashMap<String, Lookup>>,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
    list: Mutex<ListState>,
    stop: CancellationToken,
    /// Added to the wall clock (tests move time forward with it).
    clock_offset_ms: std::sync::atomic::AtomicI64,
}

#[derive(Debug)]
struct Breaker {
    backoff: Backoff,
    open_until: Option<Instant>,
}

struct ListState {
    /// Until the directory says it cannot list.
    supported: bool,
    /// When the last walk finished (unix ms).
    loaded_at: Option<i64>,
    walk: Option<Walk>,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("source_id", &self.inner.source_id)
            .field("config", &self.inner.config)
            .field("directory", &self.inner.directory)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Enricher {
    /// An enricher for one source. Lookups count against `budget` (the
    /// directory acquires it) and are counted in `metrics`.
    pub fn new(
        config: EnrichConfig,
        state: SharedState,
        source_id: &str,
        metrics: SourceMetrics,
        budget: Arc<RateBudget>,
        directory: Arc<dyn UserDirectory>,
    ) -> Self {
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            config,
            state,
            source_id: source_id.to_string(),
            metrics,
            budget,
            directory,
            memory: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            permits: Semaphore::new(MAX_CONCURRENT_LOOKUPS),
            breaker: Mutex::new(Breaker {
                backoff: Backoff::new(BREAKER),
                open_until: None,
            }),
            list: Mutex::new(ListState {
                supported: true,
                loaded_at: None,
                walk: None,
            }),
            stop: stop.clone(),
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
        });
        Self {
            inner,
            _stop: stop.drop_guard(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &EnrichConfig {
        &self.inner.config
    }

    /// Resolves `ids` within the bound: every id given is in the answer.
    pub async fn resolve(&self, ids: &[&str]) -> HashMap<String, Resolution> {
        let inner = &self.inner;
        let mut out: HashMap<String, Resolution> = HashMap::with_capacity(ids.len());
        let mut seen = HashSet::with_capacity(ids.len());
        let mut misses: Vec<String> = Vec::new();
        let now = inner.now_ms();
        let mut hits = 0u64;
        {
            let memory = lock(&inner.memory);
            for &id in ids {
                if !seen.insert(id) {
                    continue;
                }
                if inner.directory.is_never_a_user(id) {
                    out.insert(id.to_string(), Resolution::Unknown);
                    continue;
                }
                match memory.get(id) {
                    Some((resolution, expires)) if *expires > now => {
                        hits += 1;
                        out.insert(id.to_string(), resolution.clone());
                    }
                    _ => misses.push(id.to_string()),
                }
            }
        }
        if !misses.is_empty() {
            for (id, resolution) in inner.cached_in_state(&misses, now).await {
                hits += 1;
                out.insert(id, resolution);
            }
            misses.retain(|id| !out.contains_key(id));
        }
        inner.metrics.cache_hits.inc_by(hits);
        inner.metrics.cache_misses.inc_by(misses.len() as u64);
        if misses.is_empty() {
            return out;
        }

        let deadline = Instant::now() + inner.config.bound;
        let mut waiting = FuturesUnordered::new();
        for id in &misses {
            if let Some(lookup) = inner.lookup(id) {
                let id = id.clone();
                waiting.push(async move { (id, lookup.await) });
            }
        }
        while let Ok(Some((id, resolution))) =
            tokio::time::timeout_at(deadline, waiting.next()).await
        {
            out.insert(id, resolution);
        }
        let late = misses.iter().filter(|id| !out.contains_key(*id)).count();
        if late > 0 {
            tracing::debug!(source = %inner.source_id, users = late, "users not resolved within the bound; events go out not enriched");
        }
        for id in misses {
            out.entry(id).or_insert(Resolution::Unavailable);
        }
        out
    }

    /// Moves the enricher's clock forward (expiry tests).
    #[cfg(test)]
    fn advance(&self, by: Duration) {
        self.inner
            .clock_offset_ms
            .fetch_add(millis(by), std::sync::atomic::Ordering::Relaxed);
    }
}

impl Inner {
    fn now_ms(&self) -> i64 {
        crate::state::unix_ms_now().saturating_add(
            self.clock_offset_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Fresh rows of the state file for `ids`, remembered in memory. A
    /// state file error only costs lookups.
    async fn cached_in_state(&self, ids: &[String], now: i64) -> Vec<(String, Resolution)> {
        let source = self.source_id.clone();
        let wanted = ids.to_vec();
        let rows = match self
            .state
            .call(move |db| db.cached_users(&source, &wanted))
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(source = %self.source_id, error = %e, "reading the user cache failed; looking the users up");
                return Vec::new();
            }
        };
        let fresh: Vec<(String, Resolution, i64)> = rows
            .into_iter()
            .filter(|row| row.expires_at > now)
            .map(|row| {
                let resolution = match row.status {
                    CachedUserStatus::Found { name, email } => {
                        Resolution::Found(UserInfo { name, email })
                    }
                    CachedUserStatus::Unknown => Resolution::Unknown,
                };
                (row.user_id, resolution, row.expires_at)
            })
            .collect();
        let mut memory = lock(&self.memory);
        fresh
            .into_iter()
            .map(|(id, resolution, expires)| {
                insert_bounded(&mut memory, id.clone(), resolution.clone(), expires, now);
                (id, resolution)
            })
            .collect()
    }

    /// The lookup of `id`: the one in flight, or a new one. `None` while
    /// the breaker is open or too many lookups wait.
    fn lookup(self: &Arc<Self>, id: &str) -> Option<Lookup> {
        if self.breaker_open() {
            return None;
        }
        let mut pending = lock(&self.pending);
        if let Some(lookup) = pending.get(id) {
            return Some(lookup.clone());
        }
        if pending.len() >= MAX_PENDING_LOOKUPS {
            return None;
        }
        let inner = Arc::clone(self);
        let key = id.to_string();
        let task = tokio::spawn(async move {
            let resolution = inner.fetch(&key).await;
            // After the result is in memory: no moment where neither has it.
            lock(&inner.pending).remove(&key);
            resolution
        });
        let lookup = task
            .map(|joined| joined.unwrap_or(Resolution::Unavailable))
            .boxed()
            .shared();
        pending.insert(id.to_string(), lookup.clone());
        Some(lookup)
    }

    /// Asks the directory about one user (after a list walk, if one is due)
    /// and caches the answer.
    async fn fetch(self: &Arc<Self>, id: &str) -> Resolution {
        if let Some(walk) = self.list_walk() {
            tokio::select! {
                () = walk => {}
                () = self.stop.cancelled() => return Resolution::Unavailable,
            }
            let now = self.now_ms();
            if let Some((resolution, expires)) = lock(&self.memory).get(id) {
                if *expires > now {
                    return resolution.clone();
                }
            }
        }
        let _permit = tokio::select! {
            permit = self.permits.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => return Resolution::Unavailable,
            },
            () = self.stop.cancelled() => return Resolution::Unavailable,
        };
        // It may have opened while this lookup waited for a permit.
        if self.breaker_open() {
            return Resolution::Unavailable;
        }
        let answer = tokio::select! {
            answer = self.directory.user(id) => answer,
            () = self.stop.cancelled() => return Resolution::Unavailable,
        };
        match answer {
            Ok(Some(user)) => {
                self.succeeded();
                let found = Resolution::Found(user);
                self.remember(vec![(id.to_string(), found.clone())]).await;
                found
            }
            Ok(None) => {
                self.succeeded();
                tracing::debug!(source = %self.source_id, user = %id, "the api has no such user; remembered as unknown");
                self.remember(vec![(id.to_string(), Resolution::Unknown)])
                    .await;
                Resolution::Unknown
            }
            // The request itself is wrong for this id (a malformed id, say):
            // asking again would not help.
            Err(SourceError::Rejected { status, message }) => {
                self.succeeded();
                tracing::warn!(source = %self.source_id, user = %id, status, error = %message, "the users api rejected a lookup; remembered as unknown");
                self.remember(vec![(id.to_string(), Resolution::Unknown)])
                    .await;
                Resolution::Unknown
            }
            Err(error) => {
                self.failed(&error);
                Resolution::Unavailable
            }
        }
    }

    /// The list walk to wait for, if the directory lists users and its list
    /// is older than `ttl` (starting it if needed).
    fn list_walk(self: &Arc<Self>) -> Option<Walk> {
        let mut list = lock(&self.list);
        if !list.supported {
            return None;
        }
        if let Some(walk) = &list.walk {
            return Some(walk.clone());
        }
        let now = self.now_ms();
        let ttl = millis(self.config.ttl);
        if list.loaded_at.is_some_and(|at| at <= now && now - at < ttl) {
            return None;
        }
        if self.breaker_open() {
            return None;
        }
        let inner = Arc::clone(self);
        let task = tokio::spawn(async move {
            inner.walk().await;
            lock(&inner.list).walk = None;
        });
        let walk = task.map(|_| ()).boxed().shared();
        list.walk = Some(walk.clone());
        Some(walk)
    }

    /// One walk over the directory's full list.
    async fn walk(self: &Arc<Self>) {
        let _permit = tokio::select! {
            permit = self.permits.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = self.stop.cancelled() => return,
        };
        let answer = tokio::select! {
            answer = self.directory.all_users() => answer,
            () = self.stop.cancelled() => return,
        };
        match answer {
            None => lock(&self.list).supported = false,
            Some(Ok(users)) => {
                self.succeeded();
                let count = users.len();
                self.remember(
                    users
                        .into_iter()
                        .map(|(id, user)| (id, Resolution::Found(user)))
                        .collect(),
                )
                .await;
                lock(&self.list).loaded_at = Some(self.now_ms());
                tracing::info!(source = %self.source_id, users = count, "loaded the user list");
            }
            Some(Err(error)) => self.failed(&error),
        }
    }

    /// Caches answers: found users for `ttl`, unknown ones for
    /// `negative_ttl`, in memory and in the state file.
    async fn remember(&self, answers: Vec<(String, Resolution)>) {
        let now = self.now_ms();
        let mut rows = Vec::with_capacity(answers.len());
        {
            let mut memory = lock(&self.memory);
            for (id, resolution) in answers {
                let (status, ttl) = match &resolution {
                    Resolution::Found(user) => (
                        CachedUserStatus::Found {
                            name: user.name.clone(),
                            email: user.email.clone(),
                        },
                        self.config.ttl,
                    ),
                    Resolution::Unknown => (CachedUserStatus::Unknown, self.config.negative_ttl),
                    Resolution::Unavailable => continue,
                };
                let expires_at = now.saturating_add(millis(ttl));
                insert_bounded(&mut memory, id.clone(), resolution, expires_at, now);
                rows.push(CachedUser {
                    user_id: id,
                    status,
                    fetched_at: now,
                    expires_at,
                });
            }
        }
        let source = self.source_id.clone();
        if let Err(e) = self
            .state
            .call(move |db| db.cache_users(&source, &rows))
            .await
        {
            tracing::warn!(source = %self.source_id, error = %e, "storing looked-up users failed; they are kept in memory only");
        }
    }

    fn breaker_open(&self) -> bool {
        lock(&self.breaker)
            .open_until
            .is_some_and(|until| Instant::now() < until)
    }

    fn succeeded(&self) {
        lock(&self.breaker).backoff.reset();
    }

    /// A lookup failed: no new lookups until the breaker's backoff (or the
    /// API's `Retry-After`, which every request of the source obeys) passes.
    fn failed(&self, error: &SourceError) {
        let mut breaker = lock(&self.breaker);
        let ours = breaker.backoff.next_delay();
        let wait = match error {
            SourceError::RateLimited { retry_after } => {
                let wait = rate_limit_wait(*retry_after, ours);
                self.budget.penalize(wait);
                self.metrics.rate_limit_waits.inc();
                self.metrics
                    .rate_limit_wait_seconds
                    .inc_by(wait.as_secs_f64());
                wait
            }
            _ => ours,
        };
        let until = Instant::now() + wait;
        if breaker.open_until.is_none_or(|open| open < until) {
            breaker.open_until = Some(until);
        }
        tracing::warn!(
            source = %self.source_id,
            error = %error,
            class = error.class(),
            failures = breaker.backoff.failures(),
            retry_in_ms = wait.as_millis() as u64,
            "user lookup failed; events go out not enriched until lookups work again"
        );
    }
}

/// Inserts into the memory map, keeping it under [`MAX_MEMORY_ENTRIES`]:
/// expired entries go first, then everything (the state file still has it).
fn insert_bounded(
    memory: &mut HashMap<String, (Resolution, i64)>,
    id: String,
    resolution: Resolution,
    expires_at: i64,
    now: i64,
) {
    if memory.len() >= MAX_MEMORY_ENTRIES && !memory.contains_key(&id) {
        memory.retain(|_, (_, expires)| *expires > now);
        if memory.len() >= MAX_MEMORY_ENTRIES {
            memory.clear();
        }
    }
    memory.insert(id, (resolution, expires_at));
}

/// The users named in an event, the enricher's answers by id.
pub type Users = HashMap<String, Resolution>;

/// How enrichment went for an event naming `named` users: absent when
/// enrichment is off (`users` is `None`) or the event names nobody.
pub fn enrichment_of(users: Option<&Users>, named: &[&str]) -> Option<crate::envelope::Enrichment> {
    use crate::envelope::Enrichment;
    let users = users?;
    if named.is_empty() {
        return None;
    }
    let mut unknown = false;
    for id in named {
        match users.get(*id) {
            Some(Resolution::Found(_)) => {}
            Some(Resolution::Unknown) => unknown = true,
            Some(Resolution::Unavailable) | None => return Some(Enrichment::NotEnriched),
        }
    }
    Some(if unknown {
        Enrichment::UserUnknown
    } else {
        Enrichment::Enriched
    })
}

/// The directory's record of `id`, if it found one.
pub fn found<'u>(users: Option<&'u Users>, id: Option<&str>) -> Option<&'u UserInfo> {
    match users?.get(id?)? {
        Resolution::Found(user) => Some(user),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
