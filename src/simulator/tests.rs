//! End-to-end tests over a real listener.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::api::percent_encode;
use super::events::{render_event, WorkspaceIdentity};
use super::{SimConfig, Simulator};

const WS: &str = "1200000000000000";
const TOKEN: &str = "sim-token";
const BAD_OFFSET: &str = "offset: Your pagination token is invalid or has expired";

/// A simulator on an ephemeral port plus a client.
struct Harness {
    sim: Arc<Simulator>,
    base: String,
    client: reqwest::Client,
}

/// Backlog of `backlog` events over the last hour, no live events.
fn config(backlog: u64) -> SimConfig {
    SimConfig {
        backlog,
        rate: 0.0,
        epoch: Utc::now() - chrono::Duration::seconds(1),
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> Harness {
    let sim = Simulator::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(Arc::clone(&sim).serve(listener, std::future::pending()));
    Harness {
        sim,
        base,
        client: reqwest::Client::new(),
    }
}

fn message(body: &Value) -> &str {
    body["errors"][0]["message"].as_str().unwrap()
}

fn gids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["gid"].as_str().unwrap().to_string())
        .collect()
}

impl Harness {
    fn url(&self, workspace: &str, query: &[(&str, &str)]) -> String {
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        format!(
            "{}/api/1.0/workspaces/{workspace}/audit_log_events?{}",
            self.base,
            query.join("&")
        )
    }

    async fn request(
        &self,
        token: Option<&str>,
        workspace: &str,
        query: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self.client.get(self.url(workspace, query));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    async fn get(&self, query: &[(&str, &str)]) -> (u16, Value) {
        let response = self.request(Some(TOKEN), WS, query).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A page that must succeed.
    async fn page(&self, query: &[(&str, &str)]) -> Value {
        let (status, body) = self.get(query).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn faults(&self, update: Value) -> Value {
        let response = self
            .client
            .post(format!("{}/_sim/faults", self.base))
            .json(&update)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap()
    }

    async fn admin_get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.json().await.unwrap()
    }

    /// Follows offsets from a first query until a page comes back empty; returns all gids
    /// and the last offset.
    async fn drain(&self, filters: &[(&str, &str)], limit: &str) -> (Vec<String>, String) {
        let mut query = filters.to_vec();
        query.push(("limit", limit));
        let mut page = self.page(&query).await;
        let mut all = Vec::new();
        loop {
            let batch = gids(&page);
            let offset = page["next_page"]["offset"].as_str().unwrap().to_string();
            if batch.is_empty() {
                return (all, offset);
            }
            all.extend(batch);
            let mut query = query.clone();
            query.push(("offset", &offset));
            page = self.page(&query).await;
        }
    }
}

#[tokio::test]
async fn paging_walks_every_gid_exactly_once() {
    let h = start(config(250)).await;
    let first = h.page(&[("limit", "100")]).await;
    assert_eq!(gids(&first).len(), 100);
    let next = &first["next_page"];
    let offset = next["offset"].as_str().unwrap();
    assert_eq!(
        next["path"],
        format!("/workspaces/{WS}/audit_log_events?limit=100&offset={offset}")
    );
    assert_eq!(
        next["uri"],
        format!("{}/api/1.0{}", h.base, next["path"].as_str().unwrap())
    );

    let (all, _) = h.drain(&[], "100").await;
    assert_eq!(all.len(), 250);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 250);
    assert_eq!(all, h.sim.visible_gids(WS));
    assert_eq!(all[0], "1209000000000000");
    assert_eq!(
        h.admin_get("/_sim/events").await["gids"],
        json!(h.sim.visible_gids(WS))
    );
}

#[tokio::test]
async fn streaming_rule_keeps_next_page_once_something_matched() {
    let h = start(config(100)).await;
    // Nothing matches and there is no offset: next_page is null.
    let page = h.page(&[("event_type", "no_such_event")]).await;
    assert_eq!(page, json!({ "data": [], "next_page": null }));
    let now = Utc::now().to_rfc3339();
    let after_backlog = [("start_at", now.as_str())];
    let page = h.page(&[("start_at", &now), ("limit", "10")]).await;
    assert_eq!(page["next_page"], Value::Null);

    // New events arrive; the same query now matches and hands out an offset that keeps
    // working as a stream, with empty data meaning "caught up".
    h.faults(json!({ "generate": 3 })).await;
    let (seen, offset) = h.drain(&after_backlog, "2").await;
    assert_eq!(seen.len(), 3);
    let caught_up = h
        .page(&[("start_at", &now), ("limit", "2"), ("offset", &offset)])
        .await;
    assert_eq!(gids(&caught_up), Vec::<String>::new());
    assert!(caught_up["next_page"]["offset"].is_string());
    h.faults(json!({ "generate": 1 })).await;
    let offset = caught_up["next_page"]["offset"].as_str().unwrap();
    let page = h
        .page(&[("start_at", &now), ("limit", "2"), ("offset", offset)])
        .await;
    let new = gids(&page);
    assert_eq!(new.len(), 1);
    assert!(!seen.contains(&new[0]));
    assert_eq!(h.sim.visible_gids(WS).len(), 104);
}

#[tokio::test]
async fn live_events_appear_at_the_configured_rate() {
    let h = start(SimConfig {
        backlog: 0,
        rate: 50.0,
        max_live: Some(5),
        epoch: Utc::now(),
        ..SimConfig::default()
    })
    .await;
    assert!(h.sim.visible_gids(WS).len() <= 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let expected: Vec<String> = (0..5).map(|i| format!("120900000000000{i}")).collect();
    assert_eq!(h.sim.visible_gids(WS), expected);
    assert_eq!(gids(&h.page(&[]).await), expected);
    assert!(h.sim.visible_gids("unknown").is_empty());
}

#[tokio::test]
async fn offsets_are_bound_to_workspace_and_filters_and_expire() {
    let mut config = config(30);
    config.workspaces.push("1200000000000777".to_string());
    config.offset_ttl = Duration::from_secs(60);
    let h = start(config).await;
    let page = h.page(&[("limit", "10")]).await;
    let offset = page["next_page"]["offset"].as_str().unwrap().to_string();

    let mut tampered = offset.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for query in [
        vec![
            ("limit", "10"),
            ("offset", offset.as_str()),
            ("event_type", "task_deleted"),
        ],
        vec![
            ("offset", offset.as_str()),
            ("start_at", "2020-01-01T00:00:00Z"),
        ],
        vec![("offset", "garbage")],
        vec![("offset", tampered.as_str())],
    ] {
        let (status, body) = h.get(&query).await;
        assert_eq!((status, message(&body)), (400, BAD_OFFSET), "{query:?}");
    }
    let response = h
        .request(Some(TOKEN), "1200000000000777", &[("offset", &offset)])
        .await;
    assert_eq!(response.status(), 400);

    // The same filters, spelled with another limit, are fine.
    let page = h.page(&[("limit", "5"), ("offset", &offset)]).await;
    assert_eq!(gids(&page).len(), 5);

    // expire_offsets invalidates everything issued so far, but not what comes after.
    h.faults(json!({ "expire_offsets": true })).await;
    let (status, _) = h.get(&[("offset", &offset)]).await;
    assert_eq!(status, 400);
    let fresh = h.page(&[("limit", "10")]).await;
    let fresh = fresh["next_page"]["offset"].as_str().unwrap();
    h.page(&[("offset", fresh)]).await;

    // Offsets older than the TTL (simulated clock) expire.
    h.faults(json!({ "clock_advance_secs": 61 })).await;
    let (status, body) = h.get(&[("offset", fresh)]).await;
    assert_eq!((status, message(&body)), (400, BAD_OFFSET));
}

#[tokio::test]
async fn parameters_are_validated() {
    let h = start(config(1200)).await;
    for limit in ["0", "101", "-1", "ten"] {
        let (status, body) = h.get(&[("limit", limit)]).await;
        assert_eq!(
            (status, message(&body)),
            (400, "limit: Value must be between 1 and 100")
        );
    }
    assert_eq!(gids(&h.page(&[("limit", "100")]).await).len(), 100);
    // Without a limit a default page comes back, and next_page carries no limit.
    let page = h.page(&[]).await;
    assert_eq!(gids(&page).len(), 1000);
    let path = page["next_page"]["path"].as_str().unwrap();
    assert!(path.starts_with(&format!("/workspaces/{WS}/audit_log_events?offset=")));

    for name in ["start_at", "end_at"] {
        let (status, body) = h.get(&[(name, "yesterday")]).await;
        assert_eq!(status, 400);
        assert!(message(&body).starts_with(&format!("{name}:")));
    }
    // Filters are echoed in next_page, since the offset is only valid with them.
    let page = h
        .page(&[("start_at", "2020-01-01T00:00:00+00:00"), ("limit", "1")])
        .await;
    let path = page["next_page"]["path"].as_str().unwrap();
    assert!(path.contains("?start_at=2020-01-01T00%3A00%3A00%2B00%3A00&limit=1&offset="));
}

#[tokio::test]
async fn time_and_attribute_filters_select_events() {
    let h = start(config(500)).await;
    let all = h.page(&[("limit", "100")]).await;
    let events = all["data"].as_array().unwrap();
    let start = events[10]["created_at"].as_str().unwrap();
    let end = events[20]["created_at"].as_str().unwrap();
    let window = h.page(&[("start_at", start), ("end_at", end)]).await;
    assert_eq!(gids(&window), gids(&all)[10..20]);

    let user_event = events
        .iter()
        .find(|e| e["actor"]["actor_type"] == "user")
        .unwrap();
    let actor = user_event["actor"]["gid"].as_str().unwrap();
    let resource = user_event["resource"]["gid"].as_str().unwrap();
    let event_type = user_event["event_type"].as_str().unwrap();
    for (param, value, field) in [
        ("actor_gid", actor, "/actor/gid"),
        ("resource_gid", resource, "/resource/gid"),
        ("event_type", event_type, "/event_type"),
        ("actor_type", "asana", "/actor/actor_type"),
    ] {
        let page = h.page(&[(param, value)]).await;
        let data = page["data"].as_array().unwrap();
        assert!(!data.is_empty(), "{param}");
        assert!(
            data.iter().all(|e| e.pointer(field).unwrap() == value),
            "{param}"
        );
    }
    let page = h.page(&[("actor_gid", "not-a-number")]).await;
    assert_eq!(page["next_page"], Value::Null);
}

#[tokio::test]
async fn authentication_and_workspace_errors() {
    let mut config = config(5);
    config.non_service_tokens = vec!["human-token".to_string()];
    let h = start(config).await;
    for token in [None, Some("wrong")] {
        let response = h.request(token, WS, &[]).await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({ "errors": [{ "message": "Not Authorized" }] }));
    }
    let response = h.request(Some("human-token"), WS, &[]).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        message(&body),
        "Forbidden: audit log requires a service account token"
    );
    let response = h.request(Some(TOKEN), "999", &[]).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(message(&body), "workspace: Not Found");

    let state = h.faults(json!({ "revoke_token": TOKEN })).await;
    assert_eq!(state["revoked_tokens"], 1);
    assert_eq!(h.get(&[]).await.0, 401);
    h.faults(json!({ "restore_token": TOKEN })).await;
    assert_eq!(h.get(&[]).await.0, 200);
}

#[tokio::test]
async fn rate_limit_counts_rejections_and_early_requests() {
    let mut config = config(5);
    config.rate_limit_per_minute = 3;
    let h = start(config).await;
    for _ in 0..3 {
        assert_eq!(h.get(&[]).await.0, 200);
    }
    let response = h.request(Some(TOKEN), WS, &[]).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert!(message(&body).starts_with("You've made too many requests"));

    // Ignoring Retry-After is counted and keeps the client limited.
    assert_eq!(h.get(&[]).await.0, 429);
    let stats = h.admin_get("/_sim/stats").await;
    assert_eq!(stats["early_requests"], 1);
    assert_eq!(stats["by_status"]["429"], 2);
    assert_eq!(stats["by_status"]["200"], 3);
    assert_eq!(stats["total_requests"], 5);

    let records = h.admin_get("/_sim/requests?limit=2").await;
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["status"], 429);
    assert_eq!(records[1]["token_suffix"], "oken");
    assert!(records[1]["retry_after_secs"].as_u64().unwrap() >= 1);
    assert!(records[1]["path"]
        .as_str()
        .unwrap()
        .starts_with("/api/1.0/workspaces/"));
    assert!(!records.iter().any(|r| r.to_string().contains(TOKEN)));
}

#[tokio::test]
async fn a_client_honouring_retry_after_is_not_early() {
    let h = start(config(5)).await;
    h.faults(json!({ "rate_limit_next": 1, "retry_after_secs": 1 }))
        .await;
    let response = h.request(Some(TOKEN), WS, &[]).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(h.get(&[]).await.0, 200);
    assert_eq!(h.admin_get("/_sim/stats").await["early_requests"], 0);
}

#[tokio::test]
async fn concurrency_cap_returns_429() {
    let mut config = config(5);
    config.max_concurrent = 1;
    config.faults.latency = Duration::from_millis(300);
    let h = start(config).await;
    let (a, b) = tokio::join!(h.request(Some(TOKEN), WS, &[]), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.request(Some(TOKEN), WS, &[]).await
    });
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 429);
    assert_eq!(b.headers()["retry-after"], "1");
}

#[tokio::test]
async fn injected_failures_and_truncation() {
    let h = start(config(20)).await;
    h.faults(json!({ "fail_next": 1 })).await;
    let (status, body) = h.get(&[]).await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({ "errors": [{ "message": "Server Error", "phrase": "6 sad squid snuggle softly" }] })
    );
    h.faults(json!({ "fail_next": 1, "fail_status": 503 }))
        .await;
    assert_eq!(h.get(&[]).await.0, 503);

    let state = h.faults(json!({ "truncate_next": 1 })).await;
    assert_eq!(state["truncate_next"], 1);
    let response = h.request(Some(TOKEN), WS, &[("limit", "10")]).await;
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert!(!bytes.is_empty());
    assert!(serde_json::from_slice::<Value>(&bytes).is_err());
    h.page(&[("limit", "10")]).await;
    assert_eq!(h.admin_get("/_sim/stats").await["truncated_responses"], 1);
}

#[tokio::test]
async fn same_seed_and_epoch_serve_the_same_stream() {
    let config = config(300);
    let a = start(config.clone()).await;
    let b = start(config.clone()).await;
    let page_a = a.page(&[("limit", "50")]).await;
    let page_b = b.page(&[("limit", "50")]).await;
    assert_eq!(page_a["data"], page_b["data"]);

    // An offset from one instance is accepted by the other (as after a restart).
    let offset = page_a["next_page"]["offset"].as_str().unwrap();
    let next_a = a.page(&[("limit", "50"), ("offset", offset)]).await;
    let next_b = b.page(&[("limit", "50"), ("offset", offset)]).await;
    assert_eq!(next_a["data"], next_b["data"]);
    assert_eq!(gids(&next_b).len(), 50);

    let other = start(SimConfig { seed: 7, ..config }).await;
    assert_ne!(other.page(&[("limit", "50")]).await["data"], page_a["data"]);
    assert_eq!(other.get(&[("offset", offset)]).await.0, 400);
}

#[tokio::test]
async fn retention_hides_old_events_and_offsets_skip_ahead() {
    let day = Duration::from_secs(24 * 3600);
    let config = SimConfig {
        backlog: 100,
        backlog_span: day * 100,
        offset_ttl: day * 1000,
        ..config(0)
    };
    let h = start(config).await;
    // One event per day over 100 days: the oldest 10 are past the 90-day retention.
    assert_eq!(h.sim.visible_gids(WS).len(), 90);
    let page = h.page(&[("limit", "5")]).await;
    assert_eq!(gids(&page)[0], "1209000000000010");
    let oldest: DateTime<Utc> = page["data"][0]["created_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(oldest >= Utc::now() - chrono::Duration::days(90));

    h.faults(json!({ "clock_advance_secs": 10 * 24 * 3600 }))
        .await;
    assert_eq!(h.sim.visible_gids(WS).len(), 80);
    let offset = page["next_page"]["offset"].as_str().unwrap();
    let next = h.page(&[("limit", "5"), ("offset", offset)]).await;
    assert_eq!(gids(&next)[0], "1209000000000020");
    let stats = h.admin_get("/_sim/stats").await;
    assert_eq!(stats["workspaces"][WS]["visible_events"], 80);
}

#[tokio::test]
async fn late_events_are_delivered_through_the_stream() {
    let h = start(config(50)).await;
    h.faults(json!({ "late_rate": 1.0 })).await;
    let mut query = vec![("limit", "20".to_string())];
    let mut served: Vec<Value> = Vec::new();
    for request in 0.. {
        if request == 5 {
            h.faults(json!({ "late_rate": 0.0 })).await;
        }
        let borrowed: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = h.page(&borrowed).await;
        let data = page["data"].as_array().unwrap();
        if data.is_empty() {
            break;
        }
        served.extend(data.iter().cloned());
        query = vec![
            ("limit", "20".to_string()),
            (
                "offset",
                page["next_page"]["offset"].as_str().unwrap().to_string(),
            ),
        ];
    }
    let served_gids: Vec<String> = served
        .iter()
        .map(|e| e["gid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(served_gids.len(), 55);
    assert_eq!(served_gids, h.sim.visible_gids(WS));
    // Some event arrived after a newer one had already been served.
    let created: Vec<DateTime<Utc>> = served
        .iter()
        .map(|e| e["created_at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(created.windows(2).any(|w| w[1] < w[0]));
    assert_eq!(h.admin_get("/_sim/stats").await["late_events"], 5);
}

#[tokio::test]
async fn duplicates_and_bad_records_are_extra() {
    let h = start(config(30)).await;
    h.faults(json!({ "duplicate_rate": 1.0 })).await;
    let first = h.page(&[("limit", "10")]).await;
    let offset = first["next_page"]["offset"].as_str().unwrap();
    let second = h.page(&[("limit", "10"), ("offset", offset)]).await;
    let (first, second) = (gids(&first), gids(&second));
    assert_eq!(second.len(), 11);
    assert_eq!(second[0], first[9]);
    h.faults(json!({ "duplicate_rate": 0.0, "bad_record_next": 1 }))
        .await;

    let page = h.page(&[("limit", "10")]).await;
    let data = page["data"].as_array().unwrap();
    let bad: Vec<&Value> = data
        .iter()
        .filter(|e| e.get("created_at").is_none())
        .collect();
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["actor"].is_string());
    let visible = h.sim.visible_gids(WS);
    assert!(!visible.contains(&bad[0]["gid"].as_str().unwrap().to_string()));
    assert_eq!(data.len(), 11);
    let page = h.page(&[("limit", "10")]).await;
    assert!(page["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["created_at"].is_string()));
    let stats = h.admin_get("/_sim/stats").await;
    assert_eq!(stats["duplicates_served"], 1);
    assert_eq!(stats["bad_records_served"], 1);
}

#[tokio::test]
async fn admin_endpoints_validate_input() {
    let h = start(config(5)).await;
    let post = |body: Value| {
        h.client
            .post(format!("{}/_sim/faults", h.base))
            .json(&body)
            .send()
    };
    assert_eq!(
        post(json!({ "error_rate": 2.0 })).await.unwrap().status(),
        400
    );
    assert_eq!(
        post(json!({ "eror_rate": 0.1 })).await.unwrap().status(),
        400
    );
    let unknown = json!({ "generate": 1, "workspace": "1" });
    assert_eq!(post(unknown).await.unwrap().status(), 404);
    let state = h.admin_get("/_sim/faults").await;
    assert_eq!(state["error_rate"], 0.0);
    assert_eq!(state["latency"], "0s");
    let response = h
        .client
        .get(format!("{}/_sim/events?workspace=1", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn serve_stops_on_shutdown() {
    let sim = Simulator::new(config(1));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sim.serve(listener, async {
        stopped.await.ok();
    }));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn events_have_the_full_asana_shape() {
    let workspace = WorkspaceIdentity {
        gid: WS.to_string(),
        name: "Example Org".to_string(),
        key: super::events::string_key(WS),
    };
    let mut types = HashSet::new();
    let mut seen = HashSet::new();
    for key in 0..3000 {
        let render = || {
            let gid = 1_209_000_000_000_000 + key;
            serde_json::to_value(render_event(42, &workspace, key, gid, 1_767_607_530_123)).unwrap()
        };
        let event = render();
        assert_eq!(event, render());
        assert!(event["gid"].as_str().unwrap().parse::<u64>().is_ok());
        assert_eq!(event["created_at"], "2026-01-05T10:05:30.123Z");
        types.insert(event["event_type"].as_str().unwrap().to_string());
        assert!(event["event_category"].is_string());

        let actor = &event["actor"];
        match actor["actor_type"].as_str().unwrap() {
            "user" => {
                assert!(actor["gid"].as_str().unwrap().parse::<u64>().is_ok());
                assert!(actor["name"].is_string());
                assert!(actor["email"].as_str().unwrap().ends_with("@example.com"));
            }
            _ => {
                assert!(actor.get("gid").is_none());
                seen.insert("actor without gid");
            }
        }
        let resource = &event["resource"];
        assert!(resource["resource_type"].is_string());
        assert!(resource["gid"].is_string());
        match &resource["name"] {
            Value::Null => seen.insert("null resource name"),
            name => seen.insert(if name.is_string() {
                "named"
            } else {
                "bad name"
            }),
        };
        if resource.get("resource_subtype").is_some() {
            seen.insert("subtype");
        }
        assert!(event["details"].is_object());

        let context = &event["context"];
        assert!(context["context_type"].is_string());
        match context.get("client_ip_address").and_then(Value::as_str) {
            Some(ip) => assert!(ip.starts_with("198.51.100.") || ip.starts_with("203.0.113.")),
            None => {
                seen.insert("no ip");
            }
        }
        if context["context_type"] == "api" {
            assert!(context["api_authentication_method"].is_string());
        }
        if context.get("oauth_app_name").is_some() {
            assert_eq!(context["api_authentication_method"], "oauth");
        }
        if let Some(on_behalf) = context.get("on_behalf_of_user_id") {
            assert!(on_behalf.is_u64(), "{on_behalf}");
            seen.insert("on behalf");
        }
        if event["event_category"] == "unknown_future_category" {
            seen.insert("future type");
        }
    }
    assert!(types.len() >= 40, "{}", types.len());
    for expected in [
        "user_login_succeeded",
        "user_login_failed",
        "user_logged_out",
        "task_deleted",
        "user_workspace_admin_role_changed",
        "workspace_export_started",
        "project_member_added",
        "user_app_authorized",
    ] {
        assert!(types.contains(expected), "{expected}");
    }
    for expected in [
        "actor without gid",
        "null resource name",
        "named",
        "subtype",
        "no ip",
        "on behalf",
        "future type",
    ] {
        assert!(seen.contains(expected), "{expected}");
    }
    assert!(!seen.contains("bad name"));
}

#[tokio::test]
async fn users_endpoint_resolves_actors_and_hides_deleted_users() {
    const DELETED: &str = "1200000000100002";
    let mut config = config(300);
    config.deleted_users = vec![DELETED.to_string()];
    config.non_service_tokens = vec!["human-token".to_string()];
    let h = start(config).await;
    let user = |gid: &str, token: Option<&str>| {
        let mut request = h.client.get(format!("{}/api/1.0/users/{gid}", h.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    // Every user actor of the stream resolves to the same name and email as in the event.
    let page = h.page(&[("limit", "100")]).await;
    let mut actors = HashSet::new();
    for event in page["data"].as_array().unwrap() {
        let actor = &event["actor"];
        let Some(gid) = actor["gid"].as_str() else {
            continue;
        };
        if gid == DELETED || !actors.insert(gid.to_string()) {
            continue;
        }
        let (status, body) = user(gid, Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({ "data": {
                "gid": gid,
                "resource_type": "user",
                "name": actor["name"],
                "email": actor["email"],
            }})
        );
    }
    assert!(actors.len() > 5, "{actors:?}");

    let (status, body) = user("greg.sanchez@example.com", Some(TOKEN)).await;
    assert_eq!(
        (status, body["data"]["gid"].as_str()),
        (200, Some("1200000000100001"))
    );
    let (status, body) = user("me", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["resource_type"], "user");
    for gid in [DELETED, "1200000000999999", "nobody"] {
        let (status, body) = user(gid, Some(TOKEN)).await;
        assert_eq!(status, 404, "{gid}");
        assert_eq!(
            body,
            json!({ "errors": [{ "message": "user: Not Found" }] })
        );
    }
    assert_eq!(user("me", None).await.0, 401);
    assert_eq!(user("me", Some("human-token")).await.0, 403);
    h.faults(json!({ "fail_next": 1, "fail_status": 503 }))
        .await;
    assert_eq!(user("me", Some(TOKEN)).await.0, 503);

    let stats = h.admin_get("/_sim/stats").await;
    let users = &stats["by_endpoint"]["users"];
    assert_eq!(users["200"].as_u64().unwrap(), actors.len() as u64 + 2);
    assert_eq!(users["404"], 3);
    assert_eq!(users["401"], 1);
    assert_eq!(users["403"], 1);
    assert_eq!(users["503"], 1);
    assert_eq!(stats["by_endpoint"]["audit_log_events"]["200"], 1);

    // `users_down` fails the users endpoint only.
    h.faults(json!({ "users_down": true })).await;
    assert_eq!(user("me", Some(TOKEN)).await.0, 503);
    assert_eq!(h.get(&[]).await.0, 200);
    h.faults(json!({ "users_down": false })).await;
    assert_eq!(user("me", Some(TOKEN)).await.0, 200);
}

#[tokio::test]
async fn users_endpoint_shares_the_rate_limit() {
    let mut config = config(5);
    config.rate_limit_per_minute = 2;
    let h = start(config).await;
    assert_eq!(h.get(&[]).await.0, 200);
    let response = h
        .client
        .get(format!("{}/api/1.0/users/me", h.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = h
        .client
        .get(format!("{}/api/1.0/users/me", h.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(h.get(&[]).await.0, 429);
}
