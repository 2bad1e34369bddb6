//! `/admin/api/sponsors`: book, list and remove sponsor slots, and the ledger's count of
//! what each went out in, as `herald sponsors add|list|remove|report` do.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, TokenName, error, json_body, rfc3339};
use crate::domain::{NewSponsor, SponsorFields, SponsorId, Timestamp};
use crate::store::SponsorRow;
use crate::web::AppState;

fn row_json(row: &SponsorRow) -> serde_json::Value {
    json!({
        "id": row.block.id.get(),
        "regions": row.regions.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "from": row.starts_on.to_string(),
        "to": row.ends_on.to_string(),
        "label": row.block.label,
        "headline": row.block.headline,
        "body": row.block.body,
        "link": row.block.link,
        "image": row.block.image.as_ref().map(|(url, _)| url),
        "alt": row.block.image.as_ref().map(|(_, alt)| alt),
        "created_at": rfc3339(row.created_at),
    })
}

/// `GET /admin/api/sponsors`: every booking, earliest first.
pub(super) async fn list(State(state): State<AppState>) -> Response {
    match state.store.sponsors().await {
        Ok(rows) => Json(json!({ "sponsors": rows.iter().map(row_json).collect::<Vec<_>>() }))
            .into_response(),
        Err(e) => super::unavailable(e),
    }
}

/// `POST /admin/api/sponsors`: books a sponsor; 201 with the booking.
pub(super) async fn add(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let fields: SponsorFields = match json_body(
        body,
        r#"{"regions": ["SLUG"], "from": "YYYY-MM-DD", "to": "YYYY-MM-DD", "label": "…", "headline": "…", "body": "…", "link": "https://…"}"#,
    ) {
        Ok(fields) => fields,
        Err(refused) => return refused.into_response(),
    };
    for region in &fields.regions {
        if let Err(message) = state.config.regions.known(region) {
            return ApiError(StatusCode::UNPROCESSABLE_ENTITY, message).into_response();
        }
    }
    let booking = match NewSponsor::parse(fields) {
        Ok(booking) => booking,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let id = match state.store.add_sponsor(&booking, Timestamp::now()).await {
        Ok(id) => id,
        Err(e) => return super::unavailable(e),
    };
    tracing::info!(token = %token.0, sponsor = %id, "sponsor booked through the admin API");
    match state.store.sponsors().await {
        Ok(rows) => match rows.iter().find(|r| r.block.id == id) {
            Some(row) => (StatusCode::CREATED, Json(row_json(row))).into_response(),
            None => (StatusCode::CREATED, Json(json!({ "id": id.get() }))).into_response(),
        },
        Err(e) => super::unavailable(e),
    }
}

/// `DELETE /admin/api/sponsors/{id}`.
pub(super) async fn remove(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    Path(id): Path<String>,
) -> Response {
    let id: SponsorId = match id.parse() {
        Ok(id) => id,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match state.store.remove_sponsor(id).await {
        Ok(true) => {
            tracing::info!(token = %token.0, sponsor = %id, "sponsor removed through the admin API");
            Json(json!({ "removed": id.get() })).into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("there is no sponsor {id}; GET /admin/api/sponsors lists the bookings"),
        ),
        Err(e) => super::unavailable(e),
    }
}

/// `GET /admin/api/sponsors/report`: per booking, digests sent, waiting and not sent.
pub(super) async fn report(State(state): State<AppState>) -> Response {
    match state.store.sponsor_report().await {
        Ok(rows) => Json(json!({ "sponsors": rows })).into_response(),
        Err(e) => super::unavailable(e),
    }
}
