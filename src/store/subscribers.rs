//! Readers and what they follow.

use std::collections::HashMap;

use sqlx::AssertSqlSafe;

use super::{Result, Store, decode, states};
use crate::domain::{
    Cadence, Email, RegionSlug, SubscriberId, SubscriberState, Timestamp, Timezone, Transition,
};

/// A reader to add, already validated.
#[derive(Debug, Clone)]
pub struct NewSubscriber {
    /// Address.
    pub email: Email,
    /// Regions with the cadence for each.
    pub regions: Vec<(RegionSlug, Cadence)>,
    /// The reader's zone.
    pub timezone: Timezone,
    /// Confirmed by an admin (skips double opt-in).
    pub confirmed: bool,
}

/// What `add_subscriber` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// A new reader row.
    Added,
    /// The address existed; `n` regions it did not follow yet were added.
    AddedRegions(usize),
    /// The address existed with all these regions: nothing changed.
    Unchanged,
}

/// A reader as `subscribers list` and `export` show it.
#[derive(Debug, Clone)]
pub struct SubscriberRow {
    /// Row id.
    pub id: SubscriberId,
    /// Address.
    pub email: Email,
    /// State.
    pub state: SubscriberState,
    /// Zone.
    pub timezone: Timezone,
    /// Regions and cadences, sorted by region.
    pub regions: Vec<(RegionSlug, Cadence)>,
    /// When the row was made.
    pub created_at: Timestamp,
    /// When the reader confirmed.
    pub confirmed_at: Option<Timestamp>,
}

impl Store {
    /// Adds a reader, or adds regions to an existing one; never changes state or cadences.
    pub async fn add_subscriber(&self, new: &NewSubscriber, now: Timestamp) -> Result<AddOutcome> {
        Ok(self.add_subscribers(std::slice::from_ref(new), now).await?[0])
    }

    /// Adds many readers in one transaction (an import): one forced flush for the lot.
    pub async fn add_subscribers(
        &self,
        readers: &[NewSubscriber],
        now: Timestamp,
    ) -> Result<Vec<AddOutcome>> {
        let mut tx = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(readers.len());
        for new in readers {
            outcomes.push(add_one(&mut tx, new, now).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Every reader with their subscriptions, ordered by address.
    pub async fn list_subscribers(&self) -> Result<Vec<SubscriberRow>> {
        let people: Vec<StoredSubscriber> = sqlx::query_as(
            "SELECT id, email, state, timezone, created_at, confirmed_at FROM subscribers ORDER BY email",
        )
        .fetch_all(&self.pool)
        .await?;
        let subs: Vec<(SubscriberId, String, String)> = sqlx::query_as(
            "SELECT subscriber_id, region_slug, cadence FROM subscriptions ORDER BY subscriber_id, region_slug",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_id: HashMap<SubscriberId, Vec<(RegionSlug, Cadence)>> = HashMap::new();
        for (id, region, cadence) in &subs {
            by_id
                .entry(*id)
                .or_default()
                .push(subscription(*id, region, cadence)?);
        }
        people
            .into_iter()
            .map(|row| {
                let id = row.id;
                Ok(SubscriberRow {
                    id,
                    email: decode("subscribers", id, "email", &row.email)?,
                    state: decode("subscribers", id, "state", &row.state)?,
                    timezone: decode("subscribers", id, "timezone", &row.timezone)?,
                    regions: by_id.remove(&id).unwrap_or_default(),
                    created_at: row.created_at,
                    confirmed_at: row.confirmed_at,
                })
            })
            .collect()
    }

    /// Erases a reader: their row, subscriptions and consent records go, queued mail to them is cancelled,
    /// and a keyed hash stays on the suppression list so no old queue row can reach them.
    /// Returns false when the address was not on file.
    pub async fn remove_subscriber(&self, email: &Email, now: Timestamp) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let found: Option<(SubscriberId,)> =
            sqlx::query_as("SELECT id FROM subscribers WHERE email = $1")
                .bind(email.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((id,)) = found else {
            return Ok(false);
        };
        cancel_waiting(&mut tx, id, "reader removed", now).await?;
        sqlx::query("DELETE FROM subscriptions WHERE subscriber_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM consents WHERE subscriber_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM subscribers WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, 'removed', $2)
             ON CONFLICT (email_hash) DO NOTHING",
        )
        .bind(self.suppression.entry(email.as_str()))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Marks a reader unsubscribed and cancels mail queued for them. Idempotent.
    pub async fn unsubscribe(&self, subscriber_id: SubscriberId, now: Timestamp) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE subscribers SET state = 'unsubscribed', unsubscribed_at = $1, updated_at = $1
             WHERE id = $2 AND state IN ('pending', 'confirmed')",
        )
        .bind(now)
        .bind(subscriber_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        cancel_waiting(&mut tx, subscriber_id, "reader unsubscribed", now).await?;
        tx.commit().await?;
        Ok(changed > 0)
    }
}

/// A reader as stored, before decoding.
#[derive(sqlx::FromRow)]
struct StoredSubscriber {
    id: SubscriberId,
    email: String,
    state: String,
    timezone: String,
    created_at: Timestamp,
    confirmed_at: Option<Timestamp>,
}

/// One subscription of reader `subscriber`, decoded.
pub(super) fn subscription(
    subscriber: SubscriberId,
    region: &str,
    cadence: &str,
) -> Result<(RegionSlug, Cadence)> {
    let row = format!("({subscriber}, {region})");
    Ok((
        decode("subscriptions", &row, "region_slug", region)?,
        decode("subscriptions", &row, "cadence", cadence)?,
    ))
}

/// Cancels the mail still waiting for a reader who left, saying why.
pub(super) async fn cancel_waiting(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    subscriber_id: SubscriberId,
    why: &str,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE deliveries SET state = {cancelled}, last_error = $1, updated_at = $2,
             lease_until = NULL
         WHERE subscriber_id = $3 AND {waiting}",
        cancelled = states::target(Transition::Cancel),
        waiting = states::from(Transition::Cancel),
    )))
    .bind(why)
    .bind(now)
    .bind(subscriber_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One reader's insert, inside the caller's transaction.
async fn add_one(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    new: &NewSubscriber,
    now: Timestamp,
) -> Result<AddOutcome> {
    let state = if new.confirmed {
        SubscriberState::Confirmed
    } else {
        SubscriberState::Pending
    };
    let inserted: Option<(SubscriberId,)> = sqlx::query_as(
        "INSERT INTO subscribers (email, state, timezone, created_at, confirmed_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $4)
         ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(new.email.as_str())
    .bind(state.as_str())
    .bind(new.timezone.name())
    .bind(now)
    .bind(new.confirmed.then_some(now))
    .fetch_optional(&mut **tx)
    .await?;
    let (id, fresh) = match inserted {
        Some((id,)) => (id, true),
        None => {
            let (id,): (SubscriberId,) =
                sqlx::query_as("SELECT id FROM subscribers WHERE email = $1")
                    .bind(new.email.as_str())
                    .fetch_one(&mut **tx)
                    .await?;
            (id, false)
        }
    };
    let mut added = 0;
    for (region, cadence) in &new.regions {
        let result = sqlx::query(
            "INSERT INTO subscriptions (subscriber_id, region_slug, cadence, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (subscriber_id, region_slug) DO NOTHING",
        )
        .bind(id)
        .bind(region.as_str())
        .bind(cadence.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        added += result.rows_affected() as usize;
    }
    Ok(if fresh {
        AddOutcome::Added
    } else if added > 0 {
        AddOutcome::AddedRegions(added)
    } else {
        AddOutcome::Unchanged
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{at, stores};

    fn reader(email: &str, regions: &[&str], confirmed: bool) -> NewSubscriber {
        NewSubscriber {
            email: Email::parse(email).unwrap(),
            regions: regions
                .iter()
                .map(|r| (r.parse().unwrap(), Cadence::Daily))
                .collect(),
            timezone: "Europe/Berlin".parse().unwrap(),
            confirmed,
        }
    }

    #[tokio::test]
    async fn adding_twice_changes_nothing() {
        for (backend, t) in stores().await {
            let store = &t.store;
            let a = reader("Ada@Example.org", &["town"], true);
            assert_eq!(
                store.add_subscriber(&a, at(1)).await.unwrap(),
                AddOutcome::Added
            );
            assert_eq!(
                store.add_subscriber(&a, at(2)).await.unwrap(),
                AddOutcome::Unchanged
            );
            let more = reader("ada@example.org", &["town", "state"], false);
            assert_eq!(
                store.add_subscriber(&more, at(3)).await.unwrap(),
                AddOutcome::AddedRegions(1)
            );
            let list = store.list_subscribers().await.unwrap();
            assert_eq!(list.len(), 1, "{backend:?}");
            assert_eq!(list[0].email, "ada@example.org");
            assert_eq!(
                list[0].state,
                SubscriberState::Confirmed,
                "a later add must not reset the state"
            );
            assert_eq!(list[0].regions.len(), 2);
            assert_eq!(list[0].timezone, "Europe/Berlin");
        }
    }

    #[tokio::test]
    async fn removal_erases_and_suppresses() {
        for (_backend, t) in stores().await {
            let store = &t.store;
            let a = reader("gone@example.org", &["town"], true);
            store.add_subscriber(&a, at(1)).await.unwrap();
            assert!(store.remove_subscriber(&a.email, at(2)).await.unwrap());
            assert!(!store.remove_subscriber(&a.email, at(3)).await.unwrap());
            assert!(store.list_subscribers().await.unwrap().is_empty());
            let (n,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM suppressions WHERE email_hash = $1")
                    .bind(store.suppression.entry("gone@example.org"))
                    .fetch_one(&store.pool)
                    .await
                    .unwrap();
            assert_eq!(n, 1);
        }
    }
}
