//! `GET /` (the sign-up page), `POST /subscribe`, and `GET /regions?q=` (the
//! community search the page's script asks as the reader types).
//!
//! `POST /subscribe` answers one page, byte for byte and in the same time, whatever the
//! address's state: new, pending, confirmed, unsubscribed or suppressed. What differs (a
//! confirmation, a welcome with the preferences link, or nothing) happens after the
//! answer, in the reader's mailbox, where only the address's owner sees it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::WebConfig;
use super::forms::{Client, Form, MAX_FORM_BYTES, csrf_ok, csrf_token, same_origin};
use super::pages::{Choices, Extra, FormErrors, SignupPage, cadence_options, nonce};
use super::regions::{Found, SEARCH_LIMIT};
use crate::domain::{Cadence, DeliveryKind, Email, RegionSlug, SignupId, Timestamp, Timezone};
use crate::shutdown::Shutdown;
use crate::store::{Consent, Queued, RateLimit, SignupMail, Store, WebSignup};

/// What the reader entered, kept to show the form again.
struct Entered {
    email: String,
    chosen: Vec<(RegionSlug, Cadence)>,
    cadences: HashMap<RegionSlug, Cadence>,
    timezone: Option<String>,
    query: String,
}

impl Entered {
    fn from_form(form: &Form, state: &AppState) -> (Entered, Option<String>) {
        let (chosen, cadences, error) = match form.regions(&state.regions) {
            Ok(picked) => (picked.chosen, picked.cadences, None),
            Err(message) => (Vec::new(), HashMap::new(), Some(message)),
        };
        let timezone = Some(form.get("timezone").trim().to_string()).filter(|t| !t.is_empty());
        (
            Entered {
                // Never cut to fit: a cut address is someone else's. The form's size
                // cap bounds it; `Email::parse` refuses it if it is too long.
                email: form.get("email").trim().to_string(),
                chosen,
                cadences,
                timezone,
                query: form.get("q").to_string(),
            },
            error,
        )
    }
}

/// The site's own zone: the one readers get when they pick none (the first region's).
fn home_zone(state: &AppState) -> Timezone {
    state
        .config
        .regions
        .first()
        .map(|r| r.timezone)
        .unwrap_or_else(|| "UTC".parse().expect("UTC is a zone"))
}

fn render_signup(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    entered: Entered,
    errors: FormErrors,
) -> Response {
    let csrf = csrf_token(
        headers,
        &state.signer,
        state.config.http.public_url.scheme() == "https",
    );
    let zone_valid = entered
        .timezone
        .as_deref()
        .and_then(|t| t.parse::<Timezone>().ok());
    let nonce = nonce();
    let page = SignupPage {
        site: state.pages.site(),
        nonce: nonce.clone(),
        csrf: csrf.token,
        email: entered.email,
        choices: Choices {
            picker: state.regions.picker(
                &entered.chosen,
                &entered.cadences,
                &entered.query,
                "/",
                Vec::new(),
            ),
            cadences: cadence_options(),
            zones: state.zones.as_ref().clone(),
            timezone: zone_valid.unwrap_or_else(|| home_zone(state)).to_string(),
            prefill_timezone: entered.timezone.is_none(),
        },
        consent_text: state.config.signup.consent_text.clone(),
        has_errors: errors.any(),
        errors,
    };
    super::render_page(
        state,
        "web/signup.html.j2",
        &page,
        status,
        Extra::form(nonce, csrf.set_cookie),
    )
}

/// `GET /`: the sign-up form. Query fields pre-fill it: `region` (repeatable, so a
/// town's site can link `/?region=riverton`), `cadence-SLUG`, and `q` for the search.
pub async fn signup_page(State(state): State<AppState>, request: Request) -> Response {
    let form = Form::parse(request.uri().query().unwrap_or("").as_bytes());
    let (mut entered, _) = Entered::from_form(&form, &state);
    // The address never travels in a URL; a query cannot pre-fill it.
    entered.email = String::new();
    render_signup(
        &state,
        request.headers(),
        StatusCode::OK,
        entered,
        FormErrors::default(),
    )
}

/// The page every accepted sign-up gets, whatever became of it.
fn check_inbox(state: &AppState) -> Response {
    let page = state.pages.message("Check your inbox", &[]);
    super::render_page(
        state,
        "web/check_inbox.html.j2",
        &page,
        StatusCode::OK,
        Extra::default(),
    )
}

/// `POST /subscribe`.
pub async fn subscribe(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let client = Client::from_request(
        &parts.extensions,
        &parts.headers,
        &state.config.http.trusted_proxies,
    );
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return super::too_large(&state);
    };
    let form = Form::parse(&bytes);
    let (entered, regions_error) = Entered::from_form(&form, &state);
    let headers = &parts.headers;

    if !same_origin(headers, &state.config.http.public_url)
        || !csrf_ok(headers, &state.signer, form.get("csrf"))
    {
        let errors = FormErrors {
            form: "This form was open too long, or came from another site. \
                   Please check your choices and press Sign up again."
                .into(),
            ..FormErrors::default()
        };
        return render_signup(&state, headers, StatusCode::FORBIDDEN, entered, errors);
    }
    // People leave the honeypot empty (they never see it); form-filling bots do not.
    // They get the usual answer, so they learn nothing, and nothing is stored or sent.
    if !form.get("website").is_empty() {
        tracing::info!(ip = %client.ip_text(), "sign-up with the honeypot filled; ignored");
        return check_inbox(&state);
    }

    let mut errors = FormErrors::default();
    let email = match Email::parse(&entered.email) {
        Ok(email) => Some(email),
        Err(_) if entered.email.is_empty() => {
            errors.email = "Enter your email address.".into();
            None
        }
        Err(error) => {
            errors.email = format!(
                "This address cannot be used: {}. Enter an email address like name@example.com.",
                error.reason()
            );
            None
        }
    };
    match regions_error {
        Some(message) => errors.regions = message,
        None if entered.chosen.is_empty() => {
            errors.regions = "Choose at least one region.".into();
        }
        None => {}
    }
    let timezone = match entered.timezone.as_deref().map(str::parse::<Timezone>) {
        None => Some(home_zone(&state)),
        Some(Ok(zone)) => Some(zone),
        Some(Err(_)) => {
            errors.timezone = "Choose a time zone from the list.".into();
            None
        }
    };
    let (Some(email), Some(timezone), false) = (email, timezone, errors.any()) else {
        return render_signup(
            &state,
            headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            entered,
            errors,
        );
    };

    let limits = &state.config.signup;
    let t = Timestamp::now();
    let ip_key = state.signer.fingerprint("signup-ip", &client.ip_bucket());
    let signup = WebSignup {
        email,
        regions: entered.chosen,
        timezone,
        consent: Consent {
            ip: client.ip_text(),
            user_agent: client.user_agent,
            text_version: limits.consent_version.clone(),
        },
    };
    let checks = [
        RateLimit {
            scope: "signup-ip",
            key_hash: ip_key,
            window_secs: limits.ip_window.as_secs() as i64,
            limit: limits.ip_limit,
        },
        RateLimit {
            scope: "signup-address",
            key_hash: state
                .signer
                .fingerprint("signup-address", signup.email.as_str()),
            window_secs: limits.address_window.as_secs() as i64,
            limit: limits.address_limit,
        },
    ];
    // The form answers once the sign-up is stored, before any of the work that depends
    // on the address's state (new, pending, confirmed, unsubscribed, suppressed): that
    // work takes longer for some states than for others, and the answer's timing would
    // tell which. The sign-up is stored before the answer, not after it, because a
    // reader told to check their inbox must get the email even if herald stops a moment
    // later: a queued row is done at the next start.
    match state.store.queue_web_signup(&signup, t, &checks).await {
        Ok(Queued::Stored(id)) => {
            let (store, config) = (state.store.clone(), state.config.clone());
            tokio::spawn(async move { run_signup(&store, &config, id).await });
            check_inbox(&state)
        }
        Ok(Queued::Limited { scope, retry_after }) => {
            tracing::info!(ip = %signup.consent.ip, scope, "sign-up refused by rate limit");
            super::rate_limited(&state, retry_after)
        }
        Err(error) => super::try_again(&state, &error),
    }
}

/// How many sign-up emails an address may get, and the expiry of one queued now.
fn signup_mail(config: &WebConfig) -> SignupMail {
    SignupMail {
        per_day: config.signup.emails_per_day,
        expires_at: Timestamp::now() + config.expiry.of(DeliveryKind::Confirmation, None),
    }
}

/// Does the queued sign-up `id`; on failure it stays queued for [`run_queued_signups`].
/// Returns false on failure.
async fn run_signup(store: &Store, config: &WebConfig, id: SignupId) -> bool {
    match store.run_queued_signup(id, signup_mail(config)).await {
        Ok(Some(outcome)) => {
            tracing::info!(?outcome, "web sign-up");
            true
        }
        Ok(None) => true,
        Err(error) => {
            tracing::warn!(%error, "a sign-up failed; it stays queued and is retried");
            false
        }
    }
}

/// How often sign-ups left queued (by a crash, or a failed attempt) are looked for.
const QUEUED_SIGNUP_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Queued sign-ups read at a time.
const QUEUED_SIGNUP_BATCH: usize = 100;

/// How long the daemon may go without reading the queued sign-ups before `/readyz`
/// says so: three of its one-minute passes.
pub const SIGNUPS_OVERDUE_AFTER: std::time::Duration = std::time::Duration::from_secs(190);

/// How often the daemon erases sign-ups never confirmed.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Does the sign-ups left queued, at start-up and then every minute, until shutdown;
/// each pass that could read the queue is a good pass on `beat`. Once a day (the first
/// time at start-up) it also erases the sign-ups never confirmed.
pub async fn run_queued_signups(
    store: Store,
    config: Arc<WebConfig>,
    shutdown: Shutdown,
    beat: crate::supervise::Beat,
) -> Result<(), crate::store::StoreError> {
    // Sign-ups never confirmed are erased once a day (and at start-up), beside the
    // queue they came from.
    let mut next_purge = tokio::time::Instant::now();
    while !shutdown.is_triggered() {
        if tokio::time::Instant::now() >= next_purge {
            match store
                .purge_pending(
                    config.signup.confirm_link_lifetime,
                    crate::domain::Timestamp::now(),
                )
                .await
            {
                Ok(erased) => {
                    if erased > 0 {
                        tracing::info!(erased, "erased sign-ups never confirmed");
                    }
                    next_purge += PURGE_EVERY;
                }
                Err(error) => tracing::warn!(%error, "cannot erase the stale sign-ups"),
            }
        }
        let mut read_on = false;
        match store.queued_signups(QUEUED_SIGNUP_BATCH as i64).await {
            Ok(ids) => {
                read_on = ids.len() == QUEUED_SIGNUP_BATCH;
                beat.ok();
                for id in ids {
                    if shutdown.is_triggered() {
                        return Ok(());
                    }
                    read_on &= run_signup(&store, &config, id).await;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the queued sign-ups"),
        }
        // A full batch done without a failure may have more behind it: read on at once.
        if !read_on {
            shutdown.sleep(QUEUED_SIGNUP_RETRY).await;
        }
    }
    Ok(())
}

/// What `GET /regions?q=` answers.
#[derive(Debug, Serialize)]
struct SearchAnswer {
    query: String,
    regions: Vec<Found>,
}

/// `GET /regions?q=`: communities matching the text, best first, as JSON.
pub async fn search_regions(State(state): State<AppState>, request: Request) -> Response {
    let form = Form::parse(request.uri().query().unwrap_or("").as_bytes());
    let query: String = form.get("q").trim().chars().take(100).collect();
    let regions = state.regions.search(&query, SEARCH_LIMIT);
    let mut response = Json(SearchAnswer { query, regions }).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=300"),
    );
    response
}
