//! Bearer tokens for the admin API: only their SHA-256 is stored.

use super::{Result, Store};
use crate::domain::Timestamp;

/// A token as `herald admin token list` shows it (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiTokenRow {
    /// The name given at creation (who or what uses it).
    pub name: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last opened an API call, if ever.
    pub last_used_at: Option<Timestamp>,
}

impl Store {
    /// Records a new token's hash under `name`; false if the name is taken.
    pub async fn create_api_token(
        &self,
        name: &str,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO api_tokens (name, token_hash, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(token_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every token, oldest first.
    pub async fn api_tokens(&self) -> Result<Vec<ApiTokenRow>> {
        Ok(sqlx::query_as(
            "SELECT name, created_at, last_used_at FROM api_tokens ORDER BY created_at, name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes the token called `name`; false if there is none.
    pub async fn revoke_api_token(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The name of the token with this hash, noting that it was used at `now`.
    pub async fn use_api_token(&self, token_hash: &str, now: Timestamp) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "UPDATE api_tokens SET last_used_at = $1 WHERE token_hash = $2 RETURNING name",
        )
        .bind(now)
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(name,)| name))
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::{at, stores};

    #[tokio::test]
    async fn tokens_are_found_by_hash_and_revoked_by_name() {
        for (backend, t) in stores().await {
            let store = &t.store;
            assert!(store.create_api_token("cms", "aa11", at(10)).await.unwrap());
            assert!(
                !store.create_api_token("cms", "bb22", at(11)).await.unwrap(),
                "names are unique ({backend:?})"
            );
            assert!(
                store
                    .create_api_token("backup", "cc33", at(12))
                    .await
                    .unwrap()
            );
            assert_eq!(
                store
                    .use_api_token("aa11", at(20))
                    .await
                    .unwrap()
                    .as_deref(),
                Some("cms")
            );
            assert_eq!(store.use_api_token("zz99", at(20)).await.unwrap(), None);
            let list = store.api_tokens().await.unwrap();
            assert_eq!(list.len(), 2);
            assert_eq!(list[0].name, "cms");
            assert_eq!(list[0].last_used_at, Some(at(20)));
            assert_eq!(list[1].last_used_at, None);
            assert!(store.revoke_api_token("cms").await.unwrap());
            assert!(!store.revoke_api_token("cms").await.unwrap());
            assert_eq!(store.use_api_token("aa11", at(30)).await.unwrap(), None);
        }
    }
}
