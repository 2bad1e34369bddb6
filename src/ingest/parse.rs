//! Feed bytes (RSS, Atom, JSON Feed) to plain-text [`FeedItem`]s.
//!
//! Feed text is untrusted: titles and summaries are reduced to plain text here, links
//! must be absolute http(s) URLs, and templates escape whatever is left.

use chrono::{DateTime, Utc};

use crate::store::FeedItem;

/// Longest summary kept, in characters.
const SUMMARY_CHARS: usize = 480;

/// The bytes are not a feed herald can read.
#[derive(Debug, thiserror::Error)]
#[error("not a valid RSS, Atom or JSON feed: {0}")]
pub struct ParseError(String);

/// Parses a feed; `base` resolves relative links for feeds fetched over HTTP.
/// Entries without a usable http(s) link are skipped.
pub fn parse_feed(bytes: &[u8], base: Option<&url::Url>) -> Result<Vec<FeedItem>, ParseError> {
    let parser = feed_rs::parser::Builder::new()
        .base_uri(base.map(|u| u.as_str()))
        .build();
    let feed = parser.parse(bytes).map_err(|e| ParseError(e.to_string()))?;
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for entry in feed.entries {
        let Some(link) = pick_link(&entry.links, base) else {
            continue;
        };
        let title = entry
            .title
            .as_ref()
            .map(|t| html_to_text(&t.content))
            .unwrap_or_default();
        let title = if title.is_empty() {
            link.clone()
        } else {
            title
        };
        let summary_source = entry
            .summary
            .as_ref()
            .map(|t| t.content.clone())
            .or_else(|| entry.content.as_ref().and_then(|c| c.body.clone()))
            .unwrap_or_default();
        let summary = truncate(&html_to_text(&summary_source), SUMMARY_CHARS);
        let category = entry
            .categories
            .first()
            .map(|c| html_to_text(c.label.as_deref().unwrap_or(&c.term)))
            .unwrap_or_default();
        let guid = if entry.id.trim().is_empty() {
            format!("{link}#{title}")
        } else {
            entry.id.trim().to_string()
        };
        // A feed that repeats a GUID gets its first item stored once.
        if !seen.insert(guid.clone()) {
            continue;
        }
        let published_at = entry
            .published
            .or(entry.updated)
            .map(|t: DateTime<Utc>| t.timestamp());
        items.push(FeedItem {
            guid,
            link,
            title,
            summary,
            category,
            published_at,
        });
    }
    Ok(items)
}

/// The entry's web page: the `alternate` link if marked, else the first plain link.
fn pick_link(links: &[feed_rs::model::Link], base: Option<&url::Url>) -> Option<String> {
    let mut candidates: Vec<&feed_rs::model::Link> = links
        .iter()
        .filter(|l| l.target.is_none())
        .filter(|l| matches!(l.rel.as_deref(), None | Some("alternate")))
        .collect();
    candidates.sort_by_key(|l| l.rel.as_deref() != Some("alternate"));
    candidates.into_iter().find_map(|l| {
        let parsed = match base {
            Some(base) => base.join(l.href.trim()).ok(),
            None => url::Url::parse(l.href.trim()).ok(),
        }?;
        matches!(parsed.scheme(), "http" | "https").then(|| parsed.to_string())
    })
}

/// Reduces HTML (or plain text) to plain text: tags dropped, `script`/`style` bodies
/// dropped, entities decoded, whitespace collapsed.
pub fn html_to_text(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('>') else {
            // A lone '<' is text, not a tag.
            out.push_str(after);
            rest = "";
            break;
        };
        let tag = after[1..end].trim().to_ascii_lowercase();
        rest = &after[end + 1..];
        for skipped in ["script", "style"] {
            if tag == skipped || tag.starts_with(&format!("{skipped} ")) {
                let close = format!("</{skipped}");
                match rest.to_ascii_lowercase().find(&close) {
                    Some(pos) => {
                        rest = &rest[pos..];
                        if let Some(gt) = rest.find('>') {
                            rest = &rest[gt + 1..];
                        }
                    }
                    None => rest = "",
                }
            }
        }
        // Block-level tags separate words.
        out.push(' ');
    }
    out.push_str(rest);
    let decoded = decode_entities(&out);
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

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
                "mdash" => Some('—'),
                "ndash" => Some('–'),
                "hellip" => Some('…'),
                "rsquo" => Some('’'),
                "lsquo" => Some('‘'),
                "rdquo" => Some('”'),
                "ldquo" => Some('“'),
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
        let items = parse_feed(rss, None).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].title, "A & B");
        assert_eq!(items[0].summary, "Bold summary");
        assert_eq!(items[0].category, "Schools");
        assert_eq!(items[0].published_at, Some(1_795_248_000));
    }

    #[test]
    fn relative_links_resolve_against_the_feed_url() {
        let atom = br#"<?xml version="1.0" encoding="utf-8"?>
            <feed xmlns="http://www.w3.org/2005/Atom"><title>T</title><id>urn:t</id><updated>2026-11-20T00:00:00Z</updated>
            <entry><id>urn:e1</id><title>E</title><updated>2026-11-20T00:00:00Z</updated><link href="/news/e1"/></entry>
            </feed>"#;
        let base = url::Url::parse("https://example.org/feeds/atom.xml").unwrap();
        let items = parse_feed(atom, Some(&base)).unwrap();
        assert_eq!(items[0].link, "https://example.org/news/e1");
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(parse_feed(b"<html><body>not a feed</body>", None).is_err());
        assert!(parse_feed(b"<rss><channel><item>", None).is_err());
    }

    #[test]
    fn long_summaries_are_cut_at_a_word() {
        let long = "word ".repeat(200);
        let cut = truncate(long.trim(), 50);
        assert!(cut.chars().count() <= 51, "{cut}");
        assert!(cut.ends_with('…'));
    }
}
