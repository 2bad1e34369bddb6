//! `[mail]`: who emails come from, what they carry, and how they leave herald.

use std::path::{Path, PathBuf};

use lettre::message::Mailbox;
use serde::Deserialize;

use super::setting::{FromText, Problems, Setting, Text};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[mail]
from = ""
postal_address = ""
transport = "file"
outbox_dir = "var/outbox"
list_name = ""
templates_dir = ""
"#;

/// `[mail]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    from: Setting<Text<Mailbox>>,
    postal_address: Setting<String>,
    transport: Setting<TransportKind>,
    outbox_dir: Setting<String>,
    list_name: Setting<String>,
    templates_dir: Setting<String>,
}

/// How emails leave herald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Over SMTP to `[smtp]`.
    Smtp,
    /// As `.eml` files under `mail.outbox_dir`.
    File,
}

/// `[mail]`.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// The From mailbox.
    pub from: Mailbox,
    /// The postal address printed in every email's footer.
    pub postal_address: String,
    /// SMTP or files.
    pub transport: TransportKind,
    /// Where the file transport writes.
    pub outbox_dir: PathBuf,
    /// Human name of the list, shown in `List-Id` and as the site name.
    pub list_name: String,
    /// Folder whose `email/*.j2` and `web/*.html.j2` files replace the built-in
    /// templates of the same name; `None` uses the built-in set only.
    pub templates_dir: Option<PathBuf>,
}

impl MailConfig {
    /// The domain of the From address: Message-IDs and `List-Id` use it.
    pub fn sending_domain(&self) -> &str {
        self.from.email.domain()
    }
}

impl FromText for Mailbox {
    fn from_text(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| {
            format!("\"{text}\" is not a sender address (write \"Site Name <news@example.org>\")")
        })
    }
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems, base: &Path) -> Option<MailConfig> {
        let from = p.text("mail.from", self.from);
        let postal_address = p
            .take("mail.postal_address", self.postal_address)
            .and_then(|text| {
                let text = text.trim().to_string();
                p.check(
                    "mail.postal_address",
                    if text.is_empty() {
                        Err("is empty; bulk mail must carry the sender's postal address".into())
                    } else {
                        Ok(text)
                    },
                )
            });
        let transport = p.take("mail.transport", self.transport);
        let outbox_dir = p.take("mail.outbox_dir", self.outbox_dir);
        let list_name = p.take("mail.list_name", self.list_name);
        let templates_dir = p.take("mail.templates_dir", self.templates_dir);
        let from = from?;
        let list_name = match list_name?.trim() {
            "" => from.name.clone().unwrap_or_else(|| "herald".into()),
            name => name.to_string(),
        };
        Some(MailConfig {
            from,
            postal_address: postal_address?,
            transport: transport?,
            outbox_dir: super::resolve(base, outbox_dir?.trim()),
            list_name,
            templates_dir: match templates_dir?.trim() {
                "" => None,
                dir => Some(super::resolve(base, dir)),
            },
        })
    }
}
