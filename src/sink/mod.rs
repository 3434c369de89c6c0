//! Sinks: where events go, each with its own progress through the outbox.
//!
//! A sink task reads the outbox after its acknowledged seq, hands a batch to
//! its [`Sink`], and records progress only once the sink took the batch
//! (file: written and fsynced; stdout and syslog TCP/TLS: written and
//! flushed; Kafka: every delivery report). Records a sink refused for good
//! move to the dead-letter table in the same transaction.
//! Failures are retried with backoff, forever: a sink that is down holds
//! its own progress back, never another sink's, and never loses an event.
//! A crash between acknowledgement and the progress commit re-sends that one
//! batch; every event carries its stable id for downstream dedup.

mod file;
pub mod kafka;
mod stdout;
pub mod syslog;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{SinkConfig, SinkKind};
use crate::health::Component;
use crate::metrics::SinkMetrics;
use crate::retry::Backoff;
use crate::state::{OutboxRecord, SharedState, StateError};

pub use file::FileSink;
pub use stdout::StdoutSink;

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The destination is unavailable or refused for now: retry the batch.
    #[error("{0}")]
    Unavailable(String),
    /// The destination is gone for good (stdout's reader exited): stop the
    /// sink; the outbox keeps its events for the next run.
    #[error("{0}")]
    Closed(String),
}

/// What a destination did with a batch it took.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Records refused for good, as (index in the batch, reason): they go
    /// to the dead-letter table. Every other record is acknowledged.
    pub rejected: Vec<(usize, String)>,
}

/// A destination for events.
#[async_trait]
pub trait Sink: Send {
    /// Delivers the batch. `Ok` acknowledges every record in it except the
    /// ones it lists as rejected for good; `Err` acknowledges none.
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError>;
}

/// Builds the sink a configuration describes.
pub fn build(config: &SinkConfig) -> Box<dyn Sink> {
    match &config.kind {
        SinkKind::Stdout => Box::new(StdoutSink::new()),
        SinkKind::File(file) => Box::new(FileSink::new(file.clone())),
        SinkKind::Syslog(config) => Box::new(syslog::SyslogSink::new(config.clone())),
        SinkKind::Kafka(config) => Box::new(kafka::KafkaSink::new(config.clone())),
    }
}

/// What a sink task runs with.
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub state: SharedState,
    /// Changes whenever a source stored events.
    pub stored: watch::Receiver<u64>,
    /// Cancelled once every source has stopped: drain, then stop.
    pub sources_done: CancellationToken,
    /// Cancelled when the drain time is over: stop now, even mid-batch.
    pub hard_stop: CancellationToken,
    /// Cancelled by a sink whose destination closed, to stop the process.
    pub shutdown: CancellationToken,
    /// Cancelled when this sink is removed or replaced by a reload: stop
    /// between batches (or during a retry wait), leaving the rest in the
    /// outbox.
    pub retire: CancellationToken,
    pub metrics: SinkMetrics,
    pub health: Arc<Component>,
    /// How long one delivery attempt may take before the task counts as
    /// hung ([`SinkConfig::delivery_bound`]).
    pub delivery_bound: Duration,
}

/// Idle wake-up even without a notification, a safety net only.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The longest reading the outbox (or replays) may take.
const READ_BOUND: Duration = Duration::from_secs(120);

/// Added to heartbeat deadlines for scheduling delays.
const BEAT_SLACK: Duration = Duration::from_secs(30);

/// Why a sink task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The outbox was drained after the sources stopped, or time ran out.
    Done,
    /// The destination went away for good; the process should not report
    /// a clean stop.
    DestinationClosed,
}

/// Runs one sink until the outbox is drained after the sources stopped, or
/// until the hard stop.
pub async fn run(
    config: SinkConfig,
    mut sink: Box<dyn Sink>,
    mut ctx: SinkContext,
) -> Result<Stopped, StateError> {
    let id = config.id.clone();
    let mut acked = {
        let id = id.clone();
        ctx.state.call(move |db| db.acked_seq(&id)).await?
    };
    let mut backoff = Backoff::new(config.retry);
    tracing::info!(sink = %id, kind = config.kind.name(), acked_seq = acked, "sink started");
    loop {
        if ctx.retire.is_cancelled() {
            break;
        }
        // Dead letters marked for replay go first (`auditrelay dlq replay`).
        let (sink_id, limit) = (id.clone(), config.batch_size);
        ctx.health.beat("reading the outbox", READ_BOUND);
        let replay = ctx
            .state
            .call(move |db| db.replay_batch(&sink_id, limit))
            .await?;
        if !replay.is_empty() {
            let delivered = match deliver(&mut *sink, &replay, &mut backoff, &ctx, &id).await {
                Ok(delivered) => delivered,
                Err(stopped) => return Ok(stopped),
            };
            let rejected: Vec<(i64, String)> = delivered
                .rejected
                .into_iter()
                .map(|(index, reason)| (replay[index].seq, reason))
                .collect();
            let ok: Vec<i64> = replay
                .iter()
                .map(|r| r.seq)
                .filter(|dead_id| !rejected.iter().any(|(r, _)| r == dead_id))
                .collect();
            tracing::info!(sink = %id, delivered = ok.len(), rejected_again = rejected.len(), "replayed dead letters");
            ctx.metrics.acknowledged.inc_by(ok.len() as u64);
            ctx.metrics.dead_lettered.inc_by(rejected.len() as u64);
            ctx.state
                .call(move |db| db.settle_replay(&ok, &rejected))
                .await?;
            continue;
        }

        // Marks the current notification as seen before reading, so a
        // commit that lands after the read wakes the wait below.
        ctx.stored.borrow_and_update();
        let batch = ctx
            .state
            .call(move |db| db.read_outbox(acked, limit))
            .await?;
        let Some(last) = batch.last().map(|r| r.seq) else {
            if ctx.sources_done.is_cancelled() {
                break;
            }
            ctx.health.idle("waiting for events");
            tokio::select! {
                _ = ctx.stored.changed() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                () = ctx.sources_done.cancelled() => {}
                () = ctx.hard_stop.cancelled() => break,
                () = ctx.retire.cancelled() => break,
            }
            continue;
        };
        let delivered = match deliver(&mut *sink, &batch, &mut backoff, &ctx, &id).await {
            Ok(delivered) => delivered,
            Err(stopped) => return Ok(stopped),
        };
        let rejected: Vec<(OutboxRecord, String)> = delivered
            .rejected
            .into_iter()
            .map(|(index, reason)| (batch[index].clone(), reason))
            .collect();
        let dead = rejected.len();
        for (record, reason) in &rejected {
            tracing::error!(sink = %id, event_id = %record.event_id, source = %record.source_id, reason = %reason, "event rejected for good; moved to the dead-letter table");
        }
        let sink_id = id.clone();
        let trimmed = ctx
            .state
            .call(move |db| {
                if rejected.is_empty() {
                    db.ack(&sink_id, last)?;
                } else {
                    db.ack_with_dead_letters(&sink_id, last, &rejected)?;
                }
                db.trim_outbox()
            })
            .await?;
        tracing::debug!(sink = %id, acked_seq = last, events = batch.len(), trimmed, "batch acknowledged");
        ctx.metrics.acknowledged.inc_by((batch.len() - dead) as u64);
        ctx.metrics.dead_lettered.inc_by(dead as u64);
        acked = last;
    }
    tracing::info!(sink = %id, acked_seq = acked, "sink stopped");
    Ok(Stopped::Done)
}

/// Delivers one batch, retrying with backoff until it is taken, the hard
/// stop comes, or the destination closes (then: how the task stops).
async fn deliver(
    sink: &mut dyn Sink,
    batch: &[OutboxRecord],
    backoff: &mut Backoff,
    ctx: &SinkContext,
    id: &str,
) -> Result<Delivered, Stopped> {
    let bound = ctx.delivery_bound;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        if attempt > 1 {
            ctx.metrics.retries.inc();
        }
        ctx.metrics.sent.inc_by(batch.len() as u64);
        ctx.health.beat("delivering a batch", bound);
        let delivered = tokio::select! {
            delivered = sink.deliver(batch) => delivered,
            // Unacknowledged: the batch stays where it is.
            () = ctx.hard_stop.cancelled() => return Err(Stopped::Done),
        };
        match delivered {
            Ok(delivered) => {
                backoff.reset();
                ctx.health.succeeded();
                ctx.metrics
                    .last_ack
                    .set(crate::metrics::unix_seconds(crate::state::unix_ms_now()));
                return Ok(delivered);
            }
            Err(SinkError::Closed(reason)) => {
                tracing::warn!(sink = %id, reason = %reason, "sink destination closed; stopping");
                ctx.shutdown.cancel();
                return Err(Stopped::DestinationClosed);
            }
            Err(SinkError::Unavailable(reason)) => {
                let wait = backoff.next_delay();
                ctx.metrics.errors.inc();
                ctx.health.failed(&reason);
                ctx.health
                    .beat("waiting to retry a delivery", wait + BEAT_SLACK);
                tracing::warn!(
                    sink = %id,
                    error = %reason,
                    attempt = backoff.failures(),
                    retry_in_ms = wait.as_millis() as u64,
                    batch = batch.len(),
                    "delivery failed; will retry"
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = ctx.hard_stop.cancelled() => return Err(Stopped::Done),
                    () = ctx.retire.cancelled() => return Err(Stopped::Done),
                }
            }
        }
    }
}

/// A batch as JSON lines, one envelope per line.
fn json_lines(batch: &[OutboxRecord]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.iter().map(|r| r.payload.len() + 1).sum());
    for record in batch {
        buf.extend_from_slice(record.payload.as_bytes());
        buf.push(b'\n');
    }
    buf
}
