//! Retry timing shared by sources and sinks.
//!
//! Everything that talks to the outside world retries forever: giving up
//! would mean losing an audit event. What varies is how long to wait, and
//! that is decided here: capped exponential backoff with jitter (from
//! [`backon`], the maintained successor of the `backoff` crate), the server's
//! `Retry-After` when it gives one, and a slow fixed pace for failures that
//! only an operator can fix (a revoked token).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, Utc};

/// Bounds of an exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// First delay after a failure.
    pub initial: Duration,
    /// Ceiling for any single delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// Exponential backoff with jitter that never runs out, reset by success.
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    inner: ExponentialBackoff,
    failures: u32,
}

impl Backoff {
    /// A fresh backoff following `policy`.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            inner: Self::build(policy),
            failures: 0,
        }
    }

    fn build(policy: BackoffPolicy) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(policy.initial)
            .with_max_delay(policy.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // `without_max_times` makes the iterator endless; the fallback only
        // guards against a future change in backon.
        self.inner
            .next()
            .unwrap_or(self.policy.max)
            .min(self.policy.max.saturating_mul(2))
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets past failures after a success.
    pub fn reset(&mut self) {
        if self.failures > 0 {
            self.inner = Self::build(self.policy);
            self.failures = 0;
        }
    }
}

/// Parses an HTTP `Retry-After` value: delay-seconds or an HTTP-date
/// (RFC 9110 §10.2.3). A date in the past means "now". Returns `None` for
/// anything unparseable, so the caller falls back to its own backoff.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is a subset of RFC 2822.
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The longest a `Retry-After` is obeyed; a larger value is the API's
/// mistake, and waiting it out would silently stop the source.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15 * 60);

/// How long to wait after a 429: at least what the API asked and at least
/// our own growing backoff (so `Retry-After: 0` or a date in the past
/// cannot make a tight loop), at most [`MAX_RATE_LIMIT_WAIT`], plus up to
/// 10% (at most a second) so that clients told the same time spread out.
pub fn rate_limit_wait(asked: Option<Duration>, ours: Duration) -> Duration {
    let base = asked
        .map_or(ours, |asked| asked.max(ours))
        .min(MAX_RATE_LIMIT_WAIT);
    let jitter = (base / 10)
        .min(Duration::from_secs(1))
        .mul_f64(rand::random::<f64>());
    base.saturating_add(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Mon, 05 Jan 2026 10:00:45 GMT", now),
            Some(Duration::from_secs(45))
        );
        assert_eq!(
            parse_retry_after("Mon, 05 Jan 2026 09:59:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut backoff = Backoff::new(policy);
        let delays: Vec<_> = (0..12).map(|_| backoff.next_delay()).collect();
        assert_eq!(backoff.failures(), 12);
        assert!(delays[0] >= policy.initial, "{delays:?}");
        // Jitter adds at most one more delay's worth.
        assert!(delays.iter().all(|d| *d <= policy.max * 2), "{delays:?}");
        assert!(delays[11] >= policy.max, "{delays:?}");
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert!(backoff.next_delay() < Duration::from_millis(250));
    }

    #[test]
    fn rate_limit_waits_are_bounded_below_and_above() {
        let ours = Duration::from_millis(500);
        // Retry-After 0 (or a date in the past) still waits our backoff.
        let wait = rate_limit_wait(Some(Duration::ZERO), ours);
        assert!(wait >= ours && wait <= ours + ours / 10, "{wait:?}");
        // What the API asks is a floor.
        let wait = rate_limit_wait(Some(Duration::from_secs(30)), ours);
        assert!(
            wait >= Duration::from_secs(30) && wait <= Duration::from_secs(31),
            "{wait:?}"
        );
        // An absurd Retry-After is capped, without overflow.
        let wait = rate_limit_wait(Some(Duration::from_secs(u64::MAX)), ours);
        assert!(
            wait <= MAX_RATE_LIMIT_WAIT + Duration::from_secs(1),
            "{wait:?}"
        );
        // Without Retry-After, our backoff alone.
        let wait = rate_limit_wait(None, ours);
        assert!(wait >= ours && wait <= ours + ours / 10, "{wait:?}");
    }
}
