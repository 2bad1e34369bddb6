//! The workers table: each process that delivers has a row, keyed by the lease owner its
//! claims carry, with a heartbeat it renews every few seconds. A worker whose heartbeat
//! is older than `deliver.worker_timeout` is dead, and any live worker gives its claimed
//! rows back to the queue at once instead of leaving them to wait out their leases.
//! Its feed leases (`feed_leases`) go back with its rows, and on a clean stop.
//! Leases stay the backstop: rows of an owner that never registered (or whose row went
//! away with its claims still out) come back when their lease runs out, as before.

use sqlx::AssertSqlSafe;

use super::{LeaseOwner, Result, Store, states};
use crate::domain::{DeliveryState, Timestamp, Transition};

/// Who a worker is: its lease owner, and where it runs (for the operator reading the
/// table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// The lease owner of its claims.
    pub owner: LeaseOwner,
    /// The machine it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// When it started.
    pub started_at: Timestamp,
    /// Which process it is, where the machine can say (Linux): a live worker in the
    /// same scope can then tell at once that it has gone.
    pub process: Option<ProcessIdentity>,
}

/// A process, told apart from any other that runs or ran under the same kernel: the
/// scope its pid is counted in (the kernel's boot and its pid namespace) and the
/// process's start time in clock ticks since boot, which a pid taken again by a later
/// process does not share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The kernel boot and pid namespace.
    pub scope: String,
    /// Its process id in that namespace.
    pub pid: u32,
    /// Its start time, in clock ticks after boot.
    pub start: i64,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The worker's row was there and now carries the new time.
    Beat,
    /// The worker had no row (its first beat, or another worker took it for dead and
    /// gave its rows back), and registered again.
    Registered,
}

/// Dead workers whose rows one pass gave back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadWorkers {
    /// The dead workers, now without a row.
    pub owners: Vec<LeaseOwner>,
    /// Their claimed rows, now waiting again.
    pub released: u64,
}

impl Store {
    /// Records that `worker` is alive at `now`: one UPDATE, and an INSERT only when the
    /// worker has no row.
    pub async fn worker_heartbeat(&self, worker: &Worker, now: Timestamp) -> Result<Heartbeat> {
        let beat = sqlx::query("UPDATE workers SET heartbeat_at = $1 WHERE id = $2")
            .bind(now)
            .bind(worker.owner.0)
            .execute(&self.pool)
            .await?;
        if beat.rows_affected() > 0 {
            return Ok(Heartbeat::Beat);
        }
        sqlx::query(
            "INSERT INTO workers (id, host, pid, started_at, heartbeat_at, process_scope, process_start)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(worker.owner.0)
        .bind(&worker.host)
        .bind(i64::from(worker.pid))
        .bind(worker.started_at)
        .bind(now)
        .bind(worker.process.as_ref().map(|p| p.scope.clone()))
        .bind(worker.process.as_ref().map(|p| p.start))
        .execute(&self.pool)
        .await?;
        Ok(Heartbeat::Registered)
    }

    /// Gives back the claimed rows of every worker whose heartbeat is older than `dead_before`,
    /// and deletes those workers' rows, in one transaction: due again at once, in their
    /// place in the queue, with the attempt the dead worker never recorded taken back (a
    /// released claim is not an attempt). When no worker is dead this is one read.
    pub async fn release_dead_workers(
        &self,
        dead_before: Timestamp,
        now: Timestamp,
    ) -> Result<DeadWorkers> {
        let dead: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM workers WHERE heartbeat_at < $1 LIMIT 1")
                .bind(dead_before)
                .fetch_optional(&self.pool)
                .await?;
        if dead.is_none() {
            return Ok(DeadWorkers::default());
        }
        let mut tx = self.begin_write().await?;
        // One statement gives back every dead worker's rows, then their rows go. A row
        // goes back a second ahead of its `next_attempt_at` (it was due when claimed):
        // to the front of its place in its lane, not behind everything that came due
        // since, nor behind the rows due at the same second, which PostgreSQL returns
        // in the order they lie on disk, where an updated row tends to come last (a
        // killed daemon's rows of a 20,000-reader slot were sent at its very end). On
        // SQLite the transaction holds the write lock throughout; on PostgreSQL a stalled
        // worker that beats between the two keeps its row but not its claims: its
        // renewals find them gone and its senders leave them alone.
        let sql = format!(
            "UPDATE deliveries SET state = CASE WHEN attempts > 1 THEN {deferred} ELSE {queued} END,
                 attempts = attempts - 1, lease_until = NULL, lease_owner = NULL, updated_at = $1,
                 next_attempt_at = next_attempt_at - 1
             WHERE {held} AND lease_owner IN (SELECT id FROM workers WHERE heartbeat_at < $2)",
            deferred = states::literal(DeliveryState::Deferred),
            queued = states::literal(DeliveryState::Queued),
            held = states::from(Transition::Release),
        );
        let released = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(dead_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Their feed polls go with them: the next daemon to tick takes each one over.
        super::feed_leases::release_dead(&mut tx, dead_before).await?;
        let owners: Vec<(i64,)> =
            sqlx::query_as("DELETE FROM workers WHERE heartbeat_at < $1 RETURNING id")
                .bind(dead_before)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(DeadWorkers {
            owners: owners.into_iter().map(|(id,)| LeaseOwner(id)).collect(),
            released,
        })
    }

    /// The other workers registered in process scope `scope` (this machine, this pid
    /// namespace), each with the process it was: the caller can tell from the machine
    /// which of them are gone.
    pub async fn workers_in_scope(
        &self,
        scope: &str,
        except: LeaseOwner,
    ) -> Result<Vec<(LeaseOwner, ProcessIdentity)>> {
        let rows: Vec<(i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, pid, process_start FROM workers WHERE process_scope = $1 AND id <> $2",
        )
        .bind(scope)
        .bind(except.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, pid, start)| {
                Some((
                    LeaseOwner(id),
                    ProcessIdentity {
                        scope: scope.to_string(),
                        pid: u32::try_from(pid).ok()?,
                        start: start?,
                    },
                ))
            })
            .collect())
    }

    /// Marks `owners` dead now, whatever their heartbeat says (their processes are
    /// known to be gone): the next [`Store::release_dead_workers`] gives their claims
    /// back.
    pub async fn mark_workers_dead(&self, owners: &[LeaseOwner]) -> Result<()> {
        for owner in owners {
            sqlx::query("UPDATE workers SET heartbeat_at = 0 WHERE id = $1")
                .bind(owner.0)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Deletes `owner`'s row: the worker is stopping cleanly. Its feed leases are given
    /// up; rows it still holds (their outcomes could not be recorded) wait out their
    /// leases.
    pub async fn remove_worker(&self, owner: LeaseOwner) -> Result<()> {
        super::feed_leases::release_all(self, owner).await?;
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(owner.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
