//! Workers on both backends: a dead worker's claims go back to the queue, a live one's
//! stay, and a worker taken for dead registers again when it beats.

use super::*;
use crate::domain::DeliveryId;
use crate::store::testing::{at, seed_planned, stores};
use crate::store::{ClaimedDelivery, Lease};

fn worker(owner: i64, started: i64) -> Worker {
    Worker {
        owner: LeaseOwner(owner),
        host: "test-host".into(),
        pid: 4_242,
        started_at: at(started),
        process: None,
    }
}

/// Claims one due row at `now` as `worker`, under a five-minute lease.
async fn claim_one(store: &Store, worker: &Worker, now: i64) -> ClaimedDelivery {
    let lease = Lease {
        owner: worker.owner,
        until: at(now + 300),
    };
    let mut claimed = store.claim_due_deliveries(1, at(now), lease).await.unwrap();
    assert_eq!(claimed.len(), 1);
    claimed.remove(0)
}

/// Each row's state, attempts, lease owner and next attempt, by id.
async fn row(store: &Store, id: DeliveryId) -> (String, i64, Option<i64>, i64) {
    sqlx::query_as(
        "SELECT state, attempts, lease_owner, next_attempt_at FROM deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&store.pool)
    .await
    .unwrap()
}

async fn registered(store: &Store) -> Vec<i64> {
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM workers ORDER BY id")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    rows.into_iter().map(|(id,)| id).collect()
}

#[tokio::test]
async fn a_dead_workers_claims_go_back_and_a_live_workers_stay() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let (dead, live) = (worker(7, 2_000), worker(8, 2_000));
        for w in [&dead, &live] {
            let beat = store.worker_heartbeat(w, at(2_000)).await.unwrap();
            assert_eq!(beat, Heartbeat::Registered, "{backend:?}");
        }
        let lost = claim_one(store, &dead, 2_000).await;
        let kept = claim_one(store, &live, 2_000).await;
        // The live worker is slow (its rows wait well past the timeout) but beats.
        assert_eq!(
            store.worker_heartbeat(&live, at(2_025)).await.unwrap(),
            Heartbeat::Beat
        );
        // At 2,020 neither is dead yet under a 30-second timeout: nothing moves.
        let none = store
            .release_dead_workers(at(2_020 - 30), at(2_020))
            .await
            .unwrap();
        assert_eq!(none, DeadWorkers::default(), "{backend:?}");

        let found = store
            .release_dead_workers(at(2_035 - 30), at(2_035))
            .await
            .unwrap();
        assert_eq!(
            found,
            DeadWorkers {
                owners: vec![dead.owner],
                released: 1
            },
            "{backend:?}"
        );
        assert_eq!(
            row(store, lost.id).await,
            ("queued".into(), 0, None, 1_999),
            "{backend:?}: due again at the front of its place, the claim not counted as an attempt"
        );
        assert_eq!(
            row(store, kept.id).await,
            ("sending".into(), 1, Some(live.owner.0), 2_000),
            "{backend:?}: the live worker keeps its claim"
        );
        assert_eq!(registered(store).await, vec![live.owner.0]);
        // The next claim takes the dead worker's row, with its Message-ID.
        let again = claim_one(store, &live, 2_035).await;
        assert_eq!(again.id, lost.id);
        assert_eq!(again.message_id, lost.message_id);
        assert_eq!(again.attempts, 1);
    }
}

#[tokio::test]
async fn a_retried_row_given_back_stays_deferred() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let dead = worker(7, 2_000);
        store.worker_heartbeat(&dead, at(2_000)).await.unwrap();
        let first = claim_one(store, &dead, 2_000).await;
        store
            .record_outcomes(
                &[(
                    first.id,
                    crate::domain::Outcome::Deferred {
                        error: "421 busy".into(),
                        retry_at: at(2_010),
                    },
                )],
                dead.owner,
                at(2_001),
            )
            .await
            .unwrap();
        // Both rows now claimed; the retried one is on its second attempt.
        let lease = Lease {
            owner: dead.owner,
            until: at(2_400),
        };
        let claimed = store
            .claim_due_deliveries(2, at(2_010), lease)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "{backend:?}");
        let found = store
            .release_dead_workers(at(2_100 - 30), at(2_100))
            .await
            .unwrap();
        assert_eq!(found.released, 2, "{backend:?}");
        assert_eq!(
            row(store, first.id).await,
            ("deferred".into(), 1, None, 2_009)
        );
    }
}

#[tokio::test]
async fn a_starting_worker_releases_the_rows_of_workers_long_gone() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        // A worker claimed both rows and was killed.
        let killed = worker(7, 2_000);
        store.worker_heartbeat(&killed, at(2_000)).await.unwrap();
        let lease = Lease {
            owner: killed.owner,
            until: at(2_300),
        };
        assert_eq!(
            store
                .claim_due_deliveries(10, at(2_000), lease)
                .await
                .unwrap()
                .len(),
            2
        );
        // A minute later, within their five-minute lease, another worker starts: its
        // first beat and release take them back, and its first claim gets both.
        let next = worker(9, 2_060);
        store.worker_heartbeat(&next, at(2_060)).await.unwrap();
        let found = store
            .release_dead_workers(at(2_060 - 30), at(2_060))
            .await
            .unwrap();
        assert_eq!(found.owners, vec![killed.owner], "{backend:?}");
        assert_eq!(found.released, 2);
        let lease = Lease {
            owner: next.owner,
            until: at(2_360),
        };
        let claimed = store
            .claim_due_deliveries(10, at(2_060), lease)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "{backend:?}");
        assert!(claimed.iter().all(|d| d.attempts == 1));
        assert_eq!(registered(store).await, vec![next.owner.0]);
    }
}

#[tokio::test]
async fn a_worker_taken_for_dead_registers_again_and_leaves_cleanly() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let stalled = worker(7, 2_000);
        store.worker_heartbeat(&stalled, at(2_000)).await.unwrap();
        store
            .release_dead_workers(at(2_100), at(2_130))
            .await
            .unwrap();
        assert!(registered(store).await.is_empty(), "{backend:?}");
        assert_eq!(
            store.worker_heartbeat(&stalled, at(2_131)).await.unwrap(),
            Heartbeat::Registered,
            "{backend:?}"
        );
        assert_eq!(registered(store).await, vec![7]);
        store.remove_worker(stalled.owner).await.unwrap();
        assert!(registered(store).await.is_empty(), "{backend:?}");
        // Rows without a registered owner (an older herald, say) are left to their lease.
        assert_eq!(
            store
                .release_dead_workers(at(9_000), at(9_000))
                .await
                .unwrap(),
            DeadWorkers::default()
        );
    }
}
