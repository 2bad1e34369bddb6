use super::*;
use crate::bounces::{
    BounceAddresses, BounceSource, mailto_unsubscribe_address, reader_from_unsubscribe_address,
    verp_address,
};
use crate::config::{BounceAddress, BouncesConfig};
use crate::domain::{Cadence, Email, FeedItem};
use crate::store::testing::{at, seed_planned, send_all_due, stores};
use crate::tokens::Signer;

fn config() -> BouncesConfig {
    BouncesConfig {
        address: Some(BounceAddress {
            local: "bounces".into(),
            domain: "news.example.org".into(),
        }),
        soft_limit: 3,
        sns_cert_hosts: vec![],
        mailgun_signing_key: None,
        imap: None,
        poll_interval: std::time::Duration::from_secs(60),
    }
}

fn keys() -> (BouncePolicy, BounceAddresses) {
    let signer = Signer::new(b"test-secret");
    (
        BouncePolicy::new(&config(), &signer),
        BounceAddresses::new(&config(), &signer).unwrap(),
    )
}

fn report(id: &str, kind: BounceKind, verp: Option<String>, at_secs: i64) -> BounceReport {
    BounceReport {
        source: BounceSource::Imap,
        source_id: id.into(),
        kind,
        verp_token: verp,
        original_message_id: None,
        recipient: None,
        diagnostic: Some("smtp; 550 5.1.1 no such user".into()),
        at: at(at_secs),
    }
}

/// The row sent to `email` in the seeded digest, and its stored Message-ID.
async fn row_of(store: &Store, email: &str) -> (DeliveryId, String) {
    sqlx::query_as(
        "SELECT d.id, d.message_id FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
         WHERE s.email = $1 ORDER BY d.id DESC LIMIT 1",
    )
    .bind(email)
    .fetch_one(&store.pool)
    .await
    .unwrap()
}

async fn state_of(store: &Store, email: &str) -> String {
    let (state,): (String,) = sqlx::query_as("SELECT state FROM subscribers WHERE email = $1")
        .bind(email)
        .fetch_one(&store.pool)
        .await
        .unwrap();
    state
}

async fn row_state(store: &Store, id: DeliveryId) -> String {
    let (state,): (String,) = sqlx::query_as("SELECT state FROM deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(&store.pool)
        .await
        .unwrap();
    state
}

fn email(text: &str) -> Email {
    Email::parse(text).unwrap()
}

#[tokio::test]
async fn a_hard_bounce_marks_its_row_bounced_and_suppresses_once() {
    let (policy, addresses) = keys();
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        send_all_due(store, 10, 2_000).await;
        let (row, _) = row_of(store, "a@example.org").await;
        let verp = verp_address(&addresses, row);
        let hard = report(
            "<dsn-1@mx.example>",
            BounceKind::Hard,
            Some(verp.clone()),
            3_000,
        );
        assert_eq!(
            store.record_bounce(&hard, &policy).await.unwrap(),
            Recorded::Applied {
                delivery: row,
                suppressed: true
            },
            "{backend:?}"
        );
        assert_eq!(row_state(store, row).await, "bounced");
        assert_eq!(state_of(store, "a@example.org").await, "suppressed");
        assert_eq!(state_of(store, "b@example.org").await, "confirmed");
        let entry = store
            .suppression_of(&email("a@example.org"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.reason, "hard bounce: smtp; 550 5.1.1 no such user");
        let (event,): (i64,) = sqlx::query_as("SELECT id FROM bounce_events")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let cause = entry.event.unwrap();
        assert_eq!(
            (cause.id, cause.kind.as_str(), cause.source.as_str()),
            (event, "hard", "imap")
        );
        assert_eq!((cause.delivery, cause.at), (row.get(), at(3_000)));
        // The same report again, however often: nothing more.
        for _ in 0..3 {
            assert_eq!(
                store.record_bounce(&hard, &policy).await.unwrap(),
                Recorded::Duplicate
            );
        }
        let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM bounce_events")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(events, 1);
        // One of the two emails to example.org bounced late: the moved row still counts
        // as accepted, so the domain's bounce rate is a half.
        let stats = store.bounce_stats().await.unwrap();
        assert_eq!(stats.by_domain[0].domain, "example.org");
        assert_eq!(stats.by_domain[0].sent, 2, "{backend:?}");
        assert!(
            (stats.by_domain[0].bounce_rate() - 0.5).abs() < 1e-9,
            "{backend:?}"
        );
        assert!(
            store
                .suppression_of(&email("b@example.org"))
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn reports_match_by_message_id_and_never_touch_another_reader() {
    let (policy, addresses) = keys();
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        send_all_due(store, 10, 2_000).await;
        let (row, message_id) = row_of(store, "a@example.org").await;
        let uuid = uuid::Uuid::from_u128(u128::from_str_radix(&message_id, 16).unwrap());
        let quoted = format!("<{}@news.example.org>", uuid.hyphenated());
        // A forged token, and no Message-ID: nothing to match.
        let forged = verp_address(&addresses, row).replace("bounces+", "bounces+a");
        let mut r = report("x1", BounceKind::Hard, Some(forged), 3_000);
        assert_eq!(
            store.record_bounce(&r, &policy).await.unwrap(),
            Recorded::Unmatched
        );
        // The Message-ID, but the report names another reader: nothing changes.
        r.original_message_id = Some(quoted.clone());
        r.recipient = Some("rfc822; b@example.org".into());
        assert_eq!(
            store.record_bounce(&r, &policy).await.unwrap(),
            Recorded::Unmatched,
            "{backend:?}"
        );
        assert_eq!(state_of(store, "a@example.org").await, "confirmed");
        assert_eq!(state_of(store, "b@example.org").await, "confirmed");
        assert!(store.suppressions().await.unwrap().is_empty());
        // The row's own address, in any case: matched.
        r.recipient = Some("rfc822; <A@Example.org>".into());
        assert_eq!(
            store.record_bounce(&r, &policy).await.unwrap(),
            Recorded::Applied {
                delivery: row,
                suppressed: true
            }
        );
        assert_eq!(state_of(store, "b@example.org").await, "confirmed");
    }
}

#[tokio::test]
async fn a_complaint_unsubscribes_suppresses_and_withdraws_consent() {
    let (policy, addresses) = keys();
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        send_all_due(store, 10, 2_000).await;
        let (row, _) = row_of(store, "b@example.org").await;
        sqlx::query(
            "INSERT INTO consents (subscriber_id, given_at, ip, user_agent, text_version)
             SELECT id, 500, 'ip', 'agent', '1' FROM subscribers WHERE email = 'b@example.org'",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let mut complaint = report("arf-1", BounceKind::Complaint, None, 5_000);
        complaint.source = BounceSource::Ses;
        complaint.verp_token = Some(verp_address(&addresses, row));
        assert!(matches!(
            store.record_bounce(&complaint, &policy).await.unwrap(),
            Recorded::Applied {
                suppressed: true,
                ..
            }
        ));
        assert_eq!(
            state_of(store, "b@example.org").await,
            "unsubscribed",
            "{backend:?}"
        );
        let entry = store
            .suppression_of(&email("b@example.org"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.reason, "complaint");
        assert!(entry.event.is_some());
        let (withdrawn_at, by): (Option<i64>, Option<String>) =
            sqlx::query_as("SELECT withdrawn_at, withdrawn_by FROM consents")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(
            (withdrawn_at, by.as_deref()),
            (Some(5_000), Some("complaint"))
        );
        // The same event id from another source is another report.
        complaint.source = BounceSource::Mailgun;
        assert!(matches!(
            store.record_bounce(&complaint, &policy).await.unwrap(),
            Recorded::Applied { .. }
        ));
        let stats = store.bounce_stats().await.unwrap();
        assert_eq!(stats.count(BounceKind::Complaint), 2);
        assert_eq!(stats.sent, 2);
        assert!((stats.complaint_rate() - 1.0).abs() < 1e-9);
        assert_eq!(stats.by_domain[0].domain, "example.org");
        assert_eq!(stats.by_domain[0].suppressed, 1);
        // Both digests went to example.org: its rates are the site's.
        assert_eq!(stats.by_domain[0].sent, 2, "{backend:?}");
        assert!((stats.by_domain[0].complaint_rate() - 1.0).abs() < 1e-9);
        assert_eq!(stats.by_domain[0].bounce_rate(), 0.0);
        assert_eq!(stats.suppressions, vec![("complaint".to_string(), 1)]);
    }
}

/// Plans and sends one more digest (a new story) to the seeded readers at `now`.
async fn another_digest(store: &Store, n: i64, now: i64) {
    let town: crate::domain::RegionSlug = "town".parse().unwrap();
    let feed = store.feed_id(&town, "file://town.xml").await.unwrap();
    let item = FeedItem {
        guid: format!("later{n}"),
        link: format!("https://news.example/later{n}"),
        title: format!("Later {n}"),
        summary: String::new(),
        category: String::new(),
        published_at: Some(now - 10),
        breaking: false,
    };
    store
        .record_feed_items(feed, &town, &[item], at(now - 10))
        .await
        .unwrap();
    store
        .plan_region_digest(
            &format!("manual:later{n}"),
            &town,
            Cadence::Daily,
            at(now - 100),
            at(now),
            at(now + 90_000),
            false,
            None,
        )
        .await
        .unwrap();
    assert!(!send_all_due(store, 10, now).await.is_empty());
}

#[tokio::test]
async fn soft_bounces_suppress_on_the_third_distinct_day_unless_mail_got_through_between() {
    let (policy, addresses) = keys();
    let day = 86_400;
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        send_all_due(store, 10, 2_000).await;
        let (a_row, _) = row_of(store, "a@example.org").await;
        let a = Some(verp_address(&addresses, a_row));
        let soft = |id: &str, verp: &Option<String>, when: i64| {
            let mut r = report(id, BounceKind::Soft, verp.clone(), when);
            r.diagnostic = Some("smtp; 452 4.2.2 mailbox full".into());
            r
        };
        // Two on day one and one on day two: two days.
        for (id, when) in [("s1", day + 10), ("s2", day + 500), ("s3", 2 * day + 10)] {
            assert_eq!(
                store
                    .record_bounce(&soft(id, &a, when), &policy)
                    .await
                    .unwrap(),
                Recorded::Applied {
                    delivery: a_row,
                    suppressed: false
                },
                "{backend:?} {id}"
            );
        }
        assert_eq!(state_of(store, "a@example.org").await, "confirmed");
        assert_eq!(
            row_state(store, a_row).await,
            "sent",
            "a soft bounce leaves the row"
        );
        // The third day.
        assert_eq!(
            store
                .record_bounce(&soft("s4", &a, 3 * day + 10), &policy)
                .await
                .unwrap(),
            Recorded::Applied {
                delivery: a_row,
                suppressed: true
            }
        );
        assert_eq!(state_of(store, "a@example.org").await, "suppressed");
        let entry = store
            .suppression_of(&email("a@example.org"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.reason, "soft bounces on 3 days");

        // Reader b: two days of soft bounces, then an email that got through, then
        // one more soft bounce: the count starts again.
        let (b_first, _) = row_of(store, "b@example.org").await;
        let b = Some(verp_address(&addresses, b_first));
        store
            .record_bounce(&soft("t1", &b, day), &policy)
            .await
            .unwrap();
        store
            .record_bounce(&soft("t2", &b, 2 * day), &policy)
            .await
            .unwrap();
        another_digest(store, 1, 2 * day + 100).await;
        another_digest(store, 2, 3 * day + 100).await;
        let (b_last, _) = row_of(store, "b@example.org").await;
        let b_last = Some(verp_address(&addresses, b_last));
        assert!(
            matches!(
                store
                    .record_bounce(&soft("t3", &b_last, 4 * day), &policy)
                    .await
                    .unwrap(),
                Recorded::Applied {
                    suppressed: false,
                    ..
                }
            ),
            "{backend:?}"
        );
        assert_eq!(state_of(store, "b@example.org").await, "confirmed");
    }
}

#[tokio::test]
async fn a_mail_to_the_unsubscribe_address_unsubscribes_its_reader_only() {
    let (_, addresses) = keys();
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        let (id,): (SubscriberId,) =
            sqlx::query_as("SELECT id FROM subscribers WHERE email = 'a@example.org'")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        let address = mailto_unsubscribe_address(&addresses, id, at(1_500));
        let reader = reader_from_unsubscribe_address(&addresses, &address).unwrap();
        assert!(
            store.unsubscribe_by_mail(&reader, at(3_000)).await.unwrap(),
            "{backend:?}"
        );
        assert_eq!(state_of(store, "a@example.org").await, "unsubscribed");
        assert_eq!(state_of(store, "b@example.org").await, "confirmed");
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM deliveries WHERE subscriber_id = $1 AND state = 'queued'",
        )
        .bind(id)
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(waiting, 0, "its queued digest is cancelled");
        // Again: nothing more to do.
        assert!(!store.unsubscribe_by_mail(&reader, at(3_100)).await.unwrap());
        // An address issued before the reader existed is another reader's.
        let (b,): (SubscriberId,) =
            sqlx::query_as("SELECT id FROM subscribers WHERE email = 'b@example.org'")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        let old = mailto_unsubscribe_address(&addresses, b, at(10));
        let old = reader_from_unsubscribe_address(&addresses, &old).unwrap();
        assert!(!store.unsubscribe_by_mail(&old, at(3_000)).await.unwrap());
        assert_eq!(state_of(store, "b@example.org").await, "confirmed");
    }
}

#[tokio::test]
async fn stale_sign_ups_are_erased_with_their_consent_and_counted() {
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        sqlx::query(
            "INSERT INTO consents (subscriber_id, given_at, ip, user_agent, text_version)
             SELECT id, 1000, 'ip', 'agent', '1' FROM subscribers",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let week = std::time::Duration::from_secs(7 * 86_400);
        // Not yet past the lifetime.
        assert_eq!(
            store
                .purge_pending(week, at(1_000 + 7 * 86_400 - 1))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .purge_pending(week, at(1_000 + 7 * 86_400 + 1))
                .await
                .unwrap(),
            1,
            "{backend:?}"
        );
        let left: Vec<(String,)> = sqlx::query_as("SELECT email FROM subscribers ORDER BY email")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            left,
            vec![("a@example.org".into(),), ("b@example.org".into(),)]
        );
        let (consents,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM consents")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(consents, 2);
        assert_eq!(store.purge_pending(week, at(9_000_000)).await.unwrap(), 0);
        assert_eq!(store.bounce_stats().await.unwrap().purged_signups, 1);
    }
}

#[tokio::test]
async fn an_unsubscribe_report_unsubscribes_and_an_erased_reader_matches_nothing() {
    let (policy, addresses) = keys();
    for (backend, t) in stores().await {
        let store = &t.store;
        seed_planned(store).await;
        send_all_due(store, 10, 2_000).await;
        let (a_row, _) = row_of(store, "a@example.org").await;
        let mut leave = report("mg-unsub", BounceKind::Unsubscribe, None, 4_000);
        leave.source = BounceSource::Mailgun;
        leave.verp_token = Some(verp_address(&addresses, a_row));
        assert_eq!(
            store.record_bounce(&leave, &policy).await.unwrap(),
            Recorded::Applied {
                delivery: a_row,
                suppressed: false
            },
            "{backend:?}"
        );
        assert_eq!(state_of(store, "a@example.org").await, "unsubscribed");
        assert!(
            store
                .suppression_of(&email("a@example.org"))
                .await
                .unwrap()
                .is_none()
        );
        // An erased reader's row: nothing to act on, nothing kept.
        let (b_row, _) = row_of(store, "b@example.org").await;
        assert!(
            store
                .remove_subscriber(&email("b@example.org"), at(4_100))
                .await
                .unwrap()
        );
        let hard = report(
            "dsn-b",
            BounceKind::Hard,
            Some(verp_address(&addresses, b_row)),
            4_200,
        );
        assert_eq!(
            store.record_bounce(&hard, &policy).await.unwrap(),
            Recorded::Unmatched
        );
        let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM bounce_events")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(events, 1);
    }
}
