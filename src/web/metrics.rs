//! `GET /metrics`: the Prometheus exposition, behind the admin API's bearer token (the
//! numbers say how many readers and emails the site has, which is not for everyone).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use super::admin_api::require_token;
use crate::domain::Timestamp;
use crate::metrics::{METRICS, render};

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` route, behind the same token check as `/admin/api`.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

/// The ledger's numbers, read now, and this process's counters.
async fn metrics(State(state): State<AppState>) -> Response {
    match state.store.ledger_snapshot().await {
        Ok(ledger) => (
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            render(&ledger, &METRICS, Timestamp::now()),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "reading the ledger for /metrics failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "the database is not answering; try again in a minute"})),
            )
                .into_response()
        }
    }
}
