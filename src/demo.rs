//! `auditrelay demo`: the built-in Asana and Anaplan simulators and the
//! daemon in one process, an Asana and an Anaplan source side by side,
//! printing events as JSON lines on standard output.
//!
//! The simulator's seed and epoch are kept in the demo directory next to the
//! state file, so a restarted demo serves the same stream and the daemon
//! continues where it stopped: nothing repeated, nothing missing.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{
    AnaplanConfig, AnaplanCredentials, AsanaConfig, AsanaFilters, Config, HttpConfig, LogConfig,
    LogFormat, SinkConfig, SinkKind, SourceConfig, StartAt, StateConfig,
};
use crate::retry::BackoffPolicy;
use crate::secret::Secret;
use crate::simulator::anaplan::{AnaplanSim, AnaplanSimConfig, Credential};
use crate::simulator::{SimConfig, Simulator};

/// Options of `auditrelay demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its state.
    #[arg(long, default_value = "auditrelay-demo")]
    pub dir: PathBuf,
    /// Events already in the simulated audit log when the demo first starts.
    #[arg(long, default_value_t = 200)]
    pub backlog: u64,
    /// New events per second after that.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Log level (a tracing filter).
    #[arg(long, default_value = "info", value_parser = log_level)]
    pub log_level: String,
}

fn log_level(level: &str) -> Result<String, String> {
    crate::config::check_log_level(level).map(|()| level.to_string())
}

const DEMO_TOKEN: &str = "demo-service-account-token";
const DEMO_ANAPLAN_USER: &str = "auditor@example.com";
const DEMO_ANAPLAN_PASSWORD: &str = "demo-anaplan-password";
const DEMO_WORKSPACE: &str = "1200000000000000";

/// What makes the simulated stream the same across demo restarts.
#[derive(Debug, Serialize, Deserialize)]
struct Timeline {
    seed: u64,
    epoch: DateTime<Utc>,
}

fn timeline(dir: &Path) -> anyhow::Result<Timeline> {
    let path = dir.join("simulator.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let timeline = Timeline {
                seed: rand::random(),
                epoch: Utc::now(),
            };
            std::fs::write(&path, serde_json::to_vec_pretty(&timeline)?)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(timeline)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The daemon's configuration for the demo.
pub fn config(args: &DemoArgs, base_url: String, anaplan_url: String) -> Config {
    Config {
        state: StateConfig {
            path: args.dir.join("state.db"),
            max_outbox_events: 1_000_000,
            dedup_window: Duration::from_secs(24 * 3600),
        },
        log: LogConfig {
            level: args.log_level.clone(),
            format: LogFormat::Text,
        },
        // The demo serves no metrics: two demos side by side would fight
        // over the port.
        http: HttpConfig { listen: None },
        fingerprints: Default::default(),
        shutdown_grace: Duration::from_secs(5),
        sources: vec![
            SourceConfig::Asana(AsanaConfig {
                id: "asana_demo".into(),
                base_url,
                workspace_gid: DEMO_WORKSPACE.into(),
                token: Secret::new(DEMO_TOKEN),
                filters: AsanaFilters::default(),
                page_size: 100,
                // The backlog spans the hour before the first start.
                start_at: StartAt::Lookback(Duration::from_secs(2 * 3600)),
                poll_interval: Duration::from_secs(2),
                request_timeout: Duration::from_secs(10),
                restart_margin: Duration::from_secs(300),
                parallel_slices: crate::config::DEFAULT_PARALLEL_SLICES,
                // The demo's backlog is a few pages: read as one stream,
                // in order, rather than in time slices.
                backfill_threshold: Duration::from_secs(3 * 3600),
                retry: BackoffPolicy {
                    initial: Duration::from_millis(200),
                    max: Duration::from_secs(10),
                },
                slow_retry_interval: Duration::from_secs(30),
                requests_per_minute: crate::config::ASANA_REQUESTS_PER_MINUTE,
                enrich: crate::enrich::EnrichConfig::default(),
            }),
            SourceConfig::Anaplan(AnaplanConfig {
                id: "anaplan_demo".into(),
                auth_url: anaplan_url.clone(),
                audit_url: format!("{anaplan_url}/audit/api/1"),
                api_url: format!("{anaplan_url}/2/0"),
                credentials: AnaplanCredentials::Basic {
                    user: DEMO_ANAPLAN_USER.into(),
                    password: Secret::new(DEMO_ANAPLAN_PASSWORD),
                },
                event_type: "all".into(),
                page_size: 1000,
                parallel_pages: crate::config::ANAPLAN_PARALLEL_PAGES,
                start_at: StartAt::Lookback(Duration::from_secs(2 * 3600)),
                poll_interval: Duration::from_secs(2),
                request_timeout: Duration::from_secs(10),
                overlap: Duration::from_secs(600),
                requests_per_minute: crate::config::ANAPLAN_REQUESTS_PER_MINUTE,
                enrich: crate::enrich::EnrichConfig::default(),
                retry: BackoffPolicy {
                    initial: Duration::from_millis(200),
                    max: Duration::from_secs(10),
                },
                slow_retry_interval: Duration::from_secs(30),
            }),
        ],
        sinks: vec![SinkConfig {
            id: "stdout".into(),
            batch_size: 100,
            retry: BackoffPolicy::default(),
            kind: SinkKind::Stdout,
        }],
    }
}

/// Runs the demo until `shutdown`.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Holds the state file: private, like any state directory.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let timeline = timeline(&args.dir)?;
    let simulator = Simulator::new(SimConfig {
        seed: timeline.seed,
        workspaces: vec![DEMO_WORKSPACE.into()],
        tokens: vec![DEMO_TOKEN.into()],
        epoch: timeline.epoch,
        backlog: args.backlog,
        backlog_span: Duration::from_secs(3600),
        rate: args.rate,
        ..SimConfig::default()
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let base_url = format!("http://{}/api/1.0", listener.local_addr()?);
    tracing::info!(url = %base_url, dir = %args.dir.display(), "demo: simulated asana audit log is up");
    let sim_stop = CancellationToken::new();
    let server = tokio::spawn(simulator.serve(listener, sim_stop.clone().cancelled_owned()));
    let anaplan = AnaplanSim::new(AnaplanSimConfig {
        seed: timeline.seed,
        credentials: vec![Credential::new(
            DEMO_ANAPLAN_USER,
            DEMO_ANAPLAN_PASSWORD,
            true,
        )],
        epoch: timeline.epoch,
        backlog: args.backlog,
        backlog_span: Duration::from_secs(3600),
        rate: args.rate,
        ..AnaplanSimConfig::default()
    });
    let anaplan_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let anaplan_url = format!("http://{}", anaplan_listener.local_addr()?);
    tracing::info!(url = %anaplan_url, "demo: simulated anaplan audit api is up");
    let anaplan_server =
        tokio::spawn(anaplan.serve(anaplan_listener, sim_stop.clone().cancelled_owned()));
    let result = crate::app::run(config(&args, base_url, anaplan_url), None, shutdown).await;
    sim_stop.cancel();
    server.await??;
    anaplan_server.await??;
    result
}
