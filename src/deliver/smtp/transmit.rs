//! One SMTP transaction on an open session: the envelope's commands (pipelined when the
//! server allows), the content written by herald itself through the session's stream,
//! dot-stuffed, and the final dot once the commit gate lets it go, with the next
//! message's commands riding behind it.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::Poll;

use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::response::Response;
use tokio::io::AsyncWrite;

use super::Connection;
use super::connect::{Wire, lock_tls};
use crate::compose::Composed;
use crate::deliver::commit_gate::Hold;

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
pub(super) async fn transmit(
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
pub(super) enum TransmitError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::net::TcpStream;

    /// A connected pair on loopback: herald's end, and the server's.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
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
