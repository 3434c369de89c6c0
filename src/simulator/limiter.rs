//! Per-token rate limiting as Asana describes it: a sliding 60-second window in which rejected
//! requests also count, plus a cap on in-flight requests. It also remembers, per token, until
//! when the client was told to stay away, so that clients ignoring `Retry-After` are caught.
//!
//! Types holding tokens deliberately do not implement `Debug`, so they cannot end up in logs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lock;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct TokenState {
    /// Arrival times of the newest requests in the window, oldest first. Only the newest
    /// `per_minute` are kept: that is all the decision and the wait computation need.
    window: VecDeque<Instant>,
    in_flight: u32,
    /// The client was told not to come back before this instant.
    not_before: Option<Instant>,
}

pub(crate) struct Limiter {
    per_minute: usize,
    max_concurrent: u32,
    tokens: Mutex<HashMap<String, TokenState>>,
    early_requests: AtomicU64,
    /// The most requests of one token that were in flight at once.
    peak_in_flight: AtomicU64,
}

/// Holds one in-flight slot of a token until dropped (also when the request is cancelled).
pub(crate) struct Permit {
    limiter: Arc<Limiter>,
    token: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(state) = lock(&self.limiter.tokens).get_mut(&self.token) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }
}

/// Whole seconds to advertise in `Retry-After`: rounded up, and at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl Limiter {
    pub(crate) fn new(per_minute: u32, max_concurrent: u32) -> Self {
        Self {
            per_minute: per_minute as usize,
            max_concurrent,
            tokens: Mutex::new(HashMap::new()),
            early_requests: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
        }
    }

    pub(crate) fn early_requests(&self) -> u64 {
        self.early_requests.load(Ordering::Relaxed)
    }

    /// The most requests of one token that were in flight at once.
    pub(crate) fn peak_in_flight(&self) -> u64 {
        self.peak_in_flight.load(Ordering::Relaxed)
    }

    /// Notes a request arriving at `now`; returns true (and counts it) if the token was told
    /// to wait until later.
    pub(crate) fn note_arrival(&self, token: &str, now: Instant) -> bool {
        let early = lock(&self.tokens)
            .get(token)
            .and_then(|state| state.not_before)
            .is_some_and(|not_before| now < not_before);
        if early {
            self.early_requests.fetch_add(1, Ordering::Relaxed);
        }
        early
    }

    /// Counts a request against the window; `Err(retry_after_secs)` if it is over the limit.
    /// The request counts even when rejected.
    pub(crate) fn admit(&self, token: &str, now: Instant) -> Result<(), u64> {
        let mut tokens = lock(&self.tokens);
        let state = tokens.entry(token.to_string()).or_default();
        while state
            .window
            .front()
            .is_some_and(|&oldest| now.saturating_duration_since(oldest) >= WINDOW)
        {
            state.window.pop_front();
        }
        state.window.push_back(now);
        if state.window.len() <= self.per_minute {
            return Ok(());
        }
        state.window.pop_front();
        // The next request fits once the oldest retained request leaves the window.
        let wait = match state.window.front() {
            Some(&oldest) => (oldest + WINDOW).saturating_duration_since(now),
            None => WINDOW, // a limit of 0 never admits anything
        };
        let secs = retry_after_secs(wait);
        Self::extend_not_before(state, now, secs);
        Err(secs)
    }

    /// Takes an in-flight slot, or `None` if the token is at its concurrency cap. A rejection
    /// tells the client to wait one second.
    pub(crate) fn acquire(self: &Arc<Self>, token: &str, now: Instant) -> Option<Permit> {
        let mut tokens = lock(&self.tokens);
        let state = tokens.entry(token.to_string()).or_default();
        if state.in_flight >= self.max_concurrent {
            Self::extend_not_before(state, now, 1);
            return None;
        }
        state.in_flight += 1;
        self.peak_in_flight
            .fetch_max(u64::from(state.in_flight), Ordering::Relaxed);
        Some(Permit {
            limiter: Arc::clone(self),
            token: token.to_string(),
        })
    }

    /// Records that the client was told (e.g. by an injected 429) to wait `secs` seconds.
    pub(crate) fn told_to_wait(&self, token: &str, now: Instant, secs: u64) {
        let mut tokens = lock(&self.tokens);
        Self::extend_not_before(tokens.entry(token.to_string()).or_default(), now, secs);
    }

    fn extend_not_before(state: &mut TokenState, now: Instant, secs: u64) {
        let until = now + Duration::from_secs(secs);
        state.not_before = Some(state.not_before.map_or(until, |prev| prev.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_requests_count_against_the_window() {
        let limiter = Limiter::new(2, 50);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(limiter.admit("a", at(0)), Ok(()));
        assert_eq!(limiter.admit("a", at(0)), Ok(()));
        assert_eq!(limiter.admit("a", at(30)), Err(30));
        assert_eq!(limiter.admit("a", at(40)), Err(50));
        // Both successful requests have left the window, but the two rejected ones have not,
        // so a client that kept hammering is still limited.
        assert_eq!(limiter.admit("a", at(60)), Err(40));
        // Other tokens are independent.
        assert_eq!(limiter.admit("b", at(60)), Ok(()));
        // After honouring Retry-After the client gets through.
        assert_eq!(limiter.admit("a", at(120)), Ok(()));
    }

    #[test]
    fn early_arrivals_are_counted() {
        let limiter = Limiter::new(1, 50);
        let t0 = Instant::now();
        assert_eq!(limiter.admit("a", t0), Ok(()));
        let wait = limiter
            .admit("a", t0 + Duration::from_millis(500))
            .unwrap_err();
        assert_eq!(wait, 60);
        assert!(limiter.note_arrival("a", t0 + Duration::from_secs(59)));
        assert!(!limiter.note_arrival("a", t0 + Duration::from_millis(60_500)));
        assert!(!limiter.note_arrival("b", t0));
        assert_eq!(limiter.early_requests(), 1);
    }

    #[test]
    fn concurrency_slots_are_released_on_drop() {
        let limiter = Arc::new(Limiter::new(100, 1));
        let now = Instant::now();
        let permit = limiter.acquire("a", now).unwrap();
        assert!(limiter.acquire("a", now).is_none());
        assert!(limiter.acquire("b", now).is_some());
        drop(permit);
        assert!(limiter.acquire("a", now).is_some());
    }
}
