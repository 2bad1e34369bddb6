//! Feed leases: several daemons on one database poll each feed once. A daemon claims a
//! due feed before polling it, as the worker its deliveries carry (`workers`); the claim
//! holds until the poll is recorded, which clears it. The worker's heartbeat renews the
//! leases it holds, so a slow poll keeps its feed; when a worker is found dead its leases
//! are cleared with its claimed rows (`release_dead_workers`), and a worker that stops
//! cleanly gives its leases up (`remove_worker`). `lease_until` is the backstop for a
//! holder that never registered: its claim runs out by itself.

use super::{FeedPollState, LeaseOwner, Result, Store};
use crate::domain::{FeedId, RegionSlug, Timestamp};

type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Store {
    /// Claims the feed for (region, url) for `owner` when it is due at `now` and no
    /// live claim holds it, until `until` (renewed by the owner's heartbeat). Returns the
    /// state the poll needs, read after the claim, or `None` when the feed is not due or
    /// another worker holds it: then it is not polled here.
    pub async fn claim_feed(
        &self,
        region: &RegionSlug,
        url: &str,
        owner: LeaseOwner,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<FeedPollState>> {
        let state = self.feed_poll_state(region, url).await?;
        if state.next_poll_at.is_some_and(|at| at > now) {
            return Ok(None);
        }
        // The due time is checked again in the claim itself: another daemon may have
        // polled the feed since the read above.
        let claimed = sqlx::query(
            "UPDATE feeds SET lease_owner = $1, lease_until = $2
             WHERE id = $3 AND (next_poll_at IS NULL OR next_poll_at <= $4)
               AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until < $4)",
        )
        .bind(owner.0)
        .bind(until)
        .bind(state.id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(None);
        }
        Ok(Some(self.feed_poll_state(region, url).await?))
    }

    /// Gives up `owner`'s lease on one feed without recording a poll (the poll could not
    /// be recorded); another daemon may take it at once.
    pub async fn release_feed(&self, feed: FeedId, owner: LeaseOwner) -> Result<()> {
        sqlx::query(
            "UPDATE feeds SET lease_owner = NULL, lease_until = NULL
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(feed)
        .bind(owner.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Extends every feed lease `owner` holds to `until`: its heartbeat. Returns how many.
    pub async fn renew_feed_leases(&self, owner: LeaseOwner, until: Timestamp) -> Result<u64> {
        Ok(
            sqlx::query("UPDATE feeds SET lease_until = $1 WHERE lease_owner = $2")
                .bind(until)
                .bind(owner.0)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Which worker holds the feed for (region, url) now, if any (for the operator and
    /// the tests).
    pub async fn feed_lease(&self, region: &RegionSlug, url: &str) -> Result<Option<LeaseOwner>> {
        let held: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT lease_owner FROM feeds WHERE region_slug = $1 AND url = $2")
                .bind(region.as_str())
                .bind(url)
                .fetch_optional(&self.pool)
                .await?;
        Ok(held.and_then(|(owner,)| owner).map(LeaseOwner))
    }
}

/// Clears the feed leases of the workers whose heartbeat is older than `dead_before`,
/// inside the transaction that gives their claimed rows back (before their rows go).
pub(super) async fn release_dead(tx: &mut Tx, dead_before: Timestamp) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE feeds SET lease_owner = NULL, lease_until = NULL
         WHERE lease_owner IN (SELECT id FROM workers WHERE heartbeat_at < $1)",
    )
    .bind(dead_before)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Clears every feed lease `owner` holds: it stops.
pub(super) async fn release_all(store: &Store, owner: LeaseOwner) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE feeds SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
    )
    .bind(owner.0)
    .execute(&store.pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Worker;
    use crate::store::testing::{at, stores};

    fn worker(owner: i64) -> Worker {
        Worker {
            owner: LeaseOwner(owner),
            host: "test-host".into(),
            pid: 4_242,
            started_at: at(1_000),
            process: None,
        }
    }

    #[tokio::test]
    async fn a_due_feed_is_claimed_by_one_worker_until_its_poll_is_recorded() {
        let region: RegionSlug = "riverton".parse().unwrap();
        let url = "https://news.example/feed.xml";
        for (backend, t) in stores().await {
            let store = &t.store;
            let (a, b) = (LeaseOwner(7), LeaseOwner(8));
            let first = store
                .claim_feed(&region, url, a, at(1_000), at(1_030))
                .await
                .unwrap()
                .expect("a feed never polled is due");
            assert!(
                store
                    .claim_feed(&region, url, b, at(1_001), at(1_031))
                    .await
                    .unwrap()
                    .is_none(),
                "{backend:?}: a second worker claimed a feed being polled"
            );
            assert_eq!(store.feed_lease(&region, url).await.unwrap(), Some(a));
            // The record clears the lease and sets the next due time.
            store
                .record_feed_polled(first.id, None, None, at(1_002), at(1_060))
                .await
                .unwrap();
            assert_eq!(store.feed_lease(&region, url).await.unwrap(), None);
            assert!(
                store
                    .claim_feed(&region, url, b, at(1_030), at(1_060))
                    .await
                    .unwrap()
                    .is_none(),
                "{backend:?}: a feed was claimed before it was due"
            );
            assert!(
                store
                    .claim_feed(&region, url, b, at(1_060), at(1_090))
                    .await
                    .unwrap()
                    .is_some(),
                "{backend:?}: the next poll goes to whoever ticks first"
            );
            // A lease that is not renewed runs out by itself.
            assert!(
                store
                    .claim_feed(&region, url, a, at(1_091), at(1_120))
                    .await
                    .unwrap()
                    .is_some(),
                "{backend:?}: a lease past its time still held"
            );
        }
    }

    #[tokio::test]
    async fn a_dead_workers_feeds_are_freed_at_once_and_a_live_ones_kept_by_its_beat() {
        let region: RegionSlug = "riverton".parse().unwrap();
        let (dead_url, live_url) = ("https://a.example/feed", "https://b.example/feed");
        for (backend, t) in stores().await {
            let store = &t.store;
            let (dead, live) = (worker(7), worker(8));
            for w in [&dead, &live] {
                store.worker_heartbeat(w, at(1_000)).await.unwrap();
            }
            for (url, w) in [(dead_url, &dead), (live_url, &live)] {
                store
                    .claim_feed(&region, url, w.owner, at(1_000), at(1_030))
                    .await
                    .unwrap()
                    .unwrap();
            }
            // The live worker beats and renews; the dead one is silent.
            store.worker_heartbeat(&live, at(1_025)).await.unwrap();
            assert_eq!(
                store
                    .renew_feed_leases(live.owner, at(1_055))
                    .await
                    .unwrap(),
                1
            );
            let found = store
                .release_dead_workers(at(1_010), at(1_040))
                .await
                .unwrap();
            assert_eq!(found.owners, vec![dead.owner], "{backend:?}");
            assert_eq!(store.feed_lease(&region, dead_url).await.unwrap(), None);
            assert!(
                store
                    .claim_feed(&region, dead_url, live.owner, at(1_026), at(1_056))
                    .await
                    .unwrap()
                    .is_some(),
                "{backend:?}: the dead worker's feed is taken over before its lease ran out"
            );
            assert!(
                store
                    .claim_feed(&region, live_url, LeaseOwner(9), at(1_040), at(1_070))
                    .await
                    .unwrap()
                    .is_none(),
                "{backend:?}: a renewed lease was taken"
            );
            // A clean stop gives both up.
            store.remove_worker(live.owner).await.unwrap();
            for url in [dead_url, live_url] {
                assert_eq!(store.feed_lease(&region, url).await.unwrap(), None);
            }
        }
    }
}
