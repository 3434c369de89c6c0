//! Anaplan simulator configuration and its `auditrelay simulate --anaplan-*` flags.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::AnaplanFaults;

/// Anaplan's audit retention and maximum query span: 30 days.
pub(crate) const THIRTY_DAYS: Duration = Duration::from_secs(30 * 24 * 3600);

/// A login the auth service accepts (basic auth with the password, or certificate auth with a
/// certificate whose subject names this email).
#[derive(Clone)]
pub struct Credential {
    /// The login (Anaplan user ids are emails); matched case-insensitively.
    pub email: String,
    /// The basic-auth password.
    pub password: String,
    /// Has the Tenant Auditor role: without it the audit endpoints answer 401
    /// `FAILURE_UNAUTHORIZED_USER_ACTION`.
    pub tenant_auditor: bool,
}

impl Credential {
    /// A login with the given password and role.
    pub fn new(email: &str, password: &str, tenant_auditor: bool) -> Self {
        Self {
            email: email.to_string(),
            password: password.to_string(),
            tenant_auditor,
        }
    }
}

/// Redacts the password.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .field("tenant_auditor", &self.tenant_auditor)
            .finish()
    }
}

/// Everything that shapes an Anaplan simulator. Two instances with equal `seed`, `tenant_id`,
/// `epoch`, timeline, id and user settings serve the same timeline events and users.
#[derive(Debug, Clone)]
pub struct AnaplanSimConfig {
    /// Seed of events and users.
    pub seed: u64,
    /// The tenant (32 hex characters): `tenantId` of every event, `customerId` of users.
    pub tenant_id: String,
    /// Logins of the auth service.
    pub credentials: Vec<Credential>,
    /// End of the backlog and start of live events.
    pub epoch: DateTime<Utc>,
    /// Events spread evenly over `backlog_span` (by `eventDate`), ending at `epoch`.
    pub backlog: u64,
    /// Time span of the backlog, ending at `epoch`.
    pub backlog_span: Duration,
    /// Live events per second after `epoch` (0 disables them).
    pub rate: f64,
    /// Stop live events after this many.
    pub max_live: Option<u64>,
    /// Event ids are `id_base + 4 * key + (0..4)`, increasing with the key (timeline index, or
    /// an inserted event's key, which is larger than any timeline index). The default puts the
    /// ids of a 1000-event backlog on both sides of 2^53, so that a client going through f64
    /// corrupts some of them. Must leave room for 2^36 more (checked by [`Self::validate`]).
    pub id_base: u64,
    /// Share of timeline events with a code the catalog does not know (other families such
    /// as `AUTHZ-3`, `CONN-1`, or a future `USR-60`).
    pub unknown_code_share: f64,
    /// Share of timeline events stored late: `createdDate` 1 second to `max_late` after
    /// `eventDate` (the others are stored within 2 seconds). An event is visible only once
    /// `createdDate` has passed.
    pub late_share: f64,
    /// Longest storage delay of a late event.
    pub max_late: Duration,
    /// Share of timeline events by a system process (`userId` `INTERNAL_<n>`).
    pub internal_share: f64,
    /// Users in the directory (`/2/0/users`), active or not.
    pub users: u32,
    /// Deleted users: they act in events but are not in `/2/0/users` and get 404.
    pub deleted_users: u32,
    /// Lifetime of an auth token on the simulated clock (real: 35 minutes).
    pub token_ttl: Duration,
    /// Events whose `eventDate` is older than this (simulated clock) are gone (real: 30 days).
    pub retention: Duration,
    /// Page size when an audit request has no `limit` (not documented; the SDK always sends
    /// one).
    pub default_limit: u32,
    /// `None` (live behaviour): any `limit` is honoured. `Some(n)`: a `limit` above `n` gets
    /// 204 with no body, as the docs claim.
    pub max_limit: Option<u32>,
    /// Audit and users API requests per minute for the tenant (token bucket; a 3rd-party
    /// figure of 600/min is the default).
    pub rate_limit_per_minute: u32,
    /// CA certificates (PEM) whose client certificates certificate auth accepts, besides the
    /// simulator's own CA (see [`AnaplanSim::mint_client_certificate`](super::AnaplanSim::mint_client_certificate)).
    pub trusted_ca_pems: Vec<String>,
    /// Faults active from the start; they can be changed at run time.
    pub faults: AnaplanFaults,
}

/// 2^53 minus 2000: ids of a 1000-event backlog (stride 4) straddle 2^53.
pub(crate) const DEFAULT_ID_BASE: u64 = (1 << 53) - 2000;

impl Default for AnaplanSimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            tenant_id: "8a81b09a5e1f2a3b015e1f2a3b4c0002".to_string(),
            credentials: vec![
                Credential::new("auditor@example.com", "sim-password", true),
                Credential::new("viewer@example.com", "sim-password", false),
            ],
            epoch: Utc::now(),
            backlog: 1000,
            backlog_span: Duration::from_secs(3600),
            rate: 1.0,
            max_live: None,
            id_base: DEFAULT_ID_BASE,
            unknown_code_share: 0.02,
            late_share: 0.05,
            max_late: Duration::from_secs(600),
            internal_share: 0.05,
            users: 40,
            deleted_users: 5,
            token_ttl: Duration::from_secs(35 * 60),
            retention: THIRTY_DAYS,
            default_limit: 10_000,
            max_limit: None,
            rate_limit_per_minute: 600,
            trusted_ca_pems: Vec::new(),
            faults: AnaplanFaults::default(),
        }
    }
}

impl AnaplanSimConfig {
    /// Rejects settings the simulator cannot serve.
    pub fn validate(&self) -> Result<(), String> {
        let is_hex32 = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex32(&self.tenant_id) {
            return Err("tenant_id: must be 32 hex characters".into());
        }
        if self.id_base > u64::MAX - (1 << 36) {
            return Err("id_base: too large (must leave room for 2^36 ids)".into());
        }
        let shares = [
            ("unknown_code_share", self.unknown_code_share),
            ("late_share", self.late_share),
            ("internal_share", self.internal_share),
        ];
        if let Some((name, _)) = shares.iter().find(|(_, r)| !(0.0..=1.0).contains(r)) {
            return Err(format!("{name}: must be between 0 and 1"));
        }
        if self.users == 0 {
            return Err("users: at least 1".into());
        }
        if self.token_ttl.is_zero() {
            return Err("token_ttl: must be positive".into());
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err("rate: must be a non-negative number".into());
        }
        if self.credentials.is_empty() {
            return Err("credentials: at least one login".into());
        }
        self.faults.validate()
    }
}

/// The `--anaplan-*` flags of `auditrelay simulate`. Without `--anaplan-listen` no Anaplan
/// simulator runs.
#[derive(Debug, Clone, clap::Args)]
pub struct AnaplanSimArgs {
    /// Also serve the Anaplan APIs (auth, audit and users on one port) at this address.
    #[arg(id = "anaplan_listen", long = "anaplan-listen")]
    listen: Option<SocketAddr>,
    /// Anaplan backlog events.
    #[arg(id = "anaplan_events", long = "anaplan-events", default_value_t = 1000)]
    backlog: u64,
    /// Anaplan live events per second.
    #[arg(id = "anaplan_rate", long = "anaplan-rate", default_value_t = 1.0)]
    rate: f64,
    /// Anaplan token lifetime.
    #[arg(id = "anaplan_token_ttl", long = "anaplan-token-ttl", default_value = "35m", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// Anaplan audit and users requests per minute.
    #[arg(
        id = "anaplan_rate_limit",
        long = "anaplan-rate-limit",
        default_value_t = 600
    )]
    rate_limit: u32,
    /// Added latency per Anaplan audit and users request.
    #[arg(id = "anaplan_latency", long = "anaplan-latency", default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Write the simulator's CA (`ca.pem`) and a trusted client certificate for the default
    /// auditor login (`client.pem`, `client.key`) into this directory.
    #[arg(id = "anaplan_cert_dir", long = "anaplan-cert-dir")]
    cert_dir: Option<PathBuf>,
}

impl AnaplanSimArgs {
    /// The address to serve the Anaplan APIs at, if requested.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// Where to write the CA and a client certificate, if requested.
    pub fn cert_dir(&self) -> Option<&PathBuf> {
        self.cert_dir.as_ref()
    }

    /// The configuration these flags describe, with the seed and epoch shared with the Asana
    /// simulator.
    pub fn to_config(&self, seed: u64, epoch: DateTime<Utc>) -> AnaplanSimConfig {
        AnaplanSimConfig {
            seed,
            epoch,
            backlog: self.backlog,
            rate: self.rate,
            token_ttl: self.token_ttl,
            rate_limit_per_minute: self.rate_limit,
            faults: AnaplanFaults {
                latency: self.latency,
                ..AnaplanFaults::default()
            },
            ..AnaplanSimConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_straddle_2_pow_53() {
        let config = AnaplanSimConfig::default();
        config.validate().unwrap();
        assert!(config.id_base < 1 << 53);
        assert!(config.id_base + 4 * config.backlog > 1 << 53);
        assert!(!format!("{config:?}").contains("sim-password"));
        let bad = AnaplanSimConfig {
            tenant_id: "xyz".into(),
            ..AnaplanSimConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = AnaplanSimConfig {
            late_share: 2.0,
            ..AnaplanSimConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "late_share: must be between 0 and 1"
        );
    }
}
