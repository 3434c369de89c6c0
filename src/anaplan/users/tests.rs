//! The users directory against the Anaplan simulator on loopback, logged in
//! with the simulator's basic auth.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

use super::*;
use crate::enrich::{EnrichConfig, Enricher, Resolution};
use crate::simulator::anaplan::{
    AnaplanEndpoint, AnaplanFaultUpdate, AnaplanSim, AnaplanSimConfig,
};
use crate::state::SharedState;

const LOGIN: &str = "auditor@example.com";
const PASSWORD: &str = "sim-password";

/// Basic auth against `POST /token/authenticate`, the token kept until
/// rejected.
#[derive(Debug)]
struct BasicLogin {
    http: reqwest::Client,
    base: String,
    token: tokio::sync::Mutex<Option<HeaderValue>>,
    logins: AtomicUsize,
}

#[async_trait]
impl AuthHeader for BasicLogin {
    async fn header(&self) -> Result<HeaderValue, SourceError> {
        let mut token = self.token.lock().await;
        if let Some(header) = token.as_ref() {
            return Ok(header.clone());
        }
        self.logins.fetch_add(1, Ordering::SeqCst);
        let body: Value = self
            .http
            .post(format!("{}/token/authenticate", self.base))
            .basic_auth(LOGIN, Some(PASSWORD))
            .send()
            .await
            .map_err(|e| SourceError::Transient(e.to_string()))?
            .json()
            .await
            .map_err(|e| SourceError::Transient(e.to_string()))?;
        let value = body["tokenInfo"]["tokenValue"].as_str().unwrap();
        let mut header = HeaderValue::from_str(&format!("AnaplanAuthToken {value}")).unwrap();
        header.set_sensitive(true);
        *token = Some(header.clone());
        Ok(header)
    }

    async fn rejected(&self, header: &HeaderValue) {
        let mut token = self.token.lock().await;
        if token.as_ref() == Some(header) {
            *token = None;
        }
    }
}

struct Harness {
    sim: Arc<AnaplanSim>,
    auth: Arc<BasicLogin>,
    users: AnaplanUsers,
    /// (id, deleted) of every directory user.
    directory: Vec<(String, bool)>,
}

async fn start() -> Harness {
    let sim = AnaplanSim::new(AnaplanSimConfig {
        users: 23,
        deleted_users: 3,
        backlog: 10,
        rate: 0.0,
        ..AnaplanSimConfig::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(Arc::clone(&sim).serve(listener, std::future::pending()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let auth = Arc::new(BasicLogin {
        http: http.clone(),
        base: base.clone(),
        token: tokio::sync::Mutex::new(None),
        logins: AtomicUsize::new(0),
    });
    let users = AnaplanUsers::new(
        &base,
        http.clone(),
        Arc::clone(&auth) as Arc<dyn AuthHeader>,
        SourceMetrics::detached("anaplan_users", "anaplan"),
        Arc::new(RateBudget::per_minute(600)),
    )
    .unwrap();
    let all: Value = http
        .get(format!("{base}/_sim/anaplan/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let directory = all["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["id"].as_str().unwrap().to_string(),
                u["deleted"].as_bool().unwrap(),
            )
        })
        .collect();
    Harness {
        sim,
        auth,
        users,
        directory,
    }
}

impl Harness {
    fn listed(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .directory
            .iter()
            .filter(|(_, deleted)| !deleted)
            .map(|(id, _)| id.as_str())
            .collect();
        ids.sort_unstable();
        ids
    }

    fn deleted(&self) -> Vec<&str> {
        self.directory
            .iter()
            .filter(|(_, deleted)| *deleted)
            .map(|(id, _)| id.as_str())
            .collect()
    }

    fn faults(&self, update: AnaplanFaultUpdate) {
        self.sim.update_faults(update).unwrap();
    }
}

#[tokio::test]
async fn the_list_is_walked_page_by_page_and_single_users_are_looked_up() {
    let h = start().await;
    // 23 users and the 2 logins are listed; the 3 deleted ones are not.
    assert_eq!(h.listed().len(), 25);
    assert_eq!(h.deleted().len(), 3);
    let users = h.users.clone().with_page_size(5);
    let listed = users.all_users().await.unwrap().unwrap();
    let mut ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, h.listed());
    assert_eq!(
        h.sim.calls(AnaplanEndpoint::UsersList),
        5,
        "25 users, 5 a page"
    );
    assert!(listed.iter().all(|(_, user)| {
        user.name.as_deref().is_some_and(|n| n.contains(' '))
            && user
                .email
                .as_deref()
                .is_some_and(|e| e.ends_with("@example.com"))
    }));
    let (id, expected) = &listed[0];
    assert_eq!(h.users.user(id).await.unwrap().as_ref(), Some(expected));
    for deleted in h.deleted() {
        assert_eq!(h.users.user(deleted).await.unwrap(), None);
    }
    // A strange id stays one path segment (and is unknown).
    assert_eq!(h.users.user("../../token/logout").await.unwrap(), None);
    assert!(h.users.is_never_a_user("INTERNAL_12"));
    assert!(!h.users.is_never_a_user(id));
    assert_eq!(h.auth.logins.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_enricher_walks_the_list_once_and_asks_only_for_what_it_lacks() {
    let h = start().await;
    let dir = tempfile::tempdir().unwrap();
    let enricher = Enricher::new(
        EnrichConfig {
            bound: Duration::from_secs(10),
            ..EnrichConfig::default()
        },
        SharedState::open(&dir.path().join("state.db")).unwrap(),
        "anaplan_users",
        SourceMetrics::detached("anaplan_users", "anaplan"),
        Arc::new(RateBudget::per_minute(600)),
        Arc::new(h.users.clone()),
    );
    let mut ids: Vec<&str> = h.directory.iter().map(|(id, _)| id.as_str()).collect();
    ids.push("INTERNAL_1");
    ids.push("INTERNAL_2");
    for _ in 0..3 {
        let answer = enricher.resolve(&ids).await;
        for id in h.listed() {
            assert!(matches!(answer[id], Resolution::Found(_)), "{id}");
        }
        for id in h.deleted().into_iter().chain(["INTERNAL_1", "INTERNAL_2"]) {
            assert_eq!(answer[id], Resolution::Unknown, "{id}");
        }
    }
    assert_eq!(h.sim.calls(AnaplanEndpoint::UsersList), 1);
    assert_eq!(h.sim.calls(AnaplanEndpoint::UsersGet), 3);
    assert_eq!(h.sim.distinct_user_lookups(), 3, "only the deleted users");
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once_and_outages_are_errors() {
    let h = start().await;
    let id = h.listed()[0].to_string();
    assert!(h.users.user(&id).await.unwrap().is_some());
    h.faults(AnaplanFaultUpdate {
        revoke_all_tokens: true,
        ..AnaplanFaultUpdate::default()
    });
    assert!(h.users.user(&id).await.unwrap().is_some());
    assert_eq!(h.auth.logins.load(Ordering::SeqCst), 2);

    h.faults(AnaplanFaultUpdate {
        users_down: Some(true),
        ..AnaplanFaultUpdate::default()
    });
    let err = h.users.user(&id).await.unwrap_err();
    assert!(
        matches!(err, SourceError::Transient(ref m) if m == "HTTP 503: Service Unavailable"),
        "{err}"
    );
    let err = h.users.all_users().await.unwrap().unwrap_err();
    assert!(matches!(err, SourceError::Transient(_)), "{err}");
    h.faults(AnaplanFaultUpdate {
        users_down: Some(false),
        rate_limit_next: Some(1),
        ..AnaplanFaultUpdate::default()
    });
    let err = h.users.user(&id).await.unwrap_err();
    assert!(
        matches!(err, SourceError::RateLimited { retry_after: None }),
        "{err}"
    );
    assert!(!format!("{:?}", h.users).contains("AnaplanAuthToken "));
}

#[test]
fn error_messages_of_both_shapes() {
    assert_eq!(
        anaplan_message(br#"{"status":{"code":404,"message":"User not found"}}"#),
        "User not found"
    );
    assert_eq!(
        anaplan_message(br#"{"status":"FAILURE_BAD_CREDENTIAL","statusMessage":"Invalid"}"#),
        "Invalid"
    );
    assert_eq!(anaplan_message(b""), "empty body");
    assert_eq!(anaplan_message(b"<html>\n</html>"), "<html></html>");
}
