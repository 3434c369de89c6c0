//! The enricher against a scripted directory. Real time (not paused): the
//! state file runs on the blocking pool, which a paused clock would skip
//! past. Every wait is bounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant as StdInstant;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Down,
    RateLimited(u64),
}

/// Users `u1`..`u9` exist (`User N`, `uN@example.com`), anything else is
/// 404; `listed` users are in the full list when `lists` is set.
#[derive(Debug)]
struct Fake {
    delay: Duration,
    mode: Mutex<Mode>,
    lists: bool,
    listed: Vec<&'static str>,
    calls: AtomicUsize,
    list_calls: AtomicUsize,
    /// Lookups dropped before they finished (cancelled).
    abandoned: Arc<AtomicUsize>,
    asked: Mutex<Vec<String>>,
}

impl Fake {
    fn new() -> Self {
        Self {
            delay: Duration::ZERO,
            mode: Mutex::new(Mode::Up),
            lists: false,
            listed: Vec::new(),
            calls: AtomicUsize::new(0),
            list_calls: AtomicUsize::new(0),
            abandoned: Arc::new(AtomicUsize::new(0)),
            asked: Mutex::new(Vec::new()),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set(&self, mode: Mode) {
        *lock(&self.mode) = mode;
    }
}

fn info(id: &str) -> UserInfo {
    UserInfo {
        name: Some(format!("User {id}")),
        email: Some(format!("{id}@example.com")),
    }
}

/// Counts itself as abandoned unless disarmed.
struct Abandon(Arc<AtomicUsize>, bool);

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn failure(mode: Mode) -> Option<SourceError> {
    match mode {
        Mode::Up => None,
        Mode::Down => Some(SourceError::Transient("HTTP 503: down".into())),
        Mode::RateLimited(secs) => Some(SourceError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
        }),
    }
}

#[async_trait]
impl UserDirectory for Fake {
    async fn user(&self, id: &str) -> Result<Option<UserInfo>, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        lock(&self.asked).push(id.to_string());
        let mut guard = Abandon(Arc::clone(&self.abandoned), true);
        tokio::time::sleep(self.delay).await;
        guard.1 = false;
        if let Some(error) = failure(*lock(&self.mode)) {
            return Err(error);
        }
        let exists = id.len() == 2 && id.starts_with('u') && id != "u0";
        Ok(exists.then(|| info(id)))
    }

    async fn all_users(&self) -> Option<Result<Vec<(String, UserInfo)>, SourceError>> {
        if !self.lists {
            return None;
        }
        self.list_calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if let Some(error) = failure(*lock(&self.mode)) {
            return Some(Err(error));
        }
        Some(Ok(self
            .listed
            .iter()
            .map(|id| (id.to_string(), info(id)))
            .collect()))
    }

    fn is_never_a_user(&self, id: &str) -> bool {
        id.starts_with("INTERNAL_")
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    fake: Arc<Fake>,
    metrics: SourceMetrics,
    budget: Arc<RateBudget>,
    enricher: Enricher,
}

fn config() -> EnrichConfig {
    EnrichConfig {
        bound: Duration::from_secs(5),
        ..EnrichConfig::default()
    }
}

fn setup(fake: Fake, config: EnrichConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let state = SharedState::open(&path).unwrap();
    let fake = Arc::new(fake);
    let metrics = SourceMetrics::detached("src", "test");
    let budget = Arc::new(RateBudget::per_minute(6000));
    let enricher = Enricher::new(
        config,
        state,
        "src",
        metrics.clone(),
        Arc::clone(&budget),
        Arc::clone(&fake) as Arc<dyn UserDirectory>,
    );
    Setup {
        _dir: dir,
        path,
        fake,
        metrics,
        budget,
        enricher,
    }
}

fn found(id: &str) -> Resolution {
    Resolution::Found(info(id))
}

#[tokio::test]
async fn concurrent_resolves_of_one_user_make_one_request() {
    let s = setup(
        Fake {
            delay: Duration::from_millis(100),
            ..Fake::new()
        },
        config(),
    );
    let resolves = (0..20).map(|_| s.enricher.resolve(&["u1", "u1"]));
    for answer in futures::future::join_all(resolves).await {
        assert_eq!(answer.len(), 1);
        assert_eq!(answer["u1"], found("u1"));
    }
    assert_eq!(s.fake.calls(), 1, "{:?}", lock(&s.fake.asked));
    // Every caller missed the cache; none found it there.
    assert_eq!(s.metrics.cache_misses.get(), 20);
    assert_eq!(s.metrics.cache_hits.get(), 0);
    s.enricher.resolve(&["u1"]).await;
    assert_eq!(s.metrics.cache_hits.get(), 1);
    assert_eq!(s.fake.calls(), 1);
}

#[tokio::test]
async fn found_users_are_fetched_again_once_after_the_ttl() {
    let s = setup(Fake::new(), config());
    assert_eq!(s.enricher.resolve(&["u1"]).await["u1"], found("u1"));
    s.enricher.advance(Duration::from_secs(23 * 3600));
    assert_eq!(s.enricher.resolve(&["u1"]).await["u1"], found("u1"));
    assert_eq!(s.fake.calls(), 1, "still fresh after 23h");
    s.enricher.advance(Duration::from_secs(3600));
    for _ in 0..3 {
        assert_eq!(s.enricher.resolve(&["u1"]).await["u1"], found("u1"));
    }
    assert_eq!(s.fake.calls(), 2, "one refetch after the 24h ttl");
}

#[tokio::test]
async fn unknown_users_are_cached_until_the_negative_ttl() {
    let s = setup(Fake::new(), config());
    for _ in 0..3 {
        let answer = s.enricher.resolve(&["gone", "u2"]).await;
        assert_eq!(answer["gone"], Resolution::Unknown);
        assert_eq!(answer["u2"], found("u2"));
    }
    assert_eq!(s.fake.calls(), 2);
    s.enricher.advance(Duration::from_secs(59 * 60));
    assert_eq!(
        s.enricher.resolve(&["gone"]).await["gone"],
        Resolution::Unknown
    );
    assert_eq!(s.fake.calls(), 2, "remembered for the negative ttl");
    s.enricher.advance(Duration::from_secs(2 * 60));
    assert_eq!(
        s.enricher.resolve(&["gone", "u2"]).await["gone"],
        Resolution::Unknown
    );
    assert_eq!(
        lock(&s.fake.asked).as_slice(),
        ["gone", "u2", "gone"].map(String::from),
        "asked again after 1h; the found user is still fresh"
    );
}

#[tokio::test]
async fn ids_that_are_never_users_need_no_lookup() {
    let s = setup(Fake::new(), config());
    let answer = s.enricher.resolve(&["INTERNAL_7"]).await;
    assert_eq!(answer["INTERNAL_7"], Resolution::Unknown);
    assert_eq!(s.fake.calls(), 0);
    assert_eq!(s.metrics.cache_misses.get(), 0);
}

#[tokio::test]
async fn a_slow_lookup_is_unavailable_within_the_bound_and_cached_later() {
    let s = setup(
        Fake {
            delay: Duration::from_millis(600),
            ..Fake::new()
        },
        EnrichConfig {
            bound: Duration::from_millis(100),
            ..EnrichConfig::default()
        },
    );
    let started = StdInstant::now();
    let answer = s.enricher.resolve(&["u1", "u2"]).await;
    let elapsed = started.elapsed();
    assert_eq!(answer["u1"], Resolution::Unavailable);
    assert_eq!(answer["u2"], Resolution::Unavailable);
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(450),
        "{elapsed:?}"
    );
    // The lookups went on in the background.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let started = StdInstant::now();
    let answer = s.enricher.resolve(&["u1", "u2"]).await;
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(answer["u1"], found("u1"));
    assert_eq!(answer["u2"], found("u2"));
    assert_eq!(s.fake.calls(), 2);
    assert_eq!(s.fake.abandoned.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dropping_the_enricher_cancels_its_background_lookups() {
    let s = setup(
        Fake {
            delay: Duration::from_secs(30),
            ..Fake::new()
        },
        EnrichConfig {
            bound: Duration::from_millis(50),
            ..EnrichConfig::default()
        },
    );
    let answer = s.enricher.resolve(&["u1", "u2", "u3"]).await;
    assert!(answer.values().all(|r| *r == Resolution::Unavailable));
    let abandoned = Arc::clone(&s.fake.abandoned);
    drop(s.enricher);
    let started = StdInstant::now();
    while abandoned.load(Ordering::SeqCst) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "lookups still running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // At most MAX_CONCURRENT_LOOKUPS were ever asked.
    assert!(s.fake.calls() <= MAX_CONCURRENT_LOOKUPS);
}

#[tokio::test]
async fn lookups_run_at_most_four_at_a_time() {
    let s = setup(
        Fake {
            delay: Duration::from_millis(200),
            ..Fake::new()
        },
        EnrichConfig {
            bound: Duration::from_millis(300),
            ..EnrichConfig::default()
        },
    );
    let ids = ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"];
    let answer = s.enricher.resolve(&ids).await;
    let found_now = answer
        .values()
        .filter(|r| matches!(r, Resolution::Found(_)))
        .count();
    assert_eq!(found_now, 4, "{answer:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = s.enricher.resolve(&ids).await;
    assert!(answer.values().all(|r| matches!(r, Resolution::Found(_))));
    assert_eq!(s.fake.calls(), 8);
}

#[tokio::test]
async fn the_cache_survives_a_restart() {
    let s = setup(Fake::new(), config());
    s.enricher.resolve(&["u1", "gone"]).await;
    assert_eq!(s.fake.calls(), 2);
    drop(s.enricher);

    let fresh = Arc::new(Fake::new());
    let enricher = Enricher::new(
        config(),
        SharedState::open(&s.path).unwrap(),
        "src",
        SourceMetrics::detached("src", "test"),
        Arc::new(RateBudget::per_minute(60)),
        Arc::clone(&fresh) as Arc<dyn UserDirectory>,
    );
    let answer = enricher.resolve(&["u1", "gone"]).await;
    assert_eq!(answer["u1"], found("u1"));
    assert_eq!(answer["gone"], Resolution::Unknown);
    assert_eq!(fresh.calls(), 0, "answered from the state file");
    // Another source's cache is its own.
    let other = Enricher::new(
        config(),
        SharedState::open(&s.path).unwrap(),
        "other",
        SourceMetrics::detached("other", "test"),
        Arc::new(RateBudget::per_minute(60)),
        Arc::clone(&fresh) as Arc<dyn UserDirectory>,
    );
    other.resolve(&["u1"]).await;
    assert_eq!(fresh.calls(), 1);
}

#[tokio::test]
async fn a_failing_directory_is_left_alone_until_its_backoff_passes() {
    let s = setup(Fake::new(), config());
    s.fake.set(Mode::Down);
    assert_eq!(
        s.enricher.resolve(&["u1"]).await["u1"],
        Resolution::Unavailable
    );
    assert_eq!(s.fake.calls(), 1);
    // Open breaker: misses answer at once, without requests.
    let started = StdInstant::now();
    let answer = s.enricher.resolve(&["u1", "u2", "u3"]).await;
    assert!(started.elapsed() < Duration::from_millis(200));
    assert!(answer.values().all(|r| *r == Resolution::Unavailable));
    assert_eq!(s.fake.calls(), 1);
    // Back up: once the first backoff (1-2s) passed, lookups resume.
    s.fake.set(Mode::Up);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(s.enricher.resolve(&["u1"]).await["u1"], found("u1"));
    assert_eq!(s.fake.calls(), 2);
}

#[tokio::test]
async fn a_429_penalizes_the_whole_budget_and_is_not_retried_at_once() {
    let s = setup(Fake::new(), config());
    s.fake.set(Mode::RateLimited(3));
    assert_eq!(
        s.enricher.resolve(&["u1"]).await["u1"],
        Resolution::Unavailable
    );
    let delay = s.budget.delay();
    assert!(
        delay > Duration::from_millis(2_800) && delay <= Duration::from_secs(4),
        "{delay:?}"
    );
    assert_eq!(s.metrics.rate_limit_waits.get(), 1);
    for _ in 0..5 {
        s.enricher.resolve(&["u1", "u2"]).await;
    }
    assert_eq!(s.fake.calls(), 1, "no hot loop");
}

#[tokio::test]
async fn a_full_list_is_walked_once_per_ttl_and_its_gaps_looked_up() {
    let s = setup(
        Fake {
            lists: true,
            listed: vec!["u1", "u2", "u3", "u4", "u5"],
            ..Fake::new()
        },
        config(),
    );
    let answer = s.enricher.resolve(&["u1", "u2", "u6", "gone"]).await;
    assert_eq!(answer["u1"], found("u1"));
    assert_eq!(answer["u6"], found("u6"), "missing from the list: asked");
    assert_eq!(answer["gone"], Resolution::Unknown);
    assert_eq!(s.fake.list_calls.load(Ordering::SeqCst), 1);
    let mut asked = lock(&s.fake.asked).clone();
    asked.sort();
    assert_eq!(asked, ["gone", "u6"]);
    // The rest of the list is cached.
    let answer = s.enricher.resolve(&["u3", "u4", "u5"]).await;
    assert!(answer.values().all(|r| matches!(r, Resolution::Found(_))));
    assert_eq!(s.fake.calls(), 2);
    assert_eq!(s.fake.list_calls.load(Ordering::SeqCst), 1);
    // After the ttl, one more walk refreshes them all.
    s.enricher.advance(Duration::from_secs(24 * 3600 + 1));
    s.enricher.resolve(&["u1", "u2", "u3"]).await;
    assert_eq!(s.fake.list_calls.load(Ordering::SeqCst), 2);
    assert_eq!(s.fake.calls(), 2);
}

#[tokio::test]
async fn a_list_the_api_cannot_serve_falls_back_to_single_lookups() {
    let s = setup(
        Fake {
            lists: true,
            listed: vec!["u1"],
            ..Fake::new()
        },
        config(),
    );
    s.fake.set(Mode::Down);
    assert_eq!(
        s.enricher.resolve(&["u1"]).await["u1"],
        Resolution::Unavailable
    );
    assert_eq!(s.fake.list_calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.fake.calls(), 0, "the breaker stopped the single lookup");
}
