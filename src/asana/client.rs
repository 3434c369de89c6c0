//! HTTP requests to the Asana Audit Log API, and what their answers mean.
//!
//! `GET {base}/workspaces/{gid}/audit_log_events` with a service account's
//! Bearer token. This module only builds requests and classifies answers
//! into pages or [`SourceError`]s; the stream logic lives in `stream.rs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api;
use crate::budget::RateBudget;
use crate::config::{AsanaConfig, AsanaFilters};
use crate::metrics::SourceMetrics;
use crate::retry::parse_retry_after;
use crate::secret::Secret;
use crate::source::SourceError;

/// Where a request starts. An offset is bound to the parameters of the
/// stream it came from, so every request of a stream repeats its
/// `start_at` (as `next_page.path` does), with the offset once there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The stream's start (inclusive).
    pub start_at: DateTime<Utc>,
    /// Where a slice of a backlog ends (exclusive); `None` for the live
    /// stream. Bound to the offset like `start_at`.
    pub end_at: Option<DateTime<Utc>>,
    /// The latest `next_page.offset` of the stream, if any.
    pub offset: Option<String>,
}

/// One page of the stream.
#[derive(Debug)]
pub struct Page {
    /// The records, oldest first, as received.
    pub records: Vec<Box<RawValue>>,
    /// `next_page.offset`; `None` when nothing has matched the filters yet.
    pub next_offset: Option<String>,
}

/// A client for one workspace's audit log. Each request first takes a
/// token of the source's [`RateBudget`].
#[derive(Debug, Clone)]
pub struct AsanaClient {
    http: reqwest::Client,
    url: String,
    token: Secret,
    filters: AsanaFilters,
    page_size: u8,
    metrics: SourceMetrics,
    /// Shared with the source's user lookups.
    budget: Arc<RateBudget>,
}

impl AsanaClient {
    /// Builds a client from a source's configuration.
    pub fn new(config: &AsanaConfig, metrics: SourceMetrics) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("auditrelay/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10).min(config.request_timeout))
            .timeout(config.request_timeout)
            .build()?;
        Ok(Self {
            http,
            url: format!(
                "{}/workspaces/{}/audit_log_events",
                config.base_url.trim_end_matches('/'),
                config.workspace_gid
            ),
            token: config.token.clone(),
            filters: config.filters.clone(),
            page_size: config.page_size,
            metrics,
            budget: Arc::new(RateBudget::per_minute(config.requests_per_minute)),
        })
    }

    /// The source's request budget: every request takes a token of it.
    pub fn budget(&self) -> &Arc<RateBudget> {
        &self.budget
    }

    /// The HTTP client (timeouts, user agent), for the source's other
    /// requests.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The page size every request asks for.
    pub fn page_size(&self) -> usize {
        usize::from(self.page_size)
    }

    /// Fetches one page.
    pub async fn fetch(&self, position: &Position) -> Result<Page, SourceError> {
        let mut query: Vec<(&str, String)> = vec![(
            "start_at",
            position
                .start_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        )];
        if let Some(end_at) = position.end_at {
            query.push((
                "end_at",
                end_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            ));
        }
        for (name, value) in self.filters.pairs() {
            query.push((name, value.to_string()));
        }
        query.push(("limit", self.page_size.to_string()));
        if let Some(offset) = &position.offset {
            query.push(("offset", offset.clone()));
        }
        let with_offset = position.offset.is_some();
        let auth = bearer(&self.token)?;
        self.budget.acquire().await;
        let response = api::send(
            self.http
                .get(&self.url)
                .query(&query)
                .header(AUTHORIZATION, auth)
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
        // Only the start of an error body is ever shown.
        let body = api::read_prefix(response, api::MAX_ERROR_BYTES).await;
        let message = error_message(&body);
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => SourceError::RateLimited { retry_after },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::Unauthorized {
                status: status.as_u16(),
                message,
            },
            StatusCode::BAD_REQUEST if with_offset => SourceError::CursorExpired {
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

/// The `Authorization` header of a token, marked sensitive. The one place
/// an Asana token is exposed.
pub(crate) fn bearer(token: &Secret) -> Result<HeaderValue, SourceError> {
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
        SourceError::Rejected {
            status: 0,
            message: "the token contains characters not allowed in an HTTP header".into(),
        }
    })?;
    // Keeps the header out of hyper's and reqwest's debug output.
    auth.set_sensitive(true);
    Ok(auth)
}

/// A page of 100 events is a few hundred KiB; anything far beyond is not
/// an audit log page, and reading it whole could exhaust memory.
const MAX_PAGE_BYTES: usize = 32 << 20;

#[derive(Deserialize)]
struct PageBody {
    data: Vec<Box<RawValue>>,
    next_page: Option<NextPage>,
}

#[derive(Deserialize)]
struct NextPage {
    offset: Option<String>,
}

/// Parses a page body. A body that does not parse as a whole (truncated, an
/// HTML error page) is transient: the same request is made again.
fn parse_page(body: &[u8]) -> Result<Page, SourceError> {
    let page: PageBody = serde_json::from_slice(body).map_err(|e| {
        SourceError::Transient(format!("malformed page ({} bytes): {e}", body.len()))
    })?;
    Ok(Page {
        records: page.data,
        next_offset: page.next_page.and_then(|n| n.offset),
    })
}

/// The first `errors[].message` of an Asana error body, or a short excerpt.
pub(crate) fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        message: Option<String>,
    }
    let text = match serde_json::from_slice::<Errors>(body) {
        Ok(e) => e
            .errors
            .into_iter()
            .find_map(|e| e.message)
            .unwrap_or_else(|| "no message".to_string()),
        Err(_) if body.is_empty() => "empty body".to_string(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let mut text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
    if text.is_empty() {
        text.push_str("no message");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_and_bad_bodies_are_transient() {
        let page = parse_page(br#"{"data":[{"gid":"1"},{"gid":"2"}],"next_page":{"offset":"abc","path":"/x","uri":"http://x"}}"#).unwrap();
        assert_eq!(page.records.len(), 2);
        assert_eq!(page.next_offset.as_deref(), Some("abc"));
        let page = parse_page(br#"{"data":[],"next_page":null}"#).unwrap();
        assert!(page.records.is_empty() && page.next_offset.is_none());
        for body in [&br#"{"data":[{"gid":"1"}"#[..], b"<html>502</html>", b""] {
            let err = parse_page(body).unwrap_err();
            assert!(
                matches!(err, SourceError::Transient(ref m) if m.contains("malformed page")),
                "{err}"
            );
        }
    }

    #[test]
    fn error_messages_are_extracted_and_bounded() {
        assert_eq!(
            error_message(br#"{"errors":[{"message":"Not Authorized"}]}"#),
            "Not Authorized"
        );
        assert_eq!(error_message(b""), "empty body");
        assert_eq!(error_message(&[b'x'; 1000]).len(), 300);
        assert_eq!(error_message(b"line\nbreak"), "linebreak");
    }
}
