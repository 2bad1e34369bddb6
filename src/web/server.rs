//! The HTTP listener of `herald daemon`: it accepts connections up to a cap, serves each
//! with hyper, and cuts off clients that hold a connection without using it.
//!
//! A slow client costs a descriptor and nothing else, so the defence is about
//! descriptors: at most `max_connections` are open at once (below the open-file limit,
//! with descriptors kept for SMTP, the database and feeds), and when the cap is reached
//! a new connection takes the place of the one that has waited longest without a
//! request in progress. A client that opens connections and sends nothing, or trickles
//! its headers, therefore never locks out one that sends a request at once. Besides
//! that, a connection is closed when it has been silent for `idle_timeout` with no
//! request in progress, or when a request's head takes longer than `header_timeout`
//! from its first byte. Bodies and whole requests have their own limits, applied to the
//! router (`body_timeout`, `request_timeout`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tower_service::Service as _;

use crate::shutdown::Shutdown;
use crate::supervise::Beat;

/// The listener's limits (from `[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a request's head may take from its first byte.
    pub header_timeout: Duration,
    /// How long a connection with no request in progress may stay silent.
    pub idle_timeout: Duration,
    /// How long shutdown waits for requests in progress.
    pub drain_timeout: Duration,
}

/// Serves `app` on `listener` until shutdown, then lets requests in progress finish
/// (closing idle connections at once) for at most `drain_timeout`. Reports a good pass
/// on `beat` every second while accepting.
pub async fn serve(
    listener: Arc<TcpListener>,
    app: Router,
    limits: Limits,
    shutdown: Shutdown,
    beat: Beat,
) -> io::Result<()> {
    let table = Arc::new(Connections::new(limits.max_connections));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut accept_errors = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.triggered() => break,
            _ = ticker.tick() => {
                beat.ok();
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was taken: neither
                // stops the listener. Wait a moment so a full table is not spun on.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::warn!(%error, count = accept_errors, "cannot accept an HTTP connection");
                }
                shutdown.sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = table.make_room(&shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let conn = table.add();
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            conn,
            table.clone(),
            permit,
            limits,
            shutdown.clone(),
        ));
    }
    // Every connection task holds a permit: when all are back, all have finished.
    let _ = tokio::time::timeout(
        limits.drain_timeout,
        table.slots.acquire_many(limits.max_connections as u32),
    )
    .await;
    Ok(())
}

/// The open connections, and the permits that cap them.
struct Connections {
    slots: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    /// The instant the millisecond counters of [`ConnState`] count from.
    epoch: Instant,
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections {
            slots: Arc::new(Semaphore::new(max)),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit for one more connection; at the cap, the connection that has waited
    /// longest without a request in progress is closed to make room. `None` once
    /// shutdown begins.
    async fn make_room(&self, shutdown: &Shutdown) -> Option<tokio::sync::OwnedSemaphorePermit> {
        loop {
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return Some(permit);
            }
            let victim = self
                .lock()
                .values()
                .filter(|c| c.in_flight.load(Ordering::SeqCst) == 0)
                .min_by_key(|c| c.waiting_since.load(Ordering::SeqCst))
                .cloned();
            if let Some(victim) = &victim {
                victim.evict.notify_one();
            }
            // Every connection busy with a request: wait for one to finish.
            let wait = if victim.is_some() {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                permit = tokio::time::timeout(wait, self.slots.clone().acquire_owned()) => {
                    if let Ok(Ok(permit)) = permit {
                        return Some(permit);
                    }
                }
                _ = shutdown.triggered() => return None,
            }
        }
    }

    fn add(&self) -> Arc<ConnState> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let now = self.millis();
        let conn = Arc::new(ConnState {
            id,
            epoch: self.epoch,
            in_flight: AtomicUsize::new(0),
            last_activity: AtomicU64::new(now),
            waiting_since: AtomicU64::new(now),
            head_started: AtomicU64::new(NOT_STARTED),
            evict: Notify::new(),
        });
        self.lock().insert(id, conn.clone());
        conn
    }

    fn remove(&self, conn: &ConnState) {
        self.lock().remove(&conn.id);
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// `head_started` when no request head is being read.
const NOT_STARTED: u64 = u64::MAX;

/// What the listener knows of one connection (times in milliseconds since `epoch`).
struct ConnState {
    id: u64,
    epoch: Instant,
    /// Requests handed to the router and not answered yet.
    in_flight: AtomicUsize,
    /// The last byte read or written.
    last_activity: AtomicU64,
    /// Since when the connection has had no request in progress (eviction order).
    waiting_since: AtomicU64,
    /// The first byte of the request head being read, or [`NOT_STARTED`].
    head_started: AtomicU64,
    /// Asks the connection to close if it is still without a request.
    evict: Notify,
}

impl ConnState {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn read_bytes(&self) {
        let now = self.now();
        self.last_activity.store(now, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let _ = self.head_started.compare_exchange(
                NOT_STARTED,
                now,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    fn wrote_bytes(&self) {
        self.last_activity.store(self.now(), Ordering::SeqCst);
    }

    fn request_began(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(NOT_STARTED, Ordering::SeqCst);
    }

    fn request_ended(&self) {
        let now = self.now();
        self.last_activity.store(now, Ordering::SeqCst);
        self.waiting_since.store(now, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// When the connection is due to be cut off (`None`: a request is in progress, so
    /// the router's own limits apply).
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let at = match self.head_started.load(Ordering::SeqCst) {
            NOT_STARTED => {
                self.last_activity.load(Ordering::SeqCst) + limits.idle_timeout.as_millis() as u64
            }
            started => started + limits.header_timeout.as_millis() as u64,
        };
        Some(self.epoch + Duration::from_millis(at))
    }
}

/// Serves one connection until it closes, is cut off or evicted, or shutdown ends it.
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    conn: Arc<ConnState>,
    table: Arc<Connections>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    limits: Limits,
    shutdown: Shutdown,
) {
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: conn.clone(),
    });
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            conn.request_began();
            let answer = app.clone().call(request);
            let conn = conn.clone();
            async move {
                let response = answer.await;
                conn.request_ended();
                response
            }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(served);
    let mut draining = false;
    loop {
        let deadline = conn.deadline(&limits);
        // A request in progress is checked on again once it may have ended.
        let wake = deadline.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            _ = served.as_mut() => break,
            _ = tokio::time::sleep_until(wake) => {
                if conn.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    break;
                }
            }
            _ = conn.evict.notified() => {
                if conn.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
            }
            _ = shutdown.triggered(), if !draining => {
                // Closes the connection once the request in progress, if any, is answered.
                served.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
    table.remove(&conn);
}

/// A TCP stream that tells its [`ConnState`] when bytes move.
struct Tracked {
    inner: TcpStream,
    conn: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read_bytes();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.wrote_bytes();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.wrote_bytes();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
