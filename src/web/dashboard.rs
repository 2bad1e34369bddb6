//! The admin dashboard under `/admin`: server-rendered pages (`templates/web/admin/`)
//! over the same store functions as the admin API, so every number on them is read
//! from the ledger. Admins log in with an admin API token and get a session cookie
//! (`session`); every page needs it, and every form carries a CSRF token (`forms`).
//!
//! Pages: the queue by state (`views`), sends with their progress and the send form
//! (`sends`), reader look-up with erase and lift-suppression, recent failures with
//! their SMTP replies, and per-feed health (`views`).

mod sends;
mod session;
mod sponsors;
mod views;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::AppState;
use super::forms::{self, Form, csrf_ok, csrf_token, same_origin};
use super::pages::{Extra, PageError, html, nonce};
use crate::api_token;
use crate::compose::html_formatter;
use crate::config::MailConfig;
use crate::domain::Timestamp;

/// The dashboard's templates; each must exist and parse.
const TEMPLATES: [&str; 11] = [
    "web/admin/layout.html.j2",
    "web/admin/_poll.html.j2",
    "web/admin/login.html.j2",
    "web/admin/queue.html.j2",
    "web/admin/sends.html.j2",
    "web/admin/send.html.j2",
    "web/admin/send_form.html.j2",
    "web/admin/readers.html.j2",
    "web/admin/failures.html.j2",
    "web/admin/feeds.html.j2",
    "web/admin/sponsors.html.j2",
];

/// The loaded dashboard templates (HTML auto-escaped, as the reader pages are).
pub struct DashboardPages {
    env: minijinja::Environment<'static>,
}

impl DashboardPages {
    /// Loads `web/admin/*.html.j2`, each from `mail.templates_dir` when there, else
    /// built in.
    pub fn load(mail: &MailConfig) -> Result<DashboardPages, PageError> {
        let mut env = minijinja::Environment::new();
        env.set_formatter(html_formatter);
        for name in TEMPLATES {
            let source = crate::templates::load(mail.templates_dir.as_deref(), name)?;
            let origin = source.origin();
            env.add_template_owned(name.to_string(), source.text)
                .map_err(|e| PageError::Template {
                    name: name.to_string(),
                    message: format!("{e} ({origin})"),
                })?;
        }
        let pages = DashboardPages { env };
        for (name, ctx) in samples() {
            pages.render(name, &ctx).map_err(|e| {
                let origin = crate::templates::load(mail.templates_dir.as_deref(), name)
                    .map(|source| source.origin())
                    .unwrap_or_default();
                PageError::Template {
                    name: name.to_string(),
                    message: match e.line() {
                        Some(line) => format!("line {line}: {e} ({origin})"),
                        None => format!("{e} ({origin})"),
                    },
                }
            })?;
        }
        Ok(pages)
    }

    /// Renders one page.
    fn render(&self, name: &str, ctx: &Value) -> Result<String, minijinja::Error> {
        self.env
            .get_template(name)?
            .render(minijinja::value::Serde(ctx))
    }
}

/// Each page with sample data covering its branches, rendered once at start-up so a
/// broken override stops herald instead of an admin's page.
fn samples() -> Vec<(&'static str, Value)> {
    let base = |more: Value| {
        let mut ctx = json!({
            "site": { "name": "Sample <News>", "postal_address": "1 Sample St" },
            "admin": "desk", "csrf": "sample", "nonce": "sample", "nav": "queue",
        });
        if let (Value::Object(ctx), Value::Object(more)) = (&mut ctx, more) {
            ctx.extend(more);
        }
        ctx
    };
    let delivery = json!({
        "id": 1, "email": "a@example.org", "kind": "digest", "state": "failed", "attempts": 3,
        "smtp_reply": "550 5.1.1 <a@example.org>: no such user", "last_error": null,
        "updated_at": "2027-01-13 23:00:00 UTC", "send_id": 2,
    });
    let send = |kind: &str, dry_run: bool, to: Option<&str>| {
        json!({
            "id": 2, "state": "sending", "total": 10, "finished": 4, "over": false,
            "counts": { "sent": 4, "queued": 6 }, "region": "town", "cadence": "daily",
            "kind": kind, "dry_run": dry_run, "to": to, "started_by": "desk",
            "started_at": "2027-01-13 23:00:00 UTC", "finished_at": null, "error": "Sample error.",
            "can_pause": true, "can_resume": true, "can_cancel": true,
            "counts_list": [{ "state": "sent", "count": 4 }],
        })
    };
    let report = json!({
        "readers": 10, "articles": 5, "zones": [{ "zone": "UTC", "readers": 10 }],
        "sample": { "to": "a@example.org", "subject": "Sample", "html": "<p>Sample</p>" },
        "reply": "250 OK",
    });
    vec![
        (
            "web/admin/login.html.j2",
            base(json!({ "admin": null, "error": "Sample error." })),
        ),
        (
            "web/admin/queue.html.j2",
            base(json!({
                "states": [{ "state": "queued", "count": 1, "final": false }], "total": 1,
                "oldest": { "at": "2027-01-13 23:00:00 UTC", "minutes": 5 },
                "last_error": { "at": "2027-01-13 23:00:00 UTC", "text": "Sample error." },
            })),
        ),
        (
            "web/admin/sends.html.j2",
            base(json!({
                "sends": [send("send", false, None), send("dry run", true, None)], "live": true,
            })),
        ),
        (
            "web/admin/send.html.j2",
            base(json!({ "send": send("dry run", true, None), "report": report })),
        ),
        (
            "web/admin/send.html.j2",
            base(
                json!({ "send": send("test copy", false, Some("a@example.org")), "report": report }),
            ),
        ),
        (
            "web/admin/send.html.j2",
            base(json!({ "send": send("send", false, None), "report": null })),
        ),
        (
            "web/admin/send_form.html.j2",
            base(json!({
                "regions": [{ "slug": "town", "name": "Town" }],
                "cadences": [{ "value": "daily", "label": "Daily digest" }],
                "fields": { "region": "town", "cadence": "daily", "to": "" }, "error": "Sample error.",
            })),
        ),
        (
            "web/admin/readers.html.j2",
            base(json!({
                "query": "a@example.org", "notice": "Sample notice.", "error": "Sample error.",
                "email": "a@example.org",
                "suppressed": { "reason": "bounced", "since": "2027-01-13 23:00:00 UTC" },
                "reader": {
                    "email": "a@example.org", "state": "confirmed", "timezone": "UTC",
                    "regions": [{ "region": "town", "cadence": "daily" }],
                    "created_at": "2027-01-13 23:00:00 UTC", "confirmed_at": null,
                    "consent": { "given_at": "2027-01-13 23:00:00 UTC", "ip": "192.0.2.1", "text_version": "v1", "confirmed_at": null },
                    "recent": [delivery.clone()],
                },
            })),
        ),
        (
            "web/admin/failures.html.j2",
            base(json!({
                "groups": [{ "state": "failed", "rows": [delivery] }, { "state": "bounced", "rows": [] }],
                "notice": "Sample notice.", "limit": 50,
            })),
        ),
        (
            "web/admin/feeds.html.j2",
            base(json!({
                "feeds": [{
                    "region": "town", "url": "https://example.org/feed", "health": "never_polled",
                    "last_polled_at": null, "last_success_at": null, "next_poll_at": null,
                    "consecutive_failures": 0, "last_error": "Sample error.",
                }],
            })),
        ),
        (
            "web/admin/sponsors.html.j2",
            base(json!({
                "nav": "sponsors", "notice": "Sample notice.", "error": "Sample error.",
                "sponsors": [{
                    "id": 1, "from": "2027-01-14", "to": "2027-01-20", "regions": ["town"],
                    "label": "Sponsored by <Sample>", "headline": "Sample headline",
                    "link": "https://example.org/", "sent": 3, "waiting": 1,
                }],
                "fields": {
                    "regions": "town", "from": "", "to": "", "label": "", "headline": "",
                    "body": "", "link": "", "image": "", "alt": "",
                },
            })),
        ),
    ]
}

/// The admin a request's session belongs to: the name of the token it logged in with.
#[derive(Debug, Clone)]
struct AdminName(String);

/// The `/admin` routes: the login page is open, everything else needs a session.
pub fn routes(state: AppState) -> Router<AppState> {
    let behind_login = Router::new()
        .route("/admin", get(views::queue))
        .route("/admin/sends", get(sends::list).post(sends::start))
        .route("/admin/sends/new", get(sends::form))
        .route("/admin/sends/{id}", get(sends::show))
        .route("/admin/sends/{id}/progress", get(sends::progress))
        .route("/admin/sends/{id}/confirm", post(sends::confirm))
        .route("/admin/sends/{id}/{action}", post(sends::act))
        .route("/admin/readers", get(views::readers))
        .route("/admin/readers/erase", post(views::erase))
        .route("/admin/readers/lift", post(views::lift))
        .route("/admin/failures", get(views::failures))
        .route("/admin/failures/retry", post(views::retry))
        .route("/admin/feeds", get(views::feeds))
        .route("/admin/sponsors", get(sponsors::list).post(sponsors::add))
        .route("/admin/sponsors/remove", post(sponsors::remove))
        .route("/admin/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/admin/login", get(login_page).post(login))
        .merge(behind_login)
        .route_layer(middleware::from_fn(refuse_oversized))
        .layer(DefaultBodyLimit::max(forms::MAX_FORM_BYTES))
}

/// Whether cookies must say `Secure`: the site is served over https.
fn secure(state: &AppState) -> bool {
    state.config.http.public_url.scheme() == "https"
}

/// Sends a request without a live session to the login page; for a live one, notes
/// the admin's name for the handlers.
async fn require_session(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = Timestamp::now();
    let Some(session) = session::read(request.headers(), &state.signer, now) else {
        return to_login();
    };
    match state.store.use_api_token(&session.token_hash, now).await {
        Ok(Some(name)) => {
            request.extensions_mut().insert(AdminName(name));
            next.run(request).await
        }
        // The token was revoked: the session ends with it.
        Ok(None) => {
            let mut response = to_login();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session::close(secure(&state)));
            response
        }
        Err(e) => unavailable(e),
    }
}

fn to_login() -> Response {
    Redirect::to("/admin/login").into_response()
}

/// Refuses a body announced larger than a form can be, before reading it.
async fn refuse_oversized(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > forms::MAX_FORM_BYTES as u64) {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The form sent more than the dashboard accepts.",
        );
    }
    next.run(request).await
}

/// A short plain-text answer.
fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

/// The answer when the database fails: logged, and a sentence for the admin.
fn unavailable(e: crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "a dashboard request failed");
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "The database is not answering. Nothing was changed; try again in a minute.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(60));
    response
}

/// Reads a posted form when it came from a dashboard page: its CSRF token matches the
/// browser's cookie, and the browser does not say another site sent it.
fn checked_form(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Option<Form> {
    let form = Form::parse(body);
    (same_origin(headers, &state.config.http.public_url)
        && csrf_ok(headers, &state.signer, form.get("csrf")))
    .then_some(form)
}

/// The answer to a form that did not come from a dashboard page.
fn not_from_here() -> Response {
    plain(
        StatusCode::FORBIDDEN,
        "This form did not come from a dashboard page (or the page is too old). Nothing was changed; reload the page and try again.",
    )
}

/// One dashboard page: `ctx` plus what every page shows (the site, the admin, the
/// form token, the navigation), with the headers every page gets.
fn page(
    state: &AppState,
    headers: &HeaderMap,
    admin: Option<&str>,
    name: &str,
    status: StatusCode,
    mut ctx: Value,
) -> Response {
    let csrf = csrf_token(headers, &state.signer, secure(state));
    let nonce = nonce();
    if let Value::Object(map) = &mut ctx {
        map.insert("site".into(), json!(state.pages.site()));
        map.insert("admin".into(), json!(admin));
        map.insert("csrf".into(), json!(csrf.token));
        map.insert("nonce".into(), json!(nonce));
    }
    match state.dashboard.render(name, &ctx) {
        Ok(body) => html(status, body, Extra::form(nonce, csrf.set_cookie)),
        Err(error) => {
            tracing::error!(%error, template = name, "a dashboard template failed to render");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sorry, this page is broken; the daemon's log says why.",
            )
        }
    }
}

/// An instant as the dashboard shows it: UTC, to the second.
fn when(t: Timestamp) -> String {
    t.to_utc().format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `GET /admin/login`.
async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    page(
        &state,
        &headers,
        None,
        "web/admin/login.html.j2",
        StatusCode::OK,
        json!({ "error": "" }),
    )
}

/// `POST /admin/login`: an admin token opens a session.
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(form) = checked_form(&state, &headers, &body) else {
        return not_from_here();
    };
    let token = form.get("token").trim();
    let refused = |message: &str| {
        page(
            &state,
            &headers,
            None,
            "web/admin/login.html.j2",
            StatusCode::UNAUTHORIZED,
            json!({ "error": message }),
        )
    };
    if token.is_empty() {
        return refused("Paste an admin token (make one with `herald admin token create NAME`).");
    }
    let hash = api_token::hash(token);
    let now = Timestamp::now();
    match state.store.use_api_token(&hash, now).await {
        Ok(Some(name)) => {
            tracing::info!(token = %name, "dashboard login");
            let mut response = Redirect::to("/admin").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                session::open(&state.signer, &hash, now, secure(&state)),
            );
            response
        }
        Ok(None) => refused("That token is not valid (it may have been revoked)."),
        Err(e) => unavailable(e),
    }
}

/// `POST /admin/logout`: clears the session.
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if checked_form(&state, &headers, &body).is_none() {
        return not_from_here();
    }
    let mut response = Redirect::to("/admin/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::close(secure(&state)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn mail(templates_dir: Option<&Path>) -> MailConfig {
        let mut mail = Config::from_toml(
            Path::new("config/herald.toml"),
            r#"
            [mail]
            from = "Demo News <news@demo.example>"
            postal_address = "1 Main St, Riverton"
            [[regions]]
            slug = "town"
            name = "Town"
            "#,
            std::iter::empty(),
        )
        .unwrap()
        .mail;
        mail.templates_dir = templates_dir.map(Path::to_path_buf);
        mail
    }

    #[test]
    fn the_built_in_dashboard_loads_and_escapes() {
        let pages = DashboardPages::load(&mail(None)).unwrap();
        for (name, ctx) in samples() {
            let html = pages.render(name, &ctx).unwrap();
            assert!(!html.contains("Sample <News>"), "{name} escapes: {html}");
        }
    }

    #[test]
    fn a_broken_dashboard_page_names_itself_and_its_file_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("web/admin")).unwrap();
        let file = dir.path().join("web/admin/feeds.html.j2");
        std::fs::write(
            &file,
            "{% for f in feeds %}{{ f.url | no_such_filter }}{% endfor %}",
        )
        .unwrap();
        let err = DashboardPages::load(&mail(Some(dir.path())))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("web/admin/feeds.html.j2"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}
