//! Configuration: a TOML file plus `AUDITRELAY__…` environment overrides,
//! validated into types that cannot hold an invalid setting.
//!
//! Loading never stops at the first problem: every unknown key, wrong type
//! and invalid value is collected and reported together ([`ConfigErrors`]),
//! each naming its key and where it came from (the file or an environment
//! variable). The binary exits with 78 (EX_CONFIG) on any of them.

mod load;
mod raw;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use load::{check_log_level, load, load_with_env, ConfigErrors, Problem, ENV_PREFIX};

pub use crate::enrich::EnrichConfig;
use crate::retry::BackoffPolicy;
use crate::secret::Secret;

/// Exit code for a bad configuration (sysexits.h EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state: StateConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    /// How long sinks keep draining the outbox after a stop signal.
    pub shutdown_grace: Duration,
    pub sources: Vec<SourceConfig>,
    pub sinks: Vec<SinkConfig>,
    /// A digest per `sources.ID` / `sinks.ID` of everything it is built
    /// from (settings, credentials, files it reads): a reload restarts
    /// exactly those whose digest changed.
    pub fingerprints: std::collections::BTreeMap<String, [u8; 32]>,
}

/// The state file and its bounds.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub path: PathBuf,
    /// Sources pause while the outbox holds this many events.
    pub max_outbox_events: u64,
    /// How long event ids are remembered for dedup.
    pub dedup_window: Duration,
}

/// The HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where to listen; `None`: no endpoint.
    pub listen: Option<std::net::SocketAddr>,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter directive (`info`, `auditrelay=debug,info`).
    pub level: String,
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One configured source.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Asana(AsanaConfig),
    Anaplan(AnaplanConfig),
}

impl SourceConfig {
    /// The source's id (its key in the configuration).
    pub fn id(&self) -> &str {
        match self {
            Self::Asana(c) => &c.id,
            Self::Anaplan(c) => &c.id,
        }
    }

    /// The API it polls.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Asana(_) => "asana",
            Self::Anaplan(_) => "anaplan",
        }
    }

    /// How long its API keeps events.
    pub fn retention(&self) -> Duration {
        match self {
            Self::Asana(_) => crate::asana::RETENTION,
            Self::Anaplan(_) => crate::anaplan::RETENTION,
        }
    }

    /// How recent its last successful poll must be for `/readyz`.
    pub fn ready_within(&self) -> Duration {
        match self {
            Self::Asana(c) => {
                (c.poll_interval * 3 + c.request_timeout).max(Duration::from_secs(60))
            }
            Self::Anaplan(c) => {
                (c.poll_interval * 3 + c.request_timeout).max(Duration::from_secs(60))
            }
        }
    }

    /// The credentials it holds (kept out of stored error messages).
    pub fn secrets(&self) -> Vec<&Secret> {
        match self {
            Self::Asana(c) => vec![&c.token],
            Self::Anaplan(c) => match &c.credentials {
                AnaplanCredentials::Basic { password, .. } => vec![password],
                AnaplanCredentials::Certificate { private_key, .. } => vec![private_key],
                AnaplanCredentials::Token(token) => vec![token],
            },
        }
    }
}

/// An Asana workspace's audit log.
#[derive(Debug, Clone)]
pub struct AsanaConfig {
    pub id: String,
    /// API root, `https://app.asana.com/api/1.0` by default.
    pub base_url: String,
    pub workspace_gid: String,
    /// The service account's personal access token.
    pub token: Secret,
    pub filters: AsanaFilters,
    /// `limit` of each request, 1..=100.
    pub page_size: u8,
    /// Where the first run starts.
    pub start_at: StartAt,
    /// Sleep between polls once caught up.
    pub poll_interval: Duration,
    pub request_timeout: Duration,
    /// How far before the last stored event a time-based restart begins.
    pub restart_margin: Duration,
    /// Time slices of a backlog read at once (1: a backlog is walked as one
    /// stream).
    pub parallel_slices: u32,
    /// A backlog older than this at start (first run, or after an outage)
    /// is read in parallel time slices.
    pub backfill_threshold: Duration,
    /// Backoff for transient failures.
    pub retry: BackoffPolicy,
    /// Pace of retries after failures only an operator can fix (401/403,
    /// a rejected request).
    pub slow_retry_interval: Duration,
    /// Client-side budget of every request the source makes (audit pages
    /// and user lookups), per minute.
    pub requests_per_minute: u32,
    /// User enrichment.
    pub enrich: EnrichConfig,
}

/// An Anaplan tenant's audit events (the default tenant of the login).
#[derive(Debug, Clone)]
pub struct AnaplanConfig {
    pub id: String,
    /// The token service, `https://auth.anaplan.com` by default.
    pub auth_url: String,
    /// The Audit API, `https://audit.anaplan.com/audit/api/1` by default.
    pub audit_url: String,
    /// The Integration API (users), `https://api.anaplan.com/2/0` by default.
    pub api_url: String,
    pub credentials: AnaplanCredentials,
    /// The `type` filter: `all` (default) or one family.
    pub event_type: String,
    /// `limit` of each request, 1..=10000.
    pub page_size: u32,
    /// Pages of a window requested at once, 1..=16 (default 4): once a page
    /// told the total, the pages after the cursor are requested together,
    /// and committed in offset order.
    pub parallel_pages: u32,
    /// Where the first run starts (clamped to the 30-day retention).
    pub start_at: StartAt,
    /// Sleep between polls once caught up.
    pub poll_interval: Duration,
    pub request_timeout: Duration,
    /// How far before the newest stored event each poll reads again, for
    /// events stored late (their `createdDate` after others were read).
    pub overlap: Duration,
    pub retry: BackoffPolicy,
    /// Pace of retries after failures only an operator can fix.
    pub slow_retry_interval: Duration,
    /// Client-side request budget shared by event pages and user lookups.
    pub requests_per_minute: u32,
    pub enrich: EnrichConfig,
}

/// Anaplan pages requested at once unless configured.
pub const ANAPLAN_PARALLEL_PAGES: u32 = 4;

/// Anaplan publishes no limit for its APIs; 600 requests per minute per
/// tenant is the commonly cited one (audit-apis.md §1.13).
pub const ANAPLAN_REQUESTS_PER_MINUTE: u32 = 600;

/// How the Anaplan source logs in.
#[derive(Debug, Clone)]
pub enum AnaplanCredentials {
    /// User and password, exchanged for a token.
    Basic { user: String, password: Secret },
    /// A CA-issued client certificate (PEM) and its RSA private key (PEM),
    /// signing random data to get a token.
    Certificate {
        certificate_pem: String,
        private_key: Secret,
    },
    /// A token issued elsewhere; kept alive with `/token/refresh`.
    Token(Secret),
}

/// Asana's documented limit for paid plans (the Audit Log API needs
/// Enterprise+): 1,500 requests per minute per token.
pub const ASANA_REQUESTS_PER_MINUTE: u32 = 1500;

/// Time slices of an Asana backlog read at once by default: at Asana's
/// 1,500 requests per minute and a few hundred milliseconds per request,
/// about ten requests must be in flight to use the limit; sixteen leave
/// room for slower answers and commits.
pub const DEFAULT_PARALLEL_SLICES: u32 = 16;

/// The most slices read at once (Asana allows 50 concurrent requests per
/// token, and user lookups need some).
pub const MAX_PARALLEL_SLICES: u32 = 32;

/// Asana's optional query filters. The stream's offset is bound to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AsanaFilters {
    pub event_type: Option<String>,
    pub actor_type: Option<String>,
    pub actor_gid: Option<String>,
    pub resource_gid: Option<String>,
}

impl AsanaFilters {
    /// The filters that are set, as query parameters.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("event_type", &self.event_type),
            ("actor_type", &self.actor_type),
            ("actor_gid", &self.actor_gid),
            ("resource_gid", &self.resource_gid),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
    }
}

/// Where a source's first run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// An absolute time.
    At(DateTime<Utc>),
    /// This long before the first run.
    Lookback(Duration),
}

/// One configured sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub id: String,
    /// Events per delivery (default 500; 1000 for the file sink).
    pub batch_size: usize,
    /// Backoff between failed deliveries.
    pub retry: BackoffPolicy,
    pub kind: SinkKind,
}

/// What a sink writes to.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines in a file, fsynced, rotated by size.
    File(FileSinkConfig),
    /// RFC 5424 / RFC 3164 messages over UDP, TCP or TLS.
    Syslog(crate::sink::syslog::SyslogConfig),
    /// An idempotent Kafka producer.
    Kafka(crate::sink::kafka::KafkaConfig),
}

impl SinkConfig {
    /// The longest one delivery attempt can take when the destination is
    /// slow but working: past it, the task counts as hung (watchdog).
    pub fn delivery_bound(&self) -> Duration {
        let own = match &self.kind {
            // Queueing plus delivery.timeout.ms, and a record retried alone.
            SinkKind::Kafka(kafka) => kafka.message_timeout * 2 + Duration::from_secs(60),
            SinkKind::Syslog(syslog) => syslog.timeout + Duration::from_secs(60),
            SinkKind::Stdout | SinkKind::File(_) => Duration::ZERO,
        };
        own.max(Duration::from_secs(600))
    }

    /// The credentials it holds (Kafka properties may hold passwords).
    pub fn secrets(&self) -> Vec<&Secret> {
        match &self.kind {
            SinkKind::Kafka(kafka) => kafka.properties.iter().map(|(_, v)| v).collect(),
            _ => Vec::new(),
        }
    }
}

impl SinkKind {
    /// The kind's name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::File(_) => "file",
            Self::Syslog(_) => "syslog",
            Self::Kafka(_) => "kafka",
        }
    }
}

/// The file sink's settings.
#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    /// Rotate before the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` … `path.N`).
    pub max_files: u32,
}
