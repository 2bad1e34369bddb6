//! `/admin/api/sends`: start a manual send (with an optional `Idempotency-Key`), list
//! sends, show one with its rows by state, pause, resume or cancel one. Starting plans
//! the send at once and answers 202: the daemon's delivery engine sends its rows.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, body::Bytes};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, TokenName, error, json_body, limit_param, rfc3339};
use crate::domain::{Cadence, Email, SendId, Timestamp};
use crate::sends::SendError;
use crate::store::{ManualSend, NewSend, SendChange};
use crate::web::AppState;

/// The longest `Idempotency-Key` kept.
const MAX_KEY_LEN: usize = 200;

/// The body of `POST /admin/api/sends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    region: String,
    #[serde(default)]
    cadence: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// A send as the API shows it: its rows by state from the ledger; for a dry run what
/// it found (readers per zone, one rendered sample); for a test copy the server's reply.
pub(crate) fn send_json(send: &ManualSend) -> Value {
    let counts: serde_json::Map<String, Value> = send
        .counts
        .by_state
        .iter()
        .map(|(state, n)| (state.as_str().to_string(), json!(n)))
        .collect();
    let mut body = json!({
        "id": send.id.get(),
        "state": send.state.as_str(),
        "region": send.region.as_str(),
        "cadence": send.cadence.as_str(),
        "dry_run": send.dry_run,
        "to": send.test_address.as_ref().map(Email::as_str),
        "started_by": send.started_by,
        "total": send.counts.total(),
        "counts": counts,
        "started_at": rfc3339(send.started_at),
        "finished_at": send.finished_at.map(rfc3339),
        "error": send.error,
    });
    let report: Option<Value> = send
        .report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok());
    if let (Some(Value::Object(report)), Value::Object(body)) = (report, &mut body) {
        for (key, value) in report {
            let key = if send.test_address.is_some() && key == "reply" {
                "smtp_reply".to_string()
            } else {
                key
            };
            body.entry(key).or_insert(value);
        }
    }
    body
}

/// `POST /admin/api/sends`.
pub(super) async fn start(
    State(state): State<AppState>,
    Extension(TokenName(token)): Extension<TokenName>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request: StartRequest = match json_body(
        body,
        "send JSON with region, and optionally cadence (alert, daily, weekly), to and dry_run",
    ) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) if !key.trim().is_empty() && key.len() <= MAX_KEY_LEN => {
                Some(key.trim().to_string())
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the Idempotency-Key header must be 1 to {MAX_KEY_LEN} visible ASCII characters (a UUID is a good choice)"
                    ),
                );
            }
        },
    };
    let Some(sends) = state.sends.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "manual sends are started by the daemon; this server runs without it",
        );
    };
    let region = match state.config.regions.known(&request.region) {
        Ok(region) => region.slug.clone(),
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("region: {e}")),
    };
    let cadence: Cadence = match request.cadence.as_deref().unwrap_or("daily").parse() {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("cadence: {e}")),
    };
    let test_address = match request.to.as_deref().map(Email::parse).transpose() {
        Ok(to) => to,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("to: {e}")),
    };
    let new = NewSend {
        started_by: token.clone(),
        region,
        cadence,
        dry_run: request.dry_run.unwrap_or(false),
        test_address,
        idempotency_key: key,
    };
    // Planned in a task of its own: a client that hangs up (or a request deadline)
    // must not drop the plan halfway and leave the send `planning`.
    let started = tokio::spawn(async move { sends.start(new, Timestamp::now()).await }).await;
    let started = match started {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "planning a manual send panicked");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the send could not be planned; the daemon's log says why",
            );
        }
    };
    match started {
        Ok(started) => {
            let send = &started.send;
            if started.fresh {
                tracing::info!(
                    %token, send = send.id.get(), region = %send.region, state = %send.state,
                    emails = send.counts.total(), "manual send started"
                );
            }
            let mut response = (StatusCode::ACCEPTED, Json(send_json(send))).into_response();
            if !started.fresh {
                response.headers_mut().insert(
                    "idempotent-replayed",
                    axum::http::HeaderValue::from_static("true"),
                );
            }
            response
        }
        Err(e) => {
            let status = match &e {
                SendError::UnknownRegion(_) | SendError::NoArticles(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                SendError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
                SendError::TestCopy(_) => StatusCode::BAD_GATEWAY,
                SendError::Compose(_) => StatusCode::INTERNAL_SERVER_ERROR,
                SendError::Store(store) => {
                    tracing::error!(error = %store, "starting a manual send failed");
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the database is not answering; try again in a minute (with the same Idempotency-Key, it makes one send)",
                    );
                }
            };
            error(status, e.to_string())
        }
    }
}

/// `?limit=` of the send list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    #[serde(default)]
    limit: Option<String>,
}

/// `GET /admin/api/sends`: the latest sends, newest first.
pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let limit = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| limit_param(q.limit.as_deref(), 50, 500))
    {
        Ok(limit) => limit,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match state.store.sends(limit).await {
        Ok(sends) => Json(json!({ "sends": sends.iter().map(send_json).collect::<Vec<_>>() }))
            .into_response(),
        Err(e) => super::unavailable(e),
    }
}

/// The send named in the path, or the answer that says why not.
fn send_id(raw: &str) -> Result<SendId, ApiError> {
    raw.parse().map_err(|e| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("there is no send {raw:?}: {e}"),
        )
    })
}

/// `GET /admin/api/sends/{id}`.
pub(super) async fn show(State(state): State<AppState>, Path(raw): Path<String>) -> Response {
    let id = match send_id(&raw) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    match state.store.send(id).await {
        Ok(Some(send)) => Json(send_json(&send)).into_response(),
        Ok(None) => not_found(id),
        Err(e) => super::unavailable(e),
    }
}

fn not_found(id: SendId) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("there is no send {id}; GET /admin/api/sends lists them"),
    )
}

/// What an admin asked a send to do.
#[derive(Debug, Clone, Copy)]
enum Action {
    Pause,
    Resume,
    Cancel,
}

/// `POST /admin/api/sends/{id}/pause`.
pub(super) async fn pause(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    Path(raw): Path<String>,
) -> Response {
    act(state, token, &raw, Action::Pause).await
}

/// `POST /admin/api/sends/{id}/resume`.
pub(super) async fn resume(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    Path(raw): Path<String>,
) -> Response {
    act(state, token, &raw, Action::Resume).await
}

/// `POST /admin/api/sends/{id}/cancel`.
pub(super) async fn cancel(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    Path(raw): Path<String>,
) -> Response {
    act(state, token, &raw, Action::Cancel).await
}

async fn act(state: AppState, TokenName(token): TokenName, raw: &str, action: Action) -> Response {
    let id = match send_id(raw) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let now = Timestamp::now();
    let (change, word) = match action {
        Action::Pause => (state.store.pause_send(id, now).await, "paused"),
        Action::Resume => (state.store.resume_send(id, now).await, "resumed"),
        Action::Cancel => (state.store.cancel_send(id, now).await, "cancelled"),
    };
    match change {
        Ok(SendChange::Changed(send)) => {
            tracing::info!(%token, send = id.get(), "manual send {word}");
            Json(send_json(&send)).into_response()
        }
        Ok(SendChange::Refused(send)) => error(
            StatusCode::CONFLICT,
            format!(
                "send {id} is {}, so it cannot be {word}: {}",
                send.state,
                crate::sends::refusal_hint(send.state)
            ),
        ),
        Ok(SendChange::NotFound) => not_found(id),
        Err(e) => super::unavailable(e),
    }
}
