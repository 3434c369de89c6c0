//! A faithful fake of the Asana Audit Log API, used by `auditrelay simulate`, the test suite,
//! the demo and the benchmarks.
//!
//! It serves `GET /api/1.0/workspaces/{workspace_gid}/audit_log_events` with Asana's
//! authentication, filters, signed offsets, streaming `next_page` rule, 90-day retention, rate
//! limits and error bodies, plus injectable faults; and `GET /api/1.0/users/{user_gid}` (a gid,
//! an email or `me`) for enrichment, with the same authentication, limits and faults: every
//! user that appears in events resolves, except the configured deleted users (404). The
//! `users_down` fault makes that endpoint alone answer 503.
//!
//! The fake Anaplan APIs live in [`anaplan`].
//!
//! Events are a pure function of the seed, the workspace and the event's index (see the
//! `events` and `timeline` modules), so a restart with the same seed and epoch serves the same
//! stream and accepts the offsets it issued before. Each workspace keeps an append-only stream
//! of compact entries; stream order is append order, and an offset is a signed position in it.
//!
//! Admin endpoints (not part of Asana's API, not counted in the statistics):
//!
//! - `GET /_sim/stats`: request counts by status and by endpoint and status (`by_endpoint`,
//!   keys `audit_log_events`, `users`, `other`), `early_requests`, `peak_in_flight` (most requests of one token in
//!   flight at once), visible events per
//!   workspace and fault counters.
//! - `GET /_sim/events?workspace=GID`: `{"gids": [...]}`, every visible valid event in stream
//!   order (the first workspace if `workspace` is omitted).
//! - `GET /_sim/faults`, `POST /_sim/faults`: the fault state; the POST body is a
//!   [`FaultUpdate`] (absent fields unchanged).
//! - `GET /_sim/requests?limit=N`: the last N (default 100) requests to the Asana API.

mod admin;
pub mod anaplan;
mod api;
mod config;
mod events;
mod faults;
mod limiter;
mod offset;
mod timeline;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::routing::get;
use axum::Router;
use chrono::Utc;
use tracing::info;

pub use config::{SimArgs, SimConfig};
pub use faults::{FaultUpdate, Faults};

use events::WorkspaceIdentity;
use faults::{FaultReport, FaultState};
use limiter::Limiter;
use offset::{OffsetClock, OffsetCodec};
use timeline::{
    Entry, Timeline, WorkspaceLog, EXTRA_KEY_BASE, EXTRA_KEY_SPAN, GIDS_PER_WORKSPACE, GID_BASE,
};

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent, so
/// a panic elsewhere is no reason to take the whole simulator down.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a run-time fault update was refused.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("{0}")]
    Invalid(String),
    #[error("workspace: Not Found")]
    UnknownWorkspace,
}

/// One served workspace.
#[derive(Debug)]
struct Workspace {
    identity: WorkspaceIdentity,
    /// Event gid = `gid_base + key`.
    gid_base: u64,
    log: Mutex<WorkspaceLog>,
}

/// Counters reported by `GET /_sim/stats` (status codes become JSON keys
/// such as `"200"`).
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Counters {
    total_requests: u64,
    by_status: BTreeMap<u16, u64>,
    /// Requests per endpoint (`audit_log_events`, `users`, `other`) and status.
    by_endpoint: BTreeMap<api::Endpoint, BTreeMap<u16, u64>>,
    pages_served: u64,
    events_served: u64,
    truncated_responses: u64,
    bad_records_served: u64,
    duplicates_served: u64,
    late_events: u64,
    generated_events: u64,
}

/// One entry of the request log (`GET /_sim/requests`).
#[derive(Debug, Clone, serde::Serialize)]
struct RequestRecord {
    /// Arrival, real UTC time (not the simulated clock) with milliseconds.
    at: String,
    /// The last few characters of the bearer token, never the whole token.
    token_suffix: Option<String>,
    /// Path and query as requested.
    path: String,
    status: u16,
    retry_after_secs: Option<u64>,
}

/// How many request records are kept.
const REQUEST_LOG_CAPACITY: usize = 10_000;

/// The simulator. Cheap to share via `Arc`; all state is behind short-lived locks that are
/// never held across an `.await`.
pub struct Simulator {
    config: SimConfig,
    timeline: Timeline,
    codec: OffsetCodec,
    /// Random id of this process, embedded in offsets (see `WorkspaceLog::position_of`).
    process: u32,
    workspaces: Vec<Workspace>,
    tokens: HashSet<String>,
    non_service_tokens: HashSet<String>,
    deleted_users: HashSet<String>,
    faults: Mutex<FaultState>,
    offsets: Mutex<OffsetClock>,
    limiter: Arc<Limiter>,
    counters: Mutex<Counters>,
    requests: Mutex<VecDeque<RequestRecord>>,
}

/// Shows the configuration (tokens redacted), not the live state.
impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// A simulator for `config`. Out-of-range fault rates are clamped to 0..=1.
    pub fn new(config: SimConfig) -> Arc<Self> {
        let workspaces = config
            .workspaces
            .iter()
            .enumerate()
            .map(|(index, gid)| {
                let name = match index {
                    0 => "Example Org".to_string(),
                    _ => format!("Example Org {}", index + 1),
                };
                // A fresh random start per process keeps extras of different runs apart.
                let first_extra_key = EXTRA_KEY_BASE + rand::random_range(0..EXTRA_KEY_SPAN);
                Workspace {
                    identity: WorkspaceIdentity {
                        gid: gid.clone(),
                        name,
                        key: events::string_key(gid),
                    },
                    gid_base: GID_BASE + index as u64 * GIDS_PER_WORKSPACE,
                    log: Mutex::new(WorkspaceLog::new(first_extra_key)),
                }
            })
            .collect();
        Arc::new(Self {
            timeline: Timeline::new(&config),
            codec: OffsetCodec::new(config.seed),
            process: rand::random(),
            workspaces,
            tokens: config.tokens.iter().cloned().collect(),
            non_service_tokens: config.non_service_tokens.iter().cloned().collect(),
            deleted_users: config.deleted_users.iter().cloned().collect(),
            faults: Mutex::new(FaultState::new(config.faults.clone())),
            offsets: Mutex::new(OffsetClock::default()),
            limiter: Arc::new(Limiter::new(
                config.rate_limit_per_minute,
                config.max_concurrent,
            )),
            counters: Mutex::new(Counters::default()),
            requests: Mutex::new(VecDeque::new()),
            config,
        })
    }

    /// The Asana API and the `/_sim/` admin endpoints, ready to serve.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/api/1.0/workspaces/{workspace_gid}/audit_log_events",
                get(api::audit_log_events),
            )
            .route("/api/1.0/users/{user_gid}", get(api::user))
            .route("/_sim/stats", get(admin::stats))
            .route("/_sim/events", get(admin::events))
            .route(
                "/_sim/faults",
                get(admin::faults).post(admin::update_faults),
            )
            .route("/_sim/requests", get(admin::requests))
            .fallback(api::not_found)
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
            workspaces = self.workspaces.len(),
            backlog = self.config.backlog,
            rate = self.config.rate,
            seed = self.config.seed,
            epoch = %self.config.epoch,
            "asana simulator listening"
        );
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        info!(%addr, "asana simulator stopped");
        Ok(())
    }

    /// Gids of every valid event currently visible in `workspace` (timeline, late and
    /// generated events within retention), in stream order. Empty for an unknown workspace.
    pub fn visible_gids(&self, workspace: &str) -> Vec<String> {
        let Some(workspace) = self.workspace(workspace) else {
            return Vec::new();
        };
        let (log, cutoff_ms) = self.current_log(workspace);
        log.entries()
            .iter()
            .filter(|entry| entry.created_ms >= cutoff_ms)
            .map(|entry| (workspace.gid_base + entry.key).to_string())
            .collect()
    }

    /// The current fault settings.
    pub fn faults(&self) -> Faults {
        lock(&self.faults).faults.clone()
    }

    /// Applies a run-time fault change (the same as `POST /_sim/faults`).
    pub fn update_faults(&self, update: FaultUpdate) -> Result<Faults, FaultError> {
        self.apply_fault_update(update).map(|report| report.faults)
    }

    fn apply_fault_update(&self, update: FaultUpdate) -> Result<FaultReport, FaultError> {
        let targets: Vec<&Workspace> = match &update.workspace {
            Some(gid) => vec![self.workspace(gid).ok_or(FaultError::UnknownWorkspace)?],
            None => self.workspaces.iter().collect(),
        };
        let report = {
            let mut state = lock(&self.faults);
            let faults = update.apply_to(&state.faults);
            faults.validate().map_err(FaultError::Invalid)?;
            state.faults = faults;
            if let Some(token) = &update.revoke_token {
                state.revoked.insert(token.clone());
            }
            if let Some(token) = &update.restore_token {
                state.revoked.remove(token);
            }
            state.report()
        };
        let now_ms = self.now_ms();
        if update.expire_offsets {
            lock(&self.offsets).expire_all(now_ms);
        }
        if let Some(count) = update.generate {
            for workspace in &targets {
                let mut log = lock(&workspace.log);
                self.materialise(workspace, &mut log, now_ms);
                for _ in 0..count {
                    self.push_extra(workspace, &mut log, now_ms);
                }
            }
            lock(&self.counters).generated_events += count * targets.len() as u64;
        }
        info!(
            faults = ?report.faults,
            revoked_tokens = report.revoked_tokens,
            expire_offsets = update.expire_offsets,
            generated = update.generate.unwrap_or(0),
            "simulator faults updated"
        );
        Ok(report)
    }

    /// Number of valid events currently visible in `workspace`.
    fn visible_count(&self, workspace: &Workspace) -> usize {
        let (log, cutoff_ms) = self.current_log(workspace);
        log.entries()
            .iter()
            .filter(|entry| entry.created_ms >= cutoff_ms)
            .count()
    }

    /// The workspace's stream brought up to date, and the current retention cut-off.
    fn current_log<'w>(&self, workspace: &'w Workspace) -> (MutexGuard<'w, WorkspaceLog>, i64) {
        let now_ms = self.now_ms();
        let mut log = lock(&workspace.log);
        self.materialise(workspace, &mut log, now_ms);
        (log, self.retention_cutoff_ms(now_ms))
    }

    fn workspace(&self, gid: &str) -> Option<&Workspace> {
        self.workspaces.iter().find(|w| w.identity.gid == gid)
    }

    /// Simulated time: real UTC time plus the configured advance, in Unix milliseconds.
    fn now_ms(&self) -> i64 {
        let advance_secs = lock(&self.faults).faults.clock_advance_secs;
        Utc::now()
            .timestamp_millis()
            .saturating_add(advance_secs.saturating_mul(1000))
    }

    /// Events created before this instant are past retention and never served.
    fn retention_cutoff_ms(&self, now_ms: i64) -> i64 {
        let retention_ms = i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(retention_ms)
    }

    fn materialise(&self, workspace: &Workspace, log: &mut WorkspaceLog, now_ms: i64) {
        log.materialise(&self.timeline, now_ms, |key| {
            events::event_kind(self.config.seed, &workspace.identity, key)
        });
    }

    fn push_extra(&self, workspace: &Workspace, log: &mut WorkspaceLog, created_ms: i64) -> Entry {
        log.push_extra(created_ms, |key| {
            events::event_kind(self.config.seed, &workspace.identity, key)
        })
    }
}
