//! Requests to the Audit API: one page of `GET /events` over a pinned
//! window, the answer classified for the stream's loop.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::header::{HeaderValue, ACCEPT, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::auth::{Auth, LOGIN_REFUSED};
use crate::api::{self, read_prefix, MAX_ERROR_BYTES};
use crate::budget::RateBudget;
use crate::config::AnaplanConfig;
use crate::metrics::SourceMetrics;
use crate::retry::parse_retry_after;
use crate::source::SourceError;

/// Pages of 10,000 events are a few MiB; far beyond is not a page.
const MAX_PAGE_BYTES: usize = 64 << 20;

/// The status Anaplan answers (with HTTP 401) when the login lacks the
/// Tenant Auditor role or audit is off for the tenant.
pub const ROLE_MISSING: &str = "FAILURE_UNAUTHORIZED_USER_ACTION";

/// A closed window of event times (Unix ms), `dateFrom`..=`dateTo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

/// One page.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Box<RawValue>>,
    /// `meta.paging.totalSize` (absent: the page is the whole result).
    pub total: Option<u64>,
}

/// The Audit API for one login.
#[derive(Debug)]
pub struct AnaplanClient {
    http: reqwest::Client,
    events_url: String,
    auth: Arc<Auth>,
    event_type: String,
    page_size: u32,
    metrics: SourceMetrics,
    budget: Arc<RateBudget>,
}

impl AnaplanClient {
    pub fn new(
        config: &AnaplanConfig,
        metrics: SourceMetrics,
    ) -> Result<(Self, Arc<Auth>), reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("auditrelay/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10).min(config.request_timeout))
            .timeout(config.request_timeout)
            .build()?;
        let auth = Arc::new(Auth::new(config, http.clone()));
        Ok((
            Self {
                http,
                events_url: format!("{}/events", config.audit_url),
                auth: Arc::clone(&auth),
                event_type: config.event_type.clone(),
                page_size: config.page_size,
                metrics,
                budget: Arc::new(RateBudget::per_minute(config.requests_per_minute)),
            },
            auth,
        ))
    }

    /// The source's request budget, shared with user lookups.
    pub fn budget(&self) -> &Arc<RateBudget> {
        &self.budget
    }

    /// The HTTP client (timeouts, user agent), shared with user lookups.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The `limit` of every request.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Fetches the page at `offset` of `window`. A 401 other than the
    /// missing role logs in again and replays the request, once. Safe to
    /// call concurrently: of several requests rejected with the same token,
    /// only the first drops it, so they share one new login.
    pub async fn fetch(&self, window: Window, offset: u64) -> Result<Page, SourceError> {
        let header = self.auth.header().await?;
        match self.fetch_with(&header, window, offset).await {
            Err(SourceError::Unauthorized {
                status: 401,
                message,
            }) if !message.contains(ROLE_MISSING) && !message.contains(LOGIN_REFUSED) => {
                // Not after the missing role, and not after the token
                // service refused the login itself: both would repeat.
                tracing::info!(error = %message, "anaplan rejected the token; logging in again");
                self.auth.invalidate_if_current(&header).await;
                let header = self.auth.header().await?;
                self.fetch_with(&header, window, offset).await
            }
            other => other,
        }
    }

    /// One request with `header`, after a token of the budget.
    async fn fetch_with(
        &self,
        header: &HeaderValue,
        window: Window,
        offset: u64,
    ) -> Result<Page, SourceError> {
        self.budget.acquire().await;
        let query = [
            ("type", self.event_type.clone()),
            ("dateFrom", window.from.to_string()),
            ("dateTo", window.to.to_string()),
            ("limit", self.page_size.to_string()),
            ("offset", offset.to_string()),
        ];
        let mut header = header.clone();
        header.set_sensitive(true);
        let response = api::send(
            self.http
                .get(&self.events_url)
                .query(&query)
                .header(reqwest::header::AUTHORIZATION, header)
                .header(ACCEPT, "application/json"),
            &self.metrics,
        )
        .await?;
        let status = response.status();
        if status.is_success() {
            let body = api::json_body(response, MAX_PAGE_BYTES).await?;
            return parse_page(&body);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let body = read_prefix(response, MAX_ERROR_BYTES).await;
        let (service_status, message) = error_message(&body);
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => SourceError::RateLimited { retry_after },
            StatusCode::UNAUTHORIZED if service_status == ROLE_MISSING => {
                SourceError::Unauthorized {
                    status: 401,
                    message: format!(
                        "{ROLE_MISSING}: the login lacks the Tenant Auditor role, or audit is not enabled for the tenant; a tenant administrator must assign the role (Administration > Users) and enable audit ({message})"
                    ),
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::Unauthorized {
                status: status.as_u16(),
                message: format!("{service_status} {message}").trim().to_string(),
            },
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                SourceError::Transient(format!("HTTP {}: {message}", s.as_u16()))
            }
            s => SourceError::Rejected {
                status: s.as_u16(),
                message: format!("{service_status} {message}").trim().to_string(),
            },
        })
    }
}

#[derive(Deserialize)]
struct PageBody {
    response: Option<Vec<Box<RawValue>>>,
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    #[serde(rename = "totalSize")]
    total_size: Option<u64>,
}

/// A page that does not parse as a whole (truncated, an HTML error page)
/// is transient: the same request is made again, never skipped.
fn parse_page(body: &[u8]) -> Result<Page, SourceError> {
    let page: PageBody = serde_json::from_slice(body).map_err(|e| {
        SourceError::Transient(format!("malformed page ({} bytes): {e}", body.len()))
    })?;
    let Some(records) = page.response else {
        return Err(SourceError::Transient(format!(
            "page without a `response` array ({} bytes)",
            body.len()
        )));
    };
    Ok(Page {
        records,
        total: page.meta.and_then(|m| m.paging).and_then(|p| p.total_size),
    })
}

/// `status` and `statusMessage` of an Anaplan error body (either shape:
/// `{"status": "...", "statusMessage": "..."}` or `{"status": {"code",
/// "message"}}`), or a short excerpt.
fn error_message(body: &[u8]) -> (String, String) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let status = json["status"].as_str().unwrap_or_default().to_string();
    let message = json["statusMessage"]
        .as_str()
        .or_else(|| json["status"]["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let message: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    (status, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_with_and_without_meta_and_ids_stay_exact() {
        let page = parse_page(br#"{"meta":{"paging":{"currentPageSize":1,"totalSize":7,"offSet":0}},"response":[{"id":9007199254740993,"eventTypeId":"USR-8"}]}"#).unwrap();
        assert_eq!(page.total, Some(7));
        assert_eq!(
            page.records[0].get(),
            r#"{"id":9007199254740993,"eventTypeId":"USR-8"}"#
        );
        let page = parse_page(br#"{"response":[]}"#).unwrap();
        assert_eq!(page.total, None);
        assert!(matches!(
            parse_page(b"<html>"),
            Err(SourceError::Transient(_))
        ));
        assert!(matches!(
            parse_page(br#"{"meta":{}}"#),
            Err(SourceError::Transient(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_rejected_together_share_one_new_login() {
        use crate::simulator::anaplan::{AnaplanEndpoint, AnaplanFaultUpdate, AnaplanSimConfig};
        let (sim, url, stop) = super::super::testing::serve(AnaplanSimConfig {
            backlog: 500,
            rate: 0.0,
            max_live: Some(0),
            late_share: 0.0,
            epoch: Utc::now() - chrono::Duration::minutes(1),
            ..AnaplanSimConfig::default()
        })
        .await;
        let config = super::super::testing::config(&url);
        let (client, _auth) =
            AnaplanClient::new(&config, SourceMetrics::detached("ap", "anaplan")).unwrap();
        let now = Utc::now().timestamp_millis();
        let window = Window {
            from: now - 3 * 3600 * 1000,
            to: now,
        };
        assert_eq!(client.fetch(window, 0).await.unwrap().total, Some(500));
        assert_eq!(sim.calls(AnaplanEndpoint::TokenAuthenticate), 1);
        // The token is revoked while five requests use it: each gets a 401.
        // The budget holds them back a moment after they took the token,
        // so that none starts after another's new login.
        sim.update_faults(AnaplanFaultUpdate {
            revoke_all_tokens: true,
            ..AnaplanFaultUpdate::default()
        })
        .unwrap();
        client
            .budget()
            .penalize(std::time::Duration::from_millis(500));
        let pages = futures::future::join_all((0..5).map(|i| client.fetch(window, i * 100))).await;
        for page in pages {
            assert_eq!(page.unwrap().records.len(), 100);
        }
        assert_eq!(
            sim.calls(AnaplanEndpoint::AuditEvents),
            11,
            "the first request and five rejected and replayed ones"
        );
        assert_eq!(
            sim.calls(AnaplanEndpoint::TokenAuthenticate),
            2,
            "one login for all requests rejected with the same token"
        );
        stop.cancel();
    }

    #[test]
    fn error_bodies_of_both_shapes_are_read() {
        let (status, message) = error_message(
            br#"{"status":"FAILURE_UNAUTHORIZED_USER_ACTION","statusMessage":"User is not authorized"}"#,
        );
        assert_eq!(
            (status.as_str(), message.as_str()),
            (ROLE_MISSING, "User is not authorized")
        );
        let (status, message) =
            error_message(br#"{"status":{"code":404,"message":"User not found"}}"#);
        assert_eq!((status.as_str(), message.as_str()), ("", "User not found"));
    }
}
