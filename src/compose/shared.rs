//! Digests rendered and encoded once per content group, personalised per reader.
//!
//! Readers of one edition mostly get the same articles in the same zone, so their
//! emails differ only in the address, the Message-ID and the reader's own links.
//! The second time a group is seen, its email is built once through lettre with a
//! marker in place of each personal value, and split at the markers into a template of
//! byte pieces. Each reader's email is then those pieces with the reader's values
//! spliced in, each encoded the way its place needs (bare in a header, HTML-escaped in
//! the HTML part, quoted-printable in both bodies). Quoted-printable allows a soft line
//! break anywhere, so every body piece is encoded on its own and ends with one: the
//! spliced result decodes to exactly what a full render would have produced, which is
//! checked for each group's first reader before its template is used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lettre::message::header::ContentType;
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};

use super::{ComposeError, Composed, Composer, DigestContext, DigestRequest, html_escape};
use super::{ListUnsubscribe, ListUnsubscribePost, Subject};
use crate::domain::{
    ArticleId, Cadence, DeliveryArticle, MoreStories, RegionSlug, SponsorBlock, SponsorId,
    Timestamp, Timezone,
};

/// A group's email is rebuilt after this long, so its `Date:` stays near the send time.
const TEMPLATE_LIFETIME_SECS: i64 = 60;

/// At most this many group templates are kept (each about twice a digest's size).
const MAX_TEMPLATES: usize = 256;

/// The values that differ between readers of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    /// The reader's address, in `To:` and in the body.
    Email,
    /// `<uuid@domain>`.
    MessageId,
    /// The one-click unsubscribe link.
    UnsubscribeUrl,
    /// The preferences link.
    PreferencesUrl,
    /// The signed address of the `mailto:` unsubscribe (only with a bounce address).
    UnsubscribeMailto,
}

impl Field {
    const ALL: [Field; 5] = [
        Field::Email,
        Field::MessageId,
        Field::UnsubscribeUrl,
        Field::PreferencesUrl,
        Field::UnsubscribeMailto,
    ];
}

/// How a spliced value is written where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A header value: the value as is (only ASCII values that need no quoting get here).
    Header,
    /// The text part: quoted-printable, then a soft line break.
    Text,
    /// The HTML part: HTML-escaped, quoted-printable, then a soft line break.
    Html,
}

#[derive(Debug)]
enum Piece {
    Bytes(Vec<u8>),
    Value(Field, Place),
}

/// One content group's email, split at the personal values.
#[derive(Debug)]
struct GroupTemplate {
    /// The articles it was rendered from, compared in full on every use: an article
    /// edited since gets a new template.
    articles: Vec<DeliveryArticle>,
    /// The stories left out by the cap it was rendered with.
    more: Vec<MoreStories>,
    /// The sponsor block it was rendered with.
    sponsor: Option<SponsorBlock>,
    built_at: Timestamp,
    subject: String,
    pieces: Vec<Piece>,
}

/// Which readers share one email body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    articles: Vec<ArticleId>,
    more: Vec<(RegionSlug, u32)>,
    sponsor: Option<SponsorId>,
    zone: Timezone,
    cadence: Option<Cadence>,
    edition_label: String,
}

#[derive(Debug)]
enum Entry {
    /// Seen once: a group of one is composed in full, without a template.
    Seen,
    Ready(Arc<GroupTemplate>),
    /// The templates do not treat the personal values as plain text (a filter on
    /// them, say): this group is always composed in full.
    Unsplittable,
}

/// The group templates of one composer.
pub(super) struct SharedDigests {
    markers: HashMap<Field, String>,
    groups: Mutex<HashMap<GroupKey, (Timestamp, Entry)>>,
}

impl SharedDigests {
    pub(super) fn new() -> SharedDigests {
        // A random part per process, so feed text cannot carry a marker.
        let nonce = format!("{:016x}", fastrand::u64(..));
        let markers = Field::ALL
            .into_iter()
            .map(|field| {
                (
                    field,
                    format!("heraldvalue{nonce}x{field:?}").to_lowercase(),
                )
            })
            .collect();
        SharedDigests {
            markers,
            groups: Mutex::new(HashMap::new()),
        }
    }

    fn marker(&self, field: Field) -> &str {
        &self.markers[&field]
    }
}

impl Composer {
    /// Composes a digest from its group's template if the group has a current one,
    /// without rendering anything: cheap enough to run on an async worker.
    pub fn digest_if_shared(&self, req: &DigestRequest<'_>) -> Option<Composed> {
        let key = self.group_key(req)?;
        let groups = self.shared.groups.lock().expect("not poisoned");
        let template = match groups.get(&key) {
            Some((_, Entry::Ready(template))) if current(template, req) => template.clone(),
            _ => return None,
        };
        drop(groups);
        Some(self.personalise(&template, req))
    }

    /// Composes a digest from its group's template when it has one, building the
    /// template the second time a group is seen; `None` means compose in full.
    pub(super) fn digest_from_group(
        &self,
        req: &DigestRequest<'_>,
    ) -> Result<Option<Composed>, ComposeError> {
        let Some(key) = self.group_key(req) else {
            return Ok(None);
        };
        let found = {
            let mut groups = self.shared.groups.lock().expect("not poisoned");
            match groups.get(&key) {
                Some((_, Entry::Ready(template))) if current(template, req) => {
                    Some(template.clone())
                }
                Some((_, Entry::Unsplittable)) => return Ok(None),
                Some((_, Entry::Seen | Entry::Ready(_))) => None,
                None => {
                    if groups.len() >= MAX_TEMPLATES {
                        groups.retain(|_, (at, _)| {
                            req.now.seconds_since(*at) < TEMPLATE_LIFETIME_SECS
                        });
                        if groups.len() >= MAX_TEMPLATES {
                            groups.clear();
                        }
                    }
                    groups.insert(key, (req.now, Entry::Seen));
                    return Ok(None);
                }
            }
        };
        let template = match found {
            Some(template) => template,
            None => {
                let entry = match self.group_template(req)? {
                    Some(template) => Entry::Ready(Arc::new(template)),
                    None => Entry::Unsplittable,
                };
                let ready = match &entry {
                    Entry::Ready(template) => Some(template.clone()),
                    _ => None,
                };
                self.shared
                    .groups
                    .lock()
                    .expect("not poisoned")
                    .insert(key, (req.now, entry));
                match ready {
                    Some(template) => template,
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(self.personalise(&template, req)))
    }

    /// The reader's content group, or `None` when this reader's email must be composed
    /// in full: a signature covers the whole message, and an address that lettre would
    /// quote or encode cannot be spliced into `To:`.
    fn group_key(&self, req: &DigestRequest<'_>) -> Option<GroupKey> {
        if self.dkim.is_some() || !plain_address(&req.email.to_string()) {
            return None;
        }
        Some(GroupKey {
            articles: req.articles.iter().map(|a| a.article_id).collect(),
            more: req
                .more
                .iter()
                .map(|m| (m.region_slug.clone(), m.stories))
                .collect(),
            sponsor: req.sponsor.map(|s| s.id),
            zone: req.timezone,
            cadence: req.cadence,
            edition_label: self.edition_label(req),
        })
    }

    /// The reader's values for each field.
    fn values(&self, req: &DigestRequest<'_>) -> HashMap<Field, String> {
        HashMap::from([
            (Field::Email, req.email.to_string()),
            (Field::MessageId, self.message_id(req.message_id)),
            (
                Field::UnsubscribeUrl,
                self.unsubscribe_url(req.subscriber_id, req.now),
            ),
            (
                Field::PreferencesUrl,
                self.preferences_url(req.subscriber_id, req.now),
            ),
            (
                Field::UnsubscribeMailto,
                self.bounces
                    .as_ref()
                    .map(|b| {
                        crate::bounces::mailto_unsubscribe_address(b, req.subscriber_id, req.now)
                    })
                    .unwrap_or_default(),
            ),
        ])
    }

    /// Splices one reader's values into a group template.
    fn personalise(&self, template: &GroupTemplate, req: &DigestRequest<'_>) -> Composed {
        let values = self.values(req);
        let mut bytes = Vec::with_capacity(
            template
                .pieces
                .iter()
                .map(|p| match p {
                    Piece::Bytes(b) => b.len(),
                    Piece::Value(..) => 256,
                })
                .sum(),
        );
        for piece in &template.pieces {
            match piece {
                Piece::Bytes(b) => bytes.extend_from_slice(b),
                Piece::Value(field, place) => write_value(&mut bytes, &values[field], *place),
            }
        }
        let to = req.email.to_address();
        Composed {
            envelope: lettre::address::Envelope::new(Some(self.from.email.clone()), vec![to])
                .expect("a recipient is given"),
            bytes,
            message_id: values[&Field::MessageId].clone(),
            subject: template.subject.clone(),
        }
    }

    /// Renders a group's email with markers for the personal values and splits it.
    /// `None` when splicing this reader's values into the marked render does not give
    /// exactly the full render (the templates transform a personal value).
    fn group_template(
        &self,
        req: &DigestRequest<'_>,
    ) -> Result<Option<GroupTemplate>, ComposeError> {
        let shared = &self.shared;
        let real = self.digest_context(req);
        let (real_text, real_html) = self.render_digest(&real)?;
        let marked = DigestContext {
            unsubscribe_url: shared.marker(Field::UnsubscribeUrl).to_string(),
            preferences_url: shared.marker(Field::PreferencesUrl).to_string(),
            reader_email: shared.marker(Field::Email).to_string(),
            ..real.clone()
        };
        let (text, html) = self.render_digest(&marked)?;
        let values = self.values(req);
        let splice = |rendered: &str, escape: bool| {
            let mut out = String::new();
            for (segment, field) in self.split(rendered) {
                out.push_str(segment);
                if let Some(field) = field {
                    let value = &values[&field];
                    if escape {
                        out.push_str(&html_escape(value));
                    } else {
                        out.push_str(value);
                    }
                }
            }
            out
        };
        if splice(&text, false) != real_text || splice(&html, true) != real_html {
            return Ok(None);
        }

        // The skeleton: lettre builds every header; each body is one marker line, since
        // the bodies are encoded here piece by piece.
        let body_marker = |part: &str| format!("{}{part}", shared.marker(Field::Email));
        let (text_marker, html_marker) = (body_marker("text"), body_marker("html"));
        let to_marker: Address = format!("{}@to.invalid", shared.marker(Field::Email))
            .parse()
            .map_err(|e: lettre::address::AddressError| ComposeError::Build(e.to_string()))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to_marker.clone()))
            .header(Subject::new(real.subject.clone()))
            .message_id(Some(shared.marker(Field::MessageId).to_string()))
            .date(crate::clock::now_system())
            .header(match &self.bounces {
                // A marker in the header's place; the value is always written folded
                // before it (see `ListUnsubscribe`), so the lengths do not matter.
                Some(_) => ListUnsubscribe::with_mailto(
                    shared.marker(Field::UnsubscribeUrl),
                    &format!("{}@to.invalid", shared.marker(Field::UnsubscribeMailto)),
                ),
                None => ListUnsubscribe::new(shared.marker(Field::UnsubscribeUrl)),
            });
        if self.one_click() {
            builder = builder.header(ListUnsubscribePost);
        }
        let message = builder
            .header(self.list_id.clone())
            .multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(
                        Body::dangerous_pre_encoded(
                            text_marker.clone().into_bytes(),
                            lettre::message::header::ContentTransferEncoding::QuotedPrintable,
                        ),
                    ))
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(
                        Body::dangerous_pre_encoded(
                            html_marker.clone().into_bytes(),
                            lettre::message::header::ContentTransferEncoding::QuotedPrintable,
                        ),
                    )),
            )
            .map_err(|e| ComposeError::Build(e.to_string()))?;
        let formatted = String::from_utf8(message.formatted())
            .map_err(|e| ComposeError::Build(e.to_string()))?;

        let mut pieces = Vec::new();
        let mut rest = formatted.as_str();
        let marks = [
            (to_marker.to_string(), Marked::Header(Field::Email)),
            (
                shared.marker(Field::MessageId).to_string(),
                Marked::Header(Field::MessageId),
            ),
            (
                shared.marker(Field::UnsubscribeUrl).to_string(),
                Marked::Header(Field::UnsubscribeUrl),
            ),
            (
                format!("{}@to.invalid", shared.marker(Field::UnsubscribeMailto)),
                Marked::Header(Field::UnsubscribeMailto),
            ),
            (text_marker, Marked::Body(&text, Place::Text)),
            (html_marker, Marked::Body(&html, Place::Html)),
        ];
        loop {
            let next = marks
                .iter()
                .filter_map(|(m, what)| rest.find(m.as_str()).map(|at| (at, m.len(), what)))
                .min_by_key(|(at, ..)| *at);
            let Some((at, len, what)) = next else {
                pieces.push(Piece::Bytes(rest.as_bytes().to_vec()));
                break;
            };
            pieces.push(Piece::Bytes(rest.as_bytes()[..at].to_vec()));
            match what {
                Marked::Header(field) => pieces.push(Piece::Value(*field, Place::Header)),
                Marked::Body(rendered, place) => {
                    // Line breaks are CRLF before encoding, so they stay hard breaks.
                    for (segment, field) in self.split(&crlf(rendered)) {
                        let mut encoded = quoted_printable::encode(segment.as_bytes());
                        if field.is_some() {
                            encoded.extend_from_slice(b"=\r\n");
                        }
                        pieces.push(Piece::Bytes(encoded));
                        if let Some(field) = field {
                            pieces.push(Piece::Value(field, *place));
                        }
                    }
                }
            }
            rest = &rest[at + len..];
        }
        Ok(Some(GroupTemplate {
            articles: req.articles.to_vec(),
            more: req.more.to_vec(),
            sponsor: req.sponsor.cloned(),
            built_at: req.now,
            subject: real.subject,
            pieces: merge(pieces),
        }))
    }

    /// `rendered` cut at each marker: (text before it, the marker's field), ending with
    /// (the rest, `None`).
    fn split<'r>(&self, rendered: &'r str) -> Vec<(&'r str, Option<Field>)> {
        let mut out = Vec::new();
        let mut rest = rendered;
        loop {
            let next = Field::ALL
                .iter()
                .filter_map(|f| rest.find(self.shared.marker(*f)).map(|at| (at, *f)))
                .min_by_key(|(at, _)| *at);
            match next {
                Some((at, field)) => {
                    out.push((&rest[..at], Some(field)));
                    rest = &rest[at + self.shared.marker(field).len()..];
                }
                None => {
                    out.push((rest, None));
                    return out;
                }
            }
        }
    }
}

/// What a marker in the skeleton stands for.
enum Marked<'a> {
    /// A header value.
    Header(Field),
    /// A whole body part: its marked render, encoded here piece by piece.
    Body(&'a str, Place),
}

/// Whether a template still fits a request: young enough for its `Date:`, and built
/// from the same article text (an edit since gives the group a new template).
fn current(template: &GroupTemplate, req: &DigestRequest<'_>) -> bool {
    req.now.seconds_since(template.built_at) < TEMPLATE_LIFETIME_SECS
        && template.articles == req.articles
        && template.more == req.more
        && template.sponsor.as_ref() == req.sponsor
}

/// Joins neighbouring byte pieces, so personalising is one copy per run of shared bytes.
fn merge(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match (out.last_mut(), piece) {
            (Some(Piece::Bytes(last)), Piece::Bytes(more)) => last.extend_from_slice(&more),
            (_, piece) => out.push(piece),
        }
    }
    out
}

/// Writes one value where it goes.
fn write_value(out: &mut Vec<u8>, value: &str, place: Place) {
    match place {
        Place::Header => out.extend_from_slice(value.as_bytes()),
        Place::Text => {
            out.extend_from_slice(&quoted_printable::encode(value.as_bytes()));
            out.extend_from_slice(b"=\r\n");
        }
        Place::Html => {
            out.extend_from_slice(&quoted_printable::encode(html_escape(value).as_bytes()));
            out.extend_from_slice(b"=\r\n");
        }
    }
}

/// `text` with every bare LF turned into CRLF.
fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut previous = '\0';
    for c in text.chars() {
        if c == '\n' && previous != '\r' {
            out.push('\r');
        }
        out.push(c);
        previous = c;
    }
    out
}

/// Whether lettre writes this address into `To:` as it is (no quoting, no encoding),
/// which is what splicing it into the header needs.
fn plain_address(address: &str) -> bool {
    address.is_ascii()
        && address
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_+@".contains(&b))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::compose::LINK_LIFETIME_SECS;
    use crate::config::Config;
    use crate::domain::{Email, SubscriberId};
    use crate::tokens::{Purpose, Signer};

    fn composer(templates: &Path) -> Composer {
        let config = Config::from_toml(
            Path::new("config/herald.toml"),
            r#"
            [http]
            public_url = "https://news.example.org/herald"
            [mail]
            from = "Demo News <news@demo.example>"
            postal_address = "1 Main St, Riverton"
            [[regions]]
            slug = "town"
            name = "Town"
            "#,
            std::iter::empty(),
        )
        .unwrap();
        crate::compose::tests::composer_for(&config, templates).unwrap()
    }

    fn shipped_templates() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates")
    }

    fn articles() -> Vec<DeliveryArticle> {
        (1..=6)
            .map(|i| DeliveryArticle {
                article_id: ArticleId::new(i),
                region_slug: "town".parse().unwrap(),
                region_name: "Town".into(),
                title: format!("Story {i}: the council's “long” meeting & <vote>"),
                link: format!("https://news.example.org/story/{i}?a=1&b=2"),
                summary: "Résumé of a meeting that ran long. ".repeat(12),
                category: "Civic".into(),
                published_at: Some(Timestamp::from_unix(1_795_248_000 - i * 3_600)),
            })
            .collect()
    }

    fn request<'a>(
        id: i64,
        email: &'a Email,
        message_id: &'a str,
        articles: &'a [DeliveryArticle],
    ) -> DigestRequest<'a> {
        DigestRequest {
            subscriber_id: SubscriberId::new(id),
            email,
            timezone: "Asia/Kolkata".parse().unwrap(),
            cadence: Some(Cadence::Daily),
            message_id,
            articles,
            more: &[],
            sponsor: None,
            now: Timestamp::from_unix(1_795_248_000),
        }
    }

    /// The message's headers (unfolded) and its two decoded parts, text then HTML.
    fn parse(bytes: &[u8]) -> (String, String, String, String) {
        let message = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            message.split("\r\n").all(|line| line.len() <= 998),
            "no line longer than SMTP allows"
        );
        let (headers, body) = message.split_once("\r\n\r\n").unwrap();
        let boundary = headers
            .split("boundary=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        let delimiter = format!("--{boundary}");
        let mut parts = body
            .split(&delimiter)
            .filter(|p| p.contains("Content-Type"))
            .map(|part| {
                let (part_headers, content) = part.split_once("\r\n\r\n").unwrap();
                let content = content.trim_end_matches("\r\n");
                let decoded = if part_headers.contains("quoted-printable") {
                    for line in content.split("\r\n") {
                        assert!(line.len() <= 76, "quoted-printable line too long: {line}");
                    }
                    quoted_printable::decode(content, quoted_printable::ParseMode::Strict).unwrap()
                } else {
                    content.as_bytes().to_vec()
                };
                let decoded = String::from_utf8(decoded).unwrap();
                assert!(
                    !decoded.replace("\r\n", "").contains('\n'),
                    "line breaks are CRLF"
                );
                decoded
            });
        let text = parts.next().unwrap();
        let html = parts.next().unwrap();
        (headers.replace("\r\n ", " "), boundary, text, html)
    }

    fn header<'h>(headers: &'h str, name: &str) -> &'h str {
        headers
            .split("\r\n")
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {headers}"))
    }

    #[test]
    fn the_mailto_unsubscribe_splices_like_a_full_render() {
        let bounces = crate::config::BouncesConfig {
            address: Some(crate::config::BounceAddress {
                local: "bounces".into(),
                domain: "news.example.org".into(),
            }),
            soft_limit: 3,
            sns_cert_hosts: vec![],
            mailgun_signing_key: None,
            imap: None,
            poll_interval: std::time::Duration::from_secs(60),
        };
        let addresses = crate::bounces::BounceAddresses::new(&bounces, &Signer::new(b"k"));
        let composer = composer(&shipped_templates()).with_bounces(addresses.clone());
        let addresses = addresses.unwrap();
        let articles = articles();
        for (id, address) in [
            (1, "ada@example.org"),
            (2, "bo@example.net"),
            (3, "cy@x.example"),
        ] {
            let email = Email::parse(address).unwrap();
            let message_id = format!("{id:032x}");
            let req = request(id, &email, &message_id, &articles);
            let composed = composer.digest(&req).unwrap();
            let full = composer.digest_in_full(&req).unwrap();
            let (headers, ..) = parse(&composed.bytes);
            let (full_headers, ..) = parse(&full.bytes);
            let list = header(&headers, "List-Unsubscribe");
            assert_eq!(list, header(&full_headers, "List-Unsubscribe"));
            let mailto = list
                .split("<mailto:")
                .nth(1)
                .and_then(|m| m.strip_suffix('>'))
                .unwrap_or_else(|| panic!("{list}"));
            assert_eq!(
                crate::bounces::reader_from_unsubscribe_address(&addresses, mailto)
                    .map(|r| r.reader),
                Some(SubscriberId::new(id))
            );
            if id == 3 {
                assert!(
                    composer.digest_if_shared(&req).is_some(),
                    "the group's template is used"
                );
            }
        }
    }

    #[test]
    fn readers_of_one_group_get_exactly_what_a_full_render_gives() {
        let composer = composer(&shipped_templates());
        let articles = articles();
        let mut boundaries = Vec::new();
        for (id, address) in [
            (1, "ada@example.org"),
            (2, "bo.b+news@example.net"),
            (3, "cy@x.example"),
        ] {
            let email = Email::parse(address).unwrap();
            let message_id = format!("{id:032x}");
            let req = request(id, &email, &message_id, &articles);
            let composed = composer.digest(&req).unwrap();
            let full = composer.digest_in_full(&req).unwrap();
            let (headers, boundary, text, html) = parse(&composed.bytes);
            let (full_headers, _, full_text, full_html) = parse(&full.bytes);
            assert_eq!(text, full_text, "reader {id}");
            assert_eq!(html, full_html, "reader {id}");
            for name in [
                "From",
                "To",
                "Subject",
                "Message-ID",
                "List-Unsubscribe",
                "List-Unsubscribe-Post",
                "List-Id",
                "MIME-Version",
            ] {
                assert_eq!(
                    header(&headers, name),
                    header(&full_headers, name),
                    "{name}"
                );
            }
            assert!(text.contains(address) && html.contains(address));
            assert!(
                html.contains(&format!(
                    "/herald/unsubscribe?token={}",
                    Signer::new(b"k").sign(
                        Purpose::Unsubscribe,
                        id,
                        1_795_248_000 + LINK_LIFETIME_SECS
                    )
                )),
                "{html}"
            );
            assert_eq!(composed.envelope, full.envelope);
            assert_eq!(composed.message_id, full.message_id);
            assert_eq!(composed.subject, full.subject);
            boundaries.push(boundary);
        }
        // The first reader was composed in full; the second built the group's template,
        // which the third reused (one MIME boundary for both).
        assert_ne!(boundaries[0], boundaries[1]);
        assert_eq!(boundaries[1], boundaries[2]);
    }

    #[test]
    fn an_edited_article_gets_a_new_template() {
        let composer = composer(&shipped_templates());
        let mut articles = articles();
        let email = Email::parse("ada@example.org").unwrap();
        let message_id = format!("{:032x}", 7);
        for _ in 0..3 {
            composer
                .digest(&request(1, &email, &message_id, &articles))
                .unwrap();
        }
        articles[2].title = "Corrected headline".into();
        let composed = composer
            .digest(&request(1, &email, &message_id, &articles))
            .unwrap();
        let (_, _, text, html) = parse(&composed.bytes);
        assert!(text.contains("Corrected headline") && html.contains("Corrected headline"));
    }

    #[test]
    fn a_template_that_transforms_a_personal_value_is_composed_in_full() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("email")).unwrap();
        for name in super::super::TEMPLATES {
            std::fs::copy(shipped_templates().join(name), dir.path().join(name)).unwrap();
        }
        std::fs::write(
            dir.path().join("email/digest.txt.j2"),
            "For {{ reader_email|upper }}: {{ subject }}\nUnsubscribe: {{ unsubscribe_url }}\n",
        )
        .unwrap();
        let composer = composer(dir.path());
        let articles = articles();
        let mut boundaries = std::collections::HashSet::new();
        for (id, address) in [
            (1, "ada@example.org"),
            (2, "bob@example.org"),
            (3, "cy@example.org"),
        ] {
            let email = Email::parse(address).unwrap();
            let message_id = format!("{id:032x}");
            let composed = composer
                .digest(&request(id, &email, &message_id, &articles))
                .unwrap();
            let (_, boundary, text, _) = parse(&composed.bytes);
            assert!(text.contains(&address.to_uppercase()), "{text}");
            boundaries.insert(boundary);
        }
        assert_eq!(boundaries.len(), 3, "every reader was composed in full");
    }
}
