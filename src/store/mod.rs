//! The database: connection, migrations, and every SQL statement herald runs.
//!
//! One set of statements serves SQLite and PostgreSQL through `sqlx::Any`; the few
//! places where the two differ ask [`Backend`]. The files are grouped by job: the
//! delivery engine's statements (`outbox`) and its own connection (`engine_connection`),
//! planning (`planning`, manual sends included), the read side (`status`), and the
//! writes of ingest (`articles`), sign-up (`signup`, `rate_limits`), readers
//! (`subscribers`, `suppressions`), manual sends (`sends`) and the admin API (`api_tokens`);
//! and the workers that deliver, with their heartbeats (`workers`) and the feeds they
//! poll (`feed_leases`).
//!
//! Times are stored as integer Unix seconds and ids as integers (`sql_types` maps the
//! domain's types onto them). Rows are decoded into domain types here, once: a value
//! that does not decode is a [`StoreError::Corrupt`] naming its row. Statements that
//! change a delivery's state take their states from the transition table (`states`).

mod admin_reads;
mod api_tokens;
mod articles;
mod backup;
mod bounces;
mod engine_connection;
mod feed_leases;
mod outbox;
mod planning;
mod rate_budgets;
mod rate_limits;
#[cfg(feature = "bench-seed")]
mod seed;
mod sends;
mod signup;
mod sponsors;
mod sql_types;
mod states;
mod status;
mod subscribers;
mod suppressions;
#[cfg(test)]
pub(crate) mod testing;
mod workers;

pub use admin_reads::{DeliveryRow, ReaderDetail, SiteCounts};
pub use api_tokens::ApiTokenRow;
pub use articles::{ArticleRow, FeedCounts, FeedPollState, PushOutcome};
pub use backup::BackupSummary;
pub use bounces::{BounceStats, DomainBounces, TOP_DOMAINS};
pub use engine_connection::EngineTransaction;
pub use engine_connection::wal_hook::OnDurable;
pub use outbox::{Claim, ClaimedDelivery, Lease, LeaseOwner, Recipient};
pub use planning::{
    AlertPlan, BreakingArticle, DryRun, PlanChunks, PlanSummary, SlotPlan, UnfinishedSlot,
};
pub use rate_limits::RateLimit;
pub use sends::{ManualSend, NewSend, SendChange, SendCounts};
pub use signup::{
    ConfirmOutcome, Consent, ConsentRecord, Queued, ReaderPreferences, SignupMail, SignupOutcome,
    WebSignup,
};
pub use sponsors::{SponsorReport, SponsorRow};
pub use status::{FeedStatus, LedgerRow, QueueStatus};
pub use subscribers::{AddOutcome, NewSubscriber, SubscriberRow};
pub use suppressions::{Suppression, SuppressionEvent, SuppressionKey};
pub use workers::{DeadWorkers, Heartbeat, ProcessIdentity, Worker};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::config::Region;
use engine_connection::{EngineConnRef, EngineConnection, on_engine};

/// A database failure, with what herald was doing when it happened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not open or create the database.
    #[error("cannot open database {url}: {source}")]
    Connect {
        /// The URL, without password.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A statement failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// The request cannot be done here; the text says what to do instead.
    #[error("{0}")]
    Unsupported(String),
    /// A backup was written but does not read back whole.
    #[error("{0}")]
    Backup(String),
    /// A row holds a value herald cannot read (edited by hand?).
    #[error(
        "{table} row {row} holds a {column} herald cannot read: {reason}; correct or delete the row"
    )]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's id (or key).
        row: String,
        /// The column.
        column: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
}

impl StoreError {
    /// The value of `column` in `table`'s row `row` does not decode, for `reason`.
    pub(crate) fn corrupt(
        table: &'static str,
        row: impl std::fmt::Display,
        column: &'static str,
        reason: impl std::fmt::Display,
    ) -> StoreError {
        StoreError::Corrupt {
            table,
            row: row.to_string(),
            column,
            reason: reason.to_string(),
        }
    }
}

/// Decodes `value`, the `column` of `table`'s row `row`, once at the edge of the store: a
/// value that does not decode is a [`StoreError::Corrupt`] naming the row.
fn decode<T>(
    table: &'static str,
    row: impl std::fmt::Display,
    column: &'static str,
    value: &str,
) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|reason| StoreError::corrupt(table, row, column, reason))
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// For several daemons on one database.
    Postgres,
}

impl Backend {
    /// `FOR UPDATE SKIP LOCKED` where the engine has it; SQLite serialises writers anyway.
    fn skip_locked_sql(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        }
    }
}

/// The handle every stage uses to reach the database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// On SQLite, the one connection the delivery engine writes through (see
    /// [`Store::engine_writer`]); PostgreSQL engines write through `pool`.
    engine: Option<EngineConnection>,
    /// What the suppression list's entries are keyed with.
    suppression: SuppressionKey,
    /// The most stories a planned digest lists (`[digest] max_stories`); `None` lists
    /// every story of the window.
    max_stories: Option<u32>,
    /// How many readers each transaction of a scheduled slot's plan takes.
    plan_chunks: PlanChunks,
}

/// The schema against the migrations this binary carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// How many migrations the database has applied.
    pub applied: usize,
    /// Versions this binary carries that the database has not applied.
    pub pending: Vec<i64>,
    /// Versions the database has applied that this binary does not carry.
    pub unknown: Vec<i64>,
}

/// How a region's stories are ranked in a digest, the same for planning and previews:
/// breaking first, then the region's `story_order` (newest publication first, or the
/// order its feed listed them, a later poll's first). Over `articles a`,
/// `article_regions ar` and `regions r`.
const REGION_STORY_ORDER: &str = "a.breaking DESC,
    CASE WHEN r.story_order = 'feed' THEN -ar.added_at
         ELSE -COALESCE(a.published_at, a.ingested_at) END,
    CASE WHEN r.story_order = 'feed' THEN ar.feed_position ELSE 0 END,
    a.id DESC";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// How the pool opens and uses its connections (`[database]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// At most this many connections at once.
    pub max_connections: u32,
    /// How long to wait for a connection, opening one or from the pool.
    pub connect_timeout: Duration,
    /// PostgreSQL cancels a statement that runs longer; zero for no limit.
    pub statement_timeout: Duration,
}

impl PoolSettings {
    /// `max_connections` connections, waiting 30 s for one, statements without a limit.
    pub fn sized(max_connections: u32) -> PoolSettings {
        PoolSettings {
            max_connections,
            connect_timeout: Duration::from_secs(30),
            statement_timeout: Duration::ZERO,
        }
    }
}

/// Pool settings for one backend; SQLite connections get their pragmas, PostgreSQL
/// connections their statement timeout. A connection that broke (the server restarted)
/// fails the test the pool runs before handing it out and is replaced by a new one.
fn pool_options(backend: Backend, settings: PoolSettings) -> AnyPoolOptions {
    let statement_timeout = settings.statement_timeout.as_millis();
    AnyPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        .test_before_acquire(true)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                match backend {
                    Backend::Sqlite => {
                        for pragma in sqlite_pragmas(false) {
                            conn.execute(pragma).await?;
                        }
                    }
                    Backend::Postgres if statement_timeout > 0 => {
                        let set = format!("SET statement_timeout = {statement_timeout}");
                        conn.execute(sqlx::AssertSqlSafe(set)).await?;
                    }
                    Backend::Postgres => {}
                }
                Ok(())
            })
        })
}

/// The statements every SQLite connection runs first. WAL lets readers run beside the
/// writer; FULL makes a `sent` row survive a power cut. Writers wait instead of failing.
/// With `engine`, the connection is the delivery engine's own: it never checkpoints the
/// WAL on its own (see [`Store::checkpoint`]).
fn sqlite_pragmas(engine: bool) -> impl Iterator<Item = &'static str> {
    [
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        "PRAGMA busy_timeout = 10000",
        "PRAGMA foreign_keys = ON",
        // Each connection keeps its own page cache and the pool hands successive
        // planning passes to different connections, so 64 MB each made a 190 MB
        // process. Planning a million readers ran no faster with 64 or 128 MB than with
        // 16 MB (within run-to-run noise). Temporary tables and statement journals stay
        // in temp files (the default), not on the heap: 45 MB less at that size.
        "PRAGMA cache_size = -16384",
    ]
    .into_iter()
    .chain(engine.then_some("PRAGMA wal_autocheckpoint = 0"))
}

impl Store {
    /// Opens the database at `url`, creating a SQLite file (and its folder) when missing;
    /// `suppression` keys the suppression list (see [`SuppressionKey`]).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        suppression: SuppressionKey,
    ) -> Result<Store> {
        Store::connect_with(url, PoolSettings::sized(max_connections), suppression).await
    }

    /// [`Store::connect`] with the pool's timeouts as configured.
    pub async fn connect_with(
        url: &str,
        settings: PoolSettings,
        suppression: SuppressionKey,
    ) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let connect_error = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut url = url.to_string();
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string();
            if !path.is_empty() && path != ":memory:" {
                if let Some(parent) = Path::new(&path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        connect_error(sqlx::Error::Io(std::io::Error::new(
                            e.kind(),
                            format!("cannot create folder {}: {e}", parent.display()),
                        )))
                    })?;
                }
                if !url.contains("mode=") {
                    url.push_str(if url.contains('?') {
                        "&mode=rwc"
                    } else {
                        "?mode=rwc"
                    });
                }
            }
        }
        let options = AnyConnectOptions::from_str(&url).map_err(connect_error)?;
        let pool = pool_options(backend, settings)
            .connect_with(options.clone())
            .await
            .map_err(connect_error)?;
        let engine = match backend {
            Backend::Sqlite => Some(engine_connection::open(&url).await.map_err(connect_error)?),
            Backend::Postgres => None,
        };
        Ok(Store {
            pool,
            backend,
            engine,
            suppression,
            max_stories: None,
            plan_chunks: PlanChunks::default(),
        })
    }

    /// Caps the stories of every digest this store plans (`[digest] max_stories`).
    pub fn with_max_stories(mut self, max_stories: u32) -> Store {
        self.max_stories = Some(max_stories);
        self
    }

    /// Brings the schema up to date, with the rows SQL cannot convert: suppression
    /// entries from before they were keyed.
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        let rekeyed = self.rekey_suppressions().await?;
        if rekeyed > 0 {
            tracing::info!(
                rekeyed,
                "suppression entries re-keyed under the site secret"
            );
        }
        Ok(())
    }

    /// How the schema compares with the migrations built into this binary: those not
    /// applied yet, and those applied that this binary does not know (a newer herald
    /// migrated the database).
    pub async fn migration_status(&self) -> Result<MigrationStatus> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let known: Vec<i64> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| m.version)
            .collect();
        let applied: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&self.pool)
                .await?;
        let applied: Vec<i64> = applied.into_iter().map(|(v,)| v).collect();
        Ok(MigrationStatus {
            pending: known
                .iter()
                .copied()
                .filter(|v| !applied.contains(v))
                .collect(),
            unknown: applied
                .iter()
                .copied()
                .filter(|v| !known.contains(v))
                .collect(),
            applied: applied.len(),
        })
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection, the engine's included.
    pub async fn close(&self) {
        if let Some(engine) = &self.engine {
            engine_connection::close(engine).await;
        }
        self.pool.close().await;
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Makes the `regions` table match the configuration.
    pub async fn sync_regions(&self, regions: &[Region]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for region in regions {
            sqlx::query(
                "INSERT INTO regions (slug, name, parent, timezone, url, story_order)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (slug) DO UPDATE SET name = excluded.name,
                     parent = excluded.parent, timezone = excluded.timezone,
                     url = excluded.url, story_order = excluded.story_order",
            )
            .bind(region.slug.as_str())
            .bind(&region.name)
            .bind(region.parent.as_ref().map(|p| p.as_str().to_string()))
            .bind(region.timezone.name())
            .bind(region.url.as_ref().map(|u| u.to_string()))
            .bind(region.order.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), waiting out `busy_timeout`: a deferred transaction that read
    /// first fails at once with "database is locked" when another writer committed in
    /// between, which concurrent feed polls do all the time.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(self.pool.begin_with(self.begin_write_sql()).await?)
    }

    /// How a write transaction begins on this backend (see [`Store::begin_write`]).
    fn begin_write_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }
}

/// `$first, $first+1, …` for an `IN (…)` list of `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[tokio::test]
    async fn every_postgresql_connection_carries_the_statement_timeout() {
        let Ok(base) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
            return;
        };
        let settings = PoolSettings {
            max_connections: 3,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_millis(400),
        };
        let store = Store::connect_with(&base, settings, SuppressionKey::new(b"test"))
            .await
            .unwrap();
        // Three connections open at once, each with the setting.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = store.pool.acquire().await.unwrap();
            let (value,): (String,) = sqlx::query_as("SHOW statement_timeout")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(value, "400ms");
            held.push(conn);
        }
        drop(held);
        let slow = sqlx::query("SELECT 1 FROM (SELECT pg_sleep(2)) AS slept")
            .execute(&store.pool)
            .await
            .expect_err("a statement past the timeout is cancelled");
        assert!(slow.to_string().contains("statement timeout"), "{slow}");
        store.close().await;
    }
}
