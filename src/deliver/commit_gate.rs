//! The commit gate: the one rule that bounds what a crash can send twice.
//!
//! **Invariant.** On each SMTP connection, at most one message is accepted by the server
//! and not yet recorded as `sent` in the database. The server accepts a message at its
//! final dot, so a connection's next final dot goes out only once the outcome of the
//! message before it is durably committed. Everything else about the next message (its
//! commands, its content) goes out while that commit runs; only the dot waits. After a
//! crash, then, at most one message per connection is sent again.
//!
//! **How.** When a message is accepted, its sender makes a [`gate`]: a [`Hold`] it keeps
//! for its next message, and an [`Ack`] that travels to the recorder with the outcome.
//! The recorder commits outcomes in rounds ([`Round`]) and opens the round's holds only
//! once the commit is durable: on SQLite the commit's WAL hook writes the parked final
//! dots of plain sessions from SQLite's own thread the moment the commit is synced
//! ([`Round::on_durable`]); then every sender hears that its hold is open
//! ([`Round::open`]) and writes whatever is left (the whole dot, under TLS, where the
//! dot is a TLS record of the session's own).
//!
//! **When a commit fails.** The round stays closed: no dot of it is released, its
//! outcomes are kept and written again, with backoff, once the database answers, and
//! only then are its holds opened. A sender waiting on a closed hold sends nothing more
//! on that connection, so a database blip causes no duplicate and leaves no delivered
//! email recorded as `sending`. If the process stops before the retry succeeds, the
//! round's messages are the one-per-connection that a crash may send again.

use std::io::Write;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::store::OnDurable;

/// A linked pair for a message just accepted on a connection: the [`Hold`] its sender
/// keeps for the connection's next message, and the [`Ack`] that goes to the recorder
/// with the outcome, to open the hold once that outcome is durable.
pub fn gate() -> (Hold, Ack) {
    let (committed, heard) = oneshot::channel();
    let dot = Arc::new(ParkedDot::default());
    (
        Hold {
            committed: heard,
            dot: dot.clone(),
        },
        Ack { dot, committed },
    )
}

/// The recorder's side of a [`Hold`]: opens it once the outcome it came with is durable.
#[derive(Debug)]
pub struct Ack {
    dot: Arc<ParkedDot>,
    committed: oneshot::Sender<()>,
}

/// The acks of the outcomes one commit writes. Dropped without [`Round::open`] (the
/// commit failed and the recorder gave up), its holds never open.
#[derive(Debug, Default)]
pub struct Round {
    acks: Vec<Ack>,
}

impl Round {
    /// Adds the ack of an outcome going into this round's commit.
    pub fn push(&mut self, ack: Ack) {
        self.acks.push(ack);
    }

    /// How many holds (connections' next final dots) this round opens.
    pub fn opens(&self) -> usize {
        self.acks.len()
    }

    /// The work for the store to run the moment the round's commit is durable: writes
    /// the parked final dots (see [`ParkedDot::release`]). Dropped, unrun, if the
    /// commit fails: the dots stay parked.
    pub fn on_durable(&self) -> OnDurable {
        let dots: Vec<Arc<ParkedDot>> = self.acks.iter().map(|ack| ack.dot.clone()).collect();
        OnDurable::new(move || dots.iter().for_each(|dot| dot.release()))
    }

    /// The commit returned: tells every sender its hold is open.
    pub fn open(self) {
        for ack in self.acks {
            let _ = ack.committed.send(());
        }
    }
}

/// What a connection's next final dot waits for: the commit of the outcome of the
/// message accepted before it on the same connection.
#[derive(Debug)]
pub struct Hold {
    committed: oneshot::Receiver<()>,
    dot: Arc<ParkedDot>,
}

impl Hold {
    /// Waits until the hold is open. A hold whose round was given up (the recorder
    /// stopped before the commit succeeded) never opens: the wait then ends only when
    /// the sender's own deadline or shutdown ends it.
    pub async fn wait(self) {
        if self.committed.await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Parks `bytes` (the final dot, and the commands riding behind it) for whoever
    /// learns of the commit first, waits for the commit, and returns the bytes with how
    /// many of them are already written.
    pub(crate) async fn park(
        self,
        writer: &Arc<std::net::TcpStream>,
        bytes: Vec<u8>,
    ) -> (Vec<u8>, usize) {
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
        if self.committed.await.is_err() {
            // The round was given up: this dot is never written.
            std::future::pending::<()>().await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
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
        let (hold, ack) = gate();
        let dot = ack.dot.clone();
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
        let mut round = Round::default();
        round.push(ack);
        round.open();
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
        let (hold, ack) = gate();
        ack.dot.release();
        let (bytes, written) = hold.park(&writer, b".\r\n".to_vec()).await;
        assert_eq!((bytes.as_slice(), written), (&b".\r\n"[..], 0));
        assert_eq!(readable_now(&mut server).await, b"", "left to the sender");
    }

    #[tokio::test]
    async fn a_dot_is_never_written_once_its_wait_is_abandoned() {
        let (writer, mut server) = socket_pair().await;
        let (hold, ack) = gate();
        let dot = ack.dot.clone();
        let park = hold.park(&writer, b".\r\n".to_vec());
        // The transmission gives up (a timeout, shutdown) while the dot is parked.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), park)
                .await
                .is_err()
        );
        dot.release();
        assert_eq!(readable_now(&mut server).await, b"");
    }

    #[tokio::test]
    async fn a_round_given_up_never_opens_its_holds() {
        let (writer, mut server) = socket_pair().await;
        let (hold, ack) = gate();
        let mut round = Round::default();
        round.push(ack);
        // The recorder gave up: the round's commit never succeeded.
        drop(round);
        let park = hold.park(&writer, b".\r\n".to_vec());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), park)
                .await
                .is_err(),
            "the hold stays shut"
        );
        assert_eq!(readable_now(&mut server).await, b"");
        let (hold, ack) = gate();
        drop(ack);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), hold.wait())
                .await
                .is_err(),
            "a hold whose ack is gone never opens"
        );
    }
}
