//! The operations endpoint: `/metrics` (Prometheus), `/healthz` (the
//! process is alive and serving) and `/readyz` (the state file answers,
//! every source polled successfully lately, every sink delivers), each
//! with a body that says what is wrong.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::health::{Check, Health};
use crate::metrics::Metrics;
use crate::state::{unix_ms_now, StateProbe};

/// How long `/readyz` waits for the state file to answer.
const STATE_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoint reads.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub state: StateProbe,
}

/// Serves until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoint: Endpoint,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoint);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        endpoint.metrics.encode(),
    )
        .into_response()
}

#[derive(Serialize)]
struct Alive {
    status: &'static str,
}

async fn healthz() -> Json<Alive> {
    Json(Alive { status: "alive" })
}

/// The body of `/readyz`.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// Readiness now: the state file first, then every component.
pub async fn readiness(endpoint: &Endpoint) -> Readiness {
    let state = match tokio::time::timeout(STATE_PING_TIMEOUT, endpoint.state.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("the state file failed: {e}")),
        Err(_) => Some(format!(
            "the state file did not answer within {}s",
            STATE_PING_TIMEOUT.as_secs()
        )),
    };
    let mut checks = vec![Check {
        component: "state".to_string(),
        ok: state.is_none(),
        problem: state,
    }];
    checks.extend(endpoint.health.readiness(unix_ms_now()));
    Readiness {
        ready: checks.iter().all(|c| c.ok),
        checks,
    }
}

async fn readyz(State(endpoint): State<Endpoint>) -> (StatusCode, Json<Readiness>) {
    let readiness = readiness(&endpoint).await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Role;

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    #[tokio::test]
    async fn endpoints_answer_and_readyz_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(crate::state::StateDb::open(&path).unwrap());
        let state = StateProbe::new(&path);
        let metrics = Metrics::new();
        let health = Health::new();
        let source = health.register(Role::Source, "a", "asana", Duration::from_secs(60), vec![]);
        metrics.source("a", "asana").stored.inc_by(3);
        let endpoint = Endpoint {
            metrics,
            health,
            state,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, endpoint, stop.clone()));

        let (status, body) = get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, r#"{"status":"alive"}"#));

        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains(r#"auditrelay_source_events_stored_total{source="a",kind="asana"} 3"#),
            "{body}"
        );

        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["ready"], false);
        assert_eq!(json["checks"][0]["component"], "state");
        assert_eq!(json["checks"][0]["ok"], true);
        assert_eq!(json["checks"][1]["component"], "source/a");
        assert_eq!(
            json["checks"][1]["problem"],
            "no successful poll yet; now: starting"
        );

        source.succeeded();
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 200, "{body}");

        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
