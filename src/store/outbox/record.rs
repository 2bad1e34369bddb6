//! Writing outcomes: a batch of them in one statement (one forced flush), only for rows
//! the writer still holds, and suppressing the reader of a hard bounce.

use sqlx::AssertSqlSafe;

use super::LeaseOwner;
use crate::domain::{DeliveryId, Outcome, Timestamp, Transition};
use crate::store::{
    EngineConnRef, EngineTransaction, OnDurable, Result, Store, SuppressionKey, on_engine, states,
};

impl Store {
    /// Writes a batch of outcomes in one transaction (one forced flush for the batch).
    /// Only rows `owner` still holds are touched, so a late worker cannot undo another's
    /// result.
    pub async fn record_outcomes(
        &self,
        outcomes: &[(DeliveryId, Outcome)],
        owner: LeaseOwner,
        now: Timestamp,
    ) -> Result<()> {
        self.record_outcomes_then(outcomes, owner, now, OnDurable::nothing())
            .await
    }

    /// Records outcomes like [`Store::record_outcomes`], then runs `then` once they are
    /// durable (see [`OnDurable`]; with nothing to record, at once).
    pub async fn record_outcomes_then(
        &self,
        outcomes: &[(DeliveryId, Outcome)],
        owner: LeaseOwner,
        now: Timestamp,
        then: OnDurable,
    ) -> Result<()> {
        if outcomes.is_empty() {
            then.run();
            return Ok(());
        }
        let suppressing = outcomes
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Bounced { suppress: true, .. }));
        if !suppressing && outcomes.len() <= OUTCOMES_PER_STATEMENT {
            // One statement commits atomically on its own: one round trip, one flush.
            let mut writer = self.engine_writer().await?;
            let armed = writer.arm(then);
            let recorded = record_chunk(writer.conn(), outcomes, owner, now).await;
            armed.settle(recorded.is_ok());
            return recorded;
        }
        let mut tx = self.begin_engine_transaction().await?;
        tx.record_outcomes(outcomes, owner, now).await?;
        tx.commit_then(then).await
    }
}

impl EngineTransaction {
    /// Writes outcomes like [`Store::record_outcomes`], inside the transaction.
    pub async fn record_outcomes(
        &mut self,
        outcomes: &[(DeliveryId, Outcome)],
        owner: LeaseOwner,
        now: Timestamp,
    ) -> Result<()> {
        for chunk in outcomes.chunks(OUTCOMES_PER_STATEMENT) {
            record_chunk(self.conn(), chunk, owner, now).await?;
        }
        let key = self.suppression().clone();
        for (id, outcome) in outcomes {
            if let Outcome::Bounced {
                suppress: true,
                reply,
            } = outcome
            {
                suppress_reader(self.conn(), &key, *id, reply, now).await?;
            }
        }
        Ok(())
    }
}

/// Suppresses the reader of delivery `id`, whose mailbox the server says does not exist.
async fn suppress_reader(
    mut conn: EngineConnRef<'_>,
    key: &SuppressionKey,
    id: DeliveryId,
    reply: &str,
    now: Timestamp,
) -> Result<()> {
    let owner: Option<(String,)> = on_engine!(&mut conn, |c| {
        sqlx::query_as(
        "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **c)
    .await
    })?;
    if let Some((email,)) = owner {
        on_engine!(&mut conn, |c| sqlx::query(
            "UPDATE subscribers SET state = 'suppressed', updated_at = $1 WHERE email = $2",
        )
        .bind(now)
        .bind(&email)
        .execute(&mut **c)
        .await
        .map(drop))?;
        on_engine!(&mut conn, |c| sqlx::query(
            "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (email_hash) DO NOTHING",
        )
        .bind(key.entry(&email))
        .bind(format!("bounced: {reply}"))
        .bind(now)
        .execute(&mut **c)
        .await
        .map(drop))?;
    }
    Ok(())
}

/// Rows per outcome statement (six parameters each, well inside both backends' limits).
const OUTCOMES_PER_STATEMENT: usize = 200;

/// Writes a chunk of outcomes with one `UPDATE … FROM (VALUES …)`.
async fn record_chunk(
    conn: EngineConnRef<'_>,
    chunk: &[(DeliveryId, Outcome)],
    owner: LeaseOwner,
    now: Timestamp,
) -> Result<()> {
    let rows: Vec<String> = (0..chunk.len())
        .map(|i| {
            let p = 3 + i * 6;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                p,
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            )
        })
        .collect();
    let sql = format!(
        "UPDATE deliveries SET state = v.column2,
                 smtp_reply = COALESCE(v.column3, deliveries.smtp_reply),
                 last_error = COALESCE(v.column4, deliveries.last_error),
                 next_attempt_at = COALESCE(v.column5, deliveries.next_attempt_at),
                 sent_at = v.column6,
                 lease_until = NULL, lease_owner = NULL, updated_at = $1
             FROM (VALUES {}) AS v
             WHERE deliveries.id = v.column1 AND deliveries.{held}
                 AND deliveries.lease_owner = $2",
        rows.join(", "),
        held = states::from(Transition::Record),
    );
    let values: Vec<_> = chunk
        .iter()
        .map(|(id, outcome)| {
            let (reply, error, next_attempt, sent_at) = match outcome {
                Outcome::Sent { reply } => (Some(reply.clone()), None, None, Some(now)),
                Outcome::Deferred { error, retry_at } => {
                    (None, Some(error.clone()), Some(*retry_at), None)
                }
                Outcome::Bounced { reply, .. } => {
                    (Some(reply.clone()), Some(reply.clone()), None, None)
                }
                Outcome::Failed { error } => (None, Some(error.clone()), None, None),
                Outcome::Expired => (None, None, None, None),
                Outcome::Cancelled { reason } => (None, Some(reason.clone()), None, None),
                Outcome::Suppressed => (None, Some("address is suppressed".into()), None, None),
            };
            (
                *id,
                outcome.state().as_str(),
                reply,
                error,
                next_attempt,
                sent_at,
            )
        })
        .collect();
    on_engine!(conn, |c| {
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(owner.0);
        for (id, state, reply, error, next_attempt, sent_at) in values {
            query = query
                .bind(id)
                .bind(state)
                .bind(reply)
                .bind(error)
                .bind(next_attempt)
                .bind(sent_at);
        }
        query.execute(&mut *c).await.map(drop)
    })?;
    Ok(())
}
