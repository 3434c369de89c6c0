//! A source's client-side request budget.
//!
//! Every request a source makes to its API (audit pages and user lookups
//! alike) takes a token from the source's [`RateBudget`] first, so that
//! together they stay under the API's rate limit instead of finding it with
//! 429s. Rejected requests count against Asana's quota too, so hitting the
//! limit only makes things worse. After a 429 the budget is
//! [penalized](RateBudget::penalize): every request of the source waits,
//! not only the one that was refused.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket shared by everything that calls one API tenant.
///
/// It admits a burst of one second's worth of the per-minute rate (at
/// least one request) and refills the rest evenly. So any 60 seconds see
/// at most `requests_per_minute` requests (the burst plus a minute's
/// refill), as a sliding-window limit like Asana's counts them, while a
/// source that keeps it busy (a parallel backfill) sustains 59/60 of it.
#[derive(Debug)]
pub struct RateBudget {
    requests_per_minute: u32,
    burst: f64,
    /// Tokens added per second.
    refill: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Below zero while requests are reserved ahead of the refill.
    tokens: f64,
    last: Instant,
    /// A 429 told us to stay away until then.
    not_before: Instant,
    /// Penalties so far: a reservation made before the latest one is void.
    penalties: u64,
}

impl RateBudget {
    /// A budget of `requests_per_minute` (0 counts as 1).
    pub fn per_minute(requests_per_minute: u32) -> Self {
        let rpm = requests_per_minute.max(1);
        let burst = (f64::from(rpm) / 60.0).floor().max(1.0);
        let refill = (f64::from(rpm) - burst).max(1.0) / 60.0;
        let now = Instant::now();
        Self {
            requests_per_minute: rpm,
            burst,
            refill,
            state: Mutex::new(Bucket {
                tokens: burst,
                last: now,
                not_before: now,
                penalties: 0,
            }),
        }
    }

    /// The configured rate.
    pub fn requests_per_minute(&self) -> u32 {
        self.requests_per_minute
    }

    fn bucket(&self) -> MutexGuard<'_, Bucket> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a request may be made, and counts it. Never holds the
    /// lock across the wait. A request whose acquire is cancelled while
    /// waiting for the refill still used its token: the budget errs on the
    /// side of fewer requests.
    pub async fn acquire(&self) {
        // The penalty count when this call reserved its token.
        let mut reserved: Option<u64> = None;
        loop {
            let wait = {
                let mut bucket = self.bucket();
                let now = Instant::now();
                if now < bucket.not_before {
                    bucket.not_before - now
                } else if reserved == Some(bucket.penalties) {
                    return;
                } else {
                    // First time here, or a penalty voided the reservation:
                    // reserve (again), paced behind everyone already waiting.
                    self.refill(&mut bucket, now);
                    bucket.tokens -= 1.0;
                    reserved = Some(bucket.penalties);
                    if bucket.tokens >= 0.0 {
                        return;
                    }
                    Duration::from_secs_f64(-bucket.tokens / self.refill)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// How long an [`acquire`](Self::acquire) made now would wait, without
    /// counting anything (for heartbeats and logs).
    pub fn delay(&self) -> Duration {
        let mut bucket = self.bucket();
        let now = Instant::now();
        if now < bucket.not_before {
            return bucket.not_before - now;
        }
        self.refill(&mut bucket, now);
        if bucket.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - bucket.tokens) / self.refill)
        }
    }

    /// The API refused a request with 429: nothing using this budget makes
    /// a request for `wait` (a longer penalty already in force stays).
    /// Afterwards requests resume at the refill pace, without a burst: the
    /// bucket is empty when the penalty ends, and the requests that were
    /// waiting reserve again, one after the other.
    pub fn penalize(&self, wait: Duration) {
        let mut bucket = self.bucket();
        let until = Instant::now() + wait;
        if until > bucket.not_before {
            bucket.not_before = until;
        }
        bucket.tokens = 0.0;
        bucket.last = bucket.last.max(bucket.not_before);
        bucket.penalties += 1;
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        // Nothing refills while a penalty lasts (`last` is its end then).
        if now > bucket.last {
            let elapsed = (now - bucket.last).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.refill).min(self.burst);
            bucket.last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate_after_a_burst() {
        // 120/min: a burst of 2, then 118 per 60 s.
        let budget = RateBudget::per_minute(120);
        let start = Instant::now();
        for _ in 0..2 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is immediate");
        assert!(budget.delay() > Duration::from_millis(500));
        budget.acquire().await;
        let one = Duration::from_secs_f64(60.0 / 118.0);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= one && elapsed < one + Duration::from_millis(20),
            "{elapsed:?}"
        );
        // Never more than the rate in any minute.
        let minute = Instant::now();
        let mut count = 0;
        while minute.elapsed() < Duration::from_secs(60) {
            budget.acquire().await;
            count += 1;
        }
        assert!((115..=120).contains(&count), "{count} requests in a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_source_gets_close_to_the_limit_and_never_over_it() {
        // Asana's 1,500/min, counted over every 60 s window from the start.
        let budget = RateBudget::per_minute(1500);
        let start = Instant::now();
        let mut at = Vec::new();
        while start.elapsed() < Duration::from_secs(180) {
            budget.acquire().await;
            at.push(start.elapsed());
        }
        let minute = Duration::from_secs(60);
        for (i, &t) in at.iter().enumerate() {
            let in_window = at[i..].iter().take_while(|&&u| u < t + minute).count();
            assert!(
                in_window <= 1500,
                "{in_window} requests within 60 s of {t:?}"
            );
        }
        // Sustained: 1,475 per minute after the burst.
        let last_minute = at
            .iter()
            .filter(|&&t| t >= Duration::from_secs(120))
            .count();
        assert!((1470..=1480).contains(&last_minute), "{last_minute}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_penalty_holds_everyone_back() {
        let budget = std::sync::Arc::new(RateBudget::per_minute(1500));
        budget.acquire().await;
        budget.penalize(Duration::from_secs(5));
        // A shorter penalty does not shorten it.
        budget.penalize(Duration::from_secs(1));
        assert_eq!(budget.delay(), Duration::from_secs(5));
        let start = Instant::now();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let budget = std::sync::Arc::clone(&budget);
                tokio::spawn(async move { budget.acquire().await })
            })
            .collect();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        // They go when it ends, one after the other at the refill pace
        // (three at 24.6 a second).
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_secs(5) && elapsed < Duration::from_millis(5200),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_penalty_waiting_requests_resume_at_the_refill_pace() {
        // 1,500/min: a burst of 25, then 24.6 per second.
        let budget = std::sync::Arc::new(RateBudget::per_minute(1500));
        let start = Instant::now();
        let times = std::sync::Arc::new(Mutex::new(Vec::new()));
        let lanes: Vec<_> = (0..20)
            .map(|_| {
                let (budget, times) = (budget.clone(), times.clone());
                tokio::spawn(async move {
                    while start.elapsed() < Duration::from_secs(8) {
                        budget.acquire().await;
                        times.lock().unwrap().push(start.elapsed());
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        budget.penalize(Duration::from_secs(3));
        for lane in lanes {
            lane.await.unwrap();
        }
        let times = times.lock().unwrap();
        let within = |from: f64, to: f64| {
            times
                .iter()
                .filter(|t| (from..to).contains(&t.as_secs_f64()))
                .count()
        };
        // Nothing during the penalty (the lanes had reserved ahead).
        assert_eq!(within(2.001, 5.0), 0);
        // No burst when it ends: the refill pace, not 20 waiters plus a
        // refilled bucket at once.
        assert!(
            within(5.0, 5.5) <= 14,
            "{} in the first half second",
            within(5.0, 5.5)
        );
        assert!(
            within(5.0, 6.0) <= 26,
            "{} in the first second",
            within(5.0, 6.0)
        );
        assert!(
            within(6.0, 8.0) >= 45,
            "{} in the next two seconds",
            within(6.0, 8.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_rates_still_make_progress() {
        let budget = RateBudget::per_minute(0);
        assert_eq!(budget.requests_per_minute(), 1);
        budget.acquire().await;
        let start = Instant::now();
        budget.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
