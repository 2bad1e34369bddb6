//! Web sign-up: pending readers with their consent record, double opt-in, the
//! preferences page, sign-up emails in the outbox, and the limits that guard the form.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use super::subscribers::subscription;
use super::{RateLimit, Result, Store, StoreError, SuppressionKey, decode};

use crate::domain::{
    Cadence, DeliveryKind, EditionId, Email, RegionSlug, SignupId, SubscriberId, SubscriberState,
    Timestamp, Timezone, Transition,
};

/// Where a sign-up came from and what the reader agreed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// The client's IP address.
    pub ip: String,
    /// The browser's `User-Agent` (truncated).
    pub user_agent: String,
    /// The version of the consent text shown on the form.
    pub text_version: String,
}

/// A sign-up from the web form, already validated.
#[derive(Debug, Clone)]
pub struct WebSignup {
    /// Address.
    pub email: Email,
    /// Regions with the cadence for each.
    pub regions: Vec<(RegionSlug, Cadence)>,
    /// The reader's zone.
    pub timezone: Timezone,
    /// The consent given with it.
    pub consent: Consent,
}

/// How many sign-up emails an address may get, and how long a queued one stays worth sending.
#[derive(Debug, Clone, Copy)]
pub struct SignupMail {
    /// Sign-up emails (confirmations and welcomes) per address in any 24 hours.
    pub per_day: u32,
    /// Expiry of the row queued now.
    pub expires_at: Timestamp,
}

/// What queueing a web sign-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Stored under this id, and counted against the limits.
    Stored(SignupId),
    /// Refused by the limit of `scope`: nothing stored or counted.
    Limited {
        /// The limit reached.
        scope: &'static str,
        /// Seconds until it lets a sign-up through again.
        retry_after: i64,
    },
}

/// What a web sign-up did. The reader sees the same page whichever it is, so that
/// nobody can learn from the form whether an address is subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignupOutcome {
    /// A new or returning reader is pending, and a confirmation email is queued.
    ConfirmationQueued,
    /// The address was confirmed already: nothing changed, and a welcome email with the
    /// preferences link is queued so its owner can change what they get.
    WelcomeQueued,
    /// The address had its share of sign-up emails today: nothing is mailed.
    EmailLimitReached,
    /// The address is suppressed (bounced, or erased): nothing changed.
    Suppressed,
}

/// What confirming did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// The reader was pending and is now confirmed; a welcome email is queued.
    Confirmed,
    /// The reader had confirmed before (the link was used twice).
    AlreadyConfirmed,
    /// No pending reader has this id (unsubscribed, suppressed or erased meanwhile).
    NotPending,
}

/// A reader as the preferences page shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderPreferences {
    /// Address.
    pub email: Email,
    /// State.
    pub state: SubscriberState,
    /// Zone.
    pub timezone: Timezone,
    /// Regions followed, with cadences, sorted by region.
    pub regions: Vec<(RegionSlug, Cadence)>,
    /// When the row was made (a link issued before it was meant for someone else).
    pub created_at: Timestamp,
}

/// The newest consent record of a reader, for `herald subscribers export`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConsentRecord {
    /// When the form was submitted.
    pub given_at: Timestamp,
    /// From where.
    pub ip: String,
    /// With which browser.
    pub user_agent: String,
    /// Which consent text the reader saw.
    pub text_version: String,
    /// When the confirmation link was used.
    pub confirmed_at: Option<Timestamp>,
    /// From where it was used.
    pub confirmed_ip: Option<String>,
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Store {
    /// Stores a sign-up the form accepted, to be carried out by
    /// [`Store::run_queued_signup`], and counts it against `limits`; or, when one of them
    /// is reached, stores and counts nothing.
    ///
    /// It runs the same statements whatever the address's state, so the form can answer
    /// as soon as it returns without its timing telling anything about the address; and
    /// the row is durable by then, so a reader told to check their inbox is never
    /// forgotten by a crash. One transaction, so one forced flush per sign-up.
    pub async fn queue_web_signup(
        &self,
        signup: &WebSignup,
        now: Timestamp,
        limits: &[RateLimit],
    ) -> Result<Queued> {
        let mut tx = self.begin_write().await?;
        super::rate_limits::lock_keys(self.backend, &mut tx, limits).await?;
        for limit in limits {
            if let Some(retry_after) = limit.retry_after(&mut tx, now).await? {
                tx.rollback().await?;
                return Ok(Queued::Limited {
                    scope: limit.scope,
                    retry_after,
                });
            }
        }
        for limit in limits {
            limit.hit(&mut tx, now).await?;
        }
        let regions: Vec<String> = signup
            .regions
            .iter()
            .map(|(slug, cadence)| format!("{slug}:{cadence}"))
            .collect();
        let (id,): (SignupId,) = sqlx::query_as(
            "INSERT INTO signup_requests (email, regions, timezone, consent_ip,
                 consent_user_agent, consent_version, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(signup.email.as_str())
        .bind(regions.join(","))
        .bind(signup.timezone.name())
        .bind(&signup.consent.ip)
        .bind(&signup.consent.user_agent)
        .bind(&signup.consent.text_version)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Queued::Stored(id))
    }

    /// Carries out the queued sign-up `id` as [`Store::record_web_signup`] does, as of
    /// when the form was sent, and deletes it in the same transaction: done once, even
    /// with several daemons. `None` when it is gone (another worker did it).
    pub async fn run_queued_signup(
        &self,
        id: SignupId,
        mail: SignupMail,
    ) -> Result<Option<SignupOutcome>> {
        let mut tx = self.begin_write().await?;
        let row: Option<SignupRequestRow> = sqlx::query_as(
            "DELETE FROM signup_requests WHERE id = $1
             RETURNING email, regions, timezone, consent_ip, consent_user_agent,
                 consent_version, received_at",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((email, regions, timezone, ip, user_agent, text_version, received_at)) = row
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        let regions = regions
            .split(',')
            .filter(|r| !r.is_empty())
            .map(|entry| {
                let (slug, cadence) = entry.split_once(':').ok_or_else(|| {
                    StoreError::corrupt(
                        "signup_requests",
                        id,
                        "regions",
                        format!("{entry:?} is not slug:cadence"),
                    )
                })?;
                Ok((
                    decode("signup_requests", id, "regions", slug)?,
                    decode("signup_requests", id, "regions", cadence)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let signup = WebSignup {
            email: decode("signup_requests", id, "email", &email)?,
            regions,
            timezone: decode("signup_requests", id, "timezone", &timezone)?,
            consent: Consent {
                ip,
                user_agent,
                text_version,
            },
        };
        let outcome = record_signup(&mut tx, &self.suppression, &signup, received_at, mail).await?;
        tx.commit().await?;
        Ok(Some(outcome))
    }

    /// The ids of queued sign-ups, oldest first: those a crash or an error left behind.
    pub async fn queued_signups(&self, limit: i64) -> Result<Vec<SignupId>> {
        let rows: Vec<(SignupId,)> =
            sqlx::query_as("SELECT id FROM signup_requests ORDER BY id LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Records a web sign-up and queues the email it calls for, in one transaction.
    ///
    /// New, pending and unsubscribed addresses become pending with the chosen regions
    /// and a new consent record, and get a confirmation email. A confirmed address is
    /// left as it is (whoever filled the form may not own it) and gets a welcome email
    /// with its preferences link. Either email only within `mail.per_day`.
    pub async fn record_web_signup(
        &self,
        signup: &WebSignup,
        now: Timestamp,
        mail: SignupMail,
    ) -> Result<SignupOutcome> {
        let mut tx = self.begin_write().await?;
        let outcome = record_signup(&mut tx, &self.suppression, signup, now, mail).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Confirms a pending reader (double opt-in), completes their consent record with
    /// the confirming request's IP, and queues their welcome email.
    pub async fn confirm_subscriber(
        &self,
        subscriber_id: SubscriberId,
        ip: &str,
        now: Timestamp,
        welcome_expires_at: Timestamp,
    ) -> Result<ConfirmOutcome> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE subscribers SET state = 'confirmed', confirmed_at = $1, updated_at = $1
             WHERE id = $2 AND state = 'pending'",
        )
        .bind(now)
        .bind(subscriber_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            let state: Option<(String,)> =
                sqlx::query_as("SELECT state FROM subscribers WHERE id = $1")
                    .bind(subscriber_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(match state {
                Some((s,)) if s == SubscriberState::Confirmed.as_str() => {
                    ConfirmOutcome::AlreadyConfirmed
                }
                _ => ConfirmOutcome::NotPending,
            });
        }
        sqlx::query(
            "UPDATE consents SET confirmed_at = $1, confirmed_ip = $2
             WHERE id = (SELECT MAX(id) FROM consents WHERE subscriber_id = $3)",
        )
        .bind(now)
        .bind(ip)
        .bind(subscriber_id)
        .execute(&mut *tx)
        .await?;
        // The subscription starts now: a first digest must not reach back to a sign-up
        // that waited days for its confirmation.
        sqlx::query("UPDATE subscriptions SET created_at = $1 WHERE subscriber_id = $2")
            .bind(now)
            .bind(subscriber_id)
            .execute(&mut *tx)
            .await?;
        queue_signup_email(
            &mut tx,
            subscriber_id,
            DeliveryKind::Welcome,
            now,
            welcome_expires_at,
        )
        .await?;
        tx.commit().await?;
        Ok(ConfirmOutcome::Confirmed)
    }

    /// A reader's address, state, zone and regions, or `None` when erased.
    pub async fn reader_preferences(
        &self,
        subscriber_id: SubscriberId,
    ) -> Result<Option<ReaderPreferences>> {
        let row: Option<(String, String, String, Timestamp)> = sqlx::query_as(
            "SELECT email, state, timezone, created_at FROM subscribers WHERE id = $1",
        )
        .bind(subscriber_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((email, state, timezone, created_at)) = row else {
            return Ok(None);
        };
        let subs: Vec<(String, String)> = sqlx::query_as(
            "SELECT region_slug, cadence FROM subscriptions WHERE subscriber_id = $1 ORDER BY region_slug",
        )
        .bind(subscriber_id)
        .fetch_all(&self.pool)
        .await?;
        let regions = subs
            .iter()
            .map(|(slug, cadence)| subscription(subscriber_id, slug, cadence))
            .collect::<Result<Vec<_>>>()?;
        let row = subscriber_id;
        Ok(Some(ReaderPreferences {
            email: decode("subscribers", row, "email", &email)?,
            state: decode("subscribers", row, "state", &state)?,
            timezone: decode("subscribers", row, "timezone", &timezone)?,
            regions,
            created_at,
        }))
    }

    /// Replaces a confirmed reader's regions, cadences and zone. Returns false (and
    /// changes nothing) when the reader is not confirmed.
    pub async fn update_preferences(
        &self,
        subscriber_id: SubscriberId,
        regions: &[(RegionSlug, Cadence)],
        timezone: Timezone,
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE subscribers SET timezone = $1, updated_at = $2 WHERE id = $3 AND state = 'confirmed'",
        )
        .bind(timezone.name())
        .bind(now)
        .bind(subscriber_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        replace_subscriptions(&mut tx, subscriber_id, regions, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The newest consent record of every reader who signed up on the web, by reader id.
    pub async fn consent_records(&self) -> Result<HashMap<SubscriberId, ConsentRecord>> {
        let rows: Vec<ReaderConsent> = sqlx::query_as(
            "SELECT c.subscriber_id, c.given_at, c.ip, c.user_agent, c.text_version,
                    c.confirmed_at, c.confirmed_ip
             FROM consents c
             WHERE c.id = (SELECT MAX(c2.id) FROM consents c2 WHERE c2.subscriber_id = c.subscriber_id)",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.subscriber_id, row.record))
            .collect())
    }
}

/// A consent record with whose it is.
#[derive(sqlx::FromRow)]
struct ReaderConsent {
    subscriber_id: SubscriberId,
    #[sqlx(flatten)]
    record: ConsentRecord,
}

/// A queued sign-up as stored: address, regions, zone, consent IP, user agent, consent
/// version, when the form was sent.
type SignupRequestRow = (String, String, String, String, String, String, Timestamp);

/// The work of one sign-up, which depends on the address's state (see
/// [`Store::record_web_signup`]), inside the caller's transaction.
async fn record_signup(
    tx: &mut Tx,
    suppression: &SuppressionKey,
    signup: &WebSignup,
    now: Timestamp,
    mail: SignupMail,
) -> Result<SignupOutcome> {
    let suppressed: Option<(String,)> =
        sqlx::query_as("SELECT email_hash FROM suppressions WHERE email_hash = $1")
            .bind(suppression.entry(signup.email.as_str()))
            .fetch_optional(&mut **tx)
            .await?;
    if suppressed.is_some() {
        return Ok(SignupOutcome::Suppressed);
    }
    let existing: Option<(SubscriberId, String)> =
        sqlx::query_as("SELECT id, state FROM subscribers WHERE email = $1")
            .bind(signup.email.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    let (id, state) = match existing {
        Some((id, state)) => (id, decode("subscribers", id, "state", &state)?),
        None => {
            let (id,): (SubscriberId,) = sqlx::query_as(
                "INSERT INTO subscribers (email, state, timezone, created_at, updated_at)
                 VALUES ($1, 'pending', $2, $3, $3) RETURNING id",
            )
            .bind(signup.email.as_str())
            .bind(signup.timezone.name())
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
            (id, SubscriberState::Pending)
        }
    };
    let kind = match state {
        SubscriberState::Suppressed => return Ok(SignupOutcome::Suppressed),
        SubscriberState::Confirmed => DeliveryKind::Welcome,
        SubscriberState::Pending | SubscriberState::Unsubscribed => {
            sqlx::query(
                "UPDATE subscribers SET state = 'pending', timezone = $1, confirmed_at = NULL,
                     updated_at = $2
                 WHERE id = $3",
            )
            .bind(signup.timezone.name())
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?;
            replace_subscriptions(tx, id, &signup.regions, now).await?;
            sqlx::query(
                "INSERT INTO consents (subscriber_id, given_at, ip, user_agent, text_version)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(now)
            .bind(&signup.consent.ip)
            .bind(&signup.consent.user_agent)
            .bind(&signup.consent.text_version)
            .execute(&mut **tx)
            .await?;
            DeliveryKind::Confirmation
        }
    };
    let (sent_today,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM deliveries
         WHERE subscriber_id = $1 AND kind IN ('confirmation', 'welcome') AND created_at > $2",
    )
    .bind(id)
    .bind(now - Duration::from_secs(86_400))
    .fetch_one(&mut **tx)
    .await?;
    if sent_today >= i64::from(mail.per_day) {
        return Ok(SignupOutcome::EmailLimitReached);
    }
    queue_signup_email(tx, id, kind, now, mail.expires_at).await?;
    Ok(match kind {
        DeliveryKind::Welcome => SignupOutcome::WelcomeQueued,
        _ => SignupOutcome::ConfirmationQueued,
    })
}

/// Makes a reader's subscriptions exactly `regions`, keeping the start of those that stay
/// at the same cadence (the digest window counts from it).
async fn replace_subscriptions(
    tx: &mut Tx,
    subscriber_id: SubscriberId,
    regions: &[(RegionSlug, Cadence)],
    now: Timestamp,
) -> Result<()> {
    let current: Vec<(String, String)> =
        sqlx::query_as("SELECT region_slug, cadence FROM subscriptions WHERE subscriber_id = $1")
            .bind(subscriber_id)
            .fetch_all(&mut **tx)
            .await?;
    for (slug, cadence) in &current {
        let wanted = regions.iter().find(|(r, _)| r.as_str() == slug);
        match wanted {
            Some((_, c)) if c.as_str() == cadence => {}
            Some((_, c)) => {
                sqlx::query(
                    "UPDATE subscriptions SET cadence = $1, created_at = $2
                     WHERE subscriber_id = $3 AND region_slug = $4",
                )
                .bind(c.as_str())
                .bind(now)
                .bind(subscriber_id)
                .bind(slug)
                .execute(&mut **tx)
                .await?;
            }
            None => {
                sqlx::query(
                    "DELETE FROM subscriptions WHERE subscriber_id = $1 AND region_slug = $2",
                )
                .bind(subscriber_id)
                .bind(slug)
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    for (region, cadence) in regions {
        if current.iter().any(|(slug, _)| slug == region.as_str()) {
            continue;
        }
        sqlx::query(
            "INSERT INTO subscriptions (subscriber_id, region_slug, cadence, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (subscriber_id, region_slug) DO NOTHING",
        )
        .bind(subscriber_id)
        .bind(region.as_str())
        .bind(cadence.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Queues one sign-up email as its own edition (the outbox keys rows by reader and
/// edition, and a reader may get several of these).
async fn queue_signup_email(
    tx: &mut Tx,
    subscriber_id: SubscriberId,
    kind: DeliveryKind,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<()> {
    let key = uuid::Uuid::new_v4().simple().to_string();
    let (edition_id,): (EditionId,) = sqlx::query_as(
        "INSERT INTO editions (slot_key, kind, planned_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(format!("{}:{key}", kind.as_str()))
    .bind(kind.as_str())
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO deliveries (edition_id, subscriber_id, kind, priority, state, attempts,
             message_id, next_attempt_at, expires_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $7, $7)",
    )
    .bind(edition_id)
    .bind(subscriber_id)
    .bind(kind.as_str())
    .bind(kind.priority())
    .bind(Transition::Plan.target().as_str())
    .bind(format!("{:032x}", uuid::Uuid::new_v4().as_u128()))
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
