//! Plan: decide who gets which email, and queue it in the outbox.
//!
//! Planning is set-based SQL in the store; this module picks the slot key, the
//! content window and the expiry.

use chrono::Duration;

use crate::config::Config;
use crate::domain::{Cadence, DeliveryKind, RegionSlug};
use crate::store::{PlanSummary, Store, StoreError};

/// Queues a digest of `region` now for its confirmed `cadence` readers: each gets the
/// region's articles of the last period they have not received yet. A manual send is
/// its own edition, so running it again queues only what is new since.
pub async fn manual_digest(
    config: &Config,
    store: &Store,
    region: &RegionSlug,
    cadence: Cadence,
    now: i64,
    dry_run: bool,
) -> Result<PlanSummary, StoreError> {
    let slot_key = format!(
        "manual:{region}:{cadence}:{}",
        uuid::Uuid::new_v4().simple()
    );
    let since = now - cadence.period().num_seconds();
    let expiry = Duration::from_std(config.expiry(DeliveryKind::Digest, Some(cadence)))
        .unwrap_or(Duration::hours(24));
    store
        .plan_region_digest(
            &slot_key,
            region,
            cadence,
            since,
            now,
            now + expiry.num_seconds(),
            dry_run,
        )
        .await
}
