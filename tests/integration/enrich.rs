//! User enrichment end to end: lookups are cached (one request per user,
//! across restarts), deleted users are remembered as unknown, and with the
//! users API down events still flow, marked not enriched.

use std::collections::BTreeSet;
use std::time::Duration;

use auditrelay::simulator::{FaultUpdate, SimConfig};
use serde_json::Value;

use crate::common::*;

/// A pool user the simulator's users API says is deleted (404); it still
/// acts in events, with the name and email the event carried.
const DELETED: &str = "1200000000100003";

/// The user ids an envelope names: a user actor, a user target.
fn named_users(line: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    for party in ["actor", "target"] {
        let party = &line[party];
        if party["type"] == "user" {
            if let Some(id) = party["id"].as_str() {
                if !ids.iter().any(|known| known == id) {
                    ids.push(id.to_string());
                }
            }
        }
    }
    ids
}

fn start_sim(backlog: u64, deleted: &[&str]) -> Sim {
    Sim::start(SimConfig {
        seed: 7,
        workspaces: vec![WORKSPACE.into()],
        tokens: vec![TOKEN.into()],
        deleted_users: deleted.iter().map(|d| d.to_string()).collect(),
        backlog,
        rate: 0.0,
        max_live: Some(0),
        ..SimConfig::default()
    })
}

#[test]
fn each_user_is_looked_up_once_and_deleted_users_are_marked_unknown() {
    let sim = start_sim(3_000, &[DELETED]);
    let work = Workdir::new();
    // A generous bound: this test is about counting, not about slowness.
    let config = work.config(
        &sim.base_url,
        "[sources.asana_it.enrich]\nbound = \"10s\"\n",
    );
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(90), "all events", || {
        Delivered::count(&work.out()) >= 3_000
    });
    assert!(daemon.terminate().success());

    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0);
    assert_eq!(delivered.unique(), sim.gids());

    let mut distinct = BTreeSet::new();
    let mut deleted_events = 0;
    let mut enriched = 0;
    for line in &delivered.lines {
        let named = named_users(line);
        distinct.extend(named.iter().cloned());
        if named.is_empty() {
            assert!(line.get("enrichment").is_none(), "{line}");
        } else if named.iter().any(|id| id == DELETED) {
            deleted_events += 1;
            assert_eq!(line["enrichment"], "user_unknown", "{line}");
        } else {
            enriched += 1;
            assert_eq!(line["enrichment"], "enriched", "{line}");
        }
        for party in ["actor", "target"] {
            if line[party]["type"] == "user" {
                // Found or not, the envelope carries a name or an email.
                assert!(
                    line[party]["email"].is_string() || line[party]["name"].is_string(),
                    "{line}"
                );
            }
        }
    }
    assert!(deleted_events > 0, "the deleted user acts in the backlog");
    assert!(enriched > 1_000, "{enriched}");

    let lookups = sim.endpoint_count("users", None);
    let stats = sim.stats();
    assert!(lookups >= 1, "{stats:#}");
    assert!(
        lookups <= distinct.len() as u64,
        "{lookups} user lookups for {} distinct users: {stats:#}",
        distinct.len()
    );
    assert_eq!(sim.endpoint_count("users", Some(404)), 1, "{stats:#}");
    let paths = sim.request_paths(10_000);
    let asked_deleted = paths
        .iter()
        .filter(|p| p.starts_with(&format!("/api/1.0/users/{DELETED}")))
        .count();
    assert_eq!(asked_deleted, 1, "the deleted user is negatively cached");

    // A restart finds every user in the state file: new events, no lookups.
    sim.faults(FaultUpdate {
        generate: Some(500),
        ..FaultUpdate::default()
    });
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "the new events", || {
        Delivered::count(&work.out()) >= 3_500
    });
    assert!(daemon.terminate().success());
    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0);
    assert_eq!(delivered.unique(), sim.gids());
    assert_eq!(
        sim.endpoint_count("users", None),
        lookups,
        "the cache survived the restart"
    );
    let later = &delivered.lines[3_000..];
    assert!(later
        .iter()
        .filter(|l| !named_users(l).is_empty())
        .all(|l| l["enrichment"] == "enriched" || l["enrichment"] == "user_unknown"));
}

#[test]
fn with_the_users_api_down_events_flow_not_enriched_and_recover() {
    let sim = start_sim(1_500, &[]);
    sim.faults(FaultUpdate {
        users_down: Some(true),
        ..FaultUpdate::default()
    });
    let work = Workdir::new();
    let config = work.config(&sim.base_url, "");
    let started = std::time::Instant::now();
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "all events", || {
        Delivered::count(&work.out()) >= 1_500
    });
    let took = started.elapsed();
    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0);
    assert_eq!(delivered.unique(), sim.gids());
    let mut naming = 0;
    for line in &delivered.lines {
        if named_users(line).is_empty() {
            assert!(line.get("enrichment").is_none(), "{line}");
        } else {
            naming += 1;
            assert_eq!(line["enrichment"], "not_enriched", "{line}");
            // What the event itself said is still there.
            assert!(line["actor"].is_object(), "{line}");
        }
    }
    assert!(naming > 1_000, "{naming}");
    // 15 pages, each waiting at most the 2s bound; lookups failed fast.
    assert!(took < Duration::from_secs(30), "{took:?}");
    let stats = sim.stats();
    let failed = sim.endpoint_count("users", Some(503));
    assert!(failed >= 1, "{stats:#}");
    // The breaker: a few attempts, not one per page and user.
    assert!(
        sim.endpoint_count("users", None) <= 20,
        "users api hammered while down: {stats:#}"
    );
    assert!(
        daemon
            .logs()
            .contains("user lookup failed; events go out not enriched"),
        "{}",
        daemon.logs()
    );

    // Back up: once the breaker's backoff passed, new events are enriched.
    sim.faults(FaultUpdate {
        users_down: Some(false),
        ..FaultUpdate::default()
    });
    let mut total = 1_500;
    wait_until(Duration::from_secs(60), "an enriched event", || {
        sim.faults(FaultUpdate {
            generate: Some(5),
            ..FaultUpdate::default()
        });
        total += 5;
        std::thread::sleep(Duration::from_millis(500));
        Delivered::read(&work.out())
            .lines
            .iter()
            .any(|l| l["enrichment"] == "enriched")
    });
    wait_until(Duration::from_secs(30), "the generated events", || {
        Delivered::count(&work.out()) >= total
    });
    assert!(daemon.terminate().success());
    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0);
    assert_eq!(delivered.unique(), sim.gids());
}
