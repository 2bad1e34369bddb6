//! Sends on both backends: one send per idempotency key, counts read from the ledger,
//! pause holding rows from every claim, resume going on from the unsent rows, cancel
//! leaving sent rows as they are, and a send that is done once none of its rows waits.

use super::*;
use crate::domain::{Outcome, SendState};
use crate::store::testing::{at, lease, seed, send_all_due, stores};
use crate::store::{LeaseOwner, SendChange};

fn new_send(region: &RegionSlug, key: Option<&str>) -> NewSend {
    NewSend {
        started_by: "cli:editor".into(),
        region: region.clone(),
        cadence: Cadence::Daily,
        dry_run: false,
        test_address: None,
        idempotency_key: key.map(str::to_string),
    }
}

/// Starts a send of the seeded region at 2,000 and queues its two digests.
async fn planned_send(store: &Store, region: &RegionSlug) -> ManualSend {
    let (send, fresh) = store
        .create_send(&new_send(region, None), at(2_000))
        .await
        .unwrap();
    assert!(fresh);
    assert_eq!(send.state, SendState::Planning);
    let plan = store
        .plan_region_digest(
            &format!("send:{}", send.id),
            region,
            Cadence::Daily,
            at(0),
            at(2_000),
            at(90_000),
            false,
            Some(send.id),
        )
        .await
        .unwrap();
    assert_eq!(plan.deliveries, 2);
    store
        .finish_send_planning(send.id, true, None, at(2_000))
        .await
        .unwrap();
    store.send(send.id).await.unwrap().unwrap()
}

fn changed(change: SendChange) -> ManualSend {
    match change {
        SendChange::Changed(send) => send,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test]
async fn the_same_idempotency_key_makes_one_send() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let town = seed(store).await;
        let key = Some("7f3c-first");
        let (first, fresh) = store
            .create_send(&new_send(&town, key), at(100))
            .await
            .unwrap();
        assert!(fresh, "{backend:?}");
        let (again, fresh) = store
            .create_send(&new_send(&town, key), at(200))
            .await
            .unwrap();
        assert!(!fresh, "{backend:?}");
        assert_eq!(again.id, first.id, "{backend:?}");
        assert_eq!(again.started_at, at(100), "{backend:?}");
        let (other, fresh) = store
            .create_send(&new_send(&town, Some("another")), at(300))
            .await
            .unwrap();
        assert!(fresh && other.id != first.id, "{backend:?}");
        // Sends without a key never collide.
        let (a, _) = store
            .create_send(&new_send(&town, None), at(400))
            .await
            .unwrap();
        let (b, _) = store
            .create_send(&new_send(&town, None), at(400))
            .await
            .unwrap();
        assert_ne!(a.id, b.id, "{backend:?}");
        assert_eq!(store.sends(10).await.unwrap().len(), 4, "{backend:?}");
        assert_eq!(store.sends(10).await.unwrap()[0].id, b.id, "newest first");
    }
}

#[tokio::test]
async fn a_send_counts_its_rows_from_the_ledger_and_is_done_when_none_waits() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let town = seed(store).await;
        let send = planned_send(store, &town).await;
        assert_eq!(send.state, SendState::Sending, "{backend:?}");
        assert_eq!(send.counts.total(), 2, "{backend:?}");
        assert_eq!(send.counts.of(DeliveryState::Queued), 2, "{backend:?}");
        assert_eq!(send.finished_at, None);

        send_all_due(store, 1, 2_100).await;
        let send = store.send(send.id).await.unwrap().unwrap();
        assert_eq!(send.state, SendState::Sending, "{backend:?}");
        assert_eq!(send.counts.of(DeliveryState::Sent), 1, "{backend:?}");

        send_all_due(store, 10, 2_200).await;
        let send = store.send(send.id).await.unwrap().unwrap();
        assert_eq!(send.state, SendState::Done, "{backend:?}");
        assert_eq!(send.counts.of(DeliveryState::Sent), 2, "{backend:?}");
        assert_eq!(send.finished_at, Some(at(2_200)), "{backend:?}");
        // Done is the end: nothing to pause or cancel.
        let refused = store.pause_send(send.id, at(2_300)).await.unwrap();
        assert!(matches!(refused, SendChange::Refused(_)), "{backend:?}");
        let refused = store.cancel_send(send.id, at(2_300)).await.unwrap();
        assert!(matches!(refused, SendChange::Refused(_)), "{backend:?}");
        let missing = store.pause_send(SendId::new(999), at(2_300)).await.unwrap();
        assert_eq!(missing, SendChange::NotFound, "{backend:?}");
    }
}

#[tokio::test]
async fn a_paused_send_is_never_claimed_and_resumes_from_its_unsent_rows() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let town = seed(store).await;
        let send = planned_send(store, &town).await;
        // One reader has theirs; then the send is paused.
        let first = send_all_due(store, 1, 2_100).await;
        assert_eq!(first.len(), 1, "{backend:?}");
        let paused = changed(store.pause_send(send.id, at(2_150)).await.unwrap());
        assert_eq!(paused.state, SendState::Paused, "{backend:?}");
        assert_eq!(paused.counts.of(DeliveryState::Paused), 1, "{backend:?}");
        assert_eq!(paused.counts.of(DeliveryState::Sent), 1, "{backend:?}");
        assert!(
            send_all_due(store, 10, 2_200).await.is_empty(),
            "{backend:?}: a paused send's row was claimed"
        );
        // Pausing twice is refused with the send as it is.
        let again = store.pause_send(send.id, at(2_250)).await.unwrap();
        assert!(matches!(again, SendChange::Refused(s) if s.state == SendState::Paused));

        let resumed = changed(store.resume_send(send.id, at(2_300)).await.unwrap());
        assert_eq!(resumed.state, SendState::Sending, "{backend:?}");
        assert_eq!(resumed.counts.of(DeliveryState::Queued), 1, "{backend:?}");
        let second = send_all_due(store, 10, 2_400).await;
        assert_eq!(second.len(), 1, "{backend:?}: only the unsent row goes out");
        assert_ne!(
            second[0].subscriber_id, first[0].subscriber_id,
            "{backend:?}"
        );
        let done = store.send(send.id).await.unwrap().unwrap();
        assert_eq!(done.state, SendState::Done, "{backend:?}");
        assert_eq!(done.counts.of(DeliveryState::Sent), 2, "{backend:?}");
    }
}

#[tokio::test]
async fn a_row_out_with_a_worker_when_its_send_paused_is_held_once_it_comes_back() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let town = seed(store).await;
        let send = planned_send(store, &town).await;
        let claimed = store
            .claim_due_deliveries(1, at(2_100), lease(2_400))
            .await
            .unwrap();
        changed(store.pause_send(send.id, at(2_150)).await.unwrap());
        // The attempt ends deferred, due again at once.
        let deferred = Outcome::Deferred {
            error: "451 try later".into(),
            retry_at: at(2_200),
        };
        store
            .record_outcomes(&[(claimed[0].id, deferred)], LeaseOwner::TEST, at(2_200))
            .await
            .unwrap();
        assert_eq!(store.hold_paused_sends(at(2_250)).await.unwrap(), 1);
        assert!(
            send_all_due(store, 10, 2_300).await.is_empty(),
            "{backend:?}"
        );
        // Resumed, it waits as the deferred row it was, its retry time kept.
        let resumed = changed(store.resume_send(send.id, at(2_350)).await.unwrap());
        assert_eq!(resumed.counts.of(DeliveryState::Deferred), 1, "{backend:?}");
        assert_eq!(resumed.counts.of(DeliveryState::Queued), 1, "{backend:?}");
        assert_eq!(send_all_due(store, 10, 2_400).await.len(), 2, "{backend:?}");
    }
}

#[tokio::test]
async fn cancel_leaves_sent_rows_and_cancels_the_rest() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let town = seed(store).await;
        let send = planned_send(store, &town).await;
        send_all_due(store, 1, 2_100).await;
        let cancelled = changed(store.cancel_send(send.id, at(2_200)).await.unwrap());
        assert_eq!(cancelled.state, SendState::Cancelled, "{backend:?}");
        assert_eq!(cancelled.finished_at, Some(at(2_200)), "{backend:?}");
        assert_eq!(cancelled.counts.of(DeliveryState::Sent), 1, "{backend:?}");
        assert_eq!(
            cancelled.counts.of(DeliveryState::Cancelled),
            1,
            "{backend:?}"
        );
        assert!(
            send_all_due(store, 10, 2_300).await.is_empty(),
            "{backend:?}"
        );
        let refused = store.resume_send(send.id, at(2_400)).await.unwrap();
        assert!(matches!(refused, SendChange::Refused(_)), "{backend:?}");
    }
}

#[tokio::test]
async fn a_send_that_could_not_be_planned_keeps_why() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let town = seed(store).await;
        let (send, _) = store
            .create_send(&new_send(&town, None), at(100))
            .await
            .unwrap();
        store
            .fail_send(send.id, "region town has no articles", at(150))
            .await
            .unwrap();
        let send = store.send(send.id).await.unwrap().unwrap();
        assert_eq!(send.state, SendState::Cancelled, "{backend:?}");
        assert_eq!(send.error.as_deref(), Some("region town has no articles"));
        assert_eq!(send.finished_at, Some(at(150)), "{backend:?}");
    }
}

#[tokio::test]
async fn the_ledger_snapshot_counts_sends_in_progress_as_their_views_do() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let town = seed(store).await;
        let in_progress = |snapshot: crate::metrics::LedgerSnapshot| {
            let mut sends = snapshot.sends;
            sends.sort_by_key(|(state, _)| state.as_str());
            sends
        };
        let send = planned_send(store, &town).await;
        let (_, fresh) = store
            .create_send(&new_send(&town, None), at(2_000))
            .await
            .unwrap();
        assert!(fresh);
        assert_eq!(
            in_progress(store.ledger_snapshot().await.unwrap()),
            [(SendState::Planning, 1), (SendState::Sending, 1)],
            "{backend:?}"
        );
        changed(store.pause_send(send.id, at(2_050)).await.unwrap());
        assert_eq!(
            in_progress(store.ledger_snapshot().await.unwrap()),
            [(SendState::Paused, 1), (SendState::Planning, 1)],
            "{backend:?}"
        );
        // Resumed and sent out: stored as `sending`, read as done, no longer counted.
        changed(store.resume_send(send.id, at(2_100)).await.unwrap());
        send_all_due(store, 10, 2_200).await;
        assert_eq!(
            in_progress(store.ledger_snapshot().await.unwrap()),
            [(SendState::Planning, 1)],
            "{backend:?}"
        );
    }
}
