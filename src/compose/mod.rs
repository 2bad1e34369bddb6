//! Compose: templates in, MIME messages out.
//!
//! Templates are loaded and test-rendered once at start-up, so a broken template stops
//! herald with a clear error instead of producing half-rendered mail. Every header goes
//! through lettre's typed builders; feed text only ever reaches template variables,
//! which the HTML template auto-escapes.

mod headers;
mod shared;
mod signup;

use std::path::{Path, PathBuf};

use chrono::TimeZone;
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::dkim::DkimConfig;
use lettre::message::{Mailbox, MultiPart};
use serde::Serialize;

use crate::bounces::{BounceAddresses, mailto_unsubscribe_address, verp_address};
use crate::config::{DkimSettings, MailConfig};
use crate::domain::{
    ArticleId, Cadence, DeliveryArticle, DeliveryId, DeliveryKind, Email, MoreStories,
    SponsorBlock, SubscriberId, Timestamp, Timezone,
};
use crate::tokens::{Purpose, Signer};

pub use headers::{ListId, ListUnsubscribe, ListUnsubscribePost, Subject};
pub use signup::{RegionChoice, SignupContext, SignupRequest, cadence_label};

/// How long the links in an email keep working.
pub const LINK_LIFETIME_SECS: i64 = 400 * 86_400;

/// Templates every email kind needs; each must exist and render.
const TEMPLATES: [&str; 6] = [
    "email/digest.html.j2",
    "email/digest.txt.j2",
    "email/confirm.html.j2",
    "email/confirm.txt.j2",
    "email/welcome.html.j2",
    "email/welcome.txt.j2",
];

/// Why an email could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
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
    /// lettre refused to build the message.
    #[error("cannot build the email: {0}")]
    Build(String),
    /// The DKIM key cannot be used.
    #[error("cannot use the DKIM key {path}: {message}")]
    DkimKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// One rendered email, ready for a transport.
#[derive(Debug, Clone)]
pub struct Composed {
    /// SMTP envelope (MAIL FROM, RCPT TO).
    pub envelope: Envelope,
    /// The formatted message.
    pub bytes: Vec<u8>,
    /// The `Message-ID` header value, with angle brackets.
    pub message_id: String,
    /// The subject, for logs and previews.
    pub subject: String,
}

/// What a digest template is given. Field names are the template interface.
#[derive(Debug, Clone, Serialize)]
pub struct DigestContext {
    /// Site (list) name.
    pub site_name: String,
    /// The email's subject.
    pub subject: String,
    /// `daily`, `weekly`, `alert` or `manual`.
    pub cadence: String,
    /// The date line, in the reader's zone.
    pub edition_label: String,
    /// Articles grouped by region.
    pub groups: Vec<RegionGroup>,
    /// Total articles.
    pub article_count: usize,
    /// The stories the cap left out, per region (empty when none were).
    pub more: Vec<MoreView>,
    /// How many stories the cap left out in all.
    pub more_count: u32,
    /// The sponsor block, shown after the top stories (digests only).
    pub sponsor: Option<SponsorView>,
    /// Whether to print region headings (reader follows several regions).
    pub show_region_headings: bool,
    /// One-click unsubscribe link.
    pub unsubscribe_url: String,
    /// Preferences link.
    pub preferences_url: String,
    /// Sender's postal address.
    pub postal_address: String,
    /// The reader's address.
    pub reader_email: String,
}

/// A region heading and its articles.
#[derive(Debug, Clone, Serialize)]
pub struct RegionGroup {
    /// The region.
    pub region: RegionRef,
    /// Its articles, newest first.
    pub articles: Vec<ArticleView>,
}

/// A region's stories left out by the cap, as templates see them.
#[derive(Debug, Clone, Serialize)]
pub struct MoreView {
    /// The region's display name.
    pub region: String,
    /// How many stories.
    pub stories: u32,
    /// The region's page, or empty when none is known.
    pub url: String,
}

/// A sponsor block as templates see it; every field is plain text the templates escape.
#[derive(Debug, Clone, Serialize)]
pub struct SponsorView {
    /// "Sponsored by …".
    pub label: String,
    /// Headline.
    pub headline: String,
    /// Body text (may be empty).
    pub body: String,
    /// The https link.
    pub url: String,
    /// The https image, or empty.
    pub image: String,
    /// The image's alt text, or empty.
    pub alt: String,
}

/// A region as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct RegionRef {
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
}

/// An article as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct ArticleView {
    /// Title (plain text).
    pub title: String,
    /// Link (http or https).
    pub url: String,
    /// Summary (plain text).
    pub summary: String,
    /// Category.
    pub category: String,
    /// Publication time in the reader's zone, preformatted.
    pub published: String,
}

/// A digest to compose for one reader.
#[derive(Debug, Clone)]
pub struct DigestRequest<'a> {
    /// The reader's id (for signed links).
    pub subscriber_id: SubscriberId,
    /// The reader's address.
    pub email: &'a Email,
    /// The reader's zone, for dates.
    pub timezone: Timezone,
    /// The digest's cadence, if scheduled; `None` for manual sends.
    pub cadence: Option<Cadence>,
    /// Stored Message-ID (32 hex digits), reused on every retry.
    pub message_id: &'a str,
    /// The articles, ordered by region.
    pub articles: &'a [DeliveryArticle],
    /// The stories the cap left out, per region.
    pub more: &'a [MoreStories],
    /// The sponsor block the digest carries, if any.
    pub sponsor: Option<&'a SponsorBlock>,
    /// Now (for the date line and link expiry).
    pub now: Timestamp,
}

/// Renders and builds emails. Cheap to share between workers.
pub struct Composer {
    env: minijinja::Environment<'static>,
    from: Mailbox,
    domain: String,
    list_id: ListId,
    site_name: String,
    postal_address: String,
    public_url: url::Url,
    signer: Signer,
    dkim: Option<DkimConfig>,
    confirm_lifetime_secs: i64,
    shared: shared::SharedDigests,
    /// The bounce address (`[bounces] address`): the envelope sender of each email is
    /// its VERP form, and list mail offers a `mailto:` unsubscribe at it.
    bounces: Option<BounceAddresses>,
}

impl Composer {
    /// Loads the templates (each from `override_dir` when there, else built in) and
    /// checks each renders with sample data.
    /// Emails come from `mail`'s sender, their links start with `public_url` (and a
    /// confirmation link works for `confirm_link_lifetime`), and `dkim` signs them.
    pub fn new(
        mail: &MailConfig,
        public_url: &url::Url,
        confirm_link_lifetime: std::time::Duration,
        dkim: Option<&DkimSettings>,
        override_dir: Option<&Path>,
        signer: Signer,
    ) -> Result<Composer, ComposeError> {
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
        let domain = mail.sending_domain().to_string();
        let composer = Composer {
            env,
            from: mail.from.clone(),
            list_id: ListId::new(&mail.list_name, &domain),
            domain,
            site_name: mail.list_name.clone(),
            postal_address: mail.postal_address.clone(),
            public_url: public_url.clone(),
            signer,
            dkim: dkim.map(dkim_config).transpose()?,
            confirm_lifetime_secs: confirm_link_lifetime.as_secs() as i64,
            shared: shared::SharedDigests::new(),
            bounces: None,
        };
        composer.self_test().map_err(|e| e.with_origin(&origins))?;
        Ok(composer)
    }

    /// The same composer, writing VERP envelope senders and `mailto:` unsubscribes at
    /// `bounces` (`None`: the envelope sender is the From address, as before).
    pub fn with_bounces(mut self, bounces: Option<BounceAddresses>) -> Composer {
        self.bounces = bounces;
        self
    }

    /// Sets the envelope sender of `composed`, the email of delivery row `delivery`, to
    /// the VERP address naming that row, when there is a bounce address; the header
    /// `From` is not touched.
    pub fn address_bounces(&self, composed: &mut Composed, delivery: DeliveryId) {
        let Some(bounces) = &self.bounces else {
            return;
        };
        let Ok(sender) = verp_address(bounces, delivery).parse::<lettre::Address>() else {
            return;
        };
        if let Ok(envelope) = Envelope::new(Some(sender), composed.envelope.to().to_vec()) {
            composed.envelope = envelope;
        }
    }

    /// `List-Unsubscribe` for a reader: the https link, and the signed `mailto:` when
    /// there is a bounce mailbox.
    fn list_unsubscribe(
        &self,
        url: &str,
        subscriber_id: SubscriberId,
        now: Timestamp,
    ) -> ListUnsubscribe {
        match &self.bounces {
            Some(bounces) => ListUnsubscribe::with_mailto(
                url,
                &mailto_unsubscribe_address(bounces, subscriber_id, now),
            ),
            None => ListUnsubscribe::new(url),
        }
    }

    /// Renders every template once with sample data, so errors surface at start-up.
    fn self_test(&self) -> Result<(), ComposeError> {
        let email = Email::parse("sample.reader@example.org").expect("valid sample address");
        let articles = vec![DeliveryArticle {
            article_id: ArticleId::new(1),
            region_slug: "sample".parse().expect("a valid sample slug"),
            region_name: "Sample Town".into(),
            title: "Sample <story> & \"quotes\"".into(),
            link: "https://example.org/story".into(),
            summary: "A sample summary.".into(),
            category: "Community".into(),
            published_at: Some(Timestamp::from_unix(0)),
        }];
        self.digest(&DigestRequest {
            subscriber_id: SubscriberId::new(1),
            email: &email,
            timezone: Timezone::UTC,
            cadence: Some(Cadence::Daily),
            message_id: "00000000000000000000000000000000",
            articles: &articles,
            more: &[MoreStories {
                region_slug: "sample".parse().expect("a valid sample slug"),
                region_name: "Sample <Town>".into(),
                stories: 3,
                url: Some("https://example.org/sample?a=1&b=2".into()),
            }],
            sponsor: Some(&SponsorBlock {
                id: crate::domain::SponsorId::new(1),
                label: "Sponsored by <Sample> & Co".into(),
                headline: "A \"sample\" headline".into(),
                body: "Sample body <b>text</b>.".into(),
                link: "https://example.org/sponsor?a=1&b=2".into(),
                image: Some(("https://example.org/logo.png".into(), "Logo <alt>".into())),
            }),
            now: Timestamp::from_unix(0),
        })?;
        let regions = [crate::domain::ReaderRegion {
            slug: "sample".parse().expect("a valid sample slug"),
            name: "Sample <Town>".into(),
            cadence: Cadence::Daily,
        }];
        for kind in [DeliveryKind::Confirmation, DeliveryKind::Welcome] {
            self.signup_email(&SignupRequest {
                kind,
                subscriber_id: SubscriberId::new(1),
                email: &email,
                regions: &regions,
                timezone: Timezone::UTC,
                message_id: "00000000000000000000000000000000",
                now: Timestamp::from_unix(0),
            })?;
        }
        Ok(())
    }

    /// The one-click unsubscribe link for a reader.
    pub fn unsubscribe_url(&self, subscriber_id: SubscriberId, now: Timestamp) -> String {
        self.link("unsubscribe", Purpose::Unsubscribe, subscriber_id, now)
    }

    /// The preferences link for a reader.
    pub fn preferences_url(&self, subscriber_id: SubscriberId, now: Timestamp) -> String {
        self.link("preferences", Purpose::Preferences, subscriber_id, now)
    }

    fn link(
        &self,
        path: &str,
        purpose: Purpose,
        subscriber_id: SubscriberId,
        now: Timestamp,
    ) -> String {
        self.link_until(
            path,
            purpose,
            subscriber_id,
            now.unix() + LINK_LIFETIME_SECS,
        )
    }

    fn link_until(
        &self,
        path: &str,
        purpose: Purpose,
        subscriber_id: SubscriberId,
        expires_at: i64,
    ) -> String {
        let token = self.signer.sign(purpose, subscriber_id.get(), expires_at);
        let mut url = self.public_url.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{path}"));
        url.query_pairs_mut().clear().append_pair("token", &token);
        url.to_string()
    }

    /// Renders the template context of a digest (also used by `herald preview`).
    pub fn digest_context(&self, req: &DigestRequest<'_>) -> DigestContext {
        let mut groups: Vec<RegionGroup> = Vec::new();
        for article in req.articles {
            if groups.last().map(|g| g.region.slug.as_str()) != Some(article.region_slug.as_str()) {
                groups.push(RegionGroup {
                    region: RegionRef {
                        slug: article.region_slug.to_string(),
                        name: article.region_name.clone(),
                    },
                    articles: Vec::new(),
                });
            }
            let published = article
                .published_at
                .and_then(|t| req.timezone.tz().timestamp_opt(t.unix(), 0).single())
                .map(|t| t.format("%-d %b %Y, %H:%M").to_string())
                .unwrap_or_default();
            groups
                .last_mut()
                .expect("a group was pushed above")
                .articles
                .push(ArticleView {
                    title: article.title.clone(),
                    url: article.link.clone(),
                    summary: article.summary.clone(),
                    category: article.category.clone(),
                    published,
                });
        }
        let edition_label = self.edition_label(req);
        let label = match groups.as_slice() {
            [only] => only.region.name.clone(),
            _ => self.site_name.clone(),
        };
        let kind = match req.cadence {
            Some(Cadence::Daily) => "daily digest",
            Some(Cadence::Weekly) => "weekly digest",
            Some(Cadence::Alert) => "alert",
            None => "news update",
        };
        let first = req.articles.first().map(|a| a.title.as_str()).unwrap_or("");
        let more = req.articles.len().saturating_sub(1)
            + req.more.iter().map(|m| m.stories as usize).sum::<usize>();
        let subject = if more > 0 {
            format!("{label} {kind}: {first} (+{more} more)")
        } else {
            format!("{label} {kind}: {first}")
        };
        DigestContext {
            site_name: self.site_name.clone(),
            subject,
            cadence: req
                .cadence
                .map(|c| c.as_str().to_string())
                .unwrap_or_else(|| "manual".into()),
            edition_label,
            show_region_headings: groups.len() > 1,
            article_count: req.articles.len(),
            more: req
                .more
                .iter()
                .map(|m| MoreView {
                    region: m.region_name.clone(),
                    stories: m.stories,
                    url: m.url.clone().unwrap_or_default(),
                })
                .collect(),
            more_count: req.more.iter().map(|m| m.stories).sum(),
            sponsor: req.sponsor.map(|s| SponsorView {
                label: s.label.clone(),
                headline: s.headline.clone(),
                body: s.body.clone(),
                url: s.link.clone(),
                image: s.image.as_ref().map(|(u, _)| u.clone()).unwrap_or_default(),
                alt: s.image.as_ref().map(|(_, a)| a.clone()).unwrap_or_default(),
            }),
            groups,
            unsubscribe_url: self.unsubscribe_url(req.subscriber_id, req.now),
            preferences_url: self.preferences_url(req.subscriber_id, req.now),
            postal_address: self.postal_address.clone(),
            reader_email: req.email.to_string(),
        }
    }

    /// The date line: the day of `now` in the reader's zone.
    fn edition_label(&self, req: &DigestRequest<'_>) -> String {
        req.timezone
            .tz()
            .timestamp_opt(req.now.unix(), 0)
            .single()
            .map(|t| t.format("%A, %-d %B %Y").to_string())
            .unwrap_or_default()
    }

    /// Renders the text and HTML parts of a context.
    pub fn render_digest(&self, ctx: &DigestContext) -> Result<(String, String), ComposeError> {
        Ok((
            self.render("email/digest.txt.j2", ctx)?,
            self.render("email/digest.html.j2", ctx)?,
        ))
    }

    fn render(&self, name: &str, ctx: &impl Serialize) -> Result<String, ComposeError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(minijinja::value::Serde(ctx)))
            .map_err(|e| template_error(name, &e))
    }

    /// Builds the complete digest email for one reader: from its content group's
    /// template when the group has one (see `shared`), otherwise rendered in full.
    pub fn digest(&self, req: &DigestRequest<'_>) -> Result<Composed, ComposeError> {
        match self.digest_from_group(req)? {
            Some(composed) => Ok(composed),
            None => self.digest_in_full(req),
        }
    }

    /// Renders and builds a digest for one reader from scratch.
    pub fn digest_in_full(&self, req: &DigestRequest<'_>) -> Result<Composed, ComposeError> {
        let ctx = self.digest_context(req);
        let (text, html) = self.render_digest(&ctx)?;
        let unsubscribe = self.list_unsubscribe(&ctx.unsubscribe_url, req.subscriber_id, req.now);
        self.build(
            req.email,
            ctx.subject,
            self.message_id(req.message_id),
            Some(unsubscribe),
            text,
            html,
        )
    }

    /// Builds, signs and formats an email: list mail when it has an unsubscribe link.
    fn build(
        &self,
        to: &Email,
        subject: String,
        message_id: String,
        unsubscribe: Option<ListUnsubscribe>,
        text: String,
        html: String,
    ) -> Result<Composed, ComposeError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to.to_address()))
            .header(Subject::new(subject.clone()))
            .message_id(Some(message_id.clone()))
            .date(crate::clock::now_system());
        if let Some(header) = unsubscribe {
            builder = builder.header(header);
            if self.one_click() {
                builder = builder.header(ListUnsubscribePost);
            }
            builder = builder.header(self.list_id.clone());
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| ComposeError::Build(e.to_string()))?;
        let message = self.sign(message);
        Ok(Composed {
            envelope: message.envelope().clone(),
            bytes: message.formatted(),
            message_id,
            subject,
        })
    }

    /// Whether list mail offers one-click unsubscribe: RFC 8058 allows it only for an
    /// https link, and mail providers that see it with an http one may take the whole
    /// message for a forgery.
    pub fn one_click(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// Adds a DKIM-Signature when `[dkim]` is configured.
    fn sign(&self, mut message: Message) -> Message {
        if let Some(dkim) = &self.dkim {
            message.sign(dkim);
        }
        message
    }

    /// `<uuid@sending-domain>` from the stored 32 hex digits.
    fn message_id(&self, stored: &str) -> String {
        let uuid = u128::from_str_radix(stored, 16)
            .map(uuid::Uuid::from_u128)
            .unwrap_or_else(|_| uuid::Uuid::new_v4());
        format!("<{}@{}>", uuid.hyphenated(), self.domain)
    }
}

/// `text` with `& < > " '` escaped, as the HTML templates print a value.
pub(crate) fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// HTML-escapes `& < > " '` only: minijinja's default also escapes `/`, which turns
/// every link into `https:&#x2f;&#x2f;…` — valid, but unreadable in the source.
pub(crate) fn html_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &minijinja::Value,
) -> Result<(), minijinja::Error> {
    match (state.auto_escape(), value.as_str()) {
        (minijinja::AutoEscape::Html, Some(text)) if !value.is_safe() => {
            out.write_str(&html_escape(text)).map_err(|_| {
                minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "cannot write output")
            })
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Headers the DKIM signature covers: the ones receivers show, and the list headers
/// (so a forwarder cannot swap the unsubscribe link).
const DKIM_HEADERS: [&str; 8] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
];

/// Reads a DKIM key: PKCS#1 RSA PEM (`BEGIN RSA PRIVATE KEY`), PKCS#8 Ed25519 PEM
/// (`openssl genpkey -algorithm ed25519`), or a bare base64 Ed25519 seed.
fn dkim_config(settings: &DkimSettings) -> Result<DkimConfig, ComposeError> {
    use base64::Engine;
    use lettre::message::dkim::{
        DkimCanonicalization, DkimCanonicalizationType, DkimSigningAlgorithm, DkimSigningKey,
    };
    let fail = |message: String| ComposeError::DkimKey {
        path: settings.key_file.clone(),
        message,
    };
    let pem = std::fs::read_to_string(&settings.key_file).map_err(|e| fail(e.to_string()))?;
    let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
        DkimSigningKey::new(&pem, DkimSigningAlgorithm::Rsa).map_err(|e| fail(e.to_string()))?
    } else {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("");
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|e| fail(format!("not PEM or base64: {e}")))?;
        // A PKCS#8 Ed25519 key is 48 bytes ending in the 32-byte seed; a bare seed is 32.
        let seed = match der.len() {
            32 => der,
            48 if der[14..16] == [0x04, 0x20] => der[16..].to_vec(),
            _ => {
                return Err(fail(
                    "expected an RSA key in PKCS#1 PEM (convert with `openssl rsa -traditional`) or an Ed25519 key".into(),
                ));
            }
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(seed);
        DkimSigningKey::new(&encoded, DkimSigningAlgorithm::Ed25519)
            .map_err(|e| fail(e.to_string()))?
    };
    Ok(DkimConfig::new(
        settings.selector.clone(),
        settings.domain.clone(),
        key,
        DKIM_HEADERS
            .iter()
            .map(|h| lettre::message::header::HeaderName::new_from_ascii_str(h))
            .collect(),
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    ))
}

impl ComposeError {
    /// Adds where a broken template came from (an override file, or built in), so the
    /// operator knows which file to fix.
    fn with_origin(self, origins: &[(&str, String)]) -> ComposeError {
        match self {
            ComposeError::Template { name, message } => {
                let message = match origins.iter().find(|(n, _)| *n == name) {
                    Some((_, origin)) => format!("{message} ({origin})"),
                    None => message,
                };
                ComposeError::Template { name, message }
            }
            other => other,
        }
    }
}

pub(crate) fn template_error(name: &str, error: &minijinja::Error) -> ComposeError {
    let mut message = error.to_string();
    if let Some(line) = error.line() {
        message = format!("line {line}: {message}");
    }
    ComposeError::Template {
        name: name.to_string(),
        message,
    }
}

#[cfg(test)]
pub(super) mod tests;
