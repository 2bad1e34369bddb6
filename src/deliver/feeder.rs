//! The feeder: claims due rows in batches under a lease, most urgent lane first
//! (confirmations, alerts, digests), sweeps rows past their expiry, and hands the claimed
//! rows to the senders. Its claims ride in the recorder's next outcome commit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::Mode;
use super::leases::Holdings;
use super::recorder::RecorderHandle;
use crate::domain::Timestamp;
use crate::shutdown::Shutdown;
use crate::store::{Claim, ClaimedDelivery, Lease, LeaseOwner, Store, StoreError};

/// How long a one-off run (`herald send`, `herald deliver`) keeps trying a database that
/// does not answer before it stops with the error; the daemon keeps trying.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// A claimed row on its way to a sender.
pub(super) struct Job {
    /// Held while the row is claimed but not yet sent: bounds how long claims wait.
    pub(super) permit: OwnedSemaphorePermit,
    /// When the row was claimed (the digest's date line and link expiry use it).
    pub(super) claimed_at: Timestamp,
    /// The same instant on the monotonic clock: the send latency is measured from it.
    pub(super) claimed: std::time::Instant,
    /// Which of this worker's claims of the row the job belongs to.
    pub(super) claim: u64,
    /// The row, as loaded at claim time.
    pub(super) delivery: ClaimedDelivery,
    /// The row's span: its log lines from claim to record carry its id.
    pub(super) span: tracing::Span,
}

/// Claims batches and hands them to the senders.
pub(super) struct Feeder {
    /// The database.
    pub(super) store: Store,
    /// This worker's lease owner.
    pub(super) owner: LeaseOwner,
    /// Rows claimed at most at once.
    pub(super) batch_size: usize,
    /// How long a claim holds a row.
    pub(super) lease: Duration,
    /// Claims go through the recorder, to ride in its commits.
    pub(super) recorder: RecorderHandle,
    /// The leases this worker holds.
    pub(super) holdings: Arc<Holdings>,
}

impl Feeder {
    /// Claims until `mode` says stop; rows go to `jobs`, each behind a permit of
    /// `outstanding` (claimed but not yet sent rows are capped, so none waits in memory
    /// long enough for its lease to lapse). A database that does not answer is tried
    /// again with backoff, for ever in the daemon and for a minute otherwise.
    pub(super) async fn run(
        self,
        shutdown: &Shutdown,
        mode: Mode,
        jobs: mpsc::Sender<Job>,
        outstanding: Arc<Semaphore>,
    ) -> Result<(), StoreError> {
        let mut last_sweep: Option<std::time::Instant> = None;
        let mut failing_since: Option<std::time::Instant> = None;
        let mut wait = Duration::from_millis(100);
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
            let start = Timestamp::now();
            let claimed_instant = std::time::Instant::now();
            let lease = Lease {
                owner: self.owner,
                until: start + self.lease.max(Duration::from_secs(1)),
            };
            // Expiry sweeps the waiting rows: once every few seconds is plenty. The same
            // sweep holds the rows of a paused send that were out with a worker when it
            // was paused and came back deferred.
            let sweep = last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
            let ids = async {
                if sweep {
                    let expired = self.store.expire_overdue(start).await?;
                    self.recorder.expired(expired);
                    self.store.hold_paused_sends(start).await?;
                }
                self.recorder
                    .claim(Claim {
                        limit: room,
                        now: start,
                        lease,
                    })
                    .await
            }
            .await;
            let ids = match ids {
                Ok(ids) => {
                    failing_since = None;
                    wait = Duration::from_millis(100);
                    ids
                }
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if mode != Mode::Forever && since.elapsed() >= GIVE_UP_AFTER {
                        return Err(error);
                    }
                    tracing::error!(%error, retry_in = ?wait, "cannot claim deliveries; trying again");
                    shutdown.sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // The rows are claimed, under this worker's lease: they must be loaded and
            // sent (or given back), never dropped, or they would wait out the lease.
            let Some(claimed) = self.load(&ids, shutdown, mode).await? else {
                return Ok(());
            };
            if sweep {
                last_sweep = Some(std::time::Instant::now());
            }
            self.recorder.claimed(claimed.len() as u64);
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
                let Ok(permit) = outstanding.clone().acquire_owned().await else {
                    return Ok(());
                };
                let span = tracing::debug_span!("delivery", id = delivery.id.get());
                span.in_scope(|| tracing::debug!(kind = ?delivery.kind, attempts = delivery.attempts, "claimed"));
                let job = Job {
                    permit,
                    claimed_at: start,
                    claimed: claimed_instant,
                    claim: self.holdings.hold(delivery.id, lease.until),
                    delivery,
                    span,
                };
                if let Err(mpsc::error::SendError(job)) = jobs.send(job).await {
                    // Every sender has stopped (shutdown): give the row back.
                    self.recorder.unsent(job.delivery.id, job.claim);
                }
            }
            if mode == Mode::Once {
                return Ok(());
            }
        }
    }

    /// Loads the claimed rows `ids`, trying again with backoff while the database does
    /// not answer. `None` at shutdown, and `Err` once a one-off run has tried for
    /// [`GIVE_UP_AFTER`]; either way the rows are given back first where the database
    /// allows (they come back after their lease otherwise).
    async fn load(
        &self,
        ids: &[crate::domain::DeliveryId],
        shutdown: &Shutdown,
        mode: Mode,
    ) -> Result<Option<Vec<ClaimedDelivery>>, StoreError> {
        let since = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let error = match self.store.load_claimed(ids).await {
                Ok(rows) => return Ok(Some(rows)),
                Err(error) => error,
            };
            let give_up = mode != Mode::Forever && since.elapsed() >= GIVE_UP_AFTER;
            if shutdown.is_triggered() || give_up {
                if let Err(release) = self
                    .store
                    .release_deliveries(ids, self.owner, Timestamp::now())
                    .await
                {
                    tracing::warn!(error = %release, "cannot give back claimed rows; they return when their lease runs out");
                }
                return if give_up { Err(error) } else { Ok(None) };
            }
            tracing::error!(%error, rows = ids.len(), retry_in = ?wait, "cannot load claimed deliveries; trying again");
            shutdown.sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}
