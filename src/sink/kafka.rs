//! The Kafka sink: an idempotent producer (`acks=all`) through librdkafka.
//!
//! A batch is sent as a whole (librdkafka batches and compresses it), and
//! acknowledged when the delivery report of every message in it came back
//! successful. The reports are counted for the whole batch on librdkafka's
//! polling thread, which wakes the sink after the last one. If any message
//! failed, the batch is retried: the repeats
//! that can cause are bounded by the batch and carry their event id as the
//! message key, so consumers can drop them.
//!
//! Each message: key = the source's event id; payload = the JSON envelope;
//! headers `auditrelay.source_id`, `auditrelay.source_kind`,
//! `auditrelay.event_type`, `auditrelay.envelope_version`; topic = the
//! configured template with `{source_kind}` and `{source_id}` filled in.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;
use tokio::sync::Notify;

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
    ///
    /// `linger.ms` defaults to 1 instead of librdkafka's 5 (`properties`
    /// can set it): a batch is handed to librdkafka at once and acknowledged
    /// when its last report comes back, so lingering only delays the tail of
    /// every batch and the next batch with it.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("linger.ms", LINGER_MS);
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
            // A batch is acknowledged by counting its reports: every
            // message must report, not only the failed ones.
            .set("delivery.report.only.error", "false")
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
            .create::<BaseProducer>()
            .map(drop)
            .map_err(|e| config_error(&e))
    }

    fn topic_for(&self, source_kind: &str, source_id: &str) -> String {
        self.topic
            .replace("{source_kind}", source_kind)
            .replace("{source_id}", source_id)
    }
}

/// The default `linger.ms` (see [`KafkaConfig::client_config`]).
const LINGER_MS: &str = "1";

/// Writes events to Kafka.
pub struct KafkaSink {
    config: KafkaConfig,
    producer: Option<ThreadedProducer<Reports>>,
}

/// The delivery reports of the messages being sent, counted on
/// librdkafka's polling thread as they come back. One counter for the
/// whole batch, instead of a future per message.
#[derive(Default)]
struct Reports {
    tally: Mutex<Tally>,
    /// Woken when the last report of the round came back.
    done: Notify,
}

#[derive(Default)]
struct Tally {
    /// The round being counted. Each send of a batch (or of one record
    /// again) is a round of its own; a late report of an earlier round (a
    /// batch given up on while librdkafka's queue stayed full) is ignored.
    round: u32,
    /// Reports still to come.
    pending: usize,
    /// The messages that failed, as (index in the round, error).
    failed: Vec<(usize, KafkaError)>,
}

/// A message's delivery opaque: its round and its index in the round.
/// `batch_size` is at most 100,000, so the index fits in 32 bits.
fn opaque(round: u32, index: usize) -> usize {
    (round as usize) << 32 | index
}

/// The round and the index an [`opaque`] holds.
fn round_and_index(opaque: usize) -> (u32, usize) {
    ((opaque >> 32) as u32, opaque & 0xffff_ffff)
}

// `opaque` needs a 64-bit usize.
const _: () = assert!(usize::BITS >= 64);

impl Reports {
    fn tally(&self) -> MutexGuard<'_, Tally> {
        // The counter stays consistent whatever panicked while holding it.
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts counting a round of `messages` reports; returns its number.
    fn start(&self, messages: usize) -> u32 {
        let mut tally = self.tally();
        tally.round = tally.round.wrapping_add(1);
        tally.pending = messages;
        tally.failed.clear();
        tally.round
    }

    /// A message of `round` that got no report, because librdkafka refused
    /// to queue it.
    fn not_queued(&self, round: u32, index: usize, error: KafkaError) {
        self.settle(round, index, Err(error));
    }

    /// The last `count` messages of `round` will not be sent: only the
    /// reports of those already queued are waited for.
    fn not_sent(&self, round: u32, count: usize) {
        let mut tally = self.tally();
        if tally.round == round {
            tally.pending = tally.pending.saturating_sub(count);
        }
    }

    fn settle(&self, round: u32, index: usize, outcome: Result<(), KafkaError>) {
        let mut tally = self.tally();
        if tally.round != round || tally.pending == 0 {
            return;
        }
        if let Err(error) = outcome {
            tally.failed.push((index, error));
        }
        tally.pending -= 1;
        if tally.pending == 0 {
            self.done.notify_one();
        }
    }

    /// Waits for every report of the current round; returns the failures.
    async fn wait(&self) -> Vec<(usize, KafkaError)> {
        loop {
            let done = self.done.notified();
            {
                let mut tally = self.tally();
                if tally.pending == 0 {
                    let mut failed = std::mem::take(&mut tally.failed);
                    failed.sort_by_key(|(index, _)| *index);
                    return failed;
                }
            }
            done.await;
        }
    }
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (round, index) = round_and_index(opaque);
        self.settle(
            round,
            index,
            result.as_ref().map(drop).map_err(|(e, _)| e.clone()),
        );
    }
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

impl Outgoing<'_> {
    /// The Kafka record: key = event id, value = envelope, with headers.
    fn base_record(&self, opaque: usize) -> BaseRecord<'_, str, str, usize> {
        BaseRecord::with_opaque_to(&self.topic, opaque)
            .key(self.record.event_id.as_str())
            .payload(self.record.payload.as_str())
            .headers(self.headers.clone())
    }
}

/// Sends `outgoing` as one round and waits for every report: the failures,
/// as (index in `outgoing`, error). If librdkafka's queue stays full for
/// `queue_timeout`, the round is given up (`Err`) once the messages already
/// queued reported back (they time out after `message_timeout` at the
/// latest), so that no copy of the batch is left in librdkafka when it is
/// sent again.
async fn send_round(
    producer: &ThreadedProducer<Reports>,
    outgoing: &[&Outgoing<'_>],
    queue_timeout: Duration,
) -> Result<Vec<(usize, KafkaError)>, KafkaError> {
    let reports = producer.context();
    let round = reports.start(outgoing.len());
    let deadline = Instant::now() + queue_timeout;
    for (index, out) in outgoing.iter().enumerate() {
        let mut record = out.base_record(opaque(round, index));
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((error @ KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if Instant::now() >= deadline {
                        reports.not_sent(round, outgoing.len() - index);
                        reports.wait().await;
                        return Err(error);
                    }
                    record = back;
                    // The polling thread empties the queue meanwhile.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => {
                    reports.not_queued(round, index, error);
                    break;
                }
            }
        }
    }
    Ok(reports.wait().await)
}

#[async_trait]
impl Sink for KafkaSink {
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        if self.producer.is_none() {
            let producer = self
                .config
                .client_config()
                .create_with_context::<_, ThreadedProducer<Reports>>(Reports::default())
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
        // librdkafka queues the whole batch (waiting while its queue is
        // full), then the reports come back.
        let queue_timeout = self.config.message_timeout;
        let all: Vec<&Outgoing<'_>> = outgoing.iter().collect();
        let failed = match send_round(producer, &all, queue_timeout).await {
            Ok(failed) => failed,
            Err(error) => {
                return Err(SinkError::Unavailable(format!(
                    "librdkafka's queue stayed full for message_timeout: {}",
                    describe(&error)
                )))
            }
        };
        let mut refused = Vec::new();
        let mut transient = Vec::new();
        for (index, error) in failed {
            if is_permanent(&error) {
                refused.push(index);
            } else {
                transient.push((error, &outgoing[index]));
            }
        }
        let fatal = transient.iter().any(|(e, _)| is_fatal(e, producer));
        // Any temporary failure retries the whole batch; a record refused
        // for good is refused again then, and dead-lettered once the rest
        // goes through.
        let mut failed = transient.into_iter();
        if let Some((error, out)) = failed.next() {
            let more = failed.count();
            if fatal {
                // An idempotent producer in a fatal state refuses
                // everything until it is replaced.
                tracing::error!(error = %describe(&error), "kafka producer hit a fatal error; creating a new one");
                self.producer = None;
            }
            return Err(SinkError::Unavailable(format!(
                "kafka did not acknowledge event {} on topic {}: {}{}",
                out.record.event_id,
                out.topic,
                describe(&error),
                if more > 0 {
                    format!(" (and {more} more in the batch)")
                } else {
                    String::new()
                }
            )));
        }
        // A refusal can be about the batch the broker received, not the
        // record (a record batch over the topic's size limit fails every
        // record in it): each refused record is tried once on its own, and
        // only a record refused alone is dead-lettered.
        let mut rejected = Vec::new();
        for index in refused {
            let out = &outgoing[index];
            let alone = send_round(producer, &[out], queue_timeout)
                .await
                .and_then(|mut failed| failed.pop().map_or(Ok(()), |(_, error)| Err(error)));
            match alone {
                Ok(()) => {}
                Err(error) if is_permanent(&error) => rejected.push((
                    index,
                    format!(
                        "kafka refused it on topic {}: {}",
                        out.topic,
                        describe(&error)
                    ),
                )),
                Err(error) => {
                    return Err(SinkError::Unavailable(format!(
                        "kafka did not acknowledge event {} on topic {}: {}",
                        out.record.event_id,
                        out.topic,
                        describe(&error)
                    )))
                }
            }
        }
        Ok(Delivered { rejected })
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

/// Whether the producer itself is broken for good (idempotence fatal
/// errors such as an out-of-order sequence).
fn is_fatal(error: &KafkaError, producer: &ThreadedProducer<Reports>) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
        || producer.client().fatal_error().is_some()
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

/// Faults through librdkafka's mock cluster: in-process brokers whose
/// availability, errors and latency the test controls.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::Message;

    use super::*;

    const TOPIC: &str = "auditrelay.asana";

    fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        let cluster = MockCluster::new(3).unwrap();
        cluster.create_topic(TOPIC, 3, 3).unwrap();
        cluster
    }

    fn sink(brokers: String, properties: &[(&str, &str)]) -> KafkaSink {
        KafkaSink::new(KafkaConfig {
            brokers,
            topic: "auditrelay.{source_kind}".into(),
            compression: "zstd".into(),
            message_timeout: Duration::from_secs(2),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), Secret::new(*v)))
                .collect(),
        })
    }

    fn batch(n: usize, body: &str) -> Vec<OutboxRecord> {
        (0..n)
            .map(|i| OutboxRecord {
                seq: i as i64 + 1,
                source_id: "asana_main".into(),
                event_id: format!("e{i}"),
                payload: format!(
                    r#"{{"envelope_version":1,"source":{{"kind":"asana"}},"id":"e{i}","type":"t","pad":"{body}"}}"#
                ),
            })
            .collect()
    }

    /// Every message of the topic, by key, read until `expect` arrived and
    /// a second passed without more.
    fn consume(brokers: &str, expect: usize) -> BTreeMap<String, usize> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "auditrelay-mock-test")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[TOPIC]).unwrap();
        let mut keys = BTreeMap::new();
        let (start, mut last) = (Instant::now(), Instant::now());
        let total = |k: &BTreeMap<String, usize>| k.values().sum::<usize>();
        while start.elapsed() < Duration::from_secs(30) {
            if total(&keys) >= expect && last.elapsed() > Duration::from_secs(1) {
                break;
            }
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                let key = String::from_utf8_lossy(message.key().unwrap()).into_owned();
                *keys.entry(key).or_insert(0) += 1;
                last = Instant::now();
            }
        }
        keys
    }

    /// What the sink loop does after a failure: the same batch again, with
    /// backoff, until it is taken (within a minute).
    async fn until_taken(sink: &mut KafkaSink, records: &[OutboxRecord]) -> Delivered {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match sink.deliver(records).await {
                Ok(delivered) => return delivered,
                Err(e) if Instant::now() >= deadline => panic!("never taken: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn brokers_down_then_back_lose_nothing() {
        let cluster = cluster();
        let mut sink = sink(cluster.bootstrap_servers(), &[]);
        let records = batch(50, "x");
        for broker in 1..=3 {
            cluster.broker_down(broker).unwrap();
        }
        let err = sink.deliver(&records).await.unwrap_err();
        assert!(
            matches!(err, SinkError::Unavailable(ref m) if m.contains("MessageTimedOut")),
            "{err}"
        );
        for broker in 1..=3 {
            cluster.broker_up(broker).unwrap();
        }
        assert_eq!(until_taken(&mut sink, &records).await, Delivered::default());
        let keys = consume(&cluster.bootstrap_servers(), 50);
        assert_eq!(keys.len(), 50, "every event is in the topic: {keys:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_queue_that_stays_full_gives_the_batch_up_until_the_brokers_are_back() {
        let cluster = cluster();
        let mut sink = sink(
            cluster.bootstrap_servers(),
            &[("queue.buffering.max.messages", "3")],
        );
        sink.config.message_timeout = Duration::from_secs(2);
        for broker in 1..=3 {
            cluster.broker_down(broker).unwrap();
        }
        let records = batch(10, "x");
        let started = Instant::now();
        let err = sink.deliver(&records).await.unwrap_err();
        assert!(
            matches!(err, SinkError::Unavailable(ref m) if m.contains("queue stayed full")),
            "{err}"
        );
        assert!(started.elapsed() >= Duration::from_secs(2), "it waited");
        for broker in 1..=3 {
            cluster.broker_up(broker).unwrap();
        }
        assert_eq!(until_taken(&mut sink, &records).await, Delivered::default());
        let keys = consume(&cluster.bootstrap_servers(), 10);
        assert_eq!(keys.len(), 10);
        assert!(keys.values().all(|n| *n == 1), "one copy each: {keys:?}");
    }

    #[tokio::test]
    async fn reports_count_only_their_own_round() {
        let reports = Reports::default();
        let given_up = reports.start(3);
        let round = reports.start(2);
        // Late reports of the round given up on change nothing.
        reports.settle(given_up, 0, Ok(()));
        reports.settle(given_up, 1, Err(KafkaError::Canceled));
        assert_eq!(reports.tally().pending, 2);
        reports.settle(round, 1, Err(KafkaError::Canceled));
        reports.settle(round, 0, Ok(()));
        let failed = tokio::time::timeout(Duration::from_secs(5), reports.wait())
            .await
            .expect("every report of the round came back");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 1);
        // A report after the round ended does not underflow it.
        reports.settle(round, 1, Ok(()));
        assert_eq!(reports.tally().pending, 0);
        // Given up after 2 of 5 were queued: only those 2 are waited for.
        let round = reports.start(5);
        reports.not_sent(round, 3);
        assert_eq!(reports.tally().pending, 2);
        reports.settle(round, 0, Ok(()));
        reports.settle(round, 1, Err(KafkaError::Canceled));
        let failed = tokio::time::timeout(Duration::from_secs(5), reports.wait())
            .await
            .expect("the queued ones reported");
        assert_eq!(failed.len(), 1);
        assert_eq!(round_and_index(opaque(7, 99_999)), (7, 99_999));
        assert_eq!(round_and_index(opaque(u32::MAX, 0)), (u32::MAX, 0));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn produce_errors_are_retried_by_librdkafka_and_each_event_is_written_once() {
        let cluster = cluster();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            ],
        );
        let mut sink = sink(cluster.bootstrap_servers(), &[]);
        // Producer id, three failed produce requests with backoff, on a
        // busy machine: give it time.
        sink.config.message_timeout = Duration::from_secs(15);
        let delivered = sink.deliver(&batch(40, "x")).await.unwrap();
        assert_eq!(delivered, Delivered::default());
        let keys = consume(&cluster.bootstrap_servers(), 40);
        assert_eq!(keys.len(), 40);
        assert!(keys.values().all(|n| *n == 1), "exactly once: {keys:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn slow_acknowledgements_are_waited_for() {
        let cluster = cluster();
        for broker in 1..=3 {
            cluster
                .broker_round_trip_time(broker, Duration::from_millis(400))
                .unwrap();
        }
        let mut sink = sink(cluster.bootstrap_servers(), &[]);
        // Metadata, producer id and produce each take a slow round trip.
        sink.config.message_timeout = Duration::from_secs(15);
        let started = Instant::now();
        let delivered = sink.deliver(&batch(20, "x")).await.unwrap();
        assert_eq!(delivered, Delivered::default());
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "the ack really was slow"
        );
        assert_eq!(consume(&cluster.bootstrap_servers(), 20).len(), 20);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_topic_authorization_failure_is_rejected_for_good() {
        let cluster = cluster();
        // Refused in the batch, and again when tried alone.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            ],
        );
        let mut sink = sink(cluster.bootstrap_servers(), &[]);
        sink.config.message_timeout = Duration::from_secs(15);
        let delivered = sink.deliver(&batch(1, "x")).await.unwrap();
        assert_eq!(delivered.rejected.len(), 1, "{delivered:?}");
        assert!(
            delivered.rejected[0].1.contains("TopicAuthorizationFailed"),
            "{delivered:?}"
        );
    }

    #[test]
    fn linger_is_short_unless_configured_and_idempotence_and_reports_are_not_configurable() {
        let config = sink("127.0.0.1:9".into(), &[]).config.client_config();
        assert_eq!(config.get("linger.ms"), Some("1"));
        let config = sink(
            "127.0.0.1:9".into(),
            &[("linger.ms", "20"), ("enable.idempotence", "false")],
        )
        .config
        .client_config();
        assert_eq!(config.get("linger.ms"), Some("20"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        let config = sink(
            "127.0.0.1:9".into(),
            &[("delivery.report.only.error", "true")],
        )
        .config
        .client_config();
        assert_eq!(config.get("delivery.report.only.error"), Some("false"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_refused_as_a_whole_is_retried_record_by_record() {
        let cluster = cluster();
        // The broker refuses the first produce request for its size; alone,
        // each record goes through.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        let mut sink = sink(cluster.bootstrap_servers(), &[("linger.ms", "50")]);
        sink.config.message_timeout = Duration::from_secs(15);
        let delivered = sink.deliver(&batch(3, "x")).await.unwrap();
        assert_eq!(delivered, Delivered::default(), "nothing dead-lettered");
        let keys = consume(&cluster.bootstrap_servers(), 3);
        assert_eq!(keys.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_oversized_message_is_rejected_for_good_and_the_rest_acknowledged() {
        let cluster = cluster();
        let mut sink = sink(
            cluster.bootstrap_servers(),
            &[("message.max.bytes", "1000")],
        );
        let mut records = batch(5, "x");
        records[2] = batch(1, &"y".repeat(2_000)).remove(0);
        records[2].event_id = "big".into();
        let delivered = sink.deliver(&records).await.unwrap();
        assert_eq!(delivered.rejected.len(), 1, "{delivered:?}");
        assert_eq!(delivered.rejected[0].0, 2);
        assert!(
            delivered.rejected[0].1.contains("MessageSizeTooLarge"),
            "{delivered:?}"
        );
        let keys = consume(&cluster.bootstrap_servers(), 4);
        assert_eq!(keys.len(), 4);
        assert!(!keys.contains_key("big"));
    }
}
