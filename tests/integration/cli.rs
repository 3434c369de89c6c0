//! The operator's commands: `check` against a live API, `state reset`
//! under the lock, and the second stop signal.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn check_reaches_the_source_and_names_what_fails() {
    let sim = Sim::backlog(10);
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let (code, out, err) = run_cli(
        &["check", "--config", config.to_str().unwrap()],
        &HashMap::new(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("source asana_it: ok"), "{out}");
    assert!(out.contains("sink file: ok"), "{out}");

    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("token = \"{TOKEN}\""), "token = \"wrong-token\"");
    let config = work.write_config(&text);
    let (code, out, err) = run_cli(
        &["check", "--config", config.to_str().unwrap()],
        &HashMap::new(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("source asana_it: FAILED: credentials rejected (HTTP 401)"),
        "{out}"
    );
    assert!(!out.contains("wrong-token") && !err.contains("wrong-token"));
}

#[test]
fn state_reset_waits_for_the_daemon_and_replays_from_a_time() {
    let sim = Sim::backlog(1_000);
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let cfg = config.to_str().unwrap();
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "the backlog", || {
        Delivered::count(&work.out()) >= 1_000
    });

    // While the daemon runs, the lock refuses the reset.
    let (code, _, err) = run_cli(
        &["state", "reset", "asana_it", "--config", cfg],
        &HashMap::new(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("stop the daemon"), "{err}");
    assert!(daemon.terminate().success());

    // Replay everything from the start of the backlog.
    let (code, out, err) = run_cli(
        &[
            "state",
            "reset",
            "asana_it",
            "--to",
            "2000-01-01T00:00:00Z",
            "--forget-seen",
            "--config",
            cfg,
        ],
        &HashMap::new(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("will restart from 2000-01-01T00:00:00.000Z"),
        "{out}"
    );
    assert!(out.contains("forgot 1000 delivered event ids"), "{out}");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "the replay", || {
        Delivered::count(&work.out()) >= 2_000
    });
    assert!(daemon.terminate().success());
    let delivered = Delivered::read(&work.out());
    let mut counts = std::collections::BTreeMap::new();
    for id in &delivered.ids {
        *counts.entry(id.as_str()).or_insert(0) += 1;
    }
    assert!(counts.values().all(|n| *n == 2), "each event exactly twice");
    assert_eq!(delivered.unique(), sim.gids());
    // 2000-01-01 is long past Asana's retention: clamped, and said so.
    assert!(daemon_logs(&work).contains("beyond asana's 90-day retention"));
}

#[test]
fn a_second_signal_exits_at_once() {
    let sim = Sim::backlog(500);
    let work = Workdir::new();
    // The sink cannot write (its directory is a file), so the drain after
    // the first signal would wait the whole 5 s grace.
    std::fs::write(work.path("out"), b"not a directory").unwrap();
    let text = std::fs::read_to_string(work.config(&sim.base_url, ""))
        .unwrap()
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"60s\"");
    let config = work.write_config(&text);
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(30), "a failed delivery", || {
        daemon.logs().contains("delivery failed")
    });
    let pid = daemon.pid();
    signal(pid, "TERM");
    wait_until(
        Duration::from_secs(10),
        "the first signal to be seen",
        || daemon.logs().contains("stopping"),
    );
    let sent = Instant::now();
    let status = daemon.terminate();
    // Far sooner than the 60 s the drain would otherwise wait.
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?}",
        sent.elapsed()
    );
    // The second signal ends the process through exit(128 + SIGTERM).
    assert_eq!(status.code(), Some(128 + 15), "{status}");
}

fn daemon_logs(work: &Workdir) -> String {
    std::fs::read_to_string(work.path("daemon.log")).unwrap_or_default()
}

#[test]
fn json_logs_are_one_object_per_line() {
    let sim = Sim::backlog(100);
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let daemon = Daemon::start_with_env(
        &config,
        work.path("daemon.log"),
        &[("AUDITRELAY__LOG__FORMAT", "json")],
    );
    wait_until(Duration::from_secs(30), "the events", || {
        Delivered::count(&work.out()) >= 100
    });
    let logs = daemon.logs();
    assert!(daemon.terminate().success());
    let mut messages = Vec::new();
    for line in std::fs::read_to_string(work.path("daemon.log"))
        .unwrap()
        .lines()
    {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        messages.push(value["message"].as_str().unwrap_or_default().to_string());
        assert!(value["level"].is_string(), "{line}");
    }
    assert!(
        messages.iter().any(|m| m == "asana source started"),
        "{logs}"
    );
    let started = logs
        .lines()
        .find(|l| l.contains("asana source started"))
        .unwrap();
    let started: serde_json::Value = serde_json::from_str(started).unwrap();
    assert_eq!(
        started["source"], "asana_it",
        "fields are fields, not text: {started}"
    );
}
