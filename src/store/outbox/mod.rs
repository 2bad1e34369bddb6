//! The outbox engine: claiming due rows under a lease, renewing and releasing leases,
//! expiring rows past their kind's expiry and putting failed ones back in the queue.
//! Its other two halves load what a claimed row needs (`load`) and write outcomes
//! (`record`). Its writes go through the engine's connection (`engine_connection`).

mod load;
mod record;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use sqlx::AssertSqlSafe;

use super::{
    Backend, EngineConnRef, EngineTransaction, Result, Store, on_engine, placeholders, states,
};
use crate::domain::{
    Cadence, DeliveryArticle, DeliveryId, DeliveryKind, DeliveryState, Email, MoreStories,
    ReaderRegion, SponsorBlock, SubscriberId, SubscriberState, Timestamp, Timezone, Transition,
};

/// Who holds a claimed row: one value per running worker, chosen at random, so a
/// worker renews, records and returns only rows it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseOwner(pub(in crate::store) i64);

impl LeaseOwner {
    /// A fresh owner for a new worker.
    pub fn random() -> LeaseOwner {
        LeaseOwner(fastrand::i64(..))
    }

    /// The owner the store tests claim as.
    #[cfg(test)]
    pub(crate) const TEST: LeaseOwner = LeaseOwner(1);
}

/// A claim's lease: who holds the rows, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The worker holding the rows.
    pub owner: LeaseOwner,
    /// The rows are due again for anyone after this instant.
    pub until: Timestamp,
}

/// A claim to take: up to `limit` rows due at `now`, held under `lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// At most this many rows.
    pub limit: usize,
    /// Rows due at this instant are claimed.
    pub now: Timestamp,
    /// Who holds them, and until when.
    pub lease: Lease,
}

/// A row claimed by a worker, with what composing it needs.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// Row id.
    pub id: DeliveryId,
    /// The reader's id.
    pub subscriber_id: SubscriberId,
    /// Confirmation, alert or digest.
    pub kind: DeliveryKind,
    /// Digest cadence, when a digest.
    pub cadence: Option<Cadence>,
    /// Planned when the row was made; reused on every retry.
    pub message_id: String,
    /// Attempts including this one.
    pub attempts: i64,
    /// After this, the row expires instead of being sent.
    pub expires_at: Timestamp,
    /// Who it goes to, as they are now (checked at send time, not only at plan time).
    pub recipient: Recipient,
    /// Whether the address is on the suppression list.
    pub suppressed: bool,
    /// The articles to carry, ordered by region then newest first; shared by the
    /// readers of one content group.
    pub articles: Arc<[DeliveryArticle]>,
    /// The stories the cap left out, per region; shared like `articles`.
    pub more: Arc<[MoreStories]>,
    /// The sponsor block a digest carries, chosen when it was planned (none once the
    /// booking is removed).
    pub sponsor: Option<Arc<SponsorBlock>>,
    /// For sign-up emails only: the regions the reader follows, by name.
    pub regions: Vec<ReaderRegion>,
}

impl ClaimedDelivery {
    /// The reader's address, when they are on file and it could be read.
    pub fn email(&self) -> Option<&Email> {
        match &self.recipient {
            Recipient::Reader { email, .. } => Some(email),
            Recipient::Erased | Recipient::Unreadable(_) => None,
        }
    }
}

/// Who a claimed row goes to, as the store found them when loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// The reader, on file.
    Reader {
        /// Their address.
        email: Email,
        /// Where they stand now.
        state: SubscriberState,
        /// Their zone, for the dates in the email.
        timezone: Timezone,
    },
    /// Erased since the row was planned.
    Erased,
    /// On file with a value herald cannot read (the sentence says which): this row fails
    /// on its own, where an error for the whole claim would bring it back with every
    /// claim and hold up the rows claimed with it.
    Unreadable(String),
}

impl Store {
    /// Marks waiting rows whose expiry has passed as `expired`. Returns how many.
    pub async fn expire_overdue(&self, now: Timestamp) -> Result<u64> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE deliveries SET state = {expired}, lease_until = NULL, updated_at = $1
             WHERE {waiting} AND expires_at < $1",
            expired = states::target(Transition::Expire),
            waiting = states::from(Transition::Expire),
        )))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Claims up to `limit` due rows under `lease`, most urgent lane first. Rows whose
    /// lease ran out (a crashed worker) are due again.
    pub async fn claim_due_deliveries(
        &self,
        limit: usize,
        now: Timestamp,
        lease: Lease,
    ) -> Result<Vec<ClaimedDelivery>> {
        let claim = Claim { limit, now, lease };
        let mut writer = self.engine_writer().await?;
        let ids = claim_ids(writer.conn(), self.backend, claim).await?;
        drop(writer);
        self.load_claimed(&ids).await
    }

    /// Extends the lease on those of `ids` that `lease.owner` still holds, and returns
    /// them. A worker renews while it holds rows, so a slow server never lets a live
    /// worker's lease lapse; only a dead worker's rows come back.
    pub async fn renew_leases(&self, ids: &[DeliveryId], lease: Lease) -> Result<Vec<DeliveryId>> {
        let mut renewed = Vec::with_capacity(ids.len());
        let mut writer = self.engine_writer().await?;
        for chunk in ids.chunks(500) {
            let sql = format!(
                "UPDATE deliveries SET lease_until = $1
                 WHERE {held} AND lease_owner = $2 AND id IN ({ids})
                 RETURNING id",
                held = states::from(Transition::Renew),
                ids = placeholders(3, chunk.len())
            );
            let rows: Vec<(DeliveryId,)> = on_engine!(writer.conn(), |c| {
                let mut query = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(lease.until)
                    .bind(lease.owner.0);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(&mut *c).await
            })?;
            renewed.extend(rows.into_iter().map(|(id,)| id));
        }
        Ok(renewed)
    }

    /// Gives claimed rows back (shutdown before they were sent): due again at once,
    /// with the attempt that never happened taken back.
    pub async fn release_deliveries(
        &self,
        ids: &[DeliveryId],
        owner: LeaseOwner,
        now: Timestamp,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE deliveries SET state = CASE WHEN attempts > 1 THEN {deferred} ELSE {queued} END,
                 attempts = attempts - 1, lease_until = NULL, lease_owner = NULL,
                 next_attempt_at = $1, updated_at = $1
             WHERE {held} AND lease_owner = $2 AND id IN ({ids})",
            deferred = states::literal(DeliveryState::Deferred),
            queued = states::literal(DeliveryState::Queued),
            held = states::from(Transition::Release),
            ids = placeholders(3, ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(owner.0);
        for id in ids {
            query = query.bind(*id);
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// Puts `failed` and `expired` rows back in the queue with a fresh expiry. Returns how many.
    pub async fn retry_failed(&self, now: Timestamp, expires_at: Timestamp) -> Result<u64> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE deliveries SET state = {queued}, next_attempt_at = $1, expires_at = $2,
                 lease_until = NULL, updated_at = $1
             WHERE {given_up}",
            queued = states::target(Transition::RetryFailed),
            given_up = states::from(Transition::RetryFailed),
        )))
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }
}

impl EngineTransaction {
    /// Claims like [`Store::claim_due_deliveries`], inside the transaction: the ids
    /// are the caller's once it commits (load them with [`Store::load_claimed`]).
    pub async fn claim(&mut self, claim: Claim) -> Result<Vec<DeliveryId>> {
        let backend = self.backend();
        claim_ids(self.conn(), backend, claim).await
    }
}

/// Claims `claim.limit` due rows in one statement on `conn`; returns their ids.
async fn claim_ids(
    conn: EngineConnRef<'_>,
    backend: Backend,
    claim: Claim,
) -> Result<Vec<DeliveryId>> {
    let skip_locked = backend.skip_locked_sql();
    // Two index walks that each stop after `limit` rows: lapsed leases (a crashed
    // worker's rows) and waiting rows in lane order.
    // Both kinds of claim leave rows `sending`.
    let sql = format!(
        "UPDATE deliveries SET state = {sending}, lease_until = $1, lease_owner = $4,
             attempts = attempts + 1, updated_at = $2
         WHERE id IN (
             SELECT id FROM (
                 SELECT id FROM deliveries
                 WHERE {leased} AND lease_until < $2
                 ORDER BY lease_until LIMIT $3 {skip_locked}) AS lapsed
             UNION ALL
             SELECT id FROM (
                 SELECT id FROM deliveries
                 WHERE {waiting} AND next_attempt_at <= $2
                 ORDER BY priority, next_attempt_at LIMIT $3 {skip_locked}) AS waiting
             LIMIT $3)
         RETURNING id",
        sending = states::target(Transition::Claim),
        leased = states::from(Transition::Reclaim),
        waiting = states::from(Transition::Claim),
    );
    let claimed: Vec<(DeliveryId,)> = on_engine!(conn, |c| sqlx::query_as(AssertSqlSafe(sql))
        .bind(claim.lease.until)
        .bind(claim.now)
        .bind(claim.limit as i64)
        .bind(claim.lease.owner.0)
        .fetch_all(&mut *c)
        .await)?;
    Ok(claimed.into_iter().map(|(id,)| id).collect())
}
