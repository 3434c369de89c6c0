//! The daemon: opens the state file, starts one task per source and per
//! sink, and stops them in order.
//!
//! Stop order: the shutdown token stops the sources (each finishes and
//! commits the page in hand); once all have stopped, sinks drain the outbox
//! for up to `shutdown_grace`, then are told to stop even mid-batch (an
//! unacknowledged batch stays in the outbox for the next run).

use std::future::Future;
use std::sync::Arc;

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
    state.call(move |db| db.register_sinks(&sinks)).await?;
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
        let mut destination = Some(sink::build(&sink_config));
        sinks.spawn(supervise(
            "sink",
            sink_config.id.clone(),
            hard_stop.clone(),
            move || {
                // A restarted sink task builds its destination anew.
                let destination = destination
                    .take()
                    .unwrap_or_else(|| sink::build(&sink_config));
                sink::run(sink_config.clone(), destination, ctx.clone())
            },
        ));
    }

    while sources.join_next().await.is_some() {}
    sources_done.cancel();
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while sinks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_s = config.shutdown_grace.as_secs_f64(),
            "sinks did not drain within the shutdown grace; undelivered events stay in the outbox"
        );
        hard_stop.cancel();
        while sinks.join_next().await.is_some() {}
    }
    tracing::info!("auditrelay stopped");
    Ok(())
}

/// Runs a task again after a state error, with backoff, until `stop`.
/// Errors from the outside world are handled inside the tasks; only the
/// state file failing (disk full, I/O error) ends a task, and then only
/// for a while: one failing task never stops the others.
async fn supervise<F, Fut>(what: &'static str, id: String, stop: CancellationToken, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StateError>>,
{
    let mut backoff = Backoff::new(BackoffPolicy::default());
    loop {
        match task().await {
            Ok(()) => return,
            Err(error) => {
                let wait = backoff.next_delay();
                tracing::error!(
                    task = what,
                    id = %id,
                    error = %error,
                    retry_in_ms = wait.as_millis() as u64,
                    "task failed on the state file; restarting it"
                );
                if !sleep_or_cancel(wait, &stop).await {
                    return;
                }
            }
        }
    }
}
