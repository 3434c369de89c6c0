//! Asana's users API, for enrichment: `GET /users/{user_gid}` with the
//! source's token (name and email only, `opt_fields=name,email`).
//!
//! Requests go through the same [`RateBudget`] as the audit stream (Asana
//! limits per token), carry the token in a sensitive header, and are
//! classified like the stream's: 404 means "no such user" (deleted, or
//! never one), which the enricher caches as unknown.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use reqwest::header::{ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;

use super::client::{bearer, error_message, AsanaClient};
use crate::api::{self, read_prefix, MAX_ERROR_BYTES};
use crate::budget::RateBudget;
use crate::config::AsanaConfig;
use crate::enrich::{UserDirectory, UserInfo};
use crate::metrics::SourceMetrics;
use crate::retry::parse_retry_after;
use crate::secret::Secret;
use crate::source::SourceError;

/// A user record is a few hundred bytes.
const MAX_USER_BYTES: usize = 1 << 20;

/// One workspace's users, looked up one at a time.
#[derive(Debug, Clone)]
pub struct AsanaUsers {
    http: reqwest::Client,
    base: reqwest::Url,
    token: Secret,
    metrics: SourceMetrics,
    budget: Arc<RateBudget>,
}

impl AsanaUsers {
    /// The users of a source, sharing its client's HTTP settings and rate
    /// budget.
    pub fn new(
        config: &AsanaConfig,
        client: &AsanaClient,
        metrics: SourceMetrics,
    ) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(&config.base_url)?;
        anyhow::ensure!(
            !base.cannot_be_a_base(),
            "base_url {} cannot have a path appended",
            config.base_url
        );
        Ok(Self {
            http: client.http().clone(),
            base,
            token: config.token.clone(),
            metrics,
            budget: Arc::clone(client.budget()),
        })
    }

    fn url(&self, id: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // Pushed as one segment: an id is percent-encoded, never a path.
            path.pop_if_empty().push("users").push(id);
        }
        url.query_pairs_mut()
            .append_pair("opt_fields", "name,email");
        url
    }
}

#[derive(Deserialize)]
struct UserBody {
    data: UserData,
}

#[derive(Deserialize)]
struct UserData {
    name: Option<String>,
    email: Option<String>,
}

#[async_trait]
impl UserDirectory for AsanaUsers {
    async fn user(&self, id: &str) -> Result<Option<UserInfo>, SourceError> {
        let auth = bearer(&self.token)?;
        self.budget.acquire().await;
        let response = api::send(
            self.http
                .get(self.url(id))
                .header(AUTHORIZATION, auth)
                .header(ACCEPT, "application/json"),
            &self.metrics,
        )
        .await?;
        let status = response.status();
        if status.is_success() {
            let body = api::json_body(response, MAX_USER_BYTES).await?;
            let user: UserBody = serde_json::from_slice(&body).map_err(|e| {
                SourceError::Transient(format!("malformed user ({} bytes): {e}", body.len()))
            })?;
            return Ok(Some(UserInfo {
                name: user.data.name.filter(|n| !n.is_empty()),
                email: user.data.email.filter(|e| !e.is_empty()),
            }));
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let message = error_message(&read_prefix(response, MAX_ERROR_BYTES).await);
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => SourceError::RateLimited { retry_after },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::Unauthorized {
                status: status.as_u16(),
                message,
            },
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                SourceError::Transient(format!("HTTP {}: {message}", s.as_u16()))
            }
            s => SourceError::Rejected {
                status: s.as_u16(),
                message,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{AsanaFilters, StartAt, ASANA_REQUESTS_PER_MINUTE};
    use crate::enrich::EnrichConfig;
    use crate::retry::BackoffPolicy;
    use crate::simulator::{FaultUpdate, SimConfig, Simulator};

    const TOKEN: &str = "users-test-token";
    const DELETED: &str = "1200000000100004";

    async fn start() -> (Arc<Simulator>, AsanaUsers, Arc<crate::metrics::Metrics>) {
        let sim = Simulator::new(SimConfig {
            tokens: vec![TOKEN.into()],
            deleted_users: vec![DELETED.into()],
            backlog: 10,
            rate: 0.0,
            ..SimConfig::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/api/1.0", listener.local_addr().unwrap());
        tokio::spawn(Arc::clone(&sim).serve(listener, std::future::pending()));
        let config = AsanaConfig {
            id: "asana_users".into(),
            base_url,
            workspace_gid: "1200000000000000".into(),
            token: Secret::new(TOKEN),
            filters: AsanaFilters::default(),
            page_size: 100,
            start_at: StartAt::Lookback(Duration::from_secs(60)),
            poll_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            restart_margin: Duration::from_secs(60),
            parallel_slices: 1,
            backfill_threshold: Duration::from_secs(3600),
            retry: BackoffPolicy::default(),
            slow_retry_interval: Duration::from_secs(1),
            requests_per_minute: ASANA_REQUESTS_PER_MINUTE,
            enrich: EnrichConfig::default(),
        };
        let registry = crate::metrics::Metrics::new();
        let metrics = registry.source("asana_users", "asana");
        let client = AsanaClient::new(&config, metrics.clone()).unwrap();
        let users = AsanaUsers::new(&config, &client, metrics).unwrap();
        (sim, users, registry)
    }

    #[tokio::test]
    async fn users_are_found_missing_or_failing_by_status() {
        let (sim, users, _) = start().await;
        assert_eq!(
            users.user("1200000000100001").await.unwrap(),
            Some(UserInfo {
                name: Some("Greg Sanchez".into()),
                email: Some("greg.sanchez@example.com".into()),
            })
        );
        assert_eq!(users.user(DELETED).await.unwrap(), None);
        // An odd id stays one path segment.
        assert_eq!(users.user("../workspaces/1?x=1").await.unwrap(), None);
        assert!(!format!("{users:?}").contains(TOKEN));

        sim.update_faults(FaultUpdate {
            users_down: Some(true),
            ..FaultUpdate::default()
        })
        .unwrap();
        let err = users.user("1200000000100001").await.unwrap_err();
        assert!(
            matches!(err, SourceError::Transient(ref m) if m.starts_with("HTTP 503")),
            "{err}"
        );
        sim.update_faults(FaultUpdate {
            users_down: Some(false),
            rate_limit_next: Some(1),
            retry_after_secs: Some(7),
            ..FaultUpdate::default()
        })
        .unwrap();
        let err = users.user("1200000000100001").await.unwrap_err();
        assert!(
            matches!(err, SourceError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7)),
            "{err}"
        );
        sim.update_faults(FaultUpdate {
            revoke_token: Some(TOKEN.into()),
            ..FaultUpdate::default()
        })
        .unwrap();
        let err = users.user("1200000000100001").await.unwrap_err();
        assert!(
            matches!(err, SourceError::Unauthorized { status: 401, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn lookups_are_counted_and_take_from_the_budget() {
        let (_sim, users, registry) = start().await;
        assert_eq!(users.budget.delay(), Duration::ZERO);
        // The burst of a 1500/min budget is 75 requests.
        for _ in 0..75 {
            users.user("1200000000100001").await.unwrap();
        }
        assert!(users.budget.delay() > Duration::ZERO);
        users.user(DELETED).await.unwrap();
        let text = registry.encode();
        for line in [
            r#"auditrelay_source_requests_total{source="asana_users",kind="asana",status="200"} 75"#,
            r#"auditrelay_source_requests_total{source="asana_users",kind="asana",status="404"} 1"#,
        ] {
            assert!(text.contains(line), "{text}");
        }
    }
}
