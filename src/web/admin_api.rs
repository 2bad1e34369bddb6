//! The admin API under `/admin/api`: a newsroom's CMS pushes articles here, and admins
//! start and steer manual sends (`sends`), look readers up, erase them and lift
//! suppressions (`readers`), read the ledger and the site's counts (`ledger`), and book
//! sponsor slots (`sponsors`).
//! `docs/admin-api.yaml` describes every route.
//!
//! Every route sits behind `Authorization: Bearer TOKEN`, checked by a middleware that
//! runs before any handler, so a caller without a valid token never gets its body read.
//! Bodies are capped at [`MAX_BODY_BYTES`], and fields herald does not know are refused.
//! Every answer is JSON; errors are `{"error": "a sentence"}`.

mod ledger;
mod readers;
mod sends;
mod sponsors;

pub(crate) use ledger::feed_health;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::api_token;
use crate::domain::{FeedItem, Timestamp};
use crate::ingest::{LinkRefusal, check_link, plain_summary, plain_title, plausible_date};
use crate::store::PushOutcome;

/// Largest request body the API reads: an article is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The name of the token that opened the request (for logs).
#[derive(Debug, Clone)]
struct TokenName(String);

/// The `/admin/api` routes, each behind the token check and the body cap.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/api/articles", post(push_article))
        .route("/admin/api/sends", post(sends::start).get(sends::list))
        .route("/admin/api/sends/{id}", get(sends::show))
        .route("/admin/api/sends/{id}/pause", post(sends::pause))
        .route("/admin/api/sends/{id}/resume", post(sends::resume))
        .route("/admin/api/sends/{id}/cancel", post(sends::cancel))
        .route("/admin/api/subscribers", get(readers::lookup))
        .route("/admin/api/subscribers/{email}", delete(readers::erase))
        .route("/admin/api/suppressions", get(readers::list_suppressions))
        .route("/admin/api/suppressions/{email}", delete(readers::lift))
        .route("/admin/api/deliveries", get(ledger::deliveries))
        .route("/admin/api/deliveries/retry", post(ledger::retry))
        .route("/admin/api/stats", get(ledger::stats))
        .route(
            "/admin/api/sponsors",
            get(sponsors::list).post(sponsors::add),
        )
        .route("/admin/api/sponsors/report", get(sponsors::report))
        .route("/admin/api/sponsors/{id}", delete(sponsors::remove))
        // route_layer: only matched routes ask for a token; unknown paths stay 404.
        // The layer added last runs first: the token, then the announced length.
        .route_layer(middleware::from_fn(refuse_oversized))
        .route_layer(middleware::from_fn_with_state(state, require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A refused request: its status and the sentence that says what to do instead.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// The answer when the database fails: logged, and a sentence for the caller.
fn unavailable(e: crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "an admin API request failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database is not answering; try again in a minute",
    )
}

/// Reads a JSON body into `T` (whose unknown fields are refused), or the 4xx that
/// says what to send instead (`expected`).
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, BytesRejection>,
    expected: &str,
) -> Result<T, ApiError> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, too_large_message()));
        }
        Err(rejection) => return Err(ApiError(rejection.status(), rejection.body_text())),
    };
    serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not what this route takes ({e}); {expected}"),
        )
    })
}

/// A `limit` query parameter: `default` when absent, at most `max`.
fn limit_param(raw: Option<&str>, default: i64, max: i64) -> Result<i64, String> {
    match raw {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("limit: \"{text}\" is not a number from 1 to {max}")),
    }
}

/// An instant as RFC 3339 text in UTC, to the second.
fn rfc3339(t: Timestamp) -> String {
    t.to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Refuses the request unless it carries a live token; runs before the body is read.
pub(super) async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let unauthorized = |message: &str| {
        let mut response = error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"herald\""),
        );
        response
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty());
    let Some(token) = presented else {
        return unauthorized(
            "this API needs an `Authorization: Bearer TOKEN` header (make a token with `herald admin token create NAME`)",
        );
    };
    match state
        .store
        .use_api_token(&api_token::hash(token), Timestamp::now())
        .await
    {
        Ok(Some(name)) => {
            request.extensions_mut().insert(TokenName(name));
            next.run(request).await
        }
        Ok(None) => unauthorized("the bearer token is not valid (it may have been revoked)"),
        Err(e) => {
            tracing::error!(error = %e, "token check failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is not answering; try again in a minute",
            )
        }
    }
}

/// Refuses a body announced larger than the cap without reading it (the cap on
/// reading still holds for bodies sent without a length).
async fn refuse_oversized(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    next.run(request).await
}

fn too_large() -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, too_large_message())
}

fn too_large_message() -> String {
    format!(
        "the body is larger than {MAX_BODY_BYTES} bytes; an article or a send request is a few hundred"
    )
}

/// The body of `POST /admin/api/articles`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    region: String,
    title: String,
    url: String,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    breaking: Option<bool>,
    #[serde(default)]
    published_at: Option<PublishedAt>,
}

/// RFC 3339 text, or Unix seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PublishedAt {
    Seconds(i64),
    Text(String),
}

/// Stores a pushed article like a feed item; `breaking: true` (or an alert category)
/// marks it for alerts at once.
async fn push_article(
    State(state): State<AppState>,
    Extension(TokenName(token)): Extension<TokenName>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large();
        }
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let request: PushRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a valid article ({e}); send JSON with region, title and url, and optionally summary, category, breaking and published_at"
                ),
            );
        }
    };
    let t = Timestamp::now();
    let item = match validate(&state, request, t.unix()) {
        Ok(item) => item,
        Err(message) => return error(StatusCode::UNPROCESSABLE_ENTITY, message),
    };
    let region = item.0;
    let item = item.1;
    match state.store.push_article(&region, &item, t).await {
        Ok(outcome) => {
            let (status, id, word) = match outcome {
                PushOutcome::Created(id) => (StatusCode::CREATED, id, "created"),
                PushOutcome::Updated(id) => (StatusCode::OK, id, "updated"),
                PushOutcome::Unchanged(id) => (StatusCode::OK, id, "unchanged"),
            };
            tracing::info!(%token, %region, id = id.get(), outcome = word, breaking = item.breaking, "article pushed");
            (
                status,
                Json(json!({
                    "id": id.get(),
                    "status": word,
                    "region": region.as_str(),
                    "url": item.link,
                    "breaking": item.breaking,
                })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "storing a pushed article failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the article could not be stored just now; try again in a minute",
            )
        }
    }
}

/// Checks the fields and turns them into what the store keeps, or says what is wrong.
fn validate(
    state: &AppState,
    request: PushRequest,
    now: i64,
) -> Result<(crate::domain::RegionSlug, FeedItem), String> {
    let region = state
        .config
        .regions
        .known(&request.region)
        .map_err(|e| format!("region: {e}"))?
        .slug
        .clone();
    let link = url::Url::parse(request.url.trim())
        .map_err(|_| LinkRefusal::NotWeb)
        .and_then(|url| check_link(&url, state.config.allow_private_links).map(|()| url))
        .map_err(|refusal| format!("url: \"{}\" cannot be mailed: {refusal}", request.url))?
        .to_string();
    let title = plain_title(&request.title);
    if title.is_empty() {
        return Err("title: is empty".into());
    }
    let summary = plain_summary(request.summary.as_deref().unwrap_or_default());
    let category = plain_title(request.category.as_deref().unwrap_or_default());
    let breaking = request.breaking.unwrap_or(false)
        || (!category.is_empty()
            && state
                .config
                .alerts
                .categories
                .contains(&category.to_lowercase()));
    let published_at = match request.published_at {
        None => None,
        Some(PublishedAt::Seconds(t)) => plausible_date(t, now),
        Some(PublishedAt::Text(text)) => {
            let t = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|_| {
                format!(
                    "published_at: \"{text}\" is not an RFC 3339 time (e.g. \"2026-11-21T08:00:00Z\") or Unix seconds"
                )
            })?;
            plausible_date(t.timestamp(), now)
        }
    };
    Ok((
        region,
        FeedItem {
            guid: link.clone(),
            link,
            title,
            summary,
            category,
            published_at,
            breaking,
        },
    ))
}
