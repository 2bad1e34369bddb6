//! Where composed messages go: an SMTP relay through the connection pool, or `.eml`
//! files written atomically into a folder (the default, for a first run).

use std::path::PathBuf;

use super::commit_gate::Hold;
use super::smtp::{SendResult, SmtpPool};
use crate::compose::Composed;
use crate::config::{MailConfig, SmtpConfig, TransportKind};

/// Where composed messages go.
pub enum Transport {
    /// An SMTP relay.
    Smtp(Box<SmtpPool>),
    /// `.eml` files in a folder.
    File(PathBuf),
}

impl Transport {
    /// The transport the configuration asks for.
    pub fn from_config(mail: &MailConfig, smtp: &SmtpConfig) -> Transport {
        match mail.transport {
            TransportKind::Smtp => Transport::Smtp(Box::new(SmtpPool::new(smtp.clone()))),
            TransportKind::File => Transport::File(mail.outbox_dir.clone()),
        }
    }

    pub(super) fn slots(&self) -> usize {
        match self {
            Transport::Smtp(pool) => pool.slots(),
            Transport::File(_) => 1,
        }
    }

    pub(super) async fn send(
        &self,
        slot: usize,
        message: &Composed,
        hold: Option<Hold>,
        next: Option<&Composed>,
    ) -> SendResult {
        match self {
            Transport::Smtp(pool) => pool.send(slot, message, hold, next).await,
            Transport::File(dir) => {
                if let Some(hold) = hold {
                    hold.wait().await;
                }
                write_eml(dir, message).await
            }
        }
    }

    /// Sends one message outside the outbox (a test send).
    pub async fn send_one(&self, message: &Composed) -> SendResult {
        self.send(0, message, None, None).await
    }

    /// Closes connections politely.
    pub async fn close(&self) {
        if let Transport::Smtp(pool) = self {
            pool.close().await;
        }
    }
}

/// Writes the message atomically (temp file, then rename) as `<message-id>.eml`.
async fn write_eml(dir: &std::path::Path, message: &Composed) -> SendResult {
    let name: String = message
        .message_id
        .trim_matches(['<', '>'])
        .split('@')
        .next()
        .unwrap_or("message")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let path = dir.join(format!("{name}.eml"));
    let tmp = dir.join(format!(".{name}.eml.tmp"));
    let result = async {
        tokio::fs::create_dir_all(dir).await?;
        tokio::fs::write(&tmp, &message.bytes).await?;
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    match result {
        Ok(()) => SendResult::Accepted(format!("written to {}", path.display())),
        Err(e) => SendResult::Unreachable(format!("cannot write to {}: {e}", dir.display())),
    }
}
