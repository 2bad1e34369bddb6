//! The database: connection, migrations, and every SQL statement herald runs.
//!
//! One set of statements serves SQLite and PostgreSQL through `sqlx::Any`; the few
//! places where the two differ ask [`Backend`]. The delivery engine's own SQLite
//! connection uses SQLite's driver (for its WAL hook), and its statements run on either
//! driver through [`on_engine!`]. Times are integer Unix seconds.

mod api_tokens;
mod articles;
mod backup;
mod deliveries;
mod planning;
mod seed;
mod signup;
mod subscribers;
mod suppressions;
mod wal_hook;

pub use api_tokens::ApiTokenRow;
pub use articles::{ArticleRow, FeedCounts, FeedItem, FeedPollState, FeedStatus, PushOutcome};
pub use backup::BackupSummary;
pub use deliveries::{
    Claim, ClaimedDelivery, DeliveryArticle, Lease, LeaseOwner, Outcome, PlanSummary, QueueStatus,
};
pub use planning::{AlertPlan, BreakingArticle, SlotPlan};
pub use signup::{
    ConfirmOutcome, Consent, ConsentRecord, Queued, RateLimit, ReaderPreferences, ReaderRegion,
    SignupMail, SignupOutcome, WebSignup,
};
pub use subscribers::{AddOutcome, NewSubscriber, SubscriberRow};
pub use suppressions::SuppressionKey;
pub use wal_hook::OnDurable;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::config::Region;
use wal_hook::CommitHook;

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
    /// A row held a value herald does not understand (edited by hand?).
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),
    /// The request cannot be done here; the text says what to do instead.
    #[error("{0}")]
    Unsupported(String),
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
}

/// The PostgreSQL advisory lock key planners hold while they plan ("herald" in ASCII).
const PLANNER_LOCK: i64 = 0x6865_7261_6c64;

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

/// Pool settings for one backend; SQLite connections get their pragmas.
fn pool_options(backend: Backend) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    for pragma in sqlite_pragmas(false) {
                        conn.execute(pragma).await?;
                    }
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

/// The delivery engine's own SQLite connection, held outside any pool: a pool pings a
/// connection when it is taken and again when it is given back, two extra trips to
/// SQLite's thread on every commit. `None` once the store is closed.
type EngineConnection = Arc<tokio::sync::Mutex<Option<EngineConn>>>;

/// The engine's SQLite connection (SQLite's own driver, not `Any`, so that its WAL hook
/// can be set), its hook, and whether an [`EngineTransaction`] left it inside a
/// transaction it never finished (dropped after an error): the next writer rolls that
/// back before anything else.
pub(crate) struct EngineConn {
    conn: sqlx::SqliteConnection,
    hook: Arc<CommitHook>,
    unfinished: bool,
}

/// The connection an engine statement runs on. The statements are the same text with
/// the same parameters for both drivers; [`on_engine!`] runs one on either.
pub(crate) enum EngineConnRef<'c> {
    /// The SQLite engine's own connection.
    Sqlite(&'c mut sqlx::SqliteConnection),
    /// A pooled PostgreSQL connection (or transaction).
    Pooled(&'c mut sqlx::AnyConnection),
}

/// Evaluates `$body` with `$conn` bound to the driver connection behind an
/// [`EngineConnRef`]: `on_engine!(conn, |c| query.execute(&mut *c).await)`.
macro_rules! on_engine {
    ($engine:expr, |$conn:ident| $body:expr) => {
        match $engine {
            $crate::store::EngineConnRef::Sqlite($conn) => $body,
            $crate::store::EngineConnRef::Pooled($conn) => $body,
        }
    };
}
pub(crate) use on_engine;

/// A connection the engine writes through: its own (SQLite) or a pooled one.
pub(crate) enum EngineWriter {
    /// The SQLite engine's own connection, taken in turn.
    Own(tokio::sync::OwnedMutexGuard<Option<EngineConn>>),
    /// A pooled PostgreSQL connection.
    Pooled(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl EngineWriter {
    /// The connection to run a statement on.
    pub(crate) fn conn(&mut self) -> EngineConnRef<'_> {
        match self {
            EngineWriter::Own(guard) => {
                EngineConnRef::Sqlite(&mut guard.as_mut().expect("checked when taken").conn)
            }
            EngineWriter::Pooled(conn) => EngineConnRef::Pooled(conn),
        }
    }

    /// Arms `then` for the next commit on this connection (see [`OnDurable`]); the
    /// caller runs [`EngineWriter::settle`] after the committing statement.
    fn arm(&mut self, then: OnDurable) -> Option<OnDurable> {
        match self {
            EngineWriter::Own(guard) => {
                guard.as_ref().expect("checked when taken").hook.arm(then);
                None
            }
            EngineWriter::Pooled(_) => Some(then),
        }
    }

    /// After the committing statement: runs what [`EngineWriter::arm`] armed if the
    /// statement `committed` and the WAL hook has not run it, or drops it.
    fn settle(&mut self, unarmed: Option<OnDurable>, committed: bool) {
        match self {
            EngineWriter::Own(guard) => guard
                .as_ref()
                .expect("checked when taken")
                .hook
                .settle(committed),
            EngineWriter::Pooled(_) => {}
        }
        if let Some(then) = unarmed.filter(|_| committed) {
            then.run();
        }
    }
}

/// A write transaction of the delivery engine that is not tied to one call: begun
/// and given work while outcomes are still on their way, committed with them.
/// Dropped without [`EngineTransaction::commit`], it is rolled back.
pub struct EngineTransaction {
    inner: EngineTransactionConn,
    backend: Backend,
    suppression: SuppressionKey,
}

enum EngineTransactionConn {
    /// `BEGIN IMMEDIATE` on the SQLite engine's own connection, held until the end.
    Own(tokio::sync::OwnedMutexGuard<Option<EngineConn>>),
    /// A PostgreSQL transaction on a pooled connection (rolled back when dropped).
    Pooled(sqlx::Transaction<'static, sqlx::Any>),
}

impl EngineTransaction {
    /// The connection, inside the transaction.
    pub(crate) fn conn(&mut self) -> EngineConnRef<'_> {
        match &mut self.inner {
            EngineTransactionConn::Own(guard) => {
                EngineConnRef::Sqlite(&mut guard.as_mut().expect("checked when begun").conn)
            }
            EngineTransactionConn::Pooled(tx) => EngineConnRef::Pooled(tx),
        }
    }

    /// Which engine this is.
    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// Commits everything done in the transaction.
    pub async fn commit(self) -> Result<()> {
        self.commit_then(OnDurable::nothing()).await
    }

    /// Commits everything done in the transaction, and runs `then` once the commit is
    /// durable (see [`OnDurable`]).
    pub async fn commit_then(self, then: OnDurable) -> Result<()> {
        match self.inner {
            EngineTransactionConn::Own(mut guard) => {
                let engine = guard.as_mut().expect("checked when begun");
                engine.hook.arm(then);
                let committed = engine.conn.execute("COMMIT").await;
                engine.hook.settle(committed.is_ok());
                committed?;
                engine.unfinished = false;
            }
            EngineTransactionConn::Pooled(tx) => {
                tx.commit().await?;
                then.run();
            }
        }
        Ok(())
    }
}

impl Store {
    /// Opens the database at `url`, creating a SQLite file (and its folder) when missing;
    /// `suppression` keys the suppression list (see [`SuppressionKey`]).
    pub async fn connect(
        url: &str,
        max_connections: u32,
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
        let pool = pool_options(backend)
            .max_connections(max_connections)
            .connect_with(options.clone())
            .await
            .map_err(connect_error)?;
        let engine = match backend {
            Backend::Sqlite => {
                use sqlx::Connection;
                let options =
                    sqlx::sqlite::SqliteConnectOptions::from_str(&url).map_err(connect_error)?;
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .map_err(connect_error)?;
                for pragma in sqlite_pragmas(true) {
                    conn.execute(pragma).await.map_err(connect_error)?;
                }
                let hook = Arc::new(CommitHook::default());
                wal_hook::install(&mut conn, hook.clone()).await?;
                Some(Arc::new(tokio::sync::Mutex::new(Some(EngineConn {
                    conn,
                    hook,
                    unfinished: false,
                }))))
            }
            Backend::Postgres => None,
        };
        Ok(Store {
            pool,
            backend,
            engine,
            suppression,
        })
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

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection, the engine's included.
    pub async fn close(&self) {
        if let Some(engine) = &self.engine
            && let Some(engine) = engine.lock().await.take()
        {
            use sqlx::Connection;
            let _ = engine.conn.close().await;
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
                "INSERT INTO regions (slug, name, parent, timezone) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (slug) DO UPDATE SET name = excluded.name,
                     parent = excluded.parent, timezone = excluded.timezone",
            )
            .bind(region.slug.as_str())
            .bind(&region.name)
            .bind(region.parent.as_ref().map(|p| p.as_str().to_string()))
            .bind(region.timezone.name())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The connection the delivery engine's writes (claims, outcomes, lease renewals)
    /// go through. On SQLite that is one connection of its own, so the engine's writers
    /// take turns on it rather than in SQLite's busy handler (which sleeps a millisecond
    /// or more whenever it finds the write lock taken), and its page cache stays warm:
    /// a connection's cache is dropped whenever another connection has written since its
    /// last transaction, which a shared pool made the case for almost every commit.
    /// PostgreSQL locks rows, not the database: its engine writes through the pool.
    pub(crate) async fn engine_writer(&self) -> Result<EngineWriter> {
        match &self.engine {
            Some(engine) => {
                let mut guard = engine.clone().lock_owned().await;
                let Some(engine) = guard.as_mut() else {
                    return Err(sqlx::Error::PoolClosed.into());
                };
                if engine.unfinished {
                    engine.unfinished = false;
                    // SQLite has already rolled back a transaction whose COMMIT met an I/O
                    // error, and then refuses this one; a connection that is really
                    // broken fails the caller's own statement next.
                    let _ = engine.conn.execute("ROLLBACK").await;
                }
                Ok(EngineWriter::Own(guard))
            }
            None => Ok(EngineWriter::Pooled(self.pool.acquire().await?)),
        }
    }

    /// Begins a write transaction on the engine's connection (see
    /// [`Store::engine_writer`]) that the caller carries from call to call.
    pub async fn begin_engine_transaction(&self) -> Result<EngineTransaction> {
        let inner = if self.engine.is_some() {
            let EngineWriter::Own(mut guard) = self.engine_writer().await? else {
                unreachable!("SQLite's engine writes through its own connection")
            };
            let engine = guard.as_mut().expect("checked when taken");
            engine.conn.execute(self.begin_write_sql()).await?;
            // From here, a transaction dropped unfinished is rolled back by the next writer.
            engine.unfinished = true;
            EngineTransactionConn::Own(guard)
        } else {
            EngineTransactionConn::Pooled(self.pool.begin_with(self.begin_write_sql()).await?)
        };
        Ok(EngineTransaction {
            inner,
            backend: self.backend,
            suppression: self.suppression.clone(),
        })
    }

    /// Copies committed pages from SQLite's WAL back into the database file without
    /// stalling the delivery engine. Left to SQLite, the engine commit that crossed
    /// 1,000 WAL pages ran the whole checkpoint, with its sync of the database file
    /// (5 to 370 ms here), while every final dot waited on that commit. Instead a pooled
    /// connection copies the pages beside the engine's commits (a passive checkpoint
    /// takes no lock a writer needs), and then the engine's own connection, in its
    /// turn, copies the few pages committed meanwhile: only a checkpoint that catches up
    /// with the writer lets the WAL start over rather than grow. PostgreSQL checkpoints
    /// on its own.
    pub async fn checkpoint(&self) -> Result<()> {
        if self.engine.is_some() {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_all(&self.pool)
                .await?;
            let mut engine = self.engine_writer().await?;
            on_engine!(engine.conn(), |c| sqlx::query(
                "PRAGMA wal_checkpoint(PASSIVE)"
            )
            .fetch_all(&mut *c)
            .await
            .map(drop))?;
        }
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

    /// Begins a planning transaction: a write transaction that no other planner runs
    /// beside, and on PostgreSQL without JIT.
    ///
    /// Planners leave out the articles a reader already received, which only holds if
    /// each sees every earlier plan committed: SQLite's write lock gives that; on
    /// PostgreSQL a transaction-scoped advisory lock does, across daemons. Planning
    /// statements are costly enough on paper to trigger JIT compilation with inlining and
    /// optimisation, which took 1.2 s per statement at a million readers while their
    /// execution is bound by inserts that JIT does not speed up.
    async fn begin_plan(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
            // A zone's readers are grouped and joined by hashing; with the default 4 MB
            // those hashes spilled to disk at 100,000 readers.
            sqlx::query("SET LOCAL work_mem = '64MB'")
                .execute(&mut *tx)
                .await?;
            // The function returns `void`, which the Any driver cannot carry back.
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS planner_lock")
                .bind(PLANNER_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// A random 128-bit hex string made by the database, for Message-IDs planned in SQL.
    fn random_hex_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "lower(hex(randomblob(16)))",
            Backend::Postgres => "replace(gen_random_uuid()::text, '-', '')",
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
pub(crate) mod testing {
    //! Opens a fresh store on SQLite, or on PostgreSQL when `HERALD_TEST_POSTGRES_URL` is set.

    use super::*;

    /// The key test stores hash the suppression list with.
    pub(crate) const TEST_SUPPRESSION_KEY: &[u8] = b"test-suppression-key";

    /// A lease held by the test owner until `until`.
    pub(crate) fn lease(until: i64) -> Lease {
        Lease {
            owner: LeaseOwner::TEST,
            until,
        }
    }

    /// Claims up to `limit` rows due at `at` and records each one sent, as a delivery
    /// run against a server that accepts everything would; returns the claimed rows.
    pub(crate) async fn send_all_due(store: &Store, limit: usize, at: i64) -> Vec<ClaimedDelivery> {
        let claimed = store
            .claim_due_deliveries(limit, at, lease(at + 300))
            .await
            .unwrap();
        let sent: Vec<(i64, Outcome)> = claimed
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
            .record_outcomes(&sent, LeaseOwner::TEST, at)
            .await
            .unwrap();
        claimed
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

    /// Every backend the store tests should run on in this environment.
    pub async fn stores() -> Vec<(Backend, TestStore)> {
        stores_migrated_to(i64::MAX).await
    }

    /// Like [`stores`], with the schema as migrations up to `version` left it.
    pub async fn stores_migrated_to(version: i64) -> Vec<(Backend, TestStore)> {
        let mut out = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = Store::connect(&url, 4, SuppressionKey::new(TEST_SUPPRESSION_KEY))
            .await
            .unwrap();
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
        let store = Store::connect(url.as_str(), 4, SuppressionKey::new(TEST_SUPPRESSION_KEY))
            .await
            .unwrap();
        POSTGRES_MIGRATIONS
            .run_to(version, &store.pool)
            .await
            .unwrap();
        TestStore { store, _dir: None }
    }
}
