//! Web: the HTTP listener of `herald daemon`.
//!
//! Readers sign themselves up (`signup`: the form, the community search), follow the
//! links in their emails (`links`: confirm, preferences, RFC 8058 one-click
//! unsubscribe), and see pages rendered from `templates/web` (`pages`). Operators get
//! health endpoints; the newsroom's CMS gets the token-protected admin API (`admin_api`).

pub mod admin_api;
mod dashboard;
mod forms;
mod links;
mod metrics;
mod pages;
mod regions;
pub mod server;
mod signup;
mod time_limits;
mod webhooks;

pub use dashboard::DashboardPages;
pub use pages::{PageError, Pages};
pub use regions::RegionIndex;
pub use signup::{SIGNUPS_OVERDUE_AFTER, run_queued_signups};

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::{AlertsConfig, Expiry, HttpConfig, MailConfig, Regions, SignupConfig};
use crate::domain::Timestamp;
use crate::sends::ManualSends;
use crate::store::{Store, StoreError};
use crate::supervise::Health;
use crate::tokens::Signer;
use pages::{Extra, html};
use regions::ZoneGroup;

/// What the web front reads from the configuration.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The listener's timeouts, the public address, the trusted proxies.
    pub http: HttpConfig,
    /// Consent text and sign-up limits.
    pub signup: SignupConfig,
    /// The regions readers pick from and articles are pushed to.
    pub regions: Regions,
    /// The categories that make a pushed article breaking.
    pub alerts: AlertsConfig,
    /// Whether pushed articles may link to internal addresses (`ingest.allow_private`,
    /// the rule feeds follow too).
    pub allow_private_links: bool,
    /// How long sign-up emails stay worth sending.
    pub expiry: Expiry,
    /// When mail goes out over SMTP: how recently the server must have answered, while
    /// mail is waiting, for `/readyz` to say ready. `None` for the file transport.
    pub smtp_reply_within: Option<std::time::Duration>,
    /// Bounces: the soft-bounce limit and what the relays' webhooks are checked against.
    pub bounces: crate::config::BouncesConfig,
}

/// How recently the SMTP server must have answered while mail is due: three command
/// timeouts, the deliver stage's own limit.
pub fn smtp_reply_within(smtp_timeout: std::time::Duration) -> std::time::Duration {
    3 * smtp_timeout
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Signs and verifies link tokens; keys the hashes behind rate limits and CSRF.
    pub signer: Arc<Signer>,
    /// The configuration (regions, sign-up limits, alert categories).
    pub config: Arc<WebConfig>,
    /// The page templates.
    pub pages: Arc<Pages>,
    /// The dashboard's templates.
    pub dashboard: Arc<DashboardPages>,
    /// The regions, for the pickers and the community search.
    pub regions: Arc<RegionIndex>,
    /// The time zone list of the forms, built once.
    pub zones: Arc<Vec<ZoneGroup>>,
    /// The daemon's stages, as `/readyz` reports them (empty outside the daemon).
    pub health: Health,
    /// When this state was built (the daemon's start): the SMTP check of `/readyz`
    /// counts from here until the server first answers.
    pub started_at: Timestamp,
    /// What starts manual sends (the daemon's composer and transport); `None` where
    /// the server runs without them, and the API says so.
    pub sends: Option<Arc<ManualSends>>,
    /// SNS signing certificates, fetched once each, for `/webhooks/ses`.
    pub sns: Arc<crate::bounces::webhooks::SnsCertificates>,
}

impl AppState {
    /// Builds the state, loading and checking the page templates named by `mail` (an
    /// error names the broken template).
    pub fn new(
        store: Store,
        signer: Arc<Signer>,
        config: Arc<WebConfig>,
        mail: &MailConfig,
    ) -> Result<AppState, PageError> {
        let pages = Pages::load(mail)?;
        let dashboard = DashboardPages::load(mail)?;
        let regions = RegionIndex::new(&config.regions, config.signup.search_threshold);
        Ok(AppState {
            store,
            signer,
            config,
            pages: Arc::new(pages),
            dashboard: Arc::new(dashboard),
            regions: Arc::new(regions),
            zones: Arc::new(regions::zone_groups()),
            health: Health::default(),
            started_at: Timestamp::now(),
            sends: None,
            sns: Arc::new(crate::bounces::webhooks::SnsCertificates::new()),
        })
    }

    /// The same state, able to start manual sends through `sends`.
    pub fn with_sends(mut self, sends: ManualSends) -> AppState {
        self.sends = Some(Arc::new(sends));
        self
    }

    /// The same state, with `/readyz` reporting on `health`'s stages.
    pub fn with_health(mut self, health: Health) -> AppState {
        self.health = health;
        self
    }
}

/// The full router.
pub fn router(state: AppState) -> Router {
    let reader_pages = Router::new()
        .route("/", get(signup::signup_page))
        .route("/subscribe", axum::routing::post(signup::subscribe))
        .route("/regions", get(signup::search_regions))
        .route("/confirm", get(links::confirm_page).post(links::confirm))
        .route(
            "/preferences",
            get(links::preferences_page).post(links::preferences),
        )
        .route(
            "/unsubscribe",
            get(links::unsubscribe_page).post(links::unsubscribe),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_oversized,
        ))
        .layer(DefaultBodyLimit::max(forms::MAX_FORM_BYTES));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(metrics::routes(state.clone()))
        .merge(reader_pages)
        .merge(admin_api::routes(state.clone()))
        .merge(webhooks::routes())
        .merge(dashboard::routes(state.clone()))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            time_limits::time_limits,
        ))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the database answers and every stage of the daemon has had a good pass
/// within its limit; 503 otherwise. One line per check says which.
async fn readyz(State(state): State<AppState>) -> Response {
    let mut ready = true;
    let mut lines = Vec::new();
    if state.store.ping().await {
        lines.push("database: ok".to_string());
        let (ok, line) = migrations_line(&state).await;
        ready &= ok;
        lines.push(line);
        let (ok, line) = smtp_line(&state).await;
        ready &= ok;
        lines.push(line);
    } else {
        ready = false;
        lines.push("database: unavailable".to_string());
    }
    for stage in state.health.statuses() {
        let last = match stage.since_ok {
            Some(ago) => format!("last good pass {}s ago", ago.as_secs()),
            None => "no good pass yet".to_string(),
        };
        let mut line = if stage.overdue {
            ready = false;
            format!(
                "{}: overdue: {last} (limit {}s)",
                stage.name,
                stage.overdue_after.as_secs()
            )
        } else {
            format!("{}: ok, {last}", stage.name)
        };
        if stage.restarts > 0 {
            line.push_str(&format!(", {} restart(s)", stage.restarts));
        }
        if let Some(error) = &stage.last_error {
            line.push_str(&format!(", last error: {error}"));
        }
        lines.push(line);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = format!(
        "{}\n{}\n",
        if ready { "ready" } else { "not ready" },
        lines.join("\n")
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Whether the schema is the one this binary expects, and the `/readyz` line saying so.
async fn migrations_line(state: &AppState) -> (bool, String) {
    match state.store.migration_status().await {
        Ok(status) if status.pending.is_empty() && status.unknown.is_empty() => {
            (true, format!("migrations: ok, {} applied", status.applied))
        }
        Ok(status) if !status.pending.is_empty() => (
            false,
            format!(
                "migrations: {} pending ({}); run `herald migrate`",
                status.pending.len(),
                list(&status.pending)
            ),
        ),
        Ok(status) => (
            false,
            format!(
                "migrations: the database has {} this herald does not know ({}); run the newer herald that applied them",
                if status.unknown.len() == 1 {
                    "a migration"
                } else {
                    "migrations"
                },
                list(&status.unknown)
            ),
        ),
        Err(error) => (false, format!("migrations: cannot be read: {error}")),
    }
}

fn list(versions: &[i64]) -> String {
    versions
        .iter()
        .map(|v| format!("{v:04}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the SMTP server answered recently enough while mail waits, and the
/// `/readyz` line saying so. Not ready when mail is waiting, the server has not
/// answered within the limit (counted from start-up until it first does), and either
/// mail is due now or the last attempt to reach the server failed: rows that merely
/// wait for their retry on a server that answered are no reason to call herald unready.
async fn smtp_line(state: &AppState) -> (bool, String) {
    let Some(within) = state.config.smtp_reply_within else {
        return (true, "smtp: not used (mail.transport = \"file\")".into());
    };
    let now = Timestamp::now();
    let metrics = &crate::metrics::METRICS;
    let last_reply = metrics.smtp_last_reply();
    let silent_for = now
        .seconds_since(last_reply.unwrap_or(state.started_at))
        .max(0);
    let heard = match last_reply {
        Some(_) => format!("last reply {silent_for}s ago"),
        None => "no reply yet".to_string(),
    };
    let (waiting, due) = match (
        state.store.unfinished_count().await,
        state.store.due_count(now).await,
    ) {
        (Ok(waiting), Ok(due)) => (waiting, due),
        (Err(error), _) | (_, Err(error)) => {
            return (false, format!("smtp: the queue cannot be read: {error}"));
        }
    };
    if waiting == 0 {
        return (true, format!("smtp: ok, nothing waiting, {heard}"));
    }
    let stale = silent_for > within.as_secs() as i64;
    let failing = metrics.smtp_last_attempt_failed();
    if stale && (due > 0 || failing) {
        let why = if failing {
            "the last attempt to reach it failed"
        } else {
            "mail is due"
        };
        (
            false,
            format!(
                "smtp: not reached recently: {heard} (limit {}s), {waiting} row(s) waiting and {why}",
                within.as_secs()
            ),
        )
    } else {
        (true, format!("smtp: ok, {heard}, {waiting} row(s) waiting"))
    }
}

/// Refuses a body announced larger than the form cap before reading any of it (bodies
/// sent without a length are cut at the same cap when read).
async fn refuse_oversized(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > forms::MAX_FORM_BYTES as u64) {
        return too_large(&state);
    }
    next.run(request).await
}

/// The page template `name` rendered with `ctx` as the response, or the broken-page
/// error if it does not render.
fn render_page(
    state: &AppState,
    name: &str,
    ctx: &impl serde::Serialize,
    status: StatusCode,
    extra: Extra,
) -> Response {
    match state.pages.render(name, ctx) {
        Ok(body) => html(status, body, extra),
        Err(error) => broken_page(error),
    }
}

/// A page rendered from `web/message.html.j2`.
fn message(
    state: &AppState,
    status: StatusCode,
    title: &str,
    paragraphs: &[&str],
    link: Option<(&str, &str)>,
    extra: Extra,
) -> Response {
    let mut page = state.pages.message(title, paragraphs);
    if let Some((url, text)) = link {
        page.link_url = url.into();
        page.link_text = text.into();
    }
    render_page(state, "web/message.html.j2", &page, status, extra)
}

/// The one error page for every link that is not valid: tampered, expired, or meant
/// for another page. Which of those it was is not said.
fn invalid_link(state: &AppState) -> Response {
    let page = state.pages.message("This link is not valid", &[]);
    render_page(
        state,
        "web/invalid_link.html.j2",
        &page,
        StatusCode::BAD_REQUEST,
        Extra::default(),
    )
}

/// The page after unsubscribing (one-click, the button, or "leave all").
fn unsubscribed(state: &AppState) -> Response {
    let page = state.pages.message("You are unsubscribed", &[]);
    render_page(
        state,
        "web/unsubscribed.html.j2",
        &page,
        StatusCode::OK,
        Extra::default(),
    )
}

fn too_large(state: &AppState) -> Response {
    message(
        state,
        StatusCode::PAYLOAD_TOO_LARGE,
        "That was too much",
        &[
            "The form sent more than this page accepts. Please go back, choose fewer regions and try again.",
        ],
        Some(("/", "Back to the sign-up page")),
        Extra::default(),
    )
}

fn rate_limited(state: &AppState, retry_after: i64) -> Response {
    let minutes = (retry_after + 59) / 60;
    let wait = if minutes <= 1 {
        "a minute".to_string()
    } else {
        format!("{minutes} minutes")
    };
    let text = format!(
        "There have been too many sign-ups from here, or for this address, in a short time. Please try again in {wait}."
    );
    message(
        state,
        StatusCode::TOO_MANY_REQUESTS,
        "Please wait a little",
        &[text.as_str()],
        None,
        Extra {
            retry_after: Some(retry_after),
            ..Extra::default()
        },
    )
}

fn cross_site(state: &AppState) -> Response {
    message(
        state,
        StatusCode::FORBIDDEN,
        "This form came from another site",
        &["Nothing was changed. Please open the link from your email again."],
        None,
        Extra::default(),
    )
}

fn try_again(state: &AppState, error: &StoreError) -> Response {
    tracing::error!(%error, "a reader's request failed");
    message(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        &[
            "We could not handle your request just now. Nothing was changed. Please try again in a minute.",
        ],
        None,
        Extra {
            retry_after: Some(60),
            ..Extra::default()
        },
    )
}

/// A template that rendered at start-up but not now: say so plainly, log the detail.
fn broken_page(error: PageError) -> Response {
    tracing::error!(%error, "a page template failed to render");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Sorry, this page is broken. Please try again later.\n",
    )
        .into_response()
}
