//! Senders: one per transport slot (SMTP connection). Each takes claimed rows, checks
//! every one against the reader's state at send time (unsubscribed, erased,
//! suppressed, expired: the send-time gate), composes it, waits for its pace, and sends
//! it, its final dot held by the commit gate until the previous outcome on the
//! connection is committed. A job already waiting rides behind: its commands follow
//! this message's final dot.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::{Mutex, mpsc};
use tracing::Instrument as _;

use super::commit_gate::{Hold, gate};
use super::feeder::Job;
use super::leases::Holdings;
use super::pacing::Pacing;
use super::recorder::{Done, RecorderHandle};
use super::retry::{Backoff, outcome_of};
use super::smtp::SendResult;
use super::transport::Transport;
use crate::clock::now;
use crate::compose::{Composed, Composer, DigestRequest, SignupRequest};
use crate::domain::{DeliveryId, DeliveryKind, Outcome, SubscriberState, Timestamp};
use crate::metrics::METRICS;
use crate::shutdown::Shutdown;
use crate::store::{ClaimedDelivery, Recipient};

/// After a slot finds the server unreachable, the others defer without trying for this long.
const DOWN_HOLD_SECS: i64 = 5;

/// What the senders of one pipeline know of the server being down: once one cannot
/// reach it, the others defer their rows for a few seconds instead of each trying.
#[derive(Default)]
pub(super) struct Outage {
    /// Until when (Unix seconds) rows are deferred without trying.
    until: AtomicI64,
    /// Why: the unreachable server's error.
    reason: std::sync::Mutex<String>,
}

impl Outage {
    fn note(&self, reason: &str) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_string();
        self.until.store(now() + DOWN_HOLD_SECS, Ordering::Relaxed);
    }

    /// The reason, while the server counts as down.
    fn current(&self) -> Option<String> {
        (now() < self.until.load(Ordering::Relaxed)).then(|| {
            self.reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }
}

/// One sender: owns a transport slot and sends jobs one at a time.
pub(super) struct Sender {
    /// The transport slot (SMTP connection) this sender owns.
    pub(super) slot: usize,
    /// Claimed rows, shared by every sender of the pipeline.
    pub(super) jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Where outcomes go.
    pub(super) recorder: RecorderHandle,
    /// The connections.
    pub(super) transport: Arc<Transport>,
    /// Global and per-domain rates.
    pub(super) pacing: Arc<Pacing>,
    /// Renders the emails.
    pub(super) composer: Arc<Composer>,
    /// Retry delays for deferred rows.
    pub(super) backoff: Backoff,
    /// Shutdown: stop taking new work.
    pub(super) shutdown: Shutdown,
    /// The drain timeout passed: abandon the send in progress.
    pub(super) hard: Shutdown,
    /// Whether the server is known to be down just now.
    pub(super) outage: Arc<Outage>,
    /// The leases this worker holds.
    pub(super) holdings: Arc<Holdings>,
}

/// A claimed row composed and cleared to go out.
struct Ready {
    job: Job,
    composed: Composed,
    /// The recipient's domain, for pacing.
    domain: String,
}

impl Sender {
    /// Sends jobs until the feeder is done (or shutdown gives the rest back).
    pub(super) async fn run(self) {
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
            let span = ready.job.span.clone();
            if !self
                .send(ready, &mut committed, &mut next)
                .instrument(span)
                .await
            {
                return;
            }
        }
    }

    /// Sends one ready job on this sender's connection, its final dot held by
    /// `committed` (the previous message's gate), and makes the gate for the next.
    /// `next` gets the job taken to ride behind it. `false` once the drain timeout
    /// stopped the send (the sender is done).
    async fn send(
        &self,
        ready: Ready,
        committed: &mut Option<Hold>,
        next: &mut Option<Ready>,
    ) -> bool {
        let Ready {
            job,
            composed,
            domain,
        } = ready;
        let (id, claim) = (job.delivery.id, job.claim);
        let (attempts, expires_at) = (job.delivery.attempts, job.delivery.expires_at);
        if self.shutdown.is_triggered() {
            self.recorder.unsent(id, claim);
            return true;
        }
        if let Some(reason) = self.outage.current() {
            let outcome = self.backoff.retry(reason, attempts, expires_at);
            self.recorder
                .done(Done::unsendable(id, claim, outcome, &job.span));
            return true;
        }
        // The server may accept this message only once the previous one sent on this
        // connection is committed (the commit gate).
        let hold = committed.take();
        self.pacing.wait(&domain).await;
        // The last moment to find the lease lapsed: from here the message goes out.
        if !self.holdings.holds(id, claim) {
            self.lapsed(id, claim);
            return true;
        }
        // A job already waiting goes out right behind this one: its commands share this
        // message's last write, unless pacing may have to hold it back.
        *next = self.look_ahead().await;
        let pipelined = match next.as_ref() {
            Some(next) => self.pacing.unpaced(&next.domain).await,
            None => false,
        };
        let behind = next.as_ref().filter(|_| pipelined).map(|n| &n.composed);
        let result = tokio::select! {
            result = self.transport.send(self.slot, &composed, hold, behind) => result,
            _ = self.hard.triggered() => {
                self.recorder.unsent(id, claim);
                if let Some(next) = next.take() {
                    self.recorder.unsent(next.job.delivery.id, next.job.claim);
                }
                return false;
            }
        };
        // Claim to final reply: what a reader waits once herald has picked the row up.
        if !matches!(result, SendResult::Unreachable(_)) {
            METRICS.send_latency.observe(job.claimed.elapsed());
        }
        match &result {
            SendResult::Accepted(_) => self.pacing.success(&domain).await,
            // Slow this domain down and come back soon: a throttle is not a failure.
            SendResult::Throttled(_) => self.pacing.throttled(&domain).await,
            SendResult::Unreachable(error) => self.outage.note(error),
            SendResult::Temporary(_) | SendResult::Permanent { .. } => {}
        }
        let outcome = outcome_of(result, self.backoff, attempts, expires_at);
        tracing::debug!(outcome = ?outcome.state(), "sent");
        // The next message on this connection gets its final dot only once this outcome
        // is committed: the commit gate.
        let ack = if matches!(outcome, Outcome::Sent { .. }) {
            let (hold, ack) = gate();
            *committed = Some(hold);
            Some(ack)
        } else {
            None
        };
        self.recorder.done(Done {
            id,
            claim,
            outcome,
            permit: Some(job.permit),
            ack,
            span: job.span,
        });
        true
    }

    /// Checks a job and composes it; a job that must not be sent gets its outcome here.
    async fn ready(&self, mut job: Job) -> Option<Ready> {
        let (id, claim) = (job.delivery.id, job.claim);
        if self.shutdown.is_triggered() {
            // Stop taking new work: the row goes back to the queue unsent.
            self.recorder.unsent(id, claim);
            return None;
        }
        if !self.holdings.holds(id, claim) {
            self.lapsed(id, claim);
            return None;
        }
        let domain = job
            .delivery
            .email()
            .map(|e| e.domain().to_string())
            .unwrap_or_default();
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
                    let prepared = prepare(&composer, &delivery, claimed_at, Work::Full).and_then(
                        |composed| {
                            composed.ok_or_else(|| Outcome::Failed {
                                error: "the email could not be composed".into(),
                            })
                        },
                    );
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
                        self.recorder
                            .done(Done::unsendable(id, claim, outcome, &job.span));
                        return None;
                    }
                }
            }
        };
        match prepared {
            Ok(composed) => Some(Ready {
                job,
                composed,
                domain,
            }),
            Err(outcome) => {
                job.span
                    .in_scope(|| tracing::debug!(outcome = ?outcome.state(), "not sent"));
                self.recorder
                    .done(Done::unsendable(id, claim, outcome, &job.span));
                None
            }
        }
    }

    /// The next job, if one is already waiting and can be sent.
    async fn look_ahead(&self) -> Option<Ready> {
        let job = self.jobs.try_lock().ok()?.try_recv().ok()?;
        self.ready(job).await
    }

    /// Drops a job whose lease lapsed: the row is due again for whoever claims it, and
    /// recording anything for it now could undo another worker's result.
    fn lapsed(&self, id: DeliveryId, claim: u64) {
        tracing::warn!(
            delivery = id.get(),
            "lease lapsed before sending; leaving the row to its next claim"
        );
        self.holdings.forget(id, claim);
    }
}

/// How much composing work `prepare` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Work {
    /// Only splice a digest into its group's ready template (microseconds): `None`
    /// when that is not possible.
    Splice,
    /// Render and encode whatever it takes (for the blocking pool).
    Full,
}

/// Checks a claimed row against the reader's state now and composes it, or says
/// why it must not be sent.
pub(super) fn prepare(
    composer: &Composer,
    delivery: &ClaimedDelivery,
    now: Timestamp,
    work: Work,
) -> Result<Option<Composed>, Outcome> {
    if delivery.expires_at < now {
        return Err(Outcome::Expired);
    }
    let (email, state, timezone) = match &delivery.recipient {
        Recipient::Erased => {
            return Err(Outcome::Cancelled {
                reason: "reader removed".into(),
            });
        }
        _ if delivery.suppressed => return Err(Outcome::Suppressed),
        Recipient::Unreadable(error) => {
            return Err(Outcome::Failed {
                error: error.clone(),
            });
        }
        Recipient::Reader {
            email,
            state,
            timezone,
        } => (email, *state, *timezone),
    };
    match state {
        SubscriberState::Confirmed => {}
        SubscriberState::Suppressed => return Err(Outcome::Suppressed),
        SubscriberState::Unsubscribed => {
            return Err(Outcome::Cancelled {
                reason: "reader unsubscribed".into(),
            });
        }
        SubscriberState::Pending => {
            if delivery.kind != DeliveryKind::Confirmation {
                return Err(Outcome::Cancelled {
                    reason: "reader is not confirmed".into(),
                });
            }
        }
    }
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
                    email,
                    regions: &delivery.regions,
                    timezone,
                    message_id: &delivery.message_id,
                    now,
                })
                .map(|c| Some(with_bounce_address(composer, c, delivery.id)))
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
    let request = DigestRequest {
        subscriber_id: delivery.subscriber_id,
        email,
        timezone,
        cadence: delivery.cadence,
        message_id: &delivery.message_id,
        articles: &delivery.articles,
        more: &delivery.more,
        sponsor: delivery.sponsor.as_deref(),
        now,
    };
    let composed = match work {
        Work::Splice => Ok(composer.digest_if_shared(&request)),
        Work::Full => composer
            .digest(&request)
            .map(Some)
            .map_err(|e| Outcome::Failed {
                error: e.to_string(),
            }),
    };
    composed.map(|composed| composed.map(|c| with_bounce_address(composer, c, delivery.id)))
}

/// The email with the envelope sender that names its row (VERP), when herald has a
/// bounce address.
fn with_bounce_address(composer: &Composer, mut composed: Composed, id: DeliveryId) -> Composed {
    composer.address_bounces(&mut composed, id);
    composed
}
