//! Deliver: claim due rows, compose, send, record, in batches, every row keeping its
//! place in the ledger until it reaches a final state.
//!
//! The engine, one file a job:
//! - `feeder`: claims due rows in batches under a lease, most urgent lane first, and
//!   sweeps rows past their expiry;
//! - `sender`: one per connection; checks each row against the reader's state at send
//!   time, composes it, paces it and sends it;
//! - `transport` and `smtp`: the SMTP connections (or `.eml` files);
//! - `recorder`: commits outcomes in rounds, the feeder's claims riding in the same
//!   commits;
//! - `commit_gate`: the rule that bounds duplicates after a crash (at most one accepted
//!   but unrecorded message per connection), and what happens when a commit fails;
//! - `leases`: which rows this worker holds, renewed while it holds them;
//! - `retry`: what a reply means for the row, and the backoff;
//! - `pacing`: the global and per-domain rates, booked site-wide in the database;
//! - `workers`: this worker's row and heartbeat, and giving dead workers' claims back.
//!
//! A claim is a lease: if this process dies, the rows come back once its heartbeat is
//! older than `deliver.worker_timeout` (or at the latest when the lease runs out), with
//! the same Message-ID. Unsubscribes and suppressions are checked at send time.

mod commit_gate;
mod feeder;
mod leases;
mod pacing;
mod recorder;
mod retry;
mod sender;
mod smtp;
mod transport;
mod workers;

pub use smtp::{SendResult, SmtpPool};
pub use transport::Transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::compose::Composer;
use crate::config::{DeliverConfig, SmtpConfig};
use crate::domain::{DeliveryState, Outcome};
use crate::shutdown::Shutdown;
use crate::store::{LeaseOwner, Store, StoreError};
use crate::supervise::Beat;
use feeder::{Feeder, Job};
use leases::Holdings;
use pacing::Pacing;
use recorder::Recorder;
use retry::Backoff;
use sender::{Outage, Sender};
use workers::Presence;

/// How often the engine checkpoints SQLite's WAL while it runs.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// How long the daemon's delivery may go without a completed round before `/readyz`
/// says so: three SMTP timeouts (a round waits at most one for each reply).
pub fn overdue_after(smtp: &SmtpConfig) -> Duration {
    3 * smtp.timeout.max(Duration::from_secs(10))
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
    /// Times the database failed to record outcomes (each failed round was written
    /// again once it answered).
    pub store_errors: u64,
    /// The last of those failures.
    pub last_store_error: Option<String>,
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
    /// Outcomes of sent messages could not be recorded before shutdown's drain timeout.
    #[error(
        "delivery outcomes could not be recorded before shutdown ({reason}); their rows come back when their lease runs out"
    )]
    Unrecorded {
        /// The database's last error.
        reason: String,
    },
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
    presence: Presence,
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

impl Deliverer {
    /// A worker over `store` that sends through `transport`.
    pub fn new(
        deliver: &DeliverConfig,
        smtp: &SmtpConfig,
        store: Store,
        composer: Arc<Composer>,
        transport: Arc<Transport>,
    ) -> Deliverer {
        let pacing = match *transport {
            // The rates hold for the whole site: booked in the database every process uses.
            Transport::Smtp(_) => Pacing::new(
                smtp.rate_per_second,
                &smtp.domain_rates,
                Some(store.clone()),
            ),
            Transport::File(_) => Pacing::new(0.0, &Default::default(), None),
        };
        let owner = LeaseOwner::random();
        Deliverer {
            presence: Presence::new(store.clone(), owner, deliver),
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
            owner,
        }
    }

    /// The owner this worker's claims carry: the daemon's ingest claims feeds as the same
    /// worker, so that its heartbeat keeps them and its death frees them.
    pub fn owner(&self) -> LeaseOwner {
        self.owner
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

    /// Registers this worker, runs the engine until `mode` says stop and drains it, then
    /// removes the worker's row.
    async fn pipeline(
        &self,
        shutdown: &Shutdown,
        mode: Mode,
        progress: &mut (dyn FnMut(&DeliverStats) + Send),
    ) -> Result<DeliverStats, DeliverError> {
        // Registered, and dead workers' claims given back, before the first claim: a
        // restart after a crash sends the crashed run's rows at once.
        self.presence.beat().await;
        let recorded = self.run_pipeline(shutdown, mode, progress).await;
        self.presence.leave().await;
        recorded
    }

    /// Runs the feeder, one sender per transport slot and the recorder until `mode`
    /// says stop, then drains: a crash leaves at most the messages in flight
    /// unrecorded. The worker beats throughout.
    async fn run_pipeline(
        &self,
        shutdown: &Shutdown,
        mode: Mode,
        progress: &mut (dyn FnMut(&DeliverStats) + Send),
    ) -> Result<DeliverStats, DeliverError> {
        let slots = self.transport.slots();
        // Rows claimed but not yet sent are capped, so none waits in memory long enough
        // for its lease to lapse (which would let another claim send it twice).
        let outstanding = Arc::new(Semaphore::new(self.batch_size + slots));
        let (jobs_tx, jobs) = mpsc::channel::<Job>(self.batch_size + slots);
        let jobs = Arc::new(Mutex::new(jobs));
        // Fired once the drain timeout has passed after shutdown: senders abandon
        // sends, the recorder gives up a round it cannot write.
        let (hard_stop, hard) = Shutdown::new();
        let holdings = Arc::new(Holdings::new(self.owner));
        let (recorder, handle) = Recorder::new(
            self.store.clone(),
            self.owner,
            holdings.clone(),
            hard.clone(),
        );
        let outage = Arc::new(Outage::default());
        let mut senders = tokio::task::JoinSet::new();
        for slot in 0..slots {
            senders.spawn(
                Sender {
                    slot,
                    jobs: jobs.clone(),
                    recorder: handle.clone(),
                    transport: self.transport.clone(),
                    pacing: self.pacing.clone(),
                    composer: self.composer.clone(),
                    backoff: self.backoff,
                    shutdown: shutdown.clone(),
                    hard: hard.clone(),
                    outage: outage.clone(),
                    holdings: holdings.clone(),
                }
                .run(),
            );
        }
        drop(jobs);
        let feeder = Feeder {
            store: self.store.clone(),
            owner: self.owner,
            batch_size: self.batch_size,
            lease: self.lease,
            recorder: handle,
            holdings: holdings.clone(),
        };
        // The feeder's handle on the recorder goes with it: once it and every sender
        // are done, the recorder drains and stops.
        let feeding = feeder.run(shutdown, mode, jobs_tx, outstanding);
        let recording = recorder.run(progress);
        let drain_guard = async {
            shutdown.triggered().await;
            tokio::time::sleep(self.drain_timeout).await;
            tracing::warn!("drain timeout passed with messages in flight; releasing them");
            hard_stop.fire();
            std::future::pending::<()>().await;
        };
        // Leases are renewed well before they run out, for as long as rows are held.
        let renewer = leases::renew_forever(&holdings, &self.store, self.lease);
        // The engine's SQLite connection leaves checkpoints to this (`Store::checkpoint`).
        let checkpointer = async {
            loop {
                tokio::time::sleep(CHECKPOINT_EVERY).await;
                if let Err(error) = self.store.checkpoint().await {
                    tracing::warn!(%error, "could not checkpoint the database");
                }
            }
        };
        let (fed, recorded) = tokio::select! {
            both = async { tokio::join!(feeding, recording) } => both,
            _ = drain_guard => unreachable!("the drain guard never completes"),
            _ = renewer => unreachable!("the renewer never completes"),
            _ = checkpointer => unreachable!("the checkpointer never completes"),
            _ = self.presence.beat_forever(&holdings, self.lease) => unreachable!("the heartbeat never completes"),
        };
        while senders.join_next().await.is_some() {}
        fed?;
        recorded
    }
}
