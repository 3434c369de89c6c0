//! The command line: parsing, logging setup, and one call into the library
//! per subcommand. Exit codes: 0 success, 1 failure, 78 bad configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::asana::client::{AsanaClient, Position};
use crate::config::{self, Config, ConfigErrors, LogConfig, LogFormat, SinkKind, SourceConfig};
use crate::envelope::format_time;
use crate::metrics::SourceMetrics;
use crate::simulator::anaplan::AnaplanSim;
use crate::simulator::{SimArgs, Simulator};
use crate::state::{SourceCursor, StateDb, StateLock};

/// Streams SaaS audit logs (Asana) into a SIEM without losing an event.
#[derive(Debug, Parser)]
#[command(name = "auditrelay", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The configuration file (TOML).
    #[arg(
        long,
        short,
        env = "AUDITRELAY_CONFIG",
        default_value = "/etc/auditrelay/auditrelay.toml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run(ConfigArg),
    /// Validate the configuration, then reach every source and sink.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Only validate the configuration (no network, no files written).
        #[arg(long)]
        offline: bool,
    },
    /// Per source and sink: progress, lag, last success and error (read
    /// from the state file; works while the daemon runs).
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running daemon's /healthz (or another URL) and exit 0 if it
    /// answers 2xx: a HEALTHCHECK for images without curl.
    Health {
        /// The URL to ask.
        #[arg(long, default_value = "http://127.0.0.1:9464/healthz")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Inspect or change the state file.
    #[command(subcommand)]
    State(StateCommand),
    /// Events sinks rejected for good: list, replay or purge them.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Serve the simulated Asana audit log API (and, with --anaplan-listen,
    /// the Anaplan APIs).
    Simulate(SimArgs),
    /// Run the simulator and the daemon together, printing events.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Print cursors, sink progress and outbox size.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forget a source's position so it starts again (the daemon must be
    /// stopped).
    Reset {
        /// The source's id.
        source: String,
        /// Restart from this time (RFC 3339) instead of the configured
        /// first-run start.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Also forget which events were already delivered, so that the
        /// events after the new start are delivered again.
        #[arg(long)]
        forget_seen: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters (id, sink, event, reason).
    List {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Mark dead letters to be delivered again by their sink (works while
    /// the daemon runs; fix the cause first).
    Replay {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Only these ids (default: all, of --sink if given).
        ids: Vec<i64>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Delete dead letters for good.
    Purge {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Only these ids.
        ids: Vec<i64>,
        /// Needed to delete every dead letter (of --sink if given) without
        /// naming ids.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Parses the command line, runs it, and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("auditrelay")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            if let Some(config) = error.downcast_ref::<ConfigErrors>() {
                eprintln!("error: {config}");
                return ExitCode::from(config::EXIT_CONFIG as u8);
            }
            if crate::telemetry::initialized() {
                tracing::error!(error = %format!("{error:#}"), "auditrelay failed");
            } else {
                eprintln!("error: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(config::load(path)?)
}

fn default_log() -> LogConfig {
    LogConfig {
        level: "info".into(),
        format: LogFormat::Text,
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let config = load(&args.config)?;
            crate::telemetry::init(&config.log);
            let shutdown = crate::shutdown::install()?;
            let path = args.config.clone();
            let reload = crate::app::Reload {
                requests: crate::shutdown::reload_requests()?,
                load: std::sync::Arc::new(move || config::load(&path)),
            };
            crate::app::run(config, Some(reload), shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let config = load(&config.config)?;
            let path = config.state.path.clone();
            let (observation, running) = tokio::task::spawn_blocking(move || {
                let observation = StateDb::open_read_only(&path)?.observe()?;
                let running = StateLock::is_held(&path);
                Ok::<_, crate::state::StateError>((observation, running))
            })
            .await??;
            let status =
                crate::status::build(&config, &observation, running, crate::state::unix_ms_now());
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", crate::status::render(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { url, timeout } => {
            let client = reqwest::Client::builder().timeout(timeout).build()?;
            match client.get(&url).send().await {
                Ok(response) if response.status().is_success() => {
                    println!("{}", response.text().await.unwrap_or_default());
                    Ok(ExitCode::SUCCESS)
                }
                Ok(response) => {
                    let code = response.status();
                    eprintln!(
                        "unhealthy: {url} answered {code}: {}",
                        response.text().await.unwrap_or_default()
                    );
                    Ok(ExitCode::FAILURE)
                }
                Err(error) => {
                    eprintln!("unhealthy: {url}: {error}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Check { config, offline } => {
            let config = load(&config.config)?;
            println!(
                "configuration valid: {} sources, {} sinks",
                config.sources.len(),
                config.sinks.len()
            );
            if offline {
                return Ok(ExitCode::SUCCESS);
            }
            Ok(if check(&config).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::State(StateCommand::Show { config, json }) => {
            let config = load(&config.config)?;
            let summary = tokio::task::spawn_blocking(move || {
                StateDb::open_read_only(&config.state.path)?.summary()
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print_summary(&summary);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::State(StateCommand::Reset {
            source,
            to,
            forget_seen,
            config,
        }) => {
            let config = load(&config.config)?;
            if !config.sources.iter().any(|s| s.id() == source) {
                eprintln!("warning: {source:?} is not a source in the configuration");
            }
            let path = config.state.path.clone();
            tokio::task::spawn_blocking(move || reset(&path, &source, to, forget_seen)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(command) => dlq(command).await,
        Command::Simulate(args) => {
            crate::telemetry::init(&default_log());
            let shutdown = crate::shutdown::install()?;
            let listener = tokio::net::TcpListener::bind(args.listen())
                .await
                .with_context(|| format!("binding {}", args.listen()))?;
            let addr = listener.local_addr()?;
            // Tests and scripts read this line to find the port.
            println!("listening on http://{addr}/api/1.0");
            let config = args.to_config();
            let anaplan = match args.anaplan().listen() {
                Some(anaplan_addr) => {
                    let anaplan_config = args.anaplan().to_config(config.seed, config.epoch);
                    let sim = AnaplanSim::try_new(anaplan_config).map_err(anyhow::Error::msg)?;
                    if let Some(dir) = args.anaplan().cert_dir() {
                        sim.write_client_files(dir, sim.default_login())
                            .with_context(|| {
                                format!("writing certificates to {}", dir.display())
                            })?;
                    }
                    let listener = tokio::net::TcpListener::bind(anaplan_addr)
                        .await
                        .with_context(|| format!("binding {anaplan_addr}"))?;
                    println!("anaplan listening on http://{}", listener.local_addr()?);
                    Some(tokio::spawn(
                        sim.serve(listener, shutdown.clone().cancelled_owned()),
                    ))
                }
                None => None,
            };
            let simulator = Simulator::new(config);
            simulator
                .serve(listener, shutdown.cancelled_owned())
                .await?;
            if let Some(anaplan) = anaplan {
                anaplan.await??;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            crate::telemetry::init(&LogConfig {
                level: args.log_level.clone(),
                format: LogFormat::Text,
            });
            let shutdown = crate::shutdown::install()?;
            crate::demo::run(args, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { sink, json, config } => {
            let config = load(&config.config)?;
            let letters = tokio::task::spawn_blocking(move || {
                StateDb::open_read_only(&config.state.path)?.dead_letters(sink.as_deref())
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                for l in &letters {
                    println!(
                        "{} sink={} source={} event={} at={}{}: {}",
                        l.id,
                        l.sink_id,
                        l.source_id,
                        l.event_id,
                        format_time(l.dead_at),
                        if l.replay { " (replay pending)" } else { "" },
                        l.reason
                    );
                }
            }
        }
        DlqCommand::Replay { sink, ids, config } => {
            let config = load(&config.config)?;
            let n = tokio::task::spawn_blocking(move || {
                Ok::<_, anyhow::Error>(
                    open_existing(&config.state.path)?.mark_replay(sink.as_deref(), &ids)?,
                )
            })
            .await??;
            println!("marked {n} dead letters for replay; their sinks deliver them next");
        }
        DlqCommand::Purge {
            sink,
            ids,
            all,
            config,
        } => {
            anyhow::ensure!(
                all || !ids.is_empty(),
                "name the dead letters to purge, or pass --all"
            );
            let config = load(&config.config)?;
            let n = tokio::task::spawn_blocking(move || {
                Ok::<_, anyhow::Error>(
                    open_existing(&config.state.path)?.purge_dead_letters(sink.as_deref(), &ids)?,
                )
            })
            .await??;
            println!("purged {n} dead letters");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens a state file for writing, refusing to create one.
fn open_existing(path: &Path) -> anyhow::Result<StateDb> {
    anyhow::ensure!(
        path.exists(),
        "no state file at {} (has the daemon run yet?)",
        path.display()
    );
    Ok(StateDb::open(path)?)
}

/// Reaches every source and sink; prints one line each. True if all work.
async fn check(config: &Config) -> bool {
    let mut ok = true;
    for source in &config.sources {
        let result = match source {
            SourceConfig::Asana(asana) => {
                match AsanaClient::new(asana, SourceMetrics::detached(&asana.id, "asana")) {
                    Ok(client) => {
                        let since = chrono::Utc::now() - chrono::Duration::minutes(1);
                        client
                            .fetch(&Position {
                                start_at: since,
                                end_at: None,
                                offset: None,
                            })
                            .await
                            .map(|page| {
                                format!("ok ({} events in the last minute)", page.records.len())
                            })
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            SourceConfig::Anaplan(anaplan) => {
                match crate::anaplan::client::AnaplanClient::new(
                    anaplan,
                    SourceMetrics::detached(&anaplan.id, "anaplan"),
                ) {
                    Ok((client, _)) => {
                        let now = chrono::Utc::now().timestamp_millis();
                        let window = crate::anaplan::client::Window {
                            from: now - 60_000,
                            to: now,
                        };
                        client
                            .fetch(window, 0)
                            .await
                            .map(|page| {
                                format!("ok ({} events in the last minute)", page.records.len())
                            })
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match result {
            Ok(line) => println!("source {}: {line}", source.id()),
            Err(e) => {
                ok = false;
                println!("source {}: FAILED: {e}", source.id());
            }
        }
    }
    for sink in &config.sinks {
        let result = match &sink.kind {
            SinkKind::Stdout => Ok(()),
            SinkKind::File(file) => check_writable(&file.path),
            SinkKind::Syslog(syslog) => check_syslog(syslog).await,
            SinkKind::Kafka(kafka) => check_kafka(kafka).await,
        };
        match result {
            Ok(()) => println!("sink {}: ok", sink.id),
            Err(e) => {
                ok = false;
                println!("sink {}: FAILED: {e:#}", sink.id);
            }
        }
    }
    match check_writable_dir(&config.state.path) {
        Ok(()) => println!("state {}: ok", config.state.path.display()),
        Err(e) => {
            ok = false;
            println!("state {}: FAILED: {e:#}", config.state.path.display());
        }
    }
    ok
}

/// A TCP receiver must accept a connection; UDP has nothing to check but
/// that the address resolves.
async fn check_syslog(config: &crate::sink::syslog::SyslogConfig) -> anyhow::Result<()> {
    use crate::sink::syslog::Transport;
    let connect = async {
        match &config.transport {
            Transport::Udp => tokio::net::lookup_host(&config.address).await.map(|_| ()),
            Transport::Tls(tls) => {
                // The whole handshake: certificates are what usually fails.
                let tcp = tokio::net::TcpStream::connect(&config.address).await?;
                let connector =
                    tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&tls.client));
                connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map(|_| ())
            }
            _ => tokio::net::TcpStream::connect(&config.address)
                .await
                .map(|_| ()),
        }
    };
    tokio::time::timeout(config.timeout, connect)
        .await
        .with_context(|| format!("{}: timed out", config.address))?
        .with_context(|| format!("cannot reach {}", config.address))
}

/// The brokers must answer a metadata request.
async fn check_kafka(config: &crate::sink::kafka::KafkaConfig) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseProducer, Producer};
    let client = config.client_config();
    let brokers = config.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = client
            .create()
            .map_err(|e| anyhow::anyhow!(crate::sink::kafka::config_error(&e)))?;
        let metadata = producer
            .client()
            .fetch_metadata(None, std::time::Duration::from_secs(10))?;
        anyhow::ensure!(!metadata.brokers().is_empty(), "no broker answered");
        Ok(())
    })
    .await?
    .with_context(|| format!("cannot reach kafka at {brokers}"))
}

fn check_writable(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot append to {}", path.display()))?;
        return Ok(());
    }
    check_writable_dir(path)
}

/// The nearest existing ancestor of `path` must be a writable directory.
fn check_writable_dir(path: &Path) -> anyhow::Result<()> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            dir = Some(Path::new("."));
            continue;
        }
        if d.exists() {
            let probe =
                tempfile_in(d).with_context(|| format!("{} is not writable", d.display()))?;
            std::fs::remove_file(probe)?;
            return Ok(());
        }
        dir = d.parent();
    }
    Ok(())
}

fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    let probe = dir.join(format!(".auditrelay-check-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    Ok(probe)
}

fn reset(
    path: &Path,
    source: &str,
    to: Option<chrono::DateTime<chrono::Utc>>,
    forget_seen: bool,
) -> anyhow::Result<()> {
    let _lock = StateLock::acquire(path).context("stop the daemon before resetting a source")?;
    let mut db = StateDb::open(path)?;
    match to {
        Some(at) => {
            let mut cursor = db.cursor(source)?.unwrap_or_default();
            cursor = SourceCursor {
                position: None,
                stream_start: Some(at.timestamp_millis()),
                last_event_time: None,
                last_event_id: None,
                ..cursor
            };
            db.reset_cursor(source, "asana", &cursor)?;
            println!(
                "source {source}: will restart from {}",
                format_time(at.timestamp_millis())
            );
        }
        None => {
            let existed = db.delete_cursor(source)?;
            println!(
                "source {source}: {}",
                if existed {
                    "cursor removed; the next run starts as a first run"
                } else {
                    "had no cursor"
                }
            );
        }
    }
    if forget_seen {
        let n = db.forget_seen(source)?;
        println!("source {source}: forgot {n} delivered event ids");
    }
    Ok(())
}

fn print_summary(summary: &crate::state::StateSummary) {
    println!(
        "state file: {} (schema v{})",
        summary.path.display(),
        summary.schema_version
    );
    println!("sources:");
    if summary.sources.is_empty() {
        println!("  (none yet)");
    }
    let time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), format_time);
    for (id, kind, cursor) in &summary.sources {
        println!(
            "  {id} ({kind}): newest event {} (id {}), offset {}, stream start {}",
            time(cursor.last_event_time),
            cursor.last_event_id.as_deref().unwrap_or("-"),
            if cursor.position.is_some() {
                "held"
            } else {
                "none (restarts by time)"
            },
            time(cursor.stream_start),
        );
    }
    println!("sinks:");
    for sink in &summary.sinks {
        let behind = summary
            .outbox_newest_seq
            .map_or(0, |n| (n - sink.acked_seq).max(0));
        println!(
            "  {} ({}{}): acknowledged up to seq {}, {behind} behind",
            sink.sink_id,
            sink.kind,
            if sink.active { "" } else { ", not configured" },
            sink.acked_seq
        );
    }
    println!(
        "outbox: {} events; dedup window: {} ids; quarantined records: {}",
        summary.outbox_events, summary.seen_ids, summary.quarantined
    );
}
