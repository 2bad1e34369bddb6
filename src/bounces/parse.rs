//! One mail from the bounce mailbox, read into the reports it carries: a delivery
//! status notification (RFC 3464), a spam complaint (ARF, RFC 5965), or a mail to the
//! `List-Unsubscribe` mailto address. Pure: bytes and an instant in, reports or the
//! reason there are none out.
//!
//! Everything in a bounce is written by someone else, often a program that gets it
//! wrong and sometimes someone hostile. So nothing here panics on any input, a
//! recipient is only ever one the mail itself names (and a valid address), and the VERP
//! token is only taken from an address of herald's own bounce domain. What the token
//! is worth (its signature, its delivery row) is decided where it is recorded.

use std::fmt;
use std::panic::catch_unwind;

use mail_parser::{MessageParser, MimeHeaders};
use sha2::{Digest, Sha256};

use super::{BounceKind, BounceReport, BounceSource, BounceTag};
pub use crate::config::BounceAddress;
use crate::domain::{Email, Timestamp};

/// Recipients read from one DSN at most; herald sends each message to one reader, so a
/// longer list is not one of its bounces, and reading it all would only cost.
const MAX_RECIPIENTS: usize = 50;

/// The longest diagnostic kept, in characters.
const MAX_DIAGNOSTIC: usize = 1000;

/// The VERP token of `address`, when it is one of herald's envelope senders.
fn verp_token(bounce: &BounceAddress, address: &str) -> Option<String> {
    match BounceTag::read(bounce, address)? {
        BounceTag::Verp(token) => Some(token),
        BounceTag::Unsubscribe(_) => None,
    }
}

/// The mailto unsubscribe address `address` is, spelt as herald wrote it.
fn unsubscribe_address(bounce: &BounceAddress, address: &str) -> Option<String> {
    let tag = BounceTag::read(bounce, address)?;
    matches!(tag, BounceTag::Unsubscribe(_)).then(|| tag.address(bounce))
}

/// Why a mail gave no report. The mail stays in the mailbox, unread, for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unparsed {
    /// No header could be read.
    NotMail,
    /// A report whose machine-readable part is missing.
    MissingReportPart(&'static str),
    /// A delivery status notification that names no recipient with an action.
    NoRecipients,
    /// A feedback report without a Feedback-Type.
    NoFeedbackType,
    /// Neither a report nor a mail to an unsubscribe address.
    NotAReport,
    /// Reading it failed inside herald (a bug to report, with the mail).
    ParserFailed,
}

impl fmt::Display for Unparsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unparsed::NotMail => f.write_str("it is not a mail message: no header could be read"),
            Unparsed::MissingReportPart(part) => {
                write!(f, "it is a multipart/report without its {part} part")
            }
            Unparsed::NoRecipients => f.write_str(
                "its delivery-status part names no recipient with an Action and a valid address",
            ),
            Unparsed::NoFeedbackType => {
                f.write_str("its feedback-report part has no Feedback-Type")
            }
            Unparsed::NotAReport => f.write_str(
                "it is neither a delivery status notification (RFC 3464), a feedback report \
                 (RFC 5965), nor a mail to an unsubscribe address",
            ),
            Unparsed::ParserFailed => {
                f.write_str("herald failed reading it; please report this, with the mail, as a bug")
            }
        }
    }
}

/// The reports `raw` carries, each stamped `at`; `Ok` with none for a report that is
/// understood but asks nothing of herald (a DSN that says "delivered", a feedback
/// report that is not a complaint).
pub fn parse_mail(
    raw: &[u8],
    bounce: &BounceAddress,
    at: Timestamp,
) -> Result<Vec<BounceReport>, Unparsed> {
    // mail-parser 0.11.9 stops on a `debug_assert!` in some corrupt MIME (found by
    // tests/bounce_property.rs; release builds carry on past it): in a debug build that
    // is a panic, which must not escape either.
    let message = catch_unwind(|| MessageParser::default().parse(raw))
        .ok()
        .flatten()
        .filter(|m| m.parts.first().is_some_and(|root| !root.headers.is_empty()))
        .ok_or(Unparsed::NotMail)?;
    let outer: Vec<(String, String)> = message
        .headers_raw()
        .map(|(name, value)| (name.to_ascii_lowercase(), unfold(value)))
        .collect();
    let source_id = source_id(message.message_id(), raw);
    let envelope = envelope_addresses(&outer);

    let mut delivery_status = None;
    let mut feedback = None;
    let mut original = None;
    for part in &message.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let ctype = ct.ctype().to_ascii_lowercase();
        let subtype = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (ctype.as_str(), subtype.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") => {
                delivery_status.get_or_insert(part.contents());
            }
            ("message", "feedback-report") => {
                feedback.get_or_insert(part.contents());
            }
            ("message", "rfc822" | "global") | ("text", "rfc822-headers") => {
                original.get_or_insert(part.contents());
            }
            _ => {}
        }
    }
    let report_type = message
        .root_part()
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    let original = original.map(|bytes| Original::read(bytes, bounce));
    let report = Report {
        bounce,
        source_id,
        envelope,
        original,
        at,
    };

    let wants_dsn = matches!(
        report_type.as_deref(),
        Some("delivery-status" | "global-delivery-status")
    );
    let wants_arf = report_type.as_deref() == Some("feedback-report");
    if let Some(status) = delivery_status.filter(|_| !wants_arf) {
        report.delivery_status(status)
    } else if let Some(feedback) = feedback.filter(|_| !wants_dsn) {
        report.feedback(feedback)
    } else if wants_dsn {
        Err(Unparsed::MissingReportPart("message/delivery-status"))
    } else if wants_arf {
        Err(Unparsed::MissingReportPart("message/feedback-report"))
    } else {
        report.unsubscribe()
    }
}

/// What every report from one mail shares.
struct Report<'a> {
    bounce: &'a BounceAddress,
    source_id: String,
    /// The addresses the mail was delivered to, most trustworthy first.
    envelope: Vec<String>,
    original: Option<Original>,
    at: Timestamp,
}

/// What the returned original message (or its headers) tells.
struct Original {
    message_id: Option<String>,
    verp_token: Option<String>,
    /// Its `To` addresses, valid ones only.
    to: Vec<String>,
}

impl Original {
    fn read(bytes: &[u8], bounce: &BounceAddress) -> Original {
        let text = String::from_utf8_lossy(bytes);
        let fields = blocks(&text).into_iter().next().unwrap_or_default();
        let message_id = field(&fields, "message-id").and_then(message_id);
        let verp_token = field(&fields, "return-path")
            .into_iter()
            .flat_map(addresses)
            .find_map(|a| verp_token(bounce, &a));
        let to = field(&fields, "to")
            .into_iter()
            .flat_map(addresses)
            .filter_map(|a| valid_address(&a))
            .collect();
        Original {
            message_id,
            verp_token,
            to,
        }
    }
}

impl Report<'_> {
    fn base(&self, kind: BounceKind) -> BounceReport {
        BounceReport {
            source: BounceSource::Imap,
            source_id: self.source_id.clone(),
            kind,
            verp_token: self
                .envelope
                .iter()
                .find_map(|a| verp_token(self.bounce, a)),
            original_message_id: self.original.as_ref().and_then(|o| o.message_id.clone()),
            recipient: None,
            diagnostic: None,
            at: self.at,
        }
    }

    /// A DSN: one report per recipient that failed or was delayed.
    fn delivery_status(self, bytes: &[u8]) -> Result<Vec<BounceReport>, Unparsed> {
        let text = String::from_utf8_lossy(bytes);
        let mut blocks = blocks(&text).into_iter();
        let per_message = blocks.next().unwrap_or_default();
        let envelope_id = field(&per_message, "original-envelope-id").and_then(|id| {
            let id = id.trim();
            verp_token(self.bounce, id.trim_matches(['<', '>']))
                .or_else(|| BounceTag::verp_token(id))
        });
        let mut reports = Vec::new();
        let mut named = 0;
        // The per-message block may carry the recipient fields itself when a sender
        // left out the blank line between them.
        let recipients = std::iter::once(per_message.clone())
            .filter(|b| field(b, "action").is_some())
            .chain(blocks)
            .take(MAX_RECIPIENTS);
        for block in recipients {
            let Some(action) = field(&block, "action") else {
                continue;
            };
            let Some(recipient) = field(&block, "final-recipient")
                .or_else(|| field(&block, "original-recipient"))
                .and_then(typed_address)
            else {
                continue;
            };
            named += 1;
            let status = field(&block, "status").and_then(status_class);
            let kind = match (action.trim().to_ascii_lowercase().as_str(), status) {
                ("failed", Some(5)) => BounceKind::Hard,
                // A failure without a readable status is treated as temporary: a hard
                // bounce suppresses the reader, which needs the server to say so.
                ("failed", Some(4) | None) | ("delayed", _) => BounceKind::Soft,
                _ => continue,
            };
            let diagnostic = field(&block, "diagnostic-code")
                .map(|code| match code.split_once(';') {
                    Some((_, text)) => text.trim().to_string(),
                    None => code.trim().to_string(),
                })
                .filter(|d| !d.is_empty())
                .or_else(|| field(&block, "status").map(|s| s.trim().to_string()));
            let mut report = self.base(kind);
            report.recipient = Some(recipient);
            report.diagnostic = diagnostic.map(|d| clean(&d));
            if report.verp_token.is_none() {
                report.verp_token = envelope_id
                    .clone()
                    .or_else(|| self.original.as_ref().and_then(|o| o.verp_token.clone()));
            }
            if !reports.is_empty() {
                report.source_id = format!("{}#{}", self.source_id, reports.len() + 1);
            }
            reports.push(report);
        }
        if named == 0 {
            return Err(Unparsed::NoRecipients);
        }
        Ok(reports)
    }

    /// An ARF report: a complaint when its type is `abuse`.
    fn feedback(self, bytes: &[u8]) -> Result<Vec<BounceReport>, Unparsed> {
        let text = String::from_utf8_lossy(bytes);
        let fields: Vec<(String, String)> = blocks(&text).into_iter().flatten().collect();
        let feedback_type = field(&fields, "feedback-type")
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .ok_or(Unparsed::NoFeedbackType)?;
        if feedback_type != "abuse" {
            return Ok(Vec::new());
        }
        let mut report = self.base(BounceKind::Complaint);
        if report.verp_token.is_none() {
            report.verp_token = field(&fields, "original-mail-from")
                .into_iter()
                .flat_map(addresses)
                .find_map(|a| verp_token(self.bounce, &a))
                .or_else(|| self.original.as_ref().and_then(|o| o.verp_token.clone()));
        }
        report.recipient = field(&fields, "original-rcpt-to")
            .and_then(typed_address)
            .or_else(|| match self.original.as_ref().map(|o| o.to.as_slice()) {
                Some([only]) => Some(only.clone()),
                _ => None,
            });
        let by = field(&fields, "user-agent")
            .or_else(|| field(&fields, "reporting-mta"))
            .map(|who| format!(" by {}", who.trim()))
            .unwrap_or_default();
        report.diagnostic = Some(clean(&format!("abuse report{by}")));
        Ok(vec![report])
    }

    /// A plain mail: an unsubscribe request when it went to a mailto unsubscribe
    /// address.
    fn unsubscribe(self) -> Result<Vec<BounceReport>, Unparsed> {
        let address = self
            .envelope
            .iter()
            .find_map(|a| unsubscribe_address(self.bounce, a))
            .ok_or(Unparsed::NotAReport)?;
        let mut report = self.base(BounceKind::Unsubscribe);
        report.verp_token = Some(address);
        report.original_message_id = None;
        report.diagnostic = Some("unsubscribe request by mail".to_string());
        Ok(vec![report])
    }
}

/// The mail's Message-ID, or for a mail without one a digest of its bytes, so the same
/// mail read twice has the same id.
fn source_id(message_id: Option<&str>, raw: &[u8]) -> String {
    match message_id.map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) => clean(id),
        None => {
            let digest = Sha256::digest(raw);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    }
}

/// The addresses the mail was delivered to, from the headers the receiving server adds
/// first (they name the envelope recipient), then `To`.
fn envelope_addresses(headers: &[(String, String)]) -> Vec<String> {
    ["delivered-to", "x-original-to", "envelope-to", "to"]
        .iter()
        .flat_map(|name| {
            headers
                .iter()
                .filter(move |(n, _)| n == name)
                .flat_map(|(_, value)| addresses(value))
        })
        .collect()
}

/// The addresses of a header value: each `<…>`, or each comma-separated bare address.
fn addresses(value: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('>') else { break };
        found.push(after[..close].trim().to_string());
        rest = &after[close + 1..];
    }
    if found.is_empty() {
        found.extend(
            value
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| a.contains('@') && !a.contains(char::is_whitespace)),
        );
    }
    found
}

/// A DSN or ARF address field, `rfc822; reader@example.org` (or without the type): the
/// address, when it is a valid one.
fn typed_address(value: &str) -> Option<String> {
    let address = match value.split_once(';') {
        Some((kind, address)) => {
            let kind = kind.trim();
            if !kind.eq_ignore_ascii_case("rfc822") && !kind.eq_ignore_ascii_case("utf-8") {
                return None;
            }
            address
        }
        None => value,
    };
    valid_address(address.trim().trim_start_matches('<').trim_end_matches('>'))
}

fn valid_address(address: &str) -> Option<String> {
    Email::parse(address).ok().map(|e| e.as_str().to_string())
}

/// `<id@host>` read as `id@host`, when it looks like a Message-ID.
fn message_id(value: &str) -> Option<String> {
    let id = value.trim().trim_start_matches('<');
    let id = id.split('>').next().unwrap_or("").trim();
    (!id.is_empty() && id.len() <= 250 && !id.contains(char::is_whitespace)).then(|| clean(id))
}

/// The class digit of a status `5.1.1`, when the status is well formed.
fn status_class(status: &str) -> Option<u8> {
    let status = status.split_whitespace().next()?;
    let mut parts = status.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let digits =
        |s: &str, max| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_some() || !digits(subject, 3) || !digits(detail, 3) {
        return None;
    }
    match class {
        "2" => Some(2),
        "4" => Some(4),
        "5" => Some(5),
        _ => None,
    }
}

/// Header-style field blocks separated by blank lines, each field unfolded, its name
/// lower-cased. Lines that are not fields are skipped.
fn blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks = Vec::new();
    let mut block: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = block.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(char::is_whitespace) {
                block.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

/// The first value of field `name` (lower-case) in `fields`.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A raw header value on one line.
fn unfold(value: &str) -> String {
    value
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text from a bounce made safe to store and print: control characters become spaces,
/// and it is cut to a bounded length.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DIAGNOSTIC)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests;
