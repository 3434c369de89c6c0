//! Admin endpoints under `/_sim/` for black-box tests. Not part of Asana's API; requests to
//! them are not counted in the statistics or the request log.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{lock, Counters, FaultError, FaultUpdate, RequestRecord, Simulator};

#[derive(Debug, Serialize)]
pub(super) struct WorkspaceStats {
    visible_events: usize,
}

/// The counters plus what is computed when asked.
#[derive(Debug, Serialize)]
pub(super) struct StatsReport {
    #[serde(flatten)]
    counters: Counters,
    early_requests: u64,
    /// The most requests of one token in flight at once (admitted ones).
    peak_in_flight: u64,
    workspaces: BTreeMap<String, WorkspaceStats>,
}

fn admin_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "errors": [{ "message": message }] }))).into_response()
}

pub(super) async fn stats(State(sim): State<Arc<Simulator>>) -> Json<StatsReport> {
    // Visible counts first: they take the workspace locks, not the counters lock.
    let workspaces = sim
        .workspaces
        .iter()
        .map(|w| {
            let visible_events = sim.visible_count(w);
            (w.identity.gid.clone(), WorkspaceStats { visible_events })
        })
        .collect();
    let counters = lock(&sim.counters).clone();
    Json(StatsReport {
        counters,
        early_requests: sim.limiter.early_requests(),
        peak_in_flight: sim.limiter.peak_in_flight(),
        workspaces,
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    /// Defaults to the first configured workspace.
    workspace: Option<String>,
}

pub(super) async fn events(
    State(sim): State<Arc<Simulator>>,
    Query(query): Query<EventsQuery>,
) -> Response {
    let gid = query
        .workspace
        .or_else(|| sim.workspaces.first().map(|w| w.identity.gid.clone()));
    match gid.filter(|gid| sim.workspace(gid).is_some()) {
        Some(gid) => Json(json!({ "gids": sim.visible_gids(&gid) })).into_response(),
        None => admin_error(StatusCode::NOT_FOUND, "workspace: Not Found"),
    }
}

pub(super) async fn faults(State(sim): State<Arc<Simulator>>) -> Response {
    Json(lock(&sim.faults).report()).into_response()
}

pub(super) async fn update_faults(
    State(sim): State<Arc<Simulator>>,
    update: Result<Json<FaultUpdate>, JsonRejection>,
) -> Response {
    let update = match update {
        Ok(Json(update)) => update,
        Err(rejection) => return admin_error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    match sim.apply_fault_update(update) {
        Ok(report) => Json(report).into_response(),
        Err(err @ FaultError::Invalid(_)) => admin_error(StatusCode::BAD_REQUEST, &err.to_string()),
        Err(err @ FaultError::UnknownWorkspace) => {
            admin_error(StatusCode::NOT_FOUND, &err.to_string())
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RequestsQuery {
    limit: Option<usize>,
}

pub(super) async fn requests(
    State(sim): State<Arc<Simulator>>,
    Query(query): Query<RequestsQuery>,
) -> Json<Vec<RequestRecord>> {
    let requests = lock(&sim.requests);
    let limit = query.limit.unwrap_or(100).min(requests.len());
    Json(
        requests
            .iter()
            .skip(requests.len() - limit)
            .cloned()
            .collect(),
    )
}
