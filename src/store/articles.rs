//! Feeds and articles: what ingest writes and what planning reads.

use super::{Result, Store};
use crate::domain::RegionSlug;

/// One parsed feed entry, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedItem {
    /// The feed's own id for the item (GUID, Atom id, JSON Feed id).
    pub guid: String,
    /// Absolute http(s) link: the key that joins the same story across feeds.
    pub link: String,
    /// Plain-text title.
    pub title: String,
    /// Plain-text summary, possibly empty.
    pub summary: String,
    /// First category, possibly empty.
    pub category: String,
    /// Publication time, when the feed gave one.
    pub published_at: Option<i64>,
}

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
    pub id: i64,
    /// Link.
    pub link: String,
    /// Title.
    pub title: String,
    /// Summary.
    pub summary: String,
    /// Category.
    pub category: String,
    /// Publication time.
    pub published_at: Option<i64>,
}

/// One feed's polling history, for `herald status`.
#[derive(Debug, Clone)]
pub struct FeedStatus {
    /// Region the feed belongs to.
    pub region: String,
    /// The feed as configured.
    pub url: String,
    /// Last poll, successful or not.
    pub last_polled_at: Option<i64>,
    /// Last successful poll.
    pub last_success_at: Option<i64>,
    /// The error of the last poll, if it failed.
    pub last_error: Option<String>,
}

/// (region, url, last polled, last success, last error).
type FeedStatusRow = (String, String, Option<i64>, Option<i64>, Option<String>);

impl Store {
    /// The id of the feed row for (region, url), created on first use.
    pub async fn feed_id(&self, region: &RegionSlug, url: &str) -> Result<i64> {
        sqlx::query(
            "INSERT INTO feeds (region_slug, url) VALUES ($1, $2)
             ON CONFLICT (region_slug, url) DO NOTHING",
        )
        .bind(region.as_str())
        .bind(url)
        .execute(&self.pool)
        .await?;
        let (id,): (i64,) =
            sqlx::query_as("SELECT id FROM feeds WHERE region_slug = $1 AND url = $2")
                .bind(region.as_str())
                .bind(url)
                .fetch_one(&self.pool)
                .await?;
        Ok(id)
    }

    /// Stores a poll's items for a feed of `region` in one transaction.
    ///
    /// An item is the same article as a stored one when its (feed, GUID) was seen before,
    /// or when another feed already brought the same link; either way it is not new mail.
    pub async fn record_feed_items(
        &self,
        feed_id: i64,
        region: &RegionSlug,
        items: &[FeedItem],
        now: i64,
    ) -> Result<FeedCounts> {
        let mut counts = FeedCounts::default();
        let mut tx = self.pool.begin().await?;
        for item in items {
            let by_guid: Option<(i64, String, String, String)> = sqlx::query_as(
                "SELECT a.id, a.title, a.summary, a.category FROM article_sources s
                 JOIN articles a ON a.id = s.article_id
                 WHERE s.feed_id = $1 AND s.guid = $2",
            )
            .bind(feed_id)
            .bind(&item.guid)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, title, summary, category)) = by_guid {
                if title != item.title || summary != item.summary || category != item.category {
                    sqlx::query(
                        "UPDATE articles SET title = $1, summary = $2, category = $3, updated_at = $4
                         WHERE id = $5",
                    )
                    .bind(&item.title)
                    .bind(&item.summary)
                    .bind(&item.category)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    counts.updated += 1;
                } else {
                    counts.unchanged += 1;
                }
                continue;
            }
            let by_link: Option<(i64,)> = sqlx::query_as("SELECT id FROM articles WHERE link = $1")
                .bind(&item.link)
                .fetch_optional(&mut *tx)
                .await?;
            let article_id = match by_link {
                Some((id,)) => id,
                None => {
                    let (id,): (i64,) = sqlx::query_as(
                        "INSERT INTO articles (link, title, summary, category, published_at, ingested_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
                    )
                    .bind(&item.link)
                    .bind(&item.title)
                    .bind(&item.summary)
                    .bind(&item.category)
                    .bind(item.published_at)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    id
                }
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
            sqlx::query(
                "INSERT INTO article_regions (article_id, region_slug, added_at) VALUES ($1, $2, $3)
                 ON CONFLICT (article_id, region_slug) DO NOTHING",
            )
            .bind(article_id)
            .bind(region.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            counts.new += 1;
        }
        sqlx::query(
            "UPDATE feeds SET last_polled_at = $1, last_success_at = $1, last_error = NULL WHERE id = $2",
        )
        .bind(now)
        .bind(feed_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(counts)
    }

    /// Notes a failed poll; the feed's articles stay as they were.
    pub async fn record_feed_error(&self, feed_id: i64, error: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE feeds SET last_polled_at = $1, last_error = $2 WHERE id = $3")
            .bind(now)
            .bind(error)
            .bind(feed_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every feed's last poll, for `herald status`.
    pub async fn feed_statuses(&self) -> Result<Vec<FeedStatus>> {
        let rows: Vec<FeedStatusRow> = sqlx::query_as(
            "SELECT region_slug, url, last_polled_at, last_success_at, last_error
             FROM feeds ORDER BY region_slug, url",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(region, url, last_polled_at, last_success_at, last_error)| FeedStatus {
                    region,
                    url,
                    last_polled_at,
                    last_success_at,
                    last_error,
                },
            )
            .collect())
    }

    /// The newest articles of a region added since `since`, newest first (for previews).
    pub async fn recent_articles(
        &self,
        region: &RegionSlug,
        since: i64,
        limit: i64,
    ) -> Result<Vec<ArticleRow>> {
        let rows: Vec<(i64, String, String, String, String, Option<i64>)> = sqlx::query_as(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::stores;

    fn item(guid: &str, link: &str, title: &str) -> FeedItem {
        FeedItem {
            guid: guid.into(),
            link: link.into(),
            title: title.into(),
            summary: String::new(),
            category: String::new(),
            published_at: None,
        }
    }

    #[tokio::test]
    async fn dedups_by_guid_and_by_link_across_feeds() {
        for (backend, t) in stores().await {
            let store = &t.store;
            let state: RegionSlug = "state".parse().unwrap();
            let town: RegionSlug = "town".parse().unwrap();
            let state_feed = store.feed_id(&state, "file://state.xml").await.unwrap();
            let town_feed = store.feed_id(&town, "file://town.xml").await.unwrap();
            assert_eq!(
                store.feed_id(&state, "file://state.xml").await.unwrap(),
                state_feed
            );

            let shared = item("s-1", "https://news.example/shared", "Shared story");
            let counts = store
                .record_feed_items(
                    state_feed,
                    &state,
                    &[shared.clone(), item("s-2", "https://news.example/b", "B")],
                    100,
                )
                .await
                .unwrap();
            assert_eq!(
                counts,
                FeedCounts {
                    new: 2,
                    updated: 0,
                    unchanged: 0
                },
                "{backend:?}"
            );

            // The same story under another GUID in the town feed is one article in two regions.
            let again = item("t-9", "https://news.example/shared", "Shared story");
            let counts = store
                .record_feed_items(town_feed, &town, &[again], 110)
                .await
                .unwrap();
            assert_eq!(counts.new, 1);
            assert_eq!(store.article_count().await.unwrap(), 2, "{backend:?}");
            assert_eq!(store.region_article_count(&town).await.unwrap(), 1);
            assert_eq!(store.region_article_count(&state).await.unwrap(), 2);

            // Polling again changes nothing; an edited title is an update, not a new article.
            let counts = store
                .record_feed_items(state_feed, &state, std::slice::from_ref(&shared), 120)
                .await
                .unwrap();
            assert_eq!(
                counts,
                FeedCounts {
                    new: 0,
                    updated: 0,
                    unchanged: 1
                }
            );
            let mut edited = shared;
            edited.title = "Shared story (corrected)".into();
            let counts = store
                .record_feed_items(state_feed, &state, &[edited], 130)
                .await
                .unwrap();
            assert_eq!(
                counts,
                FeedCounts {
                    new: 0,
                    updated: 1,
                    unchanged: 0
                }
            );
            assert_eq!(store.article_count().await.unwrap(), 2);
            let recent = store.recent_articles(&state, 0, 10).await.unwrap();
            assert!(
                recent.iter().any(|a| a.title == "Shared story (corrected)"),
                "{backend:?}"
            );
        }
    }

    #[tokio::test]
    async fn feed_errors_are_recorded_without_touching_articles() {
        for (_backend, t) in stores().await {
            let store = &t.store;
            let region: RegionSlug = "state".parse().unwrap();
            let feed = store.feed_id(&region, "file://missing.xml").await.unwrap();
            store
                .record_feed_error(feed, "no such file", 50)
                .await
                .unwrap();
            let status = store.feed_statuses().await.unwrap();
            assert_eq!(status.len(), 1);
            assert_eq!(status[0].last_error.as_deref(), Some("no such file"));
            assert_eq!(status[0].last_success_at, None);
            assert_eq!(store.article_count().await.unwrap(), 0);
        }
    }
}
