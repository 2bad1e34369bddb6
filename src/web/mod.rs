//! Web: the HTTP listener of `herald daemon`.
//!
//! Health endpoints for operators, the unsubscribe link every email carries
//! (RFC 8058 one-click `POST`, plus a page with a button for people who click it),
//! and the token-protected admin API (`admin_api`).

pub mod admin_api;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::config::Config;
use crate::store::{Store, now};
use crate::tokens::{Purpose, Signer};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Verifies link tokens.
    pub signer: Arc<Signer>,
    /// The configuration (regions, alert categories).
    pub config: Arc<Config>,
}

/// The full router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/unsubscribe",
            get(unsubscribe_page).post(unsubscribe_one_click),
        )
        .merge(admin_api::routes(state.clone()))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.store.ping().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a\">\
         <h1>{title}</h1>{body}</body></html>"
    );
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn invalid_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This link is not valid",
        "<p>The link may be incomplete or too old. Use the link in a recent email.</p>",
    )
}

/// A page with a button: a GET never changes anything (link scanners follow GETs).
async fn unsubscribe_page(State(state): State<AppState>, Query(q): Query<TokenQuery>) -> Response {
    if state
        .signer
        .verify(Purpose::Unsubscribe, &q.token, now())
        .is_err()
    {
        return invalid_link();
    }
    let token = q.token.replace(['"', '<', '>', '&'], "");
    page(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop all emails from this site to your address?</p>\
             <form method=\"post\" action=\"/unsubscribe?token={token}\">\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\" style=\"font-size:1.1rem;padding:.6rem 1.2rem\">Unsubscribe</button></form>"
        ),
    )
}

/// RFC 8058 one-click: 200, no cookie, no redirect, repeatable.
async fn unsubscribe_one_click(
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let Ok(subscriber_id) = state.signer.verify(Purpose::Unsubscribe, &q.token, now()) else {
        return invalid_link();
    };
    match state.store.unsubscribe(subscriber_id, now()).await {
        Ok(_) => page(
            StatusCode::OK,
            "You are unsubscribed",
            "<p>You will get no more emails from us. Changed your mind? Sign up again on our home page.</p>",
        ),
        Err(error) => {
            tracing::error!(%error, "unsubscribe failed");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record your request just now. Please try again in a minute.</p>",
            )
        }
    }
}
