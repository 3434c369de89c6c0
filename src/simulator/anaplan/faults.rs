//! Fault injection for the Anaplan simulator, switchable at start (in
//! [`AnaplanSimConfig`](super::AnaplanSimConfig)) and at run time (`POST /_sim/anaplan/faults`
//! or [`AnaplanSim::update_faults`](super::AnaplanSim::update_faults)).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::simulator::faults::{
    deserialize_duration, deserialize_optional_duration, serialize_duration,
};

/// Persistent fault state. Rates are probabilities per request (0.0..=1.0); the `*_next`
/// counters are one-shot: each affected request decrements them. "API requests" are those to
/// the audit and users endpoints; the auth service (`/token/*`) has its own switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnaplanFaults {
    /// Added to every API request (humantime in JSON, e.g. `"250ms"`, or milliseconds).
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub latency: Duration,
    /// Share of API requests answered with a random 500, 502, 503 or 504.
    pub error_rate: f64,
    /// The next N API requests fail with `fail_status`.
    pub fail_next: u32,
    /// Status of `fail_next` and `auth_fail_next` failures (400..=599; default 500).
    pub fail_status: u16,
    /// The next N auth-service requests (`/token/*`) fail with `fail_status`.
    pub auth_fail_next: u32,
    /// Share of 200 JSON responses whose body is cut roughly in half.
    pub truncate_rate: f64,
    /// The next N 200 JSON responses are truncated.
    pub truncate_next: u32,
    /// The next N API requests get a 200 with an HTML body (`text/html`), as a misbehaving
    /// proxy would send.
    pub html_next: u32,
    /// The next N API requests get a 429.
    pub rate_limit_next: u32,
    /// Send `Retry-After` on 429s. Off by default: Anaplan documents no such header.
    pub send_retry_after: bool,
    /// `Retry-After` of `rate_limit_next` responses when `send_retry_after` is on (at least 1).
    pub retry_after_secs: u64,
    /// Every users-API request (`/2/0/users…`) gets 503.
    pub users_down: bool,
    /// The next N audit requests with `offset > 0` first insert `drift_events` new events into
    /// the request's window, before the requested offset: offsets shift, as on the real API
    /// when events are stored while a client pages.
    pub drift_next: u32,
    /// Events inserted by each `drift_next` request (default 3).
    pub drift_events: u32,
    /// Leave out `meta` when the whole result fits in the first page (some Apiary examples
    /// have no `meta`).
    pub omit_small_meta: bool,
    /// The simulated clock runs this many seconds ahead of real UTC time (may be negative).
    /// Token expiry, retention, visibility (`createdDate`) and default windows all use it.
    pub clock_advance_secs: i64,
}

impl Default for AnaplanFaults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            error_rate: 0.0,
            fail_next: 0,
            fail_status: 500,
            auth_fail_next: 0,
            truncate_rate: 0.0,
            truncate_next: 0,
            html_next: 0,
            rate_limit_next: 0,
            send_retry_after: false,
            retry_after_secs: 1,
            users_down: false,
            drift_next: 0,
            drift_events: 3,
            omit_small_meta: false,
            clock_advance_secs: 0,
        }
    }
}

impl AnaplanFaults {
    /// Rejects values the simulator cannot act on.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("truncate_rate", self.truncate_rate),
        ];
        if let Some((name, _)) = rates.iter().find(|(_, r)| !(0.0..=1.0).contains(r)) {
            return Err(format!("{name}: must be between 0 and 1"));
        }
        if !(400..=599).contains(&self.fail_status) {
            return Err("fail_status: must be between 400 and 599".into());
        }
        if self.drift_events > 10_000 {
            return Err("drift_events: at most 10000".into());
        }
        Ok(())
    }
}

/// A run-time change: any subset of the [`AnaplanFaults`] fields (absent ones are unchanged;
/// see there for their meaning) plus one-off actions.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnaplanFaultUpdate {
    /// See [`AnaplanFaults::latency`].
    #[serde(default, deserialize_with = "deserialize_optional_duration")]
    pub latency: Option<Duration>,
    /// See [`AnaplanFaults::error_rate`].
    pub error_rate: Option<f64>,
    /// See [`AnaplanFaults::fail_next`].
    pub fail_next: Option<u32>,
    /// See [`AnaplanFaults::fail_status`].
    pub fail_status: Option<u16>,
    /// See [`AnaplanFaults::auth_fail_next`].
    pub auth_fail_next: Option<u32>,
    /// See [`AnaplanFaults::truncate_rate`].
    pub truncate_rate: Option<f64>,
    /// See [`AnaplanFaults::truncate_next`].
    pub truncate_next: Option<u32>,
    /// See [`AnaplanFaults::html_next`].
    pub html_next: Option<u32>,
    /// See [`AnaplanFaults::rate_limit_next`].
    pub rate_limit_next: Option<u32>,
    /// See [`AnaplanFaults::send_retry_after`].
    pub send_retry_after: Option<bool>,
    /// See [`AnaplanFaults::retry_after_secs`].
    pub retry_after_secs: Option<u64>,
    /// See [`AnaplanFaults::users_down`].
    pub users_down: Option<bool>,
    /// See [`AnaplanFaults::drift_next`].
    pub drift_next: Option<u32>,
    /// See [`AnaplanFaults::drift_events`].
    pub drift_events: Option<u32>,
    /// See [`AnaplanFaults::omit_small_meta`].
    pub omit_small_meta: Option<bool>,
    /// See [`AnaplanFaults::clock_advance_secs`].
    pub clock_advance_secs: Option<i64>,
    /// Make this token value get 401 from now on (as after a server-side revocation).
    pub revoke_token: Option<String>,
    /// Revoke every token issued so far.
    #[serde(default)]
    pub revoke_all_tokens: bool,
    /// Take the Tenant Auditor role away from this login (email): its audit requests get
    /// `FAILURE_UNAUTHORIZED_USER_ACTION`, even with tokens issued before.
    pub revoke_auditor: Option<String>,
    /// Give the Tenant Auditor role to this login (email).
    pub grant_auditor: Option<String>,
    /// Store this many new events now (`createdDate` = now).
    pub insert_events: Option<u64>,
    /// `eventDate` of `insert_events` events: this many seconds before now (default 0). A
    /// positive age makes them late arrivals inside windows already read.
    pub insert_event_age_secs: Option<u64>,
}

impl AnaplanFaultUpdate {
    /// `faults` with this update's fields applied.
    pub(crate) fn apply_to(&self, faults: &AnaplanFaults) -> AnaplanFaults {
        let mut next = faults.clone();
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(value) = self.$field {
                    next.$field = value;
                }
            )*};
        }
        set!(
            latency,
            error_rate,
            fail_next,
            fail_status,
            auth_fail_next,
            truncate_rate,
            truncate_next,
            html_next,
            rate_limit_next,
            send_retry_after,
            retry_after_secs,
            users_down,
            drift_next,
            drift_events,
            omit_small_meta,
            clock_advance_secs
        );
        next
    }
}

/// Redacts the token field.
impl fmt::Debug for AnaplanFaultUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnaplanFaultUpdate")
            .field("patch", &self.apply_to(&AnaplanFaults::default()))
            .field(
                "revoke_token",
                &self.revoke_token.as_ref().map(|_| "<redacted>"),
            )
            .field("revoke_all_tokens", &self.revoke_all_tokens)
            .field("revoke_auditor", &self.revoke_auditor)
            .field("grant_auditor", &self.grant_auditor)
            .field("insert_events", &self.insert_events)
            .field("insert_event_age_secs", &self.insert_event_age_secs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_change_only_the_given_fields() {
        let update: AnaplanFaultUpdate = serde_json::from_str(
            r#"{"latency":"250ms","drift_next":2,"insert_events":3,"revoke_token":"t"}"#,
        )
        .unwrap();
        let faults = update.apply_to(&AnaplanFaults::default());
        assert_eq!(faults.latency, Duration::from_millis(250));
        assert_eq!(faults.drift_next, 2);
        assert_eq!(faults.drift_events, 3);
        assert_eq!(update.insert_events, Some(3));
        assert!(!format!("{update:?}").contains("\"t\""));
        assert!(serde_json::from_str::<AnaplanFaultUpdate>(r#"{"drift":1}"#).is_err());
        let json = serde_json::to_value(&faults).unwrap();
        assert_eq!(json["latency"], "250ms");
        assert_eq!(json["send_retry_after"], false);
    }

    #[test]
    fn validation_rejects_impossible_values() {
        let bad = AnaplanFaults {
            error_rate: 1.5,
            ..AnaplanFaults::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "error_rate: must be between 0 and 1"
        );
        let bad = AnaplanFaults {
            fail_status: 200,
            ..AnaplanFaults::default()
        };
        assert!(bad.validate().is_err());
        assert!(AnaplanFaults::default().validate().is_ok());
    }
}
