//! Set-based planning of scheduled digests, breaking alerts and manual sends (`manual`).
//!
//! Every plan is a handful of statements over the whole slot, never one round trip per
//! reader. A digest's articles are stored once per content group (`contents` and
//! `content_articles`), and each delivery points at its content: readers who follow the
//! same regions from the same window start share one. Unique keys make planning
//! idempotent across runs and daemons: an edition per slot (`editions.slot_key`), one
//! email per reader per edition, one content per group. Each article reaches a reader at
//! most once because planners run one at a time (SQLite's write lock; on PostgreSQL a
//! transaction-scoped advisory lock) and leave out what the reader already received.

mod digests;
mod manual;
mod slots;
#[cfg(test)]
mod tests;

use sqlx::AssertSqlSafe;

use super::{Result, Store, StoreError, states};
use std::time::Duration;

use crate::domain::{
    ArticleId, Cadence, DeliveryKind, EditionId, Email, SubscriberId, Timestamp, Timezone,
    Transition,
};
pub use slots::{PlanChunks, UnfinishedSlot};

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Whether the reader `reader` (an SQL expression) was sent article `article` in any
/// earlier email. Only emails whose highest article id reaches the article can carry it,
/// so the reader's index range from there on is all there is to look at.
fn received_sql(reader: &str, article: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM deliveries dx
                 JOIN content_articles cx ON cx.content_id = dx.content_id
                 WHERE dx.subscriber_id = {reader} AND dx.articles_through >= {article}
                   AND cx.article_id = {article})"
    )
}

/// One scheduled digest slot to plan.
#[derive(Debug, Clone)]
pub struct SlotPlan<'a> {
    /// Unique key of the slot (cadence, zone, instant).
    pub slot_key: &'a str,
    /// Daily or weekly.
    pub cadence: Cadence,
    /// The zone of the readers this slot is for.
    pub zone: Timezone,
    /// The slot's instant.
    pub slot_at: Timestamp,
    /// A reader's first digest reaches back this far.
    pub period: Duration,
    /// Now: rows become due now, articles up to now count.
    pub now: Timestamp,
    /// When the digests stop being worth sending.
    pub expires_at: Timestamp,
}

/// One breaking article's alerts for the readers of one zone.
#[derive(Debug, Clone)]
pub struct AlertPlan {
    /// The article.
    pub article_id: ArticleId,
    /// The zone of the readers.
    pub zone: Timezone,
    /// When the alert may go out (end of quiet hours, or now).
    pub release_at: Timestamp,
    /// When it stops being worth sending.
    pub expires_at: Timestamp,
    /// Now.
    pub now: Timestamp,
}

/// What planning one edition produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanSummary {
    /// The edition row: new, or the existing one of a manual send's key; `None` when a
    /// scheduled slot turned out to be planned already.
    pub edition_id: Option<EditionId>,
    /// Emails queued.
    pub deliveries: u64,
    /// Articles across those emails (each email's count, summed).
    pub articles: u64,
    /// Rows written to store those emails' contents: one per article per content group.
    pub content_rows: u64,
    /// On a dry run: each recipient with the number of articles they would get.
    pub recipients: Vec<(Email, i64)>,
    /// On a dry run: how many of the recipients live in each zone.
    pub zones: Vec<(Timezone, i64)>,
}

/// What a dry run found, before it rolled back: who would get how many articles, and
/// how many of them live in each zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRun {
    /// Each recipient with the number of articles they would get, by address.
    pub recipients: Vec<(Email, i64)>,
    /// Readers per zone, by zone name.
    pub zones: Vec<(Timezone, i64)>,
}

/// A breaking article waiting for alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakingArticle {
    /// Article id.
    pub id: ArticleId,
    /// When herald first stored it.
    pub ingested_at: Timestamp,
}

impl Store {
    /// The last instant the scheduler planned up to, if it ever ran.
    pub async fn planner_last_run(&self) -> Result<Option<Timestamp>> {
        let row: Option<(Timestamp,)> =
            sqlx::query_as("SELECT value FROM planner_state WHERE name = 'last_run'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(v,)| v))
    }

    /// Moves the scheduler's mark forward to `at` (never backward).
    pub async fn set_planner_last_run(&self, at: Timestamp) -> Result<()> {
        sqlx::query(
            "INSERT INTO planner_state (name, value) VALUES ('last_run', $1)
             ON CONFLICT (name) DO UPDATE SET value = CASE
                 WHEN excluded.value > planner_state.value THEN excluded.value
                 ELSE planner_state.value END",
        )
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Zones that have confirmed readers at `cadence`.
    pub async fn cadence_zones(&self, cadence: Cadence) -> Result<Vec<Timezone>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT s.timezone FROM subscribers s
             WHERE s.state = 'confirmed' AND EXISTS (
                 SELECT 1 FROM subscriptions sub WHERE sub.subscriber_id = s.id AND sub.cadence = $1)
             ORDER BY s.timezone",
        )
        .bind(cadence.as_str())
        .fetch_all(&self.pool)
        .await?;
        self.decode_zones(rows).await
    }

    /// Zone names read with `DISTINCT`, decoded. One that does not decode (a row edited
    /// by hand) is left out of this pass with an error naming a reader who has it
    /// (looked up only then, so planning reads no more): one bad row must not stop
    /// every other reader's digest.
    async fn decode_zones(&self, names: Vec<(String,)>) -> Result<Vec<Timezone>> {
        let mut zones = Vec::with_capacity(names.len());
        for (name,) in names {
            match name.parse() {
                Ok(zone) => zones.push(zone),
                Err(reason) => {
                    let (row,): (Option<SubscriberId>,) =
                        sqlx::query_as("SELECT MIN(id) FROM subscribers WHERE timezone = $1")
                            .bind(&name)
                            .fetch_one(&self.pool)
                            .await?;
                    let row =
                        row.map_or_else(|| format!("with zone {name:?}"), |id| id.to_string());
                    let error = StoreError::corrupt("subscribers", row, "timezone", reason);
                    tracing::error!(%error, "readers in this zone are left out of planning");
                }
            }
        }
        Ok(zones)
    }

    /// Whether a slot was already planned (or skipped).
    pub async fn slot_seen(&self, slot_key: &str) -> Result<bool> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM editions WHERE slot_key = $1)
                  + (SELECT COUNT(*) FROM skipped_slots WHERE slot_key = $1)",
        )
        .bind(slot_key)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Notes a stale slot as skipped; returns false if it was already noted.
    pub async fn record_skipped_slot(&self, slot_key: &str, now: Timestamp) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO skipped_slots (slot_key, skipped_at) VALUES ($1, $2)
             ON CONFLICT (slot_key) DO NOTHING",
        )
        .bind(slot_key)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Breaking articles stored since `since`, oldest first.
    pub async fn breaking_articles_since(&self, since: Timestamp) -> Result<Vec<BreakingArticle>> {
        let rows: Vec<(ArticleId, Timestamp)> = sqlx::query_as(
            "SELECT id, ingested_at FROM articles WHERE breaking = 1 AND ingested_at >= $1
             ORDER BY ingested_at, id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, ingested_at)| BreakingArticle { id, ingested_at })
            .collect())
    }

    /// Zones of confirmed alert readers in any region of the article who have not had it.
    pub async fn alert_zones(&self, article_id: ArticleId) -> Result<Vec<Timezone>> {
        let rows: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT DISTINCT s.timezone FROM subscribers s
             JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.cadence = 'alert'
             JOIN article_regions ar ON ar.region_slug = sub.region_slug AND ar.article_id = $1
             WHERE s.state = 'confirmed' AND NOT {received}
             ORDER BY s.timezone",
            received = received_sql("s.id", "$1")
        )))
        .bind(article_id)
        .fetch_all(&self.pool)
        .await?;
        self.decode_zones(rows).await
    }

    /// Queues one article's alert for the confirmed alert readers of one zone who follow
    /// one of its regions and have not had it (as an alert or in a digest). The alert's
    /// content is stored once per region it is shown under (the first of the reader's
    /// alert regions that carries it), shared by the article's alerts in every zone.
    pub async fn plan_alert(&self, plan: &AlertPlan) -> Result<PlanSummary> {
        let mut tx = self.begin_plan().await?;
        let slot_key = format!("alert:{}", plan.article_id);
        sqlx::query(
            "INSERT INTO editions (slot_key, kind, cadence, planned_at, slot_at)
             VALUES ($1, 'alert', 'alert', $2, $2) ON CONFLICT (slot_key) DO NOTHING",
        )
        .bind(&slot_key)
        .bind(plan.now)
        .execute(&mut *tx)
        .await?;
        let (edition_id,): (EditionId,) =
            sqlx::query_as("SELECT id FROM editions WHERE slot_key = $1")
                .bind(&slot_key)
                .fetch_one(&mut *tx)
                .await?;
        // The readers to alert, each with the region the article is shown under.
        let readers = format!(
            "SELECT s.id AS subscriber_id, MIN(sub.region_slug) AS region_slug
             FROM subscribers s
             JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.cadence = 'alert'
             JOIN article_regions ar ON ar.region_slug = sub.region_slug AND ar.article_id = $2
             WHERE s.state = 'confirmed' AND s.timezone = $3 AND NOT {received}
             GROUP BY s.id",
            received = received_sql("s.id", "$2")
        );
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO contents (edition_id, group_key)
             SELECT DISTINCT $1, r.region_slug FROM ({readers}) r WHERE true
             ON CONFLICT (edition_id, group_key) DO NOTHING"
        )))
        .bind(edition_id)
        .bind(plan.article_id)
        .bind(plan.zone.name())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO content_articles (content_id, article_id, region_slug)
             SELECT c.id, $2, c.group_key FROM contents c WHERE c.edition_id = $1
             ON CONFLICT (content_id, article_id) DO NOTHING",
        )
        .bind(edition_id)
        .bind(plan.article_id)
        .execute(&mut *tx)
        .await?;
        let deliveries = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority, state,
                 attempts, message_id, next_attempt_at, expires_at, created_at, updated_at,
                 slot_at, window_start, content_id, articles_through)
             SELECT $1, r.subscriber_id, 'alert', 'alert', $4, {queued}, 0, {rand}, $5, $6,
                    $7, $7, $7, $7, c.id, $2
             FROM ({readers}) r
             JOIN contents c ON c.edition_id = $1 AND c.group_key = r.region_slug
             WHERE true
             ON CONFLICT (subscriber_id, edition_id) DO NOTHING",
            queued = states::target(Transition::Plan),
            rand = self.random_hex_sql()
        )))
        .bind(edition_id)
        .bind(plan.article_id)
        .bind(plan.zone.name())
        .bind(DeliveryKind::Alert.priority())
        .bind(plan.release_at)
        .bind(plan.expires_at)
        .bind(plan.now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(PlanSummary {
            edition_id: Some(edition_id),
            deliveries,
            articles: deliveries,
            content_rows: 0,
            recipients: Vec::new(),
            zones: Vec::new(),
        })
    }

    /// Forgets the scheduler's mark, as a daemon starting on an empty state would see it.
    pub async fn reset_planner_mark(&self) -> Result<()> {
        sqlx::query("DELETE FROM planner_state WHERE name = 'last_run'")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
