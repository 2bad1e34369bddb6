//! Plan: decide who gets which email, and queue it in the outbox.
//!
//! The SQL is set-based and lives in the store; this module works out the slots due
//! (cron in each reader's zone), the content windows, quiet hours and expiries.

mod schedule;

pub use schedule::{due_slots, next_slot, release_after_quiet_hours};

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::config::{AlertsConfig, Expiry, ScheduleConfig};
use crate::domain::{ArticleId, Cadence, DeliveryKind, RegionSlug, SendId, Timestamp, Timezone};
use crate::shutdown::Shutdown;
use crate::store::{AlertPlan, PlanSummary, SlotPlan, Store, StoreError};
use crate::supervise::Beat;

/// What planning reads from the configuration.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// When digests fall due (`[schedule]`).
    pub schedule: ScheduleConfig,
    /// Which articles become alerts, and when they may go out (`[alerts]`).
    pub alerts: AlertsConfig,
    /// How long each kind of email stays worth sending (`deliver.expiry_*`).
    pub expiry: Expiry,
}

/// Queues a digest of `region` now for its confirmed `cadence` readers: each gets the
/// region's articles of the last period they have not received yet. A manual send is
/// its own edition, so running it again queues only what is new since; the edition
/// belongs to `send`, the `sends` row that started it.
pub async fn manual_digest(
    expiry: &Expiry,
    store: &Store,
    region: &RegionSlug,
    cadence: Cadence,
    now: Timestamp,
    dry_run: bool,
    send: Option<SendId>,
) -> Result<PlanSummary, StoreError> {
    let slot_key = match send {
        Some(id) => format!("send:{id}"),
        None => format!(
            "manual:{region}:{cadence}:{}",
            uuid::Uuid::new_v4().simple()
        ),
    };
    let since = now - cadence.period();
    let expires_at = now + expiry.of(DeliveryKind::Digest, Some(cadence));
    store
        .plan_region_digest(
            &slot_key, region, cadence, since, now, expires_at, dry_run, send,
        )
        .await
}

/// What one planning pass did.
#[derive(Debug, Clone, Default)]
pub struct PlanReport {
    /// Digest slots planned: (cadence, zone, slot instant, summary).
    pub slots: Vec<(Cadence, Timezone, DateTime<Utc>, PlanSummary)>,
    /// Stale slots skipped: (cadence, zone, slot instant).
    pub skipped: Vec<(Cadence, Timezone, DateTime<Utc>)>,
    /// Alerts queued: (article id, zone, release instant, summary).
    pub alerts: Vec<(ArticleId, Timezone, DateTime<Utc>, PlanSummary)>,
    /// Fresh missed slots folded into a later slot of the same zone and cadence.
    pub folded: usize,
    /// Slots whose plan was begun (by a process that died, or one still at it) and
    /// that this pass planned to the end: (cadence, zone, slot instant, summary).
    pub finished: Vec<(Cadence, Timezone, DateTime<Utc>, PlanSummary)>,
    /// The next slot of any zone with readers, after this pass's instant: the daemon
    /// wakes for it rather than at its next tick.
    pub next_slot: Option<DateTime<Utc>>,
}

impl PlanReport {
    /// Emails queued in this pass.
    pub fn deliveries(&self) -> u64 {
        self.slots.iter().map(|s| s.3.deliveries).sum::<u64>()
            + self.finished.iter().map(|s| s.3.deliveries).sum::<u64>()
            + self.alerts.iter().map(|a| a.3.deliveries).sum::<u64>()
    }
}

/// Plans every digest slot that came due since the last pass (up to `at`), and the
/// alerts for breaking articles. Slots older than `schedule.max_lateness` are skipped and
/// recorded, never sent late. On a dry run nothing is written.
pub async fn plan_due(
    config: &PlanConfig,
    store: &Store,
    at: DateTime<Utc>,
    dry_run: bool,
) -> Result<PlanReport, StoreError> {
    let mut report = PlanReport::default();
    let max_lateness =
        Duration::from_std(config.schedule.max_lateness).unwrap_or(Duration::hours(6));
    let now = Timestamp::from(at);
    let since = match store.planner_last_run().await? {
        Some(last) => last.to_utc(),
        None => at - max_lateness,
    };
    if !dry_run {
        report.finished = finish_slots(store, at, max_lateness).await?;
    }
    for cadence in [Cadence::Daily, Cadence::Weekly] {
        let cron = match cadence {
            Cadence::Weekly => &config.schedule.weekly,
            _ => &config.schedule.daily,
        };
        for zone in store.cadence_zones(cadence).await? {
            if let Some(next) = next_slot(cron, zone.tz(), at) {
                report.next_slot = Some(report.next_slot.map_or(next, |n| n.min(next)));
            }
            let mut fresh = Vec::new();
            for slot in due_slots(cron, zone.tz(), since, at) {
                let slot_key = format!("{cadence}:{zone}:{}", slot.timestamp());
                if at - slot > max_lateness {
                    if !dry_run && store.record_skipped_slot(&slot_key, now).await? {
                        tracing::warn!(
                            %cadence, %zone, slot = %slot,
                            "skipped a stale slot older than schedule.max_lateness"
                        );
                    }
                    report.skipped.push((cadence, zone, slot));
                } else {
                    fresh.push((slot_key, slot));
                }
            }
            // Several missed slots that are still fresh go out as one digest for the
            // latest: its window covers the others, and readers get one email, not a burst.
            report.folded += fresh.len().saturating_sub(1);
            if let Some((slot_key, slot)) = fresh.pop() {
                let expires_at = now + config.expiry.of(DeliveryKind::Digest, Some(cadence));
                let summary = store
                    .plan_slot_digest(
                        &SlotPlan {
                            slot_key: &slot_key,
                            cadence,
                            zone,
                            slot_at: Timestamp::from(slot),
                            period: cadence.period(),
                            now,
                            expires_at,
                        },
                        dry_run,
                    )
                    .await?;
                report.slots.push((cadence, zone, slot, summary));
            }
        }
    }
    report.alerts = plan_alerts(config, store, at, dry_run).await?;
    if !dry_run {
        store.set_planner_last_run(now).await?;
    }
    Ok(report)
}

/// Plans the rest of every slot whose plan another pass began and did not finish (the
/// process died between two chunks, or another daemon is still at it: chunks never
/// overlap, so helping it is safe). Slots older than `max_lateness` are given up.
async fn finish_slots(
    store: &Store,
    at: DateTime<Utc>,
    max_lateness: Duration,
) -> Result<Vec<(Cadence, Timezone, DateTime<Utc>, PlanSummary)>, StoreError> {
    let oldest = Timestamp::from(at - max_lateness);
    let abandoned = store.abandon_unfinished_slots(oldest).await?;
    if abandoned > 0 {
        tracing::warn!(
            slots = abandoned,
            "gave up planning the rest of slots older than schedule.max_lateness"
        );
    }
    let mut finished = Vec::new();
    for slot in store.unfinished_slots(oldest).await? {
        let summary = store.finish_slot(slot.edition_id).await?;
        tracing::info!(
            cadence = %slot.cadence, zone = %slot.zone, emails = summary.deliveries,
            "planned the rest of a slot begun earlier"
        );
        finished.push((slot.cadence, slot.zone, slot.slot_at.to_utc(), summary));
    }
    Ok(finished)
}

/// How long the daemon's planner may go without a good pass before `/readyz` says so:
/// three ticks, plus two minutes for a pass over a large site (a million readers take
/// seconds to plan).
pub fn overdue_after(schedule: &ScheduleConfig) -> std::time::Duration {
    3 * schedule.tick + std::time::Duration::from_secs(120)
}

/// The daemon's planning stage: plans due slots and alerts every `schedule.tick`, and at
/// the instant of each slot, until shutdown: a slot's first emails leave as it comes,
/// not up to a tick later. Unique keys make overlapping passes (or several daemons)
/// harmless. A pass that fails ends this life of the stage with the error, for the
/// supervisor to restart it.
pub async fn run(
    config: Arc<PlanConfig>,
    store: Store,
    shutdown: Shutdown,
    beat: Beat,
) -> Result<(), StoreError> {
    while !shutdown.is_triggered() {
        let report = plan_due(&config, &store, crate::clock::now_utc(), false).await?;
        if report.deliveries() > 0 {
            tracing::info!(
                emails = report.deliveries(),
                slots = report.slots.len(),
                "planned"
            );
        }
        beat.ok();
        shutdown
            .sleep(sleep_before_next_pass(
                config.schedule.tick,
                report.next_slot,
                crate::clock::now_utc(),
            ))
            .await;
    }
    Ok(())
}

/// How long the planner sleeps after a pass at `now`: a tick, or less if a slot comes
/// sooner. It wakes a few milliseconds after the slot, so the clock reads the slot's
/// instant or later (a pass plans slots up to its own instant, inclusive); a wake-up a
/// little early only makes a pass that plans nothing and sleeps the rest.
fn sleep_before_next_pass(
    tick: std::time::Duration,
    next_slot: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> std::time::Duration {
    let Some(slot) = next_slot else {
        return tick;
    };
    let until = (slot - now).to_std().unwrap_or_default() + std::time::Duration::from_millis(5);
    until.min(tick)
}

/// Queues alerts for breaking articles stored within `alerts.max_age`, held through each
/// reader's quiet hours and expiring when the article is older than `max_age`.
pub async fn plan_alerts(
    config: &PlanConfig,
    store: &Store,
    at: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<(ArticleId, Timezone, DateTime<Utc>, PlanSummary)>, StoreError> {
    let mut out = Vec::new();
    if dry_run {
        return Ok(out);
    }
    let now = Timestamp::from(at);
    let max_age = config.alerts.max_age;
    for article in store.breaking_articles_since(now - max_age).await? {
        let expires_at = (article.ingested_at + max_age).min(now + config.expiry.alert);
        for zone in store.alert_zones(article.id).await? {
            let release = release_after_quiet_hours(at, zone.tz(), config.alerts.quiet_hours);
            let summary = store
                .plan_alert(&AlertPlan {
                    article_id: article.id,
                    zone,
                    release_at: Timestamp::from(release),
                    expires_at,
                    now,
                })
                .await?;
            if summary.deliveries > 0 {
                out.push((article.id, zone, release, summary));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
