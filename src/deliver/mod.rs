//! Deliver: claim due rows, compose, send, record — in batches.
//!
//! Every row keeps its place in the ledger until it reaches a final state. A claim is a
//! lease: if this process dies, the rows come back when the lease runs out, with the
//! same Message-ID. Unsubscribes and suppressions are checked here, at send time.

mod smtp;

pub use smtp::{Hold, ParkedDot, SendResult, SmtpPool};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::clock::now;
use crate::compose::{Composed, Composer, DigestRequest, SignupRequest};
use crate::config::{DeliverConfig, MailConfig, SmtpConfig, TransportKind};
use crate::domain::{DeliveryKind, DeliveryState, Email, SubscriberState};
use crate::shutdown::Shutdown;
use crate::store::{
    Claim, ClaimedDelivery, EngineTransaction, Lease, LeaseOwner, OnDurable, Outcome, Store,
    StoreError,
};
use crate::supervise::Beat;

/// How long the daemon's delivery may go without a completed round before `/readyz`
/// says so: three SMTP timeouts (a round waits at most one for each reply).
pub fn overdue_after(smtp: &SmtpConfig) -> Duration {
    3 * smtp.timeout.max(Duration::from_secs(10))
}

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

    fn slots(&self) -> usize {
        match self {
            Transport::Smtp(pool) => pool.slots(),
            Transport::File(_) => 1,
        }
    }

    async fn send(
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

/// Running totals of what deliver did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverStats {
    /// Rows claimed.
    pub claimed: u64,
    /// Rows now `sent`.
    pub sent: u64,
    /// Rows now `deferred`.
    pub deferred: u64,
    /// Rows now `bounced`.
    pub bounced: u64,
    /// Rows now `failed`.
    pub failed: u64,
    /// Rows now `expired`.
    pub expired: u64,
    /// Rows cancelled or suppressed at send time.
    pub skipped: u64,
    /// Rows given back unsent (shutdown).
    pub released: u64,
    /// The last error seen, if any.
    pub last_error: Option<String>,
}

impl DeliverStats {
    fn add(&mut self, outcome: &Outcome) {
        match outcome.state() {
            DeliveryState::Sent => self.sent += 1,
            DeliveryState::Deferred => self.deferred += 1,
            DeliveryState::Bounced => self.bounced += 1,
            DeliveryState::Failed => self.failed += 1,
            DeliveryState::Expired => self.expired += 1,
            _ => self.skipped += 1,
        }
        match outcome {
            Outcome::Deferred { error, .. } | Outcome::Failed { error } => {
                self.last_error = Some(error.clone())
            }
            Outcome::Bounced { reply, .. } => self.last_error = Some(reply.clone()),
            _ => {}
        }
    }
}

/// Why delivering stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The database failed; rows keep their leases and come back later.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outbox worker.
pub struct Deliverer {
    store: Store,
    composer: Arc<Composer>,
    transport: Arc<Transport>,
    batch_size: usize,
    lease: Duration,
    drain_timeout: Duration,
    backoff: Backoff,
    pacing: Arc<Pacing>,
    owner: LeaseOwner,
}

struct Job {
    /// Held while the row is claimed but not yet sent: bounds how long claims wait.
    permit: tokio::sync::OwnedSemaphorePermit,
    /// When the row was claimed (the digest's date line and link expiry use it).
    claimed_at: i64,
    /// Which of this worker's claims of the row the job belongs to.
    claim: u64,
    delivery: ClaimedDelivery,
}

/// The rows this worker holds, each with the number of its latest claim and how long
/// its lease is known to hold. A renewer extends the leases while the rows wait and
/// while they are sent; a sender transmits only under a lease that still holds, so a
/// row whose lease lapsed (the database was out of reach) is left to whoever claims it
/// next instead of going out twice.
struct Holdings {
    owner: LeaseOwner,
    rows: std::sync::Mutex<std::collections::HashMap<i64, Held>>,
    claims: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    claim: u64,
    valid_until: i64,
}

impl Holdings {
    fn new(owner: LeaseOwner) -> Holdings {
        Holdings {
            owner,
            rows: Default::default(),
            claims: Default::default(),
        }
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, Held>> {
        self.rows.lock().expect("not poisoned")
    }

    /// Records a new claim of `id`; any older claim of the same row is void.
    fn hold(&self, id: i64, valid_until: i64) -> u64 {
        let claim = self.claims.fetch_add(1, Ordering::Relaxed);
        self.rows().insert(id, Held { claim, valid_until });
        claim
    }

    /// Whether this claim of `id` still holds its lease now.
    fn holds(&self, id: i64, claim: u64) -> bool {
        self.rows()
            .get(&id)
            .is_some_and(|held| held.claim == claim && held.valid_until >= now())
    }

    /// Forgets this claim of `id` (its outcome is committed, or it was given up).
    fn forget(&self, id: i64, claim: u64) {
        let mut rows = self.rows();
        if rows.get(&id).is_some_and(|held| held.claim == claim) {
            rows.remove(&id);
        }
    }

    fn snapshot(&self) -> Vec<(i64, u64)> {
        self.rows().iter().map(|(id, h)| (*id, h.claim)).collect()
    }

    /// Extends the leases of the held rows; rows the database says are no longer ours
    /// are marked lapsed so no sender transmits them.
    async fn renew(&self, store: &Store, lease: Duration) {
        let held = self.snapshot();
        if held.is_empty() {
            return;
        }
        let until = now() + lease.as_secs().max(1) as i64;
        let ids: Vec<i64> = held.iter().map(|(id, _)| *id).collect();
        let lease = Lease {
            owner: self.owner,
            until,
        };
        match store.renew_leases(&ids, lease).await {
            Ok(renewed) => {
                let renewed: std::collections::HashSet<i64> = renewed.into_iter().collect();
                let mut rows = self.rows();
                for (id, claim) in held {
                    if let Some(h) = rows.get_mut(&id).filter(|h| h.claim == claim) {
                        h.valid_until = if renewed.contains(&id) { until } else { 0 };
                    }
                }
            }
            // The leases run on as they were; senders stop once they lapse.
            Err(e) => tracing::warn!(error = %e, "could not renew delivery leases"),
        }
    }
}

/// Retry delays: `base · 2^(attempt-1)`, capped at `max`, with ±25 % jitter.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    fn retry(self, error: String, attempts: i64, expires_at: i64) -> Outcome {
        self.retry_from(now(), error, attempts, expires_at)
    }

    /// The deferral of a message that failed at `now` on its `attempts`-th try.
    fn retry_from(self, now: i64, error: String, attempts: i64, expires_at: i64) -> Outcome {
        let exponent = (attempts.max(1) - 1).min(20) as i32;
        let delay = (self.base.as_secs_f64() * 2f64.powi(exponent)).min(self.max.as_secs_f64());
        let jittered = (delay * (0.75 + fastrand::f64() * 0.5)).ceil() as i64;
        let delay = if self.base.is_zero() {
            0
        } else {
            jittered.max(1)
        };
        // Never past the expiry: the row then expires on the next pass.
        let retry_at = (now + delay).min(expires_at + 1);
        Outcome::Deferred { error, retry_at }
    }
}

impl Deliverer {
    /// A worker over `store` that sends through `transport`, paced by `smtp`'s rates
    /// when that is an SMTP relay.
    pub fn new(
        deliver: &DeliverConfig,
        smtp: &SmtpConfig,
        store: Store,
        composer: Arc<Composer>,
        transport: Arc<Transport>,
    ) -> Deliverer {
        let pacing = match *transport {
            Transport::Smtp(_) => Pacing::new(smtp.rate_per_second, &smtp.domain_rates),
            Transport::File(_) => Pacing::new(0.0, &Default::default()),
        };
        Deliverer {
            store,
            composer,
            transport,
            batch_size: deliver.batch_size,
            lease: deliver.lease,
            drain_timeout: deliver.drain_timeout,
            backoff: Backoff {
                base: deliver.retry_base,
                max: deliver.retry_max,
            },
            pacing: Arc::new(pacing),
            owner: LeaseOwner::random(),
        }
    }

    /// Sends everything due now until nothing is due, then returns.
    /// Deferred rows whose retry time is in the future are left for later.
    pub async fn run_until_empty(
        &self,
        shutdown: &Shutdown,
        mut progress: impl FnMut(&DeliverStats) + Send,
    ) -> Result<DeliverStats, DeliverError> {
        self.pipeline(shutdown, Mode::UntilEmpty, &mut progress)
            .await
    }

    /// Claims and sends one batch, then returns.
    pub async fn run_batch(&self, shutdown: &Shutdown) -> Result<DeliverStats, DeliverError> {
        self.pipeline(shutdown, Mode::Once, &mut |_| {}).await
    }

    /// The daemon's loop: deliver until shutdown, polling when idle, then drain. Each
    /// round the recorder completes (claims come back every 200 ms when idle) is a good
    /// pass on `beat`.
    pub async fn run(&self, shutdown: Shutdown, beat: Beat) -> Result<DeliverStats, DeliverError> {
        let mut last_log = std::time::Instant::now();
        let mut logged = DeliverStats::default();
        let stats = self
            .pipeline(&shutdown, Mode::Forever, &mut |s: &DeliverStats| {
                beat.ok();
                if last_log.elapsed() >= Duration::from_secs(5) && s != &logged {
                    tracing::info!(
                        sent = s.sent,
                        deferred = s.deferred,
                        bounced = s.bounced,
                        failed = s.failed,
                        "delivery totals"
                    );
                    logged = s.clone();
                    last_log = std::time::Instant::now();
                }
            })
            .await;
        self.transport.close().await;
        stats
    }

    /// Claims due rows in batches (feeder), sends them over every transport slot at once
    /// (senders), and records outcomes in small batched transactions as they come back
    /// (recorder), so a crash leaves at most the messages in flight unrecorded.
    async fn pipeline(
        &self,
        shutdown: &Shutdown,
        mode: Mode,
        progress: &mut (dyn FnMut(&DeliverStats) + Send),
    ) -> Result<DeliverStats, DeliverError> {
        let slots = self.transport.slots();
        // Rows claimed but not yet sent are capped, so none waits in memory long enough
        // for its lease to lapse (which would let another claim send it twice).
        let outstanding = Arc::new(tokio::sync::Semaphore::new(self.batch_size + slots));
        let (job_tx, job_rx) = mpsc::channel::<Job>(self.batch_size + slots);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Event>();
        // Fired once the drain timeout has passed after shutdown: senders abandon sends.
        let (hard_stop, hard) = Shutdown::new();
        let down_until = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let down_reason = Arc::new(std::sync::Mutex::new(String::new()));
        let holdings = Arc::new(Holdings::new(self.owner));

        let mut senders = tokio::task::JoinSet::new();
        for slot in 0..slots {
            let ctx = SenderContext {
                slot,
                jobs: job_rx.clone(),
                out: out_tx.clone(),
                transport: self.transport.clone(),
                pacing: self.pacing.clone(),
                composer: self.composer.clone(),
                backoff: self.backoff,
                shutdown: shutdown.clone(),
                hard: hard.clone(),
                down_until: down_until.clone(),
                down_reason: down_reason.clone(),
                holdings: holdings.clone(),
            };
            senders.spawn(ctx.run());
        }
        drop(job_rx);

        let feeder = async {
            let result = self
                .feed(shutdown, mode, job_tx, &out_tx, outstanding, &holdings)
                .await;
            drop(out_tx);
            result
        };
        let recorder = async {
            let mut stats = DeliverStats::default();
            let mut outcomes: Vec<(i64, Outcome)> = Vec::new();
            // Claim permits of sent rows are held until their outcome is committed, so
            // "sent but not yet recorded" (what a crash would send twice) stays bounded.
            let mut held: Vec<Option<tokio::sync::OwnedSemaphorePermit>> = Vec::new();
            let mut acks: Vec<Ack> = Vec::new();
            let mut committed: Vec<(i64, u64)> = Vec::new();
            let mut unsent: Vec<(i64, u64)> = Vec::new();
            let mut error: Option<StoreError> = None;
            let mut claiming: Option<(ClaimTask, oneshot::Sender<_>)> = None;
            let mut last_progress = std::time::Instant::now();
            // Senders the last commit let go: their outcomes are due within a round trip.
            let mut released = 0;
            loop {
                let Some(first) = out_rx.recv().await else {
                    break;
                };
                // Take everything already waiting, and wait briefly for the outcomes of
                // the messages the last commit released, then commit it all in one
                // transaction. Committing as soon as anything arrived split the
                // connections into two halves whose commits alternated: 3.6 outcomes
                // per commit with 8 connections, where waiting gives 8.
                let deadline = tokio::time::Instant::now() + GATHER_AT_MOST;
                let mut done = 0;
                let mut next = Some(first);
                while let Some(event) = next {
                    match event {
                        Event::Claimed(n) => stats.claimed += n,
                        Event::Expired(n) => stats.expired += n,
                        Event::Done(id, claim, outcome, permit, ack) => {
                            done += 1;
                            acks.extend(ack);
                            stats.add(&outcome);
                            outcomes.push((id, outcome));
                            committed.push((id, claim));
                            held.push(permit);
                        }
                        Event::Unsent(id, claim) => unsent.push((id, claim)),
                        Event::Claim(claim, reply) => {
                            // Begun now, the claim's work overlaps the wait for this
                            // round's outcomes, and its flush is theirs.
                            let store = self.store.clone();
                            let task = tokio::spawn(async move {
                                let mut tx = store.begin_engine_transaction().await?;
                                let ids = tx.claim(claim).await?;
                                Ok((tx, ids))
                            });
                            claiming = Some((task, reply));
                        }
                    }
                    next = if outcomes.len() >= 256 {
                        None
                    } else {
                        match out_rx.try_recv() {
                            Ok(event) => Some(event),
                            Err(mpsc::error::TryRecvError::Empty) if done < released => {
                                tokio::time::timeout_at(deadline, out_rx.recv())
                                    .await
                                    .ok()
                                    .flatten()
                            }
                            Err(_) => None,
                        }
                    };
                }
                released = acks.len();
                // The held final dots go out the moment the commit is durable, from
                // SQLite's thread, before the news of it reaches this task.
                let dots: Vec<Arc<ParkedDot>> = acks.iter().map(|ack| ack.dot.clone()).collect();
                let then = OnDurable::new(move || dots.iter().for_each(|dot| dot.release()));
                match claiming.take() {
                    Some((task, reply)) => {
                        let claimed = self
                            .commit_claim(task, &mut outcomes, &mut error, then)
                            .await;
                        let _ = reply.send(claimed);
                    }
                    None => self.flush(&mut outcomes, &mut error, then).await,
                }
                for (id, claim) in committed.drain(..) {
                    holdings.forget(id, claim);
                }
                held.clear();
                for ack in acks.drain(..) {
                    let _ = ack.committed.send(());
                }
                if last_progress.elapsed() >= Duration::from_millis(100) {
                    progress(&stats);
                    last_progress = std::time::Instant::now();
                }
            }
            self.flush(&mut outcomes, &mut error, OnDurable::nothing())
                .await;
            drop(held);
            if !unsent.is_empty() {
                stats.released += unsent.len() as u64;
                let ids: Vec<i64> = unsent.iter().map(|(id, _)| *id).collect();
                if let Err(e) = self.store.release_deliveries(&ids, self.owner, now()).await {
                    error.get_or_insert(e);
                }
                for (id, claim) in unsent {
                    holdings.forget(id, claim);
                }
            }
            progress(&stats);
            (stats, error)
        };
        let drain_guard = async {
            shutdown.triggered().await;
            tokio::time::sleep(self.drain_timeout).await;
            tracing::warn!("drain timeout passed with messages in flight; releasing them");
            hard_stop.fire();
            std::future::pending::<()>().await;
        };
        // Leases are renewed well before they run out, for as long as rows are held.
        let renewer = async {
            let every = (self.lease / 3).max(Duration::from_millis(500));
            loop {
                tokio::time::sleep(every).await;
                holdings.renew(&self.store, self.lease).await;
            }
        };
        // The engine's SQLite connection leaves checkpoints to this (`Store::checkpoint`).
        let checkpointer = async {
            loop {
                tokio::time::sleep(CHECKPOINT_EVERY).await;
                if let Err(error) = self.store.checkpoint().await {
                    tracing::warn!(%error, "could not checkpoint the database");
                }
            }
        };
        let (fed, (stats, error)) = tokio::select! {
            both = async { tokio::join!(feeder, recorder) } => both,
            _ = drain_guard => unreachable!("the drain guard never completes"),
            _ = renewer => unreachable!("the renewer never completes"),
            _ = checkpointer => unreachable!("the checkpointer never completes"),
        };
        while senders.join_next().await.is_some() {}
        fed?;
        if let Some(error) = error {
            return Err(error.into());
        }
        Ok(stats)
    }

    /// Writes buffered outcomes in one transaction (one forced flush for the lot), and
    /// runs `then` once they are durable (if recording them fails, `then` is dropped).
    async fn flush(
        &self,
        outcomes: &mut Vec<(i64, Outcome)>,
        error: &mut Option<StoreError>,
        then: OnDurable,
    ) {
        if let Err(e) = self
            .store
            .record_outcomes_then(outcomes, self.owner, now(), then)
            .await
        {
            // The rows keep their lease and come back for another attempt.
            tracing::error!(error = %e, "could not record delivery outcomes");
            error.get_or_insert(e);
        }
        outcomes.clear();
    }

    /// Commits a begun claim with the buffered outcomes: one forced flush for both,
    /// then `then`. If that fails, the outcomes are written on their own, and the
    /// claim's error goes back to the feeder.
    async fn commit_claim(
        &self,
        task: ClaimTask,
        outcomes: &mut Vec<(i64, Outcome)>,
        error: &mut Option<StoreError>,
        then: OnDurable,
    ) -> Result<Vec<i64>, StoreError> {
        let begun = match task.await {
            Ok(begun) => begun,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        let recorded = async {
            let (mut tx, ids) = begun?;
            tx.record_outcomes(outcomes, self.owner, now()).await?;
            Ok((tx, ids))
        }
        .await;
        let committed = match recorded {
            Ok((tx, ids)) => tx.commit_then(then).await.map(|()| ids),
            Err(e) => {
                // Nothing of it was written (an unfinished transaction is rolled back
                // first): the outcomes go on their own.
                self.flush(outcomes, error, then).await;
                return Err(e);
            }
        };
        match committed {
            Ok(_) => outcomes.clear(),
            Err(_) => self.flush(outcomes, error, OnDurable::nothing()).await,
        }
        committed
    }

    /// Claims batches and hands composed jobs to the senders; rows that must not be
    /// sent go straight to the recorder with their outcome.
    async fn feed(
        &self,
        shutdown: &Shutdown,
        mode: Mode,
        jobs: mpsc::Sender<Job>,
        out: &mpsc::UnboundedSender<Event>,
        outstanding: Arc<tokio::sync::Semaphore>,
        holdings: &Holdings,
    ) -> Result<(), StoreError> {
        let mut last_sweep: Option<std::time::Instant> = None;
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            // Claim only what the senders can take now, and in batches: claiming a row at
            // a time as each send finishes would hold the write lock the recorder needs.
            let want = (self.batch_size / 4).clamp(1, 64) as u32;
            tokio::select! {
                permits = outstanding.acquire_many(want) => drop(permits),
                _ = shutdown.triggered() => return Ok(()),
            }
            let room = outstanding.available_permits().min(self.batch_size);
            let start = now();
            // Expiry sweeps the waiting rows: once every few seconds is plenty.
            let sweep = last_sweep
                .is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(5));
            let expired = match if sweep {
                self.store.expire_overdue(start).await
            } else {
                Ok(0)
            } {
                Ok(n) => n,
                Err(e) if mode == Mode::Forever => {
                    tracing::error!(error = %e, "cannot reach the database; retrying shortly");
                    shutdown.sleep(Duration::from_secs(2)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if sweep {
                last_sweep = Some(std::time::Instant::now());
            }
            let _ = out.send(Event::Expired(expired));
            let lease = Lease {
                owner: self.owner,
                until: start + self.lease.as_secs().max(1) as i64,
            };
            let claim = Claim {
                limit: room,
                now: start,
                lease,
            };
            let claimed = match self.claim(out, claim).await {
                Ok(claimed) => claimed,
                Err(e) if mode == Mode::Forever => {
                    tracing::error!(error = %e, "cannot claim deliveries; retrying shortly");
                    shutdown.sleep(Duration::from_secs(2)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let _ = out.send(Event::Claimed(claimed.len() as u64));
            if claimed.is_empty() {
                match mode {
                    Mode::Forever => {
                        shutdown.sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Mode::Once | Mode::UntilEmpty => return Ok(()),
                }
            }
            // Composing happens in the senders, so it runs on every core.
            for delivery in claimed {
                let permit = outstanding
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let job = Job {
                    permit,
                    claimed_at: start,
                    claim: holdings.hold(delivery.id, lease.until),
                    delivery,
                };
                if let Err(mpsc::error::SendError(job)) = jobs.send(job).await {
                    // Every sender has stopped (shutdown): give the row back.
                    let _ = out.send(Event::Unsent(job.delivery.id, job.claim));
                }
            }
            if mode == Mode::Once {
                return Ok(());
            }
        }
    }

    /// Has the recorder take `claim` with its next outcome commit, then loads the rows.
    async fn claim(
        &self,
        recorder: &mpsc::UnboundedSender<Event>,
        claim: Claim,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let (tx, rx) = oneshot::channel();
        // The recorder runs until every sender, this feeder's included, is gone: it
        // always answers.
        let _ = recorder.send(Event::Claim(claim, tx));
        let ids = rx.await.unwrap_or_else(|_| Ok(Vec::new()))?;
        self.store.load_claimed(&ids).await
    }
}

/// How much composing work `prepare` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Only splice a digest into its group's ready template (microseconds): `None`
    /// when that is not possible.
    Splice,
    /// Render and encode whatever it takes (for the blocking pool).
    Full,
}

/// Checks a claimed row against the reader's state now and composes it, or says
/// why it must not be sent.
fn prepare(
    composer: &Composer,
    delivery: &ClaimedDelivery,
    now: i64,
    work: Work,
) -> Result<Option<Composed>, Outcome> {
    if delivery.expires_at < now {
        return Err(Outcome::Expired);
    }
    let Some(address) = delivery.email.as_deref() else {
        return Err(Outcome::Cancelled {
            reason: "reader removed".into(),
        });
    };
    if delivery.suppressed {
        return Err(Outcome::Suppressed);
    }
    match delivery.subscriber_state {
        Some(SubscriberState::Confirmed) => {}
        Some(SubscriberState::Suppressed) => return Err(Outcome::Suppressed),
        Some(SubscriberState::Unsubscribed) => {
            return Err(Outcome::Cancelled {
                reason: "reader unsubscribed".into(),
            });
        }
        Some(SubscriberState::Pending) | None => {
            if delivery.kind != DeliveryKind::Confirmation {
                return Err(Outcome::Cancelled {
                    reason: "reader is not confirmed".into(),
                });
            }
        }
    }
    let email = Email::parse(address).map_err(|e| Outcome::Failed {
        error: e.to_string(),
    })?;
    match delivery.kind {
        // Sign-up emails carry links, not articles.
        DeliveryKind::Confirmation | DeliveryKind::Welcome => {
            if work == Work::Splice {
                return Ok(None);
            }
            return composer
                .signup_email(&SignupRequest {
                    kind: delivery.kind,
                    subscriber_id: delivery.subscriber_id,
                    email: &email,
                    regions: &delivery.regions,
                    timezone: delivery.timezone.as_deref().unwrap_or("UTC"),
                    message_id: &delivery.message_id,
                    now,
                })
                .map(Some)
                .map_err(|e| Outcome::Failed {
                    error: e.to_string(),
                });
        }
        DeliveryKind::Alert | DeliveryKind::Digest => {}
    }
    if delivery.articles.is_empty() {
        return Err(Outcome::Cancelled {
            reason: "nothing left to send".into(),
        });
    }
    let timezone = delivery
        .timezone
        .as_deref()
        .and_then(|t| t.parse::<chrono_tz::Tz>().ok())
        .unwrap_or(chrono_tz::UTC);
    let request = DigestRequest {
        subscriber_id: delivery.subscriber_id,
        email: &email,
        timezone,
        cadence: delivery.cadence,
        message_id: &delivery.message_id,
        articles: &delivery.articles,
        now,
    };
    match work {
        Work::Splice => Ok(composer.digest_if_shared(&request)),
        Work::Full => composer
            .digest(&request)
            .map(Some)
            .map_err(|e| Outcome::Failed {
                error: e.to_string(),
            }),
    }
}

/// How long the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One claim.
    Once,
    /// Until a claim comes back empty.
    UntilEmpty,
    /// Until shutdown.
    Forever,
}

/// What senders and the feeder tell the recorder.
enum Event {
    Claimed(u64),
    Expired(u64),
    /// A row's outcome under one claim, the claim permit to free once it is committed,
    /// and (for a sent message) who to tell when it is.
    Done(
        i64,
        u64,
        Outcome,
        Option<tokio::sync::OwnedSemaphorePermit>,
        Option<Ack>,
    ),
    /// A claimed row given back unsent.
    Unsent(i64, u64),
    /// The feeder's claim, to commit with the next outcomes; the ids go back on the
    /// channel once committed.
    Claim(Claim, oneshot::Sender<Result<Vec<i64>, StoreError>>),
}

/// How a sender learns that the outcome of its last message is committed: the final dot
/// of its next message, parked for the commit to send, and the recorder's word once
/// the commit has returned.
struct Ack {
    dot: Arc<ParkedDot>,
    committed: oneshot::Sender<()>,
}

/// A claim begun in its own transaction on the engine's connection, still to commit.
type ClaimTask = tokio::task::JoinHandle<Result<(EngineTransaction, Vec<i64>), StoreError>>;

/// One sender task: owns a transport slot and sends jobs one at a time.
struct SenderContext {
    slot: usize,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    out: mpsc::UnboundedSender<Event>,
    transport: Arc<Transport>,
    pacing: Arc<Pacing>,
    composer: Arc<Composer>,
    backoff: Backoff,
    shutdown: Shutdown,
    hard: Shutdown,
    down_until: Arc<std::sync::atomic::AtomicI64>,
    down_reason: Arc<std::sync::Mutex<String>>,
    holdings: Arc<Holdings>,
}

/// How long the recorder waits for the outcomes of the messages its last commit let go
/// before it commits what it has: a server that answers slowly holds up the others'
/// commits by no more than this.
const GATHER_AT_MOST: Duration = Duration::from_millis(2);

/// How often the engine checkpoints SQLite's WAL while it runs.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// After a slot finds the server unreachable, the others defer without trying for this long.
const DOWN_HOLD_SECS: i64 = 5;

/// A claimed row composed and cleared to go out.
struct Ready {
    job: Job,
    composed: Composed,
    /// The recipient's domain, for pacing.
    domain: String,
}

impl SenderContext {
    async fn run(self) {
        let mut committed: Option<Hold> = None;
        // The job taken while the last message was sent, whose commands may have gone
        // out behind that message's final dot.
        let mut next: Option<Ready> = None;
        loop {
            let ready = match next.take() {
                Some(ready) => ready,
                None => {
                    let Some(job) = self.jobs.lock().await.recv().await else {
                        return;
                    };
                    match self.ready(job).await {
                        Some(ready) => ready,
                        None => continue,
                    }
                }
            };
            let Ready {
                job,
                composed,
                domain,
            } = ready;
            let (id, claim) = (job.delivery.id, job.claim);
            let (attempts, expires_at) = (job.delivery.attempts, job.delivery.expires_at);
            if self.shutdown.is_triggered() {
                let _ = self.out.send(Event::Unsent(id, claim));
                continue;
            }
            if now() < self.down_until.load(Ordering::Relaxed) {
                let reason = self.down_reason.lock().expect("not poisoned").clone();
                let outcome = self.backoff.retry(reason, attempts, expires_at);
                let _ = self.out.send(Event::Done(id, claim, outcome, None, None));
                continue;
            }
            // The server may accept this message only once the previous one sent on
            // this connection is committed: a crash then leaves at most one accepted
            // but unrecorded message per connection.
            let hold = committed.take();
            self.pacing.wait(&domain).await;
            // The last moment to find the lease lapsed: from here the message goes out.
            if !self.holdings.holds(id, claim) {
                self.lapsed(id, claim);
                continue;
            }
            // A job already waiting goes out right behind this one: its commands share
            // this message's last write, unless pacing may have to hold it back.
            next = self.look_ahead().await;
            let pipelined = match &next {
                Some(next) => self.pacing.unpaced(&next.domain).await,
                None => false,
            };
            let behind = next.as_ref().filter(|_| pipelined).map(|n| &n.composed);
            let result = tokio::select! {
                result = self.transport.send(self.slot, &composed, hold, behind) => result,
                _ = self.hard.triggered() => {
                    let _ = self.out.send(Event::Unsent(id, claim));
                    if let Some(next) = next {
                        let _ = self.out.send(Event::Unsent(next.job.delivery.id, next.job.claim));
                    }
                    return;
                }
            };
            let outcome = self.outcome(result, attempts, expires_at, &domain).await;
            // The next message on this connection gets its final dot only after this
            // outcome is committed, so at any moment each connection has at most one
            // accepted message that a crash could send twice: duplicates after a crash
            // are bounded by the connection count.
            let ack = if matches!(outcome, Outcome::Sent { .. }) {
                let (tx, rx) = oneshot::channel();
                let dot = Arc::new(ParkedDot::default());
                committed = Some(Hold::new(rx, dot.clone()));
                Some(Ack { dot, committed: tx })
            } else {
                None
            };
            let _ = self
                .out
                .send(Event::Done(id, claim, outcome, Some(job.permit), ack));
        }
    }

    /// What one attempt's result means for the row, with pacing told of it.
    async fn outcome(
        &self,
        result: SendResult,
        attempts: i64,
        expires_at: i64,
        domain: &str,
    ) -> Outcome {
        match result {
            SendResult::Accepted(reply) => {
                self.pacing.success(domain).await;
                Outcome::Sent { reply }
            }
            SendResult::Temporary(error) => self.backoff.retry(error, attempts, expires_at),
            SendResult::Throttled(error) => {
                // Slow this domain down and come back soon: a throttle is not a failure.
                self.pacing.throttled(domain).await;
                self.backoff.retry(error, 1, expires_at)
            }
            SendResult::Permanent { reply, no_mailbox } => Outcome::Bounced {
                reply,
                suppress: no_mailbox,
            },
            SendResult::Unreachable(error) => {
                self.down_until
                    .store(now() + DOWN_HOLD_SECS, Ordering::Relaxed);
                *self.down_reason.lock().expect("not poisoned") = error.clone();
                self.backoff.retry(error, attempts, expires_at)
            }
        }
    }

    /// Checks a job and composes it; a job that must not be sent gets its outcome here.
    async fn ready(&self, mut job: Job) -> Option<Ready> {
        let (id, claim) = (job.delivery.id, job.claim);
        if self.shutdown.is_triggered() {
            // Stop taking new work: the row goes back to the queue unsent.
            let _ = self.out.send(Event::Unsent(id, claim));
            return None;
        }
        if !self.holdings.holds(id, claim) {
            self.lapsed(id, claim);
            return None;
        }
        let domain = job
            .delivery
            .email
            .as_deref()
            .and_then(|e| e.rsplit('@').next())
            .unwrap_or_default()
            .to_string();
        // Splicing into a group's template takes microseconds and runs here; rendering
        // and encoding in full are CPU work for the blocking pool, so the recorder and
        // the feeder are never starved (a starved recorder widens the window in which
        // a crash would send a message twice).
        let claimed_at = job.claimed_at;
        let prepared = match prepare(&self.composer, &job.delivery, claimed_at, Work::Splice) {
            Ok(Some(composed)) => Ok(composed),
            Err(outcome) => Err(outcome),
            Ok(None) => {
                let composer = self.composer.clone();
                let delivery = job.delivery;
                let full = tokio::task::spawn_blocking(move || {
                    let prepared = prepare(&composer, &delivery, claimed_at, Work::Full)
                        .map(|composed| composed.expect("full work always composes"));
                    (delivery, prepared)
                });
                match full.await {
                    Ok((delivery, prepared)) => {
                        job.delivery = delivery;
                        prepared
                    }
                    Err(panic) => {
                        let outcome = Outcome::Failed {
                            error: format!("composing the email failed: {panic}"),
                        };
                        let _ = self.out.send(Event::Done(id, claim, outcome, None, None));
                        return None;
                    }
                }
            }
        };
        let composed = match prepared {
            Ok(composed) => composed,
            Err(outcome) => {
                let _ = self.out.send(Event::Done(id, claim, outcome, None, None));
                return None;
            }
        };
        Some(Ready {
            job,
            composed,
            domain,
        })
    }

    /// The next job, if one is already waiting and can be sent.
    async fn look_ahead(&self) -> Option<Ready> {
        let job = self.jobs.try_lock().ok()?.try_recv().ok()?;
        self.ready(job).await
    }

    /// Drops a job whose lease lapsed: the row is due again for whoever claims it, and
    /// recording anything for it now could undo another worker's result.
    fn lapsed(&self, id: i64, claim: u64) {
        tracing::warn!(
            delivery = id,
            "lease lapsed before sending; leaving the row to its next claim"
        );
        self.holdings.forget(id, claim);
    }
}

/// Message pacing: a global rate, per-recipient-domain rates from config, and an
/// adaptive slow-down for domains that answer with throttling replies.
struct Pacing {
    global: Pacer,
    configured: std::collections::BTreeMap<String, f64>,
    domains: Mutex<std::collections::HashMap<String, DomainPace>>,
}

/// One domain's pace: `interval` between messages (zero = unpaced), never faster than
/// its configured rate; a throttle doubles it, each success shrinks it by a tenth.
struct DomainPace {
    floor: Duration,
    interval: Duration,
    next: tokio::time::Instant,
}

/// Slowest pace a throttled domain is pushed to.
const MAX_DOMAIN_INTERVAL: Duration = Duration::from_secs(30);

impl Pacing {
    fn new(global_rate: f64, domains: &std::collections::BTreeMap<String, f64>) -> Pacing {
        Pacing {
            global: Pacer::new(global_rate),
            configured: domains.clone(),
            domains: Mutex::new(Default::default()),
        }
    }

    async fn wait(&self, domain: &str) {
        let at = {
            let mut domains = self.domains.lock().await;
            let pace = domains.entry(domain.to_string()).or_insert_with(|| {
                let floor = self
                    .configured
                    .get(domain)
                    .map(|rate| Duration::from_secs_f64(1.0 / rate))
                    .unwrap_or(Duration::ZERO);
                DomainPace {
                    floor,
                    interval: floor,
                    next: tokio::time::Instant::now(),
                }
            });
            if pace.interval.is_zero() {
                None
            } else {
                let now = tokio::time::Instant::now();
                let at = pace.next.max(now);
                pace.next = at + pace.interval;
                Some(at)
            }
        };
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
        }
        self.global.wait().await;
    }

    /// Whether a message to `domain` goes out without waiting for either pace.
    async fn unpaced(&self, domain: &str) -> bool {
        self.global.interval.is_none()
            && !self.configured.contains_key(domain)
            && self
                .domains
                .lock()
                .await
                .get(domain)
                .is_none_or(|pace| pace.interval.is_zero())
    }

    async fn throttled(&self, domain: &str) {
        let mut domains = self.domains.lock().await;
        if let Some(pace) = domains.get_mut(domain) {
            pace.interval = (pace.interval * 2)
                .max(Duration::from_millis(250))
                .min(MAX_DOMAIN_INTERVAL);
            tracing::warn!(domain, interval = ?pace.interval, "throttled by the server; slowing down");
        }
    }

    async fn success(&self, domain: &str) {
        let mut domains = self.domains.lock().await;
        if let Some(pace) = domains.get_mut(domain)
            && pace.interval > pace.floor
        {
            pace.interval = pace.interval.mul_f64(0.9).max(pace.floor);
            if pace.interval < Duration::from_millis(5) {
                pace.interval = pace.floor;
            }
        }
    }
}

/// A global messages-per-second limit shared by every slot.
struct Pacer {
    interval: Option<Duration>,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(rate_per_second: f64) -> Pacer {
        Pacer {
            interval: (rate_per_second > 0.0)
                .then(|| Duration::from_secs_f64(1.0 / rate_per_second)),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let at = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stops_at_expiry() {
        let backoff = Backoff {
            base: Duration::from_secs(60),
            max: Duration::from_secs(3600),
        };
        let t = 1_800_000_000;
        let delay =
            |attempts, expires_at| match backoff.retry_from(t, "x".into(), attempts, expires_at) {
                Outcome::Deferred { retry_at, .. } => retry_at - t,
                other => panic!("{other:?}"),
            };
        // 60 s × 2^(attempt - 1), with ±25 % jitter, rounded up.
        assert!((45..=75).contains(&delay(1, t + 100_000)));
        assert!((360..=600).contains(&delay(4, t + 100_000)));
        assert!(
            (2700..=4500).contains(&delay(12, t + 100_000)),
            "capped at retry_max"
        );
        assert_eq!(delay(3, t + 10), 11, "never past the expiry");
    }

    // The paced tests run on tokio's paused clock: sleeps end exactly at their deadline,
    // so the waits are checked to the millisecond whatever the machine is doing.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_domain_slows_down_and_others_do_not() {
        let pacing = Pacing::new(0.0, &[("slow.example".to_string(), 20.0)].into());
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            pacing.wait("slow.example").await;
        }
        // 20/s: the third message waits two intervals of 50 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        let start = tokio::time::Instant::now();
        for _ in 0..50 {
            pacing.wait("fast.example").await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "unpaced domains do not wait"
        );
        // A throttle sets an unpaced domain's interval to 250 ms: the first message after
        // it goes at once, the second waits a whole interval.
        pacing.throttled("fast.example").await;
        let start = tokio::time::Instant::now();
        pacing.wait("fast.example").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        pacing.wait("fast.example").await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        // Each success takes a tenth off the interval (the slot already booked stays).
        pacing.success("fast.example").await;
        pacing.wait("fast.example").await;
        let start = tokio::time::Instant::now();
        pacing.wait("fast.example").await;
        assert_eq!(start.elapsed(), Duration::from_millis(225));
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_rate_spaces_every_message() {
        let pacer = Pacer::new(4.0);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
    }
}
