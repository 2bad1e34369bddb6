//! `[signup]`: the web sign-up's consent text and its limits against abuse.

use std::time::Duration;

use serde::Deserialize;

use super::duration::at_least;
use super::setting::{Problems, Setting, Text};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[signup]
consent_text = "Email me the news I picked above. I can change what I get, or unsubscribe, at any time with the links in every email. My address is used for nothing else."
consent_version = "1"
ip_limit = 5
ip_window = "1h"
address_limit = 5
address_window = "1h"
emails_per_day = 3
confirm_link_lifetime = "7d"
search_threshold = 36
"#;

/// `[signup]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    consent_text: Setting<String>,
    consent_version: Setting<String>,
    ip_limit: Setting<u32>,
    ip_window: Setting<Text<Duration>>,
    address_limit: Setting<u32>,
    address_window: Setting<Text<Duration>>,
    emails_per_day: Setting<u32>,
    confirm_link_lifetime: Setting<Text<Duration>>,
    search_threshold: Setting<u32>,
}

/// `[signup]`.
#[derive(Debug, Clone)]
pub struct SignupConfig {
    /// The consent text shown above the sign-up button.
    pub consent_text: String,
    /// Its version, stored with each consent record.
    pub consent_version: String,
    /// Sign-ups accepted from one IP address (IPv6: one /64) per `ip_window`.
    pub ip_limit: u32,
    /// The sliding window of `ip_limit`.
    pub ip_window: Duration,
    /// Sign-ups accepted for one address per `address_window`.
    pub address_limit: u32,
    /// The sliding window of `address_limit`.
    pub address_window: Duration,
    /// Sign-up emails (confirmation, welcome) one address gets per 24 hours at most.
    pub emails_per_day: u32,
    /// How long a confirmation link works.
    pub confirm_link_lifetime: Duration,
    /// Past this many regions, the sign-up page offers a search instead of the full list.
    pub search_threshold: usize,
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems) -> Option<SignupConfig> {
        let mut required = |key: &str, setting: Setting<String>, why: &str| {
            p.take(key, setting).and_then(|text| {
                let text = text.trim().to_string();
                p.check(
                    key,
                    if text.is_empty() {
                        Err(format!("is empty; {why}"))
                    } else {
                        Ok(text)
                    },
                )
            })
        };
        let consent_text = required(
            "signup.consent_text",
            self.consent_text,
            "readers must see what they agree to",
        );
        let consent_version = required(
            "signup.consent_version",
            self.consent_version,
            "each consent record names the text's version",
        );
        let mut limit = |key: &str, setting: Setting<u32>| {
            p.take(key, setting).and_then(|n| {
                p.check(
                    key,
                    if n == 0 {
                        Err("must be at least 1 (0 would refuse every sign-up)".into())
                    } else {
                        Ok(n)
                    },
                )
            })
        };
        let ip_limit = limit("signup.ip_limit", self.ip_limit);
        let address_limit = limit("signup.address_limit", self.address_limit);
        let emails_per_day = limit("signup.emails_per_day", self.emails_per_day);
        let mut window = |key: &str, setting: Setting<Text<Duration>>| {
            p.text(key, setting)
                .and_then(|value| p.check(key, at_least(value, "1s")))
        };
        let ip_window = window("signup.ip_window", self.ip_window);
        let address_window = window("signup.address_window", self.address_window);
        let confirm_link_lifetime =
            window("signup.confirm_link_lifetime", self.confirm_link_lifetime);
        let search_threshold = p.take("signup.search_threshold", self.search_threshold);
        Some(SignupConfig {
            consent_text: consent_text?,
            consent_version: consent_version?,
            ip_limit: ip_limit?,
            ip_window: ip_window?,
            address_limit: address_limit?,
            address_window: address_window?,
            emails_per_day: emails_per_day?,
            confirm_link_lifetime: confirm_link_lifetime?,
            search_threshold: search_threshold? as usize,
        })
    }
}
