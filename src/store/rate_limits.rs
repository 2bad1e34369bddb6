//! Sliding-window limits on the sign-up form (per IP, per address), counted in the
//! database so that every daemon behind one site sees the same hits. Counting and
//! recording a hit are one transaction; on PostgreSQL two daemons could each count
//! under the limit at once and both record, so the transaction first takes a lock on
//! each counted key (an advisory lock, released with the transaction). SQLite's write
//! transaction already runs alone.

use super::{Backend, Result, Store};
use crate::domain::Timestamp;

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// A sliding-window limit: at most `limit` hits on one key within `window_secs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// What is counted, e.g. `signup-ip`.
    pub scope: &'static str,
    /// A keyed hash of what is counted (never an address or IP as such).
    pub key_hash: String,
    /// The window's length.
    pub window_secs: i64,
    /// Hits allowed within the window.
    pub limit: u32,
}

/// Takes PostgreSQL's transaction-scoped lock on each limit's key, in one order so that
/// two transactions locking the same keys never wait on each other in a circle; a
/// second transaction counting the same key waits for the first to commit, then counts
/// its hit. Nothing on SQLite, whose write transaction already excludes every other.
pub(super) async fn lock_keys(backend: Backend, tx: &mut Tx, limits: &[RateLimit]) -> Result<()> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    let mut keys: Vec<String> = limits
        .iter()
        .map(|limit| format!("{}:{}", limit.scope, limit.key_hash))
        .collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        sqlx::query(
            "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS locked",
        )
        .bind(key)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl RateLimit {
    /// Seconds until the oldest hit leaves the window when the limit is reached, else
    /// `None`. Prunes the scope's hits that already left it.
    pub(super) async fn retry_after(&self, tx: &mut Tx, now: Timestamp) -> Result<Option<i64>> {
        let now = now.unix();
        let cutoff = now - self.window_secs;
        sqlx::query("DELETE FROM rate_limit_hits WHERE scope = $1 AND at <= $2")
            .bind(self.scope)
            .bind(cutoff)
            .execute(&mut **tx)
            .await?;
        let (count, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(at) FROM rate_limit_hits WHERE scope = $1 AND key_hash = $2 AND at > $3",
        )
        .bind(self.scope)
        .bind(&self.key_hash)
        .bind(cutoff)
        .fetch_one(&mut **tx)
        .await?;
        Ok((count >= i64::from(self.limit))
            .then(|| (oldest.unwrap_or(now) + self.window_secs - now).max(1)))
    }

    /// Counts one hit.
    pub(super) async fn hit(&self, tx: &mut Tx, now: Timestamp) -> Result<()> {
        sqlx::query("INSERT INTO rate_limit_hits (scope, key_hash, at) VALUES ($1, $2, $3)")
            .bind(self.scope)
            .bind(&self.key_hash)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

impl Store {
    /// Counts one hit against `key` in a sliding window, unless `limit` hits already fell
    /// inside it: then nothing is recorded and the seconds until the oldest one leaves
    /// the window are returned (for `Retry-After`).
    pub async fn hit_rate_limit(
        &self,
        scope: &'static str,
        key_hash: &str,
        now: Timestamp,
        window_secs: i64,
        limit: u32,
    ) -> Result<Option<i64>> {
        let limit = RateLimit {
            scope,
            key_hash: key_hash.to_string(),
            window_secs,
            limit,
        };
        let mut tx = self.begin_write().await?;
        lock_keys(self.backend, &mut tx, std::slice::from_ref(&limit)).await?;
        if let Some(retry_after) = limit.retry_after(&mut tx, now).await? {
            tx.rollback().await?;
            return Ok(Some(retry_after));
        }
        limit.hit(&mut tx, now).await?;
        tx.commit().await?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::{at, stores};

    #[tokio::test]
    async fn hits_at_the_same_moment_from_many_connections_count_to_the_limit() {
        for (backend, t) in stores().await {
            let tasks: Vec<_> = (0..24)
                .map(|_| {
                    let store = t.store.clone();
                    tokio::spawn(async move {
                        store
                            .hit_rate_limit("signup-ip", "same", at(5_000), 3_600, 5)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut allowed = 0;
            for task in tasks {
                if task.await.unwrap().is_none() {
                    allowed += 1;
                }
            }
            assert_eq!(allowed, 5, "{backend:?}: hits allowed past the limit");
        }
    }

    #[tokio::test]
    async fn rate_limits_slide() {
        for (backend, t) in stores().await {
            let store = &t.store;
            for i in 0..5 {
                assert_eq!(
                    store
                        .hit_rate_limit("ip", "k1", at(1_000 + i), 3_600, 5)
                        .await
                        .unwrap(),
                    None,
                    "{backend:?}"
                );
            }
            assert_eq!(
                store
                    .hit_rate_limit("ip", "k1", at(1_010), 3_600, 5)
                    .await
                    .unwrap(),
                Some(3_590),
                "the sixth waits until the first leaves the window"
            );
            // Other keys and scopes are counted apart.
            assert_eq!(
                store
                    .hit_rate_limit("ip", "k2", at(1_010), 3_600, 5)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                store
                    .hit_rate_limit("address", "k1", at(1_010), 3_600, 5)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                store
                    .hit_rate_limit("ip", "k1", at(4_601), 3_600, 5)
                    .await
                    .unwrap(),
                None,
                "the first hit left the window"
            );
        }
    }
}
