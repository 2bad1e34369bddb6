//! `/admin/sponsors`: the bookings with what each went out in, a form to book one (the
//! same check as `herald sponsors add`), and removing one.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::{AdminName, checked_form, not_from_here, page, unavailable};
use crate::domain::{NewSponsor, SponsorFields, SponsorId, Timestamp};
use crate::web::AppState;
use crate::web::forms::Form;

/// The form's fields as typed, shown again with an error.
const FIELDS: [&str; 9] = [
    "regions", "from", "to", "label", "headline", "body", "link", "image", "alt",
];

fn typed(form: Option<&Form>) -> Value {
    let mut fields = serde_json::Map::new();
    for name in FIELDS {
        fields.insert(name.into(), json!(form.map_or("", |f| f.get(name))));
    }
    Value::Object(fields)
}

async fn sponsors_page(
    state: &AppState,
    headers: &HeaderMap,
    admin: &str,
    notice: &str,
    error: &str,
    form: Option<&Form>,
) -> Response {
    let rows = match state.store.sponsors().await {
        Ok(rows) => rows,
        Err(e) => return unavailable(e),
    };
    let report = match state.store.sponsor_report().await {
        Ok(report) => report,
        Err(e) => return unavailable(e),
    };
    let sponsors: Vec<Value> = rows
        .iter()
        .map(|row| {
            let counts = report.iter().find(|r| r.id == row.block.id.get());
            json!({
                "id": row.block.id.get(),
                "from": row.starts_on.to_string(),
                "to": row.ends_on.to_string(),
                "regions": row.regions.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                "label": row.block.label,
                "headline": row.block.headline,
                "link": row.block.link,
                "sent": counts.map_or(0, |c| c.sent),
                "waiting": counts.map_or(0, |c| c.waiting),
            })
        })
        .collect();
    let status = if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(
        state,
        headers,
        Some(admin),
        "web/admin/sponsors.html.j2",
        status,
        json!({
            "nav": "sponsors", "sponsors": sponsors, "notice": notice, "error": error,
            "fields": typed(form),
        }),
    )
}

/// `GET /admin/sponsors`.
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
) -> Response {
    sponsors_page(&state, &headers, &admin, "", "", None).await
}

/// `POST /admin/sponsors`: books a sponsor, or shows the form again with the sentence
/// that says what to change.
pub(super) async fn add(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(form) = checked_form(&state, &headers, &body) else {
        return not_from_here();
    };
    let regions: Vec<String> = form
        .get("regions")
        .split([',', ' '])
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect();
    for region in &regions {
        if let Err(message) = state.config.regions.known(region) {
            return sponsors_page(&state, &headers, &admin, "", &message, Some(&form)).await;
        }
    }
    let optional = |name: &str| Some(form.get(name).to_string()).filter(|v| !v.trim().is_empty());
    let fields = SponsorFields {
        regions,
        from: form.get("from").into(),
        to: form.get("to").into(),
        label: form.get("label").into(),
        headline: form.get("headline").into(),
        body: form.get("body").into(),
        link: form.get("link").into(),
        image: optional("image"),
        alt: optional("alt"),
    };
    let booking = match NewSponsor::parse(fields) {
        Ok(booking) => booking,
        Err(e) => {
            let message = e.to_string();
            return sponsors_page(&state, &headers, &admin, "", &message, Some(&form)).await;
        }
    };
    let notice = match state.store.add_sponsor(&booking, Timestamp::now()).await {
        Ok(id) => {
            tracing::info!(token = %admin, sponsor = %id, "sponsor booked from the dashboard");
            format!("Booked sponsor {id}.")
        }
        Err(e) => return unavailable(e),
    };
    sponsors_page(&state, &headers, &admin, &notice, "", None).await
}

/// `POST /admin/sponsors/remove`.
pub(super) async fn remove(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(form) = checked_form(&state, &headers, &body) else {
        return not_from_here();
    };
    let notice = match form.get("id").parse::<SponsorId>() {
        Err(message) => message,
        Ok(id) => match state.store.remove_sponsor(id).await {
            Ok(true) => {
                tracing::info!(token = %admin, sponsor = %id, "sponsor removed from the dashboard");
                format!("Removed sponsor {id}.")
            }
            Ok(false) => format!("There is no sponsor {id}."),
            Err(e) => return unavailable(e),
        },
    };
    sponsors_page(&state, &headers, &admin, &notice, "", None).await
}
