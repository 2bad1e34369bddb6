//! The pages behind the links in emails: `/confirm`, `/preferences`, `/unsubscribe`.
//!
//! Each link carries a signed token bound to its purpose, and the token is the only
//! proof of who is asking. A token that is tampered with, expired or meant for another
//! page gets one and the same error page and changes nothing. A GET never changes
//! anything (mail scanners follow links); only the buttons post.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::AppState;
use super::forms::{Client, Form, MAX_FORM_BYTES, csrf_ok, csrf_token, same_origin};
use super::pages::{
    Choices, ConfirmPage, ConfirmedPage, Extra, FormErrors, PreferencesPage, UnsubscribePage,
    cadence_options, nonce,
};
use super::regions::Hidden;
use crate::clock::now;
use crate::compose::{LINK_LIFETIME_SECS, RegionChoice, cadence_label};
use crate::domain::{
    Cadence, DeliveryKind, RegionSlug, SubscriberId, SubscriberState, Timestamp, Timezone,
};
use crate::store::{ConfirmOutcome, ReaderPreferences};
use crate::tokens::Purpose;

/// How far apart the clocks of several daemons may be.
const CLOCK_SLACK_SECS: i64 = 300;

/// A verified link: who it names, the token itself, and when it was issued.
struct Link {
    id: SubscriberId,
    token: String,
    issued_at: i64,
}

/// The token of a request's query string, checked for `purpose`.
fn verified(state: &AppState, request_query: &str, purpose: Purpose) -> Option<Link> {
    let form = Form::parse(request_query.as_bytes());
    // Taken as sent: each token has one spelling, and nothing else is accepted for it.
    let token = form.get("token").to_string();
    let (id, expires_at) = state
        .signer
        .verify_with_expiry(purpose, &token, now())
        .ok()?;
    // Tokens carry their expiry, and every link of one purpose has the same lifetime.
    let lifetime = match purpose {
        Purpose::Confirm => state.config.signup.confirm_link_lifetime.as_secs() as i64,
        Purpose::Preferences | Purpose::Unsubscribe => LINK_LIFETIME_SECS,
    };
    Some(Link {
        id: SubscriberId::new(id),
        token,
        issued_at: expires_at - lifetime,
    })
}

/// `path?token=…`, the address a page's form posts to.
fn action(path: &str, token: &str) -> String {
    let mut url = format!("{path}?");
    url.push_str(
        &url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish(),
    );
    url
}

fn preferences_url(state: &AppState, subscriber_id: SubscriberId) -> String {
    let token = state.signer.sign(
        Purpose::Preferences,
        subscriber_id.get(),
        now() + LINK_LIFETIME_SECS,
    );
    action("/preferences", &token)
}

fn region_choices(state: &AppState, regions: &[(RegionSlug, Cadence)]) -> Vec<RegionChoice> {
    regions
        .iter()
        .map(|(slug, cadence)| RegionChoice {
            name: state
                .regions
                .name(slug)
                .unwrap_or(slug.as_str())
                .to_string(),
            cadence: cadence.as_str().into(),
            cadence_label: cadence_label(*cadence).into(),
        })
        .collect()
}

/// The reader a link was sent to, or `None` when they are gone: erased, or erased with
/// their id since given to someone who signed up after the link was made (SQLite can
/// reuse the highest id), whom the old link must not reach.
async fn reader(state: &AppState, link: &Link) -> Result<Option<ReaderPreferences>, Response> {
    let reader = state
        .store
        .reader_preferences(link.id)
        .await
        .map_err(|error| super::try_again(state, &error))?;
    Ok(reader.filter(|r| link.issued_at >= r.created_at.unix() - CLOCK_SLACK_SECS))
}

/// `GET /confirm?token=`: what the reader is confirming, and the button.
pub async fn confirm_page(State(state): State<AppState>, request: Request) -> Response {
    let Some(link) = verified(
        &state,
        request.uri().query().unwrap_or(""),
        Purpose::Confirm,
    ) else {
        return super::invalid_link(&state);
    };
    let (id, token) = (link.id, link.token.clone());
    let reader = match reader(&state, &link).await {
        Ok(Some(reader)) => reader,
        Ok(None) => return super::invalid_link(&state),
        Err(response) => return response,
    };
    let regions = region_choices(&state, &reader.regions);
    match reader.state {
        SubscriberState::Pending => super::render_page(
            &state,
            "web/confirm.html.j2",
            &ConfirmPage {
                site: state.pages.site(),
                action: action("/confirm", &token),
                regions,
            },
            StatusCode::OK,
            Extra::default(),
        ),
        SubscriberState::Confirmed => super::render_page(
            &state,
            "web/confirmed.html.j2",
            &ConfirmedPage {
                site: state.pages.site(),
                already: true,
                regions,
                preferences_url: preferences_url(&state, id),
            },
            StatusCode::OK,
            Extra::default(),
        ),
        SubscriberState::Unsubscribed | SubscriberState::Suppressed => super::invalid_link(&state),
    }
}

/// `POST /confirm?token=`: double opt-in done; the welcome email is queued.
///
/// No CSRF cookie here: the signed token is the only authority the request carries,
/// and a reader whose browser keeps no cookies must still be able to confirm.
/// Cross-site posts are refused all the same.
pub async fn confirm(State(state): State<AppState>, request: Request) -> Response {
    let Some(link) = verified(
        &state,
        request.uri().query().unwrap_or(""),
        Purpose::Confirm,
    ) else {
        return super::invalid_link(&state);
    };
    let id = link.id;
    if !same_origin(request.headers(), &state.config.http.public_url) {
        return super::cross_site(&state);
    }
    match reader(&state, &link).await {
        Ok(Some(_)) => {}
        Ok(None) => return super::invalid_link(&state),
        Err(response) => return response,
    }
    let client = Client::from_request(
        request.extensions(),
        request.headers(),
        &state.config.http.trusted_proxies,
    );
    let t = Timestamp::now();
    let expires_at = t + state.config.expiry.of(DeliveryKind::Welcome, None);
    let outcome = match state
        .store
        .confirm_subscriber(id, &client.ip_text(), t, expires_at)
        .await
    {
        Ok(outcome) => outcome,
        Err(error) => return super::try_again(&state, &error),
    };
    let already = match outcome {
        ConfirmOutcome::Confirmed => false,
        ConfirmOutcome::AlreadyConfirmed => true,
        ConfirmOutcome::NotPending => return super::invalid_link(&state),
    };
    let regions = match reader(&state, &link).await {
        Ok(Some(reader)) => region_choices(&state, &reader.regions),
        Ok(None) => return super::invalid_link(&state),
        Err(response) => return response,
    };
    let page = ConfirmedPage {
        site: state.pages.site(),
        already,
        regions,
        preferences_url: preferences_url(&state, id),
    };
    super::render_page(
        &state,
        "web/confirmed.html.j2",
        &page,
        StatusCode::OK,
        Extra::default(),
    )
}

/// What the preferences form shows: from the database, or as just submitted.
struct Shown {
    chosen: Vec<(RegionSlug, Cadence)>,
    cadences: HashMap<RegionSlug, Cadence>,
    timezone: String,
    query: String,
}

#[allow(clippy::too_many_arguments)]
fn render_preferences(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    token: &str,
    email: &str,
    shown: Shown,
    errors: FormErrors,
    saved: bool,
) -> Response {
    let csrf = csrf_token(
        headers,
        &state.signer,
        state.config.http.public_url.scheme() == "https",
    );
    let nonce = nonce();
    let carry = vec![Hidden {
        name: "token".into(),
        value: token.into(),
    }];
    let page = PreferencesPage {
        site: state.pages.site(),
        nonce: nonce.clone(),
        csrf: csrf.token,
        action: action("/preferences", token),
        email: email.into(),
        choices: Choices {
            picker: state.regions.picker(
                &shown.chosen,
                &shown.cadences,
                &shown.query,
                "/preferences",
                carry,
            ),
            cadences: cadence_options(),
            zones: state.zones.as_ref().clone(),
            timezone: shown.timezone,
            prefill_timezone: false,
        },
        has_errors: errors.any(),
        errors,
        saved,
    };
    super::render_page(
        state,
        "web/preferences.html.j2",
        &page,
        status,
        Extra::form(nonce, csrf.set_cookie),
    )
}

/// The page for a reader who is not (or no longer) confirmed.
fn not_subscribed(state: &AppState, reader_state: SubscriberState) -> Response {
    let mut page = match reader_state {
        SubscriberState::Pending => state.pages.message(
            "Please confirm first",
            &["Your subscription is not confirmed yet. Use the link in the confirmation email we sent you."],
        ),
        _ => state.pages.message(
            "You are not subscribed",
            &["This address gets no emails from us. To get them again, sign up on our home page."],
        ),
    };
    page.link_url = "/".into();
    page.link_text = "Go to the sign-up page".into();
    super::render_page(
        state,
        "web/message.html.j2",
        &page,
        StatusCode::OK,
        Extra::default(),
    )
}

/// `GET /preferences?token=`: the reader's regions, cadences and time zone.
/// With `q` (the search form), the regions chosen so far come from the query instead.
pub async fn preferences_page(State(state): State<AppState>, request: Request) -> Response {
    let query = request.uri().query().unwrap_or("");
    let Some(link) = verified(&state, query, Purpose::Preferences) else {
        return super::invalid_link(&state);
    };
    let token = link.token.clone();
    let reader = match reader(&state, &link).await {
        Ok(Some(reader)) => reader,
        Ok(None) => return super::invalid_link(&state),
        Err(response) => return response,
    };
    if reader.state != SubscriberState::Confirmed {
        return not_subscribed(&state, reader.state);
    }
    let form = Form::parse(query.as_bytes());
    let shown = if form.has("q") {
        let picked = form.regions(&state.regions).unwrap_or_default();
        Shown {
            chosen: picked.chosen,
            cadences: picked.cadences,
            timezone: reader.timezone.to_string(),
            query: form.get("q").into(),
        }
    } else {
        Shown {
            chosen: reader.regions.clone(),
            cadences: HashMap::new(),
            timezone: reader.timezone.to_string(),
            query: String::new(),
        }
    };
    render_preferences(
        &state,
        request.headers(),
        StatusCode::OK,
        &token,
        reader.email.as_str(),
        shown,
        FormErrors::default(),
        false,
    )
}

/// `POST /preferences?token=`: save the form (`intent=save`) or leave all (`intent=leave`).
pub async fn preferences(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(link) = verified(
        &state,
        parts.uri.query().unwrap_or(""),
        Purpose::Preferences,
    ) else {
        return super::invalid_link(&state);
    };
    let (id, token) = (link.id, link.token.clone());
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return super::too_large(&state);
    };
    let form = Form::parse(&bytes);
    let reader = match reader(&state, &link).await {
        Ok(Some(reader)) => reader,
        Ok(None) => return super::invalid_link(&state),
        Err(response) => return response,
    };
    if reader.state != SubscriberState::Confirmed {
        return not_subscribed(&state, reader.state);
    }
    let headers = &parts.headers;
    let (chosen, cadences, regions_error) = match form.regions(&state.regions) {
        Ok(picked) => (picked.chosen, picked.cadences, None),
        Err(message) => (reader.regions.clone(), HashMap::new(), Some(message)),
    };
    let given_zone = form.get("timezone").trim().to_string();
    let mut shown = Shown {
        chosen,
        cadences,
        timezone: if given_zone.is_empty() {
            reader.timezone.to_string()
        } else {
            given_zone.clone()
        },
        query: String::new(),
    };
    if !same_origin(headers, &state.config.http.public_url)
        || !csrf_ok(headers, &state.signer, form.get("csrf"))
    {
        let errors = FormErrors {
            form: "This page was open too long, or the form came from another site. \
                   Nothing was changed; please try again."
                .into(),
            ..FormErrors::default()
        };
        if form.get("intent") == "leave" {
            shown.chosen = reader.regions.clone();
        }
        return render_preferences(
            &state,
            headers,
            StatusCode::FORBIDDEN,
            &token,
            reader.email.as_str(),
            shown,
            errors,
            false,
        );
    }
    if form.get("intent") == "leave" {
        return match state.store.unsubscribe(id, Timestamp::now()).await {
            Ok(_) => super::unsubscribed(&state),
            Err(error) => super::try_again(&state, &error),
        };
    }

    let mut errors = FormErrors::default();
    match regions_error {
        Some(message) => errors.regions = message,
        None if shown.chosen.is_empty() => {
            errors.regions =
                "Choose at least one region, or use the Unsubscribe button below to leave.".into();
        }
        None => {}
    }
    let timezone = match shown.timezone.parse::<Timezone>() {
        Ok(zone) => Some(zone),
        Err(_) => {
            errors.timezone = "Choose a time zone from the list.".into();
            None
        }
    };
    let (Some(timezone), false) = (timezone, errors.any()) else {
        return render_preferences(
            &state,
            headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            &token,
            reader.email.as_str(),
            shown,
            errors,
            false,
        );
    };
    match state
        .store
        .update_preferences(id, &shown.chosen, timezone, Timestamp::now())
        .await
    {
        Ok(true) => {}
        Ok(false) => return not_subscribed(&state, SubscriberState::Unsubscribed),
        Err(error) => return super::try_again(&state, &error),
    }
    shown.timezone = timezone.to_string();
    render_preferences(
        &state,
        headers,
        StatusCode::OK,
        &token,
        reader.email.as_str(),
        shown,
        FormErrors::default(),
        true,
    )
}

/// `GET /unsubscribe?token=`: a page with a button; it changes nothing.
pub async fn unsubscribe_page(State(state): State<AppState>, request: Request) -> Response {
    let Some(link) = verified(
        &state,
        request.uri().query().unwrap_or(""),
        Purpose::Unsubscribe,
    ) else {
        return super::invalid_link(&state);
    };
    let (id, token) = (link.id, link.token.clone());
    match reader(&state, &link).await {
        Ok(Some(_)) => {}
        Ok(None) => return super::invalid_link(&state),
        Err(response) => return response,
    }
    let page = UnsubscribePage {
        site: state.pages.site(),
        action: action("/unsubscribe", &token),
        preferences_url: preferences_url(&state, id),
    };
    super::render_page(
        &state,
        "web/unsubscribe.html.j2",
        &page,
        StatusCode::OK,
        Extra::default(),
    )
}

/// `POST /unsubscribe?token=`: RFC 8058 one-click. 200, no cookie, no redirect, no
/// CSRF token (mail providers post it without a page), and repeatable. Queued mail to
/// the reader is cancelled in the same transaction.
pub async fn unsubscribe(State(state): State<AppState>, request: Request) -> Response {
    let Some(link) = verified(
        &state,
        request.uri().query().unwrap_or(""),
        Purpose::Unsubscribe,
    ) else {
        return super::invalid_link(&state);
    };
    let id = link.id;
    // A reader who is gone is as unsubscribed as can be: the same answer, and nothing
    // to change (a reused id must not unsubscribe its new owner).
    match reader(&state, &link).await {
        Ok(Some(_)) => {}
        Ok(None) => return super::unsubscribed(&state),
        Err(response) => return response,
    }
    // The body (`List-Unsubscribe=One-Click`) says nothing the token does not; it is
    // not read, so a provider that sends another body is not refused.
    match state.store.unsubscribe(id, Timestamp::now()).await {
        Ok(_) => super::unsubscribed(&state),
        Err(error) => super::try_again(&state, &error),
    }
}
