//! The outbox engine on both backends: claims, leases, outcomes and the engine's
//! transactions.

use super::*;
use crate::domain::{DeliveryId, DeliveryState, Outcome};
use crate::store::testing::{at, lease, seed_planned, send_all_due, stores};
use crate::store::{OnDurable, Recipient};

#[tokio::test]
async fn claims_lease_and_record_outcomes() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let claimed = store
            .claim_due_deliveries(10, at(2_000), lease(2_300))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "{backend:?}");
        assert_eq!(claimed[0].articles.len(), 3);
        assert_eq!(claimed[0].message_id.len(), 32);
        assert_ne!(claimed[0].message_id, claimed[1].message_id);
        assert_eq!(claimed[0].attempts, 1);
        // Leased rows are not claimed twice while the lease holds...
        assert!(
            store
                .claim_due_deliveries(10, at(2_100), lease(2_400))
                .await
                .unwrap()
                .is_empty()
        );
        // ...and come back after it lapses (a crashed worker), keeping their Message-ID.
        let again = store
            .claim_due_deliveries(10, at(2_301), lease(2_600))
            .await
            .unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].message_id, claimed[0].message_id);
        assert_eq!(again[0].attempts, 2);

        store
            .record_outcomes(
                &[
                    (
                        again[0].id,
                        Outcome::Sent {
                            reply: "250 ok".into(),
                        },
                    ),
                    (
                        again[1].id,
                        Outcome::Deferred {
                            error: "421 busy".into(),
                            retry_at: at(3_000),
                        },
                    ),
                ],
                LeaseOwner::TEST,
                at(2_400),
            )
            .await
            .unwrap();
        let status = store.queue_status().await.unwrap();
        let count = |s| status.by_state.iter().find(|(st, _)| *st == s).unwrap().1;
        assert_eq!(count(DeliveryState::Sent), 1);
        assert_eq!(count(DeliveryState::Deferred), 1);
        assert_eq!(status.last_error.unwrap().1, "421 busy");
        // Deferred rows wait for their retry time, then expire after their expiry.
        assert!(
            store
                .claim_due_deliveries(10, at(2_500), lease(2_800))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.expire_overdue(at(10_000)).await.unwrap(), 1);
        assert_eq!(store.retry_failed(at(10_000), at(20_000)).await.unwrap(), 1);
        assert_eq!(store.due_count(at(10_000)).await.unwrap(), 1);
    }
}

/// The rows per state, leaving out states no row is in.
async fn states(store: &Store) -> Vec<(DeliveryState, i64)> {
    let mut states: Vec<_> = store
        .queue_status()
        .await
        .unwrap()
        .by_state
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    states.sort_by_key(|(state, _)| state.as_str());
    states
}

#[tokio::test]
async fn a_claim_commits_with_outcomes_or_not_at_all() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let first = store
            .claim_due_deliveries(1, at(2_000), lease(2_300))
            .await
            .unwrap();
        let claim = Claim {
            limit: 10,
            now: at(2_000),
            lease: lease(2_300),
        };
        // A transaction dropped before its commit leaves nothing behind: the row it
        // claimed is still due, and the outcome it wrote is not there.
        let mut tx = store.begin_engine_transaction().await.unwrap();
        assert_eq!(tx.claim(claim).await.unwrap().len(), 1, "{backend:?}");
        let sent = [(
            first[0].id,
            Outcome::Sent {
                reply: "250 ok".into(),
            },
        )];
        tx.record_outcomes(&sent, LeaseOwner::TEST, at(2_001))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(store.due_count(at(2_000)).await.unwrap(), 1, "{backend:?}");
        assert_eq!(
            states(store).await,
            [(DeliveryState::Queued, 1), (DeliveryState::Sending, 1)],
            "{backend:?}"
        );

        // Committed, the claim and the outcome land together.
        let mut tx = store.begin_engine_transaction().await.unwrap();
        let ids = tx.claim(claim).await.unwrap();
        tx.record_outcomes(&sent, LeaseOwner::TEST, at(2_001))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(ids.len(), 1, "{backend:?}");
        assert_ne!(ids[0], first[0].id);
        let loaded = store.load_claimed(&ids).await.unwrap();
        assert_eq!(loaded[0].articles.len(), 3);
        assert_eq!(loaded[0].attempts, 1);
        assert_eq!(
            states(store).await,
            [(DeliveryState::Sending, 1), (DeliveryState::Sent, 1)],
            "{backend:?}"
        );
        assert_eq!(store.due_count(at(2_000)).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn a_closed_store_refuses_the_engines_writes() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let claimed = store
            .claim_due_deliveries(2, at(2_000), lease(2_100))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "{backend:?}");
        store.close().await;
        let outcomes = [(claimed[0].id, Outcome::Expired)];
        let refused = store
            .record_outcomes(&outcomes, LeaseOwner::TEST, at(2_001))
            .await;
        assert!(refused.is_err(), "{backend:?}: wrote after close");
        assert!(
            store
                .claim_due_deliveries(2, at(2_000), lease(2_100))
                .await
                .is_err(),
            "{backend:?}: claimed after close"
        );
    }
}

#[tokio::test]
async fn work_armed_for_an_outcome_commit_runs_once_it_is_durable_and_never_on_failure() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let claimed = store
            .claim_due_deliveries(2, at(2_000), lease(2_100))
            .await
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let then = |runs: &Arc<AtomicUsize>| {
            let runs = runs.clone();
            OnDurable::new(move || {
                runs.fetch_add(1, Ordering::SeqCst);
            })
        };
        // On its own statement: by the time the call returns, it has run once, and
        // the outcome is there for any other connection to read.
        let sent = [(
            claimed[0].id,
            Outcome::Sent {
                reply: "250 ok".into(),
            },
        )];
        store
            .record_outcomes_then(&sent, LeaseOwner::TEST, at(2_001), then(&runs))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{backend:?}");
        let rows = store.delivery_ledger().await.unwrap();
        assert_eq!(
            rows.iter()
                .filter(|r| r.state == DeliveryState::Sent)
                .count(),
            1,
            "{backend:?}"
        );
        // Inside a claim's transaction: only its commit runs it.
        let mut tx = store.begin_engine_transaction().await.unwrap();
        let sent = [(
            claimed[1].id,
            Outcome::Sent {
                reply: "250 ok".into(),
            },
        )];
        tx.record_outcomes(&sent, LeaseOwner::TEST, at(2_002))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{backend:?}");
        tx.commit_then(then(&runs)).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2, "{backend:?}");
        // Nothing to record: at once.
        store
            .record_outcomes_then(&[], LeaseOwner::TEST, at(2_003), then(&runs))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "{backend:?}");
        // A commit that fails never runs it, then or later.
        store.close().await;
        let expired = [(claimed[0].id, Outcome::Expired)];
        let failed = store
            .record_outcomes_then(&expired, LeaseOwner::TEST, at(2_004), then(&runs))
            .await;
        assert!(failed.is_err(), "{backend:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 3, "{backend:?}");
    }
}

#[tokio::test]
async fn only_the_lease_owner_renews_records_and_releases() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let first = LeaseOwner::random();
        let second = LeaseOwner::random();
        let held = |owner, until| Lease { owner, until };
        let claimed = store
            .claim_due_deliveries(10, at(2_000), held(first, at(2_003)))
            .await
            .unwrap();
        let ids: Vec<DeliveryId> = claimed.iter().map(|d| d.id).collect();
        assert_eq!(ids.len(), 2, "{backend:?}");
        // The owner extends its lease, so the rows are not due when it would have lapsed.
        let mut renewed = store
            .renew_leases(&ids, held(first, at(2_010)))
            .await
            .unwrap();
        renewed.sort_unstable();
        assert_eq!(renewed, ids);
        assert!(
            store
                .claim_due_deliveries(10, at(2_005), held(second, at(2_020)))
                .await
                .unwrap()
                .is_empty(),
            "a renewed lease holds ({backend:?})"
        );
        // Another worker renews nothing, and once the lease lapses it takes the rows.
        assert!(
            store
                .renew_leases(&ids, held(second, at(2_010)))
                .await
                .unwrap()
                .is_empty()
        );
        let taken = store
            .claim_due_deliveries(10, at(2_011), held(second, at(2_020)))
            .await
            .unwrap();
        assert_eq!(taken.len(), 2);
        // The first worker's late outcome, renewal and release change nothing.
        let deferred = Outcome::Deferred {
            error: "421 late".into(),
            retry_at: at(3_000),
        };
        store
            .record_outcomes(&[(ids[0], deferred)], first, at(2_012))
            .await
            .unwrap();
        store
            .release_deliveries(&ids[1..], first, at(2_012))
            .await
            .unwrap();
        assert!(
            store
                .renew_leases(&ids, held(first, at(2_030)))
                .await
                .unwrap()
                .is_empty()
        );
        let ledger = store.delivery_ledger().await.unwrap();
        assert!(
            ledger.iter().all(|row| row.state == DeliveryState::Sending),
            "{ledger:?}"
        );
        // The holder's outcome is recorded.
        let sent = Outcome::Sent {
            reply: "250 ok".into(),
        };
        store
            .record_outcomes(&[(ids[0], sent)], second, at(2_013))
            .await
            .unwrap();
        let ledger = store.delivery_ledger().await.unwrap();
        assert_eq!(ledger[0].state, DeliveryState::Sent, "{backend:?}");
    }
}

#[tokio::test]
async fn checkpoints_keep_the_engines_wal_from_growing() {
    for (_backend, t) in stores().await {
        let Some(file) = t.sqlite_file() else {
            continue;
        };
        let store = &t.store;
        seed_planned(store).await;
        let ids: Vec<DeliveryId> = store
            .claim_due_deliveries(10, at(2_000), lease(2_010))
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        let wal = || {
            std::fs::metadata(format!("{}-wal", file.display()))
                .unwrap()
                .len()
        };
        // The engine's connection never checkpoints by itself: each round of commits
        // adds to the WAL unless `checkpoint` lets it start over.
        let mut sizes = Vec::new();
        for round in 0..8 {
            for renewal in 0..40 {
                let until = 3_000 + round * 100 + renewal;
                let renewed = store.renew_leases(&ids, lease(until)).await;
                assert_eq!(renewed.unwrap().len(), ids.len());
            }
            store.checkpoint().await.unwrap();
            sizes.push(wal());
        }
        assert!(
            sizes[7] <= sizes[0] * 2,
            "the WAL kept growing across checkpoints: {sizes:?}"
        );
    }
}

#[tokio::test]
async fn send_time_checks_see_unsubscribes_and_suppressions() {
    for (_backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let claimed = store
            .claim_due_deliveries(10, at(2_000), lease(2_300))
            .await
            .unwrap();
        store
            .record_outcomes(
                &[(
                    claimed[0].id,
                    Outcome::Bounced {
                        reply: "550 5.1.1 no such user".into(),
                        suppress: true,
                    },
                )],
                LeaseOwner::TEST,
                at(2_100),
            )
            .await
            .unwrap();
        let list = store.list_subscribers().await.unwrap();
        assert_eq!(list[0].state, SubscriberState::Suppressed);
        // Releasing the other row puts it back; its reader unsubscribes before the send.
        store
            .release_deliveries(&[claimed[1].id], LeaseOwner::TEST, at(2_100))
            .await
            .unwrap();
        store
            .unsubscribe(claimed[1].subscriber_id, at(2_150))
            .await
            .unwrap();
        assert!(
            store
                .claim_due_deliveries(10, at(2_200), lease(2_500))
                .await
                .unwrap()
                .is_empty()
        );
        let ledger = store.delivery_ledger().await.unwrap();
        assert_eq!(ledger[0].state, DeliveryState::Bounced);
        assert_eq!(ledger[1].state, DeliveryState::Cancelled);
        assert_eq!(ledger[1].attempts, 0, "a released claim is not an attempt");
    }
}

#[tokio::test]
async fn a_reader_stored_with_an_unreadable_zone_is_an_error_naming_the_row() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let readers = store.list_subscribers().await.unwrap();
        let (broken, intact) = (readers[0].id, readers[1].id);
        sqlx::query("UPDATE subscribers SET timezone = 'Mars/Olympus' WHERE id = $1")
            .bind(broken)
            .execute(&store.pool)
            .await
            .unwrap();
        let named = |error: &str| {
            error.contains(&format!("subscribers row {broken} "))
                && error.contains("timezone")
                && error.contains("Mars/Olympus")
        };
        // Claimed, only that reader's row is unreadable: the other is sent as ever.
        let claimed = store
            .claim_due_deliveries(10, at(2_000), lease(2_300))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "{backend:?}");
        for row in &claimed {
            match &row.recipient {
                Recipient::Unreadable(error) => {
                    assert_eq!(row.subscriber_id, broken);
                    assert!(named(error), "{backend:?}: {error}");
                }
                Recipient::Reader { timezone, .. } => {
                    assert_eq!(row.subscriber_id, intact);
                    assert_eq!(*timezone, "UTC");
                }
                Recipient::Erased => panic!("{backend:?}: nobody was erased"),
            }
        }
        // Listing readers says which row to correct; planning by zone leaves that zone
        // out (with an error in the log) and keeps everyone else's.
        let listed = store.list_subscribers().await.unwrap_err().to_string();
        assert!(named(&listed), "{backend:?}: {listed}");
        let zones = store.cadence_zones(Cadence::Daily).await.unwrap();
        let zones: Vec<&str> = zones.iter().map(|zone| zone.name()).collect();
        assert_eq!(zones, ["UTC"], "{backend:?}");
    }
}

#[tokio::test]
async fn the_ledger_snapshot_counts_rows_per_state_lane_and_reader_state() {
    use crate::domain::{DeliveryKind, SubscriberState};
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let before = store.ledger_snapshot().await.unwrap();
        let queued: i64 = before
            .deliveries
            .iter()
            .filter(|(s, k, _)| *s == DeliveryState::Queued && *k == DeliveryKind::Digest)
            .map(|(_, _, n)| n)
            .sum();
        assert!(queued > 0, "{backend:?}: {before:?}");
        assert_eq!(before.lanes.len(), 1, "{backend:?}: {before:?}");
        let (lane, depth, oldest) = before.lanes[0];
        assert_eq!((lane, depth), (2, queued), "{backend:?}: the digest lane");
        assert!(oldest.is_some(), "{backend:?}");
        let confirmed: i64 = before
            .readers
            .iter()
            .filter(|(s, _)| *s == SubscriberState::Confirmed)
            .map(|(_, n)| n)
            .sum();
        assert!(confirmed >= queued, "{backend:?}: {before:?}");
        assert_eq!(store.unfinished_count().await.unwrap(), queued);

        send_all_due(store, 1_000, 2_000).await;
        let after = store.ledger_snapshot().await.unwrap();
        assert!(after.lanes.is_empty(), "{backend:?}: {after:?}");
        assert!(
            after
                .deliveries
                .contains(&(DeliveryState::Sent, DeliveryKind::Digest, queued)),
            "{backend:?}: {after:?}"
        );
        assert_eq!(store.unfinished_count().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn migration_status_lists_what_is_not_applied() {
    for (backend, t) in stores().await {
        let status = t.store.migration_status().await.unwrap();
        assert!(status.pending.is_empty(), "{backend:?}: {status:?}");
        assert!(status.unknown.is_empty(), "{backend:?}: {status:?}");
        let known = crate::store::SQLITE_MIGRATIONS.iter().count();
        assert_eq!(
            status.applied, known,
            "{backend:?}: every migration built in"
        );
    }
    // One short of the newest: that one is pending, whichever it is.
    let newest = crate::store::SQLITE_MIGRATIONS
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    for (backend, t) in crate::store::testing::stores_migrated_to(newest - 1).await {
        let status = t.store.migration_status().await.unwrap();
        assert_eq!(status.pending, vec![newest], "{backend:?}");
        // Versions may skip numbers (each branch is given its own).
        let older = crate::store::SQLITE_MIGRATIONS
            .iter()
            .filter(|m| m.version < newest)
            .count();
        assert_eq!(status.applied, older, "{backend:?}");
    }
}
