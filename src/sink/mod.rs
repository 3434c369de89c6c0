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

/// What a sink does next: replay dead letters, or deliver outbox events.
enum Work {
    Replay(Vec<OutboxRecord>),
    Outbox(Vec<OutboxRecord>),
}

/// The next batch after `acked`: dead letters marked for replay first
/// (`auditrelay dlq replay`), then outbox events (possibly none).
fn next_work(
    db: &mut crate::state::StateDb,
    sink_id: &str,
    acked: i64,
    limit: usize,
) -> Result<Work, StateError> {
    let replay = db.replay_batch(sink_id, limit)?;
    if !replay.is_empty() {
        return Ok(Work::Replay(replay));
    }
    Ok(Work::Outbox(db.read_outbox(acked, limit)?))
}

/// Runs one sink until the outbox is drained after the sources stopped, or
/// until the hard stop.
///
/// One state-file call per batch: the call that records a batch's
/// progress (after the sink took it) also trims the outbox and reads the
/// next batch.
pub async fn run(
    config: SinkConfig,
    mut sink: Box<dyn Sink>,
    mut ctx: SinkContext,
) -> Result<Stopped, StateError> {
    let id = config.id.clone();
    let limit = config.batch_size;
    let mut acked = {
        let id = id.clone();
        ctx.state.call(move |db| db.acked_seq(&id)).await?
    };
    let mut backoff = Backoff::new(config.retry);
    tracing::info!(sink = %id, kind = config.kind.name(), acked_seq = acked, "sink started");
    // The batch read together with the last progress update.
    let mut next: Option<Work> = None;
    loop {
        if ctx.retire.is_cancelled() {
            break;
        }
        let work = match next.take() {
            Some(work) => work,
            None => {
                let sink_id = id.clone();
                ctx.health.beat("reading the outbox", READ_BOUND);
                // Marks the current notification as seen before reading, so
                // a commit that lands after the read wakes the wait below.
                ctx.stored.borrow_and_update();
                ctx.state
                    .call(move |db| next_work(db, &sink_id, acked, limit))
                    .await?
            }
        };
        let batch = match work {
            Work::Replay(replay) => {
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
            Work::Outbox(batch) => batch,
        };
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
        // Only one batch at a time in memory: this one goes before the
        // next is read.
        let events = batch.len();
        drop(batch);
        let sink_id = id.clone();
        // A retiring sink records its progress and reads nothing more.
        let read_next = !ctx.retire.is_cancelled();
        ctx.health.beat("recording progress", READ_BOUND);
        ctx.stored.borrow_and_update();
        let (trimmed, following) = ctx
            .state
            .call(move |db| {
                if rejected.is_empty() {
                    db.ack(&sink_id, last)?;
                } else {
                    db.ack_with_dead_letters(&sink_id, last, &rejected)?;
                }
                let trimmed = db.trim_outbox()?;
                let following = if read_next {
                    Some(next_work(db, &sink_id, last, limit)?)
                } else {
                    None
                };
                Ok((trimmed, following))
            })
            .await?;
        tracing::debug!(sink = %id, acked_seq = last, events, trimmed, "batch acknowledged");
        ctx.metrics.acknowledged.inc_by((events - dead) as u64);
        ctx.metrics.dead_lettered.inc_by(dead as u64);
        acked = last;
        next = following;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::health::{Health, Role};
    use crate::state::{NewEvent, SourceCursor, StateDb};

    /// Takes every batch, refusing the events listed in `refuse` for good.
    struct Recorder {
        taken: Arc<Mutex<Vec<i64>>>,
        refuse: Vec<String>,
    }

    #[async_trait]
    impl Sink for Recorder {
        async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
            let mut rejected = Vec::new();
            for (index, record) in batch.iter().enumerate() {
                if self.refuse.contains(&record.event_id) {
                    rejected.push((index, "refused".to_string()));
                } else {
                    self.taken.lock().unwrap().push(record.seq);
                }
            }
            Ok(Delivered { rejected })
        }
    }

    /// Records, for every batch it is given, the sink's recorded progress
    /// as the batch arrives and the batch's seqs.
    struct ProgressWatcher {
        /// A connection of its own: read at once, not queued behind the
        /// sink loop's state calls (a progress update submitted together
        /// with this delivery would be).
        db: StateDb,
        seen: Arc<Mutex<Vec<(i64, i64, i64)>>>,
    }

    #[async_trait]
    impl Sink for ProgressWatcher {
        async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
            let acked = self.db.acked_seq("rec").unwrap();
            let (first, last) = (batch[0].seq, batch[batch.len() - 1].seq);
            self.seen.lock().unwrap().push((acked, first, last));
            Ok(Delivered::default())
        }
    }

    /// A state file with `count` events in its outbox, one sink (`rec`).
    async fn outbox_of(dir: &std::path::Path, count: i64) -> SharedState {
        let state = SharedState::new(StateDb::open(&dir.join("state.db")).unwrap());
        let events: Vec<NewEvent> = (1..=count)
            .map(|i| NewEvent {
                event_id: i.to_string(),
                event_time: i,
                payload: format!("{{\"n\":{i}}}"),
            })
            .collect();
        state
            .call(move |db| {
                db.register_sinks(&[("rec".to_string(), "stdout")])?;
                db.commit_page("a", "asana", &events, &[], &SourceCursor::default())
            })
            .await
            .unwrap();
        state
    }

    /// Runs the sink `rec` over `state` until the outbox is drained.
    async fn drain(state: &SharedState, sink: Box<dyn Sink>) -> Stopped {
        let sources_done = CancellationToken::new();
        sources_done.cancel();
        let ctx = SinkContext {
            state: state.clone(),
            stored: watch::channel(0).1,
            sources_done,
            hard_stop: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            retire: CancellationToken::new(),
            metrics: SinkMetrics::detached("rec", "stdout"),
            health: Health::new().register(Role::Sink, "rec", "stdout", Duration::ZERO, vec![]),
            delivery_bound: Duration::from_secs(10),
        };
        let config = SinkConfig {
            id: "rec".to_string(),
            batch_size: 100,
            retry: crate::retry::BackoffPolicy::default(),
            kind: SinkKind::Stdout,
        };
        tokio::time::timeout(Duration::from_secs(30), run(config, sink, ctx))
            .await
            .expect("the sink drained the outbox")
            .unwrap()
    }

    #[tokio::test]
    async fn a_batch_goes_out_only_once_the_one_before_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let state = outbox_of(dir.path(), 1_050).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = ProgressWatcher {
            db: StateDb::open_read_only(&dir.path().join("state.db")).unwrap(),
            seen: Arc::clone(&seen),
        };
        assert_eq!(drain(&state, Box::new(sink)).await, Stopped::Done);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 11, "{seen:?}");
        let mut previous_last = 0;
        for (acked, first, last) in seen {
            // Everything before the batch is recorded: after a crash only
            // the batch in flight is sent again.
            assert_eq!(acked, previous_last, "batch {first}..={last}");
            assert_eq!(first, previous_last + 1);
            previous_last = last;
        }
        assert_eq!(previous_last, 1_050);
    }

    #[tokio::test]
    async fn a_drained_outbox_is_delivered_once_in_order_acknowledged_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let state = outbox_of(dir.path(), 1_234).await;
        let taken = Arc::new(Mutex::new(Vec::new()));
        let sink = Recorder {
            taken: Arc::clone(&taken),
            refuse: vec!["7".to_string(), "1001".to_string()],
        };
        assert_eq!(drain(&state, Box::new(sink)).await, Stopped::Done);
        let expected: Vec<i64> = (1..=1_234).filter(|s| *s != 7 && *s != 1001).collect();
        assert_eq!(*taken.lock().unwrap(), expected);
        let (acked, depth, dead) = state
            .call(|db| {
                Ok((
                    db.acked_seq("rec")?,
                    db.outbox_depth()?,
                    db.dead_letters(Some("rec"))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(acked, 1_234);
        assert_eq!(depth, 0, "every acknowledged row is trimmed");
        let dead: Vec<&str> = dead.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(dead, ["7", "1001"]);
    }
}
