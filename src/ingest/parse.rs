//! Feed bytes (RSS 0.9x/1.0/2.0, Atom, JSON Feed) to plain-text [`FeedItem`]s.
//!
//! Feed text is untrusted. Bytes are decoded to UTF-8 here (from the BOM, the XML
//! prolog or the HTTP charset), titles and summaries go through an allow-list HTML
//! sanitiser and are then reduced to plain text, links must resolve to absolute
//! http(s) URLs, and templates escape whatever is left. Entity declarations in a DTD
//! are never expanded, so an entity bomb stays a few kilobytes of text.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::links::check_link;
use crate::domain::FeedItem;

/// Longest summary kept, in characters.
const SUMMARY_CHARS: usize = 480;

/// Longest title kept, in characters.
const TITLE_CHARS: usize = 300;

/// Longest title made from a summary when an item has none, in characters.
const UNTITLED_CHARS: usize = 90;

/// Dates before this (1995-01-01) are a broken feed's zero value, not a publication time.
const EARLIEST_DATE: i64 = 788_918_400;

/// Dates further ahead than this are a wrong clock or a scheduled post; the article is
/// dated when first seen instead.
const FUTURE_SLACK_SECS: i64 = 24 * 3600;

/// The bytes are not a feed herald can read.
#[derive(Debug, thiserror::Error)]
#[error("not a valid RSS, Atom or JSON feed: {0}")]
pub struct ParseError(String);

/// What parsing needs to know besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct FeedContext {
    /// Where the feed came from (after redirects); relative links resolve against it.
    pub base: Option<url::Url>,
    /// The `charset` of the HTTP `Content-Type`, if the server sent one.
    pub charset: Option<String>,
    /// Categories (lower case) that make an item breaking news.
    pub breaking_categories: Vec<String>,
    /// Most items kept, in feed order, after dropping repeated GUIDs.
    pub max_items: usize,
    /// The time of this poll (Unix seconds), to reject dates in the future.
    pub now: i64,
    /// Keep links to IP addresses and internal names (`[ingest] allow_private`).
    pub keep_internal_links: bool,
}

/// A feed as read: its items, and what reading it took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedFeed {
    /// The items herald may store, in feed order.
    pub items: Vec<FeedItem>,
    /// The feed's own site link (RSS channel `<link>`, Atom alternate link), if it is
    /// one herald may mail.
    pub site_link: Option<String>,
    /// When the document was not well-formed (or wrongly labelled) and was read after
    /// repairs: the first thing that was wrong with it.
    pub recovered: Option<String>,
    /// Why a document with `<item>` or `<entry>` elements gave no items.
    pub warning: Option<String>,
}

/// Parses a feed. Entries without a link herald may mail (see `links`) are skipped;
/// an entry whose GUID was already seen in the same document is skipped.
pub fn parse_feed(bytes: &[u8], context: &FeedContext) -> Result<Vec<FeedItem>, ParseError> {
    read_feed(bytes, context).map(|feed| feed.items)
}

/// Reads a feed as publishers really write them. The strict parser goes first; when it
/// refuses the document (or finds no entries in a document that has `<item>` or
/// `<entry>` elements), the document is repaired (see [`repair_xml`]) and read again,
/// and the strict parser's error is kept as the reason. Repaired text goes through the
/// same sanitising as any other, so nothing unsafe is stored either way.
pub fn read_feed(bytes: &[u8], context: &FeedContext) -> Result<ParsedFeed, ParseError> {
    let (text, encoding_note) = to_utf8_noting(bytes, context.charset.as_deref());
    let elements = entry_elements(&text);
    let strict = parse_document(&text, context);
    // The strict parser passes HTML entities through as text, which the sanitiser
    // would decode, but the document is still not XML: say so, and read it repaired.
    let undefined = undefined_entity(&text);
    // Likewise text before the first tag, which the parser skips.
    let stray = text
        .trim_start()
        .chars()
        .next()
        .filter(|c| *c != '<' && *c != '{' && text.contains('<'));
    let needs_repair = match &strict {
        Err(_) => true,
        Ok(feed) => {
            (feed.entries.is_empty() && elements > 0) || undefined.is_some() || stray.is_some()
        }
    };
    if needs_repair {
        let repaired = repair_xml(&text);
        if repaired != *text
            && let Ok(feed) = parse_document(&repaired, context)
            && !feed.entries.is_empty()
        {
            let first_error = match (&strict, undefined) {
                (Err(e), _) => e.0.clone(),
                (Ok(_), _) if stray.is_some() => {
                    "the document has text before its first tag (a stray byte before the XML prolog)"
                        .to_string()
                }
                (Ok(_), Some(name)) => format!(
                    "the entity &{name}; is not defined in XML (only amp, lt, gt, quot and apos are)"
                ),
                (Ok(_), None) => {
                    format!("no entries found in {elements} <item>/<entry> element(s)")
                }
            };
            let mut parsed = feed_items(feed, context);
            parsed.recovered = Some(encoding_note.unwrap_or(first_error));
            parsed.warning = no_items_warning(&parsed, elements, None);
            return Ok(parsed);
        }
    }
    let feed = strict?;
    let entries = feed.entries.len();
    let mut parsed = feed_items(feed, context);
    parsed.recovered = encoding_note;
    parsed.warning = no_items_warning(&parsed, elements, Some(entries));
    Ok(parsed)
}

/// The warning for a document with `<item>`/`<entry>` elements that gave no items:
/// either the parser found no entries in it, or none had a link herald may mail.
fn no_items_warning(
    parsed: &ParsedFeed,
    elements: usize,
    entries: Option<usize>,
) -> Option<String> {
    if !parsed.items.is_empty() || elements == 0 {
        return None;
    }
    Some(match entries {
        Some(0) => format!(
            "the feed has {elements} <item>/<entry> element(s) but none could be read as an \
             entry (check the root element and its namespace)"
        ),
        _ => format!(
            "the feed has {elements} <item>/<entry> element(s) but none has a link herald may \
             mail (http or https, to a public host)"
        ),
    })
}

/// The first entity reference outside CDATA that XML does not define, in a document
/// without a DOCTYPE (a DTD may define any name; such documents are left as they are).
fn undefined_entity(text: &str) -> Option<&str> {
    if text.contains("<!DOCTYPE") {
        return None;
    }
    let mut rest = text;
    loop {
        let next = rest.find(['&', '<'])?;
        rest = &rest[next..];
        if rest.starts_with("<![CDATA[") {
            rest = &rest[rest.find("]]>").map_or(rest.len(), |e| e + 3)..];
            continue;
        }
        if rest.starts_with('<') {
            rest = &rest[1..];
            continue;
        }
        let after = &rest[1..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .unwrap_or(after.len());
        let name = &after[..end];
        if after[end..].starts_with(';')
            && !name.is_empty()
            && !name.starts_with('#')
            && !XML_ENTITIES.contains(&name)
        {
            return Some(name);
        }
        rest = after;
    }
}

/// How many `<item>` and `<entry>` start tags the text has (any namespace prefix).
fn entry_elements(text: &str) -> usize {
    let mut count = 0;
    let mut rest = text;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        let local = name.rsplit(':').next().unwrap_or(name);
        if local == "item" || local == "entry" {
            count += 1;
        }
    }
    count
}

/// Parses UTF-8 feed text strictly.
fn parse_document(text: &str, context: &FeedContext) -> Result<feed_rs::model::Feed, ParseError> {
    let parser = feed_rs::parser::Builder::new()
        .base_uri(context.base.as_ref().map(|u| u.as_str()))
        // Missing ids stay empty so that herald keys them itself (link + title), the
        // same way on every poll whatever the parser's version.
        .id_generator(|_, _, _| String::new())
        .build();
    parser
        .parse(text.as_bytes())
        .map_err(|e| ParseError(e.to_string()))
}

/// The items of a parsed document, and its site link.
fn feed_items(feed: feed_rs::model::Feed, context: &FeedContext) -> ParsedFeed {
    let base = context.base.as_ref();
    let site_link = pick_link(&feed.links, "", base, context.keep_internal_links);
    let max_items = if context.max_items == 0 {
        usize::MAX
    } else {
        context.max_items
    };
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for entry in feed.entries {
        if items.len() >= max_items {
            break;
        }
        let Some(link) = pick_link(&entry.links, &entry.id, base, context.keep_internal_links)
        else {
            continue;
        };
        let summary_source = entry
            .summary
            .as_ref()
            .map(|t| t.content.as_str())
            .or_else(|| entry.content.as_ref().and_then(|c| c.body.as_deref()))
            .unwrap_or_default();
        let summary = plain_summary(summary_source);
        let title = entry
            .title
            .as_ref()
            .map(|t| plain_title(&t.content))
            .unwrap_or_default();
        // RSS 0.92 made titles optional: the summary's opening words read better in an
        // email than a bare address.
        let title = match (title.is_empty(), summary.is_empty()) {
            (false, _) => title,
            (true, false) => truncate(&summary, UNTITLED_CHARS),
            (true, true) => link.clone(),
        };
        let categories: Vec<String> = entry
            .categories
            .iter()
            .map(|c| html_to_text(c.label.as_deref().unwrap_or(&c.term)))
            .filter(|c| !c.is_empty())
            .collect();
        let breaking = categories
            .iter()
            .any(|c| context.breaking_categories.contains(&c.to_lowercase()));
        let category = categories.into_iter().next().unwrap_or_default();
        let guid = entry.id.trim();
        let guid = if guid.is_empty() {
            format!("{link}#{title}")
        } else {
            guid.to_string()
        };
        // A feed that repeats a GUID gets its first item stored once.
        if !seen.insert(guid.clone()) {
            continue;
        }
        let published_at = entry
            .published
            .or(entry.updated)
            .and_then(|t: DateTime<Utc>| plausible_date(t.timestamp(), context.now));
        items.push(FeedItem {
            guid,
            link,
            title,
            summary,
            category,
            published_at,
            breaking,
        });
    }
    ParsedFeed {
        items,
        site_link,
        recovered: None,
        warning: None,
    }
}

/// The XML entities every parser knows; any other name is an HTML entity.
const XML_ENTITIES: [&str; 5] = ["amp", "lt", "gt", "quot", "apos"];

/// Repairs the ways publishers commonly break XML, for a second reading after the strict
/// parser failed: anything before the first `<` goes (a stray byte before the prolog);
/// the obsolete Atom 0.3 namespace becomes Atom 1.0 (its `issued` and `modified` dates
/// become `published` and `updated`); outside CDATA sections, an HTML entity such as
/// `&nbsp;` or `&eacute;` becomes the character reference XML knows, and a bare `&`
/// becomes `&amp;`.
fn repair_xml(text: &str) -> String {
    let text = match text.find('<') {
        Some(at) => &text[at..],
        None => text,
    };
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while !rest.is_empty() {
        if rest.starts_with("<![CDATA[") {
            let end = rest.find("]]>").map_or(rest.len(), |e| e + 3);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let Some(next) = rest.find(['&', '<']) else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..next]);
        rest = &rest[next..];
        if rest.starts_with('<') {
            if rest.starts_with("<![CDATA[") {
                continue;
            }
            out.push('<');
            rest = &rest[1..];
            continue;
        }
        // An entity reference: `&name;` or `&#…;` within a few characters.
        let reference = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .filter(|&end| rest[1 + end..].starts_with(';') && end > 0)
            .map(|end| &rest[1..1 + end]);
        match reference {
            Some(name) if XML_ENTITIES.contains(&name) || name.starts_with('#') => {
                out.push('&');
                out.push_str(name);
                out.push(';');
                rest = &rest[name.len() + 2..];
            }
            Some(name) => {
                match html_entity(name) {
                    Some(decoded) => {
                        for c in decoded.chars() {
                            out.push_str(&format!("&#{};", u32::from(c)));
                        }
                    }
                    None => {
                        out.push_str("&amp;");
                        out.push_str(name);
                        out.push(';');
                    }
                }
                rest = &rest[name.len() + 2..];
            }
            None => {
                out.push_str("&amp;");
                rest = &rest[1..];
            }
        }
    }
    if out.contains("http://purl.org/atom/ns#") {
        out = out.replace("http://purl.org/atom/ns#", "http://www.w3.org/2005/Atom");
        for (old, new) in [("issued", "published"), ("modified", "updated")] {
            out = out
                .replace(&format!("<{old}>"), &format!("<{new}>"))
                .replace(&format!("</{old}>"), &format!("</{new}>"));
        }
    }
    out
}

/// The text of an HTML named entity (`eacute` → `é`), by the HTML parser's own table;
/// `None` for a name HTML does not define.
fn html_entity(name: &str) -> Option<String> {
    static DECODER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(ammonia::Builder::empty);
    if name.len() > 32 {
        return None;
    }
    let written = format!("&{name};");
    let cleaned = DECODER.clean(&written).to_string();
    if cleaned == written {
        return None;
    }
    // The serializer writes `&`, `<`, `>` and the no-break space back as entities.
    let decoded = match cleaned.as_str() {
        "&nbsp;" => "\u{a0}".to_string(),
        "&amp;" => "&".to_string(),
        "&lt;" => "<".to_string(),
        "&gt;" => ">".to_string(),
        other => other.to_string(),
    };
    (!decoded.contains('&') && !decoded.is_empty()).then_some(decoded)
}

/// A title from untrusted HTML or text: sanitised, plain, cut at a word if very long.
pub fn plain_title(input: &str) -> String {
    truncate(&html_to_text(input), TITLE_CHARS)
}

/// A summary from untrusted HTML or text: sanitised, plain, cut to digest length.
pub fn plain_summary(input: &str) -> String {
    truncate(&html_to_text(input), SUMMARY_CHARS)
}

/// `t` if it can be a publication time at `now`; `None` makes the article dated when
/// first seen.
pub fn plausible_date(t: i64, now: i64) -> Option<i64> {
    (EARLIEST_DATE..=now + FUTURE_SLACK_SECS)
        .contains(&t)
        .then_some(t)
}

/// The entry's web page: the `alternate` link if marked, else the first plain link,
/// else an id that is itself a web address (RSS permalinks without `<link>`); each
/// only if it may be mailed.
fn pick_link(
    links: &[feed_rs::model::Link],
    id: &str,
    base: Option<&url::Url>,
    keep_internal: bool,
) -> Option<String> {
    let resolve = |href: &str| {
        let parsed = match base {
            Some(base) => base.join(href.trim()).ok(),
            None => url::Url::parse(href.trim()).ok(),
        }?;
        check_link(&parsed, keep_internal)
            .is_ok()
            .then(|| parsed.to_string())
    };
    let mut candidates: Vec<&feed_rs::model::Link> = links
        .iter()
        .filter(|l| l.target.is_none())
        .filter(|l| matches!(l.rel.as_deref(), None | Some("alternate")))
        .collect();
    candidates.sort_by_key(|l| l.rel.as_deref() != Some("alternate"));
    candidates
        .into_iter()
        .find_map(|l| resolve(&l.href))
        .or_else(|| {
            let id = id.trim();
            (id.starts_with("http://") || id.starts_with("https://"))
                .then(|| resolve(id))
                .flatten()
        })
}

/// Decodes the feed to UTF-8. The byte-order mark wins, then the XML prolog's
/// `encoding` (written by whoever produced the bytes), then the HTTP charset, then
/// UTF-8. Labels are often wrong, so the bytes have the last word: bytes that are
/// valid UTF-8 with non-ASCII characters are read as UTF-8 whatever the label says
/// (no other encoding in use produces them by chance), and bytes that are not valid
/// UTF-8 under a UTF-8 label or none are read as Windows-1252, the usual mislabel; each
/// such case comes back with a note saying so. XML declarations are then removed so the
/// XML parser does not decode a second time.
fn to_utf8_noting<'a>(
    bytes: &'a [u8],
    http_charset: Option<&str>,
) -> (Cow<'a, str>, Option<String>) {
    if let Some((encoding, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        let (text, _) = encoding.decode_without_bom_handling(&bytes[bom_len..]);
        return (Cow::Owned(relabel_prolog(&text).into_owned()), None);
    }
    let label = xml_declared_encoding(bytes).or(http_charset);
    let declared = label
        .and_then(|label| encoding_rs::Encoding::for_label(label.trim().as_bytes()))
        // A UTF-16 label on bytes without a BOM is almost always wrong (the bytes that
        // spelled the label were ASCII); trust the bytes.
        .filter(|e| *e != encoding_rs::UTF_16LE && *e != encoding_rs::UTF_16BE);
    let utf8 = std::str::from_utf8(bytes).ok();
    let (text, note) = match (declared, utf8) {
        (Some(encoding), Some(text)) if encoding != encoding_rs::UTF_8 && !text.is_ascii() => (
            Cow::Borrowed(text),
            Some(format!(
                "the feed declares the encoding {}, but its bytes are UTF-8; read as UTF-8",
                encoding.name()
            )),
        ),
        (Some(encoding), _) if encoding != encoding_rs::UTF_8 => (
            Cow::Owned(encoding.decode_without_bom_handling(bytes).0.into_owned()),
            None,
        ),
        (_, Some(text)) => (Cow::Borrowed(text), None),
        (declared, None) => (
            Cow::Owned(
                encoding_rs::WINDOWS_1252
                    .decode_without_bom_handling(bytes)
                    .0
                    .into_owned(),
            ),
            Some(if declared.is_some() {
                "the feed declares UTF-8, but its bytes are not; read as Windows-1252".to_string()
            } else {
                "the feed declares no encoding and its bytes are not UTF-8; read as Windows-1252"
                    .to_string()
            }),
        ),
    };
    let text = match relabel_prolog(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(changed) => Cow::Owned(changed),
    };
    (text, note)
}

/// The `encoding="…"` of an XML declaration at the start of the bytes, if any.
fn xml_declared_encoding(bytes: &[u8]) -> Option<&str> {
    let head = &bytes[..bytes.len().min(512)];
    let start = head.iter().position(|b| !b.is_ascii_whitespace())?;
    let head = head[start..].strip_prefix(b"<?xml")?;
    let end = head.windows(2).position(|w| w == b"?>")?;
    let decl = std::str::from_utf8(&head[..end]).ok()?;
    let at = decl.find("encoding")?;
    let rest = decl[at + "encoding".len()..]
        .trim_start()
        .strip_prefix('=')?;
    let rest = rest.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &rest[1..];
    rest.find(quote).map(|close| &rest[..close])
}

/// Removes XML declarations from text that is UTF-8 by now, so the XML parser reads it
/// as UTF-8 and never switches decoders: a declaration in the wrong place (anywhere
/// but the very start) makes the parser's decoder panic instead of failing. The leading
/// one goes; any later one is renamed into an ignorable processing instruction.
fn relabel_prolog(text: &str) -> Cow<'_, str> {
    if !text.contains("<?xml") {
        return Cow::Borrowed(text);
    }
    let mut rest = text.trim_start();
    if rest.starts_with("<?xml")
        && let Some(end) = rest.find("?>")
    {
        rest = &rest[end + 2..];
    }
    Cow::Owned(rest.replace("<?xml", "<?herald-ignored"))
}

/// Block-level tags the sanitiser keeps, without attributes, so that they can become
/// word breaks; every other tag is dropped with its attributes (its text stays), and
/// `script`/`style` are dropped with their content.
static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::empty();
    builder
        .tags(HashSet::from([
            "p",
            "br",
            "div",
            "li",
            "ul",
            "ol",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "blockquote",
            "pre",
            "hr",
            "table",
            "tr",
            "td",
            "th",
            "dd",
            "dt",
            "figcaption",
        ]))
        .generic_attributes(HashSet::new())
        .tag_attributes(Default::default())
        .link_rel(None)
        .strip_comments(true);
    builder
});

/// Reduces HTML (or plain text) to plain text: an allow-list sanitiser parses it as a
/// browser would, block tags become spaces, entities are decoded, whitespace collapsed.
pub fn html_to_text(input: &str) -> String {
    // Most titles are plain text; skip the HTML parser for them.
    let text = if input.contains(['<', '&']) {
        let cleaned = SANITIZER.clean(input).to_string();
        // The sanitiser's output holds only attribute-less allow-listed tags, so every
        // '<' opens one of them and every literal '<' is escaped as `&lt;`.
        let mut spaced = String::with_capacity(cleaned.len());
        let mut in_tag = false;
        for ch in cleaned.chars() {
            match ch {
                '<' => in_tag = true,
                '>' if in_tag => {
                    in_tag = false;
                    spaced.push(' ');
                }
                _ if in_tag => {}
                _ => spaced.push(ch),
            }
        }
        decode_entities(&spaced)
    } else {
        input.to_string()
    };
    let visible: String = text
        .chars()
        .filter(|c| c.is_whitespace() || !(c.is_control() || hidden(*c)))
        .collect();
    visible.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Characters that change how text reads without being seen: text-direction controls
/// (U+202E shows what follows backwards) and zero-width or invisible characters (look-
/// alike words, hidden breaks). The zero-width joiner and non-joiner stay: Persian,
/// Indic scripts and emoji sequences need them to render correctly.
fn hidden(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                  // soft hyphen
            | '\u{061C}'            // Arabic letter mark
            | '\u{180E}'            // Mongolian vowel separator
            | '\u{200B}'            // zero-width space
            | '\u{200E}'..='\u{200F}' // left-to-right and right-to-left marks
            | '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{206A}'..='\u{206F}' // deprecated format characters
            | '\u{FEFF}'            // zero-width no-break space (byte-order mark)
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotation
    )
}

/// Decodes the few entities the sanitiser writes (and numeric ones); anything else is
/// left as written.
fn decode_entities(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let semi = after.find(';').filter(|&i| i <= 10);
        let decoded = semi.and_then(|semi| {
            let name = &after[1..semi];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => {
                    let number = name.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code).filter(|c| !c.is_control() || c.is_whitespace())
                }
            }?;
            Some((ch, semi))
        });
        match decoded {
            Some((ch, semi)) => {
                out.push(ch);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    let cut = match cut.rfind(' ') {
        Some(space) if space > max / 2 => &cut[..space],
        _ => &cut,
    };
    format!("{}…", cut.trim_end_matches([',', '.', ';', ':', ' ']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> FeedContext {
        FeedContext {
            breaking_categories: vec!["breaking".into()],
            max_items: 200,
            now: 1_800_000_000,
            ..FeedContext::default()
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/feeds")
            .join(name);
        std::fs::read(path).unwrap()
    }

    /// Each way publishers break XML: the strict parser refuses it (or misreads it),
    /// the items are recovered in the right characters, and the reason is kept.
    #[test]
    fn broken_feeds_are_recovered_with_the_first_error() {
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "rss20-bare-ampersand.xml",
                &[
                    "Bread & Butter Fair returns to the green",
                    "Smith & Sons hardware marks 50 years",
                ],
                "",
            ),
            (
                "rss20-html-entities.xml",
                &[
                    "Café on Pier Street reopens after repairs",
                    "School board names new principal – a familiar face",
                ],
                "",
            ),
            (
                "rss20-no-encoding-declaration.xml",
                &[
                    "Se inaugura la nueva biblioteca en la Pequeña Plaza",
                    "Concurso de crème brûlée en el mercado",
                ],
                "declares no encoding",
            ),
            (
                "rss20-utf8-declared-latin1.xml",
                &[
                    "Crème brûlée contest fills the harbour hall",
                    "Ferry to Øster Island adds a late sailing",
                ],
                "bytes are UTF-8",
            ),
            (
                "atom03.xml",
                &[
                    "Trail crew clears the ridge path",
                    "Library extends winter hours",
                ],
                "",
            ),
            (
                "rss20-stray-byte-before-prolog.xml",
                &[
                    "Snow closes the pass overnight",
                    "Council approves the new bus shelter",
                ],
                "",
            ),
        ];
        for (name, titles, reason) in cases {
            let feed = read_feed(&fixture(name), &context()).unwrap();
            let got: Vec<&str> = feed.items.iter().map(|i| i.title.as_str()).collect();
            assert_eq!(&got, titles, "{name}");
            let recovered = feed
                .recovered
                .unwrap_or_else(|| panic!("{name} is not marked recovered"));
            assert!(recovered.contains(reason), "{name}: {recovered}");
            assert_eq!(feed.warning, None, "{name}");
            assert!(
                feed.site_link
                    .as_deref()
                    .is_some_and(|l| l.starts_with("https://")),
                "{name}: {:?}",
                feed.site_link
            );
        }
        // The bare `&` in a link is the query separator it was meant to be.
        let feed = read_feed(&fixture("rss20-bare-ampersand.xml"), &context()).unwrap();
        assert_eq!(
            feed.items[0].link,
            "https://millbrook-ledger.example/story?id=1&ref=rss"
        );
        // Atom 0.3 dates become publication times.
        let feed = read_feed(&fixture("atom03.xml"), &context()).unwrap();
        assert!(feed.items.iter().all(|i| i.published_at.is_some()));
    }

    #[test]
    fn a_well_formed_feed_is_not_marked_recovered() {
        let feed = read_feed(&fixture("rss20-basic.xml"), &context()).unwrap();
        assert_eq!(feed.recovered, None);
        assert_eq!(feed.warning, None);
        assert!(!feed.items.is_empty());
    }

    #[test]
    fn entries_that_give_no_items_are_a_warning_with_the_reason() {
        let unsafe_links = br#"<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
            <item><title>a</title><link>javascript:alert(1)</link></item>
            <item><title>b</title><link>ftp://files.example/b</link></item></channel></rss>"#;
        let feed = read_feed(unsafe_links, &context()).unwrap();
        assert!(feed.items.is_empty());
        let warning = feed.warning.expect("a warning");
        assert!(warning.contains("2 <item>/<entry>"), "{warning}");
        assert!(warning.contains("link herald may mail"), "{warning}");

        let empty = read_feed(&fixture("rss20-empty-channel.xml"), &context()).unwrap();
        assert_eq!(empty.warning, None, "no entries at all is no warning");
    }

    #[test]
    fn repairs_leave_cdata_and_known_references_alone() {
        let text = "x<a>&amp; &#233; &eacute; & <![CDATA[a & b &nbsp;]]> &bogus;</a>";
        assert_eq!(
            repair_xml(text),
            "<a>&amp; &#233; &#233; &amp; <![CDATA[a & b &nbsp;]]> &amp;bogus;</a>"
        );
    }

    #[test]
    fn html_becomes_plain_text() {
        assert_eq!(
            html_to_text(
                "<p>Council <em>approves</em> &amp; funds</p><script>alert(1)</script>bridge"
            ),
            "Council approves & funds bridge"
        );
        assert_eq!(html_to_text("a < b &unknown; c"), "a < b &unknown; c");
        assert_eq!(html_to_text("&#60;script&#x3E;"), "<script>");
        assert_eq!(
            html_to_text(r#"<a title=">" href="javascript:x()">Park</a> <b>opens</b>"#),
            "Park opens"
        );
        assert_eq!(
            html_to_text("Line one<br>line two<!-- note --><style>p{}</style>"),
            "Line one line two"
        );
        assert_eq!(html_to_text("Fish &amp; chips"), "Fish & chips");
    }

    #[test]
    fn direction_controls_and_invisible_characters_are_dropped() {
        assert_eq!(
            html_to_text("Council \u{202E}evorppa\u{202C} vote"),
            "Council evorppa vote"
        );
        assert_eq!(
            html_to_text("\u{FEFF}Fi\u{200B}re at\u{00AD} the \u{2066}mill\u{2069} \u{200B} today"),
            "Fire at the mill today",
            "no word is split or doubled by what was removed"
        );
        assert_eq!(
            html_to_text("&#x202E;&#8203;Reversed"),
            "Reversed",
            "as entities too"
        );
        assert_eq!(
            html_to_text("<p>\u{200F}\u{061C}\u{2067}x\u{2068}y\u{2069}</p>"),
            "xy"
        );
        // Joiners are part of the text: Persian words and emoji sequences keep them.
        assert_eq!(html_to_text("می\u{200C}خواهم"), "می\u{200C}خواهم");
        assert_eq!(html_to_text("👩\u{200D}🚒"), "👩\u{200D}🚒");
    }

    #[test]
    fn rss_items_keep_only_http_links_and_first_of_duplicate_guids() {
        let rss = br#"<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>
            <item><guid>1</guid><link>https://example.org/a</link><title>A &amp; B</title>
              <description>&lt;b&gt;Bold&lt;/b&gt; summary</description><category>Schools</category>
              <pubDate>Sat, 21 Nov 2026 08:00:00 GMT</pubDate></item>
            <item><guid>1</guid><link>https://example.org/dup</link><title>Dup</title></item>
            <item><guid>2</guid><link>javascript:alert(1)</link><title>Bad link</title></item>
            </channel></rss>"#;
        let items = parse_feed(rss, &context()).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].title, "A & B");
        assert_eq!(items[0].summary, "Bold summary");
        assert_eq!(items[0].category, "Schools");
        assert_eq!(items[0].published_at, Some(1_795_248_000));
        assert!(!items[0].breaking);
    }

    #[test]
    fn any_alert_category_makes_an_item_breaking() {
        let rss = br#"<rss version="2.0"><channel><title>T</title>
            <item><guid>1</guid><link>https://example.org/a</link><title>A</title>
              <category>Weather</category><category>BREAKING</category></item>
            <item><guid>2</guid><link>https://example.org/b</link><title>B</title>
              <category>Sports</category></item>
            </channel></rss>"#;
        let items = parse_feed(rss, &context()).unwrap();
        assert!(items[0].breaking);
        assert_eq!(items[0].category, "Weather");
        assert!(!items[1].breaking);
    }

    #[test]
    fn items_whose_link_may_not_be_mailed_are_skipped() {
        let rss = br#"<rss version="2.0"><channel><title>T</title>
            <item><guid>1</guid><link>https://editor:hunter2@news.example.org/a</link><title>Creds</title></item>
            <item><guid>2</guid><link>http://127.0.0.1:8080/b</link><title>Loopback</title></item>
            <item><guid>3</guid><link>https://cms.internal/c</link><title>Internal</title></item>
            <item><guid>4</guid><link>http://intranet/d</link><title>Dotless</title></item>
            <item><guid>https://news.example.org/e</guid><link>http://[::1]/e</link><title>Falls back to the id</title></item>
            <item><guid>6</guid><link>https://news.example.org/f</link><title>Public</title></item>
            </channel></rss>"#;
        let items = parse_feed(rss, &context()).unwrap();
        let links: Vec<&str> = items.iter().map(|i| i.link.as_str()).collect();
        assert_eq!(
            links,
            ["https://news.example.org/e", "https://news.example.org/f"]
        );
        let development = FeedContext {
            keep_internal_links: true,
            ..context()
        };
        let items = parse_feed(rss, &development).unwrap();
        assert_eq!(
            items.len(),
            5,
            "only the link with a password is still dropped"
        );
        assert!(items.iter().all(|i| !i.link.contains("hunter2")));
    }

    #[test]
    fn relative_links_resolve_against_the_feed_url() {
        let atom = br#"<?xml version="1.0" encoding="utf-8"?>
            <feed xmlns="http://www.w3.org/2005/Atom"><title>T</title><id>urn:t</id><updated>2026-11-20T00:00:00Z</updated>
            <entry><id>urn:e1</id><title>E</title><updated>2026-11-20T00:00:00Z</updated><link href="/news/e1"/></entry>
            </feed>"#;
        let context = FeedContext {
            base: Some(url::Url::parse("https://example.org/feeds/atom.xml").unwrap()),
            ..context()
        };
        let items = parse_feed(atom, &context).unwrap();
        assert_eq!(items[0].link, "https://example.org/news/e1");
    }

    #[test]
    fn missing_guids_are_keyed_by_link_and_title_and_bad_dates_dropped() {
        let rss = br#"<rss version="2.0"><channel><title>T</title>
            <item><link>https://example.org/a</link><title>A</title><pubDate>Thu, 01 Jan 1970 00:00:00 GMT</pubDate></item>
            <item><link>https://example.org/b</link><title>B</title><pubDate>Fri, 01 Jan 2100 00:00:00 GMT</pubDate></item>
            <item><link>https://example.org/c</link><title>C</title><pubDate>yesterday-ish</pubDate></item>
            </channel></rss>"#;
        let items = parse_feed(rss, &context()).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].guid, "https://example.org/a#A");
        assert!(items.iter().all(|i| i.published_at.is_none()), "{items:?}");
    }

    #[test]
    fn charsets_come_from_the_prolog_then_the_header() {
        // "Café" in ISO-8859-1, declared in the prolog.
        let mut latin = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><rss version=\"2.0\"><channel><title>T</title><item><guid>1</guid><link>https://example.org/a</link><title>Caf".to_vec();
        latin.extend_from_slice(&[0xE9]);
        latin.extend_from_slice(b"</title></item></channel></rss>");
        assert_eq!(parse_feed(&latin, &context()).unwrap()[0].title, "Café");
        // The same bytes without a prolog, labelled by the HTTP header.
        let start = latin.iter().position(|&b| b == b'>').unwrap() + 1;
        let bare = &latin[start..];
        let with_header = FeedContext {
            charset: Some("iso-8859-1".into()),
            ..context()
        };
        assert_eq!(parse_feed(bare, &with_header).unwrap()[0].title, "Café");
        // Unlabelled and not UTF-8: read as Windows-1252 rather than failing.
        assert_eq!(parse_feed(bare, &context()).unwrap()[0].title, "Café");
    }

    #[test]
    fn at_most_max_items_are_taken() {
        let mut rss = String::from("<rss version=\"2.0\"><channel><title>T</title>");
        for i in 0..50 {
            rss.push_str(&format!(
                "<item><guid>{i}</guid><link>https://example.org/{i}</link><title>{i}</title></item>"
            ));
        }
        rss.push_str("</channel></rss>");
        let context = FeedContext {
            max_items: 10,
            ..context()
        };
        let items = parse_feed(rss.as_bytes(), &context).unwrap();
        assert_eq!(items.len(), 10);
        assert_eq!(items[9].guid, "9");
    }

    #[test]
    fn a_stray_xml_declaration_is_an_error_or_ignored_never_a_panic() {
        // Found by the property test: the XML parser's decoder asserts when a second
        // declaration asks it to switch encodings mid-document.
        let doc = br#"<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>
            <?xml version="1.0" encoding="UTF-16"?>
            <item><guid>1</guid><link>https://example.org/a</link><title>A</title></item>
            </channel></rss>"#;
        let _ = parse_feed(doc, &context());
        let odd = br#"<?xml version="1.0" encodIng="koi8-r"?><rss version="2.0"><channel><title>T</title></channel></rss>"#;
        let _ = parse_feed(odd, &context());
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(parse_feed(b"<html><body>not a feed</body>", &context()).is_err());
        assert!(parse_feed(b"<rss><channel><item>", &context()).is_err());
        assert!(parse_feed(b"", &context()).is_err());
    }

    #[test]
    fn long_summaries_are_cut_at_a_word() {
        let long = "word ".repeat(200);
        let cut = truncate(long.trim(), 50);
        assert!(cut.chars().count() <= 51, "{cut}");
        assert!(cut.ends_with('…'));
    }
}
