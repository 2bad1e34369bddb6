//! Manual sends as objects: the `sends` row each manual send gets, its emails (the
//! deliveries of its edition), and the admin's pause, resume and cancel.
//!
//! A send's counts are read from the ledger every time, never kept beside it, so they
//! cannot drift from what was sent. The row stores the state the admin chose; a send
//! that is `sending` is `done` once none of its rows waits, which is read from the
//! ledger too ([`ManualSend::state`]). Pausing moves the send's waiting rows to `paused`, out
//! of the claim's partial index, so claims never walk past them; resuming puts them
//! back as they were (a deferred row keeps its retry time), and cancelling cancels
//! them. Every statement moves rows along the transition table (`states`).

#[cfg(test)]
mod tests;

use sqlx::AssertSqlSafe;

use super::{Result, Store, StoreError, decode, states};
use crate::domain::{
    Cadence, DeliveryState, Email, RegionSlug, SendId, SendState, Timestamp, Transition,
};

/// A manual send to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSend {
    /// Who started it: `cli:USER`, or the name of the API token.
    pub started_by: String,
    /// The region whose digest it sends.
    pub region: RegionSlug,
    /// Whose readers get it: those following the region at this cadence.
    pub cadence: Cadence,
    /// Work out who would get what, send nothing.
    pub dry_run: bool,
    /// Send one test copy to this address instead of the readers.
    pub test_address: Option<Email>,
    /// The API caller's `Idempotency-Key`: the same key again is the same send.
    pub idempotency_key: Option<String>,
}

/// Rows of one send by delivery state, read from the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendCounts {
    /// Each state the send's rows are in, with how many, in [`DeliveryState::ALL`] order.
    pub by_state: Vec<(DeliveryState, i64)>,
    /// When one of its rows last changed (the send's end, once none waits).
    pub last_change: Option<Timestamp>,
}

impl SendCounts {
    /// Every row of the send.
    pub fn total(&self) -> i64 {
        self.by_state.iter().map(|(_, n)| n).sum()
    }

    /// Rows in `state`.
    pub fn of(&self, state: DeliveryState) -> i64 {
        self.by_state
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }

    /// Rows that are not final yet (queued, sending, deferred, paused).
    pub fn unsent(&self) -> i64 {
        self.by_state
            .iter()
            .filter(|(s, _)| !s.is_final())
            .map(|(_, n)| n)
            .sum()
    }
}

/// One manual send, with its rows counted from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualSend {
    /// Its id.
    pub id: SendId,
    /// Who started it.
    pub started_by: String,
    /// The region whose digest it sends.
    pub region: RegionSlug,
    /// The cadence whose readers get it.
    pub cadence: Cadence,
    /// Whether it only worked out who would get what.
    pub dry_run: bool,
    /// The one address a test copy went to.
    pub test_address: Option<Email>,
    /// Where it stands, the ledger taken into account (see the module documentation).
    pub state: SendState,
    /// The API caller's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// What a dry run found or a test copy got back, as JSON.
    pub report: Option<String>,
    /// Why it stopped before queueing anything, when it did.
    pub error: Option<String>,
    /// When it was started.
    pub started_at: Timestamp,
    /// When it was done or cancelled.
    pub finished_at: Option<Timestamp>,
    /// Its rows by state.
    pub counts: SendCounts,
}

/// What asking a send to pause, resume or cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendChange {
    /// It changed; the send as it is now.
    Changed(ManualSend),
    /// It cannot go there from where it is; the send as it is.
    Refused(ManualSend),
    /// There is no send with that id.
    NotFound,
}

/// A `sends` row as stored.
#[derive(sqlx::FromRow)]
struct SendRow {
    id: SendId,
    started_by: String,
    region_slug: String,
    cadence: String,
    dry_run: i64,
    test_address: Option<String>,
    state: String,
    idempotency_key: Option<String>,
    report: Option<String>,
    error: Option<String>,
    started_at: Timestamp,
    finished_at: Option<Timestamp>,
}

const COLUMNS: &str = "id, started_by, region_slug, cadence, dry_run, test_address, state,
    idempotency_key, report, error, started_at, finished_at";

type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Store {
    /// Starts a send in state `planning`. With an idempotency key already used, nothing
    /// is written and the existing send comes back; the flag says whether it is new.
    pub async fn create_send(&self, new: &NewSend, now: Timestamp) -> Result<(ManualSend, bool)> {
        let created: Option<(SendId,)> = sqlx::query_as(
            "INSERT INTO sends (started_by, region_slug, cadence, dry_run, test_address, state,
                 idempotency_key, started_at)
             VALUES ($1, $2, $3, $4, $5, 'planning', $6, $7)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(&new.started_by)
        .bind(new.region.as_str())
        .bind(new.cadence.as_str())
        .bind(i64::from(new.dry_run))
        .bind(new.test_address.as_ref().map(|e| e.as_str().to_string()))
        .bind(new.idempotency_key.as_deref())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let (id, fresh) = match created {
            Some((id,)) => (id, true),
            None => {
                let (id,): (SendId,) =
                    sqlx::query_as("SELECT id FROM sends WHERE idempotency_key = $1")
                        .bind(new.idempotency_key.as_deref())
                        .fetch_one(&self.pool)
                        .await?;
                (id, false)
            }
        };
        let send = self
            .send(id)
            .await?
            .ok_or(StoreError::Sql(sqlx::Error::RowNotFound))?;
        Ok((send, fresh))
    }

    /// The send with `id`, counted from the ledger.
    pub async fn send(&self, id: SendId) -> Result<Option<ManualSend>> {
        let row: Option<SendRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sends WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some(self.counted(row).await?)),
            None => Ok(None),
        }
    }

    /// The latest `limit` sends, newest first.
    pub async fn sends(&self, limit: i64) -> Result<Vec<ManualSend>> {
        let rows: Vec<SendRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sends ORDER BY id DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut sends = Vec::with_capacity(rows.len());
        for row in rows {
            sends.push(self.counted(row).await?);
        }
        Ok(sends)
    }

    /// Marks a send planned: `sending` for one that queued rows (done once they are
    /// out, see [`ManualSend::state`]), `done` for a dry run or a test copy, with its report.
    pub async fn finish_send_planning(
        &self,
        id: SendId,
        queued: bool,
        report: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        let (state, finished_at) = if queued {
            (SendState::Sending, None)
        } else {
            (SendState::Done, Some(now))
        };
        sqlx::query(
            "UPDATE sends SET state = $1, report = $2, finished_at = $3
             WHERE id = $4 AND state = 'planning'",
        )
        .bind(state.as_str())
        .bind(report)
        .bind(finished_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a send that could not be planned or sent, keeping why.
    pub async fn fail_send(&self, id: SendId, error: &str, now: Timestamp) -> Result<()> {
        sqlx::query(
            "UPDATE sends SET state = 'cancelled', error = $1, finished_at = $2
             WHERE id = $3 AND state = 'planning'",
        )
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Pauses a sending send: its waiting rows are held, and no claim takes them.
    pub async fn pause_send(&self, id: SendId, now: Timestamp) -> Result<SendChange> {
        self.change_send(
            id,
            now,
            SendState::Sending,
            SendState::Paused,
            Transition::Pause,
        )
        .await
    }

    /// Resumes a paused send from its unsent rows: each held row waits again as it did.
    pub async fn resume_send(&self, id: SendId, now: Timestamp) -> Result<SendChange> {
        self.change_send(
            id,
            now,
            SendState::Paused,
            SendState::Sending,
            Transition::Resume,
        )
        .await
    }

    /// Cancels a send that is not finished: its unsent rows are `cancelled`, the rows
    /// already sent stay as they are.
    pub async fn cancel_send(&self, id: SendId, now: Timestamp) -> Result<SendChange> {
        let mut tx = self.begin_write().await?;
        let Some(send) = self.send_in(&mut tx, id).await? else {
            return Ok(SendChange::NotFound);
        };
        if send.state.is_finished() {
            tx.rollback().await?;
            return Ok(SendChange::Refused(send));
        }
        sqlx::query("UPDATE sends SET state = 'cancelled', finished_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        move_rows(&mut tx, id, Transition::Cancel, now).await?;
        tx.commit().await?;
        self.changed(id).await
    }

    /// Holds the waiting rows of paused sends that a worker had claimed when the send
    /// was paused and that came back deferred since. Returns how many.
    pub async fn hold_paused_sends(&self, now: Timestamp) -> Result<u64> {
        // Mostly no send is paused: a read then, so the sweep takes no write lock from
        // the delivery engine's commits.
        let paused: Option<(SendId,)> =
            sqlx::query_as("SELECT id FROM sends WHERE state = 'paused' LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        if paused.is_none() {
            return Ok(0);
        }
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE deliveries SET state = {paused}, updated_at = $1
             WHERE {waiting} AND edition_id IN (
                 SELECT e.id FROM editions e JOIN sends s ON s.id = e.send_id
                 WHERE s.state = 'paused')",
            paused = states::target(Transition::Pause),
            waiting = states::from(Transition::Pause),
        )))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Moves a send from `from` to `to` and its rows along `transition`, in one
    /// transaction; a send that is elsewhere (by the ledger) is refused.
    async fn change_send(
        &self,
        id: SendId,
        now: Timestamp,
        from: SendState,
        to: SendState,
        transition: Transition,
    ) -> Result<SendChange> {
        let mut tx = self.begin_write().await?;
        let Some(send) = self.send_in(&mut tx, id).await? else {
            return Ok(SendChange::NotFound);
        };
        if send.state != from {
            tx.rollback().await?;
            return Ok(SendChange::Refused(send));
        }
        sqlx::query("UPDATE sends SET state = $1 WHERE id = $2")
            .bind(to.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        move_rows(&mut tx, id, transition, now).await?;
        tx.commit().await?;
        self.changed(id).await
    }

    async fn changed(&self, id: SendId) -> Result<SendChange> {
        Ok(self
            .send(id)
            .await?
            .map_or(SendChange::NotFound, SendChange::Changed))
    }

    /// [`Store::send`], inside a transaction.
    async fn send_in(&self, tx: &mut Tx, id: SendId) -> Result<Option<ManualSend>> {
        let row: Option<SendRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sends WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let counts = counts(&mut **tx, id).await?;
        Ok(Some(decode_send(row, counts)?))
    }

    /// Decodes a row and counts its rows in the ledger.
    async fn counted(&self, row: SendRow) -> Result<ManualSend> {
        let counts = counts(&self.pool, row.id).await?;
        decode_send(row, counts)
    }
}

/// Moves the send's rows along `transition`.
async fn move_rows(tx: &mut Tx, id: SendId, transition: Transition, now: Timestamp) -> Result<()> {
    let set = match transition {
        Transition::Pause => format!("state = {}", states::target(Transition::Pause)),
        // A held row waits again as it did: one that was tried before was deferred.
        Transition::Resume => format!(
            "state = CASE WHEN attempts > 0 THEN {deferred} ELSE {queued} END",
            deferred = states::literal(DeliveryState::Deferred),
            queued = states::literal(DeliveryState::Queued),
        ),
        Transition::Cancel => format!(
            "state = {}, last_error = 'the send was cancelled', lease_until = NULL",
            states::target(Transition::Cancel)
        ),
        other => unreachable!("{other:?} is not an admin's move of a send"),
    };
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE deliveries SET {set}, updated_at = $1
         WHERE {from} AND edition_id IN (SELECT id FROM editions WHERE send_id = $2)",
        from = states::from(transition),
    )))
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The send's rows by state, from the ledger.
async fn counts<'e, E>(executor: E, id: SendId) -> Result<SendCounts>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows: Vec<(String, i64, Timestamp)> = sqlx::query_as(
        "SELECT d.state, COUNT(*), MAX(d.updated_at) FROM deliveries d
         JOIN editions e ON e.id = d.edition_id
         WHERE e.send_id = $1 GROUP BY d.state",
    )
    .bind(id)
    .fetch_all(executor)
    .await?;
    let mut by_state = Vec::with_capacity(rows.len());
    let mut last_change = None;
    for (state, n, changed) in rows {
        let state: DeliveryState = decode("deliveries", format!("of send {id}"), "state", &state)?;
        by_state.push((state, n));
        last_change = last_change.max(Some(changed));
    }
    by_state.sort_by_key(|(state, _)| DeliveryState::ALL.iter().position(|s| s == state));
    Ok(SendCounts {
        by_state,
        last_change,
    })
}

/// Decodes a stored send; a `sending` one with no row left waiting is done.
fn decode_send(row: SendRow, counts: SendCounts) -> Result<ManualSend> {
    let id = row.id;
    let stored: SendState = decode("sends", id, "state", &row.state)?;
    let (state, finished_at) = if stored == SendState::Sending && counts.unsent() == 0 {
        (
            SendState::Done,
            Some(counts.last_change.unwrap_or(row.started_at)),
        )
    } else {
        (stored, row.finished_at)
    };
    Ok(ManualSend {
        id,
        started_by: row.started_by,
        region: decode("sends", id, "region_slug", &row.region_slug)?,
        cadence: decode("sends", id, "cadence", &row.cadence)?,
        dry_run: row.dry_run != 0,
        test_address: row
            .test_address
            .as_deref()
            .map(|e| decode("sends", id, "test_address", e))
            .transpose()?,
        state,
        idempotency_key: row.idempotency_key,
        report: row.report,
        error: row.error,
        started_at: row.started_at,
        finished_at,
        counts,
    })
}
