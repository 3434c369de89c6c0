//! End-to-end delivery: everything served reaches the sink, exactly once
//! on clean stops, at least once (with bounded repeats) across kill -9.

use std::time::Duration;

use auditrelay::simulator::SimConfig;
use rand::{Rng, SeedableRng};

use crate::common::*;

#[test]
fn ten_thousand_events_reach_the_file_sink_exactly_once() {
    let sim = Sim::backlog(10_000);
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(
        Duration::from_secs(120),
        "10,000 lines in the file sink",
        || Delivered::count(&work.out()) >= 10_000,
    );
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");

    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0);
    assert_eq!(delivered.unique(), sim.gids());

    // The envelope carries the record untouched under `raw`.
    let first = &delivered.lines[0];
    assert_eq!(first["envelope_version"], 1);
    assert_eq!(first["source"]["id"], "asana_it");
    assert_eq!(first["source"]["tenant"], WORKSPACE);
    assert_eq!(first["raw"]["gid"], first["id"]);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));

    // Acknowledged rows left the outbox; the cursor holds an offset.
    let state = state_json(&config);
    assert_eq!(state["outbox_events"], 0, "{state:#}");
    assert_eq!(state["sinks"][0]["acked_seq"], 10_000, "{state:#}");
    assert!(state["sources"][0][2]["position"].is_string(), "{state:#}");
}

#[test]
fn a_clean_restart_continues_without_repeats_or_gaps() {
    // 400 events at once, then 600 more at 300/s while the daemon restarts.
    let sim = Sim::start(SimConfig {
        seed: 11,
        workspaces: vec![WORKSPACE.into()],
        tokens: vec![TOKEN.into()],
        backlog: 400,
        rate: 300.0,
        max_live: Some(600),
        ..SimConfig::default()
    });
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "the backlog", || {
        Delivered::count(&work.out()) >= 400
    });
    assert!(daemon.terminate().success());
    std::thread::sleep(Duration::from_millis(700));
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "all 1,000 events", || {
        Delivered::count(&work.out()) >= 1_000 && sim.gids().len() == 1_000
    });
    // One more poll interval: anything extra would be a repeat.
    std::thread::sleep(Duration::from_millis(500));
    assert!(daemon.terminate().success());
    let delivered = Delivered::read(&work.out());
    assert_eq!(
        delivered.duplicates(),
        0,
        "a clean stop must not repeat anything"
    );
    assert_eq!(delivered.unique(), sim.gids());
}

#[test]
fn kill_9_at_ten_random_moments_loses_nothing() {
    // 5,000 events at once, then 15,000 more at 1,000/s: a 20,000-event
    // stream that is still flowing while the daemon is killed.
    let sim = Sim::start(SimConfig {
        seed: 23,
        workspaces: vec![WORKSPACE.into()],
        tokens: vec![TOKEN.into()],
        backlog: 5_000,
        rate: 1_000.0,
        max_live: Some(15_000),
        ..SimConfig::default()
    });
    let work = Workdir::new();
    // Small files: rotation happens under the kills too.
    let config = work.config(&sim.base_url, "page_size = 100");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "batch_size = 500",
        "batch_size = 500\nmax_bytes = \"1MiB\"\nmax_files = 60",
    );
    let config = work.write_config(&text);
    let seed: u64 = rand::random();
    println!("kill schedule seed: {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..10 {
        let before = Delivered::total(&work.out());
        let daemon = Daemon::start(&config, work.path("daemon.log"));
        // Kill while it works: once it has delivered something this round
        // (or everything is out), then at a random moment within 0.6 s.
        wait_until(Duration::from_secs(60), "progress in this round", || {
            Delivered::total(&work.out()) > before
                || (sim.gids().len() == 20_000 && Delivered::total(&work.out()) >= 20_000)
        });
        let delay = Duration::from_millis(rng.random_range(0..600));
        std::thread::sleep(delay);
        println!(
            "round {round}: kill -9 {delay:?} after the first delivery, {} lines so far",
            Delivered::total(&work.out())
        );
        daemon.kill9();
    }
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(
        Duration::from_secs(120),
        "all 20,000 events after the crashes",
        || sim.gids().len() == 20_000 && Delivered::read(&work.out()).unique().len() >= 20_000,
    );
    assert!(daemon.terminate().success());

    let delivered = Delivered::read(&work.out());
    let served = sim.gids();
    let unique = delivered.unique();
    let missing: Vec<_> = served.difference(&unique).take(5).collect();
    assert!(missing.is_empty(), "missing events, e.g. {missing:?}");
    assert_eq!(
        unique, served,
        "the sink holds events the simulator never served"
    );
    let duplicates = delivered.duplicates();
    println!(
        "duplicates after 10 kill -9: {duplicates} of {} lines",
        delivered.ids.len()
    );
    // Repeats only come from a batch written but not yet recorded as
    // acknowledged when the process died: at most one batch per kill.
    assert!(
        duplicates <= 10 * 500,
        "{duplicates} duplicates exceed one batch per crash"
    );
}

#[test]
fn two_workspaces_flow_and_a_failing_one_does_not_stop_the_other() {
    let other = "1300000000000000";
    let sim = Sim::start(SimConfig {
        seed: 5,
        workspaces: vec![WORKSPACE.into(), other.into()],
        tokens: vec![TOKEN.into()],
        backlog: 1_500,
        rate: 0.0,
        max_live: Some(0),
        ..SimConfig::default()
    });
    let work = Workdir::new();
    let extra = format!(
        r#"
[sources.asana_two]
kind = "asana"
base_url = "{url}"
workspace_gid = "{other}"
token = "{TOKEN}"
start_at = "2h"
poll_interval = "200ms"
retry_initial = "20ms"
retry_max = "300ms"

[sources.asana_bad]
kind = "asana"
base_url = "{url}"
workspace_gid = "{other}"
token = "revoked-token"
start_at = "2h"
poll_interval = "200ms"
slow_retry_interval = "1s"
"#,
        url = sim.base_url
    );
    // The extra sources are separate tables after the first source's keys.
    let config = work.config(&sim.base_url, &extra);
    let started = std::time::Instant::now();
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "both workspaces", || {
        Delivered::count(&work.out()) >= 3_000
    });
    std::thread::sleep(Duration::from_millis(2_500));
    let logs = daemon.logs();
    assert!(daemon.terminate().success());

    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0);
    let mut expected = sim.gids();
    expected.extend(sim.gids_of(other));
    assert_eq!(delivered.unique(), expected);
    assert!(
        logs.contains("asana rejected the token") && logs.contains("asana_bad"),
        "the failing source is named in the logs:\n{logs}"
    );
    // Retried slowly (every second here), not in a tight loop.
    let unauthorized = sim.status_count(401);
    let bound = started.elapsed().as_secs() + 2;
    assert!(
        (1..=bound).contains(&unauthorized),
        "{unauthorized} requests got 401 in {:?}",
        started.elapsed()
    );
}

#[test]
fn a_sink_that_is_down_holds_back_only_itself_and_catches_up() {
    let sim = Sim::backlog(2_000);
    let work = Workdir::new();
    // The second sink's directory is blocked by a file at first.
    let blocked = work.path("second");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let second = blocked.join("events.jsonl");
    let extra = format!(
        "\n[sinks.second]\nkind = \"file\"\npath = \"{}\"\nretry_initial = \"20ms\"\nretry_max = \"200ms\"\n",
        second.display()
    );
    let text = std::fs::read_to_string(work.config(&sim.base_url, "")).unwrap() + &extra;
    let config = work.write_config(&text);
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "the first sink", || {
        Delivered::count(&work.out()) >= 2_000
    });
    let state = state_json(&config);
    assert_eq!(
        state["outbox_events"], 2_000,
        "kept for the sink that is down: {state:#}"
    );
    assert_eq!(acked_seq(&config, "second"), 0, "{state:#}");
    assert!(daemon.logs().contains("delivery failed"));

    std::fs::remove_file(&blocked).unwrap();
    wait_until(
        Duration::from_secs(60),
        "the second sink to catch up",
        || Delivered::count(&second) >= 2_000,
    );
    assert!(daemon.terminate().success());
    for path in [work.out(), second] {
        let delivered = Delivered::read(&path);
        assert_eq!(delivered.duplicates(), 0, "{}", path.display());
        assert_eq!(delivered.unique(), sim.gids(), "{}", path.display());
    }
    assert_eq!(state_json(&config)["outbox_events"], 0);
}
