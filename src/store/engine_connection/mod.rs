//! The delivery engine's own SQLite connection: held outside any pool, with the WAL hook
//! that runs work the moment a commit is durable (`wal_hook`), and the transactions the
//! engine carries from call to call. On PostgreSQL the engine writes through the pool
//! and the same types stand for a pooled connection.

pub(super) mod wal_hook;

use std::str::FromStr;
use std::sync::Arc;

use sqlx::{Connection, Executor};

use super::{Backend, Result, Store, SuppressionKey, sqlite_pragmas};
use wal_hook::{Armed, CommitHook, OnDurable};

/// The delivery engine's own SQLite connection, held outside any pool: a pool pings a
/// connection when it is taken and again when it is given back, two extra trips to
/// SQLite's thread on every commit. `None` once the store is closed.
pub(in crate::store) type EngineConnection = Arc<tokio::sync::Mutex<Option<EngineConn>>>;

/// The engine's SQLite connection (SQLite's own driver, not `Any`, so that its WAL hook
/// can be set), its hook, and whether an [`EngineTransaction`] left it inside a
/// transaction it never finished (dropped after an error): the next writer rolls that
/// back before anything else.
pub(in crate::store) struct EngineConn {
    conn: sqlx::SqliteConnection,
    hook: Arc<CommitHook>,
    unfinished: bool,
}

/// Opens the engine's own connection to the SQLite database at `url`, with the pragmas
/// of every connection, no automatic checkpoints (see [`Store::checkpoint`]) and the
/// WAL hook installed.
pub(in crate::store) async fn open(url: &str) -> Result<EngineConnection, sqlx::Error> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    for pragma in sqlite_pragmas(true) {
        conn.execute(pragma).await?;
    }
    let hook = wal_hook::install(&mut conn).await?;
    Ok(Arc::new(tokio::sync::Mutex::new(Some(EngineConn {
        conn,
        hook,
        unfinished: false,
    }))))
}

/// Closes the engine's connection; writers that come after get an error.
pub(in crate::store) async fn close(engine: &EngineConnection) {
    if let Some(engine) = engine.lock().await.take() {
        let _ = engine.conn.close().await;
    }
}

/// The connection an engine statement runs on. The statements are the same text with
/// the same parameters for both drivers; [`on_engine!`] runs one on either.
pub(in crate::store) enum EngineConnRef<'c> {
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
            $crate::store::engine_connection::EngineConnRef::Sqlite($conn) => $body,
            $crate::store::engine_connection::EngineConnRef::Pooled($conn) => $body,
        }
    };
}
pub(super) use on_engine;

/// A connection the engine writes through: its own (SQLite) or a pooled one.
pub(in crate::store) enum EngineWriter {
    /// The SQLite engine's own connection, taken in turn.
    Own(tokio::sync::OwnedMutexGuard<Option<EngineConn>>),
    /// A pooled PostgreSQL connection.
    Pooled(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl EngineWriter {
    /// The connection to run a statement on.
    pub(in crate::store) fn conn(&mut self) -> EngineConnRef<'_> {
        match self {
            EngineWriter::Own(guard) => {
                EngineConnRef::Sqlite(&mut guard.as_mut().expect("checked when taken").conn)
            }
            EngineWriter::Pooled(conn) => EngineConnRef::Pooled(conn),
        }
    }

    /// Arms `then` for the next commit on this connection (see [`OnDurable`]): the
    /// caller settles the guard after the committing statement, and a guard dropped
    /// unsettled drops the work.
    pub(in crate::store) fn arm(&self, then: OnDurable) -> Armed {
        match self {
            EngineWriter::Own(guard) => guard.as_ref().expect("checked when taken").hook.arm(then),
            EngineWriter::Pooled(_) => Armed::unhooked(then),
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
    pub(in crate::store) fn conn(&mut self) -> EngineConnRef<'_> {
        match &mut self.inner {
            EngineTransactionConn::Own(guard) => {
                EngineConnRef::Sqlite(&mut guard.as_mut().expect("checked when begun").conn)
            }
            EngineTransactionConn::Pooled(tx) => EngineConnRef::Pooled(tx),
        }
    }

    /// Which engine this is.
    pub(in crate::store) fn backend(&self) -> Backend {
        self.backend
    }

    /// The key suppression entries written in the transaction are hashed with.
    pub(in crate::store) fn suppression(&self) -> &SuppressionKey {
        &self.suppression
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
                let armed = engine.hook.arm(then);
                let committed = engine.conn.execute("COMMIT").await;
                armed.settle(committed.is_ok());
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
    /// The connection the delivery engine's writes (claims, outcomes, lease renewals)
    /// go through. On SQLite that is one connection of its own, so the engine's writers
    /// take turns on it rather than in SQLite's busy handler (which sleeps a millisecond
    /// or more whenever it finds the write lock taken), and its page cache stays warm:
    /// a connection's cache is dropped whenever another connection has written since its
    /// last transaction, which a shared pool made the case for almost every commit.
    /// PostgreSQL locks rows, not the database: its engine writes through the pool.
    pub(in crate::store) async fn engine_writer(&self) -> Result<EngineWriter> {
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
}
