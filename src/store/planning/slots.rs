//! Scheduled digest slots, planned in chunks of readers that each commit on their own.
//!
//! Planning a zone of 100,000 readers in one transaction kept every one of its emails
//! waiting until the last row was written. Instead the edition row carries a cursor, the
//! highest reader id planned so far: each chunk takes the zone's next readers by id,
//! queues their digests and moves the cursor in the same transaction, so delivery can
//! claim the first chunk's rows while the next is planned. The first chunk is small (the
//! first email leaves soon after the slot) and chunks grow from there (fewer statements
//! over the whole zone).
//!
//! What keeps it exact:
//! - chunks of all planners run one at a time (the planning lock of [`Store::begin_plan`])
//!   and each reads the cursor inside its transaction, so two processes finishing the
//!   same slot take different readers, never the same ones;
//! - a chunk's deliveries and its cursor commit together: a process killed between
//!   chunks leaves the cursor at the last committed reader, and whoever runs the next
//!   planning pass ([`Store::unfinished_slots`], [`Store::finish_slot`]) plans from there;
//! - every chunk plans with the parameters stored on the edition (the instant planning
//!   began, the window's earliest start, the expiry), so all of a slot's readers get
//!   what one plan would have given them, whichever process planned their chunk.
//!   Contents are keyed per edition, so a content group met again in a later chunk is
//!   shared with the earlier one, not stored twice.

use super::Tx;
use super::digests::DigestBatch;
use crate::domain::{Cadence, EditionId, Timestamp, Timezone};
use crate::store::{PlanSummary, Result, SlotPlan, Store, StoreError, decode};

/// How many readers each transaction of a slot's plan takes: `first` in the first, then
/// twice as many each time, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanChunks {
    /// Readers in the first chunk, planned before any email of the slot can leave.
    pub first: u64,
    /// The most readers in one chunk.
    pub max: u64,
}

impl Default for PlanChunks {
    /// 1,000 readers first (a few tens of milliseconds to plan), up to 64,000: measured
    /// in BENCHMARKS.md, "Planning in chunks".
    fn default() -> Self {
        PlanChunks {
            first: 1_000,
            max: 64_000,
        }
    }
}

impl PlanChunks {
    /// The size of the chunk after one of `size` readers.
    fn next(self, size: u64) -> u64 {
        size.saturating_mul(2)
            .clamp(self.first.max(1), self.max.max(1))
    }
}

/// A scheduled slot whose plan began but has not reached its last reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnfinishedSlot {
    /// The slot's edition.
    pub edition_id: EditionId,
    /// Its cadence.
    pub cadence: Cadence,
    /// The zone of its readers.
    pub zone: Timezone,
    /// The slot's instant.
    pub slot_at: Timestamp,
}

/// An unfinished edition as stored: cursor, cadence, zone, slot, window start, planning
/// instant, expiry.
type UnfinishedRow = (
    i64,
    String,
    Option<String>,
    Timestamp,
    Option<Timestamp>,
    Timestamp,
    Option<Timestamp>,
);

/// What every chunk of one slot plans with, as stored on its edition.
#[derive(Debug, Clone, Copy)]
struct SlotChunk {
    edition_id: EditionId,
    cadence: Cadence,
    zone: Timezone,
    slot_at: Timestamp,
    /// A first digest reaches back to here (or to the subscription, if older).
    window_from: Timestamp,
    /// The instant planning began: articles up to it count, rows are due from it.
    now: Timestamp,
    expires_at: Timestamp,
}

impl Store {
    /// Sets how many readers each transaction of a slot's plan takes.
    pub fn set_plan_chunks(&mut self, chunks: PlanChunks) {
        self.plan_chunks = chunks;
    }

    /// Plans one digest slot for every confirmed reader in its zone who follows a region
    /// at its cadence and has articles there they have not received. A reader's window
    /// starts at their previous digest of this cadence; a first digest reaches back one
    /// period, or to the subscription if that is older (slots skipped since).
    ///
    /// A slot is planned once: if its edition exists, nothing happens here (a plan that
    /// another process began and left unfinished is finished by
    /// [`Store::finish_slot`]). Readers are planned in chunks that commit one by one (see
    /// the module's comment); a dry run plans every reader in one transaction and rolls
    /// it back.
    pub async fn plan_slot_digest(
        &self,
        plan: &SlotPlan<'_>,
        dry_run: bool,
    ) -> Result<PlanSummary> {
        let first = if dry_run {
            i64::MAX as u64
        } else {
            self.plan_chunks.first.max(1)
        };
        let Some((tx, mut summary, done)) = self.begin_slot(plan, first).await? else {
            return Ok(PlanSummary::default());
        };
        if dry_run {
            let edition_id = summary.edition_id.expect("a new edition");
            let dry = self.finish_plan(tx, edition_id, true).await?;
            return Ok(PlanSummary {
                recipients: dry.recipients,
                zones: dry.zones,
                ..summary
            });
        }
        tx.commit().await?;
        if let (false, Some(edition_id)) = (done, summary.edition_id) {
            add(&mut summary, self.finish_from(edition_id, first).await?);
        }
        Ok(summary)
    }

    /// Creates the slot's edition and plans its first `first` readers, in a transaction
    /// left open for the caller to commit (or roll back, on a dry run), with whether
    /// that was every reader. `None` when the edition exists: someone else began this
    /// slot.
    pub(crate) async fn begin_slot(
        &self,
        plan: &SlotPlan<'_>,
        first: u64,
    ) -> Result<Option<(Tx, PlanSummary, bool)>> {
        let mut tx = self.begin_plan().await?;
        let window_from = plan.slot_at - plan.period;
        let created: Option<(EditionId,)> = sqlx::query_as(
            "INSERT INTO editions (slot_key, kind, cadence, planned_at, slot_at, timezone,
                 plan_cursor, window_from, expires_at)
             VALUES ($1, 'digest', $2, $3, $4, $5, 0, $6, $7)
             ON CONFLICT (slot_key) DO NOTHING RETURNING id",
        )
        .bind(plan.slot_key)
        .bind(plan.cadence.as_str())
        .bind(plan.now)
        .bind(plan.slot_at)
        .bind(plan.zone.name())
        .bind(window_from)
        .bind(plan.expires_at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((edition_id,)) = created else {
            tx.rollback().await?;
            return Ok(None);
        };
        let slot = SlotChunk {
            edition_id,
            cadence: plan.cadence,
            zone: plan.zone,
            slot_at: plan.slot_at,
            window_from,
            now: plan.now,
            expires_at: plan.expires_at,
        };
        let (summary, done) = self.plan_chunk(&mut tx, &slot, 0, first).await?;
        Ok(Some((tx, summary, done)))
    }

    /// Scheduled slots whose plan began at or after `since` and has readers left: a
    /// process died between two chunks, or is planning them now.
    pub async fn unfinished_slots(&self, since: Timestamp) -> Result<Vec<UnfinishedSlot>> {
        let rows: Vec<(EditionId, String, Option<String>, Timestamp)> = sqlx::query_as(
            "SELECT id, cadence, timezone, slot_at FROM editions
             WHERE plan_cursor IS NOT NULL AND slot_at >= $1 ORDER BY slot_at, id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(edition_id, cadence, zone, slot_at)| {
                Ok(UnfinishedSlot {
                    edition_id,
                    cadence: decode("editions", edition_id, "cadence", &cadence)?,
                    zone: decode(
                        "editions",
                        edition_id,
                        "timezone",
                        &zone.unwrap_or_default(),
                    )?,
                    slot_at,
                })
            })
            .collect()
    }

    /// Gives up the unfinished plans of slots older than `before`: their remaining
    /// readers would get a digest later than `schedule.max_lateness` allows. Returns how
    /// many slots were given up.
    pub async fn abandon_unfinished_slots(&self, before: Timestamp) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE editions SET plan_cursor = NULL
             WHERE plan_cursor IS NOT NULL AND slot_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Plans the readers a slot's edition has left, chunk by chunk, with the parameters
    /// its first planner stored. Safe beside other processes doing the same: each chunk
    /// takes readers no other chunk took.
    pub async fn finish_slot(&self, edition_id: EditionId) -> Result<PlanSummary> {
        self.finish_from(edition_id, self.plan_chunks.first.max(1))
            .await
    }

    /// [`Store::finish_slot`], the chunk before having taken `previous` readers.
    async fn finish_from(&self, edition_id: EditionId, previous: u64) -> Result<PlanSummary> {
        let mut summary = PlanSummary {
            edition_id: Some(edition_id),
            ..PlanSummary::default()
        };
        let mut size = previous;
        loop {
            size = self.plan_chunks.next(size);
            let mut tx = self.begin_plan().await?;
            // Read under the planning lock: the cursor is where the last committed
            // chunk, this process's or another's, left off.
            let row: Option<UnfinishedRow> = sqlx::query_as(
                "SELECT plan_cursor, cadence, timezone, slot_at, window_from, planned_at,
                            expires_at
                     FROM editions WHERE id = $1 AND plan_cursor IS NOT NULL",
            )
            .bind(edition_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((cursor, cadence, zone, slot_at, window_from, now, expires_at)) = row else {
                tx.rollback().await?;
                return Ok(summary);
            };
            let missing = |column| {
                StoreError::corrupt(
                    "editions",
                    edition_id,
                    column,
                    "missing on a slot being planned",
                )
            };
            let slot = SlotChunk {
                edition_id,
                cadence: decode("editions", edition_id, "cadence", &cadence)?,
                zone: decode(
                    "editions",
                    edition_id,
                    "timezone",
                    &zone.unwrap_or_default(),
                )?,
                slot_at,
                window_from: window_from.ok_or_else(|| missing("window_from"))?,
                now,
                expires_at: expires_at.ok_or_else(|| missing("expires_at"))?,
            };
            let (chunk, done) = self.plan_chunk(&mut tx, &slot, cursor, size).await?;
            tx.commit().await?;
            add(&mut summary, chunk);
            if done {
                return Ok(summary);
            }
        }
    }

    /// Plans the next `limit` confirmed readers of the slot's zone after reader id
    /// `cursor` and moves the edition's cursor past them (to NULL when they were the
    /// last). Returns what was queued and whether the slot is now fully planned.
    async fn plan_chunk(
        &self,
        tx: &mut Tx,
        slot: &SlotChunk,
        cursor: i64,
        limit: u64,
    ) -> Result<(PlanSummary, bool)> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (taken, last): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MAX(id) FROM (
                 SELECT id FROM subscribers
                 WHERE timezone = $1 AND state = 'confirmed' AND id > $2
                 ORDER BY id LIMIT $3) chunk",
        )
        .bind(slot.zone.name())
        .bind(cursor)
        .bind(limit)
        .fetch_one(&mut **tx)
        .await?;
        let done = taken < limit;
        let mut summary = PlanSummary {
            edition_id: Some(slot.edition_id),
            ..PlanSummary::default()
        };
        if let Some(last) = last {
            self.create_plan_readers(tx).await?;
            // Window start: the reader's previous digest of this cadence, else one period
            // back (`window_from`) or the subscription if older. When the cap left
            // stories of that digest out (`content_overflow`), the window starts where
            // that digest's did, at most one period ($6 - $2) before its slot, so those
            // stories are candidates again; the ones it carried are left out as received.
            // `regions` is what the reader follows at this cadence; `articles_through`
            // the highest article id in anything they received.
            sqlx::query(
                "INSERT INTO plan_readers (subscriber_id, window_start, regions, articles_through)
                 SELECT s.id,
                        COALESCE(
                            (SELECT CASE
                                        WHEN NOT EXISTS (SELECT 1 FROM content_overflow o
                                                         WHERE o.content_id = d.content_id)
                                            THEN d.slot_at
                                        WHEN d.window_start > d.slot_at - ($6 - $2)
                                            THEN d.window_start
                                        ELSE d.slot_at - ($6 - $2)
                                    END
                             FROM deliveries d
                             WHERE d.subscriber_id = s.id AND d.cadence = $1
                             ORDER BY d.slot_at DESC LIMIT 1),
                            CASE WHEN MIN(sub.created_at) < $2 THEN MIN(sub.created_at) ELSE $2 END),
                        CASE WHEN COUNT(*) = 1 THEN MIN(sub.region_slug) ELSE
                            (SELECT string_agg(x.region_slug, ',' ORDER BY x.region_slug)
                             FROM subscriptions x WHERE x.subscriber_id = s.id AND x.cadence = $1)
                        END,
                        (SELECT MAX(d.articles_through) FROM deliveries d
                         WHERE d.subscriber_id = s.id AND d.articles_through IS NOT NULL)
                 FROM subscribers s
                 JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.cadence = $1
                 WHERE s.timezone = $3 AND s.state = 'confirmed' AND s.id > $4 AND s.id <= $5
                 GROUP BY s.id",
            )
            .bind(slot.cadence.as_str())
            .bind(slot.window_from)
            .bind(slot.zone.name())
            .bind(cursor)
            .bind(last)
            .bind(slot.slot_at)
            .execute(&mut **tx)
            .await?;
            summary = self
                .queue_digests(
                    tx,
                    &DigestBatch {
                        edition_id: slot.edition_id,
                        cadence: slot.cadence,
                        region: None,
                        slot_at: slot.slot_at,
                        now: slot.now,
                        expires_at: slot.expires_at,
                        zone: Some(slot.zone),
                    },
                )
                .await?;
        }
        sqlx::query("UPDATE editions SET plan_cursor = $2 WHERE id = $1")
            .bind(slot.edition_id)
            .bind(if done { None } else { last })
            .execute(&mut **tx)
            .await?;
        Ok((summary, done))
    }
}

/// Adds one chunk's counts to a slot's.
fn add(total: &mut PlanSummary, chunk: PlanSummary) {
    total.deliveries += chunk.deliveries;
    total.articles += chunk.articles;
    total.content_rows += chunk.content_rows;
}
