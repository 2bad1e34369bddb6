//! Set-based planning of scheduled digests and breaking alerts.
//!
//! Every plan is a handful of statements over the whole slot, never one round trip per
//! reader. Unique keys make it idempotent across runs and across daemons: an edition per
//! slot (`editions.slot_key`), one email per reader per edition, and each article at
//! most once per reader (`delivery_articles` primary key).

use sqlx::AssertSqlSafe;

use super::{Backend, PlanSummary, Result, Store};
use crate::domain::{Cadence, DeliveryKind};

/// One scheduled digest slot to plan.
#[derive(Debug, Clone)]
pub struct SlotPlan<'a> {
    /// Unique key of the slot (cadence, zone, instant).
    pub slot_key: &'a str,
    /// Daily or weekly.
    pub cadence: Cadence,
    /// IANA zone of the readers this slot is for.
    pub zone: &'a str,
    /// The slot's instant (Unix seconds).
    pub slot_at: i64,
    /// A reader's first digest reaches back this far (seconds).
    pub period: i64,
    /// Now (Unix seconds): rows become due now, articles up to now count.
    pub now: i64,
    /// When the digests stop being worth sending.
    pub expires_at: i64,
}

/// One breaking article's alerts for the readers of one zone.
#[derive(Debug, Clone)]
pub struct AlertPlan<'a> {
    /// The article.
    pub article_id: i64,
    /// IANA zone of the readers.
    pub zone: &'a str,
    /// When the alert may go out (end of quiet hours, or now).
    pub release_at: i64,
    /// When it stops being worth sending.
    pub expires_at: i64,
    /// Now.
    pub now: i64,
}

/// A breaking article waiting for alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakingArticle {
    /// Article id.
    pub id: i64,
    /// When herald first stored it.
    pub ingested_at: i64,
}

impl Store {
    /// The last instant the scheduler planned up to, if it ever ran.
    pub async fn planner_last_run(&self) -> Result<Option<i64>> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT value FROM planner_state WHERE name = 'last_run'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(v,)| v))
    }

    /// Moves the scheduler's mark forward to `at` (never backward).
    pub async fn set_planner_last_run(&self, at: i64) -> Result<()> {
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
    pub async fn cadence_zones(&self, cadence: Cadence) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT s.timezone FROM subscribers s
             WHERE s.state = 'confirmed' AND EXISTS (
                 SELECT 1 FROM subscriptions sub WHERE sub.subscriber_id = s.id AND sub.cadence = $1)
             ORDER BY s.timezone",
        )
        .bind(cadence.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(z,)| z).collect())
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
    pub async fn record_skipped_slot(&self, slot_key: &str, now: i64) -> Result<bool> {
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

    /// How many stale slots were ever skipped (for `/metrics` and `status`).
    pub async fn skipped_slot_count(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM skipped_slots")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Plans one digest slot for every confirmed reader in its zone who follows a region
    /// at its cadence and has articles there they have not received. A reader's window
    /// starts at their previous digest of this cadence; a first digest reaches back one
    /// period, or to the subscription if that is older (slots skipped since).
    /// A slot is planned once: if its edition exists, nothing happens.
    ///
    /// Four statements over the whole slot, whatever the number of readers: the readers
    /// with their windows go into a temporary table once (instead of correlated
    /// subqueries evaluated again by every later statement), each gets its delivery id
    /// there, and the deliveries and their articles are inserted from it without joining
    /// back to `deliveries`.
    pub async fn plan_slot_digest(
        &self,
        plan: &SlotPlan<'_>,
        dry_run: bool,
    ) -> Result<PlanSummary> {
        let mut tx = self.begin_plan().await?;
        let created: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO editions (slot_key, kind, cadence, planned_at, slot_at, timezone)
             VALUES ($1, 'digest', $2, $3, $4, $5) ON CONFLICT (slot_key) DO NOTHING RETURNING id",
        )
        .bind(plan.slot_key)
        .bind(plan.cadence.as_str())
        .bind(plan.now)
        .bind(plan.slot_at)
        .bind(plan.zone)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((edition_id,)) = created else {
            tx.rollback().await?;
            return Ok(PlanSummary::default());
        };
        let (deliveries, articles, expected) =
            self.queue_slot_digests(&mut tx, edition_id, plan).await?;
        // Readers whose window held only articles they already had (as an alert, under
        // another region, or from a planner racing this one) get no email. That needs the
        // unique key to have turned placements away, so the check (a lookup per reader)
        // runs only then. On PostgreSQL an article committed by a concurrent ingest
        // between the count and the insert could offset such a reader in the totals; its
        // row then carries no article and delivery cancels it ("nothing left to send").
        let empty = if articles < expected {
            self.drop_empty_deliveries(&mut tx, edition_id).await?
        } else {
            0
        };
        let recipients = self.finish_plan(tx, edition_id, dry_run).await?;
        Ok(PlanSummary {
            edition_id,
            deliveries: deliveries.saturating_sub(empty),
            articles,
            recipients,
        })
    }

    /// Queues the digests of one slot's edition; returns (deliveries, placements,
    /// placements the windows held before the unique key turned any away).
    async fn queue_slot_digests(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        edition_id: i64,
        plan: &SlotPlan<'_>,
    ) -> Result<(u64, u64, u64)> {
        // Each reader's delivery id is fixed up front so that placements need no join
        // back to `deliveries`: on SQLite the next ids after the largest (the write lock
        // is held, so nobody else takes them); on PostgreSQL from the identity sequence.
        let (readers_table, delivery_id) = match self.backend {
            Backend::Sqlite => {
                sqlx::query(
                    "CREATE TEMP TABLE IF NOT EXISTS plan_readers (
                         seq           INTEGER PRIMARY KEY,
                         subscriber_id INTEGER NOT NULL,
                         window_start  INTEGER NOT NULL,
                         articles      INTEGER NOT NULL)",
                )
                .execute(&mut **tx)
                .await?;
                sqlx::query("DELETE FROM temp.plan_readers")
                    .execute(&mut **tx)
                    .await?;
                let (last,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM deliveries")
                    .fetch_one(&mut **tx)
                    .await?;
                ("temp.plan_readers", format!("p.seq + {last}"))
            }
            Backend::Postgres => {
                sqlx::query(
                    "CREATE TEMP TABLE plan_readers (
                         delivery_id   BIGINT NOT NULL
                                       DEFAULT nextval(pg_get_serial_sequence('deliveries', 'id')),
                         subscriber_id BIGINT NOT NULL,
                         window_start  BIGINT NOT NULL,
                         articles      BIGINT NOT NULL) ON COMMIT DROP",
                )
                .execute(&mut **tx)
                .await?;
                ("plan_readers", "p.delivery_id".to_string())
            }
        };
        // Window start: the reader's previous digest of this cadence (cadences other than
        // `alert` are only ever digests, so the index answers MAX alone), else one period
        // back or the subscription if older. `articles` counts the window's placements.
        // PostgreSQL may group by hashing: sort so delivery ids follow reader ids, as they
        // do on SQLite where the zone index already yields readers in id order.
        let order = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "ORDER BY r.subscriber_id",
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {readers_table} (subscriber_id, window_start, articles)
             SELECT r.subscriber_id, r.window_start,
                    (SELECT COUNT(*) FROM subscriptions sub
                     JOIN article_regions ar ON ar.region_slug = sub.region_slug
                     WHERE sub.subscriber_id = r.subscriber_id AND sub.cadence = $1
                       AND ar.added_at > r.window_start AND ar.added_at <= $2)
             FROM (SELECT s.id AS subscriber_id,
                          COALESCE(
                              (SELECT MAX(d.slot_at) FROM deliveries d
                               WHERE d.subscriber_id = s.id AND d.cadence = $1),
                              CASE WHEN MIN(sub.created_at) < $3 THEN MIN(sub.created_at) ELSE $3 END
                          ) AS window_start
                   FROM subscribers s
                   JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.cadence = $1
                   WHERE s.timezone = $4 AND s.state = 'confirmed'
                   GROUP BY s.id) r
             {order}"
        )))
        .bind(plan.cadence.as_str())
        .bind(plan.now)
        .bind(plan.slot_at - plan.period)
        .bind(plan.zone)
        .execute(&mut **tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {readers_table} WHERE articles = 0"
        )))
        .execute(&mut **tx)
        .await?;
        let deliveries = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO deliveries (id, edition_id, subscriber_id, kind, cadence, priority, state,
                 attempts, message_id, next_attempt_at, expires_at, created_at, updated_at,
                 slot_at, window_start)
             SELECT {delivery_id}, $1, p.subscriber_id, 'digest', $2, $3, 'queued', 0, {rand},
                    $4, $5, $4, $4, $6, p.window_start
             FROM {readers_table} p",
            rand = self.random_hex_sql()
        )))
        .bind(edition_id)
        .bind(plan.cadence.as_str())
        .bind(DeliveryKind::Digest.priority())
        .bind(plan.now)
        .bind(plan.expires_at)
        .bind(plan.slot_at)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        // CROSS JOIN fixes the join order on SQLite, which has no statistics for the
        // temporary table: readers, then their subscriptions, then each window's articles.
        let articles = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO delivery_articles (delivery_id, subscriber_id, article_id, region_slug)
             SELECT {delivery_id}, p.subscriber_id, ar.article_id, ar.region_slug
             FROM {readers_table} p
             CROSS JOIN subscriptions sub
             CROSS JOIN article_regions ar
             WHERE sub.subscriber_id = p.subscriber_id AND sub.cadence = $1
               AND ar.region_slug = sub.region_slug
               AND ar.added_at > p.window_start AND ar.added_at <= $2
             ON CONFLICT (subscriber_id, article_id) DO NOTHING"
        )))
        .bind(plan.cadence.as_str())
        .bind(plan.now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        let (expected,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT CAST(COALESCE(SUM(articles), 0) AS BIGINT) FROM {readers_table}"
        )))
        .fetch_one(&mut **tx)
        .await?;
        if self.backend == Backend::Sqlite {
            sqlx::query("DELETE FROM temp.plan_readers")
                .execute(&mut **tx)
                .await?;
        }
        Ok((deliveries, articles, expected as u64))
    }

    /// Breaking articles stored since `since`, oldest first.
    pub async fn breaking_articles_since(&self, since: i64) -> Result<Vec<BreakingArticle>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
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
    pub async fn alert_zones(&self, article_id: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT s.timezone FROM subscribers s
             JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.cadence = 'alert'
             JOIN article_regions ar ON ar.region_slug = sub.region_slug AND ar.article_id = $1
             WHERE s.state = 'confirmed'
               AND NOT EXISTS (SELECT 1 FROM delivery_articles da
                               WHERE da.subscriber_id = s.id AND da.article_id = $1)
             ORDER BY s.timezone",
        )
        .bind(article_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(z,)| z).collect())
    }

    /// Queues one article's alert for the confirmed alert readers of one zone who follow
    /// one of its regions and have not had it (as an alert or in a digest).
    pub async fn plan_alert(&self, plan: &AlertPlan<'_>) -> Result<PlanSummary> {
        let mut tx = self.begin_write().await?;
        let slot_key = format!("alert:{}", plan.article_id);
        sqlx::query(
            "INSERT INTO editions (slot_key, kind, cadence, planned_at, slot_at)
             VALUES ($1, 'alert', 'alert', $2, $2) ON CONFLICT (slot_key) DO NOTHING",
        )
        .bind(&slot_key)
        .bind(plan.now)
        .execute(&mut *tx)
        .await?;
        let (edition_id,): (i64,) = sqlx::query_as("SELECT id FROM editions WHERE slot_key = $1")
            .bind(&slot_key)
            .fetch_one(&mut *tx)
            .await?;
        let deliveries = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority, state,
                 attempts, message_id, next_attempt_at, expires_at, created_at, updated_at,
                 slot_at, window_start)
             SELECT $1, s.id, 'alert', 'alert', $2, 'queued', 0, {rand}, $3, $4, $5, $5, $5, $5
             FROM subscribers s
             WHERE s.state = 'confirmed' AND s.timezone = $6
               AND EXISTS (SELECT 1 FROM subscriptions sub
                           JOIN article_regions ar ON ar.region_slug = sub.region_slug
                           WHERE sub.subscriber_id = s.id AND sub.cadence = 'alert'
                             AND ar.article_id = $7)
               AND NOT EXISTS (SELECT 1 FROM delivery_articles da
                               WHERE da.subscriber_id = s.id AND da.article_id = $7)
             ON CONFLICT (subscriber_id, edition_id) DO NOTHING",
            rand = self.random_hex_sql()
        )))
        .bind(edition_id)
        .bind(DeliveryKind::Alert.priority())
        .bind(plan.release_at)
        .bind(plan.expires_at)
        .bind(plan.now)
        .bind(plan.zone)
        .bind(plan.article_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let articles = sqlx::query(
            "INSERT INTO delivery_articles (delivery_id, subscriber_id, article_id, region_slug)
             SELECT d.id, d.subscriber_id, $2,
                    (SELECT MIN(sub.region_slug) FROM subscriptions sub
                     JOIN article_regions ar ON ar.region_slug = sub.region_slug
                     WHERE sub.subscriber_id = d.subscriber_id AND sub.cadence = 'alert'
                       AND ar.article_id = $2)
             FROM deliveries d
             WHERE d.edition_id = $1 AND d.state = 'queued'
               AND NOT EXISTS (SELECT 1 FROM delivery_articles x
                               WHERE x.subscriber_id = d.subscriber_id AND x.delivery_id = d.id)
             ON CONFLICT (subscriber_id, article_id) DO NOTHING",
        )
        .bind(edition_id)
        .bind(plan.article_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let empty = self.drop_empty_deliveries(&mut tx, edition_id).await?;
        tx.commit().await?;
        Ok(PlanSummary {
            edition_id,
            deliveries: deliveries.saturating_sub(empty),
            articles,
            recipients: Vec::new(),
        })
    }

    /// Removes rows of an edition that ended up with no article (a concurrent planner
    /// placed them all first). Returns how many.
    pub(super) async fn drop_empty_deliveries(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        edition_id: i64,
    ) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM deliveries WHERE edition_id = $1 AND state = 'queued'
               AND NOT EXISTS (SELECT 1 FROM delivery_articles da
                               WHERE da.subscriber_id = deliveries.subscriber_id
                                 AND da.delivery_id = deliveries.id)",
        )
        .bind(edition_id)
        .execute(&mut **tx)
        .await?
        .rows_affected())
    }

    /// Marks an article as breaking news (its alerts are planned on the next pass).
    pub async fn mark_breaking(&self, article_id: i64) -> Result<()> {
        sqlx::query("UPDATE articles SET breaking = 1 WHERE id = $1")
            .bind(article_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The id of the article with this link, if stored.
    pub async fn article_id_by_link(&self, link: &str) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM articles WHERE link = $1")
            .bind(link)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(id,)| id))
    }

    /// (reader, slot instant) of every scheduled digest row, for audits and tests.
    pub async fn delivery_slots(&self) -> Result<Vec<(i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT d.subscriber_id, d.slot_at FROM deliveries d
             JOIN editions e ON e.id = d.edition_id
             WHERE d.kind = 'digest' AND e.timezone IS NOT NULL ORDER BY d.subscriber_id, d.slot_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Forgets the scheduler's mark, as a daemon starting on an empty state would see it.
    pub async fn reset_planner_mark(&self) -> Result<()> {
        sqlx::query("DELETE FROM planner_state WHERE name = 'last_run'")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Commits, or on a dry run lists the recipients and rolls everything back.
    pub(super) async fn finish_plan(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        edition_id: i64,
        dry_run: bool,
    ) -> Result<Vec<(String, i64)>> {
        if !dry_run {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let recipients = sqlx::query_as(
            "SELECT s.email, COUNT(*) FROM deliveries d
             JOIN subscribers s ON s.id = d.subscriber_id
             JOIN delivery_articles da ON da.subscriber_id = d.subscriber_id AND da.delivery_id = d.id
             WHERE d.edition_id = $1 GROUP BY s.email ORDER BY s.email",
        )
        .bind(edition_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(recipients)
    }
}
