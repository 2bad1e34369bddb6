//! SMTP sending over a fixed set of persistent connections.
//!
//! Each slot owns one connection, opened by us as a `TcpStream` with `TCP_NODELAY`
//! (lettre never sets it, and Nagle plus delayed ACK costs ~40 ms per message on a
//! reused connection), and reopened after any error. The number of slots bounds
//! concurrency; lettre's own pool only bounds idle connections.

use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::compose::Composed;
use crate::config::{SmtpConfig, TlsMode};

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
    slots: Vec<Mutex<Option<AsyncSmtpConnection>>>,
}

impl SmtpPool {
    /// A pool with `config.connections` slots; connections open on first use.
    pub fn new(config: SmtpConfig) -> SmtpPool {
        let slots = (0..config.connections).map(|_| Mutex::new(None)).collect();
        SmtpPool { config, slots }
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
    pub async fn send(&self, slot: usize, message: &Composed) -> SendResult {
        let mut guard = self.slots[slot].lock().await;
        let usable = matches!(guard.as_ref(), Some(conn) if !conn.has_broken());
        if !usable {
            *guard = None;
            match tokio::time::timeout(self.config.timeout, self.connect()).await {
                Ok(Ok(conn)) => *guard = Some(conn),
                Ok(Err(message)) => return SendResult::Unreachable(message),
                Err(_) => {
                    return SendResult::Unreachable(format!(
                        "SMTP server {} did not answer within {:?}",
                        self.server(),
                        self.config.timeout
                    ));
                }
            }
        }
        let conn = guard.as_mut().expect("connected above");
        // The whole transaction, DATA included, must finish within a few timeouts;
        // a timeout after the final dot leaves the outcome unknown, so it is retried
        // with the same Message-ID.
        let budget = self.config.timeout * 3;
        let result =
            tokio::time::timeout(budget, conn.send(&message.envelope, &message.bytes)).await;
        match result {
            Ok(Ok(response)) => {
                let text: Vec<&str> = response.message().collect();
                SendResult::Accepted(format!("{} {}", response.code(), text.join(" ")))
            }
            Ok(Err(error)) => {
                let outcome = classify(&error);
                if conn.has_broken() || !matches!(outcome, SendResult::Permanent { .. }) {
                    *guard = None;
                }
                outcome
            }
            Err(_) => {
                *guard = None;
                SendResult::Temporary(format!(
                    "timed out after {budget:?} waiting for the SMTP server"
                ))
            }
        }
    }

    /// Says goodbye on every open connection.
    pub async fn close(&self) {
        for slot in &self.slots {
            if let Some(mut conn) = slot.lock().await.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.quit()).await;
            }
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, String> {
        let cfg = &self.config;
        let hello = ClientId::Domain(cfg.hello_name.clone());
        let server = self.server();
        let tls_params = || {
            TlsParameters::new(cfg.host.clone())
                .map_err(|e| format!("cannot set up TLS for {}: {e}", cfg.host))
        };
        let mut conn = match cfg.tls {
            TlsMode::Tls => AsyncSmtpConnection::connect_tokio1(
                (cfg.host.as_str(), cfg.port),
                Some(cfg.timeout),
                &hello,
                Some(tls_params()?),
                None,
            )
            .await
            .map_err(|e| format!("cannot connect to SMTP server {server}: {e}"))?,
            TlsMode::None | TlsMode::Starttls => {
                let tcp = TcpStream::connect((cfg.host.as_str(), cfg.port))
                    .await
                    .map_err(|e| format!("cannot connect to SMTP server {server}: {e}"))?;
                tcp.set_nodelay(true)
                    .map_err(|e| format!("cannot configure the connection to {server}: {e}"))?;
                let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello)
                    .await
                    .map_err(|e| format!("SMTP server {server} refused the session: {e}"))?;
                if cfg.tls == TlsMode::Starttls {
                    conn.starttls(tls_params()?, &hello)
                        .await
                        .map_err(|e| format!("STARTTLS with {server} failed: {e}"))?;
                }
                conn
            }
        };
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            conn.auth(
                &[Mechanism::Plain, Mechanism::Login],
                &Credentials::new(user.clone(), password.clone()),
            )
            .await
            .map_err(|e| format!("SMTP login to {server} as {user} failed: {e}"))?;
        }
        Ok(conn)
    }
}

/// Sorts a lettre error into retry-or-not.
fn classify(error: &lettre::transport::smtp::Error) -> SendResult {
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
