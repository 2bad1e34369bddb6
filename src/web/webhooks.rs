//! `POST /webhooks/ses` and `POST /webhooks/mailgun`: the relays' reports of bounces
//! and complaints. A body is believed only once its signature is checked
//! (`crate::bounces::webhooks`); a bad one gets 401 and changes nothing, and a report
//! seen before changes nothing either (`Store::record_bounce`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::AppState;
use crate::bounces::webhooks::{SnsMessage, WebhookError, mailgun_report, ses_report};
use crate::bounces::{BouncePolicy, BounceReport, Recorded};
use crate::domain::Timestamp;

/// The largest webhook body read: SES and Mailgun events are a few kilobytes, with
/// the original headers.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// The two routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/ses", post(ses))
        .route("/webhooks/mailgun", post(mailgun))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn refused(error: WebhookError) -> Response {
    let status = match &error {
        WebhookError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        WebhookError::Malformed(_) => StatusCode::BAD_REQUEST,
        WebhookError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    tracing::warn!(%error, status = status.as_u16(), "a webhook was refused");
    answer(status, json!({ "error": error.to_string() }))
}

/// Records a checked report and says what became of it.
async fn record(state: &AppState, report: Option<BounceReport>) -> Response {
    let Some(report) = report else {
        return answer(StatusCode::OK, json!({ "recorded": "ignored" }));
    };
    let policy = BouncePolicy::new(&state.config.bounces, &state.signer);
    match state.store.record_bounce(&report, &policy).await {
        Ok(recorded) => {
            let what = match recorded {
                Recorded::Applied { .. } => "applied",
                Recorded::Duplicate => "duplicate",
                Recorded::Unmatched => "unmatched",
            };
            tracing::info!(
                source = report.source.as_str(),
                kind = report.kind.as_str(),
                id = %report.source_id,
                outcome = what,
                "bounce report"
            );
            answer(StatusCode::OK, json!({ "recorded": what }))
        }
        Err(error) => {
            tracing::error!(%error, "recording a bounce report failed");
            // 503: the relay sends it again later, and a replay is harmless.
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "the database is not answering; try again later" }),
            )
        }
    }
}

/// `POST /webhooks/mailgun`.
async fn mailgun(State(state): State<AppState>, body: Bytes) -> Response {
    let Some(key) = state.config.bounces.mailgun_signing_key.as_ref() else {
        return refused(WebhookError::Unauthorized(
            "no bounces.mailgun_signing_key is set, so no Mailgun webhook is believed".into(),
        ));
    };
    match mailgun_report(key.expose().as_bytes(), &body, Timestamp::now()) {
        Ok(report) => record(&state, report).await,
        Err(error) => refused(error),
    }
}

/// `POST /webhooks/ses`: SNS messages. A subscription is confirmed (a GET of its
/// `SubscribeURL`) once its signature is checked; a notification's SES report is
/// recorded.
async fn ses(State(state): State<AppState>, body: Bytes) -> Response {
    let message = match SnsMessage::parse(&body) {
        Ok(message) => message,
        Err(error) => return refused(error),
    };
    let bounces = &state.config.bounces;
    let cert = match state
        .sns
        .certificate(bounces, &message.signing_cert_url)
        .await
    {
        Ok(cert) => cert,
        Err(error) => return refused(error),
    };
    if let Err(error) = message.verify(&cert) {
        return refused(error);
    }
    match message.kind.as_str() {
        "SubscriptionConfirmation" => {
            let url = message.subscribe_url.as_deref().unwrap_or("");
            match state.sns.confirm(bounces, url).await {
                Ok(()) => {
                    tracing::info!(topic = %message.topic_arn, "SNS subscription confirmed");
                    answer(StatusCode::OK, json!({ "subscription": "confirmed" }))
                }
                Err(error) => refused(error),
            }
        }
        "Notification" => match ses_report(&message) {
            Ok(report) => record(&state, report).await,
            Err(error) => refused(error),
        },
        _ => answer(StatusCode::OK, json!({ "recorded": "ignored" })),
    }
}
