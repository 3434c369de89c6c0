//! Anaplan's users (Integration API v2), for enrichment:
//! `GET /2/0/users` (the whole tenant, paged by `limit`/`offset`, walked
//! once per cache TTL) and `GET /2/0/users/{id}` (an id the list lacks).
//!
//! The paging block differs from the Audit API's: `meta.paging` has
//! `currentPageSize`, `offset` (lowercase), `totalSize` and optional
//! `next`/`previous` URLs (audit-apis.md §1.12). Deleted users and ids
//! outside the tenant give 404; `INTERNAL_*` ids (system processes) are
//! never users and are not asked for.
//!
//! Authentication is someone else's job: requests carry whatever
//! [`AuthHeader`] gives (`AnaplanAuthToken …`), and a 401 is reported back
//! through [`AuthHeader::rejected`] before one retry with a fresh header.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::api::{self, read_prefix, MAX_ERROR_BYTES};
use crate::budget::RateBudget;
use crate::enrich::{UserDirectory, UserInfo};
use crate::metrics::SourceMetrics;
use crate::retry::parse_retry_after;
use crate::source::SourceError;

/// The API's own default and the SDK's page size.
pub const DEFAULT_PAGE_SIZE: u32 = 5000;
/// A page of 5000 users is about 1.5 MB.
const MAX_PAGE_BYTES: usize = 32 << 20;
/// A list that has not ended after this many pages is a broken server.
const MAX_PAGES: usize = 10_000;

/// The current `Authorization` header of an Anaplan login. Implemented by
/// the Anaplan auth code (basic or certificate login, refresh before
/// expiry).
#[async_trait]
pub trait AuthHeader: Send + Sync + Debug {
    /// `AnaplanAuthToken <token>`, logging in first if needed.
    async fn header(&self) -> Result<HeaderValue, SourceError>;

    /// A request carrying `header` got 401: the token expired or was
    /// revoked, so the next [`header`](Self::header) should log in again.
    /// Default: nothing.
    async fn rejected(&self, _header: &HeaderValue) {}
}

/// A tenant's users.
#[derive(Debug, Clone)]
pub struct AnaplanUsers {
    http: reqwest::Client,
    base: reqwest::Url,
    auth: Arc<dyn AuthHeader>,
    metrics: SourceMetrics,
    budget: Arc<RateBudget>,
    page_size: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserJson {
    id: Option<String>,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
}

impl UserJson {
    fn info(&self) -> UserInfo {
        let name: Vec<&str> = [&self.first_name, &self.last_name]
            .into_iter()
            .filter_map(|part| part.as_deref().map(str::trim))
            .filter(|part| !part.is_empty())
            .collect();
        UserInfo {
            name: (!name.is_empty()).then(|| name.join(" ")),
            email: self.email.clone().filter(|e| !e.trim().is_empty()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct OneUser {
    user: UserJson,
}

#[derive(Debug, Deserialize)]
struct UsersPage {
    #[serde(default)]
    users: Vec<UserJson>,
    meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    paging: Option<Paging>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Paging {
    total_size: Option<u64>,
    next: Option<String>,
}

impl AnaplanUsers {
    /// Users of the tenant behind `auth`, at `base_url` (the Integration
    /// API's origin, `https://api.anaplan.com`; `/2/0/users…` is appended).
    /// Requests take tokens of `budget` and are counted in `metrics`.
    pub fn new(
        base_url: &str,
        http: reqwest::Client,
        auth: Arc<dyn AuthHeader>,
        metrics: SourceMetrics,
        budget: Arc<RateBudget>,
    ) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(base_url)?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https") && !base.cannot_be_a_base(),
            "{base_url} is not an http(s) base URL"
        );
        Ok(Self {
            http,
            base,
            auth,
            metrics,
            budget,
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// Users per page of the list walk (at least 1).
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// `{base}/2/0/users[/{id}]`, the id percent-encoded as one segment.
    fn url(&self, id: Option<&str>) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["2", "0", "users"]);
            if let Some(id) = id {
                path.push(id);
            }
        }
        url
    }

    /// A GET: the body of a 2xx JSON answer, `None` for 404, or the error.
    /// A 401 is retried once with a fresh header.
    async fn get(&self, url: reqwest::Url, limit: usize) -> Result<Option<Vec<u8>>, SourceError> {
        let mut retried = false;
        loop {
            let header = self.auth.header().await?;
            let mut sent = header.clone();
            sent.set_sensitive(true);
            self.budget.acquire().await;
            let response = api::send(
                self.http
                    .get(url.clone())
                    .header(AUTHORIZATION, sent)
                    .header(ACCEPT, "application/json"),
                &self.metrics,
            )
            .await?;
            let status = response.status();
            if status.is_success() {
                return api::json_body(response, limit).await.map(Some);
            }
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if status == StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                self.auth.rejected(&header).await;
                continue;
            }
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, Utc::now()));
            let message = anaplan_message(&read_prefix(response, MAX_ERROR_BYTES).await);
            return Err(match status {
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
            });
        }
    }

    /// Every user of the tenant, page by page.
    async fn walk(&self) -> Result<Vec<(String, UserInfo)>, SourceError> {
        let mut users = Vec::new();
        let mut offset: u64 = 0;
        for _ in 0..MAX_PAGES {
            let mut url = self.url(None);
            url.query_pairs_mut()
                .append_pair("limit", &self.page_size.to_string())
                .append_pair("offset", &offset.to_string());
            let Some(body) = self.get(url, MAX_PAGE_BYTES).await? else {
                return Err(SourceError::Rejected {
                    status: 404,
                    message: "the users list is not there (check the API base URL)".into(),
                });
            };
            let page: UsersPage = serde_json::from_slice(&body).map_err(|e| {
                SourceError::Transient(format!("malformed users page ({} bytes): {e}", body.len()))
            })?;
            let count = page.users.len() as u64;
            users.extend(page.users.iter().filter_map(|user| {
                let id = user
                    .id
                    .as_deref()
                    .map(str::trim)
                    .filter(|id| !id.is_empty())?;
                Some((id.to_string(), user.info()))
            }));
            offset += count;
            let paging = page.meta.and_then(|meta| meta.paging);
            let done = match paging {
                _ if count == 0 => true,
                Some(Paging {
                    total_size: Some(total),
                    ..
                }) => offset >= total,
                Some(Paging { next, .. }) => next.is_none(),
                // No paging block: everything fitted in one page.
                None => true,
            };
            if done {
                return Ok(users);
            }
        }
        Err(SourceError::Transient(format!(
            "the users list did not end after {MAX_PAGES} pages"
        )))
    }
}

#[async_trait]
impl UserDirectory for AnaplanUsers {
    async fn user(&self, id: &str) -> Result<Option<UserInfo>, SourceError> {
        let Some(body) = self.get(self.url(Some(id)), 1 << 20).await? else {
            return Ok(None);
        };
        let one: OneUser = serde_json::from_slice(&body).map_err(|e| {
            SourceError::Transient(format!("malformed user ({} bytes): {e}", body.len()))
        })?;
        Ok(Some(one.user.info()))
    }

    async fn all_users(&self) -> Option<Result<Vec<(String, UserInfo)>, SourceError>> {
        Some(self.walk().await)
    }

    fn is_never_a_user(&self, id: &str) -> bool {
        id.starts_with("INTERNAL_")
    }
}

/// The message of an Anaplan error body: `statusMessage` (auth and audit
/// shape), `status.message` (Integration API shape), or a short excerpt.
fn anaplan_message(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let text = parsed
        .as_ref()
        .and_then(|v| {
            v["statusMessage"]
                .as_str()
                .or_else(|| v["status"]["message"].as_str())
                .or_else(|| v["status"].as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| {
            if body.is_empty() {
                "empty body".to_string()
            } else {
                String::from_utf8_lossy(body).into_owned()
            }
        });
    let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
    if text.is_empty() {
        "no message".to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests;
