//! SMTP sending over a fixed set of persistent connections.
//!
//! Each slot owns one connection (`connect`: herald's own socket with `TCP_NODELAY`,
//! TLS run on it by herald), reopened after any error, and sends one message at a time
//! on it (`transmit`). The number of slots bounds concurrency; lettre's own pool only
//! bounds idle connections. What a reply means for the row is decided by `retry`; when
//! the server may accept a message is decided by `commit_gate`.

mod connect;
mod transmit;

use std::time::Duration;

use lettre::transport::smtp::client::AsyncSmtpConnection;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use super::commit_gate::Hold;
use crate::compose::Composed;
use crate::config::SmtpConfig;
use crate::metrics::METRICS;
use connect::{Wire, tls_connector};
use transmit::{TransmitError, transmit};

/// What one attempt at one message came to, before backoff is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum SendResult {
    /// 250 after DATA, with the server's reply.
    Accepted(String),
    /// 4xx, a dropped connection or a timeout: try again later.
    Temporary(String),
    /// The server asks us to slow down (421, 454, 4.7.x): retry soon, more slowly.
    Throttled(String),
    /// 5xx: do not try again. `no_mailbox` for 5.1.x.
    Permanent {
        /// The server's reply.
        reply: String,
        /// The mailbox does not exist (5.1.x).
        no_mailbox: bool,
    },
    /// Could not reach the server at all.
    Unreachable(String),
}

/// A fixed number of reusable SMTP connections.
pub struct SmtpPool {
    config: SmtpConfig,
    slots: Vec<Mutex<Option<Connection>>>,
    /// The TLS settings of every session (the public roots and any private CA from
    /// `smtp.ca_file`), built once; used with `tls` or `starttls`.
    tls: Result<TlsConnector, String>,
}

/// One open session, and the stream herald writes message content to.
struct Connection {
    smtp: AsyncSmtpConnection,
    wire: Wire,
    /// The server offers PIPELINING (RFC 2920): MAIL, RCPT and DATA go in one write.
    pipelining: bool,
    /// The message whose commands went out behind the last final dot: the session
    /// is that message's, and waits for its content.
    staged: Option<Staged>,
}

/// A message whose `MAIL`, `RCPT` and `DATA` went out ahead of it.
struct Staged {
    message_id: String,
    /// Replies to those commands still to read (the last is `DATA`'s `354`).
    replies: usize,
}

impl SmtpPool {
    /// A pool with `config.connections` slots; connections open on first use.
    pub fn new(config: SmtpConfig) -> SmtpPool {
        let slots = (0..config.connections).map(|_| Mutex::new(None)).collect();
        let tls = tls_connector(&config);
        SmtpPool { config, slots, tls }
    }

    /// How many messages may be in flight at once.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Where the pool sends, for messages.
    pub fn server(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    /// Sends one message on slot `slot`, reconnecting if the slot has no live connection.
    /// With a `hold`, the server gets the final dot only once it is released. With
    /// `next`, the message this slot sends after this one, the next message's `MAIL`,
    /// `RCPT` and `DATA` go out in the same write as this one's final dot when the
    /// server offers PIPELINING (RFC 2920 lets message content open a command group):
    /// one write, one wake-up of the server and one round trip fewer per message.
    /// This message's result comes back as soon as its final dot is answered; the
    /// replies to the next message's commands are read when that message is sent.
    pub async fn send(
        &self,
        slot: usize,
        message: &Composed,
        hold: Option<Hold>,
        next: Option<&Composed>,
    ) -> SendResult {
        let mut guard = self.slots[slot].lock().await;
        // A session waiting for another message's content cannot carry this one.
        let usable = matches!(guard.as_ref(), Some(conn) if !conn.smtp.has_broken()
            && conn.staged.as_ref().is_none_or(|staged| staged.message_id == message.message_id));
        if !usable {
            *guard = None;
        }
        // This message's commands rode behind the last message's final dot: their
        // replies come first. A refusal is this message's outcome; a session that broke
        // before any of it was sent is replaced, and the message goes on a new one.
        if let Some(conn) = guard.as_mut()
            && let Some(staged) = conn.staged.as_mut()
            && staged.replies > 0
        {
            let (smtp, replies) = (&mut conn.smtp, staged.replies);
            let read = async {
                for _ in 0..replies {
                    smtp.read_response().await?;
                }
                Ok::<_, lettre::transport::smtp::Error>(())
            };
            match tokio::time::timeout(self.config.timeout, read).await {
                Ok(Ok(())) => staged.replies = 0,
                Ok(Err(error)) if error.is_transient() || error.is_permanent() => {
                    *guard = None;
                    return classify(&error);
                }
                Ok(Err(_)) | Err(_) => *guard = None,
            }
        }
        if guard.is_none() {
            match tokio::time::timeout(self.config.timeout, self.connect()).await {
                Ok(Ok(conn)) => {
                    METRICS.smtp_reached();
                    *guard = Some(conn);
                }
                Ok(Err(message)) => {
                    METRICS.smtp_unreached();
                    return SendResult::Unreachable(message);
                }
                Err(_) => {
                    let error = format!(
                        "SMTP server {} did not answer within {:?}",
                        self.server(),
                        self.config.timeout
                    );
                    METRICS.smtp_unreached();
                    return SendResult::Unreachable(error);
                }
            }
        }
        let conn = guard.as_mut().expect("connected above");
        // The whole transaction, DATA included, must finish within a few timeouts;
        // a timeout after the final dot leaves the outcome unknown, so it is retried
        // with the same Message-ID.
        let budget = self.config.timeout * 3;
        let result = tokio::time::timeout(budget, transmit(conn, message, hold, next)).await;
        let mut drop_session = false;
        let outcome = match result {
            Ok(Ok((response, sent_ahead))) => {
                if let Some(next) = next.filter(|_| sent_ahead) {
                    conn.staged = Some(Staged {
                        message_id: next.message_id.clone(),
                        // One reply for each of the next message's commands.
                        replies: next.envelope.to().len() + 2,
                    });
                }
                METRICS.smtp_reply(u16::from(response.code()));
                let text: Vec<&str> = response.message().collect();
                SendResult::Accepted(format!("{} {}", response.code(), text.join(" ")))
            }
            Ok(Err(TransmitError::Smtp(error))) => {
                let outcome = classify(&error);
                if conn.smtp.has_broken() || !matches!(outcome, SendResult::Permanent { .. }) {
                    drop_session = true;
                }
                outcome
            }
            Ok(Err(TransmitError::Write(error))) => {
                drop_session = true;
                SendResult::Temporary(format!("network error: {error}"))
            }
            Err(_) => {
                drop_session = true;
                SendResult::Temporary(format!(
                    "timed out after {budget:?} waiting for the SMTP server"
                ))
            }
        };
        if drop_session {
            *guard = None;
        }
        outcome
    }

    /// Says goodbye on every open connection. A session whose server waits for a
    /// message's content (its commands rode behind the last final dot, and the message
    /// was then given back unsent) is dropped instead: a QUIT there would be read as
    /// content, and a dropped session makes the server discard the message it never got.
    pub async fn close(&self) {
        for slot in &self.slots {
            if let Some(mut conn) = slot.lock().await.take()
                && conn.staged.is_none()
            {
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.smtp.quit()).await;
            }
        }
    }
}

/// Sorts a lettre error into retry-or-not (and counts the server's reply, if it gave
/// one).
fn classify(error: &lettre::transport::smtp::Error) -> SendResult {
    if let Some(code) = error.status() {
        METRICS.smtp_reply(u16::from(code));
    }
    let text = error.to_string();
    if error.is_permanent() {
        let no_mailbox = text.contains("5.1.");
        SendResult::Permanent {
            reply: text,
            no_mailbox,
        }
    } else if is_throttling(error.status().map(u16::from), &text) {
        SendResult::Throttled(text)
    } else {
        SendResult::Temporary(text)
    }
}

/// 421 (service busy), 454, and any 4.7.x enhanced status mean "too fast", not "broken".
fn is_throttling(code: Option<u16>, text: &str) -> bool {
    matches!(code, Some(421 | 454)) || text.contains(" 4.7.") || text.contains("(4.7.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_replies_are_recognised() {
        assert!(is_throttling(Some(421), "service not available"));
        assert!(is_throttling(Some(454), "try again later"));
        assert!(is_throttling(
            Some(450),
            "transient error (450): 4.7.1 too many messages"
        ));
        assert!(!is_throttling(
            Some(450),
            "transient error (450): 4.2.1 mailbox busy"
        ));
        assert!(!is_throttling(None, "connection reset by peer"));
    }
}
