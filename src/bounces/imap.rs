//! The IMAP client of the bounce mailbox: the few commands herald needs (LOGIN,
//! SELECT, UID SEARCH, UID FETCH, UID STORE, LOGOUT), always over TLS verified like the
//! SMTP relay's: `imaps://` from the first byte, `imap://` upgraded with STARTTLS or
//! refused. The password never travels in the clear and never shows in a log.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::Secret;

/// The keyword set on a mail herald could not read: it stays unread for a person, and
/// is not fetched again.
pub const UNPARSED_KEYWORD: &str = "$HeraldUnparsed";

/// The longest response line read (literals aside).
const MAX_LINE: usize = 64 * 1024;

/// The largest mail fetched; a bounce is a few kilobytes, and a mailbox someone filled
/// with huge mails must not fill herald's memory.
const MAX_LITERAL: usize = 32 * 1024 * 1024;

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapSecurity {
    /// TLS from the first byte (`imaps://`, port 993 by default).
    Tls,
    /// A plain connection upgraded with STARTTLS before anything else (`imap://`, port
    /// 143 by default); a server that does not offer it is refused.
    Starttls,
}

/// Where the bounce mailbox is and how to log in.
#[derive(Debug, Clone)]
pub struct ImapSettings {
    /// Server host name (or IP address), checked against its certificate.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// TLS or STARTTLS.
    pub security: ImapSecurity,
    /// The login name, from the URL.
    pub user: String,
    /// The password, from the environment.
    pub password: Secret,
    /// The folder read (`INBOX` unless the URL's path names another).
    pub mailbox: String,
    /// PEM certificates trusted, besides the public roots, to sign the server's.
    pub ca_certificates: Option<Vec<u8>>,
    /// The longest wait for any one answer from the server.
    pub timeout: Duration,
}

impl ImapSettings {
    /// Reads `imaps://USER@HOST[:PORT][/MAILBOX]` or `imap://…` (STARTTLS). The user
    /// may be percent-encoded (`bounces%40news.example.org`); the password must not be
    /// in the URL.
    pub fn from_url(
        url: &str,
        password: Secret,
        ca_certificates: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ImapSettings, String> {
        let parsed = url::Url::parse(url)
            .map_err(|e| format!("is not a URL ({e}); write it as imaps://USER@HOST/INBOX"))?;
        let (security, default_port) = match parsed.scheme() {
            "imaps" => (ImapSecurity::Tls, 993),
            "imap" => (ImapSecurity::Starttls, 143),
            other => {
                return Err(format!(
                    "has the scheme {other:?}; use imaps:// (TLS) or imap:// (STARTTLS)"
                ));
            }
        };
        if parsed.password().is_some() {
            return Err(
                "contains a password; remove it and set HERALD__BOUNCES__IMAP_PASSWORD instead"
                    .into(),
            );
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("names no host; write it as imaps://USER@HOST/INBOX".into()),
        };
        let user = percent_decode(parsed.username())?;
        if user.is_empty() {
            return Err("names no user; write it as imaps://USER@HOST/INBOX".into());
        }
        let mailbox = percent_decode(parsed.path().trim_start_matches('/'))?;
        let mailbox = if mailbox.is_empty() {
            "INBOX".to_string()
        } else {
            mailbox
        };
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err("has a query or a fragment, which herald does not read".into());
        }
        for (what, text) in [("user", &user), ("mailbox", &mailbox)] {
            quoted(text).map_err(|e| format!("has a {what} that {e}"))?;
        }
        quoted(password.expose()).map_err(|e| format!("has a password that {e}"))?;
        Ok(ImapSettings {
            host,
            port: parsed.port().unwrap_or(default_port),
            security,
            user,
            password,
            mailbox,
            ca_certificates,
            timeout,
        })
    }

    /// `host:port`, for messages.
    pub fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("has a broken percent escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("has {text:?}, which is not UTF-8 once decoded"))
}

/// What can go wrong talking to the IMAP server; each reads as a sentence.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// No TCP connection.
    #[error("cannot connect to the IMAP server {server}: {source}")]
    Connect {
        /// `host:port`.
        server: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (often: a certificate herald does not trust).
    #[error("TLS with the IMAP server {server} failed: {reason}")]
    Tls {
        /// `host:port`.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server answered a command with NO or BAD.
    #[error("the IMAP server {server} refused {command}: {reply}")]
    Refused {
        /// `host:port`.
        server: String,
        /// The command, without its arguments (never the password).
        command: String,
        /// The server's answer.
        reply: String,
    },
    /// The server said something herald cannot follow, or closed the connection.
    #[error("the IMAP server {server} broke the protocol: {reason}")]
    Protocol {
        /// `host:port`.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The server did not answer in time.
    #[error("the IMAP server {server} did not answer within {seconds} s")]
    Timeout {
        /// `host:port`.
        server: String,
        /// The time limit.
        seconds: u64,
    },
}

/// `text` as an IMAP quoted string; CR, LF and NUL cannot be in one.
fn quoted(text: &str) -> Result<String, String> {
    if text.contains(['\r', '\n', '\0']) {
        return Err("contains a line break or a NUL".into());
    }
    Ok(format!(
        "\"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// A mail fetched by UID.
#[derive(Debug)]
pub enum Fetched {
    /// Its bytes.
    Mail(Vec<u8>),
    /// It is larger than herald reads (its size in bytes).
    TooLarge(usize),
    /// It is no longer there.
    Gone,
}

/// Whether `text` is the untagged FETCH response for `uid`.
fn fetch_of(text: &str, uid: u32) -> bool {
    text.starts_with("* ")
        && text.contains(" FETCH (")
        && number_after(text, "UID ").is_some_and(|n| n == uid as usize)
}

/// The number that follows `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<usize> {
    let start = text.find(key)? + key.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One response from the server: its line(s), with each literal taken out and its
/// place marked by `{}`.
#[derive(Debug, Default)]
struct Response {
    text: String,
    literals: Vec<Vec<u8>>,
}

/// A logged-in session with the mailbox selected.
pub struct ImapSession {
    stream: BufReader<TlsStream<TcpStream>>,
    server: String,
    timeout: Duration,
    next_tag: u32,
}

impl ImapSession {
    /// Connects, secures the connection, logs in and selects the mailbox.
    pub async fn open(settings: &ImapSettings) -> Result<ImapSession, ImapError> {
        let server = settings.server();
        let timeout = settings.timeout;
        let connect = TcpStream::connect((settings.host.as_str(), settings.port));
        let mut tcp = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ImapError::Timeout {
                server: server.clone(),
                seconds: timeout.as_secs(),
            })?
            .map_err(|source| ImapError::Connect {
                server: server.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let protocol = |reason: String| ImapError::Protocol {
            server: server.clone(),
            reason,
        };
        if settings.security == ImapSecurity::Starttls {
            // Read byte by byte until TLS is up, so nothing the server sent in the
            // clear can be buffered and then taken as said under TLS.
            let greeting = read_plain_line(&mut tcp, timeout, &server).await?;
            if !greeting.starts_with("* OK") {
                return Err(protocol(format!("it greeted with {greeting:?}")));
            }
            tcp.write_all(b"S1 STARTTLS\r\n")
                .await
                .map_err(|e| protocol(format!("cannot send STARTTLS: {e}")))?;
            loop {
                let line = read_plain_line(&mut tcp, timeout, &server).await?;
                if line.starts_with("* ") {
                    continue;
                }
                if line.starts_with("S1 OK") {
                    break;
                }
                return Err(ImapError::Refused {
                    server: server.clone(),
                    command: "STARTTLS (herald only logs in over TLS)".into(),
                    reply: line,
                });
            }
        }
        let tls = tls_connector(settings).map_err(|reason| ImapError::Tls {
            server: server.clone(),
            reason,
        })?;
        let name = rustls::pki_types::ServerName::try_from(settings.host.clone()).map_err(|e| {
            ImapError::Tls {
                server: server.clone(),
                reason: format!("{:?} is not a host name: {e}", settings.host),
            }
        })?;
        let stream = tokio::time::timeout(timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| ImapError::Timeout {
                server: server.clone(),
                seconds: timeout.as_secs(),
            })?
            .map_err(|e| ImapError::Tls {
                server: server.clone(),
                reason: e.to_string(),
            })?;
        let mut session = ImapSession {
            stream: BufReader::new(stream),
            server,
            timeout,
            next_tag: 1,
        };
        if settings.security == ImapSecurity::Tls {
            let greeting = session.read_response().await?;
            if !greeting.text.starts_with("* OK") {
                return Err(session.protocol(format!("it greeted with {:?}", greeting.text)));
            }
        }
        let login = format!(
            "LOGIN {} {}",
            quoted(&settings.user).map_err(|e| session.protocol(e))?,
            quoted(settings.password.expose()).map_err(|e| session.protocol(e))?
        );
        session.run("LOGIN", &login).await?;
        let select = format!(
            "SELECT {}",
            quoted(&settings.mailbox).map_err(|e| session.protocol(e))?
        );
        session.run("SELECT", &select).await?;
        Ok(session)
    }

    /// The UIDs of mails neither read nor set aside as unparsed, oldest first.
    pub async fn new_mail(&mut self) -> Result<Vec<u32>, ImapError> {
        self.search(&format!("UNSEEN UNKEYWORD {UNPARSED_KEYWORD}"))
            .await
    }

    /// How many mails wait, unread, for a person because herald could not read them.
    pub async fn unparsed_waiting(&mut self) -> Result<usize, ImapError> {
        Ok(self
            .search(&format!("UNSEEN KEYWORD {UNPARSED_KEYWORD}"))
            .await?
            .len())
    }

    async fn search(&mut self, criteria: &str) -> Result<Vec<u32>, ImapError> {
        let responses = self
            .run("UID SEARCH", &format!("UID SEARCH {criteria}"))
            .await?;
        let mut uids: Vec<u32> = responses
            .iter()
            .filter_map(|r| r.text.strip_prefix("* SEARCH"))
            .flat_map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()))
            .collect();
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// The whole mail `uid`, without marking it read.
    pub async fn fetch(&mut self, uid: u32) -> Result<Fetched, ImapError> {
        // The size first, so one huge mail is set aside rather than breaking every poll.
        let responses = self
            .run("UID FETCH", &format!("UID FETCH {uid} RFC822.SIZE"))
            .await?;
        let Some(size) = responses
            .iter()
            .filter(|r| fetch_of(&r.text, uid))
            .find_map(|r| number_after(&r.text, "RFC822.SIZE "))
        else {
            return Ok(Fetched::Gone);
        };
        if size > MAX_LITERAL {
            return Ok(Fetched::TooLarge(size));
        }
        let responses = self
            .run("UID FETCH", &format!("UID FETCH {uid} BODY.PEEK[]"))
            .await?;
        Ok(responses
            .into_iter()
            .find(|r| fetch_of(&r.text, uid) && r.text.contains("BODY[]"))
            .map(|r| Fetched::Mail(r.literals.into_iter().next().unwrap_or_default()))
            .unwrap_or(Fetched::Gone))
    }

    /// Marks `uid` read: herald has recorded what it said.
    pub async fn mark_seen(&mut self, uid: u32) -> Result<(), ImapError> {
        self.run(
            "UID STORE",
            &format!("UID STORE {uid} +FLAGS.SILENT (\\Seen)"),
        )
        .await
        .map(drop)
    }

    /// Sets `uid` aside as unparsed: still unread, never fetched again.
    pub async fn mark_unparsed(&mut self, uid: u32) -> Result<(), ImapError> {
        self.run(
            "UID STORE",
            &format!("UID STORE {uid} +FLAGS.SILENT ({UNPARSED_KEYWORD})"),
        )
        .await
        .map(drop)
    }

    /// Says goodbye; errors are of no interest any more.
    pub async fn logout(mut self) {
        let _ = self.run("LOGOUT", "LOGOUT").await;
    }

    fn protocol(&self, reason: String) -> ImapError {
        ImapError::Protocol {
            server: self.server.clone(),
            reason,
        }
    }

    /// Sends `command` and reads up to its tagged answer; `name` is what an error
    /// shows (the command itself may hold the password).
    async fn run(&mut self, name: &str, command: &str) -> Result<Vec<Response>, ImapError> {
        let tag = format!("H{}", self.next_tag);
        self.next_tag += 1;
        let line = format!("{tag} {command}\r\n");
        let write = async {
            let stream = self.stream.get_mut();
            stream.write_all(line.as_bytes()).await?;
            stream.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| ImapError::Timeout {
                server: self.server.clone(),
                seconds: self.timeout.as_secs(),
            })?
            .map_err(|e| self.protocol(format!("cannot send {name}: {e}")))?;
        let mut untagged = Vec::new();
        loop {
            let response = self.read_response().await?;
            let Some(rest) = response.text.strip_prefix(&tag) else {
                untagged.push(response);
                continue;
            };
            let rest = rest.trim_start();
            if rest.starts_with("OK") {
                return Ok(untagged);
            }
            return Err(ImapError::Refused {
                server: self.server.clone(),
                command: name.to_string(),
                reply: printable(rest),
            });
        }
    }

    /// One response: a line, and each literal it announces with the rest of the line
    /// after it.
    async fn read_response(&mut self) -> Result<Response, ImapError> {
        let mut response = Response::default();
        loop {
            let line = self.read_line().await?;
            let announced = literal_size(&line);
            match announced {
                Some((size, prefix_len)) => {
                    if size > MAX_LITERAL {
                        return Err(self.protocol(format!(
                            "it sent a literal of {size} bytes, more than the {MAX_LITERAL} herald reads"
                        )));
                    }
                    response.text.push_str(&line[..prefix_len]);
                    response.text.push_str("{}");
                    let mut literal = vec![0; size];
                    let read = self.stream.read_exact(&mut literal);
                    tokio::time::timeout(self.timeout, read)
                        .await
                        .map_err(|_| ImapError::Timeout {
                            server: self.server.clone(),
                            seconds: self.timeout.as_secs(),
                        })?
                        .map_err(|e| self.protocol(format!("the connection broke: {e}")))?;
                    response.literals.push(literal);
                }
                None => {
                    response.text.push_str(&line);
                    return Ok(response);
                }
            }
        }
    }

    /// One line, without its CRLF.
    async fn read_line(&mut self) -> Result<String, ImapError> {
        let mut line = Vec::new();
        let mut limited = (&mut self.stream).take(MAX_LINE as u64 + 2);
        let read = limited.read_until(b'\n', &mut line);
        let result = tokio::time::timeout(self.timeout, read).await;
        let n = result
            .map_err(|_| ImapError::Timeout {
                server: self.server.clone(),
                seconds: self.timeout.as_secs(),
            })?
            .map_err(|e| self.protocol(format!("the connection broke: {e}")))?;
        if n == 0 {
            return Err(self.protocol("it closed the connection".into()));
        }
        if !line.ends_with(b"\n") {
            return Err(self.protocol(format!("it sent a line longer than {MAX_LINE} bytes")));
        }
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }
}

/// The size of the literal `{N}` (or `{N+}`) a line ends with, and where it starts.
fn literal_size(line: &str) -> Option<(usize, usize)> {
    let body = line.strip_suffix('}')?;
    let open = body.rfind('{')?;
    let digits = body[open + 1..].trim_end_matches('+');
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, open))
}

/// A line read before TLS, one byte at a time.
async fn read_plain_line(
    tcp: &mut TcpStream,
    timeout: Duration,
    server: &str,
) -> Result<String, ImapError> {
    let read = async {
        let mut line = Vec::new();
        loop {
            let byte = tcp.read_u8().await?;
            if byte == b'\n' {
                break;
            }
            if line.len() > MAX_LINE {
                return Err(std::io::Error::other("a line too long"));
            }
            line.push(byte);
        }
        if line.ends_with(b"\r") {
            line.pop();
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ImapError::Timeout {
            server: server.to_string(),
            seconds: timeout.as_secs(),
        })?
        .map_err(|e| ImapError::Protocol {
            server: server.to_string(),
            reason: format!("before TLS: {e}"),
        })
}

/// A server's answer, safe to print.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

/// The TLS settings: the public roots and the configured certificates.
fn tls_connector(settings: &ImapSettings) -> Result<TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = &settings.ca_certificates {
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate =
                certificate.map_err(|e| format!("cannot use bounces.imap_ca_file: {e}"))?;
            roots
                .add(certificate)
                .map_err(|e| format!("cannot use bounces.imap_ca_file: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<ImapSettings, String> {
        ImapSettings::from_url(url, Secret::new("pw"), None, Duration::from_secs(5))
    }

    #[test]
    fn a_url_gives_host_port_security_user_and_mailbox() {
        let s = settings("imaps://bounces%40news.example.org@imap.example.org/Bounces").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.security),
            ("imap.example.org", 993, ImapSecurity::Tls)
        );
        assert_eq!(s.user, "bounces@news.example.org");
        assert_eq!(s.mailbox, "Bounces");
        let s = settings("imap://bounces@127.0.0.1:1143").unwrap();
        assert_eq!((s.port, s.security), (1143, ImapSecurity::Starttls));
        assert_eq!(s.mailbox, "INBOX");
    }

    #[test]
    fn a_bad_url_is_refused_with_what_to_do() {
        for (url, words) in [
            (
                "imaps://user:secret@host/",
                "HERALD__BOUNCES__IMAP_PASSWORD",
            ),
            ("pop3://user@host/", "imaps://"),
            ("imaps://host/", "no user"),
            ("not a url", "imaps://USER@HOST"),
            ("imaps://user@host/?tls=none", "query"),
        ] {
            let err = settings(url).unwrap_err();
            assert!(err.contains(words), "{url}: {err}");
        }
    }

    #[test]
    fn a_literal_is_found_at_the_end_of_a_line() {
        assert_eq!(
            literal_size("* 1 FETCH (UID 7 BODY[] {342}"),
            Some((342, 24))
        );
        assert_eq!(literal_size("* OK {+}"), None);
        assert_eq!(literal_size("* OK [ALERT] done"), None);
        assert_eq!(literal_size("* X {99999999999}"), None);
    }

    #[test]
    fn quoted_strings_escape_and_refuse_line_breaks() {
        assert_eq!(quoted(r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert!(quoted("a\r\nH2 LOGOUT").is_err());
    }
}
