//! API faults: rate limits, server errors, truncated pages, expired
//! offsets and bad records cost time, never events.

use std::time::Duration;

use auditrelay::simulator::FaultUpdate;

use crate::common::*;

#[test]
fn retry_after_is_honoured() {
    let sim = Sim::backlog(600);
    sim.faults(FaultUpdate {
        rate_limit_next: Some(3),
        retry_after_secs: Some(1),
        ..FaultUpdate::default()
    });
    let work = Workdir::new();
    // One stream: parallel backfill slices have requests in flight when a
    // 429 comes, which then arrive "early" through no fault of theirs
    // (`asana::stream::tests::a_parallel_backfill_survives_429s_and_expired_offsets`).
    let config = work.config(&sim.base_url, "parallel_slices = 1");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "all events", || {
        Delivered::count(&work.out()) >= 600
    });
    let logs = daemon.logs();
    assert!(daemon.terminate().success());
    let stats = sim.stats();
    assert_eq!(sim.status_count(429), 3, "{stats:#}");
    assert_eq!(
        stats["early_requests"], 0,
        "a request came before Retry-After: {stats:#}"
    );
    assert!(logs.contains("rate limited by asana"), "{logs}");
    assert_eq!(Delivered::read(&work.out()).unique(), sim.gids());
}

#[test]
fn server_errors_and_truncated_pages_are_retried_without_loss() {
    let sim = Sim::backlog(4_000);
    sim.faults(FaultUpdate {
        fail_next: Some(4),
        fail_status: Some(503),
        truncate_next: Some(4),
        error_rate: Some(0.15),
        truncate_rate: Some(0.1),
        ..FaultUpdate::default()
    });
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(90), "all events", || {
        Delivered::count(&work.out()) >= 4_000
    });
    let logs = daemon.logs();
    assert!(daemon.terminate().success());
    let stats = sim.stats();
    assert!(
        stats["truncated_responses"].as_u64().unwrap() >= 4,
        "{stats:#}"
    );
    assert!(sim.status_count(503) >= 4, "{stats:#}");
    assert!(
        logs.contains("malformed page"),
        "truncation was seen and retried"
    );
    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0);
    assert_eq!(delivered.unique(), sim.gids());
}

#[test]
fn an_expired_offset_restarts_by_time_without_loss_or_repeats() {
    let sim = Sim::backlog(3_000);
    // Slow pages, so that the offset expires in the middle of the backlog.
    sim.faults(FaultUpdate {
        latency: Some(Duration::from_millis(40)),
        ..FaultUpdate::default()
    });
    let work = Workdir::new();
    // The tail's offset, read as one stream; slices' offsets expiring:
    // `asana::stream::tests::a_parallel_backfill_survives_429s_and_expired_offsets`.
    let config = work.config(&sim.base_url, "parallel_slices = 1");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "the first pages", || {
        Delivered::count(&work.out()) >= 500
    });
    sim.faults(FaultUpdate {
        expire_offsets: true,
        ..FaultUpdate::default()
    });
    // 30 pages make the backlog: the source must still be reading it.
    let pages = sim.endpoint_count("audit_log_events", Some(200));
    assert!(
        pages < 30,
        "the backlog was read ({pages} pages) before the offset expired"
    );
    wait_until(Duration::from_secs(60), "all events", || {
        Delivered::count(&work.out()) >= 3_000
    });
    std::thread::sleep(Duration::from_millis(500));
    let logs = daemon.logs();
    assert!(daemon.terminate().success());
    assert!(sim.status_count(400) >= 1, "the offset was rejected");
    assert!(logs.contains("rejected the stored offset"), "{logs}");
    let delivered = Delivered::read(&work.out());
    // The restart re-reads a margin of events; the dedup window drops them.
    assert_eq!(delivered.duplicates(), 0);
    assert_eq!(delivered.unique(), sim.gids());
}

#[test]
fn bad_records_are_quarantined_and_the_rest_flows() {
    let sim = Sim::backlog(1_000);
    sim.faults(FaultUpdate {
        bad_record_next: Some(3),
        ..FaultUpdate::default()
    });
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "all events", || {
        Delivered::count(&work.out()) >= 1_000
    });
    assert!(daemon.terminate().success());
    assert_eq!(Delivered::read(&work.out()).unique(), sim.gids());
    let state = state_json(&config);
    assert_eq!(state["quarantined"], 3, "{state:#}");
}

#[test]
fn duplicate_and_late_events_are_delivered_once() {
    let sim = Sim::backlog(2_000);
    sim.faults(FaultUpdate {
        duplicate_rate: Some(0.3),
        late_rate: Some(0.2),
        ..FaultUpdate::default()
    });
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "the backlog", || {
        Delivered::count(&work.out()) >= 2_000
    });
    // Stop injecting, then let the stream catch up with the late events.
    sim.faults(FaultUpdate {
        duplicate_rate: Some(0.0),
        late_rate: Some(0.0),
        ..FaultUpdate::default()
    });
    wait_until(Duration::from_secs(60), "late events", || {
        Delivered::read(&work.out()).unique() == sim.gids()
    });
    assert!(daemon.terminate().success());
    let stats = sim.stats();
    assert!(
        stats["duplicates_served"].as_u64().unwrap() > 0,
        "{stats:#}"
    );
    assert!(stats["late_events"].as_u64().unwrap() > 0, "{stats:#}");
    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0);
    assert_eq!(delivered.unique(), sim.gids());
}
