//! The Kafka sink: an idempotent producer (`acks=all`) through librdkafka.
//!
//! A batch is sent as a whole (librdkafka batches and compresses it), and
//! acknowledged when the delivery report of every message in it came back
//! successful. If any message failed, the batch is retried: the repeats
//! that can cause are bounded by the batch and carry their event id as the
//! message key, so consumers can drop them.
//!
//! Each message: key = the source's event id; payload = the JSON envelope;
//! headers `auditrelay.source_id`, `auditrelay.source_kind`,
//! `auditrelay.event_type`, `auditrelay.envelope_version`; topic = the
//! configured template with `{source_kind}` and `{source_id}` filled in.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::{Delivered, Sink, SinkError};
use crate::envelope::EnvelopeMeta;
use crate::secret::Secret;
use crate::state::OutboxRecord;

/// The Kafka sink's settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic template: `{source_kind}` and `{source_id}` are replaced.
    pub topic: String,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// How long librdkafka tries to deliver one message
    /// (`delivery.timeout.ms`); then the batch fails and is retried.
    pub message_timeout: Duration,
    /// Any other librdkafka property. Values are kept as secrets: they may
    /// hold `sasl.password` or `ssl.key.password`.
    pub properties: Vec<(String, Secret)>,
}

impl KafkaConfig {
    /// The librdkafka configuration. Ours come last: idempotence and
    /// `acks=all` cannot be switched off through `properties`.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (name, value) in &self.properties {
            config.set(name, value.expose());
        }
        config
            .set("bootstrap.servers", &self.brokers)
            .set("compression.type", &self.compression)
            .set(
                "delivery.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "client.id",
                concat!("auditrelay/", env!("CARGO_PKG_VERSION")),
            );
        config
    }

    /// Names what the configuration would be refused for, without
    /// connecting (librdkafka checks property names and values here).
    pub fn validate(&self) -> Result<(), String> {
        self.client_config()
            .create::<FutureProducer>()
            .map(drop)
            .map_err(|e| config_error(&e))
    }

    fn topic_for(&self, source_kind: &str, source_id: &str) -> String {
        self.topic
            .replace("{source_kind}", source_kind)
            .replace("{source_id}", source_id)
    }
}

/// Writes events to Kafka.
pub struct KafkaSink {
    config: KafkaConfig,
    producer: Option<FutureProducer>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.config.brokers)
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    pub fn new(config: KafkaConfig) -> Self {
        Self {
            config,
            producer: None,
        }
    }
}

/// One message ready to send; the record borrows from it.
struct Outgoing<'a> {
    record: &'a OutboxRecord,
    topic: String,
    headers: OwnedHeaders,
}

#[async_trait]
impl Sink for KafkaSink {
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        if self.producer.is_none() {
            let producer = self
                .config
                .client_config()
                .create::<FutureProducer>()
                .map_err(|e| {
                    SinkError::Unavailable(format!(
                        "creating the kafka producer: {}",
                        config_error(&e)
                    ))
                })?;
            self.producer = Some(producer);
        }
        let producer = self.producer.as_ref().expect("created above");
        let outgoing: Vec<Outgoing<'_>> = batch
            .iter()
            .map(|record| {
                let meta = EnvelopeMeta::read(&record.payload);
                let version = meta.envelope_version.unwrap_or(0).to_string();
                let headers = OwnedHeaders::new_with_capacity(4)
                    .insert(Header {
                        key: "auditrelay.source_id",
                        value: Some(record.source_id.as_str()),
                    })
                    .insert(Header {
                        key: "auditrelay.source_kind",
                        value: Some(meta.source_kind()),
                    })
                    .insert(Header {
                        key: "auditrelay.event_type",
                        value: Some(meta.event_type.as_deref().unwrap_or("")),
                    })
                    .insert(Header {
                        key: "auditrelay.envelope_version",
                        value: Some(version.as_str()),
                    });
                Outgoing {
                    record,
                    topic: self.config.topic_for(meta.source_kind(), &record.source_id),
                    headers,
                }
            })
            .collect();
        // All sends are polled together: librdkafka queues the whole batch
        // (waiting while its queue is full), then the reports come back.
        let queue_timeout = Timeout::After(self.config.message_timeout);
        let reports = futures::future::join_all(outgoing.iter().map(|out| {
            producer.send(
                FutureRecord::to(&out.topic)
                    .key(out.record.event_id.as_str())
                    .payload(out.record.payload.as_str())
                    .headers(out.headers.clone()),
                queue_timeout,
            )
        }))
        .await;
        let mut rejected = Vec::new();
        let mut transient = Vec::new();
        for (index, (report, out)) in reports.into_iter().zip(&outgoing).enumerate() {
            if let Err((error, _)) = report {
                if is_permanent(&error) {
                    rejected.push((
                        index,
                        format!(
                            "kafka refused it on topic {}: {}",
                            out.topic,
                            describe(&error)
                        ),
                    ));
                } else {
                    transient.push((error, out));
                }
            }
        }
        // Any temporary failure retries the whole batch; a record refused
        // for good is refused again then, and dead-lettered once the rest
        // goes through.
        let mut failed = transient.into_iter();
        match failed.next() {
            None => Ok(Delivered { rejected }),
            Some((error, out)) => {
                let more = failed.count();
                Err(SinkError::Unavailable(format!(
                    "kafka did not acknowledge event {} on topic {}: {}{}",
                    out.record.event_id,
                    out.topic,
                    describe(&error),
                    if more > 0 {
                        format!(" (and {more} more in the batch)")
                    } else {
                        String::new()
                    }
                )))
            }
        }
    }
}

/// A configuration error without the value it was about: rdkafka's own
/// message repeats it, and it may be a password.
pub(crate) fn config_error(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, description, property, value) => {
            let description = if value.is_empty() {
                description.clone()
            } else {
                description.replace(value.as_str(), "[value hidden]")
            };
            format!("{description} (property {property:?})")
        }
        other => other.to_string(),
    }
}

/// Errors that no retry can fix: the message itself or the permissions.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

fn describe(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => format!(
            "{error}: no broker took it within message_timeout (are the brokers up, and does the topic exist? auditrelay does not create topics)"
        ),
        Some(code) => format!("{error} ({code:?})"),
        None => error.to_string(),
    }
}
