//! `[bounces]`: the bounce address whose `+TOKEN` variants come back to herald, and the
//! mailbox, read over IMAP, where they arrive.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::duration::at_least;
use super::secret::Secret;
use super::setting::{Problems, Setting, Text};
use crate::bounces::imap::ImapSettings;
use crate::bounces::parse::BounceAddress;

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[bounces]
address = ""
imap_url = ""
imap_password = ""
imap_ca_file = ""
poll_interval = "1m"
imap_timeout = "30s"
"#;

/// `[bounces]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    address: Setting<String>,
    imap_url: Setting<String>,
    imap_password: Setting<Secret>,
    imap_ca_file: Setting<String>,
    poll_interval: Setting<Text<Duration>>,
    imap_timeout: Setting<Text<Duration>>,
}

/// `[bounces]`.
#[derive(Debug, Clone)]
pub struct BouncesConfig {
    /// The bounce address (`bounces@news.example.org`), when bounces are handled.
    pub address: Option<BounceAddress>,
    /// The bounce mailbox, when `imap_url` is set.
    pub imap: Option<ImapSettings>,
    /// The wait between two reads of the mailbox.
    pub poll_interval: Duration,
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems, base: &Path) -> Option<BouncesConfig> {
        let address = p
            .take("bounces.address", self.address)
            .and_then(|a| match a.trim() {
                "" => Some(None),
                a => p.check("bounces.address", BounceAddress::new(a).map(Some)),
            });
        let url = p.take("bounces.imap_url", self.imap_url);
        let password = p.take("bounces.imap_password", self.imap_password);
        let ca_certificates = p
            .take("bounces.imap_ca_file", self.imap_ca_file)
            .and_then(|file| match file.trim() {
                "" => Some(None),
                file => p.check(
                    "bounces.imap_ca_file",
                    super::smtp::read_certificates(&super::resolve(base, file)).map(Some),
                ),
            });
        let poll_interval = p
            .text("bounces.poll_interval", self.poll_interval)
            .and_then(|d| p.check("bounces.poll_interval", at_least(d, "1s")));
        let timeout = p
            .text("bounces.imap_timeout", self.imap_timeout)
            .and_then(|d| p.check("bounces.imap_timeout", at_least(d, "1s")));
        let imap = match url?.trim() {
            "" => None,
            url => {
                // (A bad address is reported under its own key already.)
                if matches!(address, Some(None)) {
                    p.push(
                        "bounces.imap_url",
                        "needs bounces.address, the address whose +TOKEN variants the mailbox receives",
                    );
                }
                let password = password?.non_empty();
                if password.is_none() {
                    p.push(
                        "bounces.imap_password",
                        "is empty; set it with the HERALD__BOUNCES__IMAP_PASSWORD environment variable",
                    );
                }
                let settings = ImapSettings::from_url(
                    url,
                    password.unwrap_or_else(|| Secret::new("")),
                    ca_certificates.clone()?,
                    timeout?,
                );
                p.check("bounces.imap_url", settings).map(Some)?
            }
        };
        Some(BouncesConfig {
            address: address?,
            imap,
            poll_interval: poll_interval?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use crate::bounces::imap::ImapSecurity;
    use std::path::Path;
    use std::time::Duration;

    const BASE: &str = r#"
        [mail]
        from = "Demo News <news@demo.example>"
        postal_address = "1 Main St, Riverton"
        [[regions]]
        slug = "town"
        name = "Town"
        timezone = "America/Los_Angeles"
    "#;

    fn load(bounces: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            Path::new("config/herald.toml"),
            &format!("{BASE}\n[bounces]\n{bounces}"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn without_bounces_nothing_is_read() {
        let config = load("", &[]).unwrap();
        assert!(config.bounces.address.is_none());
        assert!(config.bounces.imap.is_none());
        assert_eq!(config.bounces.poll_interval, Duration::from_secs(60));
    }

    #[test]
    fn the_mailbox_takes_its_password_from_the_environment() {
        let config = load(
            r#"
            address = "bounces@news.example.org"
            imap_url = "imaps://bounces%40news.example.org@imap.example.org/INBOX"
            poll_interval = "30s"
            "#,
            &[("HERALD__BOUNCES__IMAP_PASSWORD", "0123")],
        )
        .unwrap();
        let imap = config.bounces.imap.unwrap();
        assert_eq!(imap.user, "bounces@news.example.org");
        assert_eq!(imap.password.expose(), "0123");
        assert_eq!((imap.port, imap.security), (993, ImapSecurity::Tls));
        assert_eq!(config.bounces.poll_interval, Duration::from_secs(30));
        assert!(!format!("{:?}", imap).contains("0123"));
    }

    #[test]
    fn each_mistake_names_its_key_and_what_to_do() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case; 5] = [
            (
                r#"address = "bounces@news.example.org"
                imap_url = "imaps://u@imap.example.org/""#,
                &[],
                "bounces.imap_password: is empty; set it with the HERALD__BOUNCES__IMAP_PASSWORD",
            ),
            (
                r#"imap_url = "imaps://u@imap.example.org/""#,
                &[("HERALD__BOUNCES__IMAP_PASSWORD", "pw")],
                "bounces.imap_url: needs bounces.address",
            ),
            (
                r#"address = "bounces@news.example.org"
                imap_url = "imaps://u:pw@imap.example.org/""#,
                &[("HERALD__BOUNCES__IMAP_PASSWORD", "pw")],
                "bounces.imap_url: contains a password",
            ),
            (
                r#"address = "bounces+x@news.example.org""#,
                &[],
                "bounces.address: the bounce address \"bounces+x@news.example.org\" must not contain '+'",
            ),
            (
                r#"imap_ca_file = "no-such-file.pem""#,
                &[],
                "bounces.imap_ca_file: cannot read",
            ),
        ];
        for (section, env, expected) in cases {
            let err = load(section, env).unwrap_err().to_string();
            assert!(err.contains(expected), "{section}: {err}");
        }
    }
}
