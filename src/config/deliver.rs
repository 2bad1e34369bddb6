//! `[deliver]`: the outbox workers, their retries, and how long each email stays
//! worth sending.

use std::time::Duration;

use serde::Deserialize;

use super::setting::{Problems, Setting, Text};
use crate::domain::{Cadence, DeliveryKind};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[deliver]
batch_size = 200
lease = "5m"
drain_timeout = "30s"
worker_timeout = "30s"
expiry_alert = "6h"
expiry_daily = "24h"
expiry_weekly = "72h"
expiry_confirmation = "24h"
retry_base = "1m"
retry_max = "1h"
"#;

/// `[deliver]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    batch_size: Setting<u32>,
    lease: Setting<Text<Duration>>,
    drain_timeout: Setting<Text<Duration>>,
    worker_timeout: Setting<Text<Duration>>,
    expiry_alert: Setting<Text<Duration>>,
    expiry_daily: Setting<Text<Duration>>,
    expiry_weekly: Setting<Text<Duration>>,
    expiry_confirmation: Setting<Text<Duration>>,
    retry_base: Setting<Text<Duration>>,
    retry_max: Setting<Text<Duration>>,
}

/// `[deliver]`.
#[derive(Debug, Clone)]
pub struct DeliverConfig {
    /// Rows claimed per batch.
    pub batch_size: usize,
    /// How long a claim holds before another worker may take the row.
    pub lease: Duration,
    /// How long shutdown waits for in-flight messages.
    pub drain_timeout: Duration,
    /// A worker whose heartbeat is older than this is dead: its claimed rows go back to
    /// the queue without waiting out their lease.
    pub worker_timeout: Duration,
    /// How long each kind of email stays worth sending.
    pub expiry: Expiry,
    /// First retry delay after a temporary failure; doubles each attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// How long each kind of email stays worth sending (`deliver.expiry_*`).
#[derive(Debug, Clone)]
pub struct Expiry {
    /// An alert.
    pub alert: Duration,
    /// A daily digest.
    pub daily: Duration,
    /// A weekly digest.
    pub weekly: Duration,
    /// A confirmation (and the welcome that follows it).
    pub confirmation: Duration,
}

impl Expiry {
    /// How long an email of this kind and cadence stays worth sending.
    pub fn of(&self, kind: DeliveryKind, cadence: Option<Cadence>) -> Duration {
        match (kind, cadence) {
            (DeliveryKind::Confirmation | DeliveryKind::Welcome, _) => self.confirmation,
            (DeliveryKind::Alert, _) | (_, Some(Cadence::Alert)) => self.alert,
            (DeliveryKind::Digest, Some(Cadence::Weekly)) => self.weekly,
            (DeliveryKind::Digest, _) => self.daily,
        }
    }
}

/// The shortest `deliver.worker_timeout`: heartbeats are stored in whole seconds, and
/// a worker beats every third of the timeout, so three beats of a second each.
const MIN_WORKER_TIMEOUT: Duration = Duration::from_secs(3);

/// A worker beats at least this often, however long its timeout.
const MAX_HEARTBEAT: Duration = Duration::from_secs(5);

impl DeliverConfig {
    /// How often a worker renews its heartbeat: a third of `worker_timeout`, at most
    /// every 5 s, so a live worker misses two beats before it is taken for dead.
    pub fn heartbeat_every(&self) -> Duration {
        (self.worker_timeout / 3).min(MAX_HEARTBEAT)
    }
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems) -> Option<DeliverConfig> {
        let batch_size = p.take("deliver.batch_size", self.batch_size).and_then(|n| {
            p.check(
                "deliver.batch_size",
                if (1..=10_000).contains(&n) {
                    Ok(n as usize)
                } else {
                    Err(format!("{n} is out of range (1 to 10000)"))
                },
            )
        });
        let lease = p.text("deliver.lease", self.lease);
        let drain_timeout = p.text("deliver.drain_timeout", self.drain_timeout);
        let worker_timeout = p
            .text("deliver.worker_timeout", self.worker_timeout)
            .and_then(|timeout| {
                p.check(
                    "deliver.worker_timeout",
                    if timeout >= MIN_WORKER_TIMEOUT {
                        Ok(timeout)
                    } else {
                        Err(format!(
                            "{timeout:?} is too short: workers beat every third of it and heartbeats are kept in whole seconds; write at least \"3s\""
                        ))
                    },
                )
            });
        let alert = p.text("deliver.expiry_alert", self.expiry_alert);
        let daily = p.text("deliver.expiry_daily", self.expiry_daily);
        let weekly = p.text("deliver.expiry_weekly", self.expiry_weekly);
        let confirmation = p.text("deliver.expiry_confirmation", self.expiry_confirmation);
        let retry_base = p.text("deliver.retry_base", self.retry_base);
        let retry_max = p.text("deliver.retry_max", self.retry_max);
        let retry_base = retry_base?;
        Some(DeliverConfig {
            batch_size: batch_size?,
            lease: lease?,
            drain_timeout: drain_timeout?,
            worker_timeout: worker_timeout?,
            expiry: Expiry {
                alert: alert?,
                daily: daily?,
                weekly: weekly?,
                confirmation: confirmation?,
            },
            retry_base,
            retry_max: retry_max?.max(retry_base),
        })
    }
}
