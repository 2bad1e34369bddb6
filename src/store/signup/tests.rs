//! Sign-up, confirmation and preferences on both backends.

use super::*;
use crate::domain::DeliveryState;
use crate::store::testing::{at, lease, stores};
use crate::store::{NewSubscriber, Recipient};

const DAY: i64 = 86_400;

fn signup(email: &str, regions: &[(&str, Cadence)]) -> WebSignup {
    WebSignup {
        email: Email::parse(email).unwrap(),
        regions: regions
            .iter()
            .map(|(r, c)| (r.parse().unwrap(), *c))
            .collect(),
        timezone: "Europe/Berlin".parse().unwrap(),
        consent: Consent {
            ip: "203.0.113.9".into(),
            user_agent: "TestBrowser/1.0".into(),
            text_version: "v1".into(),
        },
    }
}

fn mail(now: i64) -> SignupMail {
    SignupMail {
        per_day: 3,
        expires_at: at(now + DAY),
    }
}

async fn kinds(store: &Store) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT kind FROM deliveries ORDER BY id")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    rows.into_iter().map(|(k,)| k).collect()
}

async fn state_of(store: &Store, email: &str) -> SubscriberState {
    let list = store.list_subscribers().await.unwrap();
    list.iter().find(|r| r.email == email).unwrap().state
}

#[tokio::test]
async fn signup_confirm_and_the_daily_email_limit() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let ada = signup("Ada@Example.org", &[("town", Cadence::Daily)]);
        let t0 = 1_000_000;
        assert_eq!(
            store
                .record_web_signup(&ada, at(t0), mail(t0))
                .await
                .unwrap(),
            SignupOutcome::ConfirmationQueued
        );
        assert_eq!(
            state_of(store, "ada@example.org").await,
            SubscriberState::Pending
        );
        // Signing up again while pending: the newest choice wins, another email goes out...
        let again = signup("ada@example.org", &[("state", Cadence::Weekly)]);
        for i in 1..3 {
            assert_eq!(
                store
                    .record_web_signup(&again, at(t0 + i), mail(t0))
                    .await
                    .unwrap(),
                SignupOutcome::ConfirmationQueued
            );
        }
        // ...but no more than three a day.
        assert_eq!(
            store
                .record_web_signup(&again, at(t0 + 10), mail(t0))
                .await
                .unwrap(),
            SignupOutcome::EmailLimitReached,
            "{backend:?}"
        );
        assert_eq!(kinds(store).await, ["confirmation"; 3]);
        let id = store.list_subscribers().await.unwrap()[0].id;
        let prefs = store.reader_preferences(id).await.unwrap().unwrap();
        assert_eq!(
            prefs.regions,
            vec![("state".parse().unwrap(), Cadence::Weekly)]
        );
        assert_eq!(prefs.timezone, "Europe/Berlin");

        // Confirming queues a welcome; the link used twice does nothing more.
        assert_eq!(
            store
                .confirm_subscriber(id, "198.51.100.7", at(t0 + 20), at(t0 + DAY))
                .await
                .unwrap(),
            ConfirmOutcome::Confirmed
        );
        assert_eq!(
            store
                .confirm_subscriber(id, "198.51.100.7", at(t0 + 30), at(t0 + DAY))
                .await
                .unwrap(),
            ConfirmOutcome::AlreadyConfirmed
        );
        assert_eq!(kinds(store).await.last().unwrap(), "welcome");
        let consent = store.consent_records().await.unwrap().remove(&id).unwrap();
        assert_eq!(consent.given_at, at(t0 + 10), "the newest consent is shown");
        assert_eq!(consent.ip, "203.0.113.9");
        assert_eq!(consent.user_agent, "TestBrowser/1.0");
        assert_eq!(consent.text_version, "v1");
        assert_eq!(consent.confirmed_at, Some(at(t0 + 20)));
        assert_eq!(consent.confirmed_ip.as_deref(), Some("198.51.100.7"));

        // A confirmed address signing up again changes nothing; a day later its
        // owner gets a welcome with the preferences link.
        let other = signup("ada@example.org", &[("town", Cadence::Alert)]);
        assert_eq!(
            store
                .record_web_signup(&other, at(t0 + 40), mail(t0))
                .await
                .unwrap(),
            SignupOutcome::EmailLimitReached
        );
        assert_eq!(
            store
                .record_web_signup(&other, at(t0 + 2 * DAY), mail(t0))
                .await
                .unwrap(),
            SignupOutcome::WelcomeQueued
        );
        let prefs = store.reader_preferences(id).await.unwrap().unwrap();
        assert_eq!(prefs.state, SubscriberState::Confirmed);
        assert_eq!(
            prefs.regions,
            vec![("state".parse().unwrap(), Cadence::Weekly)],
            "a sign-up never changes a confirmed reader's regions"
        );

        // Unsubscribed, then back through the form: pending again, confirmation again.
        store.unsubscribe(id, at(t0 + 3 * DAY)).await.unwrap();
        assert_eq!(
            store
                .record_web_signup(&other, at(t0 + 3 * DAY + 1), mail(t0 + 3 * DAY))
                .await
                .unwrap(),
            SignupOutcome::ConfirmationQueued
        );
        assert_eq!(
            state_of(store, "ada@example.org").await,
            SubscriberState::Pending
        );

        // Erased: the suppression entry keeps the form from reaching the address.
        let email = Email::parse("ada@example.org").unwrap();
        store
            .remove_subscriber(&email, at(t0 + 4 * DAY))
            .await
            .unwrap();
        assert!(store.consent_records().await.unwrap().is_empty());
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM consents")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "removal erases the consent records");
        assert_eq!(
            store
                .record_web_signup(&other, at(t0 + 5 * DAY), mail(t0 + 5 * DAY))
                .await
                .unwrap(),
            SignupOutcome::Suppressed
        );
        assert!(store.list_subscribers().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn queued_sign_ups_are_counted_at_once_and_done_once() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let limits = |limit| {
            [RateLimit {
                scope: "signup-ip",
                key_hash: "k".into(),
                window_secs: 3_600,
                limit,
            }]
        };
        let ada = signup("ada@example.org", &[("town", Cadence::Weekly)]);
        let Queued::Stored(id) = store
            .queue_web_signup(&ada, at(100), &limits(2))
            .await
            .unwrap()
        else {
            panic!("{backend:?}: the first sign-up is within the limit");
        };
        // Queued, not done: the address is not on file yet.
        assert!(store.list_subscribers().await.unwrap().is_empty());
        assert_eq!(store.queued_signups(10).await.unwrap(), [id]);
        // Done once, as of when the form was sent, however many workers try.
        assert_eq!(
            store.run_queued_signup(id, mail(500)).await.unwrap(),
            Some(SignupOutcome::ConfirmationQueued)
        );
        assert_eq!(store.run_queued_signup(id, mail(500)).await.unwrap(), None);
        assert!(store.queued_signups(10).await.unwrap().is_empty());
        let reader = &store.list_subscribers().await.unwrap()[0];
        assert_eq!(reader.state, SubscriberState::Pending);
        assert_eq!(reader.created_at, at(100));
        assert_eq!(reader.regions, [("town".parse().unwrap(), Cadence::Weekly)]);
        let consent = store.consent_records().await.unwrap()[&reader.id].clone();
        assert_eq!(consent.given_at, at(100));
        assert_eq!(consent.user_agent, "TestBrowser/1.0");
        assert_eq!(kinds(store).await, ["confirmation"]);

        // Past the limit nothing is stored, and the refusal is not counted.
        let bo = signup("bo@example.org", &[("town", Cadence::Daily)]);
        assert!(matches!(
            store
                .queue_web_signup(&bo, at(101), &limits(2))
                .await
                .unwrap(),
            Queued::Stored(_)
        ));
        for when in [102, 103] {
            assert_eq!(
                store
                    .queue_web_signup(&bo, at(when), &limits(2))
                    .await
                    .unwrap(),
                Queued::Limited {
                    scope: "signup-ip",
                    // The hit at 100 leaves the window at 3,700.
                    retry_after: 3_700 - when,
                }
            );
        }
        assert_eq!(store.queued_signups(10).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn sign_up_emails_reach_pending_readers_with_their_regions() {
    for (backend, t) in stores().await {
        let store = &t.store;
        for (slug, name) in [("town", "Town"), ("state", "Across the State")] {
            sqlx::query("INSERT INTO regions (slug, name, timezone) VALUES ($1, $2, 'UTC')")
                .bind(slug)
                .bind(name)
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let ada = signup(
            "ada@example.org",
            &[("town", Cadence::Daily), ("state", Cadence::Alert)],
        );
        store
            .record_web_signup(&ada, at(100), mail(100))
            .await
            .unwrap();
        let claimed = store
            .claim_due_deliveries(10, at(100), lease(400))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "{backend:?}");
        let row = &claimed[0];
        assert_eq!(row.kind, DeliveryKind::Confirmation);
        let Recipient::Reader { state, .. } = &row.recipient else {
            panic!("{backend:?}: the reader is on file");
        };
        assert_eq!(*state, SubscriberState::Pending);
        assert_eq!(row.message_id.len(), 32);
        let names: Vec<(&str, Cadence)> = row
            .regions
            .iter()
            .map(|r| (r.name.as_str(), r.cadence))
            .collect();
        assert_eq!(
            names,
            [
                ("Across the State", Cadence::Alert),
                ("Town", Cadence::Daily)
            ]
        );
        // Sign-up emails go ahead of digests and alerts.
        assert_eq!(row.kind.priority(), 0);
    }
}

#[tokio::test]
async fn preferences_change_regions_cadences_and_zone_of_confirmed_readers_only() {
    for (_backend, t) in stores().await {
        let store = &t.store;
        let reader = |email: &str, confirmed| NewSubscriber {
            email: Email::parse(email).unwrap(),
            regions: vec![
                ("town".parse().unwrap(), Cadence::Daily),
                ("state".parse().unwrap(), Cadence::Daily),
            ],
            timezone: "UTC".parse().unwrap(),
            confirmed,
        };
        store
            .add_subscriber(&reader("a@example.org", true), at(1))
            .await
            .unwrap();
        store
            .add_subscriber(&reader("p@example.org", false), at(1))
            .await
            .unwrap();
        let list = store.list_subscribers().await.unwrap();
        let (a, p) = (list[0].id, list[1].id);
        let wanted = vec![
            ("state".parse().unwrap(), Cadence::Weekly),
            ("village".parse().unwrap(), Cadence::Alert),
        ];
        let zone: Timezone = "Asia/Kolkata".parse().unwrap();
        assert!(
            store
                .update_preferences(a, &wanted, zone, at(5))
                .await
                .unwrap()
        );
        assert!(
            !store
                .update_preferences(p, &wanted, zone, at(5))
                .await
                .unwrap()
        );
        let prefs = store.reader_preferences(a).await.unwrap().unwrap();
        assert_eq!(prefs.timezone, "Asia/Kolkata");
        assert_eq!(prefs.regions, wanted);
        let pending = store.reader_preferences(p).await.unwrap().unwrap();
        assert_eq!(pending.regions.len(), 2, "a pending reader is unchanged");
        assert_eq!(
            store
                .reader_preferences(SubscriberId::new(999))
                .await
                .unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn unsubscribed_readers_get_no_sign_up_mail_at_send_time() {
    for (_backend, t) in stores().await {
        let store = &t.store;
        let ada = signup("ada@example.org", &[("town", Cadence::Daily)]);
        store
            .record_web_signup(&ada, at(100), mail(100))
            .await
            .unwrap();
        let id = store.list_subscribers().await.unwrap()[0].id;
        store.unsubscribe(id, at(101)).await.unwrap();
        assert!(
            store
                .claim_due_deliveries(10, at(102), lease(400))
                .await
                .unwrap()
                .is_empty()
        );
        let ledger = store.delivery_ledger().await.unwrap();
        assert_eq!(ledger[0].state, DeliveryState::Cancelled);
    }
}
