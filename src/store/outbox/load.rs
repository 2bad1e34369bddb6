//! Loading claimed rows with what composing them needs: the reader as they are now, the
//! articles of the row's content (read once per content and shared), and for sign-up
//! emails the regions the reader chose.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::AssertSqlSafe;

use super::ClaimedDelivery;
use crate::domain::{
    ArticleId, DeliveryArticle, DeliveryId, DeliveryKind, ReaderRegion, SubscriberId, Timestamp,
};
use crate::store::{Result, Store, StoreError, placeholders};

impl Store {
    /// Loads claimed rows with their reader and articles, in id order.
    pub async fn load_claimed(&self, ids: &[DeliveryId]) -> Result<Vec<ClaimedDelivery>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT d.id, d.subscriber_id, d.kind, d.cadence, d.message_id, d.attempts, d.expires_at,
                    s.email, s.state, s.timezone, d.content_id
             FROM deliveries d LEFT JOIN subscribers s ON s.id = d.subscriber_id
             WHERE d.id IN ({}) ORDER BY d.id",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query_as::<
            _,
            (
                DeliveryId,
                SubscriberId,
                String,
                Option<String>,
                String,
                i64,
                Timestamp,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<i64>,
            ),
        >(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;

        // Readers of one group share a content: each is read once and shared.
        let mut contents: Vec<i64> = rows.iter().filter_map(|r| r.10).collect();
        contents.sort_unstable();
        contents.dedup();

        let mut articles: HashMap<i64, Vec<DeliveryArticle>> = HashMap::new();
        if !contents.is_empty() {
            let sql = format!(
                "SELECT da.content_id, a.id, da.region_slug, COALESCE(r.name, da.region_slug),
                        a.title, a.link, a.summary, a.category, a.published_at
                 FROM content_articles da
                 JOIN articles a ON a.id = da.article_id
                 LEFT JOIN regions r ON r.slug = da.region_slug
                 WHERE da.content_id IN ({})
                 ORDER BY da.content_id, da.region_slug,
                     COALESCE(a.published_at, a.ingested_at) DESC, a.id DESC",
                placeholders(1, contents.len())
            );
            let mut query = sqlx::query_as::<
                _,
                (
                    i64,
                    ArticleId,
                    String,
                    String,
                    String,
                    String,
                    String,
                    String,
                    Option<Timestamp>,
                ),
            >(AssertSqlSafe(sql));
            for id in &contents {
                query = query.bind(*id);
            }
            for (
                content_id,
                article_id,
                region_slug,
                region_name,
                title,
                link,
                summary,
                category,
                published_at,
            ) in query.fetch_all(&self.pool).await?
            {
                articles
                    .entry(content_id)
                    .or_default()
                    .push(DeliveryArticle {
                        article_id,
                        region_slug,
                        region_name,
                        title,
                        link,
                        summary,
                        category,
                        published_at,
                    });
            }
        }
        let articles: HashMap<i64, Arc<[DeliveryArticle]>> = articles
            .into_iter()
            .map(|(content, list)| (content, list.into()))
            .collect();

        // Each row's suppression entry, computed once (a keyed hash is not free).
        let entries: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.7.as_deref().map(|e| self.suppression.entry(e)))
            .collect();
        let hashes: Vec<&String> = entries.iter().flatten().collect();
        let suppressed: std::collections::HashSet<String> = if hashes.is_empty() {
            Default::default()
        } else {
            let sql = format!(
                "SELECT email_hash FROM suppressions WHERE email_hash IN ({})",
                placeholders(1, hashes.len())
            );
            let mut query = sqlx::query_as::<_, (String,)>(AssertSqlSafe(sql));
            for hash in &hashes {
                query = query.bind((*hash).clone());
            }
            query
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|(h,)| h)
                .collect()
        };

        // Sign-up emails list what the reader chose instead of carrying articles.
        let is_signup = |kind: &str| kind.parse().is_ok_and(DeliveryKind::is_signup);
        let signup_readers: Vec<SubscriberId> = rows
            .iter()
            .filter(|r| is_signup(&r.2))
            .map(|r| r.1)
            .collect();
        let regions = self.reader_regions(&signup_readers).await?;

        rows.into_iter()
            .zip(entries)
            .map(
                |(
                    (
                        id,
                        subscriber_id,
                        kind,
                        cadence,
                        message_id,
                        attempts,
                        expires_at,
                        email,
                        state,
                        timezone,
                        content_id,
                    ),
                    entry,
                )| {
                    let is_suppressed = entry.is_some_and(|e| suppressed.contains(&e));
                    let kind: DeliveryKind = kind.parse().map_err(StoreError::Corrupt)?;
                    Ok(ClaimedDelivery {
                        id,
                        subscriber_id,
                        kind,
                        cadence: cadence
                            .map(|c| c.parse().map_err(StoreError::Corrupt))
                            .transpose()?,
                        message_id,
                        attempts,
                        expires_at,
                        email,
                        subscriber_state: state
                            .map(|s| s.parse().map_err(StoreError::Corrupt))
                            .transpose()?,
                        timezone,
                        suppressed: is_suppressed,
                        articles: content_id
                            .and_then(|c| articles.get(&c).cloned())
                            .unwrap_or_else(|| Arc::new([])),
                        regions: if kind.is_signup() {
                            regions.get(&subscriber_id).cloned().unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                    })
                },
            )
            .collect()
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
            "SELECT sub.subscriber_id, sub.region_slug, COALESCE(r.name, sub.region_slug), sub.cadence
             FROM subscriptions sub LEFT JOIN regions r ON r.slug = sub.region_slug
             WHERE sub.subscriber_id IN ({})
             ORDER BY sub.subscriber_id, COALESCE(r.name, sub.region_slug)",
            placeholders(1, subscriber_ids.len())
        );
        let mut query =
            sqlx::query_as::<_, (SubscriberId, String, String, String)>(AssertSqlSafe(sql));
        for id in subscriber_ids {
            query = query.bind(*id);
        }
        for (id, slug, name, cadence) in query.fetch_all(&self.pool).await? {
            out.entry(id).or_default().push(ReaderRegion {
                slug,
                name,
                cadence: cadence.parse().map_err(StoreError::Corrupt)?,
            });
        }
        Ok(out)
    }
}
