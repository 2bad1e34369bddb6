//! Manual sends: one region's digest now, for its readers at one cadence, through the
//! same machinery as scheduled slots.

use super::digests::DigestBatch;
use crate::domain::{Cadence, EditionId, RegionSlug, SendId, Timestamp};
use crate::store::{PlanSummary, Result, Store};

impl Store {
    /// Queues one digest for each confirmed reader of `region` at `cadence` who has
    /// articles there (added since `since`) they have not received yet, in one transaction.
    ///
    /// Set-based: a handful of statements whatever the number of readers, sharing the
    /// scheduled slots' content groups (readers who already had some of the articles get
    /// a content without them). An edition that already exists is left as it is. The
    /// edition belongs to `send`, when the send is one of the `sends` rows.
    #[allow(clippy::too_many_arguments)]
    pub async fn plan_region_digest(
        &self,
        slot_key: &str,
        region: &RegionSlug,
        cadence: Cadence,
        since: Timestamp,
        now: Timestamp,
        expires_at: Timestamp,
        dry_run: bool,
        send: Option<SendId>,
    ) -> Result<PlanSummary> {
        let mut tx = self.begin_plan().await?;
        let created: Option<(EditionId,)> = sqlx::query_as(
            "INSERT INTO editions (slot_key, kind, cadence, region_slug, planned_at, slot_at,
                 send_id)
             VALUES ($1, 'digest', $2, $3, $4, $4, $5)
             ON CONFLICT (slot_key) DO NOTHING RETURNING id",
        )
        .bind(slot_key)
        .bind(cadence.as_str())
        .bind(region.as_str())
        .bind(now)
        .bind(send)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((edition_id,)) = created else {
            let (edition_id,): (EditionId,) =
                sqlx::query_as("SELECT id FROM editions WHERE slot_key = $1")
                    .bind(slot_key)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(PlanSummary {
                edition_id: Some(edition_id),
                ..PlanSummary::default()
            });
        };
        self.create_plan_readers(&mut tx).await?;
        sqlx::query(
            "INSERT INTO plan_readers (subscriber_id, window_start, regions, articles_through)
             SELECT s.id, $1, sub.region_slug,
                    (SELECT MAX(d.articles_through) FROM deliveries d
                     WHERE d.subscriber_id = s.id AND d.articles_through IS NOT NULL)
             FROM subscribers s JOIN subscriptions sub ON sub.subscriber_id = s.id
             WHERE s.state = 'confirmed' AND sub.region_slug = $2 AND sub.cadence = $3",
        )
        .bind(since)
        .bind(region.as_str())
        .bind(cadence.as_str())
        .execute(&mut *tx)
        .await?;
        let summary = self
            .queue_digests(
                &mut tx,
                &DigestBatch {
                    edition_id,
                    cadence,
                    region: Some(region),
                    slot_at: now,
                    now,
                    expires_at,
                    zone: None,
                },
            )
            .await?;
        let dry = self.finish_plan(tx, edition_id, dry_run).await?;
        Ok(PlanSummary {
            recipients: dry.recipients,
            zones: dry.zones,
            ..summary
        })
    }
}
