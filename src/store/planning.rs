//! Set-based planning of scheduled digests and breaking alerts.
//!
//! Every plan is a handful of statements over the whole slot, never one round trip per
//! reader. A digest's articles are stored once per content group (`contents` and
//! `content_articles`), and each delivery points at its content: readers who follow the
//! same regions from the same window start share one. Unique keys make planning
//! idempotent across runs and daemons: an edition per slot (`editions.slot_key`), one
//! email per reader per edition, one content per group. Each article reaches a reader at
//! most once because planners run one at a time (SQLite's write lock; on PostgreSQL a
//! transaction-scoped advisory lock) and leave out what the reader already received.

use sqlx::AssertSqlSafe;

use super::{Backend, PlanSummary, Result, Store};
use crate::domain::{Cadence, DeliveryKind, RegionSlug};

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

/// One edition's digests, for the readers already in the `plan_readers` table.
#[derive(Debug, Clone)]
pub(super) struct DigestBatch<'a> {
    /// The edition (new in this transaction).
    pub edition_id: i64,
    /// The readers' cadence: whose subscriptions count.
    pub cadence: Cadence,
    /// A manual send carries one region (its window includes its start); a scheduled
    /// slot carries every region the reader follows at the cadence.
    pub region: Option<&'a RegionSlug>,
    /// The instant the digests belong to (the next window starts there).
    pub slot_at: i64,
    /// Now: articles up to now count, rows become due now.
    pub now: i64,
    /// When the digests stop being worth sending.
    pub expires_at: i64,
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
        self.create_plan_readers(&mut tx).await?;
        // Window start: the reader's previous digest of this cadence (cadences other than
        // `alert` are only ever digests, so the index answers MAX alone), else one period
        // back or the subscription if older. `regions` is what the reader follows at this
        // cadence; `articles_through` the highest article id in anything they received.
        sqlx::query(
            "INSERT INTO plan_readers (subscriber_id, window_start, regions, articles_through)
             SELECT s.id,
                    COALESCE(
                        (SELECT MAX(d.slot_at) FROM deliveries d
                         WHERE d.subscriber_id = s.id AND d.cadence = $1),
                        CASE WHEN MIN(sub.created_at) < $2 THEN MIN(sub.created_at) ELSE $2 END),
                    CASE WHEN COUNT(*) = 1 THEN MIN(sub.region_slug) ELSE
                        (SELECT string_agg(x.region_slug, ',' ORDER BY x.region_slug)
                         FROM subscriptions x WHERE x.subscriber_id = s.id AND x.cadence = $1)
                    END,
                    (SELECT MAX(d.articles_through) FROM deliveries d
                     WHERE d.subscriber_id = s.id AND d.articles_through IS NOT NULL)
             FROM subscribers s
             JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.cadence = $1
             WHERE s.timezone = $3 AND s.state = 'confirmed'
             GROUP BY s.id",
        )
        .bind(plan.cadence.as_str())
        .bind(plan.slot_at - plan.period)
        .bind(plan.zone)
        .execute(&mut *tx)
        .await?;
        let summary = self
            .queue_digests(
                &mut tx,
                &DigestBatch {
                    edition_id,
                    cadence: plan.cadence,
                    region: None,
                    slot_at: plan.slot_at,
                    now: plan.now,
                    expires_at: plan.expires_at,
                },
            )
            .await?;
        let recipients = self.finish_plan(tx, edition_id, dry_run).await?;
        Ok(PlanSummary {
            recipients,
            ..summary
        })
    }

    /// Creates (or empties) the temporary table of one plan's readers: who, where their
    /// window starts, the regions they follow at the plan's cadence (sorted, comma
    /// separated) and the highest article id among everything they were sent before.
    pub(super) async fn create_plan_readers(&self, tx: &mut Tx) -> Result<()> {
        self.temp_table(
            tx,
            "plan_readers",
            "subscriber_id    BIGINT NOT NULL PRIMARY KEY,
             window_start     BIGINT NOT NULL,
             regions          TEXT NOT NULL,
             articles_through BIGINT",
        )
        .await
    }

    /// Queues the digests of one edition for the readers in `plan_readers`, storing each
    /// content once per group of readers who get the same articles.
    ///
    /// A group is the readers with the same regions and window start; its candidates
    /// are that window's articles (each once, under the first of its regions). A reader
    /// can have had one of them only in an earlier email whose highest article id is at
    /// least the smallest candidate's: for the few such readers the planner looks up,
    /// article by article, which candidates they received, and readers who received the
    /// same ones share a content that leaves those out. Everyone else gets the group's
    /// content. The writes are one delivery per reader plus the contents, a handful of
    /// statements over the whole edition whatever the number of readers.
    pub(super) async fn queue_digests(
        &self,
        tx: &mut Tx,
        batch: &DigestBatch<'_>,
    ) -> Result<PlanSummary> {
        let pg = self.backend == Backend::Postgres;
        if pg {
            // Temporary tables have no statistics until asked; without them the planner
            // guesses a few thousand readers and picks nested loops over a hundred thousand.
            sqlx::query("ANALYZE plan_readers")
                .execute(&mut **tx)
                .await?;
        }
        let id_column = match self.backend {
            Backend::Sqlite => "id INTEGER PRIMARY KEY",
            Backend::Postgres => "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        };
        self.temp_table(
            tx,
            "plan_groups",
            &format!(
                "{id_column},
                 window_start  BIGINT NOT NULL,
                 regions       TEXT NOT NULL,
                 reader        BIGINT NOT NULL,
                 readers       BIGINT NOT NULL,
                 first_article BIGINT,
                 UNIQUE (window_start, regions)"
            ),
        )
        .await?;
        sqlx::query(
            "INSERT INTO plan_groups (window_start, regions, reader, readers)
             SELECT window_start, regions, MIN(subscriber_id), COUNT(*) FROM plan_readers
             GROUP BY window_start, regions",
        )
        .execute(&mut **tx)
        .await?;
        // Each group's candidates, from the subscriptions of one of its readers (all of
        // them follow the same regions). An article in two of those regions is shown once.
        self.temp_table(
            tx,
            "plan_candidates",
            "group_id    BIGINT NOT NULL,
             article_id  BIGINT NOT NULL,
             region_slug TEXT NOT NULL,
             PRIMARY KEY (group_id, article_id)",
        )
        .await?;
        let region_filter = match batch.region {
            Some(_) => "AND sub.region_slug = $3",
            None => "",
        };
        // A scheduled window starts after the previous digest's slot; a manual send's
        // window includes its start.
        let window_op = if batch.region.is_some() { ">=" } else { ">" };
        let mut candidates = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO plan_candidates (group_id, article_id, region_slug)
             SELECT g.id, ar.article_id, MIN(ar.region_slug)
             FROM plan_groups g
             JOIN subscriptions sub ON sub.subscriber_id = g.reader AND sub.cadence = $1
             JOIN article_regions ar ON ar.region_slug = sub.region_slug
             WHERE ar.added_at {window_op} g.window_start AND ar.added_at <= $2 {region_filter}
             GROUP BY g.id, ar.article_id"
        )))
        .bind(batch.cadence.as_str())
        .bind(batch.now);
        if let Some(region) = batch.region {
            candidates = candidates.bind(region.as_str());
        }
        candidates.execute(&mut **tx).await?;
        sqlx::query(
            "UPDATE plan_groups SET first_article =
                 (SELECT MIN(c.article_id) FROM plan_candidates c WHERE c.group_id = plan_groups.id)",
        )
        .execute(&mut **tx)
        .await?;

        // Candidates each reader already had. Only readers who were sent an article with
        // an id at least the group's smallest candidate can have had one; for them each
        // candidate up to that id is looked up in their earlier emails from that id on.
        self.temp_table(
            tx,
            "plan_received",
            "subscriber_id BIGINT NOT NULL,
             group_id      BIGINT NOT NULL,
             article_id    BIGINT NOT NULL,
             PRIMARY KEY (subscriber_id, article_id)",
        )
        .await?;
        // CROSS JOIN fixes the join order on SQLite, which has no statistics for the
        // temporary tables: readers first, each looked up in the small tables.
        sqlx::query(
            "INSERT INTO plan_received (subscriber_id, group_id, article_id)
             SELECT p.subscriber_id, g.id, c.article_id
             FROM plan_readers p
             CROSS JOIN plan_groups g
             CROSS JOIN plan_candidates c
             WHERE g.window_start = p.window_start AND g.regions = p.regions
               AND p.articles_through >= g.first_article
               AND c.group_id = g.id AND c.article_id <= p.articles_through
               AND EXISTS (SELECT 1 FROM deliveries d
                           JOIN content_articles ca ON ca.content_id = d.content_id
                           WHERE d.subscriber_id = p.subscriber_id
                             AND d.articles_through >= c.article_id
                             AND ca.article_id = c.article_id)",
        )
        .execute(&mut **tx)
        .await?;
        self.temp_table(
            tx,
            "plan_personal",
            "subscriber_id BIGINT NOT NULL PRIMARY KEY,
             group_id      BIGINT NOT NULL,
             excluded      TEXT NOT NULL",
        )
        .await?;
        sqlx::query(
            "INSERT INTO plan_personal (subscriber_id, group_id, excluded)
             SELECT subscriber_id, MIN(group_id),
                    string_agg(CAST(article_id AS TEXT), ',' ORDER BY article_id)
             FROM plan_received GROUP BY subscriber_id",
        )
        .execute(&mut **tx)
        .await?;

        // One content per group for the readers who had none of its candidates, and one
        // per set of candidates left out for the others; `reader` is one who had that set.
        let id_column = match self.backend {
            Backend::Sqlite => "id INTEGER PRIMARY KEY",
            Backend::Postgres => "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        };
        self.temp_table(
            tx,
            "plan_contents",
            &format!(
                "{id_column},
                 group_id         BIGINT NOT NULL,
                 excluded         TEXT NOT NULL,
                 reader           BIGINT,
                 readers          BIGINT NOT NULL,
                 articles         BIGINT,
                 articles_through BIGINT,
                 content_id       BIGINT,
                 UNIQUE (group_id, excluded)"
            ),
        )
        .await?;
        sqlx::query(
            "INSERT INTO plan_contents (group_id, excluded, reader, readers)
             SELECT g.id, '', NULL,
                    g.readers - (SELECT COUNT(*) FROM plan_personal pp WHERE pp.group_id = g.id)
             FROM plan_groups g WHERE g.first_article IS NOT NULL",
        )
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO plan_contents (group_id, excluded, reader, readers)
             SELECT group_id, excluded, MIN(subscriber_id), COUNT(*) FROM plan_personal
             GROUP BY group_id, excluded",
        )
        .execute(&mut **tx)
        .await?;
        let kept = "NOT EXISTS (SELECT 1 FROM plan_received r
                                WHERE r.subscriber_id = pc.reader AND r.article_id = c.article_id)";
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE plan_contents SET
                 articles = (SELECT COUNT(*) FROM plan_candidates c, plan_contents pc
                             WHERE pc.id = plan_contents.id AND c.group_id = pc.group_id AND {kept}),
                 articles_through = (SELECT MAX(c.article_id) FROM plan_candidates c, plan_contents pc
                                     WHERE pc.id = plan_contents.id AND c.group_id = pc.group_id
                                       AND {kept})"
        )))
        .execute(&mut **tx)
        .await?;
        // A reader who had every candidate gets no email, nor does an empty group.
        sqlx::query("DELETE FROM plan_contents WHERE articles = 0 OR readers = 0")
            .execute(&mut **tx)
            .await?;
        let group_key = "g.regions || '|' || CAST(g.window_start AS TEXT) || '|' || pc.excluded";
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO contents (edition_id, group_key)
             SELECT $1, {group_key} FROM plan_contents pc JOIN plan_groups g ON g.id = pc.group_id"
        )))
        .bind(batch.edition_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE plan_contents SET content_id = (
                 SELECT c.id FROM contents c, plan_contents pc, plan_groups g
                 WHERE pc.id = plan_contents.id AND g.id = pc.group_id
                   AND c.edition_id = $1 AND c.group_key = {group_key})"
        )))
        .bind(batch.edition_id)
        .execute(&mut **tx)
        .await?;
        let contents = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO content_articles (content_id, article_id, region_slug)
             SELECT pc.content_id, c.article_id, c.region_slug
             FROM plan_contents pc JOIN plan_candidates c ON c.group_id = pc.group_id
             WHERE {kept}"
        )))
        .execute(&mut **tx)
        .await?
        .rows_affected();

        // One delivery per reader with something to read.
        let deliveries = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority, state,
                 attempts, message_id, next_attempt_at, expires_at, created_at, updated_at,
                 slot_at, window_start, content_id, articles_through)
             SELECT $1, p.subscriber_id, 'digest', $2, $3, 'queued', 0, {rand}, $4, $5, $4, $4,
                    $6, p.window_start, pc.content_id, pc.articles_through
             FROM plan_readers p
             CROSS JOIN plan_groups g
             LEFT JOIN plan_personal pp ON pp.subscriber_id = p.subscriber_id
             CROSS JOIN plan_contents pc
             WHERE g.window_start = p.window_start AND g.regions = p.regions
               AND pc.group_id = g.id AND pc.excluded = COALESCE(pp.excluded, '')",
            rand = self.random_hex_sql()
        )))
        .bind(batch.edition_id)
        .bind(batch.cadence.as_str())
        .bind(DeliveryKind::Digest.priority())
        .bind(batch.now)
        .bind(batch.expires_at)
        .bind(batch.slot_at)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        let (articles,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(readers * articles), 0) AS BIGINT) FROM plan_contents",
        )
        .fetch_one(&mut **tx)
        .await?;
        if !pg {
            // Temporary tables live as long as the connection: give the space back.
            sqlx::query("DELETE FROM plan_readers")
                .execute(&mut **tx)
                .await?;
        }
        Ok(PlanSummary {
            edition_id: batch.edition_id,
            deliveries,
            articles: articles as u64,
            content_rows: contents,
            recipients: Vec::new(),
        })
    }

    /// Creates an empty temporary table for this transaction. On SQLite temporary tables
    /// belong to the connection, so one left by an earlier plan is emptied instead.
    async fn temp_table(&self, tx: &mut Tx, name: &str, columns: &str) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::query(AssertSqlSafe(format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {name} ({columns})"
                )))
                .execute(&mut **tx)
                .await?;
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {name}")))
                    .execute(&mut **tx)
                    .await?;
            }
            Backend::Postgres => {
                sqlx::query(AssertSqlSafe(format!(
                    "CREATE TEMP TABLE {name} ({columns}) ON COMMIT DROP"
                )))
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
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
        Ok(rows.into_iter().map(|(z,)| z).collect())
    }

    /// Queues one article's alert for the confirmed alert readers of one zone who follow
    /// one of its regions and have not had it (as an alert or in a digest). The alert's
    /// content is stored once per region it is shown under (the first of the reader's
    /// alert regions that carries it), shared by the article's alerts in every zone.
    pub async fn plan_alert(&self, plan: &AlertPlan<'_>) -> Result<PlanSummary> {
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
        let (edition_id,): (i64,) = sqlx::query_as("SELECT id FROM editions WHERE slot_key = $1")
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
        .bind(plan.zone)
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
             SELECT $1, r.subscriber_id, 'alert', 'alert', $4, 'queued', 0, {rand}, $5, $6,
                    $7, $7, $7, $7, c.id, $2
             FROM ({readers}) r
             JOIN contents c ON c.edition_id = $1 AND c.group_key = r.region_slug
             WHERE true
             ON CONFLICT (subscriber_id, edition_id) DO NOTHING",
            rand = self.random_hex_sql()
        )))
        .bind(edition_id)
        .bind(plan.article_id)
        .bind(plan.zone)
        .bind(DeliveryKind::Alert.priority())
        .bind(plan.release_at)
        .bind(plan.expires_at)
        .bind(plan.now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(PlanSummary {
            edition_id,
            deliveries,
            articles: deliveries,
            content_rows: 0,
            recipients: Vec::new(),
        })
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
             JOIN content_articles ca ON ca.content_id = d.content_id
             WHERE d.edition_id = $1 GROUP BY s.email ORDER BY s.email",
        )
        .bind(edition_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(recipients)
    }
}

#[cfg(test)]
mod tests {
    //! The cases where a reader could get an article twice without the content groups'
    //! exclusions, and rows planned before content groups existed.

    use std::collections::HashMap;

    use super::*;
    use crate::domain::Email;
    use crate::store::testing::{send_all_due, stores, stores_migrated_to};
    use crate::store::{FeedItem, NewSubscriber};

    const DAY: i64 = 86_400;
    /// Monday 2026-11-30 07:00 UTC: the daily and the weekly slot fall on it.
    const MONDAY: i64 = 1_796_022_000;

    async fn reader(store: &Store, email: &str, subs: &[(&str, Cadence)]) -> i64 {
        store
            .add_subscriber(
                &NewSubscriber {
                    email: Email::parse(email).unwrap(),
                    regions: subs.iter().map(|(r, c)| (r.parse().unwrap(), *c)).collect(),
                    timezone: "UTC".parse().unwrap(),
                    confirmed: true,
                },
                0,
            )
            .await
            .unwrap();
        let list = store.list_subscribers().await.unwrap();
        list.iter().find(|r| r.email == email).unwrap().id
    }

    /// Stores the story `key` in `region` at `at` (the same link in several regions is one
    /// article); returns its id.
    async fn story(store: &Store, region: &str, key: &str, at: i64) -> i64 {
        let slug: RegionSlug = region.parse().unwrap();
        let feed = store
            .feed_id(&slug, &format!("file://{region}.xml"))
            .await
            .unwrap();
        let link = format!("https://news.test.example/{key}");
        store
            .record_feed_items(
                feed,
                &slug,
                &[FeedItem {
                    guid: format!("{region}-{key}"),
                    link: link.clone(),
                    title: format!("Story {key}"),
                    summary: String::new(),
                    category: String::new(),
                    published_at: Some(at),
                    breaking: false,
                }],
                at,
            )
            .await
            .unwrap();
        store.article_id_by_link(&link).await.unwrap().unwrap()
    }

    async fn plan_slot(store: &Store, cadence: Cadence, slot_at: i64, now: i64) -> PlanSummary {
        let key = format!("{cadence}:UTC:{slot_at}");
        store
            .plan_slot_digest(
                &SlotPlan {
                    slot_key: &key,
                    cadence,
                    zone: "UTC",
                    slot_at,
                    period: cadence.period().num_seconds(),
                    now,
                    expires_at: now + DAY,
                },
                false,
            )
            .await
            .unwrap()
    }

    /// Sends everything due at `at`; returns each reader's articles, in email order.
    async fn deliver(store: &Store, at: i64) -> HashMap<i64, Vec<Vec<i64>>> {
        let claimed = send_all_due(store, 1_000, at).await;
        let mut out: HashMap<i64, Vec<Vec<i64>>> = HashMap::new();
        for d in claimed {
            out.entry(d.subscriber_id)
                .or_default()
                .push(d.articles.iter().map(|a| a.article_id).collect());
        }
        out
    }

    #[tokio::test]
    async fn an_article_in_regions_followed_at_two_cadences_reaches_a_reader_once() {
        for (backend, t) in stores().await {
            let store = &t.store;
            let both = reader(
                store,
                "both@example.org",
                &[("north", Cadence::Daily), ("south", Cadence::Weekly)],
            )
            .await;
            let weekly = reader(store, "weekly@example.org", &[("south", Cadence::Weekly)]).await;
            let shared = story(store, "north", "shared", MONDAY - 3_600).await;
            assert_eq!(
                story(store, "south", "shared", MONDAY - 3_000).await,
                shared
            );
            let only_south = story(store, "south", "south", MONDAY - 2_000).await;

            let daily = plan_slot(store, Cadence::Daily, MONDAY, MONDAY + 30).await;
            assert_eq!(
                (daily.deliveries, daily.content_rows),
                (1, 1),
                "{backend:?}"
            );
            let week = plan_slot(store, Cadence::Weekly, MONDAY, MONDAY + 40).await;
            // Both weekly readers follow the same region from the same start, but one had
            // the shared story in the daily digest: two contents, three rows in all.
            assert_eq!(week.deliveries, 2, "{backend:?}");
            assert_eq!(week.articles, 3);
            assert_eq!(week.content_rows, 3);

            let got = deliver(store, MONDAY + 60).await;
            let mut mine = got[&both].clone();
            mine.sort();
            assert_eq!(mine, vec![vec![shared], vec![only_south]], "{backend:?}");
            // Newest first within the region.
            assert_eq!(got[&weekly], vec![vec![only_south, shared]], "{backend:?}");
        }
    }

    #[tokio::test]
    async fn an_article_sent_in_a_digest_is_not_sent_again_as_an_alert() {
        for (backend, t) in stores().await {
            let store = &t.store;
            let id = reader(
                store,
                "d@example.org",
                &[("north", Cadence::Daily), ("south", Cadence::Alert)],
            )
            .await;
            let alert_only = reader(store, "a@example.org", &[("south", Cadence::Alert)]).await;
            let article = story(store, "north", "x", MONDAY - 3_600).await;
            plan_slot(store, Cadence::Daily, MONDAY, MONDAY + 30).await;
            assert_eq!(deliver(store, MONDAY + 60).await[&id], vec![vec![article]]);
            // The story reaches the south region later and turns out to be breaking.
            story(store, "south", "x", MONDAY + 600).await;
            store.mark_breaking(article).await.unwrap();
            assert_eq!(store.alert_zones(article).await.unwrap(), ["UTC"]);
            let alert = store
                .plan_alert(&AlertPlan {
                    article_id: article,
                    zone: "UTC",
                    release_at: MONDAY + 700,
                    expires_at: MONDAY + DAY,
                    now: MONDAY + 700,
                })
                .await
                .unwrap();
            assert_eq!(
                alert.deliveries, 1,
                "{backend:?}: only the reader who lacks it"
            );
            let got = deliver(store, MONDAY + 800).await;
            assert_eq!(got.keys().copied().collect::<Vec<_>>(), [alert_only]);
            assert!(store.alert_zones(article).await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn an_article_stored_after_the_slot_is_not_repeated_the_next_day() {
        for (backend, t) in stores().await {
            let store = &t.store;
            let first = reader(store, "one@example.org", &[("north", Cadence::Daily)]).await;
            let second = reader(store, "two@example.org", &[("north", Cadence::Daily)]).await;
            let before = story(store, "north", "before", MONDAY - 600).await;
            // Stored between the slot and the late plan: in today's digest, and inside
            // tomorrow's window too (it starts at today's slot).
            let late = story(store, "north", "late", MONDAY + 600).await;
            let today = plan_slot(store, Cadence::Daily, MONDAY, MONDAY + 1_200).await;
            assert_eq!(
                (today.deliveries, today.content_rows),
                (2, 2),
                "{backend:?}"
            );
            deliver(store, MONDAY + 1_300).await;
            let next = story(store, "north", "next", MONDAY + 7_200).await;
            let tomorrow = plan_slot(store, Cadence::Daily, MONDAY + DAY, MONDAY + DAY + 30).await;
            // Both readers had the late story: they share one content without it.
            assert_eq!(tomorrow.deliveries, 2, "{backend:?}");
            assert_eq!(tomorrow.content_rows, 1, "{backend:?}");
            let got = deliver(store, MONDAY + DAY + 60).await;
            assert_eq!(got[&first], vec![vec![next]], "{backend:?}");
            assert_eq!(got[&second], vec![vec![next]], "{backend:?}");
            let _ = (before, late);
        }
    }

    #[tokio::test]
    async fn rows_planned_before_content_groups_keep_their_articles() {
        for (backend, t) in stores_migrated_to(6).await {
            let store = &t.store;
            let id = reader(
                store,
                "old@example.org",
                &[("north", Cadence::Daily), ("south", Cadence::Weekly)],
            )
            .await;
            let older = story(store, "north", "older", MONDAY - 7_200).await;
            let newer = story(store, "north", "newer", MONDAY - 3_600).await;
            // A digest queued the old way: one placement row per (reader, article).
            let (edition,): (i64,) = sqlx::query_as(
                "INSERT INTO editions (slot_key, kind, cadence, planned_at, slot_at, timezone)
                 VALUES ('daily:UTC:old', 'digest', 'daily', $1, $1, 'UTC') RETURNING id",
            )
            .bind(MONDAY)
            .fetch_one(&store.pool)
            .await
            .unwrap();
            let (delivery,): (i64,) = sqlx::query_as(
                "INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority,
                     state, attempts, message_id, next_attempt_at, expires_at, created_at,
                     updated_at, slot_at, window_start)
                 VALUES ($1, $2, 'digest', 'daily', 2, 'queued', 0, 'f00d', $3, $4, $3, $3, $3, 0)
                 RETURNING id",
            )
            .bind(edition)
            .bind(id)
            .bind(MONDAY)
            .bind(MONDAY + DAY)
            .fetch_one(&store.pool)
            .await
            .unwrap();
            for article in [older, newer] {
                sqlx::query(
                    "INSERT INTO delivery_articles (delivery_id, subscriber_id, article_id,
                         region_slug) VALUES ($1, $2, $3, 'north')",
                )
                .bind(delivery)
                .bind(id)
                .bind(article)
                .execute(&store.pool)
                .await
                .unwrap();
            }
            store.migrate().await.unwrap();

            assert_eq!(
                deliver(store, MONDAY + 60).await[&id],
                vec![vec![newer, older]],
                "{backend:?}: the queued row still carries its articles"
            );
            // The older story reaches a region the reader follows weekly: already had.
            story(store, "south", "older", MONDAY + 600).await;
            let fresh = story(store, "south", "fresh", MONDAY + 700).await;
            let week = plan_slot(store, Cadence::Weekly, MONDAY + 7 * DAY, MONDAY + 7 * DAY).await;
            assert_eq!(week.deliveries, 1, "{backend:?}");
            assert_eq!(
                deliver(store, MONDAY + 7 * DAY + 60).await[&id],
                vec![vec![fresh]],
                "{backend:?}"
            );
        }
    }
}
