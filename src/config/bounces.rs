//! `[bounces]`: where bounces come back (VERP), how many soft bounces suppress an
//! address, and what the relays' webhooks are checked against.

use serde::Deserialize;

use super::secret::Secret;
use super::setting::{Problems, Setting};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[bounces]
address = ""
soft_limit = 3
sns_cert_hosts = ["sns.*.amazonaws.com", "sns.*.amazonaws.com.cn"]
mailgun_signing_key = ""
"#;

/// `[bounces]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    address: Setting<String>,
    soft_limit: Setting<u32>,
    sns_cert_hosts: Setting<Vec<String>>,
    mailgun_signing_key: Setting<Secret>,
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
}

/// The bounce mailbox's address, in its two halves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceAddress {
    /// Before the `@`, without any `+tag`.
    pub local: String,
    /// After the `@`, lowercased.
    pub domain: String,
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems) -> Option<BouncesConfig> {
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
        Some(BouncesConfig {
            address: address?,
            soft_limit: soft_limit?,
            sns_cert_hosts: hosts?,
            mailgun_signing_key: key?.non_empty(),
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
}
