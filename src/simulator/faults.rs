//! Fault injection settings, switchable at start (in `SimConfig`) and at run time
//! (`POST /_sim/faults` or [`Simulator::update_faults`](super::Simulator::update_faults)).

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use rand::Rng as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Persistent fault state. Rates are probabilities per request (0.0..=1.0); the `*_next`
/// counters are one-shot: each affected response decrements them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every Asana API request (humantime in JSON, e.g. `"250ms"`, or milliseconds).
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub latency: Duration,
    /// Share of requests answered with a random 500, 502, 503 or 504.
    pub error_rate: f64,
    /// Share of 200 responses whose JSON body is cut roughly in half.
    pub truncate_rate: f64,
    /// Share of requests that first append a late event (created 1 to 10 minutes ago).
    pub late_rate: f64,
    /// Share of offset-bearing pages that repeat the last event of the previous page.
    pub duplicate_rate: f64,
    /// The next N requests fail with `fail_status`.
    pub fail_next: u32,
    /// Status of `fail_next` failures (400..=599; default 500).
    pub fail_status: u16,
    /// The next N 200 responses are truncated.
    pub truncate_next: u32,
    /// The next N requests get a 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_next: u32,
    /// `Retry-After` of `rate_limit_next` responses (default 1, at least 1).
    pub retry_after_secs: u64,
    /// The next N pages each carry one malformed record.
    pub bad_record_next: u32,
    /// The simulated clock runs this many seconds ahead of real UTC time (may be negative).
    pub clock_advance_secs: i64,
    /// Every `GET /users/{user_gid}` gets 503 (before authentication and rate limits); the
    /// audit endpoint is unaffected.
    pub users_down: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            error_rate: 0.0,
            truncate_rate: 0.0,
            late_rate: 0.0,
            duplicate_rate: 0.0,
            fail_next: 0,
            fail_status: 500,
            truncate_next: 0,
            rate_limit_next: 0,
            retry_after_secs: 1,
            bad_record_next: 0,
            clock_advance_secs: 0,
            users_down: false,
        }
    }
}

impl Faults {
    /// Rejects values the simulator cannot act on.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("truncate_rate", self.truncate_rate),
            ("late_rate", self.late_rate),
            ("duplicate_rate", self.duplicate_rate),
        ];
        if let Some((name, _)) = rates.iter().find(|(_, r)| !(0.0..=1.0).contains(r)) {
            return Err(format!("{name}: must be between 0 and 1"));
        }
        if !(400..=599).contains(&self.fail_status) {
            return Err("fail_status: must be between 400 and 599".into());
        }
        Ok(())
    }
}

/// A run-time change: any subset of the [`Faults`] fields (absent ones are unchanged; see
/// there for their meaning) plus one-off actions.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    #[serde(default, deserialize_with = "deserialize_optional_duration")]
    pub latency: Option<Duration>,
    pub error_rate: Option<f64>,
    pub truncate_rate: Option<f64>,
    pub late_rate: Option<f64>,
    pub duplicate_rate: Option<f64>,
    pub fail_next: Option<u32>,
    pub fail_status: Option<u16>,
    pub truncate_next: Option<u32>,
    pub rate_limit_next: Option<u32>,
    pub retry_after_secs: Option<u64>,
    pub bad_record_next: Option<u32>,
    pub clock_advance_secs: Option<i64>,
    pub users_down: Option<bool>,
    /// Invalidate every offset issued so far.
    #[serde(default)]
    pub expire_offsets: bool,
    /// Make this token get 401 from now on.
    pub revoke_token: Option<String>,
    /// Undo `revoke_token`.
    pub restore_token: Option<String>,
    /// Append this many live events, created now, to `workspace` (or to every workspace).
    pub generate: Option<u64>,
    /// Workspace gid that `generate` applies to.
    pub workspace: Option<String>,
}

impl FaultUpdate {
    /// `faults` with this update's fields applied.
    pub(crate) fn apply_to(&self, faults: &Faults) -> Faults {
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
            truncate_rate,
            late_rate,
            duplicate_rate,
            fail_next,
            fail_status,
            truncate_next,
            rate_limit_next,
            retry_after_secs,
            bad_record_next,
            clock_advance_secs,
            users_down
        );
        next
    }
}

/// Redacts the token fields.
impl fmt::Debug for FaultUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |token: &Option<String>| token.as_ref().map(|_| "<redacted>");
        f.debug_struct("FaultUpdate")
            .field("patch", &self.apply_to(&Faults::default()))
            .field("expire_offsets", &self.expire_offsets)
            .field("revoke_token", &redact(&self.revoke_token))
            .field("restore_token", &redact(&self.restore_token))
            .field("generate", &self.generate)
            .field("workspace", &self.workspace)
            .finish()
    }
}

/// The fault state as reported by the admin API.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultReport {
    #[serde(flatten)]
    pub(crate) faults: Faults,
    /// How many tokens are revoked (never the tokens themselves).
    pub(crate) revoked_tokens: usize,
}

/// Live fault state shared by all requests. No `Debug`: it holds revoked tokens.
pub(crate) struct FaultState {
    pub(crate) faults: Faults,
    pub(crate) revoked: HashSet<String>,
}

impl FaultState {
    pub(crate) fn new(faults: Faults) -> Self {
        Self {
            faults,
            revoked: HashSet::new(),
        }
    }

    pub(crate) fn report(&self) -> FaultReport {
        FaultReport {
            faults: self.faults.clone(),
            revoked_tokens: self.revoked.len(),
        }
    }

    /// Decrements a one-shot counter; true if it was set.
    pub(crate) fn take(counter: &mut u32) -> bool {
        let set = *counter > 0;
        *counter = counter.saturating_sub(1);
        set
    }
}

/// True with probability `rate`.
pub(crate) fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::rng().random_bool(rate.min(1.0))
}

pub(crate) fn serialize_duration<S: Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*value).to_string())
}

/// A duration given as a humantime string or as integer milliseconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationInput {
    Millis(u64),
    Text(String),
}

impl DurationInput {
    fn into_duration<E: serde::de::Error>(self) -> Result<Duration, E> {
        match self {
            DurationInput::Millis(ms) => Ok(Duration::from_millis(ms)),
            DurationInput::Text(text) => humantime::parse_duration(&text).map_err(E::custom),
        }
    }
}

pub(crate) fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    DurationInput::deserialize(deserializer)?.into_duration()
}

pub(crate) fn deserialize_optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    Option::<DurationInput>::deserialize(deserializer)?
        .map(DurationInput::into_duration)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_change_only_the_given_fields() {
        let update: FaultUpdate =
            serde_json::from_str(r#"{"latency":"250ms","fail_next":2,"generate":3}"#).unwrap();
        let faults = update.apply_to(&Faults::default());
        assert_eq!(faults.latency, Duration::from_millis(250));
        assert_eq!(faults.fail_next, 2);
        assert_eq!(faults.fail_status, 500);
        assert_eq!(update.generate, Some(3));
        let update: FaultUpdate = serde_json::from_str(r#"{"latency":40}"#).unwrap();
        assert_eq!(update.latency, Some(Duration::from_millis(40)));
        assert!(serde_json::from_str::<FaultUpdate>(r#"{"error_rat":1}"#).is_err());
        let json = serde_json::to_value(&faults).unwrap();
        assert_eq!(json["latency"], "250ms");
    }

    #[test]
    fn validation_rejects_impossible_values() {
        let faults = Faults {
            late_rate: 1.5,
            ..Faults::default()
        };
        assert_eq!(
            faults.validate().unwrap_err(),
            "late_rate: must be between 0 and 1"
        );
        let faults = Faults {
            fail_status: 200,
            ..Faults::default()
        };
        assert!(faults.validate().is_err());
        assert!(Faults::default().validate().is_ok());
    }
}
