//! Online backup of the SQLite database: `VACUUM INTO` writes a consistent snapshot of
//! the whole database to a new file while the daemon goes on reading and writing (it
//! reads one transaction's view, so the copy never holds half a commit).

use std::path::Path;

use super::{Backend, Result, Store, StoreError};

/// What a backup copied.
#[derive(Debug, Clone, Copy)]
pub struct BackupSummary {
    /// The copy's size.
    pub bytes: u64,
    /// Readers in the copy.
    pub subscribers: i64,
    /// Delivery rows in the copy.
    pub deliveries: i64,
}

impl Store {
    /// Writes a consistent copy of the SQLite database to `path`, a file that must not
    /// exist yet, then checks the copy's integrity.
    pub async fn backup_to(&self, path: &Path) -> Result<BackupSummary> {
        if self.backend == Backend::Postgres {
            return Err(StoreError::Unsupported(
                "herald backup copies a SQLite database; back up PostgreSQL with pg_dump (or your provider's snapshots)".into(),
            ));
        }
        if path.exists() {
            return Err(StoreError::Unsupported(format!(
                "{} already exists; give a new file name (a backup never overwrites a file)",
                path.display()
            )));
        }
        let Some(target) = path.to_str() else {
            return Err(StoreError::Unsupported(format!(
                "{} is not a path SQLite can write to (it is not valid UTF-8)",
                path.display()
            )));
        };
        sqlx::query("VACUUM INTO $1")
            .bind(target)
            .execute(&self.pool)
            .await?;
        // Read the copy back on a connection of its own: it is a database of its own.
        use sqlx::Connection as _;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .read_only(true);
        let mut copy = sqlx::SqliteConnection::connect_with(&options).await?;
        let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&mut copy)
            .await?;
        if check != "ok" {
            return Err(StoreError::Backup(format!(
                "the backup at {} failed its integrity check ({check}); keep the database and try again",
                path.display()
            )));
        }
        let (subscribers,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM subscribers")
            .fetch_one(&mut copy)
            .await?;
        let (deliveries,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&mut copy)
            .await?;
        copy.close().await?;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(BackupSummary {
            bytes,
            subscribers,
            deliveries,
        })
    }
}
