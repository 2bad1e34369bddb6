//! `[smtp]`: the relay herald sends through when `mail.transport = "smtp"`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::secret::Secret;
use super::setting::{Problems, Setting, Text};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[smtp]
host = "127.0.0.1"
port = 25
tls = "none"
username = ""
password = ""
connections = 4
rate_per_second = 0.0
timeout = "30s"
hello_name = ""
ca_file = ""
domains = {}
"#;

/// `[smtp]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    host: Setting<String>,
    port: Setting<u16>,
    tls: Setting<TlsMode>,
    username: Setting<String>,
    password: Setting<Secret>,
    connections: Setting<u32>,
    rate_per_second: Setting<f64>,
    timeout: Setting<Text<Duration>>,
    hello_name: Setting<String>,
    ca_file: Setting<String>,
    domains: Setting<BTreeMap<String, Setting<Domain>>>,
}

/// `[smtp.domains."DOMAIN"]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Domain {
    rate_per_second: f64,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text (a local relay).
    None,
    /// Upgrade with STARTTLS; fail if the server does not offer it.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// `[smtp]`.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Relay host.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Transport security.
    pub tls: TlsMode,
    /// AUTH user, when set.
    pub username: Option<String>,
    /// AUTH password (set it through `HERALD__SMTP__PASSWORD`).
    pub password: Option<Secret>,
    /// Persistent connections kept open at once.
    pub connections: usize,
    /// Global pace; 0 means as fast as the server accepts.
    pub rate_per_second: f64,
    /// Per-command timeout.
    pub timeout: Duration,
    /// Name sent in EHLO; defaults to the sending domain.
    pub hello_name: String,
    /// PEM certificates trusted, besides the public roots, to sign the server's TLS
    /// certificate (a relay with a private certificate authority).
    pub ca_certificates: Option<Vec<u8>>,
    /// Per-recipient-domain pace (messages per second), lower-cased domain → rate.
    pub domain_rates: BTreeMap<String, f64>,
}

impl File {
    /// The typed section, or `None` with each problem recorded. `sending_domain` (the
    /// From address's) is the EHLO name unless `hello_name` gives one.
    pub(super) fn check(
        self,
        p: &mut Problems,
        sending_domain: Option<&str>,
        base: &Path,
    ) -> Option<SmtpConfig> {
        let host = p.take("smtp.host", self.host).and_then(|host| {
            let host = host.trim().to_string();
            p.check(
                "smtp.host",
                if host.is_empty() {
                    Err("is empty".into())
                } else {
                    Ok(host)
                },
            )
        });
        let port = p.take("smtp.port", self.port);
        let tls = p.take("smtp.tls", self.tls);
        let username = p.take("smtp.username", self.username);
        let password = p.take("smtp.password", self.password);
        let connections = p.take("smtp.connections", self.connections).and_then(|n| {
            p.check(
                "smtp.connections",
                if (1..=256).contains(&n) {
                    Ok(n as usize)
                } else {
                    Err(format!("{n} is out of range (1 to 256)"))
                },
            )
        });
        let rate_per_second = p
            .take("smtp.rate_per_second", self.rate_per_second)
            .and_then(|rate| {
                p.check(
                    "smtp.rate_per_second",
                    if rate >= 0.0 && rate.is_finite() {
                        Ok(rate)
                    } else {
                        Err("must be 0 (unlimited) or a positive number".into())
                    },
                )
            });
        let timeout = p.text("smtp.timeout", self.timeout);
        let hello_name = p.take("smtp.hello_name", self.hello_name);
        let ca_certificates =
            p.take("smtp.ca_file", self.ca_file)
                .and_then(|file| match file.trim() {
                    "" => Some(None),
                    file => p.check(
                        "smtp.ca_file",
                        read_certificates(&super::resolve(base, file)).map(Some),
                    ),
                });
        let domain_rates = p.take("smtp.domains", self.domains).and_then(|domains| {
            let mut rates = BTreeMap::new();
            let mut all_read = true;
            for (domain, limits) in domains {
                let key = format!("smtp.domains.\"{domain}\".rate_per_second");
                let rate = p
                    .take(&format!("smtp.domains.\"{domain}\""), limits)
                    .and_then(|l| {
                        p.check(
                            &key,
                            if l.rate_per_second > 0.0 && l.rate_per_second.is_finite() {
                                Ok(l.rate_per_second)
                            } else {
                                Err("must be a positive number of messages per second".into())
                            },
                        )
                    });
                match rate {
                    Some(rate) => {
                        rates.insert(domain.trim().to_ascii_lowercase(), rate);
                    }
                    None => all_read = false,
                }
            }
            all_read.then_some(rates)
        });
        let hello_name = match hello_name?.trim() {
            "" => sending_domain?.to_string(),
            name => name.to_string(),
        };
        let non_empty = |text: String| {
            let text = text.trim();
            (!text.is_empty()).then(|| text.to_string())
        };
        Some(SmtpConfig {
            host: host?,
            port: port?,
            tls: tls?,
            username: non_empty(username?),
            password: password?.non_empty(),
            connections: connections?,
            rate_per_second: rate_per_second?,
            timeout: timeout?,
            hello_name,
            ca_certificates: ca_certificates?,
            domain_rates: domain_rates?,
        })
    }
}

/// The PEM certificates in `file`, checked: at least one, all of them readable.
pub(super) fn read_certificates(file: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(certificates) if !certificates.is_empty() => Ok(pem),
        Ok(_) => Err(format!("{} holds no PEM certificate", file.display())),
        Err(e) => Err(format!(
            "{} holds a broken certificate: {e}",
            file.display()
        )),
    }
}
