//! `/admin/api/deliveries` and `/admin/api/stats`: delivery rows by state with the
//! server's replies, putting failed rows back in the queue, and the site's counts
//! (readers by region, cadence and state; rows by state and kind; feeds by health).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{TokenName, error, json_body, limit_param, rfc3339};
use crate::domain::{DeliveryKind, DeliveryState, Email, Timestamp};
use crate::store::DeliveryRow;
use crate::web::AppState;

/// One delivery row as the API shows it.
pub(super) fn delivery_json(row: &DeliveryRow) -> Value {
    json!({
        "id": row.id.get(),
        "email": row.email.as_ref().map(Email::as_str),
        "kind": row.kind.as_str(),
        "state": row.state.as_str(),
        "attempts": row.attempts,
        "smtp_reply": row.smtp_reply,
        "last_error": row.last_error,
        "updated_at": rfc3339(row.updated_at),
        "send_id": row.send_id.map(|id| id.get()),
    })
}

/// `?state=&limit=` of the delivery list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

/// `GET /admin/api/deliveries?state=failed&limit=50`.
pub(super) async fn deliveries(
    State(state): State<AppState>,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let wanted: DeliveryState = match query.state.as_deref().unwrap_or("failed").parse() {
        Ok(s) => s,
        Err(e) => {
            let known: Vec<&str> = DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("state: {e} (use one of {})", known.join(", ")),
            );
        }
    };
    let limit = match limit_param(query.limit.as_deref(), 50, 1000) {
        Ok(limit) => limit,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match state.store.deliveries_in_state(wanted, limit).await {
        Ok(rows) => Json(json!({
            "state": wanted.as_str(),
            "deliveries": rows.iter().map(delivery_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => super::unavailable(e),
    }
}

/// The body of `POST /admin/api/deliveries/retry`: nothing to say yet, but a body
/// with fields herald does not know is refused rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRequest {}

/// `POST /admin/api/deliveries/retry`: failed and expired rows wait again.
pub(super) async fn retry(
    State(state): State<AppState>,
    Extension(TokenName(token)): Extension<TokenName>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {}
        body => {
            if let Err(refused) =
                json_body::<RetryRequest>(body, "send no body, or an empty JSON object")
            {
                return refused.into_response();
            }
        }
    }
    let now = Timestamp::now();
    let expiry = state.config.expiry.of(DeliveryKind::Digest, None);
    match state.store.retry_failed(now, now + expiry).await {
        Ok(n) => {
            tracing::info!(%token, requeued = n, "failed deliveries requeued");
            Json(json!({ "requeued": n })).into_response()
        }
        Err(e) => super::unavailable(e),
    }
}

/// A feed's health in one word: `healthy`, `failing` (its last polls failed) or
/// `never_polled`.
pub fn feed_health(feed: &crate::store::FeedStatus) -> &'static str {
    match (feed.last_polled_at, &feed.last_error) {
        (None, _) => "never_polled",
        (Some(_), Some(_)) if feed.consecutive_failures > 0 => "failing",
        _ => "healthy",
    }
}

/// `GET /admin/api/stats`.
pub(super) async fn stats(State(state): State<AppState>) -> Response {
    let counts = match state.store.site_counts().await {
        Ok(c) => c,
        Err(e) => return super::unavailable(e),
    };
    let feeds = match state.store.feed_statuses().await {
        Ok(f) => f,
        Err(e) => return super::unavailable(e),
    };
    let bounces = match state.store.bounce_stats().await {
        Ok(b) => b,
        Err(e) => return super::unavailable(e),
    };
    let health = feed_health;
    let mut by_health = serde_json::Map::new();
    for name in ["healthy", "failing", "never_polled"] {
        let n = feeds.iter().filter(|f| health(f) == name).count();
        by_health.insert(name.into(), json!(n));
    }
    Json(json!({
        "readers": counts.readers.iter().map(|(region, cadence, state, n)| json!({
            "region": region.as_str(), "cadence": cadence.as_str(), "state": state.as_str(), "count": n,
        })).collect::<Vec<_>>(),
        "deliveries": counts.deliveries.iter().map(|(state, kind, n)| json!({
            "state": state.as_str(), "kind": kind.as_str(), "count": n,
        })).collect::<Vec<_>>(),
        "feeds": {
            "by_health": by_health,
            "list": feeds.iter().map(|f| json!({
                "region": f.region.as_str(),
                "url": f.url,
                "health": health(f),
                "last_polled_at": f.last_polled_at.map(rfc3339),
                "last_success_at": f.last_success_at.map(rfc3339),
                "consecutive_failures": f.consecutive_failures,
                "last_error": f.last_error,
            })).collect::<Vec<_>>(),
        },
        "bounces": bounces_json(&bounces),
    }))
    .into_response()
}

/// Bounces and complaints as `/admin/api/stats` shows them.
fn bounces_json(b: &crate::store::BounceStats) -> serde_json::Value {
    let kinds = |by_kind: &[(crate::bounces::BounceKind, i64)]| {
        by_kind
            .iter()
            .map(|(k, n)| (k.as_str().to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>()
    };
    json!({
        "sent": b.sent,
        "bounce_rate": b.bounce_rate(),
        "complaint_rate": b.complaint_rate(),
        "by_kind": kinds(&b.by_kind),
        "by_domain": b.by_domain.iter().map(|d| json!({
            "domain": d.domain,
            "by_kind": kinds(&d.by_kind),
            "sent": d.sent,
            "bounce_rate": d.bounce_rate(),
            "complaint_rate": d.complaint_rate(),
            "suppressed": d.suppressed,
        })).collect::<Vec<_>>(),
        "suppressions": b.suppressions.iter()
            .map(|(cause, n)| (cause.clone(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "purged_signups": b.purged_signups,
    })
}
