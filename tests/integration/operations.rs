//! Running it in production: metrics, health and readiness, `status`, the
//! systemd notify protocol, SIGHUP reloads, credentials from systemd.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use auditrelay::simulator::{FaultUpdate, SimConfig};

use crate::common::{
    run_cli, signal, wait_until, Daemon, Delivered, Sim, Workdir, TOKEN, WORKSPACE,
};

/// A plain HTTP/1.1 GET on loopback: (status, body).
fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The address the daemon's endpoint listens on (it logs it at start).
fn http_address(daemon: &Daemon) -> String {
    let mut address = None;
    wait_until(
        Duration::from_secs(20),
        "the http endpoint to start",
        || {
            address = daemon.logs().lines().find_map(|line| {
                line.contains("serving /metrics")
                    .then(|| line.split("address=").nth(1))
                    .flatten()
                    .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
            });
            address.is_some()
        },
    );
    address.unwrap()
}

/// The value of the sample `name{labels}` (exact label text) in an
/// exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn status_json(config: &Path) -> serde_json::Value {
    let (code, out, err) = run_cli(
        &["status", "--json", "--config", config.to_str().unwrap()],
        &HashMap::new(),
    );
    assert_eq!(code, 0, "status failed: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn metrics_readiness_and_status_tell_what_happens() {
    let sim = Sim::backlog(300);
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let config =
        work.write_config(&text.replace("[log]", "[http]\nlisten = \"127.0.0.1:0\"\n[log]"));
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    let address = http_address(&daemon);
    wait_until(Duration::from_secs(60), "300 events", || {
        Delivered::total(&work.out()) >= 300
    });

    let (status, body) = http_get(&address, "/healthz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"alive"}"#));

    // Counters move with every page; gauges follow within a few seconds.
    let source = r#"{source="asana_it",kind="asana"}"#;
    let sink = r#"{sink="file",kind="file"}"#;
    let mut metrics = String::new();
    wait_until(Duration::from_secs(30), "gauges to catch up", || {
        metrics = http_get(&address, "/metrics").1;
        sample(
            &metrics,
            &format!("auditrelay_sink_events_acknowledged_total{sink}"),
        ) == Some(300.0)
            && sample(&metrics, &format!("auditrelay_sink_outbox_events{sink}")) == Some(0.0)
            && sample(
                &metrics,
                &format!("auditrelay_source_last_success_timestamp_seconds{source}"),
            )
            .is_some_and(|t| t > 0.0)
    });
    assert_eq!(
        sample(
            &metrics,
            &format!("auditrelay_source_events_stored_total{source}")
        ),
        Some(300.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            r#"auditrelay_source_requests_total{source="asana_it",kind="asana",status="200"}"#
        )
        .is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("auditrelay_source_retention_seconds{source}")
        ),
        Some(90.0 * 86400.0)
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("auditrelay_source_retention_warning{source}")
        ),
        Some(0.0)
    );
    assert!(
        metrics.contains("auditrelay_build_info{version=\""),
        "{metrics}"
    );
    assert!(!metrics.contains(TOKEN));

    let (status, body) = http_get(&address, "/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let components: BTreeSet<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    assert_eq!(
        components,
        BTreeSet::from(["state", "source/asana_it", "sink/file"])
    );

    // `status` reads the same from the state file while the daemon runs.
    let mut report = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(30),
        "status to show the success",
        || {
            report = status_json(&config);
            report["sources"][0]["last_success"].is_string()
                && report["sinks"][0]["last_ack"].is_string()
        },
    );
    assert_eq!(report["daemon_running"], true, "{report}");
    assert_eq!(report["sources"][0]["id"], "asana_it");
    assert_eq!(report["sinks"][0]["pending_events"], 0, "{report}");
    assert!(report["sources"][0]["lag_seconds"].is_i64(), "{report}");

    // A revoked token: the failure shows up in status, without the token.
    sim.faults(FaultUpdate {
        revoke_token: Some(TOKEN.into()),
        ..FaultUpdate::default()
    });
    wait_until(Duration::from_secs(30), "status to show the 401", || {
        report = status_json(&config);
        report["sources"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("401"))
    });
    assert!(
        report["sources"][0]["consecutive_failures"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let metrics = http_get(&address, "/metrics").1;
    assert!(
        sample(
            &metrics,
            r#"auditrelay_source_errors_total{source="asana_it",kind="asana",class="unauthorized"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let (code, text, _) = run_cli(
        &["status", "--config", config.to_str().unwrap()],
        &HashMap::new(),
    );
    assert_eq!(code, 0);
    assert!(text.contains("daemon running"), "{text}");
    assert!(text.contains("last error"), "{text}");
    let stored = std::fs::read(work.path("state/state.db")).unwrap();
    let wal = std::fs::read(work.path("state/state.db-wal")).unwrap_or_default();
    for bytes in [&stored, &wal] {
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "the token reached the state file"
        );
    }

    assert!(daemon.terminate().success());
    let report = status_json(&config);
    assert_eq!(report["daemon_running"], false);
}

/// Messages arriving on a notify socket the test owns.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(work: &Workdir) -> Self {
        let path = work.path("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a message containing `needle`; returns it.
    fn expect(&mut self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        let mut buf = vec![0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(message.clone());
                if message.contains(needle) {
                    return message;
                }
            }
            assert!(
                start.elapsed() < limit,
                "no {needle:?} within {limit:?}; got {:?}",
                self.seen
            );
        }
    }
}

#[test]
fn speaks_the_systemd_notify_protocol() {
    let sim = Sim::backlog(50);
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let mut notify = NotifySocket::bind(&work);
    let socket = notify.path.to_str().unwrap().to_string();
    let daemon = Daemon::start_with_env(
        &config,
        work.path("daemon.log"),
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "2000000")],
    );
    let ready = notify.expect("READY=1", Duration::from_secs(30));
    assert!(ready.contains("STATUS=1 sources, 1 sinks"), "{ready}");
    notify.expect("WATCHDOG=1", Duration::from_secs(5));
    notify.expect("WATCHDOG=1", Duration::from_secs(5));
    wait_until(Duration::from_secs(30), "50 events", || {
        Delivered::total(&work.out()) >= 50
    });
    let status = notify.expect(
        "STATUS=1 sources, 1 sinks; worst lag asana_it",
        Duration::from_secs(15),
    );
    assert!(status.contains("outbox"), "{status}");

    signal(daemon.pid(), "HUP");
    notify.expect("RELOADING=1", Duration::from_secs(10));
    notify.expect("READY=1", Duration::from_secs(10));

    signal(daemon.pid(), "TERM");
    notify.expect("STOPPING=1", Duration::from_secs(10));
    assert!(daemon.wait().success());
}

/// Live events per second per workspace, and how many, in the reload test:
/// events keep arriving while sources and sinks stop and start.
const LIVE_RATE: f64 = 25.0;
const LIVE_MAX: u64 = 250;

fn two_workspace_sim() -> (Sim, &'static str) {
    const SECOND: &str = "1200000000000001";
    let sim = Sim::start(SimConfig {
        seed: 11,
        workspaces: vec![WORKSPACE.into(), SECOND.into()],
        tokens: vec![TOKEN.into()],
        backlog: 100,
        rate: LIVE_RATE,
        max_live: Some(LIVE_MAX),
        ..SimConfig::default()
    });
    (sim, SECOND)
}

#[test]
fn sighup_adds_changes_and_removes_without_loss_and_keeps_a_bad_config_out() {
    let (sim, second) = two_workspace_sim();
    let work = Workdir::new();
    let base = std::fs::read_to_string(work.config(&sim.base_url, "")).unwrap();
    let config = work.path("auditrelay.toml");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(
        Duration::from_secs(60),
        "the first workspace's backlog",
        || Delivered::total(&work.out()) >= 100,
    );

    // Add a source and a sink while events arrive.
    let out2 = work.path("out2/events.jsonl");
    let with_more = format!(
        r#"{base}
[sources.asana_two]
kind = "asana"
base_url = "{url}"
workspace_gid = "{second}"
token = "{TOKEN}"
start_at = "2h"
poll_interval = "200ms"
[sinks.file2]
kind = "file"
path = "{out2}"
"#,
        url = sim.base_url,
        out2 = out2.display()
    );
    std::fs::write(&config, &with_more).unwrap();
    signal(daemon.pid(), "HUP");
    wait_until(Duration::from_secs(30), "the first reload", || {
        daemon
            .logs()
            .contains("added=sinks.file2,sources.asana_two")
    });
    wait_until(
        Duration::from_secs(60),
        "the second workspace in both sinks",
        || {
            let seen = sim.gids_of(second);
            seen.len() >= 150
                && Delivered::read(&work.out()).unique().is_superset(&seen)
                && Delivered::read(&out2).unique().is_superset(&seen)
        },
    );

    // A broken config is refused whole, with every problem named.
    std::fs::write(
        &config,
        format!("{with_more}\n[sinks.file3]\nkind = \"file\"\nbogus = 1\n"),
    )
    .unwrap();
    signal(daemon.pid(), "HUP");
    wait_until(Duration::from_secs(20), "the rejection", || {
        daemon
            .logs()
            .contains("reload rejected; the running configuration stays in force")
    });
    let logs = daemon.logs();
    assert!(logs.contains("sinks.file3.bogus"), "{logs}");
    assert!(logs.contains("sinks.file3.path"), "{logs}");
    assert!(!work.path("out3").exists());

    // Remove the second source and sink, change the first source, still
    // while events arrive.
    std::fs::write(
        &config,
        base.replace("poll_interval = \"200ms\"", "poll_interval = \"300ms\""),
    )
    .unwrap();
    signal(daemon.pid(), "HUP");
    wait_until(Duration::from_secs(30), "the second reload", || {
        daemon
            .logs()
            .contains("changed=sources.asana_it removed=sinks.file2,sources.asana_two")
    });
    // Every live event of the first workspace arrives once; the removed
    // sink no longer holds the outbox back.
    let total = 100 + LIVE_MAX as usize;
    wait_until(
        Duration::from_secs(60),
        "the first workspace's live events",
        || {
            sim.gids_of(WORKSPACE).len() == total
                && Delivered::read(&work.out())
                    .unique()
                    .is_superset(&sim.gids_of(WORKSPACE))
        },
    );
    wait_until(Duration::from_secs(30), "the outbox to empty", || {
        crate::common::outbox_empty(&config)
    });
    assert!(daemon.terminate().success());
    let delivered = Delivered::read(&work.out());
    let second_seen: BTreeSet<String> = Delivered::read(&out2).unique();
    let expected: BTreeSet<String> = sim
        .gids_of(WORKSPACE)
        .into_iter()
        .chain(second_seen.iter().cloned())
        .collect();
    assert!(
        delivered.unique().is_superset(&expected),
        "the first sink missed events"
    );
    assert_eq!(delivered.duplicates(), 0, "a reload sent events twice");
}

#[test]
fn a_token_comes_from_a_systemd_credential() {
    let sim = Sim::backlog(20);
    let work = Workdir::new();
    let creds = work.path("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("asana-token"), format!("{TOKEN}\n")).unwrap();
    let text = std::fs::read_to_string(work.config(&sim.base_url, "")).unwrap();
    let config = work.write_config(&text.replace(
        &format!("token = \"{TOKEN}\""),
        "token_credential = \"asana-token\"",
    ));
    let path = config.to_str().unwrap();

    let (code, _, err) = run_cli(&["check", "--offline", "--config", path], &HashMap::new());
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("sources.asana_it.token_credential"), "{err}");
    assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");

    let dir = creds.to_str().unwrap();
    let env = HashMap::from([("CREDENTIALS_DIRECTORY", dir)]);
    let (code, _, err) = run_cli(&["check", "--offline", "--config", path], &env);
    assert_eq!(code, 0, "{err}");

    let daemon = Daemon::start_with_env(
        &config,
        work.path("daemon.log"),
        &[("CREDENTIALS_DIRECTORY", dir)],
    );
    wait_until(Duration::from_secs(60), "20 events", || {
        Delivered::total(&work.out()) >= 20
    });
    assert!(daemon.terminate().success());
}
