//! The read side: what `herald status` shows (the outbox by state, the articles, each
//! feed's polls), and the ledger and slot lists audits and tests read.

use sqlx::AssertSqlSafe;

use super::{Result, Store, decode, states};
use crate::domain::{
    DeliveryId, DeliveryState, EditionId, Email, FeedId, RegionSlug, SubscriberId, Timestamp,
    Transition,
};
use crate::metrics::LedgerSnapshot;

/// The outbox at a glance, for `herald status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct QueueStatus {
    /// Rows per state.
    pub by_state: Vec<(DeliveryState, i64)>,
    /// Creation time of the oldest row still waiting (queued or deferred).
    pub oldest_waiting_since: Option<Timestamp>,
    /// The most recent error recorded on any row.
    pub last_error: Option<(Timestamp, String)>,
}

/// One feed's polling history, for `herald status`.
#[derive(Debug, Clone)]
pub struct FeedStatus {
    /// Region the feed belongs to.
    pub region: RegionSlug,
    /// The feed as configured.
    pub url: String,
    /// Last poll, successful or not.
    pub last_polled_at: Option<Timestamp>,
    /// Last successful poll.
    pub last_success_at: Option<Timestamp>,
    /// The error of the last poll, if it failed.
    pub last_error: Option<String>,
    /// When the feed is next due.
    pub next_poll_at: Option<Timestamp>,
    /// Polls in a row that failed.
    pub consecutive_failures: i64,
    /// When the last read needed repairs: the strict parser's first error.
    pub recovered_error: Option<String>,
    /// When the last read found entries but no items: why.
    pub parse_warning: Option<String>,
}

/// A feed's row as stored, before decoding.
#[derive(sqlx::FromRow)]
struct StoredFeedStatus {
    id: FeedId,
    region_slug: String,
    url: String,
    last_polled_at: Option<Timestamp>,
    last_success_at: Option<Timestamp>,
    last_error: Option<String>,
    next_poll_at: Option<Timestamp>,
    consecutive_failures: i64,
    recovered_error: Option<String>,
    parse_warning: Option<String>,
}

impl Store {
    /// How many rows are due now (queued or deferred and due, or with a lapsed lease).
    pub async fn due_count(&self, now: Timestamp) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM deliveries
             WHERE ({waiting} AND next_attempt_at <= $1)
                OR ({leased} AND lease_until < $1)",
            waiting = states::from(Transition::Claim),
            leased = states::from(Transition::Reclaim),
        )))
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Counts per state, oldest waiting row and the last error.
    pub async fn queue_status(&self) -> Result<QueueStatus> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        let mut by_state = Vec::new();
        for state in DeliveryState::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| s == state.as_str())
                .map(|(_, n)| *n)
                .unwrap_or(0);
            by_state.push((state, n));
        }
        let unfinished: Vec<DeliveryState> = DeliveryState::ALL
            .into_iter()
            .filter(|state| !state.is_final())
            .collect();
        let (oldest,): (Option<Timestamp>,) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT MIN(created_at) FROM deliveries WHERE {}",
            states::is_one_of(&unfinished)
        )))
        .fetch_one(&self.pool)
        .await?;
        // The errors of attempts, not the reasons rows were cancelled or suppressed.
        let attempted = [
            DeliveryState::Deferred,
            DeliveryState::Bounced,
            DeliveryState::Failed,
        ];
        let last_error: Option<(Timestamp, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT updated_at, last_error FROM deliveries WHERE last_error IS NOT NULL
               AND {}
             ORDER BY updated_at DESC, id DESC LIMIT 1",
            states::is_one_of(&attempted)
        )))
        .fetch_optional(&self.pool)
        .await?;
        Ok(QueueStatus {
            by_state,
            oldest_waiting_since: oldest,
            last_error,
        })
    }

    /// Counts per state for the rows of one edition.
    pub async fn edition_counts(&self, edition_id: EditionId) -> Result<Vec<(DeliveryState, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM deliveries WHERE edition_id = $1 GROUP BY state",
        )
        .bind(edition_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(state, n)| {
                let row = format!("of edition {edition_id}");
                Ok((decode("deliveries", row, "state", &state)?, n))
            })
            .collect()
    }

    /// Every row in id order: for tests and audits.
    pub async fn delivery_ledger(&self) -> Result<Vec<LedgerRow>> {
        let rows: Vec<StoredLedgerRow> = sqlx::query_as(
            "SELECT d.id, d.subscriber_id, s.email, d.state, d.attempts, d.message_id,
                    d.last_error
             FROM deliveries d LEFT JOIN subscribers s ON s.id = d.subscriber_id ORDER BY d.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let email = row
                    .email
                    .as_deref()
                    .map(|e| decode("subscribers", row.subscriber_id, "email", e))
                    .transpose()?;
                Ok(LedgerRow {
                    email,
                    state: decode("deliveries", row.id, "state", &row.state)?,
                    attempts: row.attempts,
                    message_id: row.message_id,
                    last_error: row.last_error,
                })
            })
            .collect()
    }

    /// Every feed's last poll, for `herald status`.
    pub async fn feed_statuses(&self) -> Result<Vec<FeedStatus>> {
        let rows: Vec<StoredFeedStatus> = sqlx::query_as(
            "SELECT id, region_slug, url, last_polled_at, last_success_at, last_error,
                    next_poll_at, consecutive_failures, recovered_error, parse_warning
             FROM feeds ORDER BY region_slug, url",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(FeedStatus {
                    region: decode("feeds", row.id, "region_slug", &row.region_slug)?,
                    url: row.url,
                    last_polled_at: row.last_polled_at,
                    last_success_at: row.last_success_at,
                    last_error: row.last_error,
                    next_poll_at: row.next_poll_at,
                    consecutive_failures: row.consecutive_failures,
                    recovered_error: row.recovered_error,
                    parse_warning: row.parse_warning,
                })
            })
            .collect()
    }

    /// How many articles are stored, and how many of them are marked breaking.
    pub async fn article_totals(&self) -> Result<(i64, i64)> {
        let (total, breaking): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), SUM(CASE WHEN breaking = 1 THEN 1 ELSE 0 END) FROM articles",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((total, breaking.unwrap_or(0)))
    }

    /// What `/metrics` reads from the ledger: rows per state and kind, rows not yet
    /// final per lane with the oldest one's creation time, and readers per state.
    pub async fn ledger_snapshot(&self) -> Result<LedgerSnapshot> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT state, kind, COUNT(*) FROM deliveries GROUP BY state, kind")
                .fetch_all(&self.pool)
                .await?;
        let deliveries = rows
            .into_iter()
            .map(|(state, kind, n)| {
                let row = format!("of kind {kind}");
                Ok((
                    decode("deliveries", &row, "state", &state)?,
                    decode("deliveries", &row, "kind", &kind)?,
                    n,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let unfinished: Vec<DeliveryState> = DeliveryState::ALL
            .into_iter()
            .filter(|state| !state.is_final())
            .collect();
        let lanes: Vec<(i64, i64, Option<Timestamp>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT priority, COUNT(*), MIN(created_at) FROM deliveries WHERE {}
             GROUP BY priority",
            states::is_one_of(&unfinished)
        )))
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM subscribers GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        let readers = rows
            .into_iter()
            .map(|(state, n)| Ok((decode("subscribers", "of that state", "state", &state)?, n)))
            .collect::<Result<Vec<_>>>()?;
        // A send stored as `sending` is in progress while one of its rows is unsent
        // (it reads as done after that, as everywhere else).
        let rows: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT s.state, COUNT(*) FROM sends s
             WHERE s.state = 'planning' OR s.state = 'paused' OR (s.state = 'sending' AND EXISTS (
                 SELECT 1 FROM deliveries
                 WHERE edition_id IN (SELECT id FROM editions WHERE send_id = s.id) AND {}))
             GROUP BY s.state",
            states::is_one_of(&unfinished)
        )))
        .fetch_all(&self.pool)
        .await?;
        let sends = rows
            .into_iter()
            .map(|(state, n)| Ok((decode("sends", "of that state", "state", &state)?, n)))
            .collect::<Result<Vec<_>>>()?;
        let sent_rows = deliveries
            .iter()
            .filter(|(state, _, _)| *state == DeliveryState::Sent)
            .map(|(_, _, n)| n)
            .sum();
        Ok(LedgerSnapshot {
            deliveries,
            lanes,
            readers,
            sends,
            bounces: self.bounce_stats_with(sent_rows).await?,
        })
    }

    /// How many rows are not yet in a final state (queued, sending or deferred).
    pub async fn unfinished_count(&self) -> Result<i64> {
        let unfinished: Vec<DeliveryState> = DeliveryState::ALL
            .into_iter()
            .filter(|state| !state.is_final())
            .collect();
        let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM deliveries WHERE {}",
            states::is_one_of(&unfinished)
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// How many stale slots were ever skipped (for `/metrics` and `status`).
    pub async fn skipped_slot_count(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM skipped_slots")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// (reader, slot instant) of every scheduled digest row, for audits and tests.
    pub async fn delivery_slots(&self) -> Result<Vec<(SubscriberId, Timestamp)>> {
        Ok(sqlx::query_as(
            "SELECT d.subscriber_id, d.slot_at FROM deliveries d
             JOIN editions e ON e.id = d.edition_id
             WHERE d.kind = 'digest' AND e.timezone IS NOT NULL ORDER BY d.subscriber_id, d.slot_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// A ledger row as stored, before decoding.
#[derive(sqlx::FromRow)]
struct StoredLedgerRow {
    id: DeliveryId,
    subscriber_id: SubscriberId,
    email: Option<String>,
    state: String,
    attempts: i64,
    message_id: String,
    last_error: Option<String>,
}

/// One delivery row as the ledger shows it.
#[derive(Debug, Clone)]
pub struct LedgerRow {
    /// The reader's address (`None` once erased).
    pub email: Option<Email>,
    /// Current state.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// Stored Message-ID (32 hex digits).
    pub message_id: String,
    /// Last error, if any.
    pub last_error: Option<String>,
}
