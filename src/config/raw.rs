//! The configuration file's shape, as serde reads it. Every struct denies
//! unknown keys; nothing here is validated beyond types (see `load.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Root {
    #[serde(default)]
    pub(super) state: State,
    #[serde(default)]
    pub(super) log: Log,
    #[serde(default)]
    pub(super) http: Http,
    #[serde(default, with = "humantime_serde")]
    pub(super) shutdown_grace: Option<Duration>,
    /// Read by kind in a second step, so errors inside name their key.
    #[serde(default)]
    pub(super) sources: BTreeMap<String, config::Value>,
    #[serde(default)]
    pub(super) sinks: BTreeMap<String, config::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct State {
    pub(super) path: Option<PathBuf>,
    pub(super) max_outbox_events: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub(super) dedup_window: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Http {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Log {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Anaplan {
    #[allow(dead_code, reason = "read before dispatch; listed so the key is known")]
    pub(super) kind: String,
    pub(super) auth_url: Option<String>,
    pub(super) audit_url: Option<String>,
    pub(super) api_url: Option<String>,
    /// Basic auth: the login (an e-mail) and its password.
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password_env: Option<String>,
    pub(super) password_credential: Option<String>,
    /// Certificate auth: a CA-issued certificate (PEM) and its RSA key.
    pub(super) certificate_file: Option<PathBuf>,
    pub(super) private_key: Option<String>,
    pub(super) private_key_file: Option<PathBuf>,
    pub(super) private_key_env: Option<String>,
    pub(super) private_key_credential: Option<String>,
    /// A pre-issued AnaplanAuthToken.
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) token_env: Option<String>,
    pub(super) token_credential: Option<String>,
    pub(super) event_type: Option<String>,
    pub(super) page_size: Option<u32>,
    pub(super) parallel_pages: Option<u32>,
    pub(super) start_at: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) overlap: Option<Duration>,
    pub(super) requests_per_minute: Option<u32>,
    #[serde(default)]
    pub(super) enrich: Enrich,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) slow_retry_interval: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Asana {
    #[allow(dead_code, reason = "read before dispatch; listed so the key is known")]
    pub(super) kind: String,
    pub(super) base_url: Option<String>,
    pub(super) workspace_gid: Option<String>,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) token_env: Option<String>,
    pub(super) token_credential: Option<String>,
    #[serde(default)]
    pub(super) filters: AsanaFilters,
    pub(super) page_size: Option<u32>,
    pub(super) start_at: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) restart_margin: Option<Duration>,
    pub(super) parallel_slices: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(super) backfill_threshold: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) slow_retry_interval: Option<Duration>,
    pub(super) requests_per_minute: Option<u32>,
    #[serde(default)]
    pub(super) enrich: Enrich,
}

/// `[sources.ID.enrich]`: user enrichment, for every source kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Enrich {
    pub(super) enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub(super) ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) negative_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) bound: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AsanaFilters {
    pub(super) event_type: Option<String>,
    pub(super) actor_type: Option<String>,
    pub(super) actor_gid: Option<String>,
    pub(super) resource_gid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StdoutSink {
    #[allow(dead_code, reason = "read before dispatch; listed so the key is known")]
    pub(super) kind: String,
    pub(super) batch_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_max: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSink {
    #[allow(dead_code, reason = "read before dispatch; listed so the key is known")]
    pub(super) kind: String,
    pub(super) path: Option<PathBuf>,
    #[serde(default, deserialize_with = "byte_size")]
    pub(super) max_bytes: Option<u64>,
    pub(super) max_files: Option<u32>,
    pub(super) batch_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_max: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SyslogSink {
    #[allow(dead_code, reason = "read before dispatch; listed so the key is known")]
    pub(super) kind: String,
    pub(super) address: Option<String>,
    pub(super) transport: Option<String>,
    pub(super) framing: Option<String>,
    pub(super) format: Option<String>,
    pub(super) facility: Option<String>,
    pub(super) hostname: Option<String>,
    pub(super) app_name: Option<String>,
    #[serde(default, deserialize_with = "byte_size")]
    pub(super) max_message_bytes: Option<u64>,
    pub(super) tls: Option<SyslogTls>,
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout: Option<Duration>,
    pub(super) batch_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_max: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KafkaSink {
    #[allow(dead_code, reason = "read before dispatch; listed so the key is known")]
    pub(super) kind: String,
    pub(super) brokers: Option<String>,
    pub(super) topic: Option<String>,
    pub(super) compression: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) message_timeout: Option<Duration>,
    /// librdkafka properties, passed through.
    #[serde(default)]
    pub(super) properties: BTreeMap<String, String>,
    /// librdkafka properties read from environment variables (for
    /// passwords): property name → variable name.
    #[serde(default)]
    pub(super) properties_env: BTreeMap<String, String>,
    /// librdkafka properties read from systemd credentials: property name
    /// → credential name.
    #[serde(default)]
    pub(super) properties_credential: BTreeMap<String, String>,
    pub(super) batch_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retry_max: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SyslogTls {
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) server_name: Option<String>,
}

/// A size: a number of bytes, or a string such as `"100MiB"` or `"10 MB"`.
fn byte_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(text)) => parse_byte_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

pub(super) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 1048576, \"512KiB\" or \"100MiB\""))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KB, KiB, MB, MiB, GB or GiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}
