//! The list headers lettre has no type for, as typed headers so values pass
//! through lettre's encoder (no raw CR/LF can reach the message).

use lettre::message::header::{Header, HeaderName, HeaderValue};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `Subject:`, written so that a mail program shows exactly the text given.
///
/// lettre encodes a word only when it holds a character outside printable ASCII, so
/// an ASCII title such as `=?utf-8?q?Fire_drill?=` went out raw and mail programs showed
/// it decoded, as other text. Text that holds `=?` is therefore encoded whole
/// (RFC 2047 §5: such text must itself be encoded), and decodes back to itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    /// The header for one subject line.
    pub fn new(text: impl Into<String>) -> Subject {
        Subject(text.into())
    }
}

impl Header for Subject {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Subject")
    }

    fn parse(s: &str) -> Result<Self, BoxError> {
        Ok(Subject(s.to_string()))
    }

    fn display(&self) -> HeaderValue {
        if !self.0.contains("=?") {
            return HeaderValue::new(Self::name(), self.0.clone());
        }
        let mut encoded = String::new();
        {
            let mut writer = email_encoding::headers::writer::EmailWriter::new(
                &mut encoded,
                "Subject: ".len(),
                0,
                false,
            );
            email_encoding::headers::rfc2047::encode(&self.0, &mut writer)
                .expect("writing to a String cannot fail");
        }
        // Base64 encoded words, folded by the encoder: only printable ASCII, so nothing
        // of the text can break out of the header.
        HeaderValue::dangerous_new_pre_encoded(Self::name(), self.0.clone(), encoded)
    }
}

/// `List-Unsubscribe: <https://…/unsubscribe?token=…>` (RFC 2369), with a signed
/// `<mailto:…>` beside it when herald has a bounce mailbox to read it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListUnsubscribe {
    url: String,
    mailto: Option<String>,
}

/// Keeps only what may stand in a header: no control characters, no angle brackets
/// (which would end the URI early).
fn header_safe(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && *c != '<' && *c != '>')
        .collect()
}

impl ListUnsubscribe {
    /// The header for one unsubscribe URL.
    pub fn new(url: &str) -> ListUnsubscribe {
        ListUnsubscribe {
            url: header_safe(url),
            mailto: None,
        }
    }

    /// The header for an unsubscribe URL and an address a mail to which unsubscribes.
    pub fn with_mailto(url: &str, address: &str) -> ListUnsubscribe {
        ListUnsubscribe {
            url: header_safe(url),
            mailto: Some(header_safe(address)),
        }
    }
}

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, BoxError> {
        let mut uris = s.split(',').map(|u| {
            u.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        });
        let url = uris.next().unwrap_or_default();
        Ok(match uris.next() {
            Some(mailto) => ListUnsubscribe::with_mailto(
                &url,
                mailto.strip_prefix("mailto:").unwrap_or(&mailto),
            ),
            None => ListUnsubscribe::new(&url),
        })
    }

    fn display(&self) -> HeaderValue {
        match &self.mailto {
            None => HeaderValue::new(Self::name(), format!("<{}>", self.url)),
            // Folded always before the mailto, whatever the lengths: the same shape
            // with markers as with values, so a content group's template splices
            // into exactly what a full render writes.
            Some(address) => {
                let raw = format!("<{}>, <mailto:{address}>", self.url);
                let encoded = format!("<{}>,\r\n <mailto:{address}>", self.url);
                HeaderValue::dangerous_new_pre_encoded(Self::name(), raw, encoded)
            }
        }
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(s: &str) -> Result<Self, BoxError> {
        if s.trim() == "List-Unsubscribe=One-Click" {
            Ok(ListUnsubscribePost)
        } else {
            Err("List-Unsubscribe-Post must be List-Unsubscribe=One-Click".into())
        }
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".into())
    }
}

/// `List-Id: Site Name <site-name.sending-domain>` (RFC 2919).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListId {
    label: String,
    id: String,
}

impl ListId {
    /// A list id derived from the list's name and the sending domain.
    pub fn new(name: &str, domain: &str) -> ListId {
        let label: String = name
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .filter(|c| !"\"<>\\".contains(*c))
            .collect();
        let mut slug: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        while slug.contains("--") {
            slug = slug.replace("--", "-");
        }
        let slug = slug.trim_matches('-');
        let slug = if slug.is_empty() { "news" } else { slug };
        ListId {
            label: label.trim().to_string(),
            id: format!("{slug}.{domain}"),
        }
    }
}

impl Header for ListId {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Id")
    }

    fn parse(s: &str) -> Result<Self, BoxError> {
        let (label, id) = s.rsplit_once('<').ok_or("List-Id needs <id>")?;
        Ok(ListId {
            label: label.trim().trim_matches('"').to_string(),
            id: id.trim_end_matches('>').to_string(),
        })
    }

    fn display(&self) -> HeaderValue {
        let value = if self.label.is_empty() {
            format!("<{}>", self.id)
        } else {
            format!("\"{}\" <{}>", self.label, self.id)
        };
        HeaderValue::new(Self::name(), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_id_is_a_dotted_id_under_the_sending_domain() {
        let id = ListId::new("Herald Demo News", "demo.example");
        assert_eq!(id.id, "herald-demo-news.demo.example");
        let mut headers = lettre::message::header::Headers::new();
        headers.set(id);
        assert_eq!(
            headers.get_raw("List-Id"),
            Some("\"Herald Demo News\" <herald-demo-news.demo.example>")
        );
    }

    fn subject_line(text: &str) -> String {
        let mut headers = lettre::message::header::Headers::new();
        headers.set(Subject::new(text));
        headers.to_string()
    }

    #[test]
    fn subjects_shaped_like_encoded_words_are_encoded_whole() {
        let line = subject_line("Riverton alert: =?utf-8?q?Fire_drill?= at noon");
        assert!(
            !line.contains("=?utf-8?q?"),
            "the literal encoded word is hidden inside base64: {line}"
        );
        assert!(line.starts_with("Subject: =?utf-8?b?"), "{line}");
        for folded in line.trim_end().split("\r\n") {
            assert!(folded.len() <= 78, "folded lines stay short: {line:?}");
        }
        // Plain subjects are written as lettre writes them.
        assert_eq!(
            subject_line("Riverton daily digest: Bridge reopens"),
            "Subject: Riverton daily digest: Bridge reopens\r\n"
        );
        let long = format!("{} =?x?q?y?= {}", "word ".repeat(30), "end ".repeat(30));
        let line = subject_line(&long);
        assert!(
            line.trim_end().split("\r\n").all(|l| l.len() <= 78),
            "{line}"
        );
        assert!(!line.trim_end().contains("\r\n\r\n"));
    }

    #[test]
    fn control_characters_never_reach_a_header() {
        let header = ListUnsubscribe::new("https://x.example/u?token=1\r\nBcc: a@b.c");
        let mut headers = lettre::message::header::Headers::new();
        headers.set(header);
        assert!(!headers.to_string().trim_end().contains('\n'));
        let both = ListUnsubscribe::with_mailto(
            "https://x.example/u?token=1\r\nBcc: a@b.c",
            "b+u-x@x.example>\r\nBcc: a@b.c",
        );
        let mut headers = lettre::message::header::Headers::new();
        headers.set(both);
        let text = headers.to_string();
        assert_eq!(
            text,
            "List-Unsubscribe: <https://x.example/u?token=1Bcc: a@b.c>,\r\n <mailto:b+u-x@x.exampleBcc: a@b.c>\r\n"
        );
    }
}
