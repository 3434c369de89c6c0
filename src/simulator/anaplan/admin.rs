//! Admin endpoints under `/_sim/anaplan/` for black-box tests. Not part of Anaplan's APIs;
//! requests to them are not counted in the statistics or the request log.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{lock, AnaplanFaultError, AnaplanFaultUpdate, AnaplanSim, Counters, RequestRecord};

fn admin_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The counters plus what is computed when asked.
#[derive(Debug, Serialize)]
pub(super) struct StatsReport {
    #[serde(flatten)]
    counters: Counters,
    /// Distinct ids asked of `GET /2/0/users/{id}`.
    distinct_user_lookups: usize,
    visible_events: usize,
    /// The simulated clock, Unix milliseconds.
    now_ms: i64,
}

pub(super) async fn stats(State(sim): State<Arc<AnaplanSim>>) -> Json<StatsReport> {
    let visible_events = sim.visible_ids().len();
    let distinct_user_lookups = sim.distinct_user_lookups();
    let counters = lock(&sim.counters).clone();
    Json(StatsReport {
        counters,
        distinct_user_lookups,
        visible_events,
        now_ms: sim.now_ms(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventsQuery {
    date_from: Option<i64>,
    date_to: Option<i64>,
}

pub(super) async fn events(
    State(sim): State<Arc<AnaplanSim>>,
    Query(query): Query<EventsQuery>,
) -> Response {
    let ids = sim.visible_ids_between(
        query.date_from.unwrap_or(i64::MIN),
        query.date_to.unwrap_or(i64::MAX),
    );
    Json(json!({ "ids": ids })).into_response()
}

pub(super) async fn faults(State(sim): State<Arc<AnaplanSim>>) -> Response {
    Json(sim.faults()).into_response()
}

pub(super) async fn update_faults(
    State(sim): State<Arc<AnaplanSim>>,
    update: Result<Json<AnaplanFaultUpdate>, JsonRejection>,
) -> Response {
    let update = match update {
        Ok(Json(update)) => update,
        Err(rejection) => return admin_error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    match sim.update_faults(update) {
        Ok(faults) => Json(faults).into_response(),
        Err(err @ AnaplanFaultError::Invalid(_)) => {
            admin_error(StatusCode::BAD_REQUEST, &err.to_string())
        }
        Err(err @ AnaplanFaultError::UnknownLogin(_)) => {
            admin_error(StatusCode::NOT_FOUND, &err.to_string())
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RequestsQuery {
    limit: Option<usize>,
}

pub(super) async fn requests(
    State(sim): State<Arc<AnaplanSim>>,
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

pub(super) async fn users(State(sim): State<Arc<AnaplanSim>>) -> Response {
    let users: Vec<_> = sim
        .directory
        .all()
        .iter()
        .map(|user| json!({ "id": user.id, "email": user.email, "deleted": user.deleted }))
        .collect();
    Json(json!({ "users": users })).into_response()
}

pub(super) async fn ca(State(sim): State<Arc<AnaplanSim>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        sim.ca_certificate_pem().to_string(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct MintRequest {
    email: String,
}

pub(super) async fn client_certificate(
    State(sim): State<Arc<AnaplanSim>>,
    request: Result<Json<MintRequest>, JsonRejection>,
) -> Response {
    let email = match request {
        Ok(Json(request)) => request.email,
        Err(rejection) => return admin_error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    // RSA key generation takes a while: keep it off the async workers.
    let minted = tokio::task::spawn_blocking(move || sim.mint_client_certificate(&email)).await;
    match minted {
        Ok(Ok(cert)) => Json(json!({
            "email": cert.email(),
            "certificate_pem": cert.certificate_pem(),
            "private_key_pem": cert.private_key_pem(),
        }))
        .into_response(),
        Ok(Err(error)) => admin_error(StatusCode::BAD_REQUEST, &error),
        Err(error) => admin_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}
