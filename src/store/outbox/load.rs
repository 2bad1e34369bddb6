//! Loading claimed rows with what composing them needs: the reader as they are now, the
//! articles of the row's content (read once per content and shared), and for sign-up
//! emails the regions the reader chose. Every value is decoded here, once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::AssertSqlSafe;

use super::{ClaimedDelivery, Recipient};
use crate::domain::{
    ArticleId, DeliveryArticle, DeliveryId, DeliveryKind, MoreStories, ReaderRegion, SponsorId,
    SubscriberId, Timestamp,
};
use crate::store::{Result, Store, decode, placeholders};

/// A claimed row as stored, joined with its reader (all `None` once erased).
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: DeliveryId,
    subscriber_id: SubscriberId,
    kind: String,
    cadence: Option<String>,
    message_id: String,
    attempts: i64,
    expires_at: Timestamp,
    content_id: Option<i64>,
    sponsor_id: Option<SponsorId>,
    email: Option<String>,
    state: Option<String>,
    timezone: Option<String>,
}

impl ClaimedRow {
    /// The reader, decoded; a reader with a value that does not decode is
    /// [`Recipient::Unreadable`], so that only this row fails.
    fn recipient(&self) -> Recipient {
        let (Some(email), Some(state), Some(timezone)) = (&self.email, &self.state, &self.timezone)
        else {
            return Recipient::Erased;
        };
        let row = self.subscriber_id;
        let reader = || -> Result<Recipient> {
            Ok(Recipient::Reader {
                email: decode("subscribers", row, "email", email)?,
                state: decode("subscribers", row, "state", state)?,
                timezone: decode("subscribers", row, "timezone", timezone)?,
            })
        };
        reader().unwrap_or_else(|error| Recipient::Unreadable(error.to_string()))
    }
}

/// One article of one content, as stored.
#[derive(sqlx::FromRow)]
struct ContentArticleRow {
    content_id: i64,
    article_id: ArticleId,
    region_slug: String,
    region_name: String,
    title: String,
    link: String,
    summary: String,
    category: String,
    published_at: Option<Timestamp>,
}

/// One region a reader follows, as stored.
#[derive(sqlx::FromRow)]
struct ReaderRegionRow {
    subscriber_id: SubscriberId,
    region_slug: String,
    name: String,
    cadence: String,
}

impl Store {
    /// Loads claimed rows with their reader and articles, in id order.
    pub async fn load_claimed(&self, ids: &[DeliveryId]) -> Result<Vec<ClaimedDelivery>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT d.id, d.subscriber_id, d.kind, d.cadence, d.message_id, d.attempts,
                    d.expires_at, d.content_id, d.sponsor_id, s.email, s.state, s.timezone
             FROM deliveries d LEFT JOIN subscribers s ON s.id = d.subscriber_id
             WHERE d.id IN ({}) ORDER BY d.id",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query_as::<_, ClaimedRow>(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;

        // Readers of one group share a content: each is read once and shared.
        let mut contents: Vec<i64> = rows.iter().filter_map(|r| r.content_id).collect();
        contents.sort_unstable();
        contents.dedup();
        let articles = self.content_articles(&contents).await?;
        let more = self.content_overflow(&contents).await?;
        let mut sponsor_ids: Vec<SponsorId> = rows.iter().filter_map(|r| r.sponsor_id).collect();
        sponsor_ids.sort_unstable();
        sponsor_ids.dedup();
        let sponsors = self.sponsor_blocks(&sponsor_ids).await?;

        // Each row's suppression entry, computed once (a keyed hash is not free).
        let entries: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.email.as_deref().map(|e| self.suppression.entry(e)))
            .collect();
        let suppressed = self.suppressed_among(entries.iter().flatten()).await?;

        // Sign-up emails list what the reader chose instead of carrying articles.
        let mut kinds = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: DeliveryKind = decode("deliveries", row.id, "kind", &row.kind)?;
            kinds.push(kind);
        }
        let signup_readers: Vec<SubscriberId> = rows
            .iter()
            .zip(&kinds)
            .filter(|(_, kind)| kind.is_signup())
            .map(|(row, _)| row.subscriber_id)
            .collect();
        let regions = self.reader_regions(&signup_readers).await?;

        rows.into_iter()
            .zip(kinds)
            .zip(entries)
            .map(|((row, kind), entry)| {
                let cadence = row
                    .cadence
                    .as_deref()
                    .map(|c| decode("deliveries", row.id, "cadence", c))
                    .transpose()?;
                Ok(ClaimedDelivery {
                    recipient: row.recipient(),
                    id: row.id,
                    subscriber_id: row.subscriber_id,
                    kind,
                    cadence,
                    message_id: row.message_id,
                    attempts: row.attempts,
                    expires_at: row.expires_at,
                    suppressed: entry.is_some_and(|e| suppressed.contains(&e)),
                    articles: row
                        .content_id
                        .and_then(|c| articles.get(&c).cloned())
                        .unwrap_or_else(|| Arc::new([])),
                    sponsor: row.sponsor_id.and_then(|id| sponsors.get(&id).cloned()),
                    more: row
                        .content_id
                        .and_then(|c| more.get(&c).cloned())
                        .unwrap_or_else(|| Arc::new([])),
                    regions: if kind.is_signup() {
                        regions.get(&row.subscriber_id).cloned().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                })
            })
            .collect()
    }

    /// The stories the cap left out of each content, per region, with the region's page.
    pub(crate) async fn content_overflow(
        &self,
        contents: &[i64],
    ) -> Result<HashMap<i64, Arc<[MoreStories]>>> {
        let mut out: HashMap<i64, Vec<MoreStories>> = HashMap::new();
        if contents.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT o.content_id, o.region_slug, COALESCE(r.name, o.region_slug), o.stories,
                    COALESCE(r.url, (SELECT f.site_url FROM feeds f
                                     WHERE f.region_slug = o.region_slug AND f.site_url IS NOT NULL
                                     ORDER BY f.id LIMIT 1))
             FROM content_overflow o LEFT JOIN regions r ON r.slug = o.region_slug
             WHERE o.content_id IN ({})
             ORDER BY o.content_id, o.region_slug",
            placeholders(1, contents.len())
        );
        let mut query =
            sqlx::query_as::<_, (i64, String, String, i64, Option<String>)>(AssertSqlSafe(sql));
        for id in contents {
            query = query.bind(*id);
        }
        for (content_id, slug, name, stories, url) in query.fetch_all(&self.pool).await? {
            let key = format!("({content_id}, {slug})");
            out.entry(content_id).or_default().push(MoreStories {
                region_slug: decode("content_overflow", &key, "region_slug", &slug)?,
                region_name: name,
                stories: u32::try_from(stories).unwrap_or(u32::MAX),
                url,
            });
        }
        Ok(out
            .into_iter()
            .map(|(content, list)| (content, list.into()))
            .collect())
    }

    /// The articles of each content in the order the planner ranked them, each region's
    /// stories together (the regions in the order of their top story).
    async fn content_articles(
        &self,
        contents: &[i64],
    ) -> Result<HashMap<i64, Arc<[DeliveryArticle]>>> {
        let mut articles: HashMap<i64, Vec<DeliveryArticle>> = HashMap::new();
        if contents.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT da.content_id, a.id AS article_id, da.region_slug,
                    COALESCE(r.name, da.region_slug) AS region_name,
                    a.title, a.link, a.summary, a.category, a.published_at
             FROM content_articles da
             JOIN articles a ON a.id = da.article_id
             LEFT JOIN regions r ON r.slug = da.region_slug
             WHERE da.content_id IN ({})
             ORDER BY da.content_id,
                 (SELECT MIN(x.position) FROM content_articles x
                  WHERE x.content_id = da.content_id AND x.region_slug = da.region_slug),
                 da.region_slug, da.position,
                 COALESCE(a.published_at, a.ingested_at) DESC, a.id DESC",
            placeholders(1, contents.len())
        );
        let mut query = sqlx::query_as::<_, ContentArticleRow>(AssertSqlSafe(sql));
        for id in contents {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&self.pool).await? {
            let region_slug = decode(
                "content_articles",
                format!("({}, {})", row.content_id, row.article_id),
                "region_slug",
                &row.region_slug,
            )?;
            articles
                .entry(row.content_id)
                .or_default()
                .push(DeliveryArticle {
                    article_id: row.article_id,
                    region_slug,
                    region_name: row.region_name,
                    title: row.title,
                    link: row.link,
                    summary: row.summary,
                    category: row.category,
                    published_at: row.published_at,
                });
        }
        Ok(articles
            .into_iter()
            .map(|(content, list)| (content, list.into()))
            .collect())
    }

    /// Which of `entries` are on the suppression list.
    async fn suppressed_among(
        &self,
        entries: impl Iterator<Item = &String>,
    ) -> Result<HashSet<String>> {
        let entries: Vec<&String> = entries.collect();
        if entries.is_empty() {
            return Ok(HashSet::new());
        }
        let sql = format!(
            "SELECT email_hash FROM suppressions WHERE email_hash IN ({})",
            placeholders(1, entries.len())
        );
        let mut query = sqlx::query_as::<_, (String,)>(AssertSqlSafe(sql));
        for entry in entries {
            query = query.bind(entry.clone());
        }
        Ok(query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(hash,)| hash)
            .collect())
    }

    /// The regions of each reader, with display names, for sign-up emails.
    pub(super) async fn reader_regions(
        &self,
        subscriber_ids: &[SubscriberId],
    ) -> Result<HashMap<SubscriberId, Vec<ReaderRegion>>> {
        let mut out: HashMap<SubscriberId, Vec<ReaderRegion>> = HashMap::new();
        if subscriber_ids.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT sub.subscriber_id, sub.region_slug, COALESCE(r.name, sub.region_slug) AS name,
                    sub.cadence
             FROM subscriptions sub LEFT JOIN regions r ON r.slug = sub.region_slug
             WHERE sub.subscriber_id IN ({})
             ORDER BY sub.subscriber_id, COALESCE(r.name, sub.region_slug)",
            placeholders(1, subscriber_ids.len())
        );
        let mut query = sqlx::query_as::<_, ReaderRegionRow>(AssertSqlSafe(sql));
        for id in subscriber_ids {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&self.pool).await? {
            let key = format!("({}, {})", row.subscriber_id, row.region_slug);
            out.entry(row.subscriber_id)
                .or_default()
                .push(ReaderRegion {
                    slug: decode("subscriptions", &key, "region_slug", &row.region_slug)?,
                    name: row.name,
                    cadence: decode("subscriptions", &key, "cadence", &row.cadence)?,
                });
        }
        Ok(out)
    }
}
