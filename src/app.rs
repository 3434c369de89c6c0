//! The daemon: opens the state file, starts one task per source and per
//! sink, and stops them in order.
//!
//! Stop order: the shutdown token stops the sources (each finishes and
//! commits the page in hand); once all have stopped, sinks drain the outbox
//! for up to `shutdown_grace`, then are told to stop even mid-batch (an
//! unacknowledged batch stays in the outbox for the next run).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::asana::AsanaSource;
use crate::config::{Config, SourceConfig};
use crate::retry::{Backoff, BackoffPolicy};
use crate::sink::{self, SinkContext};
use crate::source::{sleep_or_cancel, SourceContext};
use crate::state::{SharedState, StateError, StateLock};

/// Runs until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let path = config.state.path.clone();
    let _lock = StateLock::acquire(&path)?;
    let state = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || SharedState::open(&path))
            .await
            .context("opening the state file")??
    };
    let sinks: Vec<(String, &'static str)> = config
        .sinks
        .iter()
        .map(|s| (s.id.clone(), s.kind.name()))
        .collect();
    for (sink, missed) in state.call(move |db| db.register_sinks(&sinks)).await? {
        tracing::warn!(
            sink = %sink,
            missed,
            "sink is configured again after the outbox was trimmed past it; it missed these events"
        );
    }
    tracing::info!(
        state = %path.display(),
        sources = config.sources.len(),
        sinks = config.sinks.len(),
        "auditrelay started"
    );

    let (stored_tx, stored_rx) = watch::channel(0u64);
    let stored_tx = Arc::new(stored_tx);
    let sources_done = CancellationToken::new();
    let hard_stop = CancellationToken::new();

    let mut sources = JoinSet::new();
    for source in &config.sources {
        let ctx = SourceContext {
            state: state.clone(),
            stored: Arc::clone(&stored_tx),
            shutdown: shutdown.clone(),
            max_outbox_events: config.state.max_outbox_events,
            dedup_window: config.state.dedup_window,
        };
        match source {
            SourceConfig::Asana(asana) => {
                let source = Arc::new(AsanaSource::new(asana.clone(), ctx)?);
                let id = asana.id.clone();
                sources.spawn(supervise("source", id, shutdown.clone(), move || {
                    // Called again after a failure: the run starts over from
                    // the stored cursor.
                    let source = Arc::clone(&source);
                    async move { source.run().await }
                }));
            }
        }
    }

    let mut sinks = JoinSet::new();
    for sink_config in &config.sinks {
        let ctx = SinkContext {
            state: state.clone(),
            stored: stored_rx.clone(),
            sources_done: sources_done.clone(),
            hard_stop: hard_stop.clone(),
            shutdown: shutdown.clone(),
        };
        let sink_config = sink_config.clone();
        let id = sink_config.id.clone();
        let stop = hard_stop.clone();
        sinks.spawn(async move {
            let stopped = supervise("sink", id.clone(), stop, move || {
                // Each run, the first or one after a failure, builds its
                // destination anew.
                sink::run(sink_config.clone(), sink::build(&sink_config), ctx.clone())
            })
            .await;
            (id, stopped)
        });
    }

    while sources.join_next().await.is_some() {}
    sources_done.cancel();
    let mut closed = Vec::new();
    let drained = tokio::time::timeout(config.shutdown_grace, drain(&mut sinks, &mut closed)).await;
    if drained.is_err() {
        tracing::warn!(
            grace_s = config.shutdown_grace.as_secs_f64(),
            "sinks did not drain within the shutdown grace; undelivered events stay in the outbox"
        );
        hard_stop.cancel();
        drain(&mut sinks, &mut closed).await;
    }
    tracing::info!("auditrelay stopped");
    if closed.is_empty() {
        Ok(())
    } else {
        // Not a clean stop: let the service manager see it.
        anyhow::bail!(
            "stopped because the destination of sink {} closed",
            closed.join(", ")
        )
    }
}

/// Waits for every sink task; notes those whose destination closed.
async fn drain(sinks: &mut JoinSet<(String, Option<sink::Stopped>)>, closed: &mut Vec<String>) {
    while let Some(joined) = sinks.join_next().await {
        if let Ok((id, Some(sink::Stopped::DestinationClosed))) = joined {
            closed.push(id);
        }
    }
}

/// Runs a task until it finishes, starting it again with backoff after it
/// failed, until `stop`.
///
/// Errors from the outside world are handled inside the tasks; a task ends
/// with an error only when the state file fails (disk full, I/O error), or
/// by a panic, a bug. Either way it is logged and restarted from its stored
/// position: one failing task never stops the others. Each run is its own
/// tokio task so that a panic is caught here rather than lost.
async fn supervise<F, Fut, T>(
    what: &'static str,
    id: String,
    stop: CancellationToken,
    mut task: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StateError>> + Send + 'static,
    T: Send + 'static,
{
    let mut backoff = Backoff::new(BackoffPolicy::default());
    loop {
        let started = tokio::time::Instant::now();
        let run = tokio::spawn(task()).await;
        // A run that worked for a while before failing starts the backoff
        // over: rare failures weeks apart should not wait the maximum.
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let error = match run {
            Ok(Ok(done)) => return Some(done),
            Ok(Err(error)) => error.to_string(),
            Err(join) => match join.try_into_panic() {
                Ok(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
                Err(_) => "cancelled".to_string(),
            },
        };
        let wait = backoff.next_delay();
        tracing::error!(
            task = what,
            id = %id,
            error = %error,
            retry_in_ms = wait.as_millis() as u64,
            "task failed; restarting it from its stored position"
        );
        if !sleep_or_cancel(wait, &stop).await {
            return None;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted() {
        let runs = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&runs);
        let done = supervise("test", "t".into(), CancellationToken::new(), move || {
            let counter = Arc::clone(&counter);
            async move {
                match counter.fetch_add(1, Ordering::SeqCst) {
                    0 => panic!("boom"),
                    1 => Err(StateError::Task("disk full".into())),
                    n => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(done, Some(2));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_retries() {
        let stop = CancellationToken::new();
        stop.cancel();
        let done: Option<()> = supervise("test", "t".into(), stop, || async {
            Err(StateError::Task("always".into()))
        })
        .await;
        assert_eq!(done, None);
    }
}
