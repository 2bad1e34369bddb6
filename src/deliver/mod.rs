//! Deliver: claim due rows, compose, send, record — in batches.
//!
//! Every row keeps its place in the ledger until it reaches a final state. A claim is a
//! lease: if this process dies, the rows come back when the lease runs out, with the
//! same Message-ID. Unsubscribes and suppressions are checked here, at send time.

mod smtp;

pub use smtp::{SendResult, SmtpPool};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;

use crate::compose::{Composed, Composer, DigestRequest, SignupRequest};
use crate::config::{Config, TransportKind};
use crate::domain::{DeliveryKind, DeliveryState, Email, SubscriberState};
use crate::shutdown::Shutdown;
use crate::store::{ClaimedDelivery, Outcome, Store, StoreError, now};

/// Where composed messages go.
pub enum Transport {
    /// An SMTP relay.
    Smtp(SmtpPool),
    /// `.eml` files in a folder.
    File(PathBuf),
}

impl Transport {
    /// The transport the configuration asks for.
    pub fn from_config(config: &Config) -> Transport {
        match config.mail.transport {
            TransportKind::Smtp => Transport::Smtp(SmtpPool::new(config.smtp.clone())),
            TransportKind::File => Transport::File(config.mail.outbox_dir.clone()),
        }
    }

    fn slots(&self) -> usize {
        match self {
            Transport::Smtp(pool) => pool.slots(),
            Transport::File(_) => 1,
        }
    }

    async fn send(&self, slot: usize, message: &Composed) -> SendResult {
        match self {
            Transport::Smtp(pool) => pool.send(slot, message).await,
            Transport::File(dir) => write_eml(dir, message).await,
        }
    }

    /// Sends one message outside the outbox (a test send).
    pub async fn send_one(&self, message: &Composed) -> SendResult {
        self.send(0, message).await
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

    fn merge(&mut self, other: &DeliverStats) {
        self.claimed += other.claimed;
        self.sent += other.sent;
        self.deferred += other.deferred;
        self.bounced += other.bounced;
        self.failed += other.failed;
        self.expired += other.expired;
        self.skipped += other.skipped;
        self.released += other.released;
        if other.last_error.is_some() {
            self.last_error = other.last_error.clone();
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
    rate_per_second: f64,
}

struct Job {
    id: i64,
    composed: Composed,
    attempts: i64,
    expires_at: i64,
}

impl Deliverer {
    /// A worker over `store` that sends through `transport`.
    pub fn new(
        config: &Config,
        store: Store,
        composer: Arc<Composer>,
        transport: Arc<Transport>,
    ) -> Deliverer {
        Deliverer {
            store,
            composer,
            transport,
            batch_size: config.deliver.batch_size,
            lease: config.deliver.lease,
            drain_timeout: config.deliver.drain_timeout,
            rate_per_second: match config.mail.transport {
                TransportKind::Smtp => config.smtp.rate_per_second,
                TransportKind::File => 0.0,
            },
        }
    }

    /// Sends everything due now, batch after batch, until nothing is due.
    /// Deferred rows whose retry time is in the future are left for later.
    pub async fn run_until_empty(
        &self,
        shutdown: &Shutdown,
        mut progress: impl FnMut(&DeliverStats),
    ) -> Result<DeliverStats, DeliverError> {
        let mut total = DeliverStats::default();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let batch = self.run_batch(shutdown).await?;
            if batch.claimed == 0 {
                break;
            }
            total.merge(&batch);
            progress(&total);
        }
        Ok(total)
    }

    /// The daemon's loop: deliver until shutdown, polling when idle.
    pub async fn run(&self, shutdown: Shutdown) -> Result<DeliverStats, DeliverError> {
        let mut total = DeliverStats::default();
        while !shutdown.is_triggered() {
            let batch = match self.run_batch(&shutdown).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(%error, "delivery batch failed; retrying shortly");
                    shutdown.sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            if batch.claimed > 0 {
                tracing::info!(
                    sent = batch.sent,
                    deferred = batch.deferred,
                    bounced = batch.bounced,
                    failed = batch.failed,
                    "delivered a batch"
                );
            }
            let idle = batch.claimed == 0;
            total.merge(&batch);
            if idle {
                shutdown.sleep(Duration::from_millis(500)).await;
            }
        }
        self.transport.close().await;
        Ok(total)
    }

    /// Claims one batch and takes every row in it to a new state.
    pub async fn run_batch(&self, shutdown: &Shutdown) -> Result<DeliverStats, DeliverError> {
        let mut stats = DeliverStats::default();
        let start = now();
        stats.expired += self.store.expire_overdue(start).await?;
        let lease_until = start + self.lease.as_secs().max(1) as i64;
        let claimed = self
            .store
            .claim_due_deliveries(self.batch_size, start, lease_until)
            .await?;
        stats.claimed = claimed.len() as u64;
        if claimed.is_empty() {
            return Ok(stats);
        }

        let mut outcomes: Vec<(i64, Outcome)> = Vec::new();
        let mut jobs = VecDeque::new();
        for delivery in claimed {
            match self.prepare(&delivery, start) {
                Ok(composed) => jobs.push_back(Job {
                    id: delivery.id,
                    composed,
                    attempts: delivery.attempts,
                    expires_at: delivery.expires_at,
                }),
                Err(outcome) => outcomes.push((delivery.id, outcome)),
            }
        }

        let (sent, unsent) = self.send_all(jobs, shutdown).await;
        outcomes.extend(sent);
        for (_, outcome) in &outcomes {
            stats.add(outcome);
        }
        self.store.record_outcomes(&outcomes, now()).await?;
        if !unsent.is_empty() {
            stats.released += unsent.len() as u64;
            self.store.release_deliveries(&unsent, now()).await?;
        }
        Ok(stats)
    }

    /// Checks a claimed row against the reader's state now and composes it, or says
    /// why it must not be sent.
    fn prepare(&self, delivery: &ClaimedDelivery, now: i64) -> Result<Composed, Outcome> {
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
                return self
                    .composer
                    .signup_email(&SignupRequest {
                        kind: delivery.kind,
                        subscriber_id: delivery.subscriber_id,
                        email: &email,
                        regions: &delivery.regions,
                        timezone: delivery.timezone.as_deref().unwrap_or("UTC"),
                        message_id: &delivery.message_id,
                        now,
                    })
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
        self.composer
            .digest(&DigestRequest {
                subscriber_id: delivery.subscriber_id,
                email: &email,
                timezone,
                cadence: delivery.cadence,
                message_id: &delivery.message_id,
                articles: &delivery.articles,
                now,
            })
            .map_err(|e| Outcome::Failed {
                error: e.to_string(),
            })
    }

    /// Sends jobs over every transport slot at once. Returns outcomes, and the ids
    /// never attempted because shutdown began (to be released).
    async fn send_all(
        &self,
        jobs: VecDeque<Job>,
        shutdown: &Shutdown,
    ) -> (Vec<(i64, Outcome)>, Vec<i64>) {
        let all_ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let queue = Arc::new(Mutex::new(jobs));
        let down = Arc::new(AtomicBool::new(false));
        let down_reason = Arc::new(Mutex::new(String::new()));
        let pacer = Arc::new(Pacer::new(self.rate_per_second));
        let mut tasks = tokio::task::JoinSet::new();
        for slot in 0..self.transport.slots() {
            let queue = queue.clone();
            let transport = self.transport.clone();
            let shutdown = shutdown.clone();
            let down = down.clone();
            let down_reason = down_reason.clone();
            let pacer = pacer.clone();
            tasks.spawn(async move {
                let mut results = Vec::new();
                loop {
                    if shutdown.is_triggered() {
                        break;
                    }
                    let Some(job) = queue.lock().await.pop_front() else {
                        break;
                    };
                    if down.load(Ordering::Relaxed) {
                        // Another slot found the server unreachable: do not hammer it.
                        let reason = down_reason.lock().await.clone();
                        results.push((job.id, retry_later(reason, job.attempts, job.expires_at)));
                        continue;
                    }
                    pacer.wait().await;
                    let result = transport.send(slot, &job.composed).await;
                    let outcome = match result {
                        SendResult::Accepted(reply) => Outcome::Sent { reply },
                        SendResult::Temporary(error) => {
                            retry_later(error, job.attempts, job.expires_at)
                        }
                        SendResult::Permanent { reply, no_mailbox } => Outcome::Bounced {
                            reply,
                            suppress: no_mailbox,
                        },
                        SendResult::Unreachable(error) => {
                            down.store(true, Ordering::Relaxed);
                            *down_reason.lock().await = error.clone();
                            retry_later(error, job.attempts, job.expires_at)
                        }
                    };
                    results.push((job.id, outcome));
                }
                results
            });
        }

        let mut outcomes = Vec::new();
        let collect = async {
            while let Some(joined) = tasks.join_next().await {
                if let Ok(results) = joined {
                    outcomes.extend(results);
                }
            }
        };
        // In-flight messages get the drain timeout once shutdown begins; anything still
        // running after that is abandoned and released (it may go out twice at worst).
        tokio::select! {
            _ = collect => {}
            _ = async {
                shutdown.triggered().await;
                tokio::time::sleep(self.drain_timeout).await;
            } => {
                tracing::warn!("drain timeout passed with messages in flight; releasing them");
            }
        }
        tasks.abort_all();
        // Never attempted, or abandoned mid-send by an aborted task: give them back.
        let done: std::collections::HashSet<i64> = outcomes.iter().map(|(id, _)| *id).collect();
        let unsent = all_ids
            .into_iter()
            .filter(|id| !done.contains(id))
            .collect();
        (outcomes, unsent)
    }
}

/// Exponential backoff with jitter: 1 min, 2, 4 … capped at 1 h, ±25 %.
fn retry_later(error: String, attempts: i64, expires_at: i64) -> Outcome {
    let exponent = (attempts.max(1) - 1).min(6) as u32;
    let base = (60i64 * 2i64.pow(exponent)).min(3_600) as f64;
    let jitter = 0.75 + fastrand::f64() * 0.5;
    let retry_at = (now() + (base * jitter) as i64).min(expires_at + 1);
    Outcome::Deferred { error, retry_at }
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
        let t = now();
        let first = match retry_later("x".into(), 1, t + 100_000) {
            Outcome::Deferred { retry_at, .. } => retry_at - t,
            other => panic!("{other:?}"),
        };
        let fourth = match retry_later("x".into(), 4, t + 100_000) {
            Outcome::Deferred { retry_at, .. } => retry_at - t,
            other => panic!("{other:?}"),
        };
        assert!((44..=76).contains(&first), "{first}");
        assert!((359..=601).contains(&fourth), "{fourth}");
        let capped = match retry_later("x".into(), 3, t + 10) {
            Outcome::Deferred { retry_at, .. } => retry_at,
            other => panic!("{other:?}"),
        };
        assert_eq!(capped, t + 11);
    }
}
