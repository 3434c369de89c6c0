//! Simulator configuration and the `auditrelay simulate` command-line flags.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::anaplan::AnaplanSimArgs;
use super::Faults;

/// Everything that shapes a simulator instance. Two instances with equal `seed`, `epoch`,
/// `workspaces` and timeline settings serve the same events and accept each other's offsets.
#[derive(Clone)]
pub struct SimConfig {
    /// Seed of the event stream and of the offset signing key.
    pub seed: u64,
    /// Workspace gids served; any other gid gets 404.
    pub workspaces: Vec<String>,
    /// Service-account tokens accepted by the audit endpoint.
    pub tokens: Vec<String>,
    /// Valid tokens that are not service accounts: they get 403.
    pub non_service_tokens: Vec<String>,
    /// Gids of users that still appear in events but are deleted: `GET /users/{gid}` gives
    /// 404 for them.
    pub deleted_users: Vec<String>,
    /// End of the backlog and start of live events.
    pub epoch: DateTime<Utc>,
    /// Events per workspace spread evenly over `backlog_span`, ending at `epoch`.
    pub backlog: u64,
    /// Time span of the backlog, ending at `epoch`.
    pub backlog_span: Duration,
    /// Live events per second per workspace after `epoch` (0 disables them).
    pub rate: f64,
    /// Stop live events after this many per workspace.
    pub max_live: Option<u64>,
    /// Requests per token in any 60-second window (rejected requests count too).
    pub rate_limit_per_minute: u32,
    /// In-flight requests allowed per token.
    pub max_concurrent: u32,
    /// Offsets older than this (simulated time) are rejected.
    pub offset_ttl: Duration,
    /// Events older than this (simulated time) are never served.
    pub retention: Duration,
    /// Page size when the request has no `limit`.
    pub default_limit: u32,
    /// Faults active from the start; they can be changed at run time.
    pub faults: Faults,
}

/// Formats a list of tokens as its length only, so `{:?}` never prints a token.
struct Redacted<'a>(&'a [String]);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} redacted]", self.0.len())
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("seed", &self.seed)
            .field("workspaces", &self.workspaces)
            .field("tokens", &Redacted(&self.tokens))
            .field("non_service_tokens", &Redacted(&self.non_service_tokens))
            .field("deleted_users", &self.deleted_users)
            .field("epoch", &self.epoch)
            .field("backlog", &self.backlog)
            .field("backlog_span", &self.backlog_span)
            .field("rate", &self.rate)
            .field("max_live", &self.max_live)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("max_concurrent", &self.max_concurrent)
            .field("offset_ttl", &self.offset_ttl)
            .field("retention", &self.retention)
            .field("default_limit", &self.default_limit)
            .field("faults", &self.faults)
            .finish()
    }
}

/// Asana's documented retention: 90 days.
const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            workspaces: vec!["1200000000000000".to_string()],
            tokens: vec!["sim-token".to_string()],
            non_service_tokens: Vec::new(),
            deleted_users: Vec::new(),
            epoch: Utc::now(),
            backlog: 1000,
            backlog_span: Duration::from_secs(3600),
            rate: 1.0,
            max_live: None,
            rate_limit_per_minute: 1500,
            max_concurrent: 50,
            offset_ttl: Duration::from_secs(3600),
            retention: RETENTION,
            default_limit: 1000,
            faults: Faults::default(),
        }
    }
}

fn parse_probability(value: &str) -> Result<f64, String> {
    let rate: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be between 0 and 1".to_string())
    }
}

fn parse_rfc3339(value: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(value).map(|t| t.with_timezone(&Utc))
}

/// Flags of `auditrelay simulate`.
#[derive(Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Seed of the event stream and of the offset signing key.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// End of the backlog, RFC 3339 (default: now). Reuse it with the same seed to get the
    /// same stream after a restart.
    #[arg(long, value_parser = parse_rfc3339)]
    epoch: Option<DateTime<Utc>>,
    /// Workspace gid to serve (repeatable; default 1200000000000000).
    #[arg(long = "workspace")]
    workspaces: Vec<String>,
    /// Service-account token to accept (repeatable; default sim-token).
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// Token that is valid but not a service account, answered with 403 (repeatable).
    #[arg(long = "non-service-token")]
    non_service_tokens: Vec<String>,
    /// Gid of a user that appears in events but is deleted: `GET /users/{gid}` gives 404
    /// (repeatable; the pool users are 1200000000100001 to 1200000000100050).
    #[arg(long = "deleted-user")]
    deleted_users: Vec<String>,
    /// Backlog events per workspace.
    #[arg(long = "events", default_value_t = 1000)]
    backlog: u64,
    /// Time span of the backlog, ending at the epoch.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    backlog_span: Duration,
    /// Live events per second per workspace.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Stop after this many live events per workspace.
    #[arg(long)]
    max_live: Option<u64>,
    /// Requests per minute per token.
    #[arg(long, default_value_t = 1500)]
    rate_limit: u32,
    /// In-flight requests per token.
    #[arg(long, default_value_t = 50)]
    max_concurrent: u32,
    /// Lifetime of pagination offsets.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    offset_ttl: Duration,
    /// Added latency per request.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Share of requests answered with 500/502/503/504.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    error_rate: f64,
    /// Share of 200 responses with a truncated body.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    truncate_rate: f64,
    /// Share of requests that add a late-arriving event.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    late_rate: f64,
    /// Share of pages that repeat an event of the previous page.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    duplicate_rate: f64,
    // Boxed: it would double the size of the `simulate` command otherwise.
    #[command(flatten)]
    anaplan: Box<AnaplanSimArgs>,
}

/// Shows the resulting configuration, which redacts the tokens.
impl fmt::Debug for SimArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimArgs")
            .field("listen", &self.listen)
            .field("config", &self.to_config())
            .field("anaplan", &self.anaplan)
            .finish()
    }
}

impl SimArgs {
    /// The address to bind.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The `--anaplan-*` flags (the Anaplan simulator runs only with `--anaplan-listen`).
    pub fn anaplan(&self) -> &AnaplanSimArgs {
        &self.anaplan
    }

    /// The simulator configuration these flags describe (unset flags take the defaults of
    /// [`SimConfig::default`]).
    pub fn to_config(&self) -> SimConfig {
        let defaults = SimConfig::default();
        let or_default = |given: &Vec<String>, default: Vec<String>| {
            if given.is_empty() {
                default
            } else {
                given.clone()
            }
        };
        SimConfig {
            seed: self.seed,
            workspaces: or_default(&self.workspaces, defaults.workspaces),
            tokens: or_default(&self.tokens, defaults.tokens),
            non_service_tokens: self.non_service_tokens.clone(),
            deleted_users: self.deleted_users.clone(),
            epoch: self.epoch.unwrap_or(defaults.epoch),
            backlog: self.backlog,
            backlog_span: self.backlog_span,
            rate: self.rate,
            max_live: self.max_live,
            rate_limit_per_minute: self.rate_limit,
            max_concurrent: self.max_concurrent,
            offset_ttl: self.offset_ttl,
            retention: defaults.retention,
            default_limit: defaults.default_limit,
            faults: Faults {
                latency: self.latency,
                error_rate: self.error_rate,
                truncate_rate: self.truncate_rate,
                late_rate: self.late_rate,
                duplicate_rate: self.duplicate_rate,
                ..Faults::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn flags_map_onto_the_config() {
        let cli = Cli::try_parse_from([
            "simulate",
            "--listen",
            "127.0.0.1:9000",
            "--seed",
            "7",
            "--epoch",
            "2026-01-05T10:00:00Z",
            "--workspace",
            "1",
            "--workspace",
            "2",
            "--events",
            "5",
            "--backlog-span",
            "2h",
            "--late-rate",
            "0.5",
        ])
        .unwrap();
        assert_eq!(cli.sim.listen(), "127.0.0.1:9000".parse().unwrap());
        let config = cli.sim.to_config();
        assert_eq!(config.seed, 7);
        assert_eq!(config.epoch.to_rfc3339(), "2026-01-05T10:00:00+00:00");
        assert_eq!(config.workspaces, ["1", "2"]);
        assert_eq!(config.tokens, ["sim-token"]);
        assert_eq!(config.backlog, 5);
        assert_eq!(config.backlog_span, Duration::from_secs(7200));
        assert_eq!(config.faults.late_rate, 0.5);
        assert!(Cli::try_parse_from(["simulate", "--error-rate", "2"]).is_err());
        let config = Cli::try_parse_from(["simulate", "--token", "secret-one"])
            .unwrap()
            .sim
            .to_config();
        assert_eq!(config.tokens, ["secret-one"]);
        assert!(!format!("{config:?}").contains("secret-one"));

        let cli = Cli::try_parse_from(["simulate"]).unwrap();
        assert_eq!(cli.sim.anaplan().listen(), None);
        let cli = Cli::try_parse_from([
            "simulate",
            "--seed",
            "9",
            "--anaplan-listen",
            "127.0.0.1:9001",
            "--anaplan-token-ttl",
            "2s",
            "--anaplan-events",
            "7",
        ])
        .unwrap();
        let anaplan = cli.sim.anaplan();
        assert_eq!(anaplan.listen(), Some("127.0.0.1:9001".parse().unwrap()));
        let config = cli.sim.to_config();
        let anaplan = anaplan.to_config(config.seed, config.epoch);
        assert_eq!(anaplan.seed, 9);
        assert_eq!(anaplan.backlog, 7);
        assert_eq!(anaplan.token_ttl, Duration::from_secs(2));
        assert_eq!(anaplan.epoch, config.epoch);
    }
}
