//! Reading, layering and validating the configuration.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::raw;
use super::{
    AnaplanConfig, AnaplanCredentials, AsanaConfig, AsanaFilters, Config, EnrichConfig,
    FileSinkConfig, HttpConfig, LogConfig, LogFormat, SinkConfig, SinkKind, SourceConfig, StartAt,
    StateConfig, ASANA_REQUESTS_PER_MINUTE, DEFAULT_PARALLEL_SLICES, MAX_PARALLEL_SLICES,
};
use crate::retry::BackoffPolicy;
use crate::secret::Secret;
use crate::sink::kafka::KafkaConfig;
use crate::sink::syslog::{Format, Header, SyslogConfig, TlsOptions, Transport};

/// Environment variables with this prefix override file keys:
/// `AUDITRELAY__SOURCES__MAIN__POLL_INTERVAL=10s` sets
/// `sources.main.poll_interval`.
pub const ENV_PREFIX: &str = "AUDITRELAY";
const ENV_SEPARATOR: &str = "__";
/// Events per delivery when a sink does not say.
const BATCH_SIZE: usize = 500;
/// The same for the file and Kafka sinks.
const LARGE_BATCH_SIZE: usize = 1000;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`sources.main.page_size`), or empty for the whole file.
    pub key: String,
    /// What is wrong, without the key.
    pub message: String,
    /// Where the value came from, when it matters.
    pub origin: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.key, self.message)?;
        }
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        Ok(())
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration {}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads `path` with overrides from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, std::env::vars().collect())
}

/// Loads `path` with overrides from `env` (all variables; those without
/// the prefix are ignored, except the ones a `token_env` names).
pub fn load_with_env(path: &Path, env: HashMap<String, String>) -> Result<Config, ConfigErrors> {
    let mut loader = Loader {
        file: path.to_path_buf(),
        env,
        problems: Vec::new(),
    };
    let config = loader.load();
    match config {
        Some(config) if loader.problems.is_empty() => Ok(config),
        _ => Err(ConfigErrors {
            file: path.to_path_buf(),
            problems: loader.problems,
        }),
    }
}

/// A table's settings as JSON with sorted keys, for [`fingerprint`].
fn shape_of(value: &config::Value) -> serde_json::Value {
    value
        .clone()
        .try_deserialize::<serde_json::Value>()
        .unwrap_or(serde_json::Value::Null)
}

/// A digest of everything a source or sink is built from: its settings,
/// the credentials they resolved to, and the contents of the files they
/// name (`*_file` keys, Kafka `*.location` properties), so that a reload
/// restarts it when a token or a certificate on disk was rotated. Kept in
/// memory only.
fn fingerprint(shape: &serde_json::Value, secrets: &[&Secret]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(shape.to_string().as_bytes());
    for secret in secrets {
        hasher.update(b"\0secret\0");
        hasher.update(secret.expose().as_bytes());
    }
    let mut files = Vec::new();
    collect_files(shape, &mut files);
    files.sort();
    for path in files {
        hasher.update(b"\0file\0");
        hasher.update(path.as_bytes());
        match std::fs::read(&path) {
            Ok(contents) => hasher.update(&contents),
            Err(_) => hasher.update(b"\0unreadable"),
        }
    }
    hasher.finalize().into()
}

fn collect_files(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value {
                    serde_json::Value::String(path)
                        if key.ends_with("_file") || key.ends_with(".location") =>
                    {
                        out.push(path.clone());
                    }
                    other => collect_files(other, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_files(item, out);
            }
        }
        _ => {}
    }
}

/// Where a token may come from; exactly one must be set.
struct TokenSource {
    inline: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
    credential: Option<String>,
}

struct Loader {
    file: PathBuf,
    env: HashMap<String, String>,
    problems: Vec<Problem>,
}

impl Loader {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let origin = self.origin_of(&key);
        self.problems.push(Problem {
            key,
            message: message.into(),
            origin,
        });
    }

    /// Names the environment variable behind `key` when one is set.
    fn origin_of(&self, key: &str) -> Option<String> {
        if key.is_empty() {
            return None;
        }
        let var = format!(
            "{ENV_PREFIX}{ENV_SEPARATOR}{}",
            key.replace('.', ENV_SEPARATOR).to_uppercase()
        );
        self.env
            .contains_key(&var)
            .then(|| format!("environment variable {var}"))
    }

    fn load(&mut self) -> Option<Config> {
        let prefixed: config::Map<String, String> = self
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let built = config::Config::builder()
            .add_source(
                config::File::from(self.file.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            )
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .separator(ENV_SEPARATOR)
                    .source(Some(prefixed)),
            )
            .build();
        let built = match built {
            Ok(built) => built,
            Err(e) => {
                // Without the source excerpt the TOML parser adds: the
                // offending line may hold a token.
                self.problem(
                    "",
                    format!(
                        "cannot read the configuration: {}",
                        without_excerpt(&e.to_string())
                    ),
                );
                return None;
            }
        };
        let root: raw::Root = self.deserialize(built.cache, "")?;

        let state = self.state(root.state);
        let log = self.log(root.log);
        let mut sources = Vec::new();
        if root.sources.is_empty() {
            self.problem("sources", "at least one source is required");
        }
        let mut fingerprints = BTreeMap::new();
        for (id, value) in root.sources {
            self.check_id("sources", &id);
            let shape = shape_of(&value);
            if let Some(source) = self.source(&id, value) {
                fingerprints.insert(
                    format!("sources.{id}"),
                    fingerprint(&shape, &source.secrets()),
                );
                sources.push(source);
            }
        }
        let mut sinks = Vec::new();
        if root.sinks.is_empty() {
            self.problem("sinks", "at least one sink is required");
        }
        for (id, value) in root.sinks {
            self.check_id("sinks", &id);
            let shape = shape_of(&value);
            if let Some(sink) = self.sink(&id, value) {
                fingerprints.insert(format!("sinks.{id}"), fingerprint(&shape, &sink.secrets()));
                sinks.push(sink);
            }
        }
        self.cross_checks(&state, &sources, &sinks);
        let http = self.http(root.http);
        Some(Config {
            state,
            log: log?,
            http,
            shutdown_grace: root.shutdown_grace.unwrap_or(Duration::from_secs(10)),
            sources,
            sinks,
            fingerprints,
        })
    }

    /// Deserializes `value` (found at `prefix`), recording every error.
    ///
    /// serde stops at the first error, so after each one the offending key
    /// is removed and deserialization runs again, until it succeeds or an
    /// error cannot be attributed to a removable key. What parses in the end
    /// is returned so that the rest can be checked too; the recorded
    /// problems still fail the load.
    fn deserialize<T: DeserializeOwned>(
        &mut self,
        mut value: config::Value,
        prefix: &str,
    ) -> Option<T> {
        for _ in 0..64 {
            match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(parsed) => return Some(parsed),
                Err(error) => {
                    let path: Vec<String> = error
                        .path()
                        .iter()
                        .filter_map(|segment| match segment {
                            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                            serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                            _ => None,
                        })
                        .collect();
                    let key = join_key(prefix, &path.join("."));
                    self.problem(key, describe(error.inner()));
                    if path.is_empty() || !remove_path(&mut value, &path) {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Reads systemd credential `name` from `$CREDENTIALS_DIRECTORY`
    /// (`LoadCredential=` / `SetCredentialEncrypted=` in the unit).
    fn credential(&mut self, field: &str, name: &str) -> Option<String> {
        let valid = !name.is_empty()
            && name.len() <= 255
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | ':'))
            && name != "."
            && name != "..";
        if !valid {
            // Possibly the secret itself pasted here: not printed back.
            self.problem(
                field,
                "must be a credential name (letters, digits, '_', '-', '.', '@', ':')",
            );
            return None;
        }
        let Some(dir) = self.env.get("CREDENTIALS_DIRECTORY").cloned() else {
            self.problem(
                field,
                format!("credential {name:?} needs $CREDENTIALS_DIRECTORY, which is not set: run under systemd with LoadCredential={name}:PATH"),
            );
            return None;
        };
        let path = Path::new(&dir).join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) => {
                self.problem(
                    field,
                    format!(
                        "cannot read credential {name:?} from {}: {e}",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    fn check_id(&mut self, section: &str, id: &str) {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            self.problem(
                format!("{section}.{id}"),
                "ids may use only lowercase letters, digits, '_' and '-' (at most 64)",
            );
        }
    }

    fn state(&mut self, raw: raw::State) -> StateConfig {
        let max_outbox_events = raw.max_outbox_events.unwrap_or(1_000_000);
        if max_outbox_events == 0 {
            self.problem("state.max_outbox_events", "must be at least 1");
        }
        let dedup_window = raw.dedup_window.unwrap_or(Duration::from_secs(24 * 3600));
        StateConfig {
            path: raw
                .path
                .unwrap_or_else(|| PathBuf::from("/var/lib/auditrelay/state.db")),
            max_outbox_events,
            dedup_window,
        }
    }

    fn http(&mut self, raw: raw::Http) -> HttpConfig {
        let listen = raw.listen.and_then(|listen| match listen.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    "http.listen",
                    format!("{listen:?} is not an address and port such as \"127.0.0.1:9464\" or \"[::]:9464\""),
                );
                None
            }
        });
        HttpConfig { listen }
    }

    fn log(&mut self, raw: raw::Log) -> Option<LogConfig> {
        let level = raw.level.unwrap_or_else(|| "info".to_string());
        if let Err(message) = check_log_level(&level) {
            self.problem("log.level", message);
        }
        let format = match raw.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.problem(
                    "log.format",
                    format!("{other:?} is not one of \"text\", \"json\""),
                );
                return None;
            }
        };
        Some(LogConfig { level, format })
    }

    fn kind_of(&mut self, key: &str, value: &config::Value) -> Option<String> {
        let kind = match &value.kind {
            config::ValueKind::Table(table) => table.get("kind").cloned(),
            _ => {
                self.problem(key, "expected a table");
                return None;
            }
        };
        match kind.map(|k| k.kind) {
            Some(config::ValueKind::String(kind)) => Some(kind),
            Some(_) => {
                self.problem(format!("{key}.kind"), "expected a string");
                None
            }
            None => {
                self.problem(format!("{key}.kind"), "missing");
                None
            }
        }
    }

    fn source(&mut self, id: &str, value: config::Value) -> Option<SourceConfig> {
        let key = format!("sources.{id}");
        match self.kind_of(&key, &value)?.as_str() {
            "asana" => {
                let raw: raw::Asana = self.deserialize(value, &key)?;
                self.asana(id, &key, raw).map(SourceConfig::Asana)
            }
            "anaplan" => {
                let raw: raw::Anaplan = self.deserialize(value, &key)?;
                self.anaplan(id, &key, raw).map(SourceConfig::Anaplan)
            }
            other => {
                self.problem(
                    format!("{key}.kind"),
                    format!("unknown source kind {other:?} (known: \"asana\", \"anaplan\")"),
                );
                None
            }
        }
    }

    fn url(&mut self, key: &str, field: &str, value: Option<String>, default: &str) -> String {
        let value = value.unwrap_or_else(|| default.to_string());
        match reqwest::Url::parse(&value) {
            Ok(url) if !url.username().is_empty() || url.password().is_some() => self.problem(
                format!("{key}.{field}"),
                "must not hold credentials (they would be logged with errors)",
            ),
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => self.problem(
                format!("{key}.{field}"),
                "must be an http:// or https:// URL",
            ),
            Err(e) => self.problem(
                format!("{key}.{field}"),
                format!("{value:?} is not a URL: {e}"),
            ),
        }
        value.trim_end_matches('/').to_string()
    }

    fn start_at(&mut self, key: &str, text: Option<&str>) -> StartAt {
        match text {
            None => StartAt::Lookback(Duration::from_secs(7 * 24 * 3600)),
            Some(text) => match parse_start_at(text) {
                Ok(start) => start,
                Err(message) => {
                    self.problem(format!("{key}.start_at"), message);
                    StartAt::Lookback(Duration::ZERO)
                }
            },
        }
    }

    fn anaplan(&mut self, id: &str, key: &str, raw: raw::Anaplan) -> Option<AnaplanConfig> {
        let auth_url = self.url(key, "auth_url", raw.auth_url, "https://auth.anaplan.com");
        let audit_url = self.url(
            key,
            "audit_url",
            raw.audit_url,
            "https://audit.anaplan.com/audit/api/1",
        );
        let api_url = self.url(key, "api_url", raw.api_url, "https://api.anaplan.com/2/0");
        let basic = raw.user.is_some()
            || raw.password.is_some()
            || raw.password_file.is_some()
            || raw.password_env.is_some()
            || raw.password_credential.is_some();
        let certificate = raw.certificate_file.is_some()
            || raw.private_key.is_some()
            || raw.private_key_file.is_some()
            || raw.private_key_env.is_some()
            || raw.private_key_credential.is_some();
        let token = raw.token.is_some()
            || raw.token_file.is_some()
            || raw.token_env.is_some()
            || raw.token_credential.is_some();
        let credentials = match (basic, certificate, token) {
            (true, false, false) => {
                let user = raw.user.unwrap_or_default();
                if user.is_empty() {
                    self.problem(
                        format!("{key}.user"),
                        "required with a password: the login (an e-mail address)",
                    );
                }
                let password = self.secret(
                    key,
                    "password",
                    TokenSource {
                        inline: raw.password,
                        file: raw.password_file,
                        env: raw.password_env,
                        credential: raw.password_credential,
                    },
                );
                password.map(|(_, password)| AnaplanCredentials::Basic { user, password })
            }
            (false, true, false) => {
                let certificate_pem = match &raw.certificate_file {
                    None => {
                        self.problem(
                            format!("{key}.certificate_file"),
                            "required with a private key: the CA-issued certificate (PEM)",
                        );
                        None
                    }
                    Some(path) => match std::fs::read_to_string(path) {
                        // A combined certificate and key file is fine: only
                        // the certificates are kept (the key must never
                        // travel in the login header).
                        Ok(text) if crate::anaplan::auth::certificates_only(&text).is_some() => {
                            crate::anaplan::auth::certificates_only(&text)
                        }
                        Ok(_) => {
                            self.problem(
                                format!("{key}.certificate_file"),
                                format!("{} holds no PEM certificate", path.display()),
                            );
                            None
                        }
                        Err(e) => {
                            self.problem(
                                format!("{key}.certificate_file"),
                                format!("cannot read {}: {e}", path.display()),
                            );
                            None
                        }
                    },
                };
                let key_given = self.secret(
                    key,
                    "private_key",
                    TokenSource {
                        inline: raw.private_key,
                        file: raw.private_key_file,
                        env: raw.private_key_env,
                        credential: raw.private_key_credential,
                    },
                );
                let private_key = key_given.and_then(|(field, private_key)| {
                    match crate::anaplan::auth::load_private_key(private_key.expose()) {
                        Ok(_) => Some(private_key),
                        Err(message) => {
                            self.problem(format!("{key}.{field}"), message);
                            None
                        }
                    }
                });
                match (certificate_pem, private_key) {
                    (Some(certificate_pem), Some(private_key)) => {
                        Some(AnaplanCredentials::Certificate {
                            certificate_pem,
                            private_key,
                        })
                    }
                    _ => None,
                }
            }
            (false, false, true) => self
                .token(
                    key,
                    TokenSource {
                        inline: raw.token,
                        file: raw.token_file,
                        env: raw.token_env,
                        credential: raw.token_credential,
                    },
                )
                .map(AnaplanCredentials::Token),
            (false, false, false) => {
                self.problem(key, "credentials are required: `user` with a `password*`, or `certificate_file` with a `private_key*`, or a `token*`");
                None
            }
            _ => {
                self.problem(key, "choose one way to log in: `user`/`password*`, `certificate_file`/`private_key*`, or `token*`");
                None
            }
        };
        let event_type = raw.event_type.unwrap_or_else(|| "all".to_string());
        // The API treats an unknown value as "all" without a word: a typo
        // would silently widen the stream.
        const TYPES: [&str; 9] = [
            "all",
            "user_activity",
            "access_control",
            "byok",
            "int",
            "conn_mgmt",
            "comment",
            "plan_iq",
            "forecaster",
        ];
        if !TYPES.contains(&event_type.as_str()) {
            self.problem(
                format!("{key}.event_type"),
                format!("{event_type:?} is not one of {TYPES:?}"),
            );
        }
        let page_size = raw.page_size.unwrap_or(1000);
        if !(1..=10_000).contains(&page_size) {
            self.problem(
                format!("{key}.page_size"),
                format!("{page_size} is outside 1..=10000"),
            );
        }
        let parallel_pages = raw
            .parallel_pages
            .unwrap_or(crate::config::ANAPLAN_PARALLEL_PAGES);
        if !(1..=16).contains(&parallel_pages) {
            self.problem(
                format!("{key}.parallel_pages"),
                format!("{parallel_pages} is outside 1..=16"),
            );
        }
        let start_at = self.start_at(key, raw.start_at.as_deref());
        let poll_interval = self.positive(key, "poll_interval", raw.poll_interval, 60);
        let request_timeout = self.positive(key, "request_timeout", raw.request_timeout, 60);
        let slow_retry_interval =
            self.positive(key, "slow_retry_interval", raw.slow_retry_interval, 300);
        let overlap = raw.overlap.unwrap_or(Duration::from_secs(600));
        if overlap > Duration::from_secs(24 * 3600) {
            self.problem(format!("{key}.overlap"), "at most 1d");
        } else if overlap.is_zero() {
            self.problem(
                format!("{key}.overlap"),
                "must be longer than zero: events Anaplan stores late would be missed",
            );
        }
        let retry = self.backoff(key, raw.retry_initial, raw.retry_max);
        let requests_per_minute = raw
            .requests_per_minute
            .unwrap_or(crate::config::ANAPLAN_REQUESTS_PER_MINUTE);
        if requests_per_minute == 0 {
            self.problem(format!("{key}.requests_per_minute"), "must be at least 1");
        }
        let enrich = self.enrich(key, raw.enrich);
        Some(AnaplanConfig {
            id: id.to_string(),
            auth_url,
            audit_url,
            api_url,
            credentials: credentials?,
            event_type,
            page_size,
            parallel_pages,
            start_at,
            poll_interval,
            request_timeout,
            overlap,
            retry,
            slow_retry_interval,
            requests_per_minute,
            enrich,
        })
    }

    fn asana(&mut self, id: &str, key: &str, raw: raw::Asana) -> Option<AsanaConfig> {
        let token = self.token(
            key,
            TokenSource {
                inline: raw.token,
                file: raw.token_file,
                env: raw.token_env,
                credential: raw.token_credential,
            },
        );
        let base_url = raw
            .base_url
            .unwrap_or_else(|| "https://app.asana.com/api/1.0".to_string());
        match reqwest::Url::parse(&base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => self.problem(
                format!("{key}.base_url"),
                "must be an http:// or https:// URL",
            ),
            Err(e) => self.problem(
                format!("{key}.base_url"),
                format!("{base_url:?} is not a URL: {e}"),
            ),
        }
        let workspace_gid = raw.workspace_gid.unwrap_or_default();
        if workspace_gid.is_empty() || !workspace_gid.chars().all(|c| c.is_ascii_digit()) {
            self.problem(
                format!("{key}.workspace_gid"),
                "required: the numeric gid of the Asana organization",
            );
        }
        let page_size = raw.page_size.unwrap_or(100);
        if !(1..=100).contains(&page_size) {
            self.problem(
                format!("{key}.page_size"),
                format!("{page_size} is outside 1..=100 (Asana's limit range)"),
            );
        }
        let start_at = match raw.start_at.as_deref() {
            None => StartAt::Lookback(Duration::from_secs(7 * 24 * 3600)),
            Some(text) => match parse_start_at(text) {
                Ok(start) => start,
                Err(message) => {
                    self.problem(format!("{key}.start_at"), message);
                    StartAt::Lookback(Duration::ZERO)
                }
            },
        };
        let poll_interval = self.positive(key, "poll_interval", raw.poll_interval, 30);
        let request_timeout = self.positive(key, "request_timeout", raw.request_timeout, 30);
        let slow_retry_interval =
            self.positive(key, "slow_retry_interval", raw.slow_retry_interval, 300);
        let retry = self.backoff(key, raw.retry_initial, raw.retry_max);
        let filters = AsanaFilters {
            event_type: raw.filters.event_type,
            actor_type: raw.filters.actor_type,
            actor_gid: raw.filters.actor_gid,
            resource_gid: raw.filters.resource_gid,
        };
        if let Some(actor_type) = &filters.actor_type {
            const ACTOR_TYPES: [&str; 5] = [
                "user",
                "asana",
                "asana_support",
                "anonymous",
                "external_administrator",
            ];
            if !ACTOR_TYPES.contains(&actor_type.as_str()) {
                self.problem(
                    format!("{key}.filters.actor_type"),
                    format!("{actor_type:?} is not one of {ACTOR_TYPES:?}"),
                );
            }
        }
        let requests_per_minute = raw.requests_per_minute.unwrap_or(ASANA_REQUESTS_PER_MINUTE);
        if requests_per_minute == 0 {
            self.problem(format!("{key}.requests_per_minute"), "must be at least 1");
        }
        let parallel_slices = raw.parallel_slices.unwrap_or(DEFAULT_PARALLEL_SLICES);
        if !(1..=MAX_PARALLEL_SLICES).contains(&parallel_slices) {
            self.problem(
                format!("{key}.parallel_slices"),
                format!("{parallel_slices} is outside 1..={MAX_PARALLEL_SLICES}"),
            );
        }
        let backfill_threshold =
            self.positive(key, "backfill_threshold", raw.backfill_threshold, 3600);
        let enrich = self.enrich(key, raw.enrich);
        Some(AsanaConfig {
            id: id.to_string(),
            base_url,
            workspace_gid,
            token: token?,
            filters,
            page_size: u8::try_from(page_size).unwrap_or(100),
            start_at,
            poll_interval,
            request_timeout,
            restart_margin: raw.restart_margin.unwrap_or(Duration::from_secs(300)),
            parallel_slices,
            backfill_threshold,
            retry,
            slow_retry_interval,
            requests_per_minute,
            enrich,
        })
    }

    /// `[{key}.enrich]`, for any source kind.
    fn enrich(&mut self, key: &str, raw: raw::Enrich) -> EnrichConfig {
        let defaults = EnrichConfig::default();
        let key = format!("{key}.enrich");
        let ttl = self.positive(&key, "ttl", raw.ttl, defaults.ttl.as_secs());
        let negative_ttl = self.positive(
            &key,
            "negative_ttl",
            raw.negative_ttl,
            defaults.negative_ttl.as_secs(),
        );
        let bound = raw.bound.unwrap_or(defaults.bound);
        if bound.is_zero() || bound > MAX_ENRICH_BOUND {
            self.problem(
                format!("{key}.bound"),
                format!(
                    "{} is outside (0s, {}]: it holds back each page's commit",
                    humantime::format_duration(bound),
                    humantime::format_duration(MAX_ENRICH_BOUND)
                ),
            );
        }
        EnrichConfig {
            enabled: raw.enabled.unwrap_or(defaults.enabled),
            ttl,
            negative_ttl,
            bound,
        }
    }

    /// Resolves exactly one of `token`, `token_file`, `token_env`,
    /// `token_credential`, and checks it fits in an HTTP header.
    fn token(&mut self, key: &str, given: TokenSource) -> Option<Secret> {
        let (field, value) = self.secret(key, "token", given)?;
        // Caught here rather than on every request (and never echoed).
        if reqwest::header::HeaderValue::from_str(&format!("Bearer {}", value.expose())).is_err() {
            self.problem(
                format!("{key}.{field}"),
                "the token contains characters not allowed in an HTTP header",
            );
            return None;
        }
        Some(value)
    }

    /// Resolves exactly one of `NAME`, `NAME_file`, `NAME_env`,
    /// `NAME_credential` (a token, a password, a private key).
    /// Returns the key it came from (`token_env`, ...) with it.
    fn secret(&mut self, key: &str, name: &str, given: TokenSource) -> Option<(String, Secret)> {
        let one_of = format!("`{name}`, `{name}_file`, `{name}_env` or `{name}_credential`");
        let TokenSource {
            inline,
            file,
            env,
            credential,
        } = given;
        let count = usize::from(inline.is_some())
            + usize::from(file.is_some())
            + usize::from(env.is_some())
            + usize::from(credential.is_some());
        if count != 1 {
            self.problem(
                key,
                if count == 0 {
                    format!("one of {one_of} is required")
                } else {
                    format!("set only one of {one_of}")
                },
            );
            return None;
        }
        let (field, value) = if let Some(value) = inline {
            (name.to_string(), value)
        } else if let Some(path) = file {
            let field = format!("{name}_file");
            match std::fs::read_to_string(&path) {
                Ok(text) => (field, text.trim().to_string()),
                Err(e) => {
                    self.problem(
                        format!("{key}.{field}"),
                        // The path is not repeated: a secret pasted here by
                        // mistake would be printed back.
                        format!("cannot read the file: {e}"),
                    );
                    return None;
                }
            }
        } else if let Some(credential) = credential {
            let field = format!("{name}_credential");
            let value = self.credential(&format!("{key}.{field}"), &credential)?;
            (field, value)
        } else {
            let field = format!("{name}_env");
            let var = env.unwrap_or_default();
            match self.env.get(&var) {
                Some(value) => (field, value.trim().to_string()),
                None => {
                    self.problem(
                        format!("{key}.{field}"),
                        if is_env_name(&var) {
                            format!("environment variable {var:?} is not set")
                        } else {
                            // Not a variable name; maybe the secret itself,
                            // so it is not printed back.
                            "must name an environment variable (letters, digits and '_')"
                                .to_string()
                        },
                    );
                    return None;
                }
            }
        };
        if value.is_empty() {
            self.problem(format!("{key}.{field}"), format!("the {name} is empty"));
            return None;
        }
        Some((field, Secret::new(value)))
    }

    fn positive(
        &mut self,
        key: &str,
        field: &str,
        value: Option<Duration>,
        default_secs: u64,
    ) -> Duration {
        let value = value.unwrap_or(Duration::from_secs(default_secs));
        if value.is_zero() {
            self.problem(format!("{key}.{field}"), "must be longer than zero");
        }
        value
    }

    fn backoff(
        &mut self,
        key: &str,
        initial: Option<Duration>,
        max: Option<Duration>,
    ) -> BackoffPolicy {
        let policy = BackoffPolicy {
            initial: initial.unwrap_or(BackoffPolicy::default().initial),
            max: max.unwrap_or(BackoffPolicy::default().max),
        };
        if policy.initial.is_zero() {
            self.problem(format!("{key}.retry_initial"), "must be longer than zero");
        }
        if policy.initial > policy.max {
            self.problem(
                format!("{key}.retry_max"),
                format!(
                    "{} is shorter than retry_initial ({})",
                    humantime::format_duration(policy.max),
                    humantime::format_duration(policy.initial)
                ),
            );
        }
        policy
    }

    fn sink(&mut self, id: &str, value: config::Value) -> Option<SinkConfig> {
        let key = format!("sinks.{id}");
        let kind = self.kind_of(&key, &value)?;
        let (batch_size, retry_initial, retry_max, kind) = match kind.as_str() {
            "stdout" => {
                let raw: raw::StdoutSink = self.deserialize(value, &key)?;
                (
                    raw.batch_size,
                    raw.retry_initial,
                    raw.retry_max,
                    SinkKind::Stdout,
                )
            }
            "file" => {
                let raw: raw::FileSink = self.deserialize(value, &key)?;
                let max_bytes = raw.max_bytes.unwrap_or(100 << 20);
                if max_bytes < 1024 {
                    self.problem(format!("{key}.max_bytes"), "must be at least 1KiB");
                }
                let max_files = raw.max_files.unwrap_or(10);
                if max_files == 0 {
                    self.problem(format!("{key}.max_files"), "must be at least 1");
                }
                let Some(path) = raw.path else {
                    self.problem(format!("{key}.path"), "required: the file to write");
                    return None;
                };
                let file = FileSinkConfig {
                    path,
                    max_bytes,
                    max_files,
                };
                (
                    raw.batch_size,
                    raw.retry_initial,
                    raw.retry_max,
                    SinkKind::File(file),
                )
            }
            "syslog" => {
                let raw: raw::SyslogSink = self.deserialize(value, &key)?;
                let config = self.syslog(&key, &raw);
                (
                    raw.batch_size,
                    raw.retry_initial,
                    raw.retry_max,
                    SinkKind::Syslog(config?),
                )
            }
            "kafka" => {
                let raw: raw::KafkaSink = self.deserialize(value, &key)?;
                let config = self.kafka(&key, &raw);
                (
                    raw.batch_size,
                    raw.retry_initial,
                    raw.retry_max,
                    SinkKind::Kafka(config?),
                )
            }
            other => {
                self.problem(
                    format!("{key}.kind"),
                    format!("unknown sink kind {other:?} (known: \"stdout\", \"file\", \"syslog\", \"kafka\")"),
                );
                return None;
            }
        };
        // A file batch ends with an fsync, and a Kafka batch with a wait
        // for every delivery report, so their batches are larger: fewer of
        // those waits and fewer trips to the state file.
        let default_batch = match kind {
            SinkKind::File(_) | SinkKind::Kafka(_) => LARGE_BATCH_SIZE,
            _ => BATCH_SIZE,
        };
        let batch_size = batch_size.unwrap_or(default_batch);
        if !(1..=100_000).contains(&batch_size) {
            self.problem(
                format!("{key}.batch_size"),
                format!("{batch_size} is outside 1..=100000"),
            );
        }
        let retry = self.backoff(&key, retry_initial, retry_max);
        Some(SinkConfig {
            id: id.to_string(),
            batch_size,
            retry,
            kind,
        })
    }

    fn syslog(&mut self, key: &str, raw: &raw::SyslogSink) -> Option<SyslogConfig> {
        let address = raw.address.clone().unwrap_or_default();
        let has_port = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !has_port {
            self.problem(
                format!("{key}.address"),
                "required: the receiver as host:port",
            );
        }
        let (udp, tls) = match raw.transport.as_deref() {
            None | Some("tcp") => (false, false),
            Some("udp") => (true, false),
            Some("tls") => (false, true),
            Some(other) => {
                self.problem(
                    format!("{key}.transport"),
                    format!("{other:?} is not one of \"tcp\", \"udp\", \"tls\""),
                );
                (false, false)
            }
        };
        if raw.tls.is_some() && !tls {
            self.problem(format!("{key}.tls"), "only applies to transport = \"tls\"");
        }
        let tls_settings = if tls {
            if raw
                .framing
                .as_deref()
                .is_some_and(|f| f != "octet-counting")
            {
                self.problem(
                    format!("{key}.framing"),
                    "TLS uses octet counting (RFC 5425)",
                );
            }
            let options = raw
                .tls
                .as_ref()
                .map_or_else(TlsOptions::default, |t| TlsOptions {
                    ca_file: t.ca_file.clone(),
                    cert_file: t.cert_file.clone(),
                    key_file: t.key_file.clone(),
                    server_name: t.server_name.clone(),
                });
            let host = address.rsplit_once(':').map_or("", |(host, _)| host);
            match options.build(host) {
                Ok(settings) => Some(settings),
                Err(message) => {
                    self.problem(format!("{key}.tls"), message);
                    None
                }
            }
        } else {
            None
        };
        let transport = match (udp, raw.framing.as_deref()) {
            _ if tls => Transport::Tls(tls_settings?),
            (true, None) => Transport::Udp,
            (true, Some(_)) => {
                self.problem(
                    format!("{key}.framing"),
                    "only applies to transport = \"tcp\"",
                );
                Transport::Udp
            }
            (false, None | Some("octet-counting")) => Transport::TcpOctetCounting,
            (false, Some("lf")) => Transport::TcpLf,
            (false, Some(other)) => {
                self.problem(
                    format!("{key}.framing"),
                    format!("{other:?} is not one of \"octet-counting\", \"lf\""),
                );
                Transport::TcpOctetCounting
            }
        };
        let format = match raw.format.as_deref() {
            None | Some("rfc5424") => Format::Rfc5424,
            Some("rfc3164") => Format::Rfc3164,
            Some(other) => {
                self.problem(
                    format!("{key}.format"),
                    format!("{other:?} is not one of \"rfc5424\", \"rfc3164\""),
                );
                Format::Rfc5424
            }
        };
        let facility_name = raw.facility.as_deref().unwrap_or("local0");
        let facility = FACILITIES.iter().position(|f| *f == facility_name);
        if facility.is_none() {
            self.problem(
                format!("{key}.facility"),
                format!(
                    "{facility_name:?} is not a syslog facility ({})",
                    FACILITIES.join(", ")
                ),
            );
        }
        let default_max = if udp { 2048 } else { 64 << 10 };
        let max_message_bytes = raw.max_message_bytes.unwrap_or(default_max);
        // RFC 5424 §6.1: every receiver accepts 480 octets.
        if max_message_bytes < 480 {
            self.problem(
                format!("{key}.max_message_bytes"),
                "must be at least 480 (RFC 5424)",
            );
        }
        if udp && max_message_bytes > 65_507 {
            self.problem(
                format!("{key}.max_message_bytes"),
                "a udp datagram holds at most 65507 bytes",
            );
        }
        let timeout = self.positive(key, "timeout", raw.timeout, 10);
        let hostname = raw.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
        });
        Some(SyslogConfig {
            address,
            transport,
            header: Header {
                format,
                facility: u8::try_from(facility?).ok()?,
                hostname,
                app_name: raw
                    .app_name
                    .clone()
                    .unwrap_or_else(|| "auditrelay".to_string()),
                procid: std::process::id().to_string(),
            },
            max_message_bytes: usize::try_from(max_message_bytes).unwrap_or(usize::MAX),
            timeout,
        })
    }

    fn kafka(&mut self, key: &str, raw: &raw::KafkaSink) -> Option<KafkaConfig> {
        let problems_before = self.problems.len();
        let Some(brokers) = raw.brokers.clone().filter(|b| !b.trim().is_empty()) else {
            self.problem(format!("{key}.brokers"), "required: host:port[,host:port…]");
            return None;
        };
        let topic = raw
            .topic
            .clone()
            .unwrap_or_else(|| "auditrelay.{source_kind}".to_string());
        let sample = topic
            .replace("{source_kind}", "asana")
            .replace("{source_id}", "x");
        if sample.is_empty()
            || sample.len() > 249
            || !sample
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            self.problem(
                format!("{key}.topic"),
                format!("{topic:?} does not make a valid topic name (letters, digits, '.', '_', '-'; placeholders {{source_kind}}, {{source_id}})"),
            );
        }
        let compression = raw
            .compression
            .clone()
            .unwrap_or_else(|| "zstd".to_string());
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&compression.as_str()) {
            self.problem(
                format!("{key}.compression"),
                format!("{compression:?} is not one of none, gzip, snappy, lz4, zstd"),
            );
        }
        // Set by the sink itself (with their aliases), or settings that
        // would undo idempotence and acks=all or leave delivery reports
        // pending forever.
        const OURS: [&str; 14] = [
            "bootstrap.servers",
            "metadata.broker.list",
            "compression.type",
            "compression.codec",
            "enable.idempotence",
            "acks",
            "request.required.acks",
            "delivery.timeout.ms",
            "message.timeout.ms",
            "delivery.report.only.error",
            "transactional.id",
            "enable.gapless.guarantee",
            "dr_cb",
            "dr_msg_cb",
        ];
        for name in raw
            .properties
            .keys()
            .chain(raw.properties_env.keys())
            .chain(raw.properties_credential.keys())
        {
            if OURS.contains(&name.as_str()) {
                self.problem(
                    format!("{key}.properties.{name}"),
                    "not configurable: set by auditrelay itself (brokers, compression, message_timeout) or would break its delivery guarantees",
                );
            }
        }
        let mut properties = Vec::new();
        for (name, value) in &raw.properties {
            properties.push((name.clone(), Secret::new(value.clone())));
        }
        for (name, var) in &raw.properties_env {
            match self.env.get(var) {
                Some(value) => properties.push((name.clone(), Secret::new(value.clone()))),
                None => self.problem(
                    format!("{key}.properties_env.{name}"),
                    if is_env_name(var) {
                        format!("environment variable {var:?} is not set")
                    } else {
                        "must name an environment variable (letters, digits and '_')".to_string()
                    },
                ),
            }
        }
        for (name, credential) in &raw.properties_credential {
            let field = format!("{key}.properties_credential.{name}");
            if let Some(value) = self.credential(&field, credential) {
                properties.push((name.clone(), Secret::new(value)));
            }
        }
        let config = KafkaConfig {
            brokers,
            topic,
            compression,
            message_timeout: self.positive(key, "message_timeout", raw.message_timeout, 30),
            properties,
        };
        // Then librdkafka, which knows every property name and value but
        // stops at the first problem (and would repeat ours).
        if self.problems.len() > problems_before {
            return None;
        }
        if let Err(message) = config.validate() {
            self.problem(format!("{key}.properties"), message);
            return None;
        }
        Some(config)
    }

    fn cross_checks(
        &mut self,
        state: &StateConfig,
        sources: &[SourceConfig],
        sinks: &[SinkConfig],
    ) {
        for source in sources {
            // How far back a source reads again: the dedup window must
            // cover it, or the repeats would be delivered twice.
            let (reread, what) = match source {
                SourceConfig::Asana(asana) => (asana.restart_margin, "restart_margin"),
                SourceConfig::Anaplan(anaplan) => (anaplan.overlap, "overlap"),
            };
            if reread > state.dedup_window {
                self.problem(
                    "state.dedup_window",
                    format!(
                        "{} is shorter than sources.{}.{what} ({}): repeats would not be recognised",
                        humantime::format_duration(state.dedup_window),
                        source.id(),
                        humantime::format_duration(reread)
                    ),
                );
            }
        }
        let mut paths: BTreeMap<&Path, &str> = BTreeMap::new();
        for sink in sinks {
            if let SinkKind::File(file) = &sink.kind {
                if let Some(other) = paths.insert(file.path.as_path(), &sink.id) {
                    self.problem(
                        format!("sinks.{}.path", sink.id),
                        format!("{} is also the path of sink {other:?}", file.path.display()),
                    );
                }
            }
        }
        let mut stdouts = sinks.iter().filter(|s| matches!(s.kind, SinkKind::Stdout));
        if let (Some(_), Some(second)) = (stdouts.next(), stdouts.next()) {
            self.problem(
                format!("sinks.{}", second.id),
                "only one stdout sink is allowed",
            );
        }
    }
}

/// The longest a page's commit may wait for user lookups.
const MAX_ENRICH_BOUND: Duration = Duration::from_secs(30);

/// `start_at`: an RFC 3339 time, or a lookback such as `"7d"`.
fn parse_start_at(text: &str) -> Result<StartAt, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(StartAt::At(at.with_timezone(&chrono::Utc)));
    }
    humantime::parse_duration(text)
        .map(StartAt::Lookback)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a lookback such as \"7d\""))
}

/// Syslog facilities by code (RFC 5424 §6.2.1 and the usual names).
const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Checks a `log.level` filter. Besides the filter syntax, every directive
/// must name a level: the syntax reads a bare word as a target name, so a
/// typo such as "verbose" would silently turn logging off.
pub fn check_log_level(level: &str) -> Result<(), String> {
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
        return Err(format!("{level:?} is not a log filter: {e}"));
    }
    match level
        .split(',')
        .map(str::trim)
        .find(|d| !is_level_directive(d))
    {
        Some(bad) => Err(format!(
            "{bad:?} is neither a level (trace, debug, info, warn, error, off) nor target=level"
        )),
        None => Ok(()),
    }
}

/// A level, or `target=level` / `target[span]=level`.
fn is_level_directive(directive: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = directive
        .rsplit_once('=')
        .map_or(directive, |(_, level)| level);
    LEVELS.contains(&level.to_ascii_lowercase().as_str())
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A parser message without its source excerpt (the `6 | key = "…"` and
/// `  |     ^` lines), one line.
fn without_excerpt(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .filter(|line| {
            line.split_once('|')
                .is_none_or(|(gutter, _)| !gutter.trim().chars().all(|c| c.is_ascii_digit()))
        })
        .collect::<Vec<_>>()
        .join(": ")
}

fn join_key(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

/// A config-crate error as a message without the key and origin it may
/// carry (the problem names those itself).
fn describe(error: &config::ConfigError) -> String {
    match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {unexpected}"),
        config::ConfigError::At { error, .. } => describe(error),
        config::ConfigError::Message(message) => message
            .replace("unknown field", "unknown key")
            .replace("missing field", "missing key"),
        other => other.to_string(),
    }
}

/// Removes the value at `path` from a table tree. Returns false when there
/// is nothing there to remove.
fn remove_path(value: &mut config::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for key in parents {
        node = match &mut node.kind {
            config::ValueKind::Table(table) => match table.get_mut(key) {
                Some(next) => next,
                None => return false,
            },
            config::ValueKind::Array(items) => {
                match key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(next) => next,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match &mut node.kind {
        config::ValueKind::Table(table) => table.remove(last).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
