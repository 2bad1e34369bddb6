//! Synthetic data in bulk, for benchmarks and load tests: set-based, so seeding a
//! million readers takes seconds rather than a million round trips. Built only with the
//! `bench-seed` feature, which `examples/plan_bench.rs` requires.

use sqlx::AssertSqlSafe;

use super::{Backend, Result, Store};
use crate::domain::Timestamp;

impl Store {
    /// Adds `count` confirmed readers `reader{n}@{domain}`, spread round-robin over
    /// `zones`, each following one of `regions` (round-robin) at `cadence`.
    pub async fn seed_synthetic_readers(
        &self,
        count: u64,
        domain: &str,
        zones: &[&str],
        regions: &[String],
        cadence: &str,
        now: Timestamp,
    ) -> Result<()> {
        let sequence = match self.backend {
            Backend::Sqlite => {
                "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < $1)"
            }
            Backend::Postgres => "WITH seq(n) AS (SELECT generate_series(0, $1 - 1))",
        };
        let zone_values: Vec<String> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| format!("({i}, '{}')", z.replace('\'', "")))
            .collect();
        let mut tx = self.begin_write().await?;
        sqlx::query(AssertSqlSafe(format!(
            "{sequence}
             INSERT INTO subscribers (email, state, timezone, created_at, confirmed_at, updated_at)
             SELECT 'reader' || seq.n || '@' || $2, 'confirmed', z.column2, $3, $3, $3
             FROM seq JOIN (VALUES {zones}) AS z ON z.column1 = seq.n % {zone_count}
             WHERE true",
            zones = zone_values.join(", "),
            zone_count = zones.len()
        )))
        .bind(count as i64)
        .bind(domain)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let region_values: Vec<String> = regions
            .iter()
            .enumerate()
            .map(|(i, r)| format!("({i}, '{}')", r.replace('\'', "")))
            .collect();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO subscriptions (subscriber_id, region_slug, cadence, created_at)
             SELECT s.id, r.column2, $1, $2
             FROM subscribers s JOIN (VALUES {regions}) AS r ON r.column1 = s.id % {region_count}
             WHERE s.email LIKE $3",
            regions = region_values.join(", "),
            region_count = regions.len()
        )))
        .bind(cadence)
        .bind(now)
        .bind(format!("%@{domain}"))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refreshes the planner statistics after a bulk load, as autovacuum would soon do
    /// on PostgreSQL (VACUUM also marks pages all-visible, so index-only scans skip the
    /// table). SQLite keeps no statistics unless asked, and herald never asks.
    pub async fn refresh_statistics(&self) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("VACUUM (ANALYZE)").execute(&self.pool).await?;
        }
        Ok(())
    }

    /// How many delivery rows and content placements exist (benchmark reporting).
    pub async fn outbox_size(&self) -> Result<(i64, i64)> {
        let (deliveries,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&self.pool)
            .await?;
        let (placements,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM content_articles")
            .fetch_one(&self.pool)
            .await?;
        Ok((deliveries, placements))
    }
}
