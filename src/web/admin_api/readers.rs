//! `/admin/api/subscribers` and `/admin/api/suppressions`: look one reader up (regions,
//! state, consent record, recent mail), erase one as `herald subscribers remove` does,
//! lift a suppression as `herald suppressions remove` does.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, TokenName, error, rfc3339};
use crate::domain::{Email, Timestamp};
use crate::web::AppState;

/// How many of a reader's emails the look-up shows.
const RECENT: i64 = 20;

/// `?email=` of the look-up.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LookupQuery {
    #[serde(default)]
    email: Option<String>,
}

fn address(raw: &str) -> Result<Email, ApiError> {
    Email::parse(raw).map_err(|e| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("\"{raw}\" is not an address herald can use: {e}"),
        )
    })
}

/// `GET /admin/api/subscribers?email=`.
pub(super) async fn lookup(
    State(state): State<AppState>,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Response {
    let raw = match query {
        Ok(Query(LookupQuery { email: Some(email) })) if !email.trim().is_empty() => email,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "say whom to look up: /admin/api/subscribers?email=ADDRESS",
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let email = match address(&raw) {
        Ok(email) => email,
        Err(refused) => return refused.into_response(),
    };
    let detail = match state.store.reader_detail(&email, RECENT).await {
        Ok(detail) => detail,
        Err(e) => return super::unavailable(e),
    };
    let suppression = match state.store.suppression_of(&email).await {
        Ok(s) => s,
        Err(e) => return super::unavailable(e),
    };
    let Some(detail) = detail else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no reader has the address {email}{}",
                match &suppression {
                    Some(s) => format!(" (it is suppressed: {})", s.reason),
                    None => String::new(),
                }
            ),
        );
    };
    let reader = &detail.reader;
    Json(json!({
        "id": reader.id.get(),
        "email": reader.email.as_str(),
        "state": reader.state.as_str(),
        "timezone": reader.timezone.name(),
        "regions": reader.regions.iter()
            .map(|(region, cadence)| json!({ "region": region.as_str(), "cadence": cadence.as_str() }))
            .collect::<Vec<_>>(),
        "created_at": rfc3339(reader.created_at),
        "confirmed_at": reader.confirmed_at.map(rfc3339),
        "suppressed": suppression.map(|s| suppression_json(&s)),
        "consent": detail.consent.as_ref().map(|c| json!({
            "given_at": rfc3339(c.given_at),
            "ip": c.ip,
            "user_agent": c.user_agent,
            "text_version": c.text_version,
            "confirmed_at": c.confirmed_at.map(rfc3339),
            "confirmed_ip": c.confirmed_ip,
        })),
        "recent_deliveries": detail.recent.iter().map(super::ledger::delivery_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `DELETE /admin/api/subscribers/{email}`: erases the reader.
pub(super) async fn erase(
    State(state): State<AppState>,
    Extension(TokenName(token)): Extension<TokenName>,
    Path(raw): Path<String>,
) -> Response {
    let email = match address(&raw) {
        Ok(email) => email,
        Err(refused) => return refused.into_response(),
    };
    match state
        .store
        .remove_subscriber(&email, Timestamp::now())
        .await
    {
        Ok(true) => {
            tracing::info!(%token, "reader erased");
            Json(json!({
                "erased": email.as_str(),
                "note": "their row, subscriptions and consent records are gone, their waiting mail cancelled, and the address suppressed",
            }))
            .into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no reader has the address {email}; nothing was erased"),
        ),
        Err(e) => super::unavailable(e),
    }
}

/// `DELETE /admin/api/suppressions/{email}`: lifts the suppression.
pub(super) async fn lift(
    State(state): State<AppState>,
    Extension(TokenName(token)): Extension<TokenName>,
    Path(raw): Path<String>,
) -> Response {
    let email = match address(&raw) {
        Ok(email) => email,
        Err(refused) => return refused.into_response(),
    };
    match state.store.remove_suppression(&email).await {
        Ok(true) => {
            tracing::info!(%token, "suppression lifted");
            Json(json!({ "lifted": email.as_str() })).into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("{email} is not on the suppression list"),
        ),
        Err(e) => super::unavailable(e),
    }
}

/// One suppression-list entry, with the report that caused it.
fn suppression_json(s: &crate::store::Suppression) -> serde_json::Value {
    json!({
        "entry": s.entry,
        "reason": s.reason,
        "since": rfc3339(s.created_at),
        "event": s.event.as_ref().map(|e| json!({
            "id": e.id,
            "kind": e.kind,
            "source": e.source,
            "delivery": e.delivery,
            "at": rfc3339(e.at),
        })),
    })
}

/// `GET /admin/api/suppressions`: every entry, newest first, as `herald suppressions
/// list` shows them.
pub(super) async fn list_suppressions(State(state): State<AppState>) -> Response {
    match state.store.suppressions().await {
        Ok(entries) => Json(json!({
            "count": entries.len(),
            "suppressions": entries.iter().map(suppression_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => super::unavailable(e),
    }
}
