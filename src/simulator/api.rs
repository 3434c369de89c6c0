//! The Asana endpoint: `GET /api/1.0/workspaces/{workspace_gid}/audit_log_events`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng as _;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::events::{
    self, event_core, event_type_index, find_user, render_event, AuditLogEvent, SERVICE_ACCOUNT,
};
use super::faults::{roll, FaultState};
use super::limiter::Permit;
use super::offset::OffsetPayload;
use super::timeline::{Entry, BAD_RECORD_KEY_BASE};
use super::{lock, RequestRecord, Simulator, Workspace, REQUEST_LOG_CAPACITY};

const NOT_AUTHORIZED: &str = "Not Authorized";
const FORBIDDEN: &str = "Forbidden: audit log requires a service account token";
const RATE_LIMITED: &str = "You've made too many requests and hit a rate limit. Please retry after the given amount of time.";
const BAD_LIMIT: &str = "limit: Value must be between 1 and 100";
const BAD_OFFSET: &str = "offset: Your pagination token is invalid or has expired";
/// Message text assumed: Asana documents 404 for unknown objects, not the wording.
const USER_NOT_FOUND: &str = "user: Not Found";
const SERVER_ERROR_PHRASE: &str = "6 sad squid snuggle softly";
/// Maximum page size the API accepts.
const MAX_LIMIT: u32 = 100;
/// How far back a `duplicate_rate` fault looks for an already-served event to repeat.
const DUPLICATE_LOOKBACK: usize = 10_000;

/// `{"errors":[{"message": ...}]}` with the given status.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "errors": [{ "message": message }] }))).into_response()
}

/// A client error found while validating a request; rendered with [`error`].
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, &self.message)
    }
}

fn too_many_requests(retry_after_secs: u64) -> Response {
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// A 5xx (or other injected) failure; only 500 carries Asana's support `phrase`.
fn injected_failure(status: StatusCode) -> Response {
    let message = status.canonical_reason().unwrap_or("Error");
    let body = if status == StatusCode::INTERNAL_SERVER_ERROR {
        json!({ "errors": [{ "message": "Server Error", "phrase": SERVER_ERROR_PHRASE }] })
    } else {
        json!({ "errors": [{ "message": message }] })
    };
    (status, Json(body)).into_response()
}

/// Fallback for every other path, in Asana's error format.
pub(super) async fn not_found(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let arrived = Utc::now();
    let response = error(StatusCode::NOT_FOUND, "Not Found");
    sim.record_request(
        Endpoint::Other,
        arrived,
        bearer_token(&headers),
        &uri,
        &response,
    );
    response
}

pub(super) async fn audit_log_events(
    State(sim): State<Arc<Simulator>>,
    Path(workspace): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let arrived = Utc::now();
    let token = bearer_token(&headers);
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let response = match query {
        Ok(Query(params)) => sim.audit(&workspace, &params, token, host).await,
        Err(rejection) => error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    sim.record_request(Endpoint::AuditLogEvents, arrived, token, &uri, &response);
    response
}

/// `GET /api/1.0/users/{user_gid}`: a gid, an email or `me`. Same authentication, rate limits
/// and injected faults as the audit endpoint, plus `users_down` (503 for this endpoint only).
pub(super) async fn user(
    State(sim): State<Arc<Simulator>>,
    Path(user_gid): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let arrived = Utc::now();
    let token = bearer_token(&headers);
    let users_down = lock(&sim.faults).faults.users_down;
    let response = if users_down {
        debug!(user_gid, "users endpoint down (fault)");
        injected_failure(StatusCode::SERVICE_UNAVAILABLE)
    } else {
        match sim.admit(token).await {
            Ok(_permit) => sim.user_record(&user_gid),
            Err(response) => response,
        }
    };
    sim.record_request(Endpoint::Users, arrived, token, &uri, &response);
    response
}

/// Which API endpoint a request went to, as counted in `/_sim/stats` (`by_endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Endpoint {
    AuditLogEvents,
    Users,
    /// Unknown paths.
    Other,
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The last few characters of a token: enough to tell tokens apart in logs and records
/// without revealing them.
fn token_suffix(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    let keep = (chars.len() / 2).min(4);
    chars[chars.len() - keep..].iter().collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(super) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Filters of one request; an offset is only valid with exactly the same set.
#[derive(Debug, Default)]
struct Filters {
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    event_type: Option<String>,
    actor_type: Option<String>,
    actor_gid: Option<String>,
    resource_gid: Option<String>,
    /// The filter parameters as the client sent them, repeated in `next_page.path`.
    echo: Vec<(&'static str, String)>,
}

impl Filters {
    /// Fingerprint bound into offsets. Times are normalised, so equivalent spellings of the
    /// same instant are the same filter.
    fn fingerprint(&self) -> String {
        let canonical = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.start_ms,
            self.end_ms,
            self.event_type,
            self.actor_type,
            self.actor_gid,
            self.resource_gid
        );
        Sha256::digest(canonical.as_bytes())[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A validated request.
#[derive(Debug)]
struct PageRequest {
    filters: Filters,
    /// `None` when the client sent no `limit` (the default page size applies).
    limit: Option<u32>,
    offset: Option<String>,
}

fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{name}: Value is not a valid ISO 8601 date-time"),
            )
        })
}

fn parse_request(params: &[(String, String)]) -> Result<PageRequest, ApiError> {
    // The last occurrence of a repeated parameter wins; empty values count as absent.
    let get = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.clone())
    };
    let mut filters = Filters::default();
    for name in [
        "start_at",
        "end_at",
        "event_type",
        "actor_type",
        "actor_gid",
        "resource_gid",
    ] {
        if let Some(value) = get(name) {
            filters.echo.push((name, value));
        }
    }
    filters.start_ms = get("start_at")
        .map(|v| parse_time("start_at", &v))
        .transpose()?;
    filters.end_ms = get("end_at")
        .map(|v| parse_time("end_at", &v))
        .transpose()?;
    filters.event_type = get("event_type");
    filters.actor_type = get("actor_type");
    filters.actor_gid = get("actor_gid");
    filters.resource_gid = get("resource_gid");
    let limit = get("limit")
        .map(|value| match value.parse::<u32>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
            _ => Err(ApiError::new(StatusCode::BAD_REQUEST, BAD_LIMIT)),
        })
        .transpose()?;
    Ok(PageRequest {
        filters,
        limit,
        offset: get("offset"),
    })
}

/// Decides whether a stream entry matches a request.
struct Matcher<'a> {
    seed: u64,
    workspace: &'a Workspace,
    cutoff_ms: i64,
    filters: &'a Filters,
    /// `Some(None)`: the requested event type is unknown, so nothing matches.
    kind: Option<Option<u16>>,
    /// Parsed gid filters; `Some(None)` means non-numeric, which matches nothing.
    actor_gid: Option<Option<u64>>,
    resource_gid: Option<Option<u64>>,
}

impl<'a> Matcher<'a> {
    fn new(seed: u64, workspace: &'a Workspace, cutoff_ms: i64, filters: &'a Filters) -> Self {
        Self {
            seed,
            workspace,
            cutoff_ms,
            filters,
            kind: filters.event_type.as_deref().map(event_type_index),
            actor_gid: filters.actor_gid.as_deref().map(|g| g.parse().ok()),
            resource_gid: filters.resource_gid.as_deref().map(|g| g.parse().ok()),
        }
    }

    fn matches(&self, entry: &Entry) -> bool {
        let filters = self.filters;
        if entry.created_ms < self.cutoff_ms
            || filters
                .start_ms
                .is_some_and(|start| entry.created_ms < start)
            || filters.end_ms.is_some_and(|end| entry.created_ms >= end)
            || self.kind.is_some_and(|kind| kind != Some(entry.kind))
        {
            return false;
        }
        if filters.actor_type.is_none() && self.actor_gid.is_none() && self.resource_gid.is_none() {
            return true;
        }
        // Only now derive the actor and resource, which costs a few more hash rounds.
        let core = event_core(self.seed, &self.workspace.identity, entry.key);
        filters
            .actor_type
            .as_deref()
            .is_none_or(|t| core.actor.actor_type() == t)
            && self
                .actor_gid
                .is_none_or(|gid| gid.is_some() && gid == core.actor.gid())
            && self
                .resource_gid
                .is_none_or(|gid| gid == Some(core.resource_gid))
    }
}

impl Simulator {
    async fn audit(
        self: &Arc<Self>,
        workspace: &str,
        params: &[(String, String)],
        token: Option<&str>,
        host: &str,
    ) -> Response {
        let _permit = match self.admit(token).await {
            Ok(permit) => permit,
            Err(response) => return response,
        };
        let Some(workspace) = self.workspace(workspace) else {
            return error(StatusCode::NOT_FOUND, "workspace: Not Found");
        };
        match parse_request(params).and_then(|request| self.page(workspace, &request, host)) {
            Ok(body) => self.respond(body),
            Err(err) => err.into_response(),
        }
    }

    /// What every API request goes through before its endpoint's work: authentication, the
    /// rate limit, injected 429s, the concurrency cap, latency and injected server errors.
    /// The permit holds the request's in-flight slot; keep it until the response is built.
    async fn admit(self: &Arc<Self>, token: Option<&str>) -> Result<Permit, Response> {
        let arrived = Instant::now();
        if let Some(token) = token {
            if self.limiter.note_arrival(token, arrived) {
                warn!(
                    token_suffix = %token_suffix(token),
                    "request arrived before its retry-after elapsed"
                );
            }
        }
        let token = self.authorise(token).map_err(IntoResponse::into_response)?;
        if let Err(retry_after_secs) = self.limiter.admit(token, arrived) {
            debug!(token_suffix = %token_suffix(token), retry_after_secs, "rate limit exceeded");
            return Err(too_many_requests(retry_after_secs));
        }
        let (forced_limit, latency) = {
            let mut state = lock(&self.faults);
            let forced = FaultState::take(&mut state.faults.rate_limit_next);
            (
                forced.then_some(state.faults.retry_after_secs),
                state.faults.latency,
            )
        };
        if let Some(retry_after_secs) = forced_limit {
            let retry_after_secs = retry_after_secs.max(1);
            self.limiter.told_to_wait(token, arrived, retry_after_secs);
            debug!(retry_after_secs, "injected rate limit");
            return Err(too_many_requests(retry_after_secs));
        }
        let Some(permit) = self.limiter.acquire(token, arrived) else {
            debug!(token_suffix = %token_suffix(token), "concurrency limit exceeded");
            return Err(too_many_requests(1));
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(status) = self.injected_status() {
            debug!(status = status.as_u16(), "injected server error");
            return Err(injected_failure(status));
        }
        Ok(permit)
    }

    /// The body of `GET /users/{user_gid}`, or Asana's 404 for an unknown or deleted user.
    fn user_record(&self, user_gid: &str) -> Response {
        let user = if user_gid == "me" {
            Some(SERVICE_ACCOUNT)
        } else {
            find_user(user_gid).filter(|u| !self.deleted_users.contains(u.gid))
        };
        let Some(user) = user else {
            debug!(user_gid, "unknown or deleted user");
            return error(StatusCode::NOT_FOUND, USER_NOT_FOUND);
        };
        let body = json!({
            "data": {
                "gid": user.gid,
                "resource_type": "user",
                "name": user.name,
                "email": user.email,
            }
        });
        self.respond(serde_json::to_vec(&body).expect("user serialises"))
    }

    /// The authenticated service-account token, or the 401/403 response.
    fn authorise<'t>(&self, token: Option<&'t str>) -> Result<&'t str, ApiError> {
        let Some(token) = token else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, NOT_AUTHORIZED));
        };
        if lock(&self.faults).revoked.contains(token) {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, NOT_AUTHORIZED));
        }
        if self.tokens.contains(token) {
            Ok(token)
        } else if self.non_service_tokens.contains(token) {
            Err(ApiError::new(StatusCode::FORBIDDEN, FORBIDDEN))
        } else {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, NOT_AUTHORIZED))
        }
    }

    /// A status to fail this request with, if a `fail_next` or `error_rate` fault fires.
    fn injected_status(&self) -> Option<StatusCode> {
        let mut state = lock(&self.faults);
        if FaultState::take(&mut state.faults.fail_next) {
            return Some(
                StatusCode::from_u16(state.faults.fail_status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            );
        }
        roll(state.faults.error_rate).then(|| {
            let choices = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ];
            choices[rand::rng().random_range(0..choices.len())]
        })
    }

    /// Validates the offset: signed by us, for this workspace and filter set, and live.
    fn check_offset(
        &self,
        token: &str,
        workspace: &Workspace,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<OffsetPayload, ApiError> {
        let ttl_ms = i64::try_from(self.config.offset_ttl.as_millis()).unwrap_or(i64::MAX);
        let problem = match self.codec.decode(token) {
            None => "malformed or not signed by this simulator",
            Some(p) if p.workspace != workspace.identity.gid => "issued for another workspace",
            Some(p) if p.filters != fingerprint => "issued for other filters",
            Some(p) if !lock(&self.offsets).is_live(p.issued_ms, now_ms, ttl_ms) => "expired",
            Some(payload) => return Ok(payload),
        };
        debug!(workspace = %workspace.identity.gid, problem, "rejected offset");
        Err(ApiError::new(StatusCode::BAD_REQUEST, BAD_OFFSET))
    }

    /// Builds the JSON body of a page.
    fn page(
        &self,
        workspace: &Workspace,
        request: &PageRequest,
        host: &str,
    ) -> Result<Vec<u8>, ApiError> {
        let now_ms = self.now_ms();
        let fingerprint = request.filters.fingerprint();
        let offset = request
            .offset
            .as_deref()
            .map(|token| self.check_offset(token, workspace, &fingerprint, now_ms))
            .transpose()?;
        let (late, duplicate, bad_record) = {
            let mut state = lock(&self.faults);
            (
                roll(state.faults.late_rate),
                offset.is_some() && roll(state.faults.duplicate_rate),
                FaultState::take(&mut state.faults.bad_record_next),
            )
        };
        let limit = request.limit.unwrap_or(self.config.default_limit).max(1) as usize;
        let matcher = Matcher::new(
            self.config.seed,
            workspace,
            self.retention_cutoff_ms(now_ms),
            &request.filters,
        );

        let (entries, repeated, cursor) = {
            let mut log = lock(&workspace.log);
            self.materialise(workspace, &mut log, now_ms);
            if late {
                let created_ms = now_ms - rand::rng().random_range(60_000..=600_000);
                let entry = self.push_extra(workspace, &mut log, created_ms);
                lock(&self.counters).late_events += 1;
                debug!(
                    workspace = %workspace.identity.gid,
                    gid = workspace.gid_base + entry.key,
                    created_at = %events::format_millis(created_ms),
                    "appended late event"
                );
            }
            let start = offset.as_ref().map_or(0, |payload| {
                log.position_of(payload.cursor(), payload.process == self.process)
            });
            let (entries, end) = log.scan(start, limit, |e| matcher.matches(e));
            let repeated = duplicate
                .then(|| log.previous_match(start, DUPLICATE_LOOKBACK, |e| matcher.matches(e)))
                .flatten();
            (entries, repeated, log.cursor_at(end))
        };

        // Streaming rule: once something matched (or the client is following an offset),
        // always hand out a next page, even when it is empty.
        let next_page = (offset.is_some() || !entries.is_empty()).then(|| {
            let issued_ms = lock(&self.offsets).issue(now_ms);
            let token = self.codec.encode(&OffsetPayload {
                workspace: workspace.identity.gid.clone(),
                filters: fingerprint,
                timeline: cursor.timeline,
                extras: cursor.extras,
                process: self.process,
                issued_ms,
            });
            next_page_link(&workspace.identity.gid, request, token, host)
        });

        let render = |entry: &Entry| {
            render_event(
                self.config.seed,
                &workspace.identity,
                entry.key,
                workspace.gid_base + entry.key,
                entry.created_ms,
            )
        };
        let mut data: Vec<PageItem> = repeated
            .iter()
            .chain(&entries)
            .map(|entry| PageItem::Event(Box::new(render(entry))))
            .collect();
        let bad_records_served = {
            let mut counters = lock(&self.counters);
            counters.pages_served += 1;
            counters.events_served += entries.len() as u64;
            counters.duplicates_served += u64::from(repeated.is_some());
            counters.bad_records_served += u64::from(bad_record);
            counters.bad_records_served
        };
        if bad_record {
            // Extra, not part of the valid event set: no created_at, and an actor that is not
            // an object.
            let gid = workspace.gid_base + BAD_RECORD_KEY_BASE + bad_records_served;
            let malformed = json!({
                "gid": gid.to_string(),
                "event_type": "user_login_succeeded",
                "actor": "malformed actor",
            });
            data.insert(data.len() / 2, PageItem::Malformed(malformed));
        }
        debug!(
            workspace = %workspace.identity.gid,
            events = entries.len(),
            duplicate = repeated.is_some(),
            bad_record,
            has_next_page = next_page.is_some(),
            "served audit log page"
        );
        let body = PageBody { data, next_page };
        Ok(serde_json::to_vec(&body).expect("page serialises"))
    }

    /// A 200 with `body`, cut roughly in half if a truncation fault fires.
    fn respond(&self, mut body: Vec<u8>) -> Response {
        let truncate = {
            let mut state = lock(&self.faults);
            FaultState::take(&mut state.faults.truncate_next) || roll(state.faults.truncate_rate)
        };
        if truncate {
            // Every body ends with the closing brace, so dropping the second half always
            // leaves invalid JSON.
            body.truncate(body.len() / 2);
            lock(&self.counters).truncated_responses += 1;
            debug!(bytes = body.len(), "truncated response body");
        }
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    }

    pub(super) fn record_request(
        &self,
        endpoint: Endpoint,
        arrived: DateTime<Utc>,
        token: Option<&str>,
        uri: &Uri,
        response: &Response,
    ) {
        let status = response.status().as_u16();
        let record = RequestRecord {
            at: arrived.to_rfc3339_opts(SecondsFormat::Millis, true),
            token_suffix: token.map(token_suffix),
            path: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |pq| pq.as_str().to_string()),
            status,
            retry_after_secs: response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        };
        {
            let mut counters = lock(&self.counters);
            counters.total_requests += 1;
            *counters.by_status.entry(status).or_default() += 1;
            *counters
                .by_endpoint
                .entry(endpoint)
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
        let mut requests = lock(&self.requests);
        if requests.len() == REQUEST_LOG_CAPACITY {
            requests.pop_front();
        }
        requests.push_back(record);
    }
}

/// Response body of the audit endpoint.
#[derive(Debug, Serialize)]
struct PageBody {
    data: Vec<PageItem>,
    /// `null` until the filters have matched something (the streaming rule).
    next_page: Option<NextPage>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum PageItem {
    Event(Box<AuditLogEvent>),
    /// A deliberately broken record injected by the `bad_record_next` fault.
    Malformed(Value),
}

#[derive(Debug, Serialize)]
struct NextPage {
    offset: String,
    path: String,
    uri: String,
}

/// `next_page` for `token`. Like Asana's, the path repeats the request's filters (the offset
/// is only valid with them) and its `limit` (omitted if the client sent none, since the
/// default page size is not a valid `limit`).
fn next_page_link(workspace: &str, request: &PageRequest, token: String, host: &str) -> NextPage {
    let mut query: Vec<String> = request
        .filters
        .echo
        .iter()
        .map(|(name, value)| format!("{name}={}", percent_encode(value)))
        .collect();
    if let Some(limit) = request.limit {
        query.push(format!("limit={limit}"));
    }
    query.push(format!("offset={token}"));
    let path = format!(
        "/workspaces/{}/audit_log_events?{}",
        percent_encode(workspace),
        query.join("&")
    );
    NextPage {
        offset: token,
        uri: format!("http://{host}/api/1.0{path}"),
        path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn token_suffix_never_reveals_the_token() {
        assert_eq!(token_suffix("sim-token"), "oken");
        assert_eq!(token_suffix("abc"), "c");
        assert_eq!(token_suffix("a"), "");
    }

    #[test]
    fn filters_fingerprint_normalises_times() {
        let parse = |start: &str| {
            parse_request(&[("start_at".to_string(), start.to_string())])
                .unwrap()
                .filters
                .fingerprint()
        };
        assert_eq!(
            parse("2026-01-01T00:00:00Z"),
            parse("2026-01-01T01:00:00.000+01:00")
        );
        assert_ne!(parse("2026-01-01T00:00:00Z"), parse("2026-01-01T00:00:01Z"));
        assert_eq!(percent_encode("a+b:c"), "a%2Bb%3Ac");
    }
}
