//! The admin's look-ups: one reader in full (regions, consent, recent mail), delivery
//! rows by state with the server's replies, and the site's counts (readers by region,
//! cadence and state; rows by state and kind). Everything is read from the tables the
//! stages write, so the numbers are the ledger's.

use sqlx::AssertSqlSafe;

use super::subscribers::subscription;
use super::{ConsentRecord, Result, Store, SubscriberRow, decode};
use crate::domain::{
    Cadence, DeliveryId, DeliveryKind, DeliveryState, Email, RegionSlug, SendId, SubscriberId,
    SubscriberState, Timestamp,
};

/// One delivery row as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// Row id.
    pub id: DeliveryId,
    /// The reader's address (`None` once erased).
    pub email: Option<Email>,
    /// Confirmation, welcome, alert or digest.
    pub kind: DeliveryKind,
    /// Its state.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// The server's last reply (250 … when sent, 5xx when bounced).
    pub smtp_reply: Option<String>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// The manual send it belongs to, if any.
    pub send_id: Option<SendId>,
}

/// A reader in full, for the admin's look-up.
#[derive(Debug, Clone)]
pub struct ReaderDetail {
    /// Address, state, zone, regions and dates.
    pub reader: SubscriberRow,
    /// The newest consent record, when they signed up on the web.
    pub consent: Option<ConsentRecord>,
    /// Their latest emails, newest first.
    pub recent: Vec<DeliveryRow>,
}

/// The site's counts, read from the tables.
#[derive(Debug, Clone, Default)]
pub struct SiteCounts {
    /// Subscriptions by region, cadence and the reader's state.
    pub readers: Vec<(RegionSlug, Cadence, SubscriberState, i64)>,
    /// Delivery rows by state and kind.
    pub deliveries: Vec<(DeliveryState, DeliveryKind, i64)>,
}

/// A delivery row as stored.
#[derive(sqlx::FromRow)]
struct StoredDelivery {
    id: DeliveryId,
    email: Option<String>,
    kind: String,
    state: String,
    attempts: i64,
    smtp_reply: Option<String>,
    last_error: Option<String>,
    updated_at: Timestamp,
    send_id: Option<SendId>,
}

const DELIVERY_COLUMNS: &str = "d.id, s.email, d.kind, d.state, d.attempts, d.smtp_reply,
    d.last_error, d.updated_at, e.send_id";

impl StoredDelivery {
    fn decode(self) -> Result<DeliveryRow> {
        let id = self.id;
        Ok(DeliveryRow {
            id,
            email: self
                .email
                .as_deref()
                .map(|e| decode("subscribers", format!("of delivery {id}"), "email", e))
                .transpose()?,
            kind: decode("deliveries", id, "kind", &self.kind)?,
            state: decode("deliveries", id, "state", &self.state)?,
            attempts: self.attempts,
            smtp_reply: self.smtp_reply,
            last_error: self.last_error,
            updated_at: self.updated_at,
            send_id: self.send_id,
        })
    }
}

impl Store {
    /// The reader at `email`, with their consent record and latest `recent` emails.
    pub async fn reader_detail(&self, email: &Email, recent: i64) -> Result<Option<ReaderDetail>> {
        let row: Option<(SubscriberId, String, String, Timestamp, Option<Timestamp>)> =
            sqlx::query_as(
                "SELECT id, state, timezone, created_at, confirmed_at FROM subscribers
                 WHERE email = $1",
            )
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some((id, state, timezone, created_at, confirmed_at)) = row else {
            return Ok(None);
        };
        let subs: Vec<(String, String)> = sqlx::query_as(
            "SELECT region_slug, cadence FROM subscriptions WHERE subscriber_id = $1
             ORDER BY region_slug",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let regions = subs
            .iter()
            .map(|(region, cadence)| subscription(id, region, cadence))
            .collect::<Result<Vec<_>>>()?;
        let consent: Option<ConsentRecord> = sqlx::query_as(
            "SELECT given_at, ip, user_agent, text_version, confirmed_at, confirmed_ip
             FROM consents WHERE subscriber_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let recent: Vec<StoredDelivery> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d
             JOIN editions e ON e.id = d.edition_id
             LEFT JOIN subscribers s ON s.id = d.subscriber_id
             WHERE d.subscriber_id = $1 ORDER BY d.id DESC LIMIT $2"
        )))
        .bind(id)
        .bind(recent)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(ReaderDetail {
            reader: SubscriberRow {
                id,
                email: email.clone(),
                state: decode("subscribers", id, "state", &state)?,
                timezone: decode("subscribers", id, "timezone", &timezone)?,
                regions,
                created_at,
                confirmed_at,
            },
            consent,
            recent: recent
                .into_iter()
                .map(StoredDelivery::decode)
                .collect::<Result<_>>()?,
        }))
    }

    /// The latest `limit` rows in `state`, most recently changed first.
    pub async fn deliveries_in_state(
        &self,
        state: DeliveryState,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let rows: Vec<StoredDelivery> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d
             JOIN editions e ON e.id = d.edition_id
             LEFT JOIN subscribers s ON s.id = d.subscriber_id
             WHERE d.state = $1 ORDER BY d.updated_at DESC, d.id DESC LIMIT $2"
        )))
        .bind(state.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredDelivery::decode).collect()
    }

    /// Readers by region, cadence and state, and delivery rows by state and kind.
    pub async fn site_counts(&self) -> Result<SiteCounts> {
        let readers: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT sub.region_slug, sub.cadence, s.state, COUNT(*)
             FROM subscriptions sub JOIN subscribers s ON s.id = sub.subscriber_id
             GROUP BY sub.region_slug, sub.cadence, s.state
             ORDER BY sub.region_slug, sub.cadence, s.state",
        )
        .fetch_all(&self.pool)
        .await?;
        let deliveries: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT state, kind, COUNT(*) FROM deliveries GROUP BY state, kind
             ORDER BY state, kind",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut counts = SiteCounts::default();
        for (region, cadence, state, n) in readers {
            let row = format!("of region {region}");
            let (region, cadence) = subscription(SubscriberId::new(0), &region, &cadence)?;
            counts.readers.push((
                region,
                cadence,
                decode("subscribers", row, "state", &state)?,
                n,
            ));
        }
        for (state, kind, n) in deliveries {
            let row = format!("of kind {kind}");
            counts.deliveries.push((
                decode("deliveries", &row, "state", &state)?,
                decode("deliveries", &row, "kind", &kind)?,
                n,
            ));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{at, seed_planned, send_all_due, stores};

    #[tokio::test]
    async fn a_reader_comes_with_their_mail_and_the_site_counts_add_up() {
        for (backend, t) in stores().await {
            let store = &t.store;
            seed_planned(store).await;
            send_all_due(store, 1, 2_100).await;
            let a = Email::parse("a@example.org").unwrap();
            let detail = store.reader_detail(&a, 5).await.unwrap().unwrap();
            assert_eq!(
                detail.reader.state,
                SubscriberState::Confirmed,
                "{backend:?}"
            );
            assert_eq!(detail.reader.regions.len(), 1, "{backend:?}");
            assert_eq!(detail.recent.len(), 1, "{backend:?}");
            assert!(detail.consent.is_none(), "added by an admin: {backend:?}");
            let nobody = Email::parse("nobody@example.org").unwrap();
            assert!(store.reader_detail(&nobody, 5).await.unwrap().is_none());

            let sent = store
                .deliveries_in_state(DeliveryState::Sent, 10)
                .await
                .unwrap();
            assert_eq!(sent.len(), 1, "{backend:?}");
            assert_eq!(sent[0].smtp_reply.as_deref(), Some("250 ok"), "{backend:?}");
            assert_eq!(sent[0].updated_at, at(2_100), "{backend:?}");

            let counts = store.site_counts().await.unwrap();
            let confirmed: i64 = counts
                .readers
                .iter()
                .filter(|r| r.2 == SubscriberState::Confirmed)
                .map(|r| r.3)
                .sum();
            assert_eq!(confirmed, 2, "{backend:?}");
            let rows: i64 = counts.deliveries.iter().map(|d| d.2).sum();
            assert_eq!(rows, 2, "{backend:?}");
        }
    }
}
