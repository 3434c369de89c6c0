//! The Anaplan source against the Anaplan simulator on loopback: paging
//! with offset drift and late events, pages requested in parallel, token
//! expiry, the role gate, certificate logins, ids above 2^53.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use auditrelay::simulator::anaplan::{
    AnaplanEndpoint, AnaplanFaultUpdate, AnaplanSim, AnaplanSimConfig, Credential,
};
use tokio_util::sync::CancellationToken;

use crate::common::{run_cli, wait_until, Daemon, Delivered, Workdir};

const PASSWORD: &str = "sim-password-5e1f";
const AUDITOR: &str = "auditor@example.com";
const VIEWER: &str = "viewer@example.com";

/// The simulator, served on 127.0.0.1 from its own runtime.
struct Anaplan {
    sim: Arc<AnaplanSim>,
    url: String,
    _runtime: tokio::runtime::Runtime,
    stop: CancellationToken,
}

impl Anaplan {
    fn start(config: AnaplanSimConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sim = AnaplanSim::new(AnaplanSimConfig {
            credentials: vec![
                Credential::new(AUDITOR, PASSWORD, true),
                Credential::new(VIEWER, PASSWORD, false),
            ],
            ..config
        });
        let stop = CancellationToken::new();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(Arc::clone(&sim).serve(listener, stop.clone().cancelled_owned()));
        Self {
            sim,
            url,
            _runtime: runtime,
            stop,
        }
    }

    fn ids(&self) -> BTreeSet<String> {
        self.sim
            .visible_ids()
            .into_iter()
            .map(|id| id.to_string())
            .collect()
    }

    /// `GET /_sim/anaplan/stats`.
    fn stats(&self) -> serde_json::Value {
        let url = format!("{}/_sim/anaplan/stats", self.url);
        self._runtime
            .block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
    }

    fn faults(&self, update: AnaplanFaultUpdate) {
        self.sim.update_faults(update).unwrap();
    }
}

impl Drop for Anaplan {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A config with one Anaplan source (`login` lines in its table) and a
/// file sink.
fn config(work: &Workdir, sim: &Anaplan, login: &str, extra: &str) -> PathBuf {
    work.write_config(&format!(
        r#"
shutdown_grace = "5s"
[state]
path = "{state}"
[sources.anaplan_it]
kind = "anaplan"
auth_url = "{url}"
audit_url = "{url}/audit/api/1"
api_url = "{url}/2/0"
{login}
start_at = "3h"
page_size = 500
poll_interval = "300ms"
request_timeout = "10s"
retry_initial = "20ms"
retry_max = "300ms"
slow_retry_interval = "1s"
{extra}
[sinks.file]
kind = "file"
path = "{out}"
retry_initial = "20ms"
retry_max = "300ms"
"#,
        state = work.path("state/state.db").display(),
        url = sim.url,
        out = work.out().display(),
    ))
}

fn basic(user: &str) -> String {
    format!("user = \"{user}\"\npassword = \"{PASSWORD}\"")
}

#[test]
fn five_thousand_events_with_drift_and_late_arrivals_arrive_once_each() {
    let sim = Anaplan::start(AnaplanSimConfig {
        seed: 3,
        backlog: 5000,
        backlog_span: Duration::from_secs(2 * 3600),
        rate: 40.0,
        max_live: Some(400),
        late_share: 0.05,
        max_late: Duration::from_secs(30),
        ..AnaplanSimConfig::default()
    });
    // Events inserted into the window while it is paged shift the offsets.
    // Events inserted into the window while it is paged shift the offsets;
    // some 429s; small results without `meta`.
    sim.faults(AnaplanFaultUpdate {
        drift_next: Some(6),
        drift_events: Some(7),
        rate_limit_next: Some(2),
        omit_small_meta: Some(true),
        ..AnaplanFaultUpdate::default()
    });
    let work = Workdir::new();
    let config = config(&work, &sim, &basic(AUDITOR), "overlap = \"10m\"");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    let mut expected = BTreeSet::new();
    wait_until(
        Duration::from_secs(120),
        "every event, live ones included",
        || {
            expected = sim.ids();
            expected.len() >= 5400 && Delivered::read(&work.out()).unique().is_superset(&expected)
        },
    );
    let stats = sim.sim.calls(AnaplanEndpoint::AuditEvents);
    assert!(daemon.terminate().success());
    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0, "an event was delivered twice");
    // Late events may have become visible since; nothing the API does not
    // have was delivered.
    let unknown: Vec<_> = delivered.unique().difference(&sim.ids()).cloned().collect();
    assert!(
        unknown.is_empty(),
        "delivered events the API does not have: {unknown:?}"
    );
    assert!(stats > 10, "{stats} requests");
    let counters = sim.stats();
    assert!(
        counters["drift_events"].as_u64().unwrap_or(0) > 0,
        "no drift happened: {counters}"
    );
    // Ids above 2^53 arrive exactly, as strings and in raw.
    let big: Vec<&serde_json::Value> = delivered
        .lines
        .iter()
        .filter(|l| l["id"].as_str().unwrap().parse::<u64>().unwrap() > 1 << 53)
        .collect();
    assert!(!big.is_empty(), "the simulator served no id above 2^53");
    let text = std::fs::read_to_string(work.out()).unwrap();
    for line in &big {
        let id = line["id"].as_str().unwrap();
        assert!(
            text.contains(&format!(r#""raw":{{"id":{id},"#)),
            "raw id of {id} changed"
        );
    }
    // Every event carries its catalog entry, unknown codes marked.
    assert!(delivered.lines.iter().all(|l| l["code"]["id"].is_string()));
    assert!(delivered.lines.iter().any(|l| l["code"]["known"] == false));
    assert!(delivered
        .lines
        .iter()
        .any(|l| l["code"]["category"] == "authentication"));
}

/// Reads a 4,000-event backlog `parallel_pages` at a time through slow
/// pages, offset drift, events stored late, 429s, 5xx, truncated and HTML
/// pages. Every event the API has arrives exactly once, and nothing else.
/// Returns the simulator's statistics.
fn read_through_faults(seed: u64, parallel_pages: u32) -> serde_json::Value {
    const BACKLOG: u64 = 4000;
    let sim = Anaplan::start(AnaplanSimConfig {
        seed,
        backlog: BACKLOG,
        backlog_span: Duration::from_secs(2 * 3600),
        rate: 0.0,
        max_live: Some(0),
        late_share: 0.05,
        max_late: Duration::from_secs(15),
        ..AnaplanSimConfig::default()
    });
    sim.faults(AnaplanFaultUpdate {
        latency: Some(Duration::from_millis(60)),
        drift_next: Some(5),
        drift_events: Some(4),
        rate_limit_next: Some(3),
        fail_next: Some(2),
        truncate_next: Some(2),
        html_next: Some(1),
        ..AnaplanFaultUpdate::default()
    });
    let work = Workdir::new();
    let config = config(
        &work,
        &sim,
        &basic(AUDITOR),
        &format!("parallel_pages = {parallel_pages}"),
    );
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "page_size = 500\n",
        "page_size = 200\n",
        1,
    );
    let config = work.write_config(&text);
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    // Every timeline event visible (the late ones too) and every event the
    // drift inserted, all delivered.
    wait_until(
        Duration::from_secs(120),
        "every event, late ones included",
        || {
            let drift = sim.stats()["drift_events"].as_u64().unwrap_or(0);
            let expected = sim.ids();
            expected.len() as u64 == BACKLOG + drift
                && Delivered::read(&work.out()).unique().is_superset(&expected)
        },
    );
    assert!(daemon.terminate().success());
    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0, "an event was delivered twice");
    let unknown: Vec<_> = delivered.unique().difference(&sim.ids()).cloned().collect();
    assert!(
        unknown.is_empty(),
        "delivered events the API does not have: {unknown:?}"
    );
    let stats = sim.stats();
    let events = &stats["by_endpoint"]["audit_events"];
    for (status, what) in [("429", "rate limit"), ("500", "server error")] {
        assert!(
            events[status].as_u64().unwrap_or(0) > 0,
            "no {what} happened: {stats}"
        );
    }
    assert!(stats["drift_events"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert_eq!(stats["truncated_responses"], 2, "{stats}");
    stats
}

#[test]
fn pages_requested_together_survive_drift_late_events_and_faults() {
    let stats = read_through_faults(11, 4);
    let most = stats["max_concurrent_event_requests"].as_u64().unwrap();
    assert!(
        (2..=4).contains(&most),
        "{most} requests at once with parallel_pages = 4"
    );
}

#[test]
fn with_parallel_pages_1_requests_never_overlap() {
    let stats = read_through_faults(12, 1);
    assert_eq!(stats["max_concurrent_event_requests"], 1, "{stats}");
}

#[test]
fn an_expiring_token_is_renewed_and_nothing_is_lost() {
    let sim = Anaplan::start(AnaplanSimConfig {
        seed: 4,
        backlog: 3000,
        token_ttl: Duration::from_secs(2),
        rate: 0.0,
        max_live: Some(0),
        late_share: 0.0,
        ..AnaplanSimConfig::default()
    });
    // Slow pages, so the stream outlives several tokens even with four
    // pages in flight.
    sim.faults(AnaplanFaultUpdate {
        latency: Some(Duration::from_millis(400)),
        ..AnaplanFaultUpdate::default()
    });
    let work = Workdir::new();
    let config = config(&work, &sim, &basic(AUDITOR), "page_size = 100");
    let config = {
        let text = std::fs::read_to_string(&config).unwrap();
        work.write_config(&text.replacen("page_size = 500\n", "", 1))
    };
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    // Mid-stream, every token is revoked: the next request gets a 401, logs
    // in again and is replayed (the requests in flight share one login).
    wait_until(Duration::from_secs(60), "the first events", || {
        Delivered::total(&work.out()) >= 500
    });
    sim.faults(AnaplanFaultUpdate {
        revoke_all_tokens: true,
        ..AnaplanFaultUpdate::default()
    });
    let start = std::time::Instant::now();
    loop {
        let expected = sim.ids();
        let got = Delivered::read(&work.out()).unique();
        if expected.len() == 3000 && got.is_superset(&expected) {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let logs = daemon.logs();
            let tail: Vec<&str> = logs.lines().rev().take(30).collect();
            panic!(
                "timed out: {} of {} delivered, missing e.g. {:?}; log tail:\n{}",
                got.len(),
                expected.len(),
                expected.difference(&got).take(3).collect::<Vec<_>>(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let daemon_logs = daemon.logs();
    assert!(daemon.terminate().success());
    let renewals = sim.sim.calls(AnaplanEndpoint::TokenRefresh)
        + sim.sim.calls(AnaplanEndpoint::TokenAuthenticate);
    assert!(
        renewals >= 3,
        "only {renewals} logins and refreshes over many token lifetimes"
    );
    // A request carrying the revoked token (a 401, replayed), or the
    // refresh due meanwhile, found it revoked: either way, a new login.
    assert!(
        sim.sim.calls(AnaplanEndpoint::TokenAuthenticate) >= 2
            && daemon_logs.contains("logging in again"),
        "no re-login after the revocation:\n{daemon_logs}"
    );
    let delivered = Delivered::read(&work.out());
    assert_eq!(delivered.duplicates(), 0);
    assert_eq!(delivered.unique(), sim.ids());
}

#[test]
fn a_login_without_the_auditor_role_gets_a_clear_error_and_no_loop() {
    let sim = Anaplan::start(AnaplanSimConfig {
        seed: 5,
        backlog: 50,
        ..AnaplanSimConfig::default()
    });
    let work = Workdir::new();
    let config = config(&work, &sim, &basic(VIEWER), "");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(30), "the role error", || {
        daemon.logs().contains("Tenant Auditor role")
    });
    // Three slow-retry intervals later: a few attempts, not a loop.
    std::thread::sleep(Duration::from_secs(3));
    let logins = sim.sim.calls(AnaplanEndpoint::TokenAuthenticate);
    let requests = sim.sim.calls(AnaplanEndpoint::AuditEvents);
    assert!(logins <= 2, "{logins} logins: re-authenticating in a loop");
    assert!(requests <= 6, "{requests} audit requests in ~4s");
    let logs = daemon.logs();
    assert!(logs.contains("FAILURE_UNAUTHORIZED_USER_ACTION"), "{logs}");
    assert!(!logs.contains(PASSWORD));
    assert!(daemon.terminate().success());
    assert_eq!(Delivered::total(&work.out()), 0);
}

#[test]
fn a_certificate_login_works() {
    let sim = Anaplan::start(AnaplanSimConfig {
        seed: 6,
        backlog: 300,
        rate: 0.0,
        max_live: Some(0),
        ..AnaplanSimConfig::default()
    });
    let work = Workdir::new();
    let certs = work.path("certs");
    sim.sim.write_client_files(&certs, AUDITOR).unwrap();
    let login = format!(
        "certificate_file = \"{}\"\nprivate_key_file = \"{}\"",
        certs.join("client.pem").display(),
        certs.join("client.key").display()
    );
    let config = config(&work, &sim, &login, "");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "300 events", || {
        Delivered::read(&work.out()).unique() == sim.ids()
    });
    assert!(daemon.terminate().success());
    assert!(sim.sim.calls(AnaplanEndpoint::TokenAuthenticate) >= 1);
    let logs = std::fs::read_to_string(work.path("daemon.log")).unwrap();
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");
}

#[test]
fn anaplan_config_errors_name_their_keys() {
    let sim = Anaplan::start(AnaplanSimConfig {
        backlog: 1,
        ..AnaplanSimConfig::default()
    });
    let work = Workdir::new();
    let login = format!("{}\ntoken = \"also-a-token\"", basic(AUDITOR));
    let config = config(
        &work,
        &sim,
        &login,
        "event_type = \"user-activity\"\npage_size = 20000\noverlap = \"2d\"\nparallel_pages = 17",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("page_size = 500\n", "", 1);
    let config = work.write_config(&text);
    let (code, _, err) = run_cli(
        &["check", "--offline", "--config", config.to_str().unwrap()],
        &HashMap::new(),
    );
    assert_eq!(code, 78, "{err}");
    for expected in [
        "sources.anaplan_it: choose one way to log in",
        "sources.anaplan_it.event_type: \"user-activity\" is not one of",
        "sources.anaplan_it.page_size: 20000 is outside 1..=10000",
        "sources.anaplan_it.overlap: at most 1d",
        "sources.anaplan_it.parallel_pages: 17 is outside 1..=16",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains(PASSWORD), "{err}");

    let key = work.path("bad.key");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let login = format!(
        "certificate_file = \"{}\"\nprivate_key_file = \"{}\"",
        key.display(),
        key.display()
    );
    let config = self::config(&work, &sim, &login, "");
    let (code, _, err) = run_cli(
        &["check", "--offline", "--config", config.to_str().unwrap()],
        &HashMap::new(),
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("sources.anaplan_it.certificate_file"), "{err}");
    assert!(err.contains("sources.anaplan_it.private_key_file"), "{err}");
}

#[test]
fn users_are_looked_up_once_and_deleted_ones_are_remembered() {
    let sim = Anaplan::start(AnaplanSimConfig {
        seed: 8,
        backlog: 2000,
        rate: 0.0,
        max_live: Some(0),
        late_share: 0.0,
        users: 30,
        deleted_users: 4,
        ..AnaplanSimConfig::default()
    });
    let work = Workdir::new();
    // Every event must come out enriched: a bound no busy test machine
    // reaches, so a slow lookup cannot send one out unenriched (the
    // default 2s is about the pipeline, not this test).
    let config = config(
        &work,
        &sim,
        &basic(AUDITOR),
        "[sources.anaplan_it.enrich]\nbound = \"10s\"\n",
    );
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "2000 events", || {
        Delivered::read(&work.out()).unique() == sim.ids()
    });
    assert!(daemon.terminate().success());
    let delivered = Delivered::read(&work.out());
    let named: BTreeSet<String> = delivered
        .lines
        .iter()
        .flat_map(|l| {
            let actor = (l["actor"]["type"] == "user").then(|| l["actor"]["id"].clone());
            let target = (l["target"]["type"] == "user").then(|| l["target"]["id"].clone());
            [actor, target]
        })
        .flatten()
        .filter_map(|id| id.as_str().map(str::to_string))
        .collect();
    let gets = sim.sim.calls(AnaplanEndpoint::UsersGet);
    let lists = sim.sim.calls(AnaplanEndpoint::UsersList);
    assert!(
        gets + lists <= named.len() as u64 + 5,
        "{gets} user lookups and {lists} list pages for {} distinct users",
        named.len()
    );
    assert!(gets <= named.len() as u64);
    assert_eq!(
        gets,
        sim.sim.distinct_user_lookups() as u64,
        "a user was looked up twice"
    );
    let enriched: Vec<&serde_json::Value> = delivered
        .lines
        .iter()
        .filter(|l| l["enrichment"] == "enriched")
        .collect();
    assert!(!enriched.is_empty());
    assert!(
        enriched
            .iter()
            .filter(|l| l["actor"]["type"] == "user")
            .all(|l| l["actor"]["email"].is_string() && l["actor"]["name"].is_string()),
        "enriched without a name or email"
    );
    let unknown = delivered
        .lines
        .iter()
        .filter(|l| l["enrichment"] == "user_unknown")
        .count();
    assert!(unknown > 0, "no event named a deleted user");
    assert!(!delivered
        .lines
        .iter()
        .any(|l| l["enrichment"] == "not_enriched"));
    // System actors are not users: no lookup, no enrichment status.
    assert!(delivered
        .lines
        .iter()
        .filter(|l| l["actor"]["type"] == "system" && l["target"]["type"] != "user")
        .all(|l| l.get("enrichment").is_none()));
}

#[test]
fn with_the_users_api_down_events_still_flow_marked_not_enriched() {
    let sim = Anaplan::start(AnaplanSimConfig {
        seed: 9,
        backlog: 1000,
        rate: 0.0,
        max_live: Some(0),
        late_share: 0.0,
        ..AnaplanSimConfig::default()
    });
    sim.faults(AnaplanFaultUpdate {
        users_down: Some(true),
        ..AnaplanFaultUpdate::default()
    });
    let work = Workdir::new();
    let config = config(&work, &sim, &basic(AUDITOR), "");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "1000 events", || {
        Delivered::read(&work.out()).unique() == sim.ids()
    });
    assert!(daemon.terminate().success());
    let delivered = Delivered::read(&work.out());
    let with_users: Vec<&serde_json::Value> = delivered
        .lines
        .iter()
        .filter(|l| l.get("enrichment").is_some())
        .collect();
    assert!(with_users.len() > 500);
    assert!(
        with_users.iter().all(|l| l["enrichment"] == "not_enriched"),
        "an event claims enrichment while the users API was down"
    );
}

#[test]
fn a_pre_issued_token_is_kept_alive() {
    let sim = Anaplan::start(AnaplanSimConfig {
        seed: 10,
        backlog: 800,
        rate: 0.0,
        max_live: Some(0),
        late_share: 0.0,
        token_ttl: Duration::from_secs(3),
        ..AnaplanSimConfig::default()
    });
    sim.faults(AnaplanFaultUpdate {
        latency: Some(Duration::from_millis(100)),
        ..AnaplanFaultUpdate::default()
    });
    // A token issued elsewhere (here: a basic login by the test).
    let url = format!("{}/token/authenticate", sim.url);
    let response: serde_json::Value = sim._runtime.block_on(async {
        reqwest::Client::new()
            .post(url)
            .basic_auth(AUDITOR, Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let token = response["tokenInfo"]["tokenValue"]
        .as_str()
        .unwrap()
        .to_string();
    let work = Workdir::new();
    let config = config(
        &work,
        &sim,
        &format!("token = \"{token}\""),
        // One page at a time: the stream outlives the token.
        "page_size = 50\nparallel_pages = 1",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("page_size = 500\n", "", 1);
    let config = work.write_config(&text);
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "800 events", || {
        Delivered::read(&work.out()).unique() == sim.ids()
    });
    let logs = daemon.logs();
    assert!(daemon.terminate().success());
    // 16 pages of 100 ms over a 3 s token: it was refreshed, never replaced.
    assert!(sim.sim.calls(AnaplanEndpoint::TokenRefresh) >= 2, "{logs}");
    assert_eq!(
        sim.sim.calls(AnaplanEndpoint::TokenAuthenticate),
        1,
        "only the test logged in"
    );
    assert!(!logs.contains(&token), "the token reached the log");
}
