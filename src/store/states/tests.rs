//! Every statement that changes a row's state, run against one row in each state: rows
//! move only along the transition table, and every row a transition applies to moves.
//! The state CHECK on both backends, on a new database and on one migrated with rows.

use std::collections::BTreeMap;

use super::*;
use crate::domain::{Cadence, DeliveryId, Email, Outcome, SubscriberId};
use crate::store::testing::{at, lease, migrate_to, seed, stores, stores_migrated_to};
use crate::store::{Backend, LeaseOwner, NewSend, NewSubscriber, SendChange, Store};

/// The instant the statements run at: every fixture row is due, its lease has lapsed
/// and its expiry has passed.
const NOW: i64 = 10_000;

/// Each row's state, by id.
async fn states_by_id(store: &Store) -> BTreeMap<DeliveryId, DeliveryState> {
    let rows: Vec<(DeliveryId, String)> = sqlx::query_as("SELECT id, state FROM deliveries")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, state)| (id, state.parse().unwrap()))
        .collect()
}

/// Replaces the outbox with one row of `reader` in each state, every one due, held
/// by the test owner under a lapsed lease and past its expiry; returns their states.
async fn one_row_per_state(
    store: &Store,
    reader: SubscriberId,
) -> BTreeMap<DeliveryId, DeliveryState> {
    sqlx::query("DELETE FROM deliveries")
        .execute(&store.pool)
        .await
        .unwrap();
    for state in DeliveryState::ALL {
        let (edition,): (i64,) = sqlx::query_as(
            "INSERT INTO editions (slot_key, kind, cadence, planned_at) VALUES ($1, 'digest', 'daily', 0)
             ON CONFLICT (slot_key) DO UPDATE SET planned_at = 0 RETURNING id",
        )
        .bind(format!("fixture:{state}"))
        .fetch_one(&store.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority, state,
                 attempts, message_id, next_attempt_at, lease_until, lease_owner, expires_at,
                 created_at, updated_at)
             VALUES ($1, $2, 'digest', 'daily', 2, $3, 2, $4, 0, 1, $5, 5, 0, 0)",
        )
        .bind(edition)
        .bind(reader)
        .bind(state.as_str())
        .bind(format!("{:032x}", edition))
        .bind(LeaseOwner::TEST.0)
        .execute(&store.pool)
        .await
        .unwrap();
    }
    states_by_id(store).await
}

/// Checks what a statement did to the rows in `before`: each row that changed state
/// moved along one of `transitions`, each new row is one a transition makes, and
/// every row in a state one of them moves rows from is now in a state it leaves them in.
async fn moved_only_by(
    store: &Store,
    backend: Backend,
    statement: &str,
    transitions: &[Transition],
    before: &BTreeMap<DeliveryId, DeliveryState>,
) {
    let after = states_by_id(store).await;
    for (id, was) in before {
        let now = after[id];
        let applies = transitions.iter().any(|t| t.rule().from.contains(was));
        if now != *was || applies {
            assert!(
                transitions.iter().any(|t| t.allows(*was, now)),
                "{backend:?}: {statement} left row {id} {now}, from {was}: not in {transitions:?}"
            );
        }
    }
    for (id, now) in after.iter().filter(|(id, _)| !before.contains_key(id)) {
        assert!(
            transitions
                .iter()
                .any(|t| t.rule().from.is_empty() && t.rule().to.contains(now)),
            "{backend:?}: {statement} made row {id} {now}: not in {transitions:?}"
        );
    }
}

#[tokio::test]
async fn each_statement_moves_rows_only_along_the_transition_table() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let town = seed(store).await;
        let reader = store.list_subscribers().await.unwrap()[0].id;
        let ids =
            |rows: &BTreeMap<DeliveryId, DeliveryState>| rows.keys().copied().collect::<Vec<_>>();

        // Plan: a manual send, a sign-up and a confirmation make rows; none moves one.
        let before = one_row_per_state(store, reader).await;
        let plan = store
            .plan_region_digest(
                "manual:t",
                &town,
                Cadence::Daily,
                at(0),
                at(NOW),
                at(NOW + 9_000),
                false,
                None,
            )
            .await
            .unwrap();
        assert_eq!(plan.deliveries, 2, "{backend:?}");
        let newcomer = NewSubscriber {
            email: Email::parse("new@example.org").unwrap(),
            regions: vec![(town.clone(), Cadence::Daily)],
            timezone: "UTC".parse().unwrap(),
            confirmed: false,
        };
        store.add_subscriber(&newcomer, at(NOW)).await.unwrap();
        let pending = store.list_subscribers().await.unwrap();
        let pending = pending
            .iter()
            .find(|r| r.email == "new@example.org")
            .unwrap();
        store
            .confirm_subscriber(pending.id, "203.0.113.9", at(NOW), at(NOW + 9_000))
            .await
            .unwrap();
        moved_only_by(store, backend, "planning", &[Transition::Plan], &before).await;

        let before = one_row_per_state(store, reader).await;
        store.expire_overdue(at(NOW)).await.unwrap();
        moved_only_by(
            store,
            backend,
            "expire_overdue",
            &[Transition::Expire],
            &before,
        )
        .await;

        let before = one_row_per_state(store, reader).await;
        let claimed = store
            .claim_due_deliveries(100, at(NOW), lease(NOW + 300))
            .await
            .unwrap();
        assert_eq!(
            claimed.len(),
            3,
            "{backend:?}: queued, deferred and the lapsed lease"
        );
        let claims = [Transition::Claim, Transition::Reclaim];
        moved_only_by(store, backend, "claim_due_deliveries", &claims, &before).await;

        let before = one_row_per_state(store, reader).await;
        let renewed = store
            .renew_leases(&ids(&before), lease(NOW + 600))
            .await
            .unwrap();
        assert_eq!(renewed.len(), 1, "{backend:?}: only the sending row");
        moved_only_by(
            store,
            backend,
            "renew_leases",
            &[Transition::Renew],
            &before,
        )
        .await;

        for outcome in [
            Outcome::Sent {
                reply: "250 ok".into(),
            },
            Outcome::Deferred {
                error: "421 busy".into(),
                retry_at: at(NOW + 60),
            },
            Outcome::Bounced {
                reply: "550 5.1.1 no such user".into(),
                suppress: true,
            },
            Outcome::Failed {
                error: "broken".into(),
            },
            Outcome::Expired,
            Outcome::Cancelled {
                reason: "gone".into(),
            },
            Outcome::Suppressed,
        ] {
            let before = one_row_per_state(store, reader).await;
            let outcomes: Vec<(DeliveryId, Outcome)> = ids(&before)
                .into_iter()
                .map(|id| (id, outcome.clone()))
                .collect();
            store
                .record_outcomes(&outcomes, LeaseOwner::TEST, at(NOW))
                .await
                .unwrap();
            let statement = format!("record_outcomes ({})", outcome.state());
            moved_only_by(store, backend, &statement, &[Transition::Record], &before).await;
        }

        let before = one_row_per_state(store, reader).await;
        store
            .release_deliveries(&ids(&before), LeaseOwner::TEST, at(NOW))
            .await
            .unwrap();
        moved_only_by(
            store,
            backend,
            "release_deliveries",
            &[Transition::Release],
            &before,
        )
        .await;

        // The fixture rows' owner, taken for dead: its claims go back to the queue.
        let before = one_row_per_state(store, reader).await;
        let dead = crate::store::Worker {
            owner: LeaseOwner::TEST,
            host: "gone".into(),
            pid: 1,
            started_at: at(0),
        };
        store.worker_heartbeat(&dead, at(0)).await.unwrap();
        let released = store
            .release_dead_workers(at(NOW - 30), at(NOW))
            .await
            .unwrap();
        assert_eq!(released.released, 1, "{backend:?}");
        moved_only_by(
            store,
            backend,
            "release_dead_workers",
            &[Transition::Release],
            &before,
        )
        .await;

        let before = one_row_per_state(store, reader).await;
        assert_eq!(
            store.retry_failed(at(NOW), at(NOW + 9_000)).await.unwrap(),
            2
        );
        let retry = [Transition::RetryFailed];
        moved_only_by(store, backend, "retry_failed", &retry, &before).await;

        // A manual send's pause, hold sweep, resume and cancel, over rows of its own.
        let (send, _) = store
            .create_send(
                &NewSend {
                    started_by: "cli:test".into(),
                    region: town.clone(),
                    cadence: Cadence::Daily,
                    dry_run: false,
                    test_address: None,
                    idempotency_key: None,
                },
                at(NOW),
            )
            .await
            .unwrap();
        sqlx::query("UPDATE editions SET send_id = $1 WHERE slot_key LIKE 'fixture:%'")
            .bind(send.id)
            .execute(&store.pool)
            .await
            .unwrap();
        store
            .finish_send_planning(send.id, true, None, at(NOW))
            .await
            .unwrap();
        let before = one_row_per_state(store, reader).await;
        let paused = store.pause_send(send.id, at(NOW)).await.unwrap();
        assert!(matches!(paused, SendChange::Changed(_)), "{paused:?}");
        moved_only_by(store, backend, "pause_send", &[Transition::Pause], &before).await;
        let before = one_row_per_state(store, reader).await;
        store.hold_paused_sends(at(NOW)).await.unwrap();
        let hold = [Transition::Pause];
        moved_only_by(store, backend, "hold_paused_sends", &hold, &before).await;
        let before = one_row_per_state(store, reader).await;
        let resumed = store.resume_send(send.id, at(NOW)).await.unwrap();
        assert!(matches!(resumed, SendChange::Changed(_)), "{resumed:?}");
        let resume = [Transition::Resume];
        moved_only_by(store, backend, "resume_send", &resume, &before).await;
        let before = one_row_per_state(store, reader).await;
        let cancelled = store.cancel_send(send.id, at(NOW)).await.unwrap();
        assert!(matches!(cancelled, SendChange::Changed(_)), "{cancelled:?}");
        let cancel = [Transition::Cancel];
        moved_only_by(store, backend, "cancel_send", &cancel, &before).await;

        let before = one_row_per_state(store, reader).await;
        store.unsubscribe(reader, at(NOW)).await.unwrap();
        moved_only_by(
            store,
            backend,
            "unsubscribe",
            &[Transition::Cancel],
            &before,
        )
        .await;

        let before = one_row_per_state(store, reader).await;
        let email = store.list_subscribers().await.unwrap()[0].email.clone();
        assert!(store.remove_subscriber(&email, at(NOW)).await.unwrap());
        moved_only_by(
            store,
            backend,
            "remove_subscriber",
            &[Transition::Cancel],
            &before,
        )
        .await;
    }
}

/// Sets row `id`'s state to `state` behind herald's back.
async fn write_state(store: &Store, id: DeliveryId, state: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deliveries SET state = $1 WHERE id = $2")
        .bind(state)
        .bind(id)
        .execute(&store.pool)
        .await
        .map(drop)
}

#[tokio::test]
async fn the_database_refuses_a_state_herald_does_not_know() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed(store).await;
        let reader = store.list_subscribers().await.unwrap()[0].id;
        // Every known state goes in...
        let rows = one_row_per_state(store, reader).await;
        assert_eq!(rows.len(), DeliveryState::ALL.len(), "{backend:?}");
        // ...and nothing else does.
        let id = *rows.keys().next().unwrap();
        let refused = write_state(store, id, "lost").await;
        assert!(refused.is_err(), "{backend:?}: an unknown state was stored");
        assert!(write_state(store, id, "Sent").await.is_err(), "{backend:?}");
    }
}

/// The columns a migration must carry over, row by row.
type Kept = (
    i64,
    i64,
    i64,
    String,
    String,
    i64,
    String,
    i64,
    Option<i64>,
    i64,
);

async fn kept(store: &Store) -> Vec<Kept> {
    sqlx::query_as(
        "SELECT id, edition_id, subscriber_id, kind, state, attempts, message_id,
                next_attempt_at, lease_owner, expires_at
         FROM deliveries ORDER BY id",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap()
}

/// The indexes on `deliveries`, by name, on SQLite.
async fn sqlite_indexes(store: &Store) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'
         ORDER BY name",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_state_check_arrives_on_a_ledger_that_has_rows() {
    for (backend, t) in stores_migrated_to(11).await {
        let store = &t.store;
        seed(store).await;
        let reader = store.list_subscribers().await.unwrap()[0].id;
        one_row_per_state(store, reader).await;
        // No herald of that schema wrote `paused` (migration 0013 brought it).
        sqlx::query("DELETE FROM deliveries WHERE state = 'paused'")
            .execute(&store.pool)
            .await
            .unwrap();
        let rows = kept(store).await;
        let indexes = sqlite_indexes_if(store, backend).await;
        // Before the migration nothing stopped a stray state.
        let id = DeliveryId::new(rows[0].0);
        write_state(store, id, "lost").await.unwrap();
        write_state(store, id, &rows[0].4).await.unwrap();

        migrate_to(store, backend, 12).await;
        assert_eq!(
            kept(store).await,
            rows,
            "{backend:?}: every row kept as it was"
        );
        assert_eq!(
            sqlite_indexes_if(store, backend).await,
            indexes,
            "every index made again"
        );
        assert!(write_state(store, id, "lost").await.is_err(), "{backend:?}");
        // The engine works on the rebuilt table: the waiting rows and the lapsed lease.
        let claimed = store
            .claim_due_deliveries(100, at(NOW), lease(NOW + 300))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3, "{backend:?}");
    }
}

#[tokio::test]
async fn the_paused_state_arrives_on_a_ledger_that_has_rows() {
    for (backend, t) in stores_migrated_to(12).await {
        let store = &t.store;
        seed(store).await;
        let reader = store.list_subscribers().await.unwrap()[0].id;
        sqlx::query("DELETE FROM deliveries")
            .execute(&store.pool)
            .await
            .unwrap();
        // One row in each state the schema knew, made the way `one_row_per_state` does.
        let before = sqlx::query(
            "INSERT INTO editions (slot_key, kind, cadence, planned_at) VALUES ('old', 'digest', 'daily', 0)",
        )
        .execute(&store.pool)
        .await;
        before.unwrap();
        for (i, state) in DeliveryState::ALL.iter().enumerate() {
            if *state == DeliveryState::Paused {
                continue;
            }
            sqlx::query(
                "INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority, state,
                     attempts, message_id, next_attempt_at, lease_until, lease_owner, expires_at,
                     created_at, updated_at)
                 SELECT id, $1, 'digest', 'daily', 2, $2, 2, $3, 0, 1, $4, 5, 0, 0
                 FROM editions WHERE slot_key = 'old'",
            )
            .bind(reader.get() + i as i64)
            .bind(state.as_str())
            .bind(format!("{i:032x}"))
            .bind(LeaseOwner::TEST.0)
            .execute(&store.pool)
            .await
            .unwrap();
        }
        let rows = kept(store).await;
        let indexes = sqlite_indexes_if(store, backend).await;
        let id = DeliveryId::new(rows[0].0);
        assert!(
            write_state(store, id, "paused").await.is_err(),
            "{backend:?}"
        );

        migrate_to(store, backend, 13).await;
        assert_eq!(kept(store).await, rows, "{backend:?}: every row kept");
        assert_eq!(
            sqlite_indexes_if(store, backend).await,
            indexes,
            "every index made again"
        );
        write_state(store, id, "paused").await.unwrap();
        assert!(write_state(store, id, "lost").await.is_err(), "{backend:?}");
    }
}

async fn sqlite_indexes_if(store: &Store, backend: Backend) -> Vec<(String, Option<String>)> {
    match backend {
        Backend::Sqlite => sqlite_indexes(store).await,
        Backend::Postgres => Vec::new(),
    }
}

/// The details of SQLite's plan for `query`.
async fn sqlite_plan(store: &Store, query: &str) -> String {
    let rows: Vec<(i64, i64, i64, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {query}")))
            .fetch_all(&store.pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(_, _, _, detail)| detail)
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test]
async fn the_rendered_lists_match_the_partial_indexes_on_sqlite() {
    for (backend, t) in stores().await {
        if backend != Backend::Sqlite {
            continue;
        }
        let store = &t.store;
        let waiting = sqlite_plan(
            store,
            &format!(
                "SELECT id FROM deliveries WHERE {} AND next_attempt_at <= 5
                 ORDER BY priority, next_attempt_at LIMIT 10",
                from(Transition::Claim)
            ),
        )
        .await;
        assert!(waiting.contains("deliveries_waiting"), "{waiting}");
        let leased = sqlite_plan(
            store,
            &format!(
                "SELECT id FROM deliveries WHERE {} AND lease_until < 5
                 ORDER BY lease_until LIMIT 10",
                from(Transition::Reclaim)
            ),
        )
        .await;
        assert!(leased.contains("deliveries_leased"), "{leased}");
        let expiring = sqlite_plan(
            store,
            &format!(
                "SELECT id FROM deliveries WHERE {} AND expires_at < 5",
                from(Transition::Expire)
            ),
        )
        .await;
        assert!(expiring.contains("deliveries_expiring"), "{expiring}");
    }
}
