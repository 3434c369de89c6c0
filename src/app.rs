//! The daemon: opens the state file, starts one task per source and per
//! sink, applies configuration reloads, reports to systemd and Prometheus,
//! and stops everything in order.
//!
//! Stop order: the shutdown token stops the sources (each finishes and
//! commits the page in hand); once all have stopped, sinks drain the outbox
//! for up to `shutdown_grace`, then are told to stop even mid-batch (an
//! unacknowledged batch stays in the outbox for the next run).
//!
//! Reload (SIGHUP): the new file is loaded and checked in full first; if
//! anything is wrong it is rejected, every problem logged, and the running
//! configuration stays. Otherwise sources and sinks whose settings,
//! credentials or files changed are stopped and started again, removed ones
//! are stopped, new ones started. Nothing is lost: events wait in the
//! outbox, each sink resumes from its stored progress, each source from its
//! stored cursor.

mod observe;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::anaplan::AnaplanSource;
use crate::asana::AsanaSource;
use crate::config::{Config, ConfigErrors, SinkConfig, SourceConfig};
use crate::health::{Health, Role};
use crate::metrics::Metrics;
use crate::retry::{Backoff, BackoffPolicy};
use crate::sink::{self, SinkContext};
use crate::source::{sleep_or_cancel, SourceContext};
use crate::state::{SharedState, StateError, StateLock};
use crate::systemd::Notifier;

use observe::Topology;

/// How a running daemon gets a new configuration.
pub struct Reload {
    /// One message per reload request (SIGHUP).
    pub requests: mpsc::Receiver<()>,
    /// Loads and validates the configuration again.
    pub load: Arc<dyn Fn() -> Result<Config, ConfigErrors> + Send + Sync>,
}

/// How long a removed or changed sink may take to finish its batch before
/// it is stopped mid-batch (the batch then stays in the outbox).
const RETIRE_GRACE: Duration = Duration::from_secs(30);

/// Added to a restart wait's heartbeat deadline.
const RESTART_SLACK: Duration = Duration::from_secs(30);

/// Runs until `shutdown` is cancelled, then drains and returns.
pub async fn run(
    config: Config,
    reload: Option<Reload>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let notifier = Arc::new(Notifier::from_env());
    let path = config.state.path.clone();
    let _lock = StateLock::acquire(&path)?;
    let state = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || SharedState::open(&path))
            .await
            .context("opening the state file")??
    };
    let metrics = Metrics::new();
    let health = Health::new();
    let background = CancellationToken::new();
    let mut services = Vec::new();
    if let Some(listen) = config.http.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on http.listen = {listen}"))?;
        tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
        let endpoint = crate::http::Endpoint {
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
            state: crate::state::StateProbe::new(&path),
        };
        let stop = background.clone();
        services.push(tokio::spawn(async move {
            if let Err(error) = crate::http::serve(listener, endpoint, stop).await {
                tracing::error!(error = %error, "the http endpoint failed");
            }
        }));
    }

    let (stored_tx, stored_rx) = watch::channel(0u64);
    let mut daemon = Daemon {
        state: state.clone(),
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        notifier: Arc::clone(&notifier),
        topology: Arc::default(),
        outbox_limit: Arc::new(AtomicU64::new(config.state.max_outbox_events)),
        stored_tx: Arc::new(stored_tx),
        stored_rx,
        shutdown: shutdown.clone(),
        sources_done: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        sources: BTreeMap::new(),
        sinks: BTreeMap::new(),
        config: config.clone(),
    };
    daemon.register_sinks(&config.sinks).await?;
    for sink in &config.sinks {
        daemon.start_sink(sink.clone()).await?;
    }
    for source in &config.sources {
        daemon.start_source(source.clone()).await?;
    }
    tracing::info!(
        state = %path.display(),
        sources = config.sources.len(),
        sinks = config.sinks.len(),
        "auditrelay started"
    );

    let observer = observe::Observer {
        state: state.clone(),
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        notifier: Arc::clone(&notifier),
        topology: Arc::clone(&daemon.topology),
        outbox_limit: Arc::clone(&daemon.outbox_limit),
    };
    services.push(tokio::spawn(observer.clone().run(background.clone())));
    if let Some(timeout) = notifier.watchdog_timeout() {
        services.push(tokio::spawn(observe::watchdog(
            observer.clone(),
            crate::state::StateProbe::new(&path),
            timeout,
            background.clone(),
        )));
    }
    notifier.ready(&observer.status_line().await);

    if let Some(Reload { mut requests, load }) = reload {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                request = requests.recv() => match request {
                    Some(()) => {
                        daemon.reload(Arc::clone(&load)).await;
                        notifier.ready(&observer.status_line().await);
                    }
                    None => {
                        shutdown.cancelled().await;
                        break;
                    }
                },
            }
        }
    } else {
        shutdown.cancelled().await;
    }

    notifier.stopping();
    let closed = daemon.stop().await;
    // A last write of every component's health, for `auditrelay status`.
    observer.persist_health().await;
    background.cancel();
    for service in services {
        let _ = service.await;
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

struct RunningSource {
    config: SourceConfig,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct RunningSink {
    config: SinkConfig,
    retire: CancellationToken,
    restart_stop: CancellationToken,
    hard: CancellationToken,
    task: JoinHandle<Option<sink::Stopped>>,
}

struct Daemon {
    state: SharedState,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    notifier: Arc<Notifier>,
    topology: Arc<Mutex<Topology>>,
    outbox_limit: Arc<AtomicU64>,
    stored_tx: Arc<watch::Sender<u64>>,
    stored_rx: watch::Receiver<u64>,
    shutdown: CancellationToken,
    sources_done: CancellationToken,
    hard_stop: CancellationToken,
    sources: BTreeMap<String, RunningSource>,
    sinks: BTreeMap<String, RunningSink>,
    /// The configuration in force.
    config: Config,
}

impl Daemon {
    /// Records the configured sinks in the state file (their progress rows;
    /// those no longer configured stop holding back the outbox trim).
    async fn register_sinks(&self, sinks: &[SinkConfig]) -> Result<(), StateError> {
        let sinks: Vec<(String, &'static str)> = sinks
            .iter()
            .map(|s| (s.id.clone(), s.kind.name()))
            .collect();
        for (sink, missed) in self.state.call(move |db| db.register_sinks(&sinks)).await? {
            tracing::warn!(
                sink = %sink,
                missed,
                "sink is configured again after the outbox was trimmed past it; it missed these events"
            );
        }
        Ok(())
    }

    /// Builds a source, not started yet. Building fails only on a broken
    /// local setup (no TLS roots), before anything was stopped.
    fn build_source(&self, config: &SourceConfig) -> anyhow::Result<BuiltSource> {
        let id = config.id();
        let kind = config.kind();
        let component = self.health.component(
            Role::Source,
            id,
            kind,
            config.ready_within(),
            config.secrets().into_iter().cloned().collect(),
        );
        let metrics = self.metrics.source(id, kind);
        let stop = self.shutdown.child_token();
        let ctx = SourceContext {
            state: self.state.clone(),
            stored: Arc::clone(&self.stored_tx),
            shutdown: stop.clone(),
            max_outbox_events: Arc::clone(&self.outbox_limit),
            dedup_window: self.config.state.dedup_window,
            metrics: metrics.clone(),
            health: Arc::clone(&component),
            backfill: false,
        };
        let source = Arc::new(match config {
            SourceConfig::Asana(asana) => AnySource::Asana(
                AsanaSource::new(asana.clone(), ctx)
                    .with_context(|| format!("building source {id}"))?,
            ),
            SourceConfig::Anaplan(anaplan) => AnySource::Anaplan(
                AnaplanSource::new(anaplan.clone(), ctx)
                    .with_context(|| format!("building source {id}"))?,
            ),
        });
        Ok(BuiltSource {
            config: config.clone(),
            source,
            component,
            metrics,
            stop,
        })
    }

    async fn start_source(&mut self, config: SourceConfig) -> anyhow::Result<()> {
        let built = self.build_source(&config)?;
        self.spawn_source(built).await;
        Ok(())
    }

    /// Starts a built source. Its health continues from the instance it
    /// replaces, or else from the state file.
    async fn spawn_source(&mut self, built: BuiltSource) {
        let BuiltSource {
            config,
            source,
            component,
            metrics,
            stop,
        } = built;
        let id = config.id().to_string();
        match self.health.get(Role::Source, &id) {
            Some(previous) => component.restore(previous.record()),
            None => self.restore(Role::Source, &id, &component).await,
        }
        self.health.insert(Arc::clone(&component));
        lock(&self.topology).add_source(&id, config.retention(), metrics);
        let task = tokio::spawn({
            let stop = stop.clone();
            let component = Arc::clone(&component);
            async move {
                supervise(
                    "source",
                    config_id(&source),
                    stop,
                    Some(component),
                    move || {
                        // Called again after a failure: the run starts over
                        // from the stored cursor.
                        let source = Arc::clone(&source);
                        async move { source.run().await }
                    },
                )
                .await;
            }
        });
        self.sources
            .insert(id, RunningSource { config, stop, task });
    }

    /// Continues a component's health from what the state file holds.
    async fn restore(&self, role: Role, id: &str, component: &crate::health::Component) {
        let key = id.to_string();
        match self
            .state
            .call(move |db| db.component_health(role.as_str(), &key))
            .await
        {
            Ok(Some(stored)) => component.restore(stored),
            Ok(None) => {}
            Err(error) => tracing::warn!(id = %id, error = %error, "cannot read stored health"),
        }
    }

    /// Stops a source after the page in hand. `forget`: it is gone from
    /// the configuration, so its health and metrics go too.
    async fn stop_source(&mut self, id: &str, forget: bool) {
        if let Some(running) = self.sources.remove(id) {
            running.stop.cancel();
            let _ = running.task.await;
            if forget {
                self.health.remove(Role::Source, id);
                lock(&self.topology).sources.remove(id);
                self.metrics.remove_source(id, running.config.kind());
            }
        }
    }

    async fn start_sink(&mut self, config: SinkConfig) -> anyhow::Result<()> {
        let id = config.id.clone();
        let kind = config.kind.name();
        let component = self.health.component(
            Role::Sink,
            &id,
            kind,
            Duration::ZERO,
            config.secrets().into_iter().cloned().collect(),
        );
        match self.health.get(Role::Sink, &id) {
            Some(previous) => component.restore(previous.record()),
            None => self.restore(Role::Sink, &id, &component).await,
        }
        self.health.insert(Arc::clone(&component));
        let sink_metrics = self.metrics.sink(&id, kind);
        lock(&self.topology)
            .sinks
            .insert(id.clone(), sink_metrics.clone());
        let retire = CancellationToken::new();
        let hard = self.hard_stop.child_token();
        // Ends a restart wait on a retire as well as on a hard stop.
        let restart_stop = hard.child_token();
        let restart_stop_for_task = restart_stop.clone();
        let ctx = SinkContext {
            state: self.state.clone(),
            stored: self.stored_rx.clone(),
            sources_done: self.sources_done.clone(),
            hard_stop: hard.clone(),
            shutdown: self.shutdown.clone(),
            retire: retire.clone(),
            metrics: sink_metrics,
            health: Arc::clone(&component),
            delivery_bound: config.delivery_bound(),
        };
        let task_config = config.clone();
        let task_component = Arc::clone(&component);
        let task = tokio::spawn(async move {
            supervise(
                "sink",
                task_config.id.clone(),
                restart_stop_for_task,
                Some(task_component),
                move || {
                    // Each run, the first or one after a failure, builds its
                    // destination anew.
                    sink::run(task_config.clone(), sink::build(&task_config), ctx.clone())
                },
            )
            .await
        });
        self.sinks.insert(
            id,
            RunningSink {
                config,
                retire,
                restart_stop,
                hard,
                task,
            },
        );
        Ok(())
    }

    /// Stops a sink between batches (mid-batch after [`RETIRE_GRACE`]).
    /// `forget`: it is gone from the configuration.
    async fn stop_sink(&mut self, id: &str, forget: bool) {
        if let Some(mut running) = self.sinks.remove(id) {
            running.retire.cancel();
            running.restart_stop.cancel();
            if tokio::time::timeout(RETIRE_GRACE, &mut running.task)
                .await
                .is_err()
            {
                tracing::warn!(sink = %id, grace_s = RETIRE_GRACE.as_secs(), "sink did not finish its batch in time; stopping it mid-batch (the batch stays in the outbox)");
                running.hard.cancel();
                let _ = running.task.await;
            }
            if forget {
                self.health.remove(Role::Sink, id);
                lock(&self.topology).sinks.remove(id);
                self.metrics.remove_sink(id, running.config.kind.name());
            }
        }
    }

    /// Applies a reload request.
    async fn reload(&mut self, load: Arc<dyn Fn() -> Result<Config, ConfigErrors> + Send + Sync>) {
        self.notifier.reloading();
        let loaded = tokio::task::spawn_blocking(move || load()).await;
        let new = match loaded {
            Ok(Ok(new)) => new,
            Err(join) => {
                tracing::error!(error = %join, "reload rejected: loading the configuration failed");
                self.metrics.reload(false);
                return;
            }
            Ok(Err(errors)) => {
                for problem in &errors.problems {
                    tracing::error!(problem = %problem, "reload rejected: invalid configuration");
                }
                tracing::error!(
                    problems = errors.problems.len(),
                    "reload rejected; the running configuration stays in force"
                );
                self.metrics.reload(false);
                return;
            }
        };
        if new.state.path != self.config.state.path {
            tracing::warn!(
                running = %self.config.state.path.display(),
                configured = %new.state.path.display(),
                "state.path changed; it takes effect only after a restart"
            );
        }
        if new.http != self.config.http {
            tracing::warn!("http.listen changed; it takes effect only after a restart");
        }
        if new.log.level != self.config.log.level || new.log.format != self.config.log.format {
            tracing::warn!("log settings changed; they take effect only after a restart");
        }

        let changed = |key: String, old: &Config, new: &Config| {
            old.fingerprints.get(&key) != new.fingerprints.get(&key)
        };
        // New sources are built before anything stops, so a source that
        // cannot be built rejects the reload with the old one still running.
        let mut built: Vec<BuiltSource> = Vec::new();
        // Every source is built with the dedup window: a new one restarts
        // them all.
        let dedup_changed = new.state.dedup_window != self.config.state.dedup_window;
        let keep_dedup = self.config.state.dedup_window;
        self.config.state.dedup_window = new.state.dedup_window;
        for source in &new.sources {
            let id = source.id();
            let is_new = !self.sources.contains_key(id);
            if is_new || dedup_changed || changed(format!("sources.{id}"), &self.config, &new) {
                match self.build_source(source) {
                    Ok(source) => built.push(source),
                    Err(error) => {
                        tracing::error!(source = %id, error = %format!("{error:#}"), "reload rejected: cannot build the source; the running configuration stays in force");
                        self.config.state.dedup_window = keep_dedup;
                        // Building created series for sources that do not
                        // run; drop them again.
                        for config in built.iter().map(|b| &b.config).chain([source]) {
                            if !self.sources.contains_key(config.id()) {
                                self.metrics.remove_source(config.id(), config.kind());
                            }
                        }
                        self.metrics.reload(false);
                        return;
                    }
                }
            }
        }
        // Sources read the limit at each check: it applies at once.
        self.config.state.max_outbox_events = new.state.max_outbox_events;
        self.outbox_limit
            .store(new.state.max_outbox_events, Ordering::Relaxed);

        let mut summary = ReloadSummary::default();
        // Sinks first: a source restarted below must find its new sinks.
        let new_sink_ids: Vec<&str> = new.sinks.iter().map(|s| s.id.as_str()).collect();
        let running: Vec<String> = self.sinks.keys().cloned().collect();
        // Every sink that goes or changes is told at once, so they finish
        // their batches side by side rather than one after another.
        for (id, sink) in &self.sinks {
            let key = format!("sinks.{id}");
            if !new_sink_ids.contains(&id.as_str()) || changed(key, &self.config, &new) {
                sink.retire.cancel();
                sink.restart_stop.cancel();
            }
        }
        for id in &running {
            if !new_sink_ids.contains(&id.as_str()) {
                self.stop_sink(id, true).await;
                summary.removed.push(format!("sinks.{id}"));
            }
        }
        for sink in &new.sinks {
            let key = format!("sinks.{}", sink.id);
            if self.sinks.contains_key(&sink.id) && changed(key.clone(), &self.config, &new) {
                let old_kind = self.sinks[&sink.id].config.kind.name();
                self.stop_sink(&sink.id, false).await;
                if old_kind != sink.kind.name() {
                    // Series labelled with the old kind would stand still.
                    self.metrics.remove_sink(&sink.id, old_kind);
                }
                summary.changed.push(key);
            } else if !self.sinks.contains_key(&sink.id) {
                summary.added.push(key);
            }
        }
        // The old sinks are stopped already: there is no going back, so
        // this is retried until it holds (or the process stops).
        let mut backoff = Backoff::new(BackoffPolicy::default());
        while let Err(error) = self.register_sinks(&new.sinks).await {
            let wait = backoff.next_delay();
            tracing::error!(error = %error, retry_in_ms = wait.as_millis() as u64, "recording the new sinks in the state file failed; retrying");
            if !sleep_or_cancel(wait, &self.shutdown).await {
                return;
            }
        }
        for sink in &new.sinks {
            if !self.sinks.contains_key(&sink.id) {
                if let Err(error) = self.start_sink(sink.clone()).await {
                    tracing::error!(sink = %sink.id, error = %format!("{error:#}"), "cannot start the sink");
                }
            }
        }

        let new_source_ids: Vec<&str> = new.sources.iter().map(SourceConfig::id).collect();
        let running: Vec<String> = self.sources.keys().cloned().collect();
        for id in &running {
            if !new_source_ids.contains(&id.as_str()) {
                self.stop_source(id, true).await;
                summary.removed.push(format!("sources.{id}"));
            }
        }
        for source in built {
            let id = source.config.id().to_string();
            if self.sources.contains_key(&id) {
                self.stop_source(&id, false).await;
                summary.changed.push(format!("sources.{id}"));
            } else {
                summary.added.push(format!("sources.{id}"));
            }
            self.spawn_source(source).await;
        }

        let fingerprints = new.fingerprints.clone();
        self.config.sources = new.sources;
        self.config.sinks = new.sinks;
        self.config.fingerprints = fingerprints;
        self.config.shutdown_grace = new.shutdown_grace;
        self.metrics.reload(true);
        tracing::info!(
            added = %summary.added.join(","),
            changed = %summary.changed.join(","),
            removed = %summary.removed.join(","),
            "configuration reloaded"
        );
    }

    /// Stops sources, then drains and stops sinks. Returns the sinks whose
    /// destination closed.
    async fn stop(&mut self) -> Vec<String> {
        self.shutdown.cancel();
        for (_, running) in std::mem::take(&mut self.sources) {
            let _ = running.task.await;
        }
        self.sources_done.cancel();
        let mut sinks = JoinSet::new();
        for (id, running) in std::mem::take(&mut self.sinks) {
            sinks.spawn(async move { (id, running.task.await.ok().flatten()) });
        }
        let mut closed = Vec::new();
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, drain(&mut sinks, &mut closed))
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = grace.as_secs_f64(),
                "sinks did not drain within the shutdown grace; undelivered events stay in the outbox"
            );
            self.hard_stop.cancel();
            drain(&mut sinks, &mut closed).await;
        }
        closed
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

/// A source of any kind.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per configured source, built once and held in an Arc"
)]
enum AnySource {
    Asana(AsanaSource),
    Anaplan(AnaplanSource),
}

impl AnySource {
    fn id(&self) -> &str {
        match self {
            Self::Asana(s) => s.id(),
            Self::Anaplan(s) => s.id(),
        }
    }

    async fn run(&self) -> Result<(), StateError> {
        match self {
            Self::Asana(s) => s.run().await,
            Self::Anaplan(s) => s.run().await,
        }
    }
}

/// A source built for a start or a reload, not running yet.
struct BuiltSource {
    config: SourceConfig,
    source: Arc<AnySource>,
    component: Arc<crate::health::Component>,
    metrics: crate::metrics::SourceMetrics,
    stop: CancellationToken,
}

fn config_id(source: &AnySource) -> String {
    source.id().to_string()
}

#[derive(Default)]
struct ReloadSummary {
    added: Vec<String>,
    changed: Vec<String>,
    removed: Vec<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    component: Option<Arc<crate::health::Component>>,
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
        if let Some(component) = &component {
            // The wait is a promise too, or the watchdog would take a
            // restarting task for a hung one and kill the whole process.
            component.failed(&error);
            component.beat("restarting after a failure", wait + RESTART_SLACK);
        }
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
        let done = supervise(
            "test",
            "t".into(),
            CancellationToken::new(),
            None,
            move || {
                let counter = Arc::clone(&counter);
                async move {
                    match counter.fetch_add(1, Ordering::SeqCst) {
                        0 => panic!("boom"),
                        1 => Err(StateError::Task("disk full".into())),
                        n => Ok(n),
                    }
                }
            },
        )
        .await;
        assert_eq!(done, Some(2));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_retries() {
        let stop = CancellationToken::new();
        stop.cancel();
        let done: Option<()> = supervise("test", "t".into(), stop, None, || async {
            Err(StateError::Task("always".into()))
        })
        .await;
        assert_eq!(done, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_wait_is_announced_to_the_watchdog() {
        let health = Health::new();
        let component = health.register(Role::Source, "s", "asana", Duration::ZERO, vec![]);
        // The task promised to be done at once, then failed.
        component.beat("fetching a page", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(health.overdue().len(), 1);
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&runs);
        let task = tokio::spawn(supervise(
            "test",
            "s".into(),
            stop.clone(),
            Some(component),
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(StateError::Task("disk full".into())) }
            },
        ));
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Waiting to restart, the task is not overdue, and the failure is
        // recorded for /readyz and status.
        assert!(health.overdue().is_empty());
        let record = health.get(Role::Source, "s").unwrap().record();
        assert!(
            record
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("disk full")),
            "{record:?}"
        );
        assert!(record.consecutive_failures >= 2);
        stop.cancel();
        assert_eq!(task.await.unwrap(), None);
    }
}
