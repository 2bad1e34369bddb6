//! Opening an SMTP session: herald's own TCP socket with `TCP_NODELAY` (lettre's
//! connect never sets it, and Nagle's algorithm against delayed ACKs costs ~40 ms per
//! message on a reused connection), the TLS handshake run on it by herald (implicit, or
//! after herald's own STARTTLS), then lettre's session over a shared handle on the
//! stream, EHLO and AUTH. herald keeps the stream too, to write message content itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Ehlo, Starttls};
use lettre::transport::smtp::extension::{ClientId, Extension};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Connection, SmtpPool};
use crate::config::{SmtpConfig, TlsMode};

/// A session's stream as herald holds it. lettre reads the replies and writes the
/// commands through a handle on the same stream ([`SharedStream`], [`SharedTls`]);
/// herald writes message content to it directly.
pub(super) enum Wire {
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

pub(super) fn lock_tls(
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
    pub(super) async fn connect(&self) -> Result<Connection, String> {
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
pub(super) fn tls_connector(config: &SmtpConfig) -> Result<TlsConnector, String> {
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
