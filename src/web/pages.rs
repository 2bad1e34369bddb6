//! The pages readers see, rendered from `templates/web/*.html.j2` (minijinja, HTML
//! auto-escaped). Like the email templates, they are loaded and rendered once with
//! sample data at start-up, so a broken page stops herald instead of a reader.

use std::path::Path;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::regions::{Hidden, Picker, PickerRow, ZoneGroup};
use crate::compose::{RegionChoice, html_formatter};
use crate::config::MailConfig;
use crate::domain::Cadence;

/// The page templates; each must exist and render. Names starting with `_` are
/// pieces the pages include.
const TEMPLATES: [&str; 13] = [
    "web/layout.html.j2",
    "web/_picker.html.j2",
    "web/_search.html.j2",
    "web/_script.html.j2",
    "web/signup.html.j2",
    "web/check_inbox.html.j2",
    "web/confirm.html.j2",
    "web/confirmed.html.j2",
    "web/preferences.html.j2",
    "web/unsubscribe.html.j2",
    "web/unsubscribed.html.j2",
    "web/invalid_link.html.j2",
    "web/message.html.j2",
];

/// Why the page templates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// An override template cannot be read.
    #[error(transparent)]
    Read(#[from] crate::templates::TemplateSourceError),
    /// A template has a syntax error or fails to render.
    #[error("template {name} is broken: {message}")]
    Template {
        /// The template.
        name: String,
        /// minijinja's description, with the line.
        message: String,
    },
}

/// What every page knows about the site.
#[derive(Debug, Clone, Serialize)]
pub struct SiteView {
    /// Site name, from `mail.list_name`.
    pub name: String,
    /// The postal address printed in the footer.
    pub postal_address: String,
}

/// A cadence as the pickers offer it.
#[derive(Debug, Clone, Serialize)]
pub struct CadenceOption {
    /// `alert`, `daily` or `weekly`.
    pub value: String,
    /// In words.
    pub label: String,
}

/// Problems with a submitted form, one sentence per field; empty when fine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FormErrors {
    /// About the whole form (an expired form, a database hiccup).
    pub form: String,
    /// About the address.
    pub email: String,
    /// About the regions.
    pub regions: String,
    /// About the time zone.
    pub timezone: String,
}

impl FormErrors {
    /// Whether any field has a problem.
    pub fn any(&self) -> bool {
        !(self.form.is_empty()
            && self.email.is_empty()
            && self.regions.is_empty()
            && self.timezone.is_empty())
    }
}

/// The region, cadence and time zone fields both forms share.
#[derive(Debug, Clone, Serialize)]
pub struct Choices {
    /// The region picker.
    pub picker: Picker,
    /// Cadence options.
    pub cadences: Vec<CadenceOption>,
    /// Time zone options.
    pub zones: Vec<ZoneGroup>,
    /// The zone selected.
    pub timezone: String,
    /// Whether the page script may replace it with the browser's zone (nobody chose one yet).
    pub prefill_timezone: bool,
}

/// `web/signup.html.j2`.
#[derive(Debug, Clone, Serialize)]
pub struct SignupPage {
    /// The site.
    pub site: SiteView,
    /// The page script's CSP nonce.
    pub nonce: String,
    /// The form's CSRF token.
    pub csrf: String,
    /// The address typed so far.
    pub email: String,
    /// Regions, cadences, zone.
    pub choices: Choices,
    /// The consent text shown above the button.
    pub consent_text: String,
    /// What is wrong with the last submission.
    pub errors: FormErrors,
    /// Whether there is anything in `errors`.
    pub has_errors: bool,
}

/// `web/confirm.html.j2`: the button that confirms (a GET changes nothing).
#[derive(Debug, Clone, Serialize)]
pub struct ConfirmPage {
    /// The site.
    pub site: SiteView,
    /// Where the button posts (carries the token).
    pub action: String,
    /// What the reader is confirming.
    pub regions: Vec<RegionChoice>,
}

/// `web/confirmed.html.j2`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfirmedPage {
    /// The site.
    pub site: SiteView,
    /// True when the link had been used before.
    pub already: bool,
    /// What the reader gets.
    pub regions: Vec<RegionChoice>,
    /// Their preferences page.
    pub preferences_url: String,
}

/// `web/preferences.html.j2`.
#[derive(Debug, Clone, Serialize)]
pub struct PreferencesPage {
    /// The site.
    pub site: SiteView,
    /// The page script's CSP nonce.
    pub nonce: String,
    /// The form's CSRF token.
    pub csrf: String,
    /// Where the forms post (carries the token).
    pub action: String,
    /// The reader's address.
    pub email: String,
    /// Regions, cadences, zone.
    pub choices: Choices,
    /// What is wrong with the last submission.
    pub errors: FormErrors,
    /// Whether there is anything in `errors`.
    pub has_errors: bool,
    /// True right after a successful save.
    pub saved: bool,
}

/// `web/unsubscribe.html.j2`: the button (a GET changes nothing).
#[derive(Debug, Clone, Serialize)]
pub struct UnsubscribePage {
    /// The site.
    pub site: SiteView,
    /// Where the button posts (carries the token).
    pub action: String,
    /// The reader's preferences page, for those who would rather change than leave.
    pub preferences_url: String,
}

/// `web/message.html.j2`, and the pages that need only the site.
#[derive(Debug, Clone, Serialize)]
pub struct MessagePage {
    /// The site.
    pub site: SiteView,
    /// Heading and title.
    pub title: String,
    /// Paragraphs of text.
    pub paragraphs: Vec<String>,
    /// A link to offer, or empty.
    pub link_url: String,
    /// Its text.
    pub link_text: String,
}

/// The loaded page templates.
pub struct Pages {
    env: minijinja::Environment<'static>,
    site: SiteView,
}

/// Every cadence, as the pickers offer it.
pub fn cadence_options() -> Vec<CadenceOption> {
    Cadence::ALL
        .iter()
        .map(|c| CadenceOption {
            value: c.as_str().into(),
            label: crate::compose::cadence_label(*c).into(),
        })
        .collect()
}

impl Pages {
    /// Loads `web/*.html.j2` (each from `mail.templates_dir` when there, else built in)
    /// and renders each with sample data.
    pub fn load(mail: &MailConfig) -> Result<Pages, PageError> {
        Pages::from_dir(mail, mail.templates_dir.as_deref())
    }

    /// As [`Pages::load`], with another override folder (or none).
    pub fn from_dir(mail: &MailConfig, override_dir: Option<&Path>) -> Result<Pages, PageError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_formatter(html_formatter);
        let mut origins = Vec::new();
        for name in TEMPLATES {
            let source = crate::templates::load(override_dir, name)?;
            origins.push((name, source.origin()));
            env.add_template_owned(name.to_string(), source.text)
                .map_err(|e| template_error(name, &e).with_origin(&origins))?;
        }
        let pages = Pages {
            env,
            site: SiteView {
                name: mail.list_name.clone(),
                postal_address: mail.postal_address.clone(),
            },
        };
        pages.self_test().map_err(|e| e.with_origin(&origins))?;
        Ok(pages)
    }

    /// The site, for page contexts.
    pub fn site(&self) -> SiteView {
        self.site.clone()
    }

    /// Renders one page.
    pub fn render(&self, name: &str, ctx: &impl Serialize) -> Result<String, PageError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(minijinja::value::Serde(ctx)))
            .map_err(|e| template_error(name, &e))
    }

    /// A page with only the site and a title: the fixed pages (check your inbox,
    /// unsubscribed, invalid link) and the generic message page.
    pub fn message(&self, title: &str, paragraphs: &[&str]) -> MessagePage {
        MessagePage {
            site: self.site(),
            title: title.into(),
            paragraphs: paragraphs.iter().map(|p| p.to_string()).collect(),
            link_url: String::new(),
            link_text: String::new(),
        }
    }

    fn self_test(&self) -> Result<(), PageError> {
        let row = |checked| PickerRow {
            slug: "sample".into(),
            name: "Sample <Town>".into(),
            context: "Sample State".into(),
            depth: 1,
            checked,
            cadence: "daily".into(),
        };
        let pickers = [
            Picker {
                search: false,
                groups: vec![super::regions::PickerGroup {
                    name: "Sample State".into(),
                    rows: vec![row(true), row(false)],
                }],
                rows: Vec::new(),
                query: String::new(),
                searched: false,
                found: 0,
                hidden: Vec::new(),
                action: "/".into(),
            },
            Picker {
                search: true,
                groups: Vec::new(),
                rows: vec![row(true), row(false)],
                query: "sam".into(),
                searched: true,
                found: 1,
                hidden: vec![Hidden {
                    name: "region".into(),
                    value: "sample".into(),
                }],
                action: "/".into(),
            },
        ];
        let errors = FormErrors {
            form: "Sample form error.".into(),
            email: "Sample email error.".into(),
            regions: "Sample regions error.".into(),
            timezone: "Sample zone error.".into(),
        };
        let regions = vec![RegionChoice {
            name: "Sample <Town>".into(),
            cadence: "daily".into(),
            cadence_label: "Daily digest".into(),
        }];
        for picker in pickers {
            let choices = Choices {
                picker,
                cadences: cadence_options(),
                zones: super::regions::zone_groups(),
                timezone: "UTC".into(),
                prefill_timezone: true,
            };
            for errors in [FormErrors::default(), errors.clone()] {
                self.render(
                    "web/signup.html.j2",
                    &SignupPage {
                        site: self.site(),
                        nonce: "sample".into(),
                        csrf: "sample".into(),
                        email: "sample@example.org".into(),
                        choices: choices.clone(),
                        consent_text: "Sample consent.".into(),
                        has_errors: errors.any(),
                        errors: errors.clone(),
                    },
                )?;
                self.render(
                    "web/preferences.html.j2",
                    &PreferencesPage {
                        site: self.site(),
                        nonce: "sample".into(),
                        csrf: "sample".into(),
                        action: "/preferences?token=sample".into(),
                        email: "sample@example.org".into(),
                        choices: choices.clone(),
                        has_errors: errors.any(),
                        errors,
                        saved: true,
                    },
                )?;
            }
        }
        self.render(
            "web/confirm.html.j2",
            &ConfirmPage {
                site: self.site(),
                action: "/confirm?token=sample".into(),
                regions: regions.clone(),
            },
        )?;
        for already in [false, true] {
            self.render(
                "web/confirmed.html.j2",
                &ConfirmedPage {
                    site: self.site(),
                    already,
                    regions: regions.clone(),
                    preferences_url: "/preferences?token=sample".into(),
                },
            )?;
        }
        self.render(
            "web/unsubscribe.html.j2",
            &UnsubscribePage {
                site: self.site(),
                action: "/unsubscribe?token=sample".into(),
                preferences_url: "/preferences?token=sample".into(),
            },
        )?;
        let mut message = self.message("Sample", &["One.", "Two."]);
        for name in [
            "web/check_inbox.html.j2",
            "web/unsubscribed.html.j2",
            "web/invalid_link.html.j2",
            "web/message.html.j2",
        ] {
            self.render(name, &message)?;
        }
        message.link_url = "/".into();
        message.link_text = "Home".into();
        self.render("web/message.html.j2", &message)?;
        Ok(())
    }
}

impl PageError {
    /// Adds where a broken page came from (an override file, or built in).
    fn with_origin(self, origins: &[(&str, String)]) -> PageError {
        match self {
            PageError::Template { name, message } => {
                let message = match origins.iter().find(|(n, _)| *n == name) {
                    Some((_, origin)) => format!("{message} ({origin})"),
                    None => message,
                };
                PageError::Template { name, message }
            }
            other => other,
        }
    }
}

fn template_error(name: &str, error: &minijinja::Error) -> PageError {
    let mut message = error.to_string();
    if let Some(line) = error.line() {
        message = format!("line {line}: {message}");
    }
    PageError::Template {
        name: name.to_string(),
        message,
    }
}

/// Headers beyond the defaults that one page response needs.
#[derive(Debug, Default)]
pub struct Extra {
    /// The nonce that lets the page's script run.
    pub nonce: Option<String>,
    /// A CSRF cookie to set.
    pub set_cookie: Option<HeaderValue>,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<i64>,
}

impl Extra {
    /// What a page with a form needs: the nonce for its script and, when the reader has
    /// none yet, the CSRF cookie.
    pub fn form(nonce: String, set_cookie: Option<HeaderValue>) -> Extra {
        Extra {
            nonce: Some(nonce),
            set_cookie,
            retry_after: None,
        }
    }
}

/// An HTML response with the security headers every page gets: nothing is cached (pages
/// can hold a reader's address and link tokens), no referrer carries a token to another
/// site, nothing
/// loads from elsewhere, and no other site may frame the page.
pub fn html(status: StatusCode, body: String, extra: Extra) -> Response {
    let script = match &extra.nonce {
        Some(nonce) => format!("script-src 'nonce-{nonce}'; connect-src 'self'; "),
        None => String::new(),
    };
    let csp = format!(
        "default-src 'none'; {script}style-src 'unsafe-inline'; img-src 'self' data:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // `same-origin`, not `no-referrer`: tokens never leave the site either way, but
    // with `no-referrer` browsers send `Origin: null` on form posts, which hides
    // whether a post came from this site.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    if let Some(cookie) = extra.set_cookie {
        headers.insert(header::SET_COOKIE, cookie);
    }
    if let Some(seconds) = extra.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

/// A fresh nonce for one page's script.
pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config() -> MailConfig {
        Config::from_toml(
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
        .mail
    }

    #[test]
    fn the_built_in_pages_load() {
        Pages::from_dir(&config(), None).unwrap();
    }

    #[test]
    fn a_broken_page_names_itself_and_its_file_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("web")).unwrap();
        std::fs::write(
            dir.path().join("web/confirm.html.j2"),
            "{% extends \"web/layout.html.j2\" %}{% block main %}{{ no_such_field }}{% endblock %}",
        )
        .unwrap();
        let err = Pages::from_dir(&config(), Some(dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("web/confirm.html.j2"), "{err}");
        assert!(err.contains("undefined"), "{err}");
        assert!(
            err.contains(&dir.path().join("web/confirm.html.j2").display().to_string()),
            "{err}"
        );
    }
}
