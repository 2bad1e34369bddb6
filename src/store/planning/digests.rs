//! The machinery every digest plan shares, scheduled or manual: the temporary tables of
//! one plan's readers, their content groups, and the writes that queue one edition.

use sqlx::AssertSqlSafe;

use super::Tx;
use crate::domain::{
    Cadence, DeliveryKind, EditionId, RegionSlug, SubscriberId, Timestamp, Timezone, Transition,
};
use crate::store::sponsors::SPONSOR_ORDER;
use crate::store::{
    Backend, DryRun, PlanSummary, REGION_STORY_ORDER, Result, Store, decode, states,
};

/// The PostgreSQL advisory lock key planners hold while they plan ("herald" in ASCII).
const PLANNER_LOCK: i64 = 0x6865_7261_6c64;

/// One edition's digests, for the readers already in the `plan_readers` table.
#[derive(Debug, Clone)]
pub(super) struct DigestBatch<'a> {
    /// The edition (new in this transaction).
    pub edition_id: EditionId,
    /// The readers' cadence: whose subscriptions count.
    pub cadence: Cadence,
    /// A manual send carries one region (its window includes its start); a scheduled
    /// slot carries every region the reader follows at the cadence.
    pub region: Option<&'a RegionSlug>,
    /// The instant the digests belong to (the next window starts there).
    pub slot_at: Timestamp,
    /// Now: articles up to now count, rows become due now.
    pub now: Timestamp,
    /// When the digests stop being worth sending.
    pub expires_at: Timestamp,
    /// The readers' zone, when they share one (a scheduled slot); a manual send's
    /// readers are in many.
    pub zone: Option<Timezone>,
}

impl Store {
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
                 reused           INTEGER NOT NULL DEFAULT 0,
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
        // Each content's stories ranked: breaking first, then each region's own order
        // (`regions.story_order`), the regions taking turns so that a reader of several
        // sees the top of each. Only the first `max_stories` go out; the rest are counted
        // per region and stay unsent, so the reader's next digest can carry them.
        self.temp_table(
            tx,
            "plan_ranked",
            "contents_id BIGINT NOT NULL,
             article_id  BIGINT NOT NULL,
             region_slug TEXT NOT NULL,
             position    BIGINT NOT NULL,
             PRIMARY KEY (contents_id, article_id)",
        )
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO plan_ranked (contents_id, article_id, region_slug, position)
             SELECT x.pc_id, x.article_id, x.region_slug,
                    ROW_NUMBER() OVER (PARTITION BY x.pc_id
                                       ORDER BY x.breaking DESC, x.region_rank, x.region_slug) - 1
             FROM (SELECT pc.id AS pc_id, c.article_id, c.region_slug, a.breaking,
                          ROW_NUMBER() OVER (
                              PARTITION BY pc.id, c.region_slug
                              ORDER BY {REGION_STORY_ORDER}) AS region_rank
                   FROM plan_contents pc
                   JOIN plan_candidates c ON c.group_id = pc.group_id
                   JOIN articles a ON a.id = c.article_id
                   JOIN article_regions ar ON ar.article_id = c.article_id
                                          AND ar.region_slug = c.region_slug
                   LEFT JOIN regions r ON r.slug = c.region_slug
                   WHERE {kept}) x"
        )))
        .execute(&mut **tx)
        .await?;
        let cap = self.max_stories.map_or(i64::MAX, i64::from);
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE plan_contents SET
                 articles = (SELECT COUNT(*) FROM plan_ranked k
                             WHERE k.contents_id = plan_contents.id AND k.position < {cap}),
                 articles_through = (SELECT MAX(k.article_id) FROM plan_ranked k
                                     WHERE k.contents_id = plan_contents.id
                                       AND k.position < {cap})"
        )))
        .execute(&mut **tx)
        .await?;
        // A reader who had every candidate gets no email, nor does an empty group.
        sqlx::query("DELETE FROM plan_contents WHERE articles = 0 OR readers = 0")
            .execute(&mut **tx)
            .await?;
        // A content of this edition with the same key (planned by an earlier chunk of
        // the same slot) is the same content: its readers share it.
        let group_key = "g.regions || '|' || CAST(g.window_start AS TEXT) || '|' || pc.excluded";
        let find_content = format!(
            "UPDATE plan_contents SET content_id = (
                 SELECT c.id FROM contents c, plan_contents pc, plan_groups g
                 WHERE pc.id = plan_contents.id AND g.id = pc.group_id
                   AND c.edition_id = $1 AND c.group_key = {group_key})
             WHERE content_id IS NULL"
        );
        sqlx::query(AssertSqlSafe(find_content.clone()))
            .bind(batch.edition_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE plan_contents SET reused = 1 WHERE content_id IS NOT NULL")
            .execute(&mut **tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO contents (edition_id, group_key)
             SELECT $1, {group_key} FROM plan_contents pc JOIN plan_groups g ON g.id = pc.group_id
             WHERE pc.content_id IS NULL"
        )))
        .bind(batch.edition_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(AssertSqlSafe(find_content))
            .bind(batch.edition_id)
            .execute(&mut **tx)
            .await?;
        let contents = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO content_articles (content_id, article_id, region_slug, position)
             SELECT pc.content_id, k.article_id, k.region_slug, k.position
             FROM plan_contents pc JOIN plan_ranked k ON k.contents_id = pc.id
             WHERE pc.reused = 0 AND k.position < {cap}"
        )))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO content_overflow (content_id, region_slug, stories)
             SELECT pc.content_id, k.region_slug, COUNT(*)
             FROM plan_contents pc JOIN plan_ranked k ON k.contents_id = pc.id
             WHERE pc.reused = 0 AND k.position >= {cap}
             GROUP BY pc.content_id, k.region_slug"
        )))
        .execute(&mut **tx)
        .await?;

        // One delivery per reader with something to read.
        let deliveries = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority, state,
                 attempts, message_id, next_attempt_at, expires_at, created_at, updated_at,
                 slot_at, window_start, content_id, articles_through)
             SELECT $1, p.subscriber_id, 'digest', $2, $3, {queued}, 0, {rand}, $4, $5, $4, $4,
                    $6, p.window_start, pc.content_id, pc.articles_through
             FROM plan_readers p
             CROSS JOIN plan_groups g
             LEFT JOIN plan_personal pp ON pp.subscriber_id = p.subscriber_id
             CROSS JOIN plan_contents pc
             WHERE g.window_start = p.window_start AND g.regions = p.regions
               AND pc.group_id = g.id AND pc.excluded = COALESCE(pp.excluded, '')",
            queued = states::target(Transition::Plan),
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
        self.assign_sponsors(tx, batch).await?;
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
            edition_id: Some(batch.edition_id),
            deliveries,
            articles: articles as u64,
            content_rows: contents,
            recipients: Vec::new(),
            zones: Vec::new(),
        })
    }

    /// Records on each digest of the edition the sponsor booking it carries: of the
    /// bookings running on the digest's date in the reader's zone, for a region the
    /// reader follows at this cadence or one above it, the most specific region's, then
    /// the earliest. Nothing to do (one cheap look-up) when no booking runs then.
    async fn assign_sponsors(&self, tx: &mut Tx, batch: &DigestBatch<'_>) -> Result<()> {
        let zones: Vec<Timezone> = match batch.zone {
            Some(zone) => vec![zone],
            None => {
                let names: Vec<(String,)> = sqlx::query_as(
                    "SELECT DISTINCT s.timezone FROM deliveries d
                     JOIN subscribers s ON s.id = d.subscriber_id WHERE d.edition_id = $1",
                )
                .bind(batch.edition_id)
                .fetch_all(&mut **tx)
                .await?;
                names
                    .into_iter()
                    .map(|(name,)| decode("subscribers", "timezone", "timezone", &name))
                    .collect::<Result<_>>()?
            }
        };
        let dates: Vec<(Timezone, String)> = zones
            .into_iter()
            .map(|zone| (zone, batch.slot_at.local_date(zone).to_string()))
            .collect();
        let (Some(first), Some(last)) = (
            dates.iter().map(|(_, d)| d).min(),
            dates.iter().map(|(_, d)| d).max(),
        ) else {
            return Ok(());
        };
        let (running,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM sponsors WHERE starts_on <= $1 AND ends_on >= $2")
                .bind(last)
                .bind(first)
                .fetch_one(&mut **tx)
                .await?;
        if running == 0 {
            return Ok(());
        }
        self.temp_table(
            tx,
            "plan_sponsor_scope",
            "region_slug TEXT NOT NULL,
             booked_slug TEXT NOT NULL,
             depth       BIGINT NOT NULL,
             PRIMARY KEY (region_slug, booked_slug)",
        )
        .await?;
        for (region, reach) in self.sponsor_scope().await? {
            for (booked, depth) in reach {
                sqlx::query(
                    "INSERT INTO plan_sponsor_scope (region_slug, booked_slug, depth)
                     VALUES ($1, $2, $3)",
                )
                .bind(region.as_str())
                .bind(booked.as_str())
                .bind(depth)
                .execute(&mut **tx)
                .await?;
            }
        }
        // A scheduled slot's readers share its zone; a manual send's are updated zone
        // by zone, each on its own date. Only this batch's readers (`plan_readers`): a
        // slot planned in chunks leaves the rows of earlier chunks, perhaps already out,
        // alone.
        let (zone_filter, region_param) = match batch.zone {
            Some(_) => ("", "$4"),
            None => (
                "AND deliveries.subscriber_id IN (SELECT id FROM subscribers WHERE timezone = $4)",
                "$5",
            ),
        };
        let region_filter = match batch.region {
            Some(_) => format!("AND sub.region_slug = {region_param}"),
            None => String::new(),
        };
        for (zone, date) in &dates {
            let sql = format!(
                "UPDATE deliveries SET sponsor_id = (
                     SELECT sp.id FROM subscriptions sub
                     JOIN plan_sponsor_scope sc ON sc.region_slug = sub.region_slug
                     JOIN sponsor_regions sr ON sr.region_slug = sc.booked_slug
                     JOIN sponsors sp ON sp.id = sr.sponsor_id
                     WHERE sub.subscriber_id = deliveries.subscriber_id AND sub.cadence = $2
                       AND sp.starts_on <= $3 AND sp.ends_on >= $3 {region_filter}
                     ORDER BY {SPONSOR_ORDER} LIMIT 1)
                 WHERE deliveries.edition_id = $1 {zone_filter}
                   AND deliveries.subscriber_id IN (SELECT subscriber_id FROM plan_readers)"
            );
            let mut update = sqlx::query(AssertSqlSafe(sql))
                .bind(batch.edition_id)
                .bind(batch.cadence.as_str())
                .bind(date);
            if batch.zone.is_none() {
                update = update.bind(zone.name());
            }
            if let Some(region) = batch.region {
                update = update.bind(region.as_str());
            }
            update.execute(&mut **tx).await?;
        }
        Ok(())
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

    /// Commits, or on a dry run lists the recipients (and how many readers each zone
    /// has among them) and rolls everything back.
    pub(super) async fn finish_plan(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        edition_id: EditionId,
        dry_run: bool,
    ) -> Result<DryRun> {
        if !dry_run {
            tx.commit().await?;
            return Ok(DryRun::default());
        }
        let rows: Vec<(SubscriberId, String, String, i64)> = sqlx::query_as(
            "SELECT s.id, s.email, s.timezone, COUNT(*) FROM deliveries d
             JOIN subscribers s ON s.id = d.subscriber_id
             JOIN content_articles ca ON ca.content_id = d.content_id
             WHERE d.edition_id = $1 GROUP BY s.id, s.email, s.timezone ORDER BY s.email",
        )
        .bind(edition_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        let mut dry = DryRun::default();
        let mut zones = std::collections::BTreeMap::<&'static str, (Timezone, i64)>::new();
        for (id, email, zone, articles) in rows {
            let zone: Timezone = decode("subscribers", id, "timezone", &zone)?;
            zones.entry(zone.name()).or_insert((zone, 0)).1 += 1;
            dry.recipients
                .push((decode("subscribers", id, "email", &email)?, articles));
        }
        dry.zones = zones.into_values().collect();
        Ok(dry)
    }

    /// Begins a planning transaction: a write transaction that no other planner runs
    /// beside, and on PostgreSQL without JIT.
    ///
    /// Planners leave out the articles a reader already received, which only holds if
    /// each sees every earlier plan committed: SQLite's write lock gives that; on
    /// PostgreSQL a transaction-scoped advisory lock does, across daemons. Planning
    /// statements are costly enough on paper to trigger JIT compilation with inlining and
    /// optimisation, which took 1.2 s per statement at a million readers while their
    /// execution is bound by inserts that JIT does not speed up.
    pub(super) async fn begin_plan(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
            // A zone's readers are grouped and joined by hashing; with the default 4 MB
            // those hashes spilled to disk at 100,000 readers.
            sqlx::query("SET LOCAL work_mem = '64MB'")
                .execute(&mut *tx)
                .await?;
            // The function returns `void`, which the Any driver cannot carry back.
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS planner_lock")
                .bind(PLANNER_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// A random 128-bit hex string made by the database, for Message-IDs planned in SQL.
    pub(super) fn random_hex_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "lower(hex(randomblob(16)))",
            Backend::Postgres => "replace(gen_random_uuid()::text, '-', '')",
        }
    }
}
