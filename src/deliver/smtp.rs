//! SMTP sending over a fixed set of persistent connections.
//!
//! Each slot owns one connection, opened by us as a `TcpStream` with `TCP_NODELAY`
//! (lettre never sets it, and Nagle plus delayed ACK costs ~40 ms per message on a
//! reused connection), and reopened after any error. TLS, implicit or after STARTTLS,
//! runs on that same socket, set up by herald too: lettre's own TLS connect sets no
//! `TCP_NODELAY` either, and herald must be able to write message content through the
//! session's TLS state itself. The number of slots bounds concurrency; lettre's own
//! pool only bounds idle connections.

use std::io::{IoSlice, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Starttls};
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

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

/// A session's stream as herald holds it. lettre reads the replies and writes the
/// commands through a handle on the same stream ([`SharedStream`], [`SharedTls`]);
/// herald writes message content to it directly.
enum Wire {
    /// A plain session: tokio's socket, and a second handle on it that any thread may
    /// write a released final dot to.
    Plain {
        stream: Arc<TcpStream>,
        dot_writer: Arc<std::net::TcpStream>,
    },
    /// A TLS session on herald's socket. The final dot is encrypted like the rest, so
    /// only the sender writes it, once the hold is released.
    Tls(Arc<std::sync::Mutex<TlsStream<TcpStream>>>),
}

/// What a transmission waits for before the server may accept it: the commit of the
/// previous message sent on the same connection. Each connection then has at most one
/// accepted message whose outcome is not yet recorded, which bounds what a crash can
/// send twice.
#[derive(Debug)]
pub struct Hold {
    committed: oneshot::Receiver<()>,
    dot: Arc<ParkedDot>,
}

impl Hold {
    /// A hold that `committed` releases when it fires (or closes), and whose final dot
    /// waits in `dot`, which the committer may release first.
    pub fn new(committed: oneshot::Receiver<()>, dot: Arc<ParkedDot>) -> Hold {
        Hold { committed, dot }
    }

    /// Waits for the release.
    pub async fn wait(self) {
        let _ = self.committed.await;
    }

    /// Parks `bytes` (the final dot, and the commands riding behind it) for whoever
    /// learns of the commit first, waits for the commit, and returns the bytes with how
    /// many of them are already written.
    async fn park(self, writer: &Arc<std::net::TcpStream>, bytes: Vec<u8>) -> (Vec<u8>, usize) {
        {
            let mut parked = self.dot.lock();
            if matches!(*parked, Parked::Released) {
                // The commit is already durable.
                return (bytes, 0);
            }
            *parked = Parked::Waiting(writer.clone(), bytes);
        }
        // Whatever happens from here (the transmission may be dropped by a timeout or
        // at shutdown), nothing is written for this message once the wait is over.
        let _closed = CloseOnDrop(&self.dot);
        let _ = self.committed.await;
        match std::mem::replace(&mut *self.dot.lock(), Parked::Closed) {
            Parked::Waiting(_, bytes) => (bytes, 0),
            Parked::Sent(bytes, written) => (bytes, written),
            Parked::Empty | Parked::Released | Parked::Closed => {
                unreachable!("parked above, and only this wait closes it")
            }
        }
    }
}

/// A connection's final dot (with the commands riding behind it), parked until the
/// commit its message waits for. Whoever learns of the commit first writes it: the
/// store, from SQLite's thread the moment the commit is synced, or the sender, once
/// the recorder tells it. So the server gets the dot without waiting for the commit's
/// news to cross two threads.
#[derive(Debug, Default)]
pub struct ParkedDot(std::sync::Mutex<Parked>);

#[derive(Debug, Default)]
enum Parked {
    /// Nothing parked yet.
    #[default]
    Empty,
    /// Waiting for the commit: the socket and the bytes.
    Waiting(Arc<std::net::TcpStream>, Vec<u8>),
    /// Released, with how many of the bytes were written.
    Sent(Vec<u8>, usize),
    /// Released before anything was parked.
    Released,
    /// The sender has taken over: nothing more is written from here.
    Closed,
}

impl ParkedDot {
    /// The commit is durable: writes the parked bytes as far as the socket takes them
    /// without waiting (the sender writes the rest). Never blocks; any thread.
    pub fn release(&self) {
        let mut parked = self.lock();
        *parked = match std::mem::take(&mut *parked) {
            Parked::Empty => Parked::Released,
            Parked::Waiting(socket, bytes) => {
                // The socket is non-blocking: a full buffer or an error leaves the
                // bytes to the sender, who then meets the error itself.
                let written = (&*socket).write(&bytes).unwrap_or(0);
                Parked::Sent(bytes, written)
            }
            done => done,
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Parked> {
        // The state is a plain value: a panic elsewhere leaves nothing half-done in it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Closes a parked dot when the wait for its commit ends, however it ends.
struct CloseOnDrop<'a>(&'a ParkedDot);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        *self.0.lock() = Parked::Closed;
    }
}

/// The TCP socket of a plain session, shared: lettre reads the replies through it and
/// writes its commands, while herald writes message content to it directly (lettre
/// would first copy each message into a `String` of its own).
#[derive(Debug)]
struct SharedStream(Arc<TcpStream>);

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; polling again registers for the next.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The socket closes when the session is dropped (herald drops a session after any
    /// error), so there is nothing to shut down here.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncTokioStream for SharedStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.peer_addr()
    }
}

/// A TLS session's stream, shared: lettre reads the replies and writes the commands
/// through it, herald writes message content through the same TLS state. Both take
/// turns in one task, so the lock is only ever held for one poll. After STARTTLS the
/// server sends no second greeting, but lettre's session starts by reading one: the
/// handle then begins with the `220` the server sent before the upgrade.
struct SharedTls {
    tls: Arc<std::sync::Mutex<TlsStream<TcpStream>>>,
    greeting: Option<std::io::Cursor<Vec<u8>>>,
}

fn lock_tls(
    tls: &std::sync::Mutex<TlsStream<TcpStream>>,
) -> std::sync::MutexGuard<'_, TlsStream<TcpStream>> {
    // A panic mid-poll drops the session with the task; the stream is not used again.
    tls.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AsyncRead for SharedTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(greeting) = self.greeting.as_mut() {
            let rest = &greeting.get_ref()[greeting.position() as usize..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            greeting.set_position(greeting.position() + n as u64);
            if greeting.position() as usize == greeting.get_ref().len() {
                self.greeting = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *lock_tls(&self.tls)).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *lock_tls(&self.tls)).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *lock_tls(&self.tls)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *lock_tls(&self.tls)).poll_shutdown(cx)
    }
}

impl std::fmt::Debug for SharedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTls")
    }
}

impl AsyncTokioStream for SharedTls {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        lock_tls(&self.tls).get_ref().0.peer_addr()
    }
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
                Ok(Ok(conn)) => *guard = Some(conn),
                Ok(Err(message)) => return SendResult::Unreachable(message),
                Err(_) => {
                    let error = format!(
                        "SMTP server {} did not answer within {:?}",
                        self.server(),
                        self.config.timeout
                    );
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

    async fn connect(&self) -> Result<Connection, String> {
        let cfg = &self.config;
        let hello = ClientId::Domain(cfg.hello_name.clone());
        let server = self.server();
        let tcp = TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| format!("cannot connect to SMTP server {server}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("cannot configure the connection to {server}: {e}"))?;
        // Read back from the socket, so a test (and an operator) can see it took.
        tracing::debug!(
            %server, tls = ?cfg.tls, nodelay = tcp.nodelay().unwrap_or(false),
            "SMTP connection opened"
        );
        let (mut conn, wire) = match cfg.tls {
            TlsMode::None => {
                // A second handle on the socket, for whoever writes a released final dot.
                let (dot_writer, tcp) = tcp
                    .into_std()
                    .and_then(|tcp| Ok((tcp.try_clone()?, TcpStream::from_std(tcp)?)))
                    .map_err(|e| format!("cannot set up the connection to {server}: {e}"))?;
                let stream = Arc::new(tcp);
                let conn = AsyncSmtpConnection::connect_with_transport(
                    Box::new(SharedStream(stream.clone())),
                    &hello,
                )
                .await
                .map_err(|e| format!("SMTP server {server} refused the session: {e}"))?;
                let wire = Wire::Plain {
                    stream,
                    dot_writer: Arc::new(dot_writer),
                };
                (conn, wire)
            }
            TlsMode::Tls => {
                let tls = self
                    .handshake(tcp)
                    .await
                    .map_err(|e| format!("TLS with {server} failed: {e}"))?;
                self.over_tls(tls, None, &hello).await?
            }
            TlsMode::Starttls => {
                let (tcp, greeting) = self.starttls(tcp, &hello).await?;
                let tls = self
                    .handshake(tcp)
                    .await
                    .map_err(|e| format!("STARTTLS with {server} failed: {e}"))?;
                self.over_tls(tls, Some(greeting), &hello).await?
            }
        };
        // lettre does not record PIPELINING, so the server's EHLO reply is read here,
        // before AUTH (a second EHLO only resets the session).
        let pipelining = match conn.command(Ehlo::new(hello.clone())).await {
            Ok(reply) => reply
                .message()
                .any(|line| line.eq_ignore_ascii_case("PIPELINING")),
            Err(_) => false,
        };
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            conn.auth(
                &[Mechanism::Plain, Mechanism::Login],
                &Credentials::new(user.clone(), password.expose().to_string()),
            )
            .await
            .map_err(|e| format!("SMTP login to {server} as {user} failed: {e}"))?;
        }
        Ok(Connection {
            smtp: conn,
            wire,
            pipelining,
            staged: None,
        })
    }

    /// The plain half of STARTTLS (RFC 3207): the greeting, EHLO, then `STARTTLS` and
    /// its `220`. Returns the socket, ready for the handshake, and a greeting for the
    /// session over TLS to start with (lettre reads one; its text does not matter).
    async fn starttls(
        &self,
        tcp: TcpStream,
        hello: &ClientId,
    ) -> Result<(TcpStream, Vec<u8>), String> {
        let server = self.server();
        let failed = |e: &dyn std::fmt::Display| format!("STARTTLS with {server} failed: {e}");
        let stream = Arc::new(tcp);
        let mut conn = AsyncSmtpConnection::connect_with_transport(
            Box::new(SharedStream(stream.clone())),
            hello,
        )
        .await
        .map_err(|e| format!("SMTP server {server} refused the session: {e}"))?;
        if !conn.server_info().supports_feature(Extension::StartTls) {
            return Err(format!(
                "SMTP server {server} does not offer STARTTLS (set smtp.tls to \"tls\" for a relay that expects TLS from the start, or \"none\")"
            ));
        }
        conn.command(Starttls).await.map_err(|e| failed(&e))?;
        // The server says nothing more until the handshake, so lettre holds no bytes
        // of it: dropping the session leaves the socket to herald alone.
        drop(conn);
        let tcp = Arc::try_unwrap(stream)
            .map_err(|_| failed(&"the socket is still shared after the plain session"))?;
        Ok((
            tcp,
            format!("220 {server} (after STARTTLS)\r\n").into_bytes(),
        ))
    }

    /// The TLS handshake on herald's socket, verifying the server's certificate for
    /// `smtp.host`.
    async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        let connector = self.tls.clone()?;
        let name =
            rustls::pki_types::ServerName::try_from(self.config.host.clone()).map_err(|e| {
                format!(
                    "{} is not a host name TLS can verify: {e}",
                    self.config.host
                )
            })?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    }

    /// A lettre session over herald's TLS stream (its EHLO, over TLS, tells the AUTH
    /// mechanisms the server offers now).
    async fn over_tls(
        &self,
        tls: TlsStream<TcpStream>,
        greeting: Option<Vec<u8>>,
        hello: &ClientId,
    ) -> Result<(AsyncSmtpConnection, Wire), String> {
        let tls = Arc::new(std::sync::Mutex::new(tls));
        let shared = SharedTls {
            tls: tls.clone(),
            greeting: greeting.map(std::io::Cursor::new),
        };
        let conn = AsyncSmtpConnection::connect_with_transport(Box::new(shared), hello)
            .await
            .map_err(|e| format!("SMTP server {} refused the session: {e}", self.server()))?;
        Ok((conn, Wire::Tls(tls)))
    }
}

/// The TLS settings for `config.host`: the public roots, and the certificates of
/// `smtp.ca_file` (checked when the configuration was read).
fn tls_connector(config: &SmtpConfig) -> Result<TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = &config.ca_certificates {
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| format!("cannot use smtp.ca_file: {e}"))?;
            roots
                .add(certificate)
                .map_err(|e| format!("cannot use smtp.ca_file: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS for {}: {e}", config.host))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One SMTP transaction. lettre's own `send` dot-stuffs the content a byte at a time,
/// writes the final dot separately and waits for a reply to each command; for ASCII
/// content and addresses (everything herald composes) herald writes the content itself,
/// through the session's stream (plain or TLS), dot-stuffed where a line starts with a
/// dot, and then, once the hold is released, the final dot. So the previous message's
/// commit overlaps this message's commands and content, and the server accepts this
/// message only after it. Anything else takes lettre's path, which adds the 8BITMIME and
/// SMTPUTF8 parameters, after the hold is released. Like lettre, any error ends the
/// session.
/// With `next`, that message's commands follow the final dot in the same write when
/// both messages take this path; the reply comes with whether they did (their own
/// replies are then still to read).
async fn transmit(
    connection: &mut Connection,
    message: &Composed,
    hold: Option<Hold>,
    next: Option<&Composed>,
) -> Result<(Response, bool), TransmitError> {
    let envelope = &message.envelope;
    if !(message.bytes.is_ascii() && ascii_addresses(envelope)) {
        if let Some(hold) = hold {
            hold.wait().await;
        }
        let response = connection.smtp.send(envelope, &message.bytes).await?;
        return Ok((response, false));
    }
    let pipelining = connection.pipelining;
    // The session already waits for this message's content: its commands went out
    // behind the previous message's final dot.
    let staged = connection.staged.take().is_some();
    // Only a message that will take this path may have its commands sent early.
    let next =
        next.filter(|next| pipelining && next.bytes.is_ascii() && ascii_addresses(&next.envelope));
    let wire = &connection.wire;
    let conn = &mut connection.smtp;
    let result: Result<Response, TransmitError> = async {
        if staged {
            // Straight to the content.
        } else if pipelining {
            // One write, then one reply per command, in order.
            conn.command(Content(&envelope_commands(envelope))).await?;
            for _ in envelope.to() {
                conn.read_response().await?;
            }
            conn.read_response().await?;
        } else {
            let mail = Mail::new(envelope.from().cloned(), vec![]);
            conn.command(mail).await?;
            for to in envelope.to() {
                conn.command(Rcpt::new(to.clone(), vec![])).await?;
            }
            conn.command(Data).await?;
        }
        write_content(wire, &message.bytes)
            .await
            .map_err(TransmitError::Write)?;
        // The final dot, where the server accepts the message, waits for the hold.
        let mut end = String::from("\r\n.\r\n");
        if let Some(next) = next {
            end.push_str(&envelope_commands(&next.envelope));
        }
        let end = end.into_bytes();
        let (end, written) = match (hold, wire) {
            // On a plain socket whoever learns of the commit first writes the dot.
            (Some(hold), Wire::Plain { dot_writer, .. }) => hold.park(dot_writer, end).await,
            // Under TLS the dot is a record of the session's own: the sender writes it.
            (Some(hold), Wire::Tls(_)) => {
                hold.wait().await;
                (end, 0)
            }
            (None, _) => (end, 0),
        };
        write_all(wire, &mut [IoSlice::new(&end[written..])])
            .await
            .map_err(TransmitError::Write)?;
        Ok(conn.read_response().await?)
    }
    .await;
    if result.is_err() {
        conn.abort().await;
    }
    Ok((result?, next.is_some()))
}

/// Why a transmission failed.
#[derive(Debug)]
enum TransmitError {
    /// lettre reports it: the server refused, or the session broke.
    Smtp(lettre::transport::smtp::Error),
    /// herald's own write of content to the socket failed.
    Write(std::io::Error),
}

impl From<lettre::transport::smtp::Error> for TransmitError {
    fn from(error: lettre::transport::smtp::Error) -> Self {
        TransmitError::Smtp(error)
    }
}

/// Writes `bytes` as DATA content (RFC 5321 4.5.2), without the final `CRLF.CRLF`: a
/// dot that starts a line is doubled. The content goes out as it is, in one write
/// unless lines start with dots.
async fn write_content(wire: &Wire, bytes: &[u8]) -> std::io::Result<()> {
    let mut slices = Vec::with_capacity(1);
    if bytes.starts_with(b".") {
        slices.push(IoSlice::new(b"."));
    }
    let mut from = 0;
    for at in memchr::memmem::find_iter(bytes, b"\r\n.") {
        slices.push(IoSlice::new(&bytes[from..at + 3]));
        slices.push(IoSlice::new(b"."));
        from = at + 3;
    }
    slices.push(IoSlice::new(&bytes[from..]));
    write_all(wire, &mut slices).await
}

/// Writes every slice whole, waiting for room in the socket's buffer; under TLS, also
/// flushes the records.
async fn write_all(wire: &Wire, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    // Advancing by nothing drops empty slices in front: a socket takes no bytes from
    // them, which would read as a write that failed.
    IoSlice::advance_slices(&mut slices, 0);
    match wire {
        Wire::Plain { stream, .. } => {
            while !slices.is_empty() {
                stream.writable().await?;
                match stream.try_write_vectored(slices) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => IoSlice::advance_slices(&mut slices, n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Wire::Tls(tls) => {
            std::future::poll_fn(|cx| {
                let mut tls = lock_tls(tls);
                while !slices.is_empty() {
                    match Pin::new(&mut *tls).poll_write_vectored(cx, slices) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(n)) => IoSlice::advance_slices(&mut slices, n),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Pin::new(&mut *tls).poll_flush(cx)
            })
            .await
        }
    }
}

/// `MAIL`, one `RCPT` per recipient and `DATA`, as one pipelined group.
fn envelope_commands(envelope: &lettre::address::Envelope) -> String {
    let mut commands = Mail::new(envelope.from().cloned(), vec![]).to_string();
    for to in envelope.to() {
        commands.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
    }
    commands.push_str(&Data.to_string());
    commands
}

fn ascii_addresses(envelope: &lettre::address::Envelope) -> bool {
    envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .all(|address| AsRef::<str>::as_ref(address).is_ascii())
}

/// A pipelined group of commands, written as one "command".
struct Content<'a>(&'a str);

impl std::fmt::Display for Content<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
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

    /// A connected pair on loopback: herald's end, and the server's.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// A connected pair: herald's plain handle on the socket, and the server's end.
    async fn socket_pair() -> (Arc<std::net::TcpStream>, TcpStream) {
        let (client, server) = connected().await;
        (Arc::new(client.into_std().unwrap()), server)
    }

    /// Whatever the server can read within a moment.
    async fn readable_now(server: &mut tokio::net::TcpStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; 64];
        match tokio::time::timeout(Duration::from_millis(100), server.read(&mut buf)).await {
            Ok(read) => buf[..read.unwrap()].to_vec(),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_parked_dot_goes_out_when_the_commit_is_durable_before_the_sender_hears() {
        let (writer, mut server) = socket_pair().await;
        let (committed, heard) = oneshot::channel();
        let dot = Arc::new(ParkedDot::default());
        let hold = Hold::new(heard, dot.clone());
        let parked = tokio::spawn(async move { hold.park(&writer, b".\r\n".to_vec()).await });
        tokio::task::yield_now().await;
        assert_eq!(
            readable_now(&mut server).await,
            b"",
            "held until the commit"
        );
        // The committer's thread releases it; the sender has not heard yet.
        let releaser = dot.clone();
        std::thread::spawn(move || releaser.release())
            .join()
            .unwrap();
        assert_eq!(readable_now(&mut server).await, b".\r\n");
        assert!(
            !parked.is_finished(),
            "the sender still waits for word of the commit"
        );
        committed.send(()).unwrap();
        let (bytes, written) = parked.await.unwrap();
        assert_eq!(
            (bytes.as_slice(), written),
            (&b".\r\n"[..], 3),
            "nothing left to write"
        );
    }

    #[tokio::test]
    async fn a_dot_released_before_it_was_parked_is_the_senders_to_write_at_once() {
        let (writer, mut server) = socket_pair().await;
        let (_committed, heard) = oneshot::channel::<()>();
        let dot = Arc::new(ParkedDot::default());
        dot.release();
        let (bytes, written) = Hold::new(heard, dot).park(&writer, b".\r\n".to_vec()).await;
        assert_eq!((bytes.as_slice(), written), (&b".\r\n"[..], 0));
        assert_eq!(readable_now(&mut server).await, b"", "left to the sender");
    }

    #[tokio::test]
    async fn a_dot_is_never_written_once_its_wait_is_abandoned() {
        let (writer, mut server) = socket_pair().await;
        let (_committed, heard) = oneshot::channel::<()>();
        let dot = Arc::new(ParkedDot::default());
        let park = Hold::new(heard, dot.clone()).park(&writer, b".\r\n".to_vec());
        // The transmission gives up (a timeout, shutdown) while the dot is parked.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), park)
                .await
                .is_err()
        );
        dot.release();
        assert_eq!(readable_now(&mut server).await, b"");
    }

    /// What `write_content` puts on the wire for `bytes`.
    async fn stuffed(bytes: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let (client, mut server) = connected().await;
        let client = client.into_std().unwrap();
        let wire = Wire::Plain {
            dot_writer: Arc::new(client.try_clone().unwrap()),
            stream: Arc::new(TcpStream::from_std(client).unwrap()),
        };
        write_content(&wire, bytes).await.unwrap();
        drop(wire);
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        received
    }

    #[tokio::test]
    async fn content_is_dot_stuffed() {
        assert_eq!(
            stuffed(b".top\r\nmid.dle\r\n.\r\n..two\r\nend").await,
            b"..top\r\nmid.dle\r\n..\r\n...two\r\nend"
        );
        assert_eq!(stuffed(b"plain\r\ntext").await, b"plain\r\ntext");
        assert_eq!(stuffed(b"").await, b"", "nothing to write is no error");
        // Larger than a socket buffer takes at once: written in several turns.
        let big: Vec<u8> = b"line\r\n.dot\r\n".repeat(200_000);
        let expected: Vec<u8> = b"line\r\n..dot\r\n".repeat(200_000);
        assert_eq!(stuffed(&big).await, expected);
    }
}
