//! Feeds and articles: what ingest writes and what planning reads.

use sqlx::AssertSqlSafe;

use super::{REGION_STORY_ORDER, Result, Store};
use crate::domain::{ArticleId, FeedId, FeedItem, RegionSlug, Timestamp};

/// What one poll of one feed changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedCounts {
    /// Items seen for the first time in this feed.
    pub new: u64,
    /// Items whose title, summary or category changed.
    pub updated: u64,
    /// Items already stored as they are.
    pub unchanged: u64,
}

/// A stored article, as digests show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArticleRow {
    /// Row id.
    pub id: ArticleId,
    /// Link.
    pub link: String,
    /// Title.
    pub title: String,
    /// Summary.
    pub summary: String,
    /// Category.
    pub category: String,
    /// Publication time.
    pub published_at: Option<Timestamp>,
}

/// What ingest needs to know about a feed before polling it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FeedPollState {
    /// Row id.
    pub id: FeedId,
    /// The validator the server gave with the last full answer, for `If-None-Match`.
    pub etag: Option<String>,
    /// The date the server gave with the last full answer, for `If-Modified-Since`.
    pub last_modified: Option<String>,
    /// When the feed is next due; `None` until it has been polled once.
    pub next_poll_at: Option<Timestamp>,
    /// Polls in a row that failed; 0 after a success.
    pub consecutive_failures: i64,
}

/// What pushing an article through the API did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// A new article with this id.
    Created(ArticleId),
    /// An article with the same link existed and its text or region changed.
    Updated(ArticleId),
    /// An article with the same link existed exactly as pushed.
    Unchanged(ArticleId),
}

impl Store {
    /// The id of the feed row for (region, url), created on first use.
    pub async fn feed_id(&self, region: &RegionSlug, url: &str) -> Result<FeedId> {
        Ok(self.feed_poll_state(region, url).await?.id)
    }

    /// The feed row for (region, url), created on first use, with what the next poll needs.
    pub async fn feed_poll_state(&self, region: &RegionSlug, url: &str) -> Result<FeedPollState> {
        sqlx::query(
            "INSERT INTO feeds (region_slug, url) VALUES ($1, $2)
             ON CONFLICT (region_slug, url) DO NOTHING",
        )
        .bind(region.as_str())
        .bind(url)
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query_as(
            "SELECT id, etag, last_modified, next_poll_at, consecutive_failures
             FROM feeds WHERE region_slug = $1 AND url = $2",
        )
        .bind(region.as_str())
        .bind(url)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Stores a poll's items for a feed of `region` in one transaction, and marks the
    /// feed as successfully polled.
    ///
    /// An item is the same article as a stored one when its (feed, GUID) was seen before,
    /// or when another feed already brought the same link; either way it is not new mail.
    /// A changed title, summary or category updates the article in place.
    pub async fn record_feed_items(
        &self,
        feed_id: FeedId,
        region: &RegionSlug,
        items: &[FeedItem],
        now: Timestamp,
    ) -> Result<FeedCounts> {
        let mut counts = FeedCounts::default();
        let mut tx = self.begin_write().await?;
        for (position, item) in items.iter().enumerate() {
            let by_guid: Option<(ArticleId, String, String, String, i64)> = sqlx::query_as(
                "SELECT a.id, a.title, a.summary, a.category, a.breaking FROM article_sources s
                 JOIN articles a ON a.id = s.article_id
                 WHERE s.feed_id = $1 AND s.guid = $2",
            )
            .bind(feed_id)
            .bind(&item.guid)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, title, summary, category, breaking)) = by_guid {
                let escalates = item.breaking && breaking == 0;
                if title != item.title
                    || summary != item.summary
                    || category != item.category
                    || escalates
                {
                    update_article(&mut tx, id, item, now).await?;
                    counts.updated += 1;
                } else {
                    counts.unchanged += 1;
                }
                continue;
            }
            let by_link: Option<(ArticleId, i64)> =
                sqlx::query_as("SELECT id, breaking FROM articles WHERE link = $1")
                    .bind(&item.link)
                    .fetch_optional(&mut *tx)
                    .await?;
            let article_id = match by_link {
                Some((id, breaking)) => {
                    // Another feed brought this story first; this feed may know it is breaking.
                    if item.breaking && breaking == 0 {
                        sqlx::query(
                            "UPDATE articles SET breaking = 1, updated_at = $1 WHERE id = $2",
                        )
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    id
                }
                None => insert_article(&mut tx, item, now).await?,
            };
            sqlx::query(
                "INSERT INTO article_sources (feed_id, guid, article_id) VALUES ($1, $2, $3)
                 ON CONFLICT (feed_id, guid) DO NOTHING",
            )
            .bind(feed_id)
            .bind(&item.guid)
            .bind(article_id)
            .execute(&mut *tx)
            .await?;
            add_to_region(&mut tx, article_id, region, now, position as i64).await?;
            counts.new += 1;
        }
        sqlx::query(
            "UPDATE feeds SET last_polled_at = $1, last_success_at = $1, last_error = NULL,
                 consecutive_failures = 0
             WHERE id = $2",
        )
        .bind(now)
        .bind(feed_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(counts)
    }

    /// What reading a feed's document found: its site link (kept when the document
    /// gave none), and whether it needed repairs (the first error) or gave no items
    /// despite having entries (why). Both notes are cleared by a clean read.
    pub async fn record_feed_read(
        &self,
        feed_id: FeedId,
        site_url: Option<&str>,
        recovered: Option<&str>,
        warning: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE feeds SET site_url = COALESCE($1, site_url), recovered_error = $2,
                 parse_warning = $3
             WHERE id = $4",
        )
        .bind(site_url)
        .bind(recovered)
        .bind(warning)
        .bind(feed_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// After a successful poll (full or `304 Not Modified`): keeps the server's validators
    /// for the next conditional GET and sets when the feed is next due.
    ///
    /// Called after [`Store::record_feed_items`] commits, so a crash in between costs one
    /// refetch, never an article.
    pub async fn record_feed_polled(
        &self,
        feed_id: FeedId,
        etag: Option<&str>,
        last_modified: Option<&str>,
        now: Timestamp,
        next_poll_at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE feeds SET etag = $1, last_modified = $2, last_polled_at = $3,
                 last_success_at = $3, last_error = NULL, consecutive_failures = 0,
                 next_poll_at = $4, lease_owner = NULL, lease_until = NULL
             WHERE id = $5",
        )
        .bind(etag)
        .bind(last_modified)
        .bind(now)
        .bind(next_poll_at)
        .bind(feed_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Notes a failed poll and when to try again; the feed's articles and validators stay
    /// as they were.
    pub async fn record_feed_error(
        &self,
        feed_id: FeedId,
        error: &str,
        now: Timestamp,
        next_poll_at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE feeds SET last_polled_at = $1, last_error = $2,
                 consecutive_failures = consecutive_failures + 1, next_poll_at = $3,
                 lease_owner = NULL, lease_until = NULL
             WHERE id = $4",
        )
        .bind(now)
        .bind(error)
        .bind(next_poll_at)
        .bind(feed_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores an article pushed through the admin API for `region`, keyed by its link
    /// (`item.guid` is not used): a new link is a new article, a known one is updated
    /// in place and added to the region, never duplicated.
    pub async fn push_article(
        &self,
        region: &RegionSlug,
        item: &FeedItem,
        now: Timestamp,
    ) -> Result<PushOutcome> {
        let mut tx = self.begin_write().await?;
        let existing: Option<(ArticleId, String, String, String, i64)> = sqlx::query_as(
            "SELECT id, title, summary, category, breaking FROM articles WHERE link = $1",
        )
        .bind(&item.link)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match existing {
            None => {
                let id = insert_article(&mut tx, item, now).await?;
                add_to_region(&mut tx, id, region, now, 0).await?;
                PushOutcome::Created(id)
            }
            Some((id, title, summary, category, breaking)) => {
                let mut changed = add_to_region(&mut tx, id, region, now, 0).await?;
                if title != item.title
                    || summary != item.summary
                    || category != item.category
                    || (item.breaking && breaking == 0)
                {
                    update_article(&mut tx, id, item, now).await?;
                    changed = true;
                }
                if changed {
                    PushOutcome::Updated(id)
                } else {
                    PushOutcome::Unchanged(id)
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Whether an article is marked breaking, by link (for checks and tests).
    pub async fn article_breaking(&self, link: &str) -> Result<Option<bool>> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT breaking FROM articles WHERE link = $1")
            .bind(link)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(b,)| b != 0))
    }

    /// The newest articles of a region added since `since`, newest first (for previews).
    pub async fn recent_articles(
        &self,
        region: &RegionSlug,
        since: Timestamp,
        limit: i64,
    ) -> Result<Vec<ArticleRow>> {
        let rows: Vec<(ArticleId, String, String, String, String, Option<Timestamp>)> =
            sqlx::query_as(
                "SELECT a.id, a.link, a.title, a.summary, a.category, a.published_at
             FROM article_regions r JOIN articles a ON a.id = r.article_id
             WHERE r.region_slug = $1 AND r.added_at >= $2
             ORDER BY COALESCE(a.published_at, a.ingested_at) DESC, a.id DESC
             LIMIT $3",
            )
            .bind(region.as_str())
            .bind(since)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, link, title, summary, category, published_at)| ArticleRow {
                    id,
                    link,
                    title,
                    summary,
                    category,
                    published_at,
                },
            )
            .collect())
    }

    /// A region's articles added since `since`, ranked as a digest ranks them, split at
    /// `[digest] max_stories`: the stories a digest would list, and how many it would
    /// leave out (for previews and a send's sample).
    pub async fn ranked_region_articles(
        &self,
        region: &RegionSlug,
        since: Timestamp,
    ) -> Result<(Vec<ArticleRow>, u32)> {
        let rows: Vec<(ArticleId, String, String, String, String, Option<Timestamp>)> =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT a.id, a.link, a.title, a.summary, a.category, a.published_at
                 FROM article_regions ar JOIN articles a ON a.id = ar.article_id
                 LEFT JOIN regions r ON r.slug = ar.region_slug
                 WHERE ar.region_slug = $1 AND ar.added_at >= $2
                 ORDER BY {REGION_STORY_ORDER}"
            )))
            .bind(region.as_str())
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        let cap = self.max_stories.map_or(usize::MAX, |n| n as usize);
        let left_out = u32::try_from(rows.len().saturating_sub(cap)).unwrap_or(u32::MAX);
        let rows = rows
            .into_iter()
            .take(cap)
            .map(
                |(id, link, title, summary, category, published_at)| ArticleRow {
                    id,
                    link,
                    title,
                    summary,
                    category,
                    published_at,
                },
            )
            .collect();
        Ok((rows, left_out))
    }

    /// Where "and N more stories" leads for a region: its `url`, else the site link of
    /// its first feed that gave one.
    pub async fn region_page(&self, region: &RegionSlug) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT COALESCE(r.url, (SELECT f.site_url FROM feeds f
                                     WHERE f.region_slug = r.slug AND f.site_url IS NOT NULL
                                     ORDER BY f.id LIMIT 1))
             FROM regions r WHERE r.slug = $1",
        )
        .bind(region.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(url,)| url))
    }

    /// How many articles are stored (all regions).
    pub async fn article_count(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM articles")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// How many articles a region has.
    pub async fn region_article_count(&self, region: &RegionSlug) -> Result<i64> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM article_regions WHERE region_slug = $1")
                .bind(region.as_str())
                .fetch_one(&self.pool)
                .await?;
        Ok(n)
    }

    /// Marks an article as breaking news (its alerts are planned on the next pass).
    pub async fn mark_breaking(&self, article_id: ArticleId) -> Result<()> {
        sqlx::query("UPDATE articles SET breaking = 1 WHERE id = $1")
            .bind(article_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The id of the article with this link, if stored.
    pub async fn article_id_by_link(&self, link: &str) -> Result<Option<ArticleId>> {
        let row: Option<(ArticleId,)> = sqlx::query_as("SELECT id FROM articles WHERE link = $1")
            .bind(link)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(id,)| id))
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Inserts a new article; an article without a date is dated when first seen. Another
/// feed polled at the same moment may insert the same link first (PostgreSQL runs the
/// two transactions side by side): that article is then this one.
async fn insert_article(tx: &mut Tx<'_>, item: &FeedItem, now: Timestamp) -> Result<ArticleId> {
    let inserted: Option<(ArticleId,)> = sqlx::query_as(
        "INSERT INTO articles (link, title, summary, category, breaking, published_at, ingested_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (link) DO NOTHING RETURNING id",
    )
    .bind(&item.link)
    .bind(&item.title)
    .bind(&item.summary)
    .bind(&item.category)
    .bind(i64::from(item.breaking))
    .bind(item.published_at.map(Timestamp::from_unix).unwrap_or(now))
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((id,)) = inserted {
        return Ok(id);
    }
    let (id,): (ArticleId,) = sqlx::query_as("SELECT id FROM articles WHERE link = $1")
        .bind(&item.link)
        .fetch_one(&mut **tx)
        .await?;
    Ok(id)
}

/// Rewrites an edited article's text. `breaking` only escalates: alerts may be out already.
async fn update_article(
    tx: &mut Tx<'_>,
    id: ArticleId,
    item: &FeedItem,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "UPDATE articles SET title = $1, summary = $2, category = $3, updated_at = $4,
             breaking = CASE WHEN $5 = 1 THEN 1 ELSE breaking END
         WHERE id = $6",
    )
    .bind(&item.title)
    .bind(&item.summary)
    .bind(&item.category)
    .bind(now)
    .bind(i64::from(item.breaking))
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Files an article under a region, at `feed_position` in its feed (0 for a pushed
/// article); true if it was not there yet.
async fn add_to_region(
    tx: &mut Tx<'_>,
    article_id: ArticleId,
    region: &RegionSlug,
    now: Timestamp,
    feed_position: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO article_regions (article_id, region_slug, added_at, feed_position)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (article_id, region_slug) DO NOTHING",
    )
    .bind(article_id)
    .bind(region.as_str())
    .bind(now)
    .bind(feed_position)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

#[cfg(test)]
mod tests;
