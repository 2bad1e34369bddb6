//! Sponsor bookings: booked, listed and removed by admins; the block each planned digest
//! carries is chosen in planning (`planning/digests.rs`) and recorded on its delivery
//! row, so the report counts from the ledger what each booking went out in.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;
use sqlx::AssertSqlSafe;

use super::{Result, Store, decode, placeholders};
use crate::domain::{DeliveryState, NewSponsor, RegionSlug, SponsorBlock, SponsorId, Timestamp};

/// How the best booking for a reader is picked: the most specific region (the deepest
/// below its top region) first, then the earliest booking.
pub(super) const SPONSOR_ORDER: &str = "sc.depth DESC, sp.id";

/// One booking, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SponsorRow {
    /// The booking's block.
    pub block: SponsorBlock,
    /// Its regions.
    pub regions: Vec<RegionSlug>,
    /// First day.
    pub starts_on: NaiveDate,
    /// Last day (included).
    pub ends_on: NaiveDate,
    /// When it was booked.
    pub created_at: Timestamp,
}

/// What one booking went out in, from the delivery ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SponsorReport {
    /// The booking.
    pub id: i64,
    /// Its label.
    pub label: String,
    /// Digests carrying it that the relay accepted.
    pub sent: i64,
    /// Digests carrying it not sent yet (waiting, or out with a worker).
    pub waiting: i64,
    /// Digests carrying it that will not be sent (bounced, failed, expired, …).
    pub not_sent: i64,
}

/// A stored booking's row.
type StoredSponsor = (
    SponsorId,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    Timestamp,
);

impl Store {
    /// Books a sponsor; returns its id.
    pub async fn add_sponsor(&self, sponsor: &NewSponsor, now: Timestamp) -> Result<SponsorId> {
        let mut tx = self.begin_write().await?;
        let (id,): (SponsorId,) = sqlx::query_as(
            "INSERT INTO sponsors (label, headline, body, link, image_url, image_alt,
                 starts_on, ends_on, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(&sponsor.label)
        .bind(&sponsor.headline)
        .bind(&sponsor.body)
        .bind(&sponsor.link)
        .bind(sponsor.image.as_ref().map(|(url, _)| url.clone()))
        .bind(sponsor.image.as_ref().map(|(_, alt)| alt.clone()))
        .bind(sponsor.starts_on.to_string())
        .bind(sponsor.ends_on.to_string())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        for region in &sponsor.regions {
            sqlx::query(
                "INSERT INTO sponsor_regions (sponsor_id, region_slug) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(region.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Every booking, earliest first.
    pub async fn sponsors(&self) -> Result<Vec<SponsorRow>> {
        let rows: Vec<StoredSponsor> = sqlx::query_as(
            "SELECT id, label, headline, body, link, image_url, image_alt, starts_on, ends_on,
                    created_at
             FROM sponsors ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let regions: Vec<(SponsorId, String)> = sqlx::query_as(
            "SELECT sponsor_id, region_slug FROM sponsor_regions ORDER BY sponsor_id, region_slug",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_sponsor: HashMap<SponsorId, Vec<RegionSlug>> = HashMap::new();
        for (id, slug) in regions {
            by_sponsor.entry(id).or_default().push(decode(
                "sponsor_regions",
                id,
                "region_slug",
                &slug,
            )?);
        }
        rows.into_iter()
            .map(|row| {
                let id = row.0;
                let date = |column, text: &str| {
                    NaiveDate::parse_from_str(text, "%Y-%m-%d")
                        .map_err(|e| super::StoreError::corrupt("sponsors", id, column, e))
                };
                Ok(SponsorRow {
                    starts_on: date("starts_on", &row.7)?,
                    ends_on: date("ends_on", &row.8)?,
                    created_at: row.9,
                    regions: by_sponsor.remove(&id).unwrap_or_default(),
                    block: block(row.0, row.1, row.2, row.3, row.4, row.5, row.6),
                })
            })
            .collect()
    }

    /// Removes a booking; false if there is none with that id. Digests already planned
    /// with it go out without a block; the ledger keeps what was sent.
    pub async fn remove_sponsor(&self, id: SponsorId) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM sponsor_regions WHERE sponsor_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM sponsors WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// What each booking went out in, counted from the delivery ledger.
    pub async fn sponsor_report(&self) -> Result<Vec<SponsorReport>> {
        let sent = DeliveryState::Sent.as_str();
        let waiting: Vec<String> = DeliveryState::ALL
            .iter()
            .filter(|s| !s.is_final())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let rows: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT sp.id, sp.label,
                    COALESCE(SUM(CASE WHEN d.state = '{sent}' THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN d.state IN ({waiting}) THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN d.state <> '{sent}' AND d.state NOT IN ({waiting})
                                      THEN 1 ELSE 0 END), 0)
             FROM sponsors sp LEFT JOIN deliveries d ON d.sponsor_id = sp.id
             GROUP BY sp.id, sp.label ORDER BY sp.id",
            waiting = waiting.join(", ")
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, label, sent, waiting, not_sent)| SponsorReport {
                id,
                label,
                sent,
                waiting,
                not_sent,
            })
            .collect())
    }

    /// The blocks of these bookings, read once per batch of claimed rows.
    pub(super) async fn sponsor_blocks(
        &self,
        ids: &[SponsorId],
    ) -> Result<HashMap<SponsorId, Arc<SponsorBlock>>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT id, label, headline, body, link, image_url, image_alt FROM sponsors
             WHERE id IN ({})",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query_as::<
            _,
            (
                SponsorId,
                String,
                String,
                String,
                String,
                Option<String>,
                Option<String>,
            ),
        >(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(*id);
        }
        Ok(query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(id, label, headline, body, link, image, alt)| {
                (
                    id,
                    Arc::new(block(id, label, headline, body, link, image, alt)),
                )
            })
            .collect())
    }

    /// The block a digest of `region` on `date` (in its readers' zone) carries, the same
    /// choice planning makes, for previews and a send's sample.
    pub async fn sponsor_for(
        &self,
        region: &RegionSlug,
        date: NaiveDate,
    ) -> Result<Option<SponsorBlock>> {
        let scope = self.sponsor_scope().await?;
        let mut best: Option<(i64, SponsorId)> = None;
        let date = date.to_string();
        for (booked, depth) in scope.get(region).cloned().unwrap_or_default() {
            let found: Option<(SponsorId,)> = sqlx::query_as(
                "SELECT sp.id FROM sponsors sp JOIN sponsor_regions sr ON sr.sponsor_id = sp.id
                 WHERE sr.region_slug = $1 AND sp.starts_on <= $2 AND sp.ends_on >= $2
                 ORDER BY sp.id LIMIT 1",
            )
            .bind(booked.as_str())
            .bind(&date)
            .fetch_optional(&self.pool)
            .await?;
            if let Some((id,)) = found {
                let better = match best {
                    None => true,
                    Some((d, b)) => depth > d || (depth == d && id < b),
                };
                if better {
                    best = Some((depth, id));
                }
            }
        }
        let Some((_, id)) = best else {
            return Ok(None);
        };
        Ok(self
            .sponsor_blocks(&[id])
            .await?
            .remove(&id)
            .map(|b| (*b).clone()))
    }

    /// For every region, the regions whose bookings reach its readers: itself and each
    /// region above it, with that region's depth (0 for a top region).
    pub(super) async fn sponsor_scope(
        &self,
    ) -> Result<HashMap<RegionSlug, Vec<(RegionSlug, i64)>>> {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT slug, parent FROM regions")
                .fetch_all(&self.pool)
                .await?;
        let parents: HashMap<String, Option<String>> = rows.into_iter().collect();
        let chain = |slug: &str| {
            let mut chain = vec![slug.to_string()];
            let mut at = slug.to_string();
            while let Some(Some(parent)) = parents.get(&at) {
                if chain.contains(parent) {
                    break;
                }
                chain.push(parent.clone());
                at = parent.clone();
            }
            chain
        };
        let mut scope = HashMap::new();
        for slug in parents.keys() {
            let mut reach = Vec::new();
            for above in chain(slug) {
                let depth = chain(&above).len() as i64 - 1;
                reach.push((decode("regions", &above, "slug", &above)?, depth));
            }
            scope.insert(decode("regions", slug, "slug", slug)?, reach);
        }
        Ok(scope)
    }
}

fn block(
    id: SponsorId,
    label: String,
    headline: String,
    body: String,
    link: String,
    image: Option<String>,
    alt: Option<String>,
) -> SponsorBlock {
    SponsorBlock {
        id,
        label,
        headline,
        body,
        link,
        image: image.zip(alt),
    }
}
