//! `[bounces]`: the bounce address whose `+TOKEN` variants come back to herald (VERP),
//! the mailbox, read over IMAP, where they arrive, how many soft bounces suppress an
//! address, and what the relays' webhooks are checked against.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::duration::at_least;
use super::secret::Secret;
use super::setting::{Problems, Setting, Text};
use crate::bounces::imap::ImapSettings;

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[bounces]
address = ""
soft_limit = 3
sns_cert_hosts = ["sns.*.amazonaws.com", "sns.*.amazonaws.com.cn"]
mailgun_signing_key = ""
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
    soft_limit: Setting<u32>,
    sns_cert_hosts: Setting<Vec<String>>,
    mailgun_signing_key: Setting<Secret>,
    imap_url: Setting<String>,
    imap_password: Setting<Secret>,
    imap_ca_file: Setting<String>,
    poll_interval: Setting<Text<Duration>>,
    imap_timeout: Setting<Text<Duration>>,
}

/// `[bounces]`.
#[derive(Debug, Clone)]
pub struct BouncesConfig {
    /// The bounce address (`bounces@news.example.org`), split at its `@`; `None` when
    /// unset, and then the envelope sender is the From address, as without VERP.
    pub address: Option<BounceAddress>,
    /// Soft bounces on this many distinct days, with no success between, suppress the
    /// address.
    pub soft_limit: u32,
    /// Hosts an SNS message's `SigningCertURL` may name; `*` stands for one label.
    pub sns_cert_hosts: Vec<String>,
    /// Mailgun's webhook signing key; `None` refuses every Mailgun webhook.
    pub mailgun_signing_key: Option<Secret>,
    /// The bounce mailbox, when `imap_url` is set.
    pub imap: Option<ImapSettings>,
    /// The wait between two reads of the mailbox.
    pub poll_interval: Duration,
}

/// The bounce mailbox's address, in its two halves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceAddress {
    /// Before the `@`, without any `+tag`.
    pub local: String,
    /// After the `@`, lowercased.
    pub domain: String,
}

impl BounceAddress {
    /// Reads `text` (`local@domain`, no `+` in the local part), or a sentence saying
    /// what to write.
    pub fn new(text: &str) -> Result<BounceAddress, String> {
        bounce_address(text)
    }
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems, base: &Path) -> Option<BouncesConfig> {
        let address = p.take("bounces.address", self.address).and_then(|text| {
            let text = text.trim();
            if text.is_empty() {
                return Some(None);
            }
            p.check("bounces.address", bounce_address(text).map(Some))
        });
        let soft_limit = p.take("bounces.soft_limit", self.soft_limit).and_then(|n| {
            p.check(
                "bounces.soft_limit",
                if n == 0 {
                    Err("must be at least 1 (the first soft bounce suppresses at 1)".into())
                } else {
                    Ok(n)
                },
            )
        });
        let hosts = p
            .take("bounces.sns_cert_hosts", self.sns_cert_hosts)
            .and_then(|hosts| {
                let hosts: Vec<String> = hosts
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect();
                let bad = hosts.iter().find(|h| {
                    h.contains('/') || h.contains(':') || h.contains("**") || h.starts_with('.')
                });
                p.check(
                    "bounces.sns_cert_hosts",
                    match bad {
                        Some(bad) => Err(format!(
                            "\"{bad}\" is not a host name (write \"sns.*.amazonaws.com\": no scheme, port or path)"
                        )),
                        None => Ok(hosts),
                    },
                )
            });
        let key = p.take("bounces.mailgun_signing_key", self.mailgun_signing_key);
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
            soft_limit: soft_limit?,
            sns_cert_hosts: hosts?,
            mailgun_signing_key: key?.non_empty(),
            imap,
            poll_interval: poll_interval?,
        })
    }
}

/// The two halves of a bounce address, or a sentence saying what to write.
fn bounce_address(text: &str) -> Result<BounceAddress, String> {
    let wrong = || format!("\"{text}\" is not an address like \"bounces@news.example.org\"");
    let (local, domain) = text.rsplit_once('@').ok_or_else(wrong)?;
    let plain = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !plain(local) || !plain(domain) || !domain.contains('.') {
        return Err(wrong());
    }
    // The token is written after a `+`, and a bounce address made of 64 characters
    // before its token would leave no room for one (RFC 5321 allows 64 in all).
    if local.len() > 20 {
        return Err(format!(
            "\"{local}\" is too long: keep the part before the @ to 20 characters, so the signed token fits beside it"
        ));
    }
    Ok(BounceAddress {
        local: local.to_string(),
        domain: domain.to_ascii_lowercase(),
    })
}

impl BouncesConfig {
    /// Whether `host` is one `sns_cert_hosts` allows (`*` matches one whole label).
    pub fn allows_cert_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        self.sns_cert_hosts.iter().any(|pattern| {
            let wanted: Vec<&str> = pattern.split('.').collect();
            wanted.len() == labels.len()
                && wanted
                    .iter()
                    .zip(&labels)
                    .all(|(w, l)| !l.is_empty() && (*w == "*" || w == l))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_addresses_are_split_and_checked() {
        assert_eq!(
            bounce_address("bounces@News.Example.org"),
            Ok(BounceAddress {
                local: "bounces".into(),
                domain: "news.example.org".into()
            })
        );
        for bad in [
            "bounces",
            "@example.org",
            "b@localhost",
            "a b@example.org",
            "b+x@example.org",
            "a-very-long-bounce-address-name@example.org",
        ] {
            assert!(bounce_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cert_hosts_match_whole_labels() {
        let config = BouncesConfig {
            address: None,
            soft_limit: 3,
            sns_cert_hosts: vec!["sns.*.amazonaws.com".into(), "127.0.0.1".into()],
            mailgun_signing_key: None,
            imap: None,
            poll_interval: std::time::Duration::from_secs(60),
        };
        assert!(config.allows_cert_host("sns.us-east-1.amazonaws.com"));
        assert!(config.allows_cert_host("SNS.eu-west-1.amazonaws.com."));
        assert!(config.allows_cert_host("127.0.0.1"));
        for bad in [
            "sns.amazonaws.com",
            "sns.a.b.amazonaws.com",
            "sns.evil.com",
            "sns.us-east-1.amazonaws.com.evil.com",
            "evil.us-east-1.amazonaws.com",
            "127.0.0.2",
            "sns..amazonaws.com",
        ] {
            assert!(!config.allows_cert_host(bad), "{bad}");
        }
    }

    mod loaded {
        use crate::bounces::imap::ImapSecurity;
        use crate::config::{Config, ConfigError};
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
                    "bounces.address: \"bounces+x@news.example.org\" is not an address like",
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
}
