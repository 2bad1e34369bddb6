//! Sliding-window limits on the sign-up form (per IP, per address), counted in the
//! database so that every daemon behind one site sees the same hits.

use super::{Result, Store};
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
