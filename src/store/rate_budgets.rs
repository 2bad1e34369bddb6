//! Site-wide rate budgets: each paced budget (the global rate, each configured domain's
//! rate) is one row holding the instant, in Unix microseconds, at which its next message
//! may go. A process books `span` microseconds of sending time in one statement: the
//! row moves from `max(next_at, now)` to that plus `span`, and the process gets the
//! booked stretch. Every process on the database books from the same row, so the rate
//! holds for the whole site; a budget left idle does not save up a burst, since a
//! booking never starts before `now`.

use sqlx::AssertSqlSafe;

use super::{Backend, Result, Store};

impl Store {
    /// Books `span_us` microseconds of the budget `name`, starting no earlier than
    /// `now_us`, and returns where the booked stretch ends (it starts `span_us` before).
    pub async fn book_rate_budget(&self, name: &str, now_us: i64, span_us: i64) -> Result<i64> {
        let greatest = match self.backend() {
            Backend::Sqlite => "MAX",
            Backend::Postgres => "GREATEST",
        };
        let sql = format!(
            "INSERT INTO rate_budgets (name, next_at) VALUES ($1, $2 + $3)
             ON CONFLICT (name) DO UPDATE
                 SET next_at = {greatest}(rate_budgets.next_at, $2) + $3
             RETURNING next_at"
        );
        let (end,): (i64,) = sqlx::query_as(AssertSqlSafe(sql))
            .bind(name)
            .bind(now_us)
            .bind(span_us)
            .fetch_one(&self.pool)
            .await?;
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::stores;

    #[tokio::test]
    async fn bookings_follow_each_other_and_an_idle_budget_saves_nothing() {
        for (backend, t) in stores().await {
            let store = &t.store;
            // Two processes booking at the same instant get consecutive stretches.
            let first = store.book_rate_budget("global", 1_000, 500).await.unwrap();
            let second = store.book_rate_budget("global", 1_000, 500).await.unwrap();
            assert_eq!((first, second), (1_500, 2_000), "{backend:?}");
            // Another budget is its own.
            let domain = store
                .book_rate_budget("domain:example.org", 1_000, 100)
                .await
                .unwrap();
            assert_eq!(domain, 1_100, "{backend:?}");
            // Idle for a long while: the next stretch starts now, not back in the past.
            let later = store.book_rate_budget("global", 90_000, 500).await.unwrap();
            assert_eq!(later, 90_500, "{backend:?}");
        }
    }
}
