//! End-to-end tests of the Anaplan simulator over a real listener (loopback only).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::Utc;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::{AnaplanEndpoint, AnaplanSim, AnaplanSimConfig};
use crate::anaplan::catalog;

const AUDITOR: &str = "auditor@example.com";
const VIEWER: &str = "viewer@example.com";
const PASSWORD: &str = "sim-password";
const DAY_MS: i64 = 86_400_000;
const TWO_POW_53: u64 = 1 << 53;

struct Harness {
    sim: Arc<AnaplanSim>,
    base: String,
    client: reqwest::Client,
}

/// `backlog` events over an hour that ended 20 minutes ago, no live events, nothing late:
/// a stable set.
fn config(backlog: u64) -> AnaplanSimConfig {
    AnaplanSimConfig {
        backlog,
        rate: 0.0,
        late_share: 0.0,
        epoch: Utc::now() - chrono::Duration::minutes(20),
        ..AnaplanSimConfig::default()
    }
}

async fn start(config: AnaplanSimConfig) -> Harness {
    let sim = AnaplanSim::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(Arc::clone(&sim).serve(listener, std::future::pending()));
    Harness {
        sim,
        base,
        client: reqwest::Client::new(),
    }
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    (status, body)
}

fn ids(page: &Value) -> Vec<u64> {
    page["response"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

impl Harness {
    async fn login_response(&self, email: &str, password: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/token/authenticate", self.base))
            .basic_auth(email, Some(password))
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    async fn login(&self, email: &str) -> String {
        let (status, body) = self.login_response(email, PASSWORD).await;
        assert_eq!(status, 201, "{body}");
        body["tokenInfo"]["tokenValue"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn get(&self, token: &str, path_and_query: &str) -> (u16, Value) {
        let url = if path_and_query.starts_with("http") {
            path_and_query.to_string()
        } else {
            format!("{}{path_and_query}", self.base)
        };
        let response = self
            .client
            .get(url)
            .header("Authorization", format!("AnaplanAuthToken {token}"))
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    async fn post(&self, token: &str, url: &str, body: &Value) -> (u16, Value) {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        let response = self
            .client
            .post(url)
            .header("Authorization", format!("AnaplanAuthToken {token}"))
            .json(body)
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    async fn faults(&self, update: Value) -> Value {
        let response = self
            .client
            .post(format!("{}/_sim/anaplan/faults", self.base))
            .json(&update)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap()
    }

    async fn admin(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.json().await.unwrap()
    }

    /// A window covering the whole backlog: the last 2 hours of the simulated clock.
    fn window(&self) -> (i64, i64) {
        let now = self.sim.now_ms();
        (now - 2 * 3_600_000, now)
    }

    /// Follows `nextUrl` from the first page of `window` until it is absent; every id read,
    /// in order.
    async fn read_window(&self, token: &str, window: (i64, i64), limit: u32) -> Vec<u64> {
        let mut url = format!(
            "/audit/api/1/events?type=all&dateFrom={}&dateTo={}&limit={limit}&offset=0",
            window.0, window.1
        );
        let mut all = Vec::new();
        loop {
            let (status, page) = self.get(token, &url).await;
            assert_eq!(status, 200, "{page}");
            all.extend(ids(&page));
            match page["meta"]["paging"]["nextUrl"].as_str() {
                Some(next) => url = next.to_string(),
                None => return all,
            }
        }
    }
}

#[tokio::test]
async fn basic_auth_issues_tokens_in_anaplans_shape() {
    let h = start(config(10)).await;
    let before = h.sim.now_ms();
    let (status, body) = h.login_response(AUDITOR, PASSWORD).await;
    assert_eq!(status, 201);
    assert_eq!(body["status"], "SUCCESS");
    assert_eq!(body["statusMessage"], "Login successful");
    assert_eq!(
        body["meta"]["validationUrl"],
        format!("{}/token/validate", h.base)
    );
    let info = &body["tokenInfo"];
    let expires = info["expiresAt"].as_i64().unwrap();
    assert!((before + 35 * 60_000..=h.sim.now_ms() + 35 * 60_000).contains(&expires));
    for key in ["tokenValue", "tokenId", "refreshTokenId"] {
        assert!(!info[key].as_str().unwrap().is_empty(), "{key}");
    }
    // Case-insensitive login.
    assert_eq!(
        h.login_response("Auditor@Example.com", PASSWORD).await.0,
        201
    );

    let (status, body) = h.login_response(AUDITOR, "wrong").await;
    assert_eq!(status, 401);
    assert_eq!(body["status"], "FAILURE_BAD_CREDENTIAL");
    assert_eq!(
        h.login_response("nobody@example.com", PASSWORD).await.0,
        401
    );
    for header in ["Basic %%%", "Bearer abc", "Basic"] {
        let response = h
            .client
            .post(format!("{}/token/authenticate", h.base))
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{header}");
        assert_eq!(body["status"], "FAILURE_BAD_HEADER", "{header}");
    }
    let response = h
        .client
        .post(format!("{}/token/authenticate", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn certificate_auth_verifies_chain_and_signature() {
    let h = start(config(10)).await;
    let sim = Arc::clone(&h.sim);
    let cert = tokio::task::spawn_blocking(move || sim.mint_client_certificate(AUDITOR).unwrap())
        .await
        .unwrap();
    let login = |header: String, body: Value| {
        let request = h
            .client
            .post(format!("{}/token/authenticate", h.base))
            .header("Authorization", header)
            .json(&body);
        async move { json_of(request.send().await.unwrap()).await }
    };

    // The SDK's way: base64 of the PEM, 150 random bytes signed with RSA-SHA512.
    let (status, body) = login(cert.authorization_header(), cert.login_body()).await;
    assert_eq!(status, 201, "{body}");
    let token = body["tokenInfo"]["tokenValue"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(h.get(&token, "/audit/api/1/events?limit=1").await.0, 200);

    // jferneau's way: base64 of the DER, 100 bytes in the v2 format.
    let mut data = (h.sim.now_ms() / 1000).to_be_bytes().to_vec();
    data.extend(rand::random::<[u8; 92]>());
    let body = json!({
        "encodedDataFormat": "v2",
        "encodedData": STANDARD.encode(&data),
        "encodedSignedData": STANDARD.encode(cert.sign(&data)),
    });
    let header = format!("CACertificate {}", STANDARD.encode(cert.certificate_der()));
    assert_eq!(login(header, body).await.0, 201);

    // Signed with another key (a second certificate for the same login).
    let sim = Arc::clone(&h.sim);
    let other = tokio::task::spawn_blocking(move || sim.mint_client_certificate(AUDITOR).unwrap())
        .await
        .unwrap();
    let data = [9u8; 120];
    let forged = json!({
        "encodedData": STANDARD.encode(data),
        "encodedSignedData": STANDARD.encode(other.sign(&data)),
    });
    let (status, body) = login(cert.authorization_header(), forged).await;
    assert_eq!(status, 401);
    assert_eq!(body["status"], "FAILURE_BAD_CREDENTIAL");
    assert_eq!(
        body["statusMessage"],
        "signature does not match the certificate"
    );

    // A certificate from a CA the simulator does not trust.
    let stranger_sim = AnaplanSim::new(config(1));
    let stranger =
        tokio::task::spawn_blocking(move || stranger_sim.mint_client_certificate(AUDITOR).unwrap())
            .await
            .unwrap();
    let (status, body) = login(stranger.authorization_header(), stranger.login_body()).await;
    assert_eq!(status, 401);
    assert_eq!(body["statusMessage"], "certificate is not trusted");

    // A trusted certificate for a login that does not exist.
    let sim = Arc::clone(&h.sim);
    let nobody = tokio::task::spawn_blocking(move || {
        sim.mint_client_certificate("nobody@example.com").unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        login(nobody.authorization_header(), nobody.login_body())
            .await
            .0,
        401
    );

    // Too little signed data, and no body at all.
    let short = [1u8; 16];
    let body = json!({
        "encodedData": STANDARD.encode(short),
        "encodedSignedData": STANDARD.encode(cert.sign(&short)),
    });
    let (status, body) = login(cert.authorization_header(), body).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (400, Some("FAILURE_BAD_REQUEST"))
    );

    // The admin endpoint mints certificates for black-box tests.
    let minted = h
        .client
        .post(format!("{}/_sim/anaplan/client-certificate", h.base))
        .json(&json!({ "email": VIEWER }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(minted["certificate_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(minted["private_key_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    let ca = h
        .client
        .get(format!("{}/_sim/anaplan/ca.pem", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ca, h.sim.ca_certificate_pem());
    assert_eq!(h.sim.calls(AnaplanEndpoint::TokenAuthenticate), 6);
}

#[tokio::test]
async fn tokens_expire_on_the_simulated_clock_and_refresh_extends_them() {
    let h = start(AnaplanSimConfig {
        token_ttl: Duration::from_secs(2),
        ..config(10)
    })
    .await;
    let token = h.login(AUDITOR).await;
    assert_eq!(h.get(&token, "/audit/api/1/events").await.0, 200);

    // Refresh: 200, same value, later expiry.
    let refresh = |token: String| {
        let request = h
            .client
            .post(format!("{}/token/refresh", h.base))
            .header("Authorization", format!("AnaplanAuthToken {token}"));
        async move { json_of(request.send().await.unwrap()).await }
    };
    h.faults(json!({ "clock_advance_secs": 1 })).await;
    let (status, body) = refresh(token.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["statusMessage"], "Token refreshed");
    assert_eq!(body["tokenInfo"]["tokenValue"], token.as_str());
    let expires = body["tokenInfo"]["expiresAt"].as_i64().unwrap();
    assert!(expires >= h.sim.now_ms() + 1900);
    // 1.5 s later it would have expired without the refresh.
    h.faults(json!({ "clock_advance_secs": 2 })).await;
    assert_eq!(h.get(&token, "/audit/api/1/events").await.0, 200);

    // Validate tells who the token belongs to.
    let (status, body) = h.get(&token, "/token/validate").await;
    assert_eq!(status, 200);
    assert_eq!(body["userInfo"]["userId"], AUDITOR);
    assert_eq!(body["userInfo"]["customerGuid"], h.sim.config.tenant_id);
    assert_eq!(body["tokenInfo"]["expiresAt"], expires);

    // Past the expiry: 401 everywhere, refresh included.
    h.faults(json!({ "clock_advance_secs": 4 })).await;
    let (status, body) = h.get(&token, "/audit/api/1/events").await;
    assert_eq!(status, 401);
    assert_eq!(body["status"], "FAILURE_BAD_CREDENTIAL");
    assert_ne!(body["status"], "FAILURE_UNAUTHORIZED_USER_ACTION");
    let (status, body) = h.get(&token, "/2/0/users/me").await;
    assert_eq!(status, 401);
    assert_eq!(body["status"]["code"], 401);
    assert_eq!(refresh(token.clone()).await.0, 401);

    // Bearer is the wrong scheme: 400 on the token service, 401 on the audit API.
    let bearer = h
        .client
        .post(format!("{}/token/refresh", h.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 400);
    let fresh = h.login(AUDITOR).await;
    let (status, body) = json_of(
        h.client
            .get(format!("{}/audit/api/1/events", h.base))
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body["statusMessage"],
        "No valid token header found for the request"
    );

    // Logout: 204, then 401.
    let response = h
        .client
        .post(format!("{}/token/logout", h.base))
        .header("Authorization", format!("AnaplanAuthToken {fresh}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(h.get(&fresh, "/audit/api/1/events").await.0, 401);

    // Revocation by the admin API.
    let other = h.login(AUDITOR).await;
    h.faults(json!({ "revoke_token": other })).await;
    assert_eq!(h.get(&other, "/audit/api/1/events").await.0, 401);
    let other = h.login(AUDITOR).await;
    h.faults(json!({ "revoke_all_tokens": true })).await;
    assert_eq!(h.get(&other, "/audit/api/1/events").await.0, 401);
}

#[tokio::test]
async fn the_role_gate_answers_401_unauthorized_user_action() {
    let h = start(config(10)).await;
    let viewer = h.login(VIEWER).await;
    for (path, post) in [
        ("/audit/api/1/events", false),
        ("/audit/api/1/events/search", true),
    ] {
        let (status, body) = if post {
            h.post(&viewer, path, &json!({})).await
        } else {
            h.get(&viewer, path).await
        };
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({
                "status": "FAILURE_UNAUTHORIZED_USER_ACTION",
                "statusMessage": "User is not authorized to perform this action",
            })
        );
    }
    // The users API needs no role.
    let (status, body) = h.get(&viewer, "/2/0/users/me").await;
    assert_eq!(status, 200);
    assert_eq!(body["user"]["email"], VIEWER);

    // The role can be taken away and given back at run time, tokens unchanged.
    let auditor = h.login(AUDITOR).await;
    h.faults(json!({ "revoke_auditor": AUDITOR })).await;
    assert_eq!(
        h.get(&auditor, "/audit/api/1/events").await.1["status"],
        "FAILURE_UNAUTHORIZED_USER_ACTION"
    );
    h.faults(json!({ "grant_auditor": AUDITOR })).await;
    assert_eq!(h.get(&auditor, "/audit/api/1/events").await.0, 200);
    let response = h
        .client
        .post(format!("{}/_sim/anaplan/faults", h.base))
        .json(&json!({ "grant_auditor": "nobody@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn windows_over_30_days_are_rejected() {
    let h = start(config(10)).await;
    let token = h.login(AUDITOR).await;
    let now = h.sim.now_ms();
    let expected = json!({
        "status": "FAILURE_BAD_REQUEST",
        "statusMessage": "Date range cannot exceed 30 days",
    });
    let too_long = format!(
        "/audit/api/1/events?dateFrom={}&dateTo={now}",
        now - 30 * DAY_MS - 1
    );
    assert_eq!(h.get(&token, &too_long).await, (400, expected.clone()));
    let exact = format!(
        "/audit/api/1/events?dateFrom={}&dateTo={now}",
        now - 30 * DAY_MS
    );
    assert_eq!(h.get(&token, &exact).await.0, 200);
    assert_eq!(
        h.get(&token, "/audit/api/1/events?intervalInHours=721")
            .await,
        (400, expected.clone())
    );
    assert_eq!(
        h.get(&token, "/audit/api/1/events?intervalInHours=720")
            .await
            .0,
        200
    );
    let body = json!({ "from": now - 31 * DAY_MS, "to": now });
    assert_eq!(
        h.post(&token, "/audit/api/1/events/search", &body).await,
        (400, expected.clone())
    );
    assert_eq!(
        h.post(
            &token,
            "/audit/api/1/events/search",
            &json!({ "interval": 721 })
        )
        .await,
        (400, expected)
    );
    // Only `from`, however old, is accepted by the search endpoint.
    let (status, page) = h
        .post(&token, "/audit/api/1/events/search", &json!({ "from": 0 }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["meta"]["paging"]["totalSize"], 10);
    for bad in [
        "dateFrom=abc",
        "limit=-1",
        "offset=-5",
        "dateFrom=10&dateTo=5",
    ] {
        let (status, body) = h.get(&token, &format!("/audit/api/1/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["status"], "FAILURE_BAD_REQUEST", "{bad}");
    }
}

#[tokio::test]
async fn paging_covers_every_event_exactly_once() {
    let h = start(config(1000)).await;
    let token = h.login(AUDITOR).await;
    let window = h.window();
    let visible = h.sim.visible_ids();
    assert_eq!(visible.len(), 1000);

    let (status, first) = h
        .get(
            &token,
            &format!(
                "/audit/api/1/events?type=all&dateFrom={}&dateTo={}&limit=300",
                window.0, window.1
            ),
        )
        .await;
    assert_eq!(status, 200);
    let paging = &first["meta"]["paging"];
    assert_eq!(paging["currentPageSize"], 300);
    assert_eq!(paging["totalSize"], 1000);
    assert_eq!(paging["offSet"], 0);
    assert_eq!(paging["nextOffset"], 300);
    assert_eq!(
        paging["nextUrl"],
        format!(
            "{}/audit/api/1/events?type=all&dateFrom={}&dateTo={}&limit=300&offset=300",
            h.base, window.0, window.1
        )
    );
    assert!(paging.get("previousUrl").is_none());
    let (_, last) = h.get(&token, paging["nextUrl"].as_str().unwrap()).await;
    assert!(last["meta"]["paging"]["previousUrl"]
        .as_str()
        .unwrap()
        .ends_with("&limit=300&offset=0"));

    let all = h.read_window(&token, window, 300).await;
    assert_eq!(all, visible);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 1000);
    // Ascending (eventDate, id).
    let (_, page) = h
        .get(
            &token,
            &format!(
                "/audit/api/1/events?dateFrom={}&dateTo={}",
                window.0, window.1
            ),
        )
        .await;
    let events = page["response"].as_array().unwrap();
    assert_eq!(events.len(), 1000);
    assert!(events.windows(2).all(|w| {
        let key = |e: &Value| (e["eventDate"].as_i64().unwrap(), e["id"].as_u64().unwrap());
        key(&w[0]) < key(&w[1])
    }));
    assert!(page["meta"]["paging"].get("nextUrl").is_none());
    assert_eq!(
        h.admin("/_sim/anaplan/events").await["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect::<Vec<_>>(),
        visible
    );

    // The search endpoint pages the same way; its nextUrl is POSTed with the same body.
    let body = json!({ "from": window.0, "to": window.1 });
    let mut url = "/audit/api/1/events/search?limit=400".to_string();
    let mut searched = Vec::new();
    loop {
        let (status, page) = h.post(&token, &url, &body).await;
        assert_eq!(status, 200, "{page}");
        searched.extend(ids(&page));
        match page["meta"]["paging"]["nextUrl"].as_str() {
            Some(next) => {
                assert!(next.contains("/audit/api/1/events/search?"), "{next}");
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(searched, visible);

    // limit=0 counts only; an offset past the end is an empty page.
    let (_, counts) = h.get(&token, "/audit/api/1/events?limit=0").await;
    assert_eq!(counts["meta"]["paging"]["totalSize"], 1000);
    assert_eq!(counts["response"], json!([]));
    assert!(counts["meta"]["paging"].get("nextUrl").is_none());
    let (_, beyond) = h.get(&token, "/audit/api/1/events?offset=5000").await;
    assert_eq!(beyond["response"], json!([]));
    assert_eq!(beyond["meta"]["paging"]["currentPageSize"], 0);
}

#[tokio::test]
async fn drift_shifts_offsets_and_an_overlap_reread_recovers() {
    let h = start(config(400)).await;
    let token = h.login(AUDITOR).await;
    let window = h.window();
    let before: BTreeSet<u64> = h.sim.visible_ids().into_iter().collect();
    h.faults(json!({ "drift_next": 2, "drift_events": 3 }))
        .await;

    // Pass 1: the pages at offsets 100 and 200 each find 3 new events stored before them,
    // so each repeats 3 events of the previous page, and the new ones are skipped.
    let pass1 = h.read_window(&token, window, 100).await;
    let distinct: BTreeSet<u64> = pass1.iter().copied().collect();
    assert_eq!(pass1.len(), 406, "every old event plus 6 repeats");
    assert_eq!(distinct, before, "pass 1 saw no inserted event");
    let after: BTreeSet<u64> = h.sim.visible_ids().into_iter().collect();
    assert_eq!(after.len(), 406);
    let inserted: BTreeSet<u64> = after.difference(&before).copied().collect();
    assert_eq!(inserted.len(), 6);
    // Inserted events were stored later with older eventDates: their ids are larger.
    assert!(inserted.iter().all(|id| id > before.last().unwrap()));

    // Pass 2, the overlap re-read of the same window, finds them.
    let pass2 = h.read_window(&token, window, 100).await;
    let union: BTreeSet<u64> = pass1.iter().chain(&pass2).copied().collect();
    assert_eq!(union, after);
    assert_eq!(pass2.len(), 406);
    let stats = h.admin("/_sim/anaplan/stats").await;
    assert_eq!(stats["drift_events"], 6);
    assert_eq!(stats["visible_events"], 406);
}

/// Many drift events at once still all land before the page they are inserted for: with
/// half a page of them, a bound at the event at the offset (rather than the one the
/// insertions move there) puts some on the page nearly every time.
#[tokio::test]
async fn every_drift_event_lands_before_the_page_that_inserts_it() {
    let h = start(config(400)).await;
    let token = h.login(AUDITOR).await;
    let window = h.window();
    let before: BTreeSet<u64> = h.sim.visible_ids().into_iter().collect();
    h.faults(json!({ "drift_next": 1, "drift_events": 50 }))
        .await;
    let pass1 = h.read_window(&token, window, 100).await;
    let distinct: BTreeSet<u64> = pass1.iter().copied().collect();
    assert_eq!(distinct, before, "pass 1 saw an inserted event");
    assert_eq!(pass1.len(), 450, "the page at offset 100 repeats 50 events");
    let after: BTreeSet<u64> = h.sim.visible_ids().into_iter().collect();
    assert_eq!(after.len(), 450);
}

#[tokio::test]
async fn late_events_appear_with_old_event_dates() {
    let now = Utc::now();
    let h = start(AnaplanSimConfig {
        backlog: 200,
        rate: 0.0,
        late_share: 1.0,
        max_late: Duration::from_secs(600),
        epoch: now,
        backlog_span: Duration::from_secs(60),
        ..AnaplanSimConfig::default()
    })
    .await;
    let token = h.login(AUDITOR).await;
    let early = h.sim.visible_ids().len();
    assert!(early < 200, "{early}");
    h.faults(json!({ "clock_advance_secs": 700 })).await;
    let window = (now.timestamp_millis() - 120_000, h.sim.now_ms());
    let all = h.read_window(&token, window, 1000).await;
    assert_eq!(all.len(), 200);
    let (_, page) = h.get(&token, "/audit/api/1/events").await;
    let lags: Vec<i64> = page["response"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["createdDate"].as_i64().unwrap() - e["eventDate"].as_i64().unwrap())
        .collect();
    assert!(
        lags.iter().all(|lag| (1000..=600_000).contains(lag)),
        "{lags:?}"
    );

    // Inserted events with an age land inside a window already read.
    let read_until = h.sim.now_ms();
    h.faults(json!({ "insert_events": 4, "insert_event_age_secs": 300 }))
        .await;
    let again = h.read_window(&token, (window.0, read_until), 1000).await;
    assert_eq!(again.len(), 204);
    assert_eq!(h.admin("/_sim/anaplan/stats").await["inserted_events"], 4);
}

#[tokio::test]
async fn ids_above_2_pow_53_are_exact_json_integers() {
    let h = start(config(1000)).await;
    let token = h.login(AUDITOR).await;
    let response = h
        .client
        .get(format!("{}/audit/api/1/events?limit=1000", h.base))
        .header("Authorization", format!("AnaplanAuthToken {token}"))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let visible = h.sim.visible_ids();
    let big: Vec<u64> = visible
        .iter()
        .copied()
        .filter(|&id| id > TWO_POW_53)
        .collect();
    assert!(big.len() > 100, "{}", big.len());
    assert!(visible.iter().any(|&id| id < TWO_POW_53));
    // Some of them cannot survive a trip through f64.
    let corrupted = big.iter().filter(|&&id| id as f64 as u64 != id).count();
    assert!(corrupted > 10, "{corrupted}");
    for id in &visible {
        assert!(text.contains(&format!("{{\"id\":{id},")), "{id}");
    }
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ids(&page), visible);
    // The admin listing is exact too.
    let admin = h
        .client
        .get(format!("{}/_sim/anaplan/events", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(admin.contains(&big[0].to_string()));
}

#[tokio::test]
async fn events_have_anaplans_shape_and_type_filters_select_families() {
    let h = start(AnaplanSimConfig {
        unknown_code_share: 0.2,
        ..config(1500)
    })
    .await;
    let token = h.login(AUDITOR).await;
    let (_, page) = h.get(&token, "/audit/api/1/events").await;
    let events = page["response"].as_array().unwrap();
    assert_eq!(events.len(), 1500);
    let tenant = h.sim.config.tenant_id.clone();
    let mut codes = HashMap::new();
    let (mut internal, mut null_attributes, mut no_object) = (0, 0, 0);
    for event in events {
        let code = event["eventTypeId"].as_str().unwrap();
        *codes.entry(code.to_string()).or_insert(0) += 1;
        assert_eq!(event["tenantId"], tenant.as_str());
        assert_eq!(event["eventTimeZone"], "UTC");
        assert_eq!(event["createdTimeZone"], "UTC");
        assert!(event["createdDate"].as_i64() >= event["eventDate"].as_i64());
        assert!(event["checksum"].is_string());
        assert!(event.get("additionalAttributes").is_some());
        assert!(event["hostName"].is_string());
        null_attributes += usize::from(event["additionalAttributes"].is_null());
        no_object += usize::from(event.get("objectId").is_none());
        let user = event["userId"].as_str().unwrap();
        if user.starts_with("INTERNAL_") {
            internal += 1;
        } else {
            assert_eq!(user.len(), 32, "{user}");
        }
        if let Some(info) = catalog::lookup(code) {
            assert_eq!(event["message"], info.name);
            assert_eq!(event["success"], !info.is_failure());
            assert!(event["ipAddress"].is_string() && event["userAgent"].is_string());
            if code == "USR-8" {
                assert_eq!(event["objectId"], event["userId"]);
            }
        }
    }
    assert!(internal > 20, "{internal}");
    assert!(no_object > 0);
    assert!(null_attributes < 60);
    let unknown: usize = codes
        .iter()
        .filter(|(code, _)| catalog::lookup(code).is_none())
        .map(|(_, n)| n)
        .sum();
    assert!((150..450).contains(&unknown), "{unknown}");
    assert!(codes["USR-8"] > 100);

    let count = |event_type: &str| {
        let url = format!("/audit/api/1/events?type={event_type}&limit=0");
        let h = &h;
        let token = token.clone();
        async move { h.get(&token, &url).await.1["meta"]["paging"]["totalSize"].clone() }
    };
    let family = |prefix: &str| -> usize {
        codes
            .iter()
            .filter(|(code, _)| code.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(count("all").await, 1500);
    assert_eq!(count("no_such_type").await, 1500);
    assert_eq!(count("user_activity").await, family("USR-"));
    assert_eq!(count("access_control").await, family("AUTHZ-"));
    assert_eq!(count("conn_mgmt").await, family("CONN-"));
    assert_eq!(count("byok").await, family("DSM-"));
    assert_eq!(count("forecaster").await, 0);
    let (_, page) = h
        .get(&token, "/audit/api/1/events?type=access_control")
        .await;
    assert!(page["response"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["eventTypeId"].as_str().unwrap().starts_with("AUTHZ-")));

    // CEF: one line per event, no paging.
    let cef = h
        .client
        .get(format!("{}/audit/api/1/events?limit=5", h.base))
        .header("Authorization", format!("AnaplanAuthToken {token}"))
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert!(cef.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = cef.text().await.unwrap();
    assert_eq!(text.lines().count(), 1500);
    assert!(text.lines().all(|l| l.contains("  CEF:0|Anaplan, Inc.|")));
}

#[tokio::test]
async fn same_seed_serves_the_same_events() {
    let config = config(300);
    let a = start(config.clone()).await;
    let b = start(config.clone()).await;
    let other = start(AnaplanSimConfig { seed: 7, ..config }).await;
    let (ta, tb, to) = (
        a.login(AUDITOR).await,
        b.login(AUDITOR).await,
        other.login(AUDITOR).await,
    );
    let (_, pa) = a.get(&ta, "/audit/api/1/events").await;
    let (_, pb) = b.get(&tb, "/audit/api/1/events").await;
    let (_, po) = other.get(&to, "/audit/api/1/events").await;
    assert_eq!(pa["response"], pb["response"]);
    assert_ne!(pa["response"], po["response"]);
}

#[tokio::test]
async fn retention_hides_events_older_than_30_days() {
    let h = start(config(50)).await;
    let token = h.login(AUDITOR).await;
    assert_eq!(h.sim.visible_ids().len(), 50);
    h.faults(json!({ "clock_advance_secs": 30 * 86_400 - 3600 }))
        .await;
    let remaining = h.sim.visible_ids().len();
    assert!(remaining > 0 && remaining < 50, "{remaining}");
    h.faults(json!({ "clock_advance_secs": 31 * 86_400 })).await;
    assert!(h.sim.visible_ids().is_empty());
    // The token expired too (35 minutes).
    assert_eq!(h.get(&token, "/audit/api/1/events").await.0, 401);
    let token = h.login(AUDITOR).await;
    let (_, page) = h.get(&token, "/audit/api/1/events").await;
    assert_eq!(page["meta"]["paging"]["totalSize"], 0);
}

#[tokio::test]
async fn users_api_pages_the_directory_and_404s_the_rest() {
    let h = start(config(300)).await;
    let token = h.login(VIEWER).await;
    let directory = h.admin("/_sim/anaplan/users").await;
    let directory = directory["users"].as_array().unwrap();
    let listed: Vec<&str> = directory
        .iter()
        .filter(|u| u["deleted"] == false)
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    let deleted: Vec<&str> = directory
        .iter()
        .filter(|u| u["deleted"] == true)
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!((listed.len(), deleted.len()), (42, 5));

    let (status, first) = h.get(&token, "/2/0/users?limit=10").await;
    assert_eq!(status, 200);
    assert_eq!(
        first["status"],
        json!({ "code": 200, "message": "Success" })
    );
    assert_eq!(
        first["meta"]["schema"],
        format!("{}/2/0/objects/user", h.base)
    );
    let paging = &first["meta"]["paging"];
    assert_eq!(paging["currentPageSize"], 10);
    assert_eq!(paging["offset"], 0);
    assert_eq!(paging["totalSize"], 42);
    assert!(paging.get("previous").is_none());
    let mut next = paging["next"].as_str().map(str::to_string);
    let mut seen: Vec<String> = first["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    let user = &first["users"][0];
    for key in [
        "id",
        "email",
        "firstName",
        "lastName",
        "active",
        "emailOptIn",
        "customerId",
    ] {
        assert!(user.get(key).is_some(), "{key}: {user}");
    }
    while let Some(url) = next {
        let (status, page) = h.get(&token, &url).await;
        assert_eq!(status, 200);
        assert!(page["meta"]["paging"]["previous"].is_string());
        seen.extend(
            page["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_string()),
        );
        next = page["meta"]["paging"]["next"].as_str().map(str::to_string);
    }
    let mut expected: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected);

    // Sorting, searching and their validation.
    let (status, sorted) = h.get(&token, "/2/0/users?sort=-email").await;
    assert_eq!(status, 200);
    let emails: Vec<&str> = sorted["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert!(emails.windows(2).all(|w| w[0] >= w[1]));
    assert_eq!(h.get(&token, "/2/0/users?sort=%2BfirstName").await.0, 200);
    for bad in ["sort=email", "sort=-shoeSize", "limit=0", "offset=x"] {
        let (status, body) = h.get(&token, &format!("/2/0/users?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["status"]["code"], 400, "{bad}");
    }
    let (_, found) = h.get(&token, "/2/0/users?s=ada%25").await;
    assert!(found["users"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["email"].as_str().unwrap().starts_with("ada")));
    assert!(!found["users"].as_array().unwrap().is_empty());

    // Single users: listed ones resolve; deleted, INTERNAL_* and unknown ids are 404.
    let (status, one) = h.get(&token, &format!("/2/0/users/{}", listed[3])).await;
    assert_eq!(status, 200);
    assert_eq!(one["user"]["id"], listed[3]);
    for id in [
        deleted[0],
        "INTERNAL_101",
        "0123456789abcdef0123456789abcdef",
    ] {
        let (status, body) = h.get(&token, &format!("/2/0/users/{id}")).await;
        assert_eq!(status, 404, "{id}");
        assert_eq!(
            body,
            json!({ "status": { "code": 404, "message": "User not found" } })
        );
    }
    // Deleted users do act in events.
    let auditor = h.login(AUDITOR).await;
    let (_, page) = h.get(&auditor, "/audit/api/1/events").await;
    let actors: HashSet<&str> = page["response"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["userId"].as_str().unwrap())
        .collect();
    assert!(deleted.iter().any(|id| actors.contains(id)));
}

#[tokio::test]
async fn stats_count_calls_per_endpoint_and_distinct_lookups() {
    let h = start(config(200)).await;
    let token = h.login(AUDITOR).await;
    let (_, page) = h.get(&token, "/audit/api/1/events").await;
    // A caching enricher: one lookup per distinct user id.
    let mut cache: HashMap<String, u16> = HashMap::new();
    for event in page["response"].as_array().unwrap() {
        let user = event["userId"].as_str().unwrap().to_string();
        if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(user) {
            let status = h.get(&token, &format!("/2/0/users/{}", slot.key())).await.0;
            slot.insert(status);
        }
    }
    let distinct = cache.len() as u64;
    assert!(distinct > 10);
    assert_eq!(h.sim.calls(AnaplanEndpoint::UsersGet), distinct);
    assert!(h.sim.calls(AnaplanEndpoint::UsersGet) <= h.sim.distinct_user_lookups() as u64);
    assert_eq!(h.get(&token, "/2/0/users").await.0, 200);
    assert_eq!(h.get(&token, "/nowhere").await.0, 404);

    let stats = h.admin("/_sim/anaplan/stats").await;
    let endpoints = &stats["by_endpoint"];
    assert_eq!(endpoints["token_authenticate"]["201"], 1);
    assert_eq!(endpoints["audit_events"]["200"], 1);
    assert_eq!(endpoints["users_list"]["200"], 1);
    assert_eq!(endpoints["other"]["404"], 1);
    let ok = cache.values().filter(|&&s| s == 200).count() as u64;
    assert_eq!(endpoints["users_get"]["200"].as_u64().unwrap_or(0), ok);
    assert_eq!(
        endpoints["users_get"]["404"].as_u64().unwrap_or(0),
        distinct - ok
    );
    assert_eq!(stats["distinct_user_lookups"], distinct);
    assert_eq!(stats["total_requests"], distinct + 4);
    assert_eq!(stats["pages_served"], 1);
    assert_eq!(stats["events_served"], 200);
    let requests = h.admin("/_sim/anaplan/requests?limit=2").await;
    assert_eq!(requests[1]["endpoint"], "other");
    assert_eq!(requests[1]["status"], 404);
}

#[tokio::test]
async fn concurrent_event_requests_are_counted() {
    let h = start(config(300)).await;
    let token = h.login(AUDITOR).await;
    let (from, to) = h.window();
    let page = |offset: u32| {
        format!("/audit/api/1/events?dateFrom={from}&dateTo={to}&limit=100&offset={offset}")
    };
    // One after the other: one at a time.
    for offset in [0, 100] {
        assert_eq!(h.get(&token, &page(offset)).await.0, 200);
    }
    assert_eq!(h.sim.max_concurrent_event_requests(), 1);
    // Three at once, each held a second by the latency.
    h.faults(json!({"latency": "1s"})).await;
    let pages = [page(0), page(100), page(200)];
    let (a, b, c) = tokio::join!(
        h.get(&token, &pages[0]),
        h.get(&token, &pages[1]),
        h.get(&token, &pages[2])
    );
    assert_eq!((a.0, b.0, c.0), (200, 200, 200));
    // A users request is not an events request.
    h.faults(json!({"latency": "0s"})).await;
    assert_eq!(h.get(&token, "/2/0/users").await.0, 200);
    let stats = h.admin("/_sim/anaplan/stats").await;
    assert_eq!(stats["max_concurrent_event_requests"], 3);
    assert_eq!(stats["event_requests_in_flight"], 0);
}

#[tokio::test]
async fn faults_rate_limits_and_outages() {
    let h = start(AnaplanSimConfig {
        rate_limit_per_minute: 3,
        ..config(20)
    })
    .await;
    let token = h.login(AUDITOR).await;
    for _ in 0..3 {
        assert_eq!(h.get(&token, "/audit/api/1/events").await.0, 200);
    }
    // The bucket is empty: 429 without Retry-After (Anaplan documents none) ...
    let response = h
        .client
        .get(format!("{}/audit/api/1/events", h.base))
        .header("Authorization", format!("AnaplanAuthToken {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(!response.headers().contains_key("retry-after"));
    // ... unless the switch is on.
    h.faults(json!({ "send_retry_after": true })).await;
    let response = h
        .client
        .get(format!("{}/2/0/users", h.base))
        .header("Authorization", format!("AnaplanAuthToken {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    let (_, body) = json_of(response).await;
    assert_eq!(body["status"]["code"], 429);
}

#[tokio::test]
async fn injected_faults() {
    let h = start(config(20)).await;
    let token = h.login(AUDITOR).await;
    let events = "/audit/api/1/events";

    h.faults(json!({ "rate_limit_next": 1, "send_retry_after": true, "retry_after_secs": 7 }))
        .await;
    let response = h
        .client
        .get(format!("{}{events}", h.base))
        .header("Authorization", format!("AnaplanAuthToken {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");

    h.faults(json!({ "fail_next": 2, "fail_status": 503 }))
        .await;
    assert_eq!(h.get(&token, events).await.0, 503);
    assert_eq!(h.get(&token, "/2/0/users/me").await.0, 503);
    assert_eq!(h.get(&token, events).await.0, 200);

    h.faults(json!({ "users_down": true })).await;
    assert_eq!(h.get(&token, "/2/0/users/me").await.0, 503);
    assert_eq!(h.get(&token, events).await.0, 200);
    h.faults(json!({ "users_down": false })).await;
    assert_eq!(h.get(&token, "/2/0/users/me").await.0, 200);

    h.faults(json!({ "auth_fail_next": 1, "fail_status": 502 }))
        .await;
    assert_eq!(h.login_response(AUDITOR, PASSWORD).await.0, 502);
    assert_eq!(h.login_response(AUDITOR, PASSWORD).await.0, 201);

    h.faults(json!({ "truncate_next": 1 })).await;
    let text = h
        .client
        .get(format!("{}{events}", h.base))
        .header("Authorization", format!("AnaplanAuthToken {token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());

    h.faults(json!({ "html_next": 1 })).await;
    let response = h
        .client
        .get(format!("{}{events}", h.base))
        .header("Authorization", format!("AnaplanAuthToken {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    h.faults(json!({ "omit_small_meta": true })).await;
    let (_, page) = h.get(&token, events).await;
    assert!(page.get("meta").is_none());
    assert_eq!(ids(&page).len(), 20);
    let (_, page) = h.get(&token, &format!("{events}?limit=5")).await;
    assert!(page.get("meta").is_some());

    h.faults(json!({ "latency": "150ms" })).await;
    let started = std::time::Instant::now();
    assert_eq!(h.get(&token, events).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let response = h
        .client
        .post(format!("{}/_sim/anaplan/faults", h.base))
        .json(&json!({ "error_rate": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = h
        .client
        .post(format!("{}/_sim/anaplan/faults", h.base))
        .json(&json!({ "no_such_fault": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_limit_cap_answers_204_when_configured() {
    let h = start(AnaplanSimConfig {
        max_limit: Some(100),
        ..config(20)
    })
    .await;
    let token = h.login(AUDITOR).await;
    assert_eq!(h.get(&token, "/audit/api/1/events?limit=100").await.0, 200);
    let response = h
        .client
        .get(format!("{}/audit/api/1/events?limit=101", h.base))
        .header("Authorization", format!("AnaplanAuthToken {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn serve_stops_on_shutdown() {
    let sim = AnaplanSim::new(config(1));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sim.serve(listener, async {
        let _ = rx.await;
    }));
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
