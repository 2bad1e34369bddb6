//! Opens a fresh store on SQLite, or on PostgreSQL when `HERALD_TEST_POSTGRES_URL` is set.

use super::*;
use crate::domain::{Cadence, DeliveryId, Email, FeedItem, Outcome, RegionSlug, Timestamp};

/// The key test stores hash the suppression list with.
pub(crate) const TEST_SUPPRESSION_KEY: &[u8] = b"test-suppression-key";

/// The instant `secs` seconds after the epoch: the tests' clock starts at zero.
pub(crate) fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix(secs)
}

/// A lease held by the test owner until `until`.
pub(crate) fn lease(until: i64) -> Lease {
    Lease {
        owner: LeaseOwner::TEST,
        until: at(until),
    }
}

/// Claims up to `limit` rows due at `at` and records each one sent, as a delivery
/// run against a server that accepts everything would; returns the claimed rows.
pub(crate) async fn send_all_due(store: &Store, limit: usize, now: i64) -> Vec<ClaimedDelivery> {
    let claimed = store
        .claim_due_deliveries(limit, at(now), lease(now + 300))
        .await
        .unwrap();
    let sent: Vec<(DeliveryId, Outcome)> = claimed
        .iter()
        .map(|d| {
            (
                d.id,
                Outcome::Sent {
                    reply: "250 ok".into(),
                },
            )
        })
        .collect();
    store
        .record_outcomes(&sent, LeaseOwner::TEST, at(now))
        .await
        .unwrap();
    claimed
}

/// [`seed`], with the region's daily digest planned at 2,000 for its readers.
pub(crate) async fn seed_planned(store: &Store) {
    let town = seed(store).await;
    store
        .plan_region_digest(
            "manual:1",
            &town,
            Cadence::Daily,
            at(0),
            at(2_000),
            at(9_000),
            false,
            None,
        )
        .await
        .unwrap();
}

/// A region `town` with three stories stored at 1,000, two confirmed daily readers
/// and a pending one.
pub(crate) async fn seed(store: &Store) -> RegionSlug {
    let town: RegionSlug = "town".parse().unwrap();
    let feed = store.feed_id(&town, "file://town.xml").await.unwrap();
    let items: Vec<FeedItem> = (0..3)
        .map(|i| FeedItem {
            guid: format!("g{i}"),
            link: format!("https://news.example/{i}"),
            title: format!("Story {i}"),
            summary: String::new(),
            category: String::new(),
            published_at: Some(1_000 + i),
            breaking: false,
        })
        .collect();
    store
        .record_feed_items(feed, &town, &items, at(1_000))
        .await
        .unwrap();
    for (email, confirmed) in [
        ("a@example.org", true),
        ("b@example.org", true),
        ("p@example.org", false),
    ] {
        store
            .add_subscriber(
                &NewSubscriber {
                    email: Email::parse(email).unwrap(),
                    regions: vec![(town.clone(), Cadence::Daily)],
                    timezone: "UTC".parse().unwrap(),
                    confirmed,
                },
                at(1_000),
            )
            .await
            .unwrap();
    }
    town
}

/// A store plus whatever keeps it alive (the temp dir, or the PG schema name).
pub struct TestStore {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// The SQLite database file, when this is the SQLite store.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|dir| dir.path().join("test.db"))
    }
}

/// How test stores plan slots: in chunks of two readers, then three, so that every
/// planning test with more than two readers in a zone also plans across chunks.
pub(crate) const TEST_PLAN_CHUNKS: PlanChunks = PlanChunks { first: 2, max: 3 };

/// Every backend the store tests should run on in this environment.
pub async fn stores() -> Vec<(Backend, TestStore)> {
    stores_migrated_to(i64::MAX).await
}

/// Like [`stores`], with the schema as migrations up to `version` left it.
pub async fn stores_migrated_to(version: i64) -> Vec<(Backend, TestStore)> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let mut store = Store::connect(&url, 4, SuppressionKey::new(TEST_SUPPRESSION_KEY))
        .await
        .unwrap();
    store.set_plan_chunks(TEST_PLAN_CHUNKS);
    SQLITE_MIGRATIONS
        .run_to(version, &store.pool)
        .await
        .unwrap();
    out.push((
        Backend::Sqlite,
        TestStore {
            store,
            _dir: Some(dir),
        },
    ));
    if let Ok(base) = std::env::var("HERALD_TEST_POSTGRES_URL") {
        out.push((Backend::Postgres, fresh_postgres(&base, version).await));
    } else {
        // Straight to the terminal, past the test harness's capture: a run that
        // skipped half the store tests must say so.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "note: the store tests ran on SQLite only; the PostgreSQL half was skipped \
                 (set HERALD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test to run it)"
            );
        });
    }
    out
}

/// Applies the migrations up to `version` that `store` lacks, and no later one: a test
/// of one migration sees what it did, not what migrations added since did too.
pub(crate) async fn migrate_to(store: &Store, backend: Backend, version: i64) {
    match backend {
        Backend::Sqlite => SQLITE_MIGRATIONS.run_to(version, &store.pool).await,
        Backend::Postgres => POSTGRES_MIGRATIONS.run_to(version, &store.pool).await,
    }
    .unwrap();
}

/// A new, empty database on the PostgreSQL server, so tests never see each other's rows.
async fn fresh_postgres(base: &str, version: i64) -> TestStore {
    sqlx::any::install_default_drivers();
    let name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
    let admin = AnyPoolOptions::new()
        .max_connections(1)
        .connect(base)
        .await
        .expect("HERALD_TEST_POSTGRES_URL must point at a running PostgreSQL server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let mut url = url::Url::parse(base).unwrap();
    url.set_path(&format!("/{name}"));
    let mut store = Store::connect(url.as_str(), 4, SuppressionKey::new(TEST_SUPPRESSION_KEY))
        .await
        .unwrap();
    store.set_plan_chunks(TEST_PLAN_CHUNKS);
    POSTGRES_MIGRATIONS
        .run_to(version, &store.pool)
        .await
        .unwrap();
    TestStore { store, _dir: None }
}

impl Store {
    /// The pool, for tests outside the store module that read rows directly.
    pub(crate) fn test_pool(&self) -> &AnyPool {
        &self.pool
    }
}
