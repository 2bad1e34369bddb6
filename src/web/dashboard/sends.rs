//! The dashboard's sends: the list with progress bars, one send (a dry run's readers
//! per zone and its rendered sample, then the button that confirms it), the send form,
//! pause, resume and cancel, and the JSON the pages poll for progress. Sends start
//! through [`ManualSends`](crate::sends::ManualSends), as from the API and the CLI.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::{AdminName, checked_form, not_from_here, page, plain, unavailable, when};
use crate::domain::{Cadence, DeliveryState, Email, SendId, SendState, Timestamp};
use crate::sends::SendError;
use crate::store::{ManualSend, NewSend, SendChange, StoreError};
use crate::web::AppState;
use crate::web::pages::cadence_options;

/// How many sends the list shows.
const LISTED: i64 = 50;

/// A send's progress: what the bars show and the pages poll.
fn progress_json(send: &ManualSend) -> Value {
    let total = send.counts.total();
    let unsent = send.counts.unsent();
    let counts: serde_json::Map<String, Value> = send
        .counts
        .by_state
        .iter()
        .map(|(state, n)| (state.as_str().to_string(), json!(n)))
        .collect();
    json!({
        "id": send.id.get(),
        "state": send.state.as_str(),
        "total": total,
        "finished": total - unsent,
        "counts": counts,
        "over": matches!(send.state, SendState::Done | SendState::Cancelled),
    })
}

/// A send as the pages show it.
fn send_view(send: &ManualSend) -> Value {
    let mut view = progress_json(send);
    let kind = if send.dry_run {
        "dry run"
    } else if send.test_address.is_some() {
        "test copy"
    } else {
        "send"
    };
    let extra = json!({
        "region": send.region.as_str(),
        "cadence": send.cadence.as_str(),
        "kind": kind,
        "dry_run": send.dry_run,
        "to": send.test_address.as_ref().map(Email::as_str),
        "started_by": send.started_by,
        "started_at": when(send.started_at),
        "finished_at": send.finished_at.map(when),
        "error": send.error,
        "can_pause": send.state == SendState::Sending,
        "can_resume": send.state == SendState::Paused,
        "can_cancel": matches!(send.state, SendState::Sending | SendState::Paused),
        "counts_list": DeliveryState::ALL.iter()
            .map(|state| json!({ "state": state.as_str(), "count": send.counts.of(*state) }))
            .collect::<Vec<_>>(),
    });
    if let (Value::Object(view), Value::Object(extra)) = (&mut view, extra) {
        view.extend(extra);
    }
    view
}

/// `GET /admin/sends`: the latest sends with their progress.
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
) -> Response {
    match state.store.sends(LISTED).await {
        Ok(sends) => {
            let live = sends
                .iter()
                .any(|s| !matches!(s.state, SendState::Done | SendState::Cancelled));
            page(
                &state,
                &headers,
                Some(&admin),
                "web/admin/sends.html.j2",
                StatusCode::OK,
                json!({
                    "nav": "sends",
                    "sends": sends.iter().map(send_view).collect::<Vec<_>>(),
                    "live": live,
                }),
            )
        }
        Err(e) => unavailable(e),
    }
}

/// The send form, with `error` about the last attempt and the fields as they were.
fn form_page(
    state: &AppState,
    headers: &HeaderMap,
    admin: &str,
    status: StatusCode,
    fields: Value,
    error: &str,
) -> Response {
    let regions: Vec<Value> = state
        .config
        .regions
        .iter()
        .map(|r| json!({ "slug": r.slug.as_str(), "name": r.name }))
        .collect();
    page(
        state,
        headers,
        Some(admin),
        "web/admin/send_form.html.j2",
        status,
        json!({
            "nav": "new",
            "regions": regions,
            "cadences": cadence_options(),
            "fields": fields,
            "error": error,
        }),
    )
}

/// `GET /admin/sends/new`.
pub(super) async fn form(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
) -> Response {
    let fields = json!({ "region": "", "cadence": "daily", "to": "" });
    form_page(&state, &headers, &admin, StatusCode::OK, fields, "")
}

/// `POST /admin/sends`: a dry run of the form's region and cadence, or with an
/// address a test copy to it. Either way nothing reaches the readers: the page it
/// leads to offers the real send.
pub(super) async fn start(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(form) = checked_form(&state, &headers, &body) else {
        return not_from_here();
    };
    let fields = json!({
        "region": form.get("region"),
        "cadence": form.get("cadence"),
        "to": form.get("to").trim(),
    });
    let refuse = |message: String| {
        form_page(
            &state,
            &headers,
            &admin,
            StatusCode::UNPROCESSABLE_ENTITY,
            fields.clone(),
            &message,
        )
    };
    let region = match state.config.regions.known(form.get("region")) {
        Ok(region) => region.slug.clone(),
        Err(e) => return refuse(format!("Region: {e}.")),
    };
    let cadence: Cadence = match form.get("cadence").parse() {
        Ok(c) => c,
        Err(e) => return refuse(format!("Cadence: {e}.")),
    };
    let to = form.get("to").trim();
    let test_address = if to.is_empty() {
        None
    } else {
        match Email::parse(to) {
            Ok(email) => Some(email),
            Err(e) => return refuse(format!("Test address: {e}.")),
        }
    };
    let new = NewSend {
        started_by: admin.clone(),
        region,
        cadence,
        dry_run: test_address.is_none(),
        test_address,
        idempotency_key: None,
    };
    match begin(&state, new).await {
        Ok(send) => Redirect::to(&format!("/admin/sends/{}", send.id)).into_response(),
        Err(Refusal::Say(message)) => refuse(message),
        Err(Refusal::Store(e)) => unavailable(e),
    }
}

/// Why a send did not start.
enum Refusal {
    /// A sentence for the form.
    Say(String),
    /// The database failed.
    Store(StoreError),
}

/// Starts `new` in a task of its own, so a browser that goes away cannot drop the
/// plan halfway and leave the send `planning`.
async fn begin(state: &AppState, new: NewSend) -> Result<ManualSend, Refusal> {
    let Some(sends) = state.sends.clone() else {
        return Err(Refusal::Say(
            "Manual sends are started by the daemon; this server runs without it.".into(),
        ));
    };
    let started = tokio::spawn(async move { sends.start(new, Timestamp::now()).await }).await;
    match started {
        Ok(Ok(started)) => {
            let send = &started.send;
            if started.fresh {
                tracing::info!(
                    token = %send.started_by, send = send.id.get(), region = %send.region,
                    state = %send.state, emails = send.counts.total(),
                    "manual send started from the dashboard"
                );
            }
            Ok(started.send)
        }
        Ok(Err(SendError::Store(e))) => Err(Refusal::Store(e)),
        Ok(Err(e)) => Err(Refusal::Say(e.to_string())),
        Err(e) => {
            tracing::error!(error = %e, "planning a manual send panicked");
            Err(Refusal::Say(
                "The send could not be planned; the daemon's log says why.".into(),
            ))
        }
    }
}

/// Why the send in the path could not be shown.
enum Missing {
    /// There is no such send.
    NotFound(String),
    /// The database failed.
    Store(StoreError),
}

impl IntoResponse for Missing {
    fn into_response(self) -> Response {
        match self {
            Missing::NotFound(raw) => plain(
                StatusCode::NOT_FOUND,
                &format!("There is no send {raw:?}; the sends page lists them."),
            ),
            Missing::Store(e) => unavailable(e),
        }
    }
}

/// The send in the path.
async fn find(state: &AppState, raw: &str) -> Result<ManualSend, Missing> {
    let id: SendId = raw.parse().map_err(|_| Missing::NotFound(raw.into()))?;
    match state.store.send(id).await {
        Ok(Some(send)) => Ok(send),
        Ok(None) => Err(Missing::NotFound(raw.into())),
        Err(e) => Err(Missing::Store(e)),
    }
}

/// `GET /admin/sends/{id}`: the send's progress; for a dry run its readers per zone,
/// its rendered sample and the button that makes it real.
pub(super) async fn show(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    let send = match find(&state, &raw).await {
        Ok(send) => send,
        Err(missing) => return missing.into_response(),
    };
    let report: Value = send
        .report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null);
    page(
        &state,
        &headers,
        Some(&admin),
        "web/admin/send.html.j2",
        StatusCode::OK,
        json!({ "nav": "sends", "send": send_view(&send), "report": report }),
    )
}

/// `GET /admin/sends/{id}/progress`: the send's counts as JSON, for the bars' script.
pub(super) async fn progress(State(state): State<AppState>, Path(raw): Path<String>) -> Response {
    match find(&state, &raw).await {
        Ok(send) => Json(progress_json(&send)).into_response(),
        Err(missing) => missing.into_response(),
    }
}

/// `POST /admin/sends/{id}/confirm`: the real send of a dry run's region and cadence.
/// Confirming the same dry run again finds the send it started, not a second one.
pub(super) async fn confirm(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    if checked_form(&state, &headers, &body).is_none() {
        return not_from_here();
    }
    let dry = match find(&state, &raw).await {
        Ok(send) => send,
        Err(missing) => return missing.into_response(),
    };
    if !dry.dry_run {
        return plain(
            StatusCode::CONFLICT,
            &format!(
                "Send {} is not a dry run; only a dry run can be confirmed.",
                dry.id
            ),
        );
    }
    let new = NewSend {
        started_by: admin.clone(),
        region: dry.region.clone(),
        cadence: dry.cadence,
        dry_run: false,
        test_address: None,
        idempotency_key: Some(format!("dashboard-confirm-{}", dry.id)),
    };
    match begin(&state, new).await {
        Ok(send) => Redirect::to(&format!("/admin/sends/{}", send.id)).into_response(),
        Err(Refusal::Say(message)) => plain(StatusCode::UNPROCESSABLE_ENTITY, &message),
        Err(Refusal::Store(e)) => unavailable(e),
    }
}

/// `POST /admin/sends/{id}/pause`, `/resume` and `/cancel`.
pub(super) async fn act(
    State(state): State<AppState>,
    Extension(AdminName(admin)): Extension<AdminName>,
    headers: HeaderMap,
    Path((raw, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if checked_form(&state, &headers, &body).is_none() {
        return not_from_here();
    }
    let send = match find(&state, &raw).await {
        Ok(send) => send,
        Err(missing) => return missing.into_response(),
    };
    let now = Timestamp::now();
    let (change, word) = match action.as_str() {
        "pause" => (state.store.pause_send(send.id, now).await, "paused"),
        "resume" => (state.store.resume_send(send.id, now).await, "resumed"),
        "cancel" => (state.store.cancel_send(send.id, now).await, "cancelled"),
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "A send can be paused, resumed or cancelled.",
            );
        }
    };
    match change {
        Ok(SendChange::Changed(_)) => {
            tracing::info!(token = %admin, send = send.id.get(), "manual send {word} from the dashboard");
            Redirect::to(&format!("/admin/sends/{}", send.id)).into_response()
        }
        Ok(SendChange::Refused(now)) => plain(
            StatusCode::CONFLICT,
            &format!(
                "Send {} is {}, so it cannot be {word}: {}.",
                now.id,
                now.state,
                crate::sends::refusal_hint(now.state)
            ),
        ),
        Ok(SendChange::NotFound) => plain(StatusCode::NOT_FOUND, "There is no such send."),
        Err(e) => unavailable(e),
    }
}
