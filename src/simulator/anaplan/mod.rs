//! A faithful fake of Anaplan's auth service, Audit API and Integration API users endpoints
//! (audit-apis.md Part 1 and §4.1), used by tests, the demo and `auditrelay simulate
//! --anaplan-listen`. One router serves all three; a client gets the same base URL for its
//! auth, audit and users settings.
//!
//! # Endpoints
//!
//! - Auth: `POST /token/authenticate` (basic or certificate auth, 201), `POST /token/refresh`
//!   (200, same token value, later expiry), `GET /token/validate`, `POST /token/logout` (204).
//! - Audit: `GET /audit/api/1/events` and `POST /audit/api/1/events/search`, with the Tenant
//!   Auditor role gate, the 30-day span rule and retention, `type` filters, `limit`/`offset`
//!   paging with `meta.paging`, and CEF for `Accept: text/plain`.
//! - Users: `GET /2/0/users` (paged, `sort`, `s`), `GET /2/0/users/me`, `GET /2/0/users/{id}`.
//!
//! Events are ordered by `(eventDate, id)` ascending. An event is visible once its
//! `createdDate` has passed on the simulated clock, so late-stored events appear inside windows
//! already read; inserted events shift the offsets of a client paging a window.
//!
//! # Admin endpoints (not part of Anaplan's APIs, not counted)
//!
//! - `GET /_sim/anaplan/stats`: requests by endpoint and status (`by_endpoint`), totals,
//!   pages and events served, inserted and drift events, tokens issued, distinct user ids
//!   looked up, visible events, and `GET /events` requests in flight now
//!   (`event_requests_in_flight`) and at most at once (`max_concurrent_event_requests`).
//! - `GET /_sim/anaplan/events[?dateFrom=&dateTo=]`: `{"ids": [...]}`, every visible event id
//!   in API order (exact JSON integers).
//! - `GET /_sim/anaplan/faults`, `POST /_sim/anaplan/faults`: the fault state; the POST body is
//!   an [`AnaplanFaultUpdate`] (clock advance, drift, inserted events, revocations, …).
//! - `GET /_sim/anaplan/requests?limit=N`: the last N requests (default 100).
//! - `GET /_sim/anaplan/users`: the whole directory, deleted users included.
//! - `GET /_sim/anaplan/ca.pem`: the simulator's CA certificate.
//! - `POST /_sim/anaplan/client-certificate` `{"email": …}`: a client certificate and key
//!   (PEM) the simulator trusts.

mod admin;
mod audit;
mod auth;
mod certs;
mod config;
mod directory;
mod events;
mod faults;
mod store;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use rand::Rng as _;
use serde::Serialize;
use serde_json::json;
use tracing::{debug, info};

pub use certs::ClientCertificate;
pub use config::{AnaplanSimArgs, AnaplanSimConfig, Credential};
pub use faults::{AnaplanFaultUpdate, AnaplanFaults};

use super::faults::roll;
use super::lock;
use auth::TokenStore;
use certs::CertAuthority;
use directory::Directory;
use events::Generator;
use store::{Entry, EventStore, Selection, Timeline, EXTRA_KEY_BASE, EXTRA_KEY_SPAN, ID_STRIDE};

/// An endpoint of the simulated APIs, as counted in the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnaplanEndpoint {
    /// `POST /token/authenticate`.
    TokenAuthenticate,
    /// `POST /token/refresh`.
    TokenRefresh,
    /// `GET /token/validate`.
    TokenValidate,
    /// `POST /token/logout`.
    TokenLogout,
    /// `GET /audit/api/1/events`.
    AuditEvents,
    /// `POST /audit/api/1/events/search`.
    AuditSearch,
    /// `GET /2/0/users`.
    UsersList,
    /// `GET /2/0/users/me`.
    UsersMe,
    /// `GET /2/0/users/{id}`.
    UsersGet,
    /// Any other path.
    Other,
}

/// Which API a request is for: decides the error body shape, the role gate and `users_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    /// Audit API: `{"status": "FAILURE_…", "statusMessage": …}` errors, Tenant Auditor only.
    Audit,
    /// Integration API: `{"status": {"code", "message"}}` errors.
    Users,
}

/// Why a run-time fault update was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnaplanFaultError {
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
    /// `revoke_auditor`/`grant_auditor` named an unknown login.
    #[error("unknown login {0:?}")]
    UnknownLogin(String),
}

/// Counters reported by `GET /_sim/anaplan/stats`.
#[derive(Debug, Default, Clone, Serialize)]
struct Counters {
    total_requests: u64,
    by_endpoint: BTreeMap<AnaplanEndpoint, BTreeMap<u16, u64>>,
    pages_served: u64,
    events_served: u64,
    tokens_issued: u64,
    inserted_events: u64,
    drift_events: u64,
    truncated_responses: u64,
    /// `GET /events` requests being answered now (latency included).
    event_requests_in_flight: u64,
    /// The most `GET /events` requests ever answered at the same time.
    max_concurrent_event_requests: u64,
}

/// One entry of the request log.
#[derive(Debug, Clone, Serialize)]
struct RequestRecord {
    /// Arrival, real UTC time with milliseconds.
    at: String,
    endpoint: AnaplanEndpoint,
    method_path: String,
    status: u16,
}

const REQUEST_LOG_CAPACITY: usize = 10_000;

/// A request in progress: what `finish` needs to record it, and the origin for absolute URLs.
struct Call {
    endpoint: AnaplanEndpoint,
    arrived: chrono::DateTime<Utc>,
    path: String,
    /// `http://host[:port]` as the client addressed us.
    base: String,
}

/// Token bucket of the tenant's API requests.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_ms: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute);
        Self {
            capacity,
            tokens: capacity,
            per_ms: capacity / 60_000.0,
            last: Instant::now(),
        }
    }

    /// Takes a token, or returns the whole seconds until one is available (at least 1).
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.per_ms <= 0.0 {
            return Err(60);
        }
        let wait_ms = (1.0 - self.tokens) / self.per_ms;
        Err(((wait_ms / 1000.0).ceil() as u64).max(1))
    }
}

/// The Anaplan simulator. Cheap to share via `Arc`; all state is behind short-lived locks
/// that are never held across an `.await`.
pub struct AnaplanSim {
    config: AnaplanSimConfig,
    generator: Generator,
    timeline: Timeline,
    directory: Directory,
    certs: CertAuthority,
    store: Mutex<EventStore>,
    tokens: Mutex<TokenStore>,
    /// Lowercase emails of the logins holding the Tenant Auditor role.
    auditors: Mutex<HashSet<String>>,
    faults: Mutex<AnaplanFaults>,
    bucket: Mutex<Bucket>,
    counters: Mutex<Counters>,
    looked_up_users: Mutex<HashSet<String>>,
    requests: Mutex<VecDeque<RequestRecord>>,
}

/// Shows the configuration (passwords redacted), not the live state.
impl std::fmt::Debug for AnaplanSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnaplanSim")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// `{"status": status, "statusMessage": message}`: the error shape of the auth service and
/// the Audit API.
fn status_error(code: StatusCode, status: &str, message: &str) -> Response {
    (
        code,
        Json(json!({ "status": status, "statusMessage": message })),
    )
        .into_response()
}

/// `{"status": {"code", "message"}}`: the error shape of the Integration API (assumed from
/// its success envelope).
fn integration_error(code: StatusCode, message: &str) -> Response {
    (
        code,
        Json(json!({ "status": { "code": code.as_u16(), "message": message } })),
    )
        .into_response()
}

/// Message of the 401 for a missing or non-`AnaplanAuthToken` header [A8].
const NO_TOKEN_HEADER: &str = "No valid token header found for the request";
/// Message of the 401 for an unknown, expired, revoked or logged-out token (assumed).
const INVALID_TOKEN: &str = "Invalid, expired or logged-out token";
/// Message of the role gate's 401 (the status is documented, the text assumed).
const NOT_AUDITOR: &str = "User is not authorized to perform this action";

impl AnaplanSim {
    /// A simulator for `config`.
    ///
    /// # Panics
    ///
    /// If the configuration is invalid (see [`AnaplanSimConfig::validate`]); use
    /// [`Self::try_new`] to get the error instead.
    pub fn new(config: AnaplanSimConfig) -> Arc<Self> {
        Self::try_new(config).unwrap_or_else(|error| panic!("anaplan simulator: {error}"))
    }

    /// A simulator for `config`, or why the configuration cannot be served.
    pub fn try_new(config: AnaplanSimConfig) -> Result<Arc<Self>, String> {
        config.validate()?;
        let certs = CertAuthority::new(&config.trusted_ca_pems)?;
        let logins: Vec<String> = config.credentials.iter().map(|c| c.email.clone()).collect();
        let epoch_ms = config.epoch.timestamp_millis();
        let directory = Directory::new(
            config.seed,
            config.users,
            config.deleted_users,
            &logins,
            epoch_ms,
        );
        let generator = Generator::new(
            config.seed,
            &config.tenant_id,
            config.unknown_code_share,
            config.late_share,
            u64::try_from(config.max_late.as_millis()).unwrap_or(u64::MAX),
            config.internal_share,
        );
        let timeline = Timeline {
            epoch_ms,
            backlog: config.backlog,
            span_ms: i64::try_from(config.backlog_span.as_millis()).unwrap_or(i64::MAX),
            rate: config.rate,
            max_live: config.max_live,
        };
        let auditors = config
            .credentials
            .iter()
            .filter(|c| c.tenant_auditor)
            .map(|c| c.email.to_lowercase())
            .collect();
        let first_extra_key = EXTRA_KEY_BASE + rand::rng().random_range(0..EXTRA_KEY_SPAN);
        Ok(Arc::new(Self {
            generator,
            timeline,
            directory,
            certs,
            store: Mutex::new(EventStore::new(first_extra_key)),
            tokens: Mutex::new(TokenStore::default()),
            auditors: Mutex::new(auditors),
            faults: Mutex::new(config.faults.clone()),
            bucket: Mutex::new(Bucket::new(config.rate_limit_per_minute)),
            counters: Mutex::new(Counters::default()),
            looked_up_users: Mutex::new(HashSet::new()),
            requests: Mutex::new(VecDeque::new()),
            config,
        }))
    }

    /// The Anaplan APIs and the `/_sim/anaplan/` admin endpoints, ready to serve.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/token/authenticate", post(auth::authenticate))
            .route("/token/refresh", post(auth::refresh))
            .route("/token/validate", get(auth::validate))
            .route("/token/logout", post(auth::logout))
            .route("/audit/api/1/events", get(audit::events))
            .route("/audit/api/1/events/search", post(audit::search))
            .route("/2/0/users", get(directory::list))
            .route("/2/0/users/me", get(directory::me))
            .route("/2/0/users/{id}", get(directory::get))
            .route("/_sim/anaplan/stats", get(admin::stats))
            .route("/_sim/anaplan/events", get(admin::events))
            .route(
                "/_sim/anaplan/faults",
                get(admin::faults).post(admin::update_faults),
            )
            .route("/_sim/anaplan/requests", get(admin::requests))
            .route("/_sim/anaplan/users", get(admin::users))
            .route("/_sim/anaplan/ca.pem", get(admin::ca))
            .route(
                "/_sim/anaplan/client-certificate",
                post(admin::client_certificate),
            )
            .fallback(not_found)
            .with_state(Arc::clone(self))
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        info!(
            %addr,
            backlog = self.config.backlog,
            rate = self.config.rate,
            seed = self.config.seed,
            epoch = %self.config.epoch,
            "anaplan simulator listening"
        );
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        info!(%addr, "anaplan simulator stopped");
        Ok(())
    }

    /// Ids of every visible event (stored, within retention), in API order.
    pub fn visible_ids(&self) -> Vec<u64> {
        self.visible_ids_between(i64::MIN, i64::MAX)
    }

    /// Ids of the visible events with `from_ms <= eventDate <= to_ms`, in API order.
    pub fn visible_ids_between(&self, from_ms: i64, to_ms: i64) -> Vec<u64> {
        self.select(Selection {
            from_ms,
            to_ms,
            prefix: None,
        })
        .iter()
        .map(|e| e.id)
        .collect()
    }

    /// The current fault settings.
    pub fn faults(&self) -> AnaplanFaults {
        lock(&self.faults).clone()
    }

    /// Applies a run-time fault change (the same as `POST /_sim/anaplan/faults`).
    pub fn update_faults(
        &self,
        update: AnaplanFaultUpdate,
    ) -> Result<AnaplanFaults, AnaplanFaultError> {
        let faults = {
            let mut faults = lock(&self.faults);
            let next = update.apply_to(&faults);
            next.validate().map_err(AnaplanFaultError::Invalid)?;
            for email in [&update.revoke_auditor, &update.grant_auditor]
                .into_iter()
                .flatten()
            {
                if self.login_index(email).is_none() {
                    return Err(AnaplanFaultError::UnknownLogin(email.clone()));
                }
            }
            *faults = next;
            faults.clone()
        };
        {
            let mut auditors = lock(&self.auditors);
            if let Some(email) = &update.revoke_auditor {
                auditors.remove(&email.to_lowercase());
            }
            if let Some(email) = &update.grant_auditor {
                auditors.insert(email.to_lowercase());
            }
        }
        {
            let mut tokens = lock(&self.tokens);
            if let Some(token) = &update.revoke_token {
                tokens.revoke(token);
            }
            if update.revoke_all_tokens {
                tokens.revoke_all();
            }
        }
        if let Some(count) = update.insert_events {
            let age_ms = update
                .insert_event_age_secs
                .unwrap_or(0)
                .saturating_mul(1000);
            let now_ms = self.now_ms();
            let event_ms = now_ms.saturating_sub(i64::try_from(age_ms).unwrap_or(i64::MAX));
            self.insert_events(
                count,
                |i| {
                    event_ms
                        .saturating_add(i64::try_from(i).unwrap_or(i64::MAX))
                        .min(now_ms)
                },
                None,
            );
            lock(&self.counters).inserted_events += count;
        }
        info!(?update, "anaplan simulator faults updated");
        Ok(faults)
    }

    /// The PEM of the CA whose client certificates certificate auth accepts.
    pub fn ca_certificate_pem(&self) -> &str {
        self.certs.ca_pem()
    }

    /// Mints a client certificate (RSA-2048, PKCS #8 key) for `email`, trusted by this
    /// simulator. A login works with it if `email` is a configured credential. Takes some
    /// tens of milliseconds (RSA key generation).
    pub fn mint_client_certificate(&self, email: &str) -> Result<ClientCertificate, String> {
        self.certs.mint(email).map_err(|e| e.to_string())
    }

    /// Writes `ca.pem`, and `client.pem` and `client.key` (mode 0600) for a fresh client
    /// certificate of `email`, into `dir` (created if missing).
    pub fn write_client_files(&self, dir: &std::path::Path, email: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let cert = self
            .mint_client_certificate(email)
            .map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), self.ca_certificate_pem())?;
        std::fs::write(dir.join("client.pem"), cert.certificate_pem())?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("client.key"))?
            .write_all(cert.private_key_pem().as_bytes())
    }

    /// The first configured login (the default auditor).
    pub fn default_login(&self) -> &str {
        &self.config.credentials[0].email
    }

    /// How many requests reached `endpoint` (any status).
    pub fn calls(&self, endpoint: AnaplanEndpoint) -> u64 {
        lock(&self.counters)
            .by_endpoint
            .get(&endpoint)
            .map_or(0, |by_status| by_status.values().sum())
    }

    /// How many distinct ids `GET /2/0/users/{id}` was asked for.
    pub fn distinct_user_lookups(&self) -> usize {
        lock(&self.looked_up_users).len()
    }

    /// The most `GET /events` requests answered at the same time so far (a client paging in
    /// parallel shows more than 1).
    pub fn max_concurrent_event_requests(&self) -> u64 {
        lock(&self.counters).max_concurrent_event_requests
    }

    /// Counts a `GET /events` request in flight until the guard is dropped (answered, or
    /// abandoned by the client).
    fn event_request_in_flight(&self) -> InFlight<'_> {
        let mut counters = lock(&self.counters);
        counters.event_requests_in_flight += 1;
        counters.max_concurrent_event_requests = counters
            .max_concurrent_event_requests
            .max(counters.event_requests_in_flight);
        InFlight(self)
    }

    /// Simulated time in Unix milliseconds: real UTC time plus the configured advance.
    pub fn now_ms(&self) -> i64 {
        let advance_secs = lock(&self.faults).clock_advance_secs;
        Utc::now()
            .timestamp_millis()
            .saturating_add(advance_secs.saturating_mul(1000))
    }

    fn retention_cutoff_ms(&self, now_ms: i64) -> i64 {
        let retention_ms = i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(retention_ms)
    }

    fn login_index(&self, email: &str) -> Option<usize> {
        self.config
            .credentials
            .iter()
            .position(|c| c.email.eq_ignore_ascii_case(email))
    }

    fn id_of(&self, key: u64) -> u64 {
        let jitter = super::events::mix64(self.config.seed ^ key) % ID_STRIDE;
        self.config.id_base + key * ID_STRIDE + jitter
    }

    /// The store brought up to `now_ms`.
    fn current_store(&self, now_ms: i64) -> std::sync::MutexGuard<'_, EventStore> {
        let mut store = lock(&self.store);
        store.materialise(
            &self.timeline,
            now_ms,
            self.retention_cutoff_ms(now_ms),
            |index, event_ms| {
                let head = self.generator.head(index);
                Entry {
                    key: index,
                    id: self.id_of(index),
                    event_ms,
                    created_ms: event_ms.saturating_add(head.delay_ms),
                    code: head.code,
                }
            },
        );
        store
    }

    /// Visible events matching `selection`, in API order.
    fn select(&self, selection: Selection<'_>) -> Vec<Entry> {
        let now_ms = self.now_ms();
        let store = self.current_store(now_ms);
        store.select(
            selection,
            now_ms,
            self.retention_cutoff_ms(now_ms),
            |code| events::code(code).id,
        )
    }

    /// Stores `count` new events, created now, the `i`-th happening at `event_ms(i)`. With a
    /// `prefix`, codes outside it are replaced by the first code within it, so that a filtered
    /// query sees every inserted event.
    fn insert_events(
        &self,
        count: u64,
        event_ms: impl Fn(u64) -> i64,
        prefix: Option<&str>,
    ) -> Vec<Entry> {
        let now_ms = self.now_ms();
        let replacement = prefix.and_then(events::first_code_with_prefix);
        let mut store = self.current_store(now_ms);
        (0..count)
            .map(|i| {
                store.push_extra(|key| {
                    let code = self.generator.head(key).code;
                    let code = match (prefix, replacement) {
                        (Some(prefix), Some(replacement))
                            if !events::code(code).id.starts_with(prefix) =>
                        {
                            replacement
                        }
                        _ => code,
                    };
                    Entry {
                        key,
                        id: self.id_of(key),
                        event_ms: event_ms(i),
                        created_ms: now_ms,
                        code,
                    }
                })
            })
            .collect()
    }

    fn note_user_lookup(&self, id: &str) {
        let mut users = lock(&self.looked_up_users);
        if !users.contains(id) {
            users.insert(id.to_string());
        }
    }

    /// Starts handling a request.
    fn begin(&self, endpoint: AnaplanEndpoint, headers: &HeaderMap, uri: &Uri) -> Call {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        Call {
            endpoint,
            arrived: Utc::now(),
            path: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |pq| pq.as_str().to_string()),
            base: format!("http://{host}"),
        }
    }

    /// Records a finished request and hands its response back.
    fn finish(&self, call: Call, response: Response) -> Response {
        let status = response.status().as_u16();
        {
            let mut counters = lock(&self.counters);
            counters.total_requests += 1;
            *counters
                .by_endpoint
                .entry(call.endpoint)
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
        let mut requests = lock(&self.requests);
        if requests.len() == REQUEST_LOG_CAPACITY {
            requests.pop_front();
        }
        requests.push_back(RequestRecord {
            at: call.arrived.to_rfc3339_opts(SecondsFormat::Millis, true),
            endpoint: call.endpoint,
            method_path: call.path,
            status,
        });
        response
    }

    /// The gate of every audit and users request: `users_down`, the token, the role (audit
    /// only), the rate limit, injected 429s, latency, injected 5xx and HTML. Returns the
    /// caller's login index.
    async fn admit(
        &self,
        call: &Call,
        headers: &HeaderMap,
        service: Service,
    ) -> Result<usize, Response> {
        let error = |code: StatusCode, status: &str, message: &str| match service {
            Service::Audit => status_error(code, status, message),
            Service::Users => integration_error(code, message),
        };
        if service == Service::Users && lock(&self.faults).users_down {
            return Err(integration_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
            ));
        }
        let Some(token) = auth::token_header(headers) else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "FAILURE_BAD_HEADER",
                NO_TOKEN_HEADER,
            ));
        };
        let now_ms = self.now_ms();
        let Some(login) = lock(&self.tokens).login_of(token, now_ms) else {
            debug!(endpoint = ?call.endpoint, "unknown or expired token");
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "FAILURE_BAD_CREDENTIAL",
                INVALID_TOKEN,
            ));
        };
        if service == Service::Audit {
            let email = self.config.credentials[login].email.to_lowercase();
            if !lock(&self.auditors).contains(&email) {
                return Err(status_error(
                    StatusCode::UNAUTHORIZED,
                    "FAILURE_UNAUTHORIZED_USER_ACTION",
                    NOT_AUDITOR,
                ));
            }
        }
        let too_many = |retry_after: Option<u64>| {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "FAILURE_TOO_MANY_REQUESTS",
                "Too many requests",
            );
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        };
        let (send_retry_after, forced, latency) = {
            let mut faults = lock(&self.faults);
            let forced = take(&mut faults.rate_limit_next);
            (faults.send_retry_after, forced, faults.latency)
        };
        if let Err(wait_secs) = lock(&self.bucket).take(Instant::now()) {
            debug!(wait_secs, "rate limit exceeded");
            return Err(too_many(send_retry_after.then_some(wait_secs)));
        }
        if forced {
            let secs = self.faults().retry_after_secs.max(1);
            debug!("injected rate limit");
            return Err(too_many(send_retry_after.then_some(secs)));
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(code) = self.injected_status(false) {
            debug!(status = code.as_u16(), "injected server error");
            let reason = code.canonical_reason().unwrap_or("Error");
            return Err(error(code, "FAILURE_INTERNAL_ERROR", reason));
        }
        if take(&mut lock(&self.faults).html_next) {
            return Err((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                "<html><body><h1>Service temporarily unavailable</h1></body></html>",
            )
                .into_response());
        }
        Ok(login)
    }

    /// A status to fail this request with, if a `fail_next` (or, for the auth service,
    /// `auth_fail_next`) or `error_rate` fault fires.
    fn injected_status(&self, auth_service: bool) -> Option<StatusCode> {
        let mut faults = lock(&self.faults);
        let status =
            StatusCode::from_u16(faults.fail_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if auth_service {
            return take(&mut faults.auth_fail_next).then_some(status);
        }
        if take(&mut faults.fail_next) {
            return Some(status);
        }
        roll(faults.error_rate).then(|| {
            let choices = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ];
            choices[rand::rng().random_range(0..choices.len())]
        })
    }

    /// A 200 JSON response, cut roughly in half if a truncation fault fires.
    fn respond_json(&self, mut body: Vec<u8>) -> Response {
        let truncate = {
            let mut faults = lock(&self.faults);
            take(&mut faults.truncate_next) || roll(faults.truncate_rate)
        };
        if truncate {
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
}

/// A `GET /events` request being answered; see [`AnaplanSim::event_request_in_flight`].
struct InFlight<'a>(&'a AnaplanSim);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut counters = lock(&self.0.counters);
        counters.event_requests_in_flight = counters.event_requests_in_flight.saturating_sub(1);
    }
}

/// Decrements a one-shot counter; true if it was set.
fn take(counter: &mut u32) -> bool {
    let set = *counter > 0;
    *counter = counter.saturating_sub(1);
    set
}

/// Any other path: 404 in the Audit API's shape.
async fn not_found(
    axum::extract::State(sim): axum::extract::State<Arc<AnaplanSim>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::Other, &headers, &uri);
    let response = status_error(StatusCode::NOT_FOUND, "FAILURE_NOT_FOUND", "Not Found");
    sim.finish(call, response)
}

/// How long a token of `ttl` lives, in milliseconds.
fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}
