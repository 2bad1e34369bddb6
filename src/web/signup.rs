//! `GET /` (the sign-up page), `POST /subscribe`, and `GET /regions?q=` (the
//! community search the page's script asks as the reader types).
//!
//! `POST /subscribe` answers one page, byte for byte, whatever the address's state:
//! new, pending, confirmed or unsubscribed. What differs (a confirmation, a welcome
//! with the preferences link, or nothing) happens in the reader's mailbox, where only
//! the address's owner sees it.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::forms::{Client, Form, MAX_FORM_BYTES, csrf_ok, csrf_token, same_origin};
use super::pages::{Choices, Extra, FormErrors, SignupPage, cadence_options, nonce};
use super::regions::{Found, SEARCH_LIMIT};
use crate::clock::now;
use crate::domain::{Cadence, DeliveryKind, Email, RegionSlug, Timezone};
use crate::store::{Consent, SignupMail, WebSignup};

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
    let t = now();
    let checks = [
        (
            "signup-ip",
            state.signer.fingerprint("signup-ip", &client.ip_bucket()),
            limits.ip_window,
            limits.ip_limit,
        ),
        (
            "signup-address",
            state.signer.fingerprint("signup-address", email.as_str()),
            limits.address_window,
            limits.address_limit,
        ),
    ];
    for (scope, key, window, limit) in checks {
        match state
            .store
            .hit_rate_limit(scope, &key, t, window.as_secs() as i64, limit)
            .await
        {
            Ok(None) => {}
            Ok(Some(retry_after)) => {
                tracing::info!(ip = %client.ip_text(), scope, "sign-up refused by rate limit");
                return super::rate_limited(&state, retry_after);
            }
            Err(error) => return super::try_again(&state, &error),
        }
    }

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
    let mail = SignupMail {
        per_day: limits.emails_per_day,
        expires_at: t + state
            .config
            .expiry
            .of(DeliveryKind::Confirmation, None)
            .as_secs() as i64,
    };
    match state.store.record_web_signup(&signup, t, mail).await {
        Ok(outcome) => {
            tracing::info!(?outcome, "web sign-up");
            check_inbox(&state)
        }
        Err(error) => super::try_again(&state, &error),
    }
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
