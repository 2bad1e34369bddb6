//! Work that waits for an engine commit to reach the disk, run by SQLite's own thread.
//!
//! The delivery engine lets each SMTP connection's next message be accepted only once
//! the previous message's outcome is committed. Learning of a commit through sqlx costs
//! two thread hand-offs (SQLite's thread to the async thread, then to each sender)
//! before the held final dots go out; on SQLite the WAL hook runs on the committing
//! thread itself, right after the commit is synced, so the dots can go out from there.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use libsqlite3_sys as ffi;

/// Work to run once a commit is durable, at most once. On the SQLite engine's
/// connection it runs on SQLite's thread from the WAL hook, the moment the commit is
/// synced and before the caller of the commit hears of it; otherwise (PostgreSQL, or a
/// commit that wrote nothing) it runs once the commit has returned. If the commit
/// fails, it is dropped without running. It must be quick and must not touch the
/// database.
pub struct OnDurable(Box<dyn FnOnce() + Send>);

impl OnDurable {
    /// Wraps `work`.
    pub(crate) fn new(work: impl FnOnce() + Send + 'static) -> OnDurable {
        OnDurable(Box::new(work))
    }

    /// Nothing to do.
    pub fn nothing() -> OnDurable {
        OnDurable::new(|| {})
    }

    /// Runs it now.
    pub(crate) fn run(self) {
        (self.0)()
    }
}

/// The work armed for the commit in progress on one connection. Only [`install`] makes
/// one, so a hook exists only where SQLite calls it.
pub(in crate::store) struct CommitHook {
    armed: Mutex<Option<OnDurable>>,
}

impl CommitHook {
    /// Arms `work` for the next commit. Only call this holding the connection, right
    /// before the statement that commits: the hook runs after any commit that wrote.
    pub(in crate::store) fn arm(self: &Arc<Self>, work: OnDurable) -> Armed {
        *self.lock() = Some(work);
        Armed(Arming::Hook(self.clone()))
    }

    /// Takes the armed work, if the hook has not run it yet.
    fn take(&self) -> Option<OnDurable> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<OnDurable>> {
        // Armed work is a plain value: a panic elsewhere leaves nothing half-done in it.
        self.armed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Work armed for one committing statement. [`Armed::settle`] after the statement runs
/// the work if the statement committed and the hook has not run it yet; dropped
/// unsettled (the statement's future was dropped), the guard disarms, so that the work
/// never runs on a later commit it does not belong to.
#[must_use = "settle the armed work after the committing statement"]
pub(in crate::store) struct Armed(Arming);

enum Arming {
    /// Armed in the connection's WAL hook.
    Hook(Arc<CommitHook>),
    /// Held here: the connection has no hook (PostgreSQL).
    Unhooked(OnDurable),
    /// Settled or disarmed.
    Done,
}

impl Armed {
    /// Work for a connection without a hook: it runs when settled as committed.
    pub(in crate::store) fn unhooked(work: OnDurable) -> Armed {
        Armed(Arming::Unhooked(work))
    }

    /// After the committing statement: runs the work if the statement `committed` and
    /// the hook has not run it, or drops it.
    pub(in crate::store) fn settle(mut self, committed: bool) {
        let work = match std::mem::replace(&mut self.0, Arming::Done) {
            Arming::Hook(hook) => hook.take(),
            Arming::Unhooked(work) => Some(work),
            Arming::Done => None,
        };
        if let Some(work) = work.filter(|_| committed) {
            work.run();
        }
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Arming::Hook(hook) = &self.0 {
            drop(hook.take());
        }
    }
}

/// Installs a WAL hook on `conn` and returns it. SQLite then calls it after every
/// commit that wrote to the WAL, once the commit is synced (`synchronous = FULL`); it
/// replaces the automatic checkpoints, which the engine's connection has turned off
/// anyway. The hook lives as long as the process: the connection may still be
/// finishing a statement on its thread after it was dropped.
pub(in crate::store) async fn install(
    conn: &mut sqlx::SqliteConnection,
) -> sqlx::Result<Arc<CommitHook>> {
    let hook = Arc::new(CommitHook {
        armed: Mutex::new(None),
    });
    let mut handle = conn.lock_handle().await?;
    let context = Arc::into_raw(hook.clone()) as *mut c_void;
    // SAFETY: the handle is locked out of sqlx's worker thread for this call, and
    // `context` points to a `CommitHook` that is never freed.
    unsafe {
        ffi::sqlite3_wal_hook(handle.as_raw_handle().as_ptr(), Some(on_commit), context);
    }
    Ok(hook)
}

/// SQLite's WAL hook: runs the armed work. Never unwinds into SQLite.
unsafe extern "C" fn on_commit(
    context: *mut c_void,
    _db: *mut ffi::sqlite3,
    _database: *const c_char,
    _frames: c_int,
) -> c_int {
    // SAFETY: `context` is the never-freed `CommitHook` given to `install`.
    let hook = unsafe { &*(context as *const CommitHook) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(work) = hook.take() {
            work.run();
        }
    }));
    ffi::SQLITE_OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, Executor};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Which thread ran the work, and how often.
    fn counter() -> (Arc<AtomicUsize>, Arc<Mutex<Option<std::thread::ThreadId>>>) {
        (Default::default(), Default::default())
    }

    #[tokio::test]
    async fn armed_work_runs_once_on_sqlites_thread_after_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/hook.db?mode=rwc", dir.path().display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        conn.execute("PRAGMA journal_mode = WAL").await.unwrap();
        conn.execute("CREATE TABLE t (x INTEGER)").await.unwrap();
        let hook = install(&mut conn).await.unwrap();

        let (runs, thread) = counter();
        let arm = |runs: &Arc<AtomicUsize>, thread: &Arc<Mutex<Option<_>>>| {
            let (runs, thread) = (runs.clone(), thread.clone());
            hook.arm(OnDurable::new(move || {
                runs.fetch_add(1, Ordering::SeqCst);
                *thread.lock().unwrap() = Some(std::thread::current().id());
            }))
        };

        // A commit that writes runs it, on SQLite's thread, before the statement returns.
        let armed = arm(&runs, &thread);
        conn.execute("INSERT INTO t VALUES (1)").await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_ne!(*thread.lock().unwrap(), Some(std::thread::current().id()));
        armed.settle(true);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "only once");

        // Nothing runs inside a transaction; the COMMIT runs it.
        let armed = arm(&runs, &thread);
        conn.execute("BEGIN IMMEDIATE").await.unwrap();
        conn.execute("INSERT INTO t VALUES (2)").await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        conn.execute("COMMIT").await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        armed.settle(true);

        // A statement that writes nothing leaves it to `settle`.
        let armed = arm(&runs, &thread);
        conn.execute("UPDATE t SET x = 3 WHERE x = 99")
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        armed.settle(true);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(*thread.lock().unwrap(), Some(std::thread::current().id()));

        // A failed commit drops it.
        let armed = arm(&runs, &thread);
        let failed = conn.execute("INSERT INTO missing VALUES (1)").await;
        assert!(failed.is_err());
        armed.settle(failed.is_ok());
        conn.execute("INSERT INTO t VALUES (4)").await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "dropped, not run later");

        // A guard dropped unsettled disarms: the next commit does not run its work.
        drop(arm(&runs, &thread));
        conn.execute("INSERT INTO t VALUES (5)").await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "disarmed on drop");
    }
}
