//! The recorder: commits delivery outcomes in rounds, one forced flush for many
//! outcomes, with the feeder's claims riding in the same commits, and opens the commit
//! gate of each round once it is durable.
//!
//! Before each commit it waits, at most [`GATHER_AT_MOST`], for the outcomes of the
//! messages its previous commit let go, so one commit covers a round of every
//! connection rather than whichever half had answered. A commit that fails keeps its
//! round: the outcomes are written again, with backoff, once the database answers, and
//! no final dot of the round goes out before that (see `commit_gate`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::commit_gate::{Ack, Round};
use super::leases::Holdings;
use super::{DeliverError, DeliverStats};
use crate::domain::{DeliveryId, Outcome, Timestamp};
use crate::shutdown::Shutdown;
use crate::store::{Claim, EngineTransaction, LeaseOwner, Store, StoreError};

/// How long the recorder waits for the outcomes of the messages its last commit let go
/// before it commits what it has: a server that answers slowly holds up the others'
/// commits by no more than this.
const GATHER_AT_MOST: Duration = Duration::from_millis(2);

/// Outcomes committed at most in one round.
const ROUND_AT_MOST: usize = 256;

/// The first wait before writing a failed round again; it doubles up to
/// [`RETRY_AT_MOST`].
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The longest wait between attempts to write a failed round.
const RETRY_AT_MOST: Duration = Duration::from_secs(5);

/// One row's outcome under one claim of it.
pub(super) struct Done {
    /// The delivery row.
    pub(super) id: DeliveryId,
    /// Which of this worker's claims of the row it was.
    pub(super) claim: u64,
    /// What happened.
    pub(super) outcome: Outcome,
    /// The row's claim permit, freed once the outcome is committed: that keeps "sent
    /// but not yet recorded" bounded.
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// For a message the server accepted: opens its connection's next final dot once
    /// this outcome is durable.
    pub(super) ack: Option<Ack>,
    /// The row's span.
    pub(super) span: tracing::Span,
}

impl Done {
    /// The outcome of a row that was never sent (it must not be, or it could not be).
    pub(super) fn unsendable(
        id: DeliveryId,
        claim: u64,
        outcome: Outcome,
        span: &tracing::Span,
    ) -> Done {
        Done {
            id,
            claim,
            outcome,
            permit: None,
            ack: None,
            span: span.clone(),
        }
    }
}

/// What the feeder and the senders tell the recorder.
enum Event {
    /// The feeder claimed this many rows.
    Claimed { rows: u64 },
    /// The feeder's sweep expired this many rows.
    Expired { rows: u64 },
    /// A row's outcome.
    Done(Done),
    /// A claimed row given back unsent (shutdown).
    Unsent { id: DeliveryId, claim: u64 },
    /// The feeder's claim, to commit with the next outcomes; the ids go back on
    /// `reply` once committed.
    Claim {
        claim: Claim,
        reply: oneshot::Sender<Result<Vec<DeliveryId>, StoreError>>,
    },
}

/// How the feeder and the senders reach the recorder. The recorder runs until every
/// handle is dropped.
#[derive(Clone)]
pub(super) struct RecorderHandle {
    events: mpsc::UnboundedSender<Event>,
}

impl RecorderHandle {
    /// Counts claimed rows.
    pub(super) fn claimed(&self, rows: u64) {
        let _ = self.events.send(Event::Claimed { rows });
    }

    /// Counts expired rows.
    pub(super) fn expired(&self, rows: u64) {
        let _ = self.events.send(Event::Expired { rows });
    }

    /// Hands over a row's outcome, to be committed in the next round.
    pub(super) fn done(&self, done: Done) {
        let _ = self.events.send(Event::Done(done));
    }

    /// Gives a claimed row back unsent; it is released when the recorder stops.
    pub(super) fn unsent(&self, id: DeliveryId, claim: u64) {
        let _ = self.events.send(Event::Unsent { id, claim });
    }

    /// Has the recorder take `claim` with its next outcome commit; returns the ids of
    /// the rows claimed, once committed.
    pub(super) async fn claim(&self, claim: Claim) -> Result<Vec<DeliveryId>, StoreError> {
        let (reply, answer) = oneshot::channel();
        // The recorder runs until every handle, this one included, is gone: it always
        // answers.
        let _ = self.events.send(Event::Claim { claim, reply });
        answer.await.unwrap_or_else(|_| Ok(Vec::new()))
    }
}

/// What one commit writes.
#[derive(Default)]
struct Batch {
    outcomes: Vec<(DeliveryId, Outcome)>,
    /// Which claim of each row the outcomes belong to: forgotten once committed.
    claims: Vec<(DeliveryId, u64)>,
    /// The rows' claim permits: freed once committed.
    permits: Vec<OwnedSemaphorePermit>,
    /// The holds this commit opens.
    round: Round,
    /// The rows' spans, for the line that says each outcome is recorded.
    spans: Vec<tracing::Span>,
}

/// A claim begun in its own transaction on the engine's connection, still to commit.
type ClaimTask = tokio::task::JoinHandle<Result<(EngineTransaction, Vec<DeliveryId>), StoreError>>;

/// The recorder of one pipeline.
pub(super) struct Recorder {
    store: Store,
    owner: LeaseOwner,
    holdings: Arc<Holdings>,
    /// Fired once shutdown's drain timeout has passed: a failed round is given up.
    hard: Shutdown,
    events: mpsc::UnboundedReceiver<Event>,
    stats: DeliverStats,
    /// Rows of claims whose commit failed without saying whether it happened (the
    /// connection dropped during COMMIT): given back once the database answers, unless
    /// this worker holds them, so they do not wait out a lease nobody sends under.
    orphans: Vec<DeliveryId>,
}

impl Recorder {
    /// A recorder for `owner`'s rows, and the handle to reach it.
    pub(super) fn new(
        store: Store,
        owner: LeaseOwner,
        holdings: Arc<Holdings>,
        hard: Shutdown,
    ) -> (Recorder, RecorderHandle) {
        let (events_tx, events) = mpsc::unbounded_channel();
        let recorder = Recorder {
            store,
            owner,
            holdings,
            hard,
            events,
            stats: DeliverStats::default(),
            orphans: Vec::new(),
        };
        (recorder, RecorderHandle { events: events_tx })
    }

    /// Records rounds until every handle is gone, then gives back the rows returned
    /// unsent. Reports progress at most every 100 ms. `Err` only if a round could not
    /// be written before shutdown's drain timeout (its rows keep their lease and come
    /// back, the one-per-connection a crash may send again), or the unsent rows could
    /// not be given back.
    pub(super) async fn run(
        mut self,
        progress: &mut (dyn FnMut(&DeliverStats) + Send),
    ) -> Result<DeliverStats, DeliverError> {
        let mut unsent: Vec<(DeliveryId, u64)> = Vec::new();
        let mut last_progress = std::time::Instant::now();
        // Senders the last commit let go: their outcomes are due within a round trip.
        let mut released = 0;
        while let Some(first) = self.events.recv().await {
            let mut batch = Batch::default();
            let mut claiming: Option<(ClaimTask, oneshot::Sender<_>)> = None;
            let deadline = tokio::time::Instant::now() + GATHER_AT_MOST;
            let mut done = 0;
            let mut next = Some(first);
            while let Some(event) = next {
                match event {
                    Event::Claimed { rows } => self.stats.claimed += rows,
                    Event::Expired { rows } => self.stats.expired += rows,
                    Event::Done(outcome) => {
                        done += 1;
                        self.stats.add(&outcome.outcome);
                        batch.add(outcome);
                    }
                    Event::Unsent { id, claim } => unsent.push((id, claim)),
                    Event::Claim { claim, reply } => {
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
                next = if batch.outcomes.len() >= ROUND_AT_MOST {
                    None
                } else {
                    match self.events.try_recv() {
                        Ok(event) => Some(event),
                        Err(mpsc::error::TryRecvError::Empty) if done < released => {
                            tokio::time::timeout_at(deadline, self.events.recv())
                                .await
                                .ok()
                                .flatten()
                        }
                        Err(_) => None,
                    }
                };
            }
            released = batch.round.opens();
            let mut claimed_now = Vec::new();
            let written = match claiming.take() {
                Some((task, reply)) => {
                    let (claimed, written) = self.commit_with_claim(task, &batch).await;
                    if let Ok(ids) = &claimed {
                        claimed_now.clone_from(ids);
                    }
                    let _ = reply.send(claimed);
                    written
                }
                None => self.commit(&batch).await,
            };
            if !written && !self.write_again(&batch).await {
                // Given up at the drain timeout: the round stays closed, its rows keep
                // their lease.
                return Err(self.gave_up());
            }
            self.settle(batch);
            self.release_orphans(&claimed_now).await;
            if last_progress.elapsed() >= Duration::from_millis(100) {
                progress(&self.stats);
                last_progress = std::time::Instant::now();
            }
        }
        if !unsent.is_empty() {
            self.stats.released += unsent.len() as u64;
            let ids: Vec<DeliveryId> = unsent.iter().map(|(id, _)| *id).collect();
            let released = self
                .store
                .release_deliveries(&ids, self.owner, Timestamp::now())
                .await;
            for (id, claim) in unsent {
                self.holdings.forget(id, claim);
            }
            released?;
        }
        progress(&self.stats);
        Ok(self.stats)
    }

    /// Writes the batch's outcomes in one commit; the round's parked dots go out the
    /// moment it is durable. `false` (with the error logged and counted) if it failed.
    async fn commit(&mut self, batch: &Batch) -> bool {
        let recorded = self
            .store
            .record_outcomes_then(
                &batch.outcomes,
                self.owner,
                Timestamp::now(),
                batch.round.on_durable(),
            )
            .await;
        self.note(recorded)
    }

    /// Commits a begun claim with the batch's outcomes: one forced flush for both. If
    /// that fails, the outcomes are written on their own, and the claim's error goes
    /// back to the feeder. Returns the claim's result and whether the outcomes are
    /// written.
    async fn commit_with_claim(
        &mut self,
        task: ClaimTask,
        batch: &Batch,
    ) -> (Result<Vec<DeliveryId>, StoreError>, bool) {
        let begun = match task.await {
            Ok(begun) => begun,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        let recorded = async {
            let (mut tx, ids) = begun?;
            tx.record_outcomes(&batch.outcomes, self.owner, Timestamp::now())
                .await?;
            tx.commit_then(batch.round.on_durable()).await?;
            Ok(ids)
        }
        .await;
        match recorded {
            Ok(ids) => (Ok(ids), true),
            // Nothing of it was written (an unfinished transaction is rolled back
            // first): the outcomes go on their own.
            Err(error) => (Err(error), self.commit(batch).await),
        }
    }

    /// Writes a failed round again, with backoff, until it is written (`true`) or the
    /// drain timeout passes (`false`).
    async fn write_again(&mut self, batch: &Batch) -> bool {
        let mut wait = RETRY_FIRST;
        let mut tries = 1;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.hard.triggered() => return false,
            }
            tries += 1;
            if self.commit(batch).await {
                tracing::warn!(
                    tries,
                    outcomes = batch.outcomes.len(),
                    "recorded the delivery outcomes once the database answered again"
                );
                return true;
            }
            wait = (wait * 2).min(RETRY_AT_MOST);
        }
    }

    /// Gives back the rows of claims whose commit may have happened unseen, except those
    /// claimed again in the round just written or held by this worker.
    async fn release_orphans(&mut self, claimed_now: &[DeliveryId]) {
        if self.orphans.is_empty() {
            return;
        }
        let ids: Vec<DeliveryId> = self
            .orphans
            .iter()
            .copied()
            .filter(|id| !claimed_now.contains(id) && !self.holdings.is_held(*id))
            .collect();
        match self
            .store
            .release_deliveries(&ids, self.owner, Timestamp::now())
            .await
        {
            Ok(()) => self.orphans.clear(),
            Err(error) => {
                tracing::warn!(%error, "cannot give back rows of a claim whose commit failed; trying again")
            }
        }
    }

    /// Counts and logs a failed write; `true` if it was written.
    fn note(&mut self, recorded: Result<(), StoreError>) -> bool {
        match recorded {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(
                    %error,
                    "could not record delivery outcomes; holding their connections and trying again"
                );
                self.stats.store_errors += 1;
                self.stats.last_store_error = Some(error.to_string());
                false
            }
        }
    }

    /// The error the recorder stops with when it gives a round up.
    fn gave_up(&self) -> DeliverError {
        DeliverError::Unrecorded {
            reason: self
                .stats
                .last_store_error
                .clone()
                .unwrap_or_else(|| "the database did not answer".into()),
        }
    }

    /// A round is written: its holds open, its rows' claims are done.
    fn settle(&self, batch: Batch) {
        for span in &batch.spans {
            span.in_scope(|| tracing::debug!("recorded"));
        }
        for (id, claim) in batch.claims {
            self.holdings.forget(id, claim);
        }
        drop(batch.permits);
        batch.round.open();
    }
}

impl Batch {
    fn add(&mut self, done: Done) {
        self.outcomes.push((done.id, done.outcome));
        self.claims.push((done.id, done.claim));
        self.permits.extend(done.permit);
        if let Some(ack) = done.ack {
            self.round.push(ack);
        }
        self.spans.push(done.span);
    }
}
