//! The Kafka baseline of `scripts/bench`: the fastest this machine hands
//! envelopes to the broker, nothing else.
//!
//! It fetches the first `--sample` records from the simulator once, maps
//! them to envelopes with the daemon's own code (no enrichment), then
//! produces `--messages` messages cycling through them, keyed by a distinct
//! id each, with the daemon's producer settings
//! ([`KafkaConfig::client_config`]: idempotent, `acks=all`, the given
//! compression, `linger.ms` 1) plus any `--property`. It keeps librdkafka's
//! queue full and waits for every delivery report; no state file, no
//! batches, no acknowledgements in between (`--wait-every N` waits for the
//! reports after every N messages instead, as the Kafka sink does after
//! each batch). It prints one JSON object:
//! `{"messages": N, "delivered": D, "failed": F, "seconds": S,
//! "messages_per_second": R, "mean_bytes": B, "cpu_seconds": C}`, where
//! the time runs from the first send to the last delivery report.
//!
//! ```sh
//! auditrelay simulate --listen 127.0.0.1:8787 --events 1000 --rate 0 &
//! cargo run --release --example produce_loop -- --base-url http://127.0.0.1:8787/api/1.0 \
//!     --brokers 127.0.0.1:9092 --topic auditrelay.asana --messages 1000000
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use auditrelay::asana::event::{to_outbox, Origin};
use auditrelay::secret::Secret;
use auditrelay::sink::kafka::KafkaConfig;
use clap::Parser;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Parser)]
struct Args {
    /// The simulator's API root, where the sample records come from.
    #[arg(long)]
    base_url: String,
    #[arg(long, default_value = "1200000000000000")]
    workspace: String,
    #[arg(long, default_value = "sim-token")]
    token: String,
    /// `bootstrap.servers`.
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// How many messages to produce.
    #[arg(long)]
    messages: u64,
    /// How many distinct records to fetch and cycle through.
    #[arg(long, default_value_t = 1000)]
    sample: usize,
    /// `compression.type`, as the Kafka sink's `compression`.
    #[arg(long, default_value = "zstd")]
    compression: String,
    /// Another librdkafka property, `name=value` (repeatable), as the Kafka
    /// sink's `properties`.
    #[arg(long = "property", value_parser = property)]
    properties: Vec<(String, String)>,
    /// Wait for every delivery report after this many messages, as the
    /// Kafka sink does after each batch (0: never, keep the queue full).
    #[arg(long, default_value_t = 0)]
    wait_every: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

fn property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .ok_or_else(|| format!("{text:?} is not name=value"))
}

#[derive(Deserialize)]
struct Page {
    data: Vec<Box<RawValue>>,
    next_page: Option<NextPage>,
}

#[derive(Deserialize)]
struct NextPage {
    offset: String,
}

/// Counts delivery reports.
#[derive(Default)]
struct Reports {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.delivered
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The first `count` records of the simulator's stream, as envelopes.
async fn sample(args: &Args) -> anyhow::Result<Vec<String>> {
    let url = format!(
        "{}/workspaces/{}/audit_log_events",
        args.base_url.trim_end_matches('/'),
        args.workspace
    );
    let http = reqwest::Client::new();
    let origin = Origin {
        source_id: "bench",
        workspace_gid: &args.workspace,
    };
    let observed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut envelopes = Vec::with_capacity(args.sample);
    let mut offset: Option<String> = None;
    while envelopes.len() < args.sample {
        let mut query = vec![("limit", "100".to_string())];
        if let Some(offset) = &offset {
            query.push(("offset", offset.clone()));
        }
        let page: Page = http
            .get(&url)
            .query(&query)
            .bearer_auth(&args.token)
            .send()
            .await
            .context("request")?
            .error_for_status()
            .context("sample page")?
            .json()
            .await
            .context("sample page JSON")?;
        for raw in &page.data {
            let event = to_outbox(raw, origin, &observed_at, None)
                .map_err(|reason| anyhow::anyhow!("sample record: {reason}"))?;
            envelopes.push(event.payload);
        }
        match page.next_page {
            Some(next) if !page.data.is_empty() => offset = Some(next.offset),
            _ => break,
        }
    }
    if envelopes.is_empty() {
        bail!("the simulator served no records to sample");
    }
    envelopes.truncate(args.sample);
    Ok(envelopes)
}

fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let envelopes = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(sample(&args))?;
    let mean_bytes = envelopes.iter().map(String::len).sum::<usize>() / envelopes.len();

    let config = KafkaConfig {
        brokers: args.brokers.clone(),
        topic: args.topic.clone(),
        compression: args.compression.clone(),
        message_timeout: Duration::from_secs(60),
        properties: args
            .properties
            .iter()
            .map(|(name, value)| (name.clone(), Secret::new(value.clone())))
            .collect(),
    };
    let producer: BaseProducer<Reports> = config
        .client_config()
        .create_with_context(Reports::default())
        .context("producer")?;

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for n in 0..args.messages {
        let key = n.to_string();
        let payload = &envelopes[n as usize % envelopes.len()];
        let mut record = BaseRecord::to(&args.topic).key(&key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if Instant::now() > deadline {
                        bail!("timed out after {}s at message {n}", args.timeout);
                    }
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("message {n}: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
        if args.wait_every > 0 && (n + 1) % args.wait_every == 0 {
            let reports = producer.context();
            while reports.delivered.load(Ordering::Relaxed) + reports.failed.load(Ordering::Relaxed)
                < n + 1
            {
                if Instant::now() > deadline {
                    bail!("timed out after {}s at message {n}", args.timeout);
                }
                producer.poll(Duration::from_millis(1));
            }
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    producer
        .flush(left)
        .context("waiting for the delivery reports")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let context = producer.context();
    let delivered = context.delivered.load(Ordering::Relaxed);
    let failed = context.failed.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "messages": args.messages,
            "delivered": delivered,
            "failed": failed,
            "seconds": seconds,
            "messages_per_second": delivered as f64 / seconds,
            "mean_bytes": mean_bytes,
            "cpu_seconds": cpu,
        })
    );
    if failed > 0 {
        bail!("{failed} of {} messages failed", args.messages);
    }
    Ok(())
}
