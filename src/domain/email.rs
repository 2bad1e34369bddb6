//! A reader's email address, validated and normalised once at the edge.

use std::fmt;
use std::str::FromStr;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Why a string is not an address herald will mail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{input}\" is not a valid email address: {reason}")]
pub struct EmailError {
    input: String,
    reason: &'static str,
}

impl EmailError {
    /// Why the address was refused, as a phrase (`"it has no '@'"`).
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// A normalised email address: trimmed, lower-cased, one `@`, a dotted domain name,
/// nothing invisible.
///
/// Lower-casing the local part is not what RFC 5321 promises, but it is what every
/// mailbox provider readers use does, and it keeps one reader from becoming two rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

impl Email {
    /// Validates and normalises `input`. Nothing is cut or dropped to make an address
    /// fit: an address that breaks a rule is refused, so mail never goes to an address
    /// the reader did not type.
    pub fn parse(input: &str) -> Result<Email, EmailError> {
        let fail = |reason| EmailError {
            input: input.to_string(),
            reason,
        };
        let address = input.trim().to_lowercase();
        if address.is_empty() {
            return Err(fail("it is empty"));
        }
        // RFC 5321 counts octets: 254 for the whole path, 64 for the local part.
        if address.len() > 254 {
            return Err(fail(
                "it is longer than 254 bytes, the most an address may have",
            ));
        }
        if address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"".contains(c))
        {
            return Err(fail(
                "it contains spaces or characters not allowed in an address",
            ));
        }
        // Invisible and text-direction characters (U+200B, U+202E, U+FEFF…) make an
        // address look like another one, or read backwards.
        if address
            .chars()
            .any(|c| c.general_category() == GeneralCategory::Format)
        {
            return Err(fail(
                "it contains an invisible or text-direction character; type it again rather than pasting it",
            ));
        }
        let Some((local, domain)) = address.split_once('@') else {
            return Err(fail("it has no '@'"));
        };
        if domain.contains('@') {
            return Err(fail("it has more than one '@'"));
        }
        if local.is_empty() || local.len() > 64 {
            return Err(fail("the part before '@' must be 1 to 64 bytes long"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(fail("the part before '@' has a misplaced dot"));
        }
        // A local part like `=?utf-8?q?…?=` is shown decoded by some mail programs and
        // delivered elsewhere by some relays: the reader could not tell where mail goes.
        if local.contains("=?") {
            return Err(fail(
                "the part before '@' contains \"=?\", which mail programs may show as other text",
            ));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err(fail("the domain has no dot"));
        }
        for label in &labels {
            let valid = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-');
            if !valid {
                return Err(fail("the domain is not a valid host name"));
            }
        }
        // No top-level domain is a number: `127.0.0.1` (or `0x7f.1`) is an IP address,
        // which reaches a machine rather than a mail domain.
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(fail("the domain is an IP address, not a domain name"));
        }
        if address.parse::<lettre::Address>().is_err() {
            return Err(fail("it cannot be used as an SMTP recipient"));
        }
        Ok(Email(address))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after `@`, used for per-domain pacing.
    pub fn domain(&self) -> &str {
        self.0.rsplit('@').next().unwrap_or_default()
    }

    /// The address as a lettre recipient.
    pub fn to_address(&self) -> lettre::Address {
        self.0
            .parse()
            .expect("an Email was checked against lettre's parser when it was made")
    }
}

impl FromStr for Email {
    type Err = EmailError;
    fn from_str(s: &str) -> Result<Self, EmailError> {
        Email::parse(s)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl PartialEq<&str> for Email {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_whitespace() {
        let email = Email::parse("  Reader@Example.ORG ").unwrap();
        assert_eq!(email.as_str(), "reader@example.org");
        assert_eq!(email.domain(), "example.org");
    }

    #[test]
    fn rejects_what_cannot_be_mailed() {
        for bad in [
            "",
            "plainaddress",
            "two@@example.org",
            "a@b@example.org",
            "no-dot@localhost",
            "space in@example.org",
            ".dot@example.org",
            "x@-bad.example",
            "x@example..org",
            "evil@example.org\r\nBcc: victim@example.org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn too_long_is_refused_never_cut() {
        let local = "a".repeat(64);
        let label = "d".repeat(60);
        let domain = format!("{label}.{label}.{}.example.org", "d".repeat(55));
        let longest = format!("{local}@{domain}");
        assert_eq!(longest.len(), 254);
        assert_eq!(Email::parse(&longest).unwrap().as_str(), longest);
        let over = format!("{local}@d{domain}");
        let err = Email::parse(&over).unwrap_err();
        assert!(err.reason().contains("254 bytes"), "{err}");
        let err = Email::parse(&format!("{}@example.org", "a".repeat(65))).unwrap_err();
        assert!(err.reason().contains("1 to 64 bytes"), "{err}");
        // Octets, not characters: 64 two-byte letters are 128 bytes.
        assert!(Email::parse(&format!("{}@example.org", "é".repeat(40))).is_err());
    }

    #[test]
    fn invisible_and_direction_characters_are_refused() {
        for c in [
            '\u{202E}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{200B}',
            '\u{00AD}',
            '\u{FEFF}',
            '\u{200E}',
            '\u{2060}',
            '\u{E0041}',
        ] {
            for address in [format!("ad{c}a@example.org"), format!("ada@exa{c}mple.org")] {
                let err = Email::parse(&address).unwrap_err();
                assert!(err.reason().contains("invisible"), "{address:?}: {err}");
            }
        }
        assert!(
            Email::parse("\u{FEFF}ada@example.org").is_err(),
            "a pasted BOM"
        );
    }

    #[test]
    fn encoded_word_local_parts_are_refused() {
        for bad in [
            "=?utf-8?q?ada?=@example.org",
            "=?iso-8859-1?b?YWRh?=@example.org",
            "x=?utf-8?q?y?=z@example.org",
        ] {
            let err = Email::parse(bad).unwrap_err();
            assert!(err.reason().contains("=?"), "{bad}: {err}");
        }
        // '=' and '?' on their own are ordinary characters of a local part.
        assert!(Email::parse("a=b?c@example.org").is_ok());
        assert!(Email::parse("=1+2@example.org").is_ok());
    }

    #[test]
    fn ip_literal_and_dotless_domains_are_refused() {
        for bad in [
            "user@127.0.0.1",
            "user@10.1.2.3",
            "user@0x7f.1",
            "user@192.168.1.1",
            "user@[127.0.0.1]",
            "user@[ipv6:::1]",
            "user@localhost",
            "user@2130706433",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} should be refused");
        }
        let err = Email::parse("user@127.0.0.1").unwrap_err();
        assert!(err.reason().contains("IP address"), "{err}");
        assert!(
            Email::parse("user@1.2.3.example").is_ok(),
            "digits in a name"
        );
    }

    #[test]
    fn error_names_the_input_and_the_reason() {
        let err = Email::parse("nobody").unwrap_err().to_string();
        assert!(err.contains("\"nobody\""), "{err}");
        assert!(err.contains("no '@'"), "{err}");
    }
}
