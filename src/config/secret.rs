//! A secret setting (the SMTP password, the link key) that never shows in a log.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// Text that prints as `***` in `Debug` and `Display`, so a config dump, a log line or
/// an error message cannot leak it; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `None` for an empty (or blank) secret, which means "not set".
    pub(super) fn non_empty(self) -> Option<Secret> {
        let trimmed = self.0.trim();
        (!trimmed.is_empty()).then(|| Secret(trimmed.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The message must not echo what was written: it may be the secret.
        String::deserialize(deserializer)
            .map(Secret)
            .map_err(|_| serde::de::Error::custom("must be text in quotes"))
    }
}
