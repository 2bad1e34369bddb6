//! The dashboard's read pages and reader actions: the queue by state, reader look-up
//! with erase and lift-suppression, recent failures with their SMTP replies (and
//! retry), and per-feed health. Each reads the store functions the admin API reads.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminName, checked_form, not_from_here, page, unavailable, when};
use crate::domain::{DeliveryKind, DeliveryState, Email, Timestamp};
use crate::store::DeliveryRow;
use crate::web::AppState;
use crate::web::admin_api::feed_health;

/// How many rows the failures page and a reader's history show.
const RECENT: i64 = 50;

/// `GET /admin`: rows by delivery state and the oldest waiting row.
pub(super) async fn queue(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
) -> Response {
    let status = match state.store.queue_status().await {
        Ok(s) => s,
        Err(e) => return unavailable(e),
    };
    let now = Timestamp::now();
    let states: Vec<Value> = DeliveryState::ALL
        .iter()
        .map(|s| {
            let n = status
                .by_state
                .iter()
                .find(|(state, _)| state == s)
                .map_or(0, |(_, n)| *n);
            json!({ "state": s.as_str(), "count": n, "final": s.is_final() })
        })
        .collect();
    page(
        &state,
        &headers,
        Some(&admin),
        "web/admin/queue.html.j2",
        StatusCode::OK,
        json!({
            "nav": "queue",
            "states": states,
            "total": status.by_state.iter().map(|(_, n)| n).sum::<i64>(),
            "oldest": status.oldest_waiting_since.map(|t| json!({
                "at": when(t),
                "minutes": now.seconds_since(t).max(0) / 60,
            })),
            "last_error": status.last_error.map(|(t, e)| json!({ "at": when(t), "text": e })),
        }),
    )
}

/// One delivery row as the pages show it.
fn delivery(row: &DeliveryRow) -> Value {
    json!({
        "id": row.id.get(),
        "email": row.email.as_ref().map(Email::as_str),
        "kind": row.kind.as_str(),
        "state": row.state.as_str(),
        "attempts": row.attempts,
        "smtp_reply": row.smtp_reply,
        "last_error": row.last_error,
        "updated_at": when(row.updated_at),
        "send_id": row.send_id.map(|id| id.get()),
    })
}

/// `?email=` of the reader look-up.
#[derive(Debug, Deserialize)]
pub(super) struct LookupQuery {
    #[serde(default)]
    email: Option<String>,
}

/// `GET /admin/readers?email=`.
pub(super) async fn readers(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    Query(query): Query<LookupQuery>,
) -> Response {
    let raw = query.email.unwrap_or_default();
    reader_page(&state, &headers, &admin, raw.trim(), "").await
}

/// The look-up page for `raw` (nothing looked up when empty), with `notice` on top.
async fn reader_page(
    state: &AppState,
    headers: &HeaderMap,
    admin: &str,
    raw: &str,
    notice: &str,
) -> Response {
    let mut ctx = json!({
        "nav": "readers", "query": raw, "notice": notice, "error": "",
        "reader": null, "suppressed": null,
    });
    if !raw.is_empty() {
        match Email::parse(raw) {
            Err(e) => ctx["error"] = json!(format!("\"{raw}\" is not an address: {e}")),
            Ok(email) => {
                let detail = match state.store.reader_detail(&email, RECENT).await {
                    Ok(d) => d,
                    Err(e) => return unavailable(e),
                };
                let suppression = match state.store.suppression_of(&email).await {
                    Ok(s) => s,
                    Err(e) => return unavailable(e),
                };
                ctx["email"] = json!(email.as_str());
                ctx["suppressed"] = json!(suppression.map(|s| json!({
                    "reason": s.reason, "since": when(s.created_at),
                })));
                match detail {
                    None => ctx["error"] = json!(format!("No reader has the address {email}.")),
                    Some(detail) => {
                        let r = &detail.reader;
                        ctx["reader"] = json!({
                            "email": r.email.as_str(),
                            "state": r.state.as_str(),
                            "timezone": r.timezone.name(),
                            "regions": r.regions.iter().map(|(region, cadence)| json!({
                                "region": region.as_str(), "cadence": cadence.as_str(),
                            })).collect::<Vec<_>>(),
                            "created_at": when(r.created_at),
                            "confirmed_at": r.confirmed_at.map(when),
                            "consent": detail.consent.as_ref().map(|c| json!({
                                "given_at": when(c.given_at),
                                "ip": c.ip,
                                "text_version": c.text_version,
                                "confirmed_at": c.confirmed_at.map(when),
                            })),
                            "recent": detail.recent.iter().map(delivery).collect::<Vec<_>>(),
                        });
                    }
                }
            }
        }
    }
    page(
        state,
        headers,
        Some(admin),
        "web/admin/readers.html.j2",
        StatusCode::OK,
        ctx,
    )
}

/// `POST /admin/readers/erase`: erases the reader, as `herald subscribers remove`.
pub(super) async fn erase(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(form) = checked_form(&state, &headers, &body) else {
        return not_from_here();
    };
    let raw = form.get("email").trim().to_string();
    let Ok(email) = Email::parse(&raw) else {
        return reader_page(&state, &headers, &admin, &raw, "").await;
    };
    let notice = match state
        .store
        .remove_subscriber(&email, Timestamp::now())
        .await
    {
        Ok(true) => {
            tracing::info!(token = %admin, "reader erased from the dashboard");
            format!(
                "{email} was erased: their row, subscriptions and consent records are gone, their waiting mail cancelled, and the address suppressed."
            )
        }
        Ok(false) => format!("No reader has the address {email}; nothing was erased."),
        Err(e) => return unavailable(e),
    };
    reader_page(&state, &headers, &admin, email.as_str(), &notice).await
}

/// `POST /admin/readers/lift`: lifts the address's suppression.
pub(super) async fn lift(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(form) = checked_form(&state, &headers, &body) else {
        return not_from_here();
    };
    let raw = form.get("email").trim().to_string();
    let Ok(email) = Email::parse(&raw) else {
        return reader_page(&state, &headers, &admin, &raw, "").await;
    };
    let notice = match state.store.remove_suppression(&email).await {
        Ok(true) => {
            tracing::info!(token = %admin, "suppression lifted from the dashboard");
            format!("{email} is no longer suppressed; herald may mail it again.")
        }
        Ok(false) => format!("{email} is not on the suppression list."),
        Err(e) => return unavailable(e),
    };
    reader_page(&state, &headers, &admin, email.as_str(), &notice).await
}

/// `GET /admin/failures`: the latest failed and bounced rows with the server's replies.
pub(super) async fn failures(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
) -> Response {
    failures_page(&state, &headers, &admin, "").await
}

async fn failures_page(
    state: &AppState,
    headers: &HeaderMap,
    admin: &str,
    notice: &str,
) -> Response {
    let mut groups = Vec::new();
    for wanted in [DeliveryState::Failed, DeliveryState::Bounced] {
        let rows = match state.store.deliveries_in_state(wanted, RECENT).await {
            Ok(rows) => rows,
            Err(e) => return unavailable(e),
        };
        groups.push(json!({
            "state": wanted.as_str(),
            "rows": rows.iter().map(delivery).collect::<Vec<_>>(),
        }));
    }
    page(
        state,
        headers,
        Some(admin),
        "web/admin/failures.html.j2",
        StatusCode::OK,
        json!({ "nav": "failures", "groups": groups, "notice": notice, "limit": RECENT }),
    )
}

/// `POST /admin/failures/retry`: failed and expired rows wait again.
pub(super) async fn retry(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if checked_form(&state, &headers, &body).is_none() {
        return not_from_here();
    }
    let now = Timestamp::now();
    let expiry = state.config.expiry.of(DeliveryKind::Digest, None);
    let notice = match state.store.retry_failed(now, now + expiry).await {
        Ok(n) => {
            tracing::info!(token = %admin, requeued = n, "failed deliveries requeued from the dashboard");
            format!("{n} failed or expired row(s) are queued again.")
        }
        Err(e) => return unavailable(e),
    };
    failures_page(&state, &headers, &admin, &notice).await
}

/// `GET /admin/feeds`: each feed's last poll, last success and failures in a row.
pub(super) async fn feeds(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
) -> Response {
    let feeds = match state.store.feed_statuses().await {
        Ok(f) => f,
        Err(e) => return unavailable(e),
    };
    let rows: Vec<Value> = feeds
        .iter()
        .map(|f| {
            json!({
                "region": f.region.as_str(),
                "url": f.url,
                "health": feed_health(f),
                "last_polled_at": f.last_polled_at.map(when),
                "last_success_at": f.last_success_at.map(when),
                "next_poll_at": f.next_poll_at.map(when),
                "consecutive_failures": f.consecutive_failures,
                "last_error": f.last_error,
            })
        })
        .collect();
    page(
        &state,
        &headers,
        Some(&admin),
        "web/admin/feeds.html.j2",
        StatusCode::OK,
        json!({ "nav": "feeds", "feeds": rows }),
    )
}
