//! A reader's email address, validated and normalised once at the edge.

use std::fmt;
use std::str::FromStr;

/// Why a string is not an address herald will mail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{input}\" is not a valid email address: {reason}")]
pub struct EmailError {
    input: String,
    reason: &'static str,
}

/// A normalised email address: trimmed, lower-cased, one `@`, a dotted domain.
///
/// Lower-casing the local part is not what RFC 5321 promises, but it is what every
/// mailbox provider readers use does, and it keeps one reader from becoming two rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

impl Email {
    /// Validates and normalises `input`.
    pub fn parse(input: &str) -> Result<Email, EmailError> {
        let fail = |reason| EmailError {
            input: input.to_string(),
            reason,
        };
        let address = input.trim().to_lowercase();
        if address.is_empty() {
            return Err(fail("it is empty"));
        }
        if address.len() > 254 {
            return Err(fail("it is longer than 254 characters"));
        }
        if address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"".contains(c))
        {
            return Err(fail(
                "it contains spaces or characters not allowed in an address",
            ));
        }
        let Some((local, domain)) = address.split_once('@') else {
            return Err(fail("it has no '@'"));
        };
        if domain.contains('@') {
            return Err(fail("it has more than one '@'"));
        }
        if local.is_empty() || local.len() > 64 {
            return Err(fail("the part before '@' must be 1 to 64 characters"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(fail("the part before '@' has a misplaced dot"));
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
        f.write_str(&self.0)
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
    fn error_names_the_input_and_the_reason() {
        let err = Email::parse("nobody").unwrap_err().to_string();
        assert!(err.contains("\"nobody\""), "{err}");
        assert!(err.contains("no '@'"), "{err}");
    }
}
