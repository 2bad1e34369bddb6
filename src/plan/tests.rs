//! Planner tests with an injected clock: no sleeping, every instant given explicitly.
//! They run on SQLite, and on PostgreSQL when `HERALD_TEST_POSTGRES_URL` is set. One
//! file over 700 lines because every case shares the one schedule configuration and
//! the reader, article and delivery helpers above, and each reads as one scenario.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Duration, Timelike, Utc};

use super::*;
use crate::domain::FeedItem;
use crate::domain::{ArticleId, Email, SubscriberId, SubscriberState};
use crate::store::NewSubscriber;
use crate::store::testing::{at, send_all_due, stores};

const ZONES: [&str; 5] = [
    "America/Los_Angeles",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
];

fn config(extra: &str) -> PlanConfig {
    let config = crate::config::Config::from_toml(
        Path::new("config/herald.toml"),
        &format!(
            r#"
            [mail]
            from = "Test <news@test.example>"
            postal_address = "1 Test St"
            [schedule]
            daily = "0 7 * * *"
            weekly = "0 7 * * 1"
            max_lateness = "6h"
            [alerts]
            quiet_hours = "22:00-07:00"
            max_age = "6h"
            {extra}
            [[regions]]
            slug = "north"
            name = "North"
            [[regions]]
            slug = "south"
            name = "South"
            [[regions]]
            slug = "east"
            name = "East"
            "#
        ),
        std::iter::empty(),
    )
    .unwrap();
    PlanConfig {
        schedule: config.schedule,
        alerts: config.alerts,
        expiry: config.deliver.expiry,
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn reader(store: &Store, email: &str, zone: &str, subs: &[(&str, Cadence)]) -> SubscriberId {
    store
        .add_subscriber(
            &NewSubscriber {
                email: Email::parse(email).unwrap(),
                regions: subs.iter().map(|(r, c)| (r.parse().unwrap(), *c)).collect(),
                timezone: zone.parse().unwrap(),
                confirmed: true,
            },
            at(0),
        )
        .await
        .unwrap();
    let list = store.list_subscribers().await.unwrap();
    list.iter().find(|r| r.email == email).unwrap().id
}

/// Stores one article in `region` at `at`; returns its id.
async fn article(store: &Store, region: &str, key: &str, when: i64) -> ArticleId {
    let slug: RegionSlug = region.parse().unwrap();
    let feed = store
        .feed_id(&slug, &format!("file://{region}.xml"))
        .await
        .unwrap();
    store
        .record_feed_items(
            feed,
            &slug,
            &[FeedItem {
                guid: key.into(),
                link: format!("https://news.test.example/{key}"),
                title: format!("Story {key}"),
                summary: String::new(),
                category: String::new(),
                published_at: Some(when),
                breaking: false,
            }],
            at(when),
        )
        .await
        .unwrap();
    store
        .article_id_by_link(&format!("https://news.test.example/{key}"))
        .await
        .unwrap()
        .unwrap()
}

/// Claims everything due at `at` and records it sent; returns (subscriber, slot_at, articles).
async fn deliver_all(store: &Store, when: i64) -> Vec<(SubscriberId, Vec<ArticleId>)> {
    store.expire_overdue(at(when)).await.unwrap();
    let claimed = send_all_due(store, 10_000, when).await;
    claimed
        .into_iter()
        .map(|d| {
            (
                d.subscriber_id,
                d.articles.iter().map(|a| a.article_id).collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn daily_lands_at_seven_local_in_five_zones_across_both_dst_changes() {
    let config = config("");
    for (backend, t) in stores().await {
        let store = &t.store;
        let mut ids = HashMap::new();
        for (i, zone) in ZONES.iter().enumerate() {
            let id = reader(
                store,
                &format!("r{i}@example.org"),
                zone,
                &[("north", Cadence::Daily)],
            )
            .await;
            ids.insert(id, *zone);
        }
        // Two windows: the northern spring change (US 8 Mar, EU 29 Mar, Lord Howe back
        // 5 Apr) and the autumn one (Lord Howe forward 4 Oct, EU 25 Oct, US 1 Nov).
        for (from, days) in [("2026-03-06T00:00:00Z", 32), ("2026-10-02T00:00:00Z", 32)] {
            let start = utc(from);
            // The daemon was running before the window: set the scheduler's mark there.
            plan_due(&config, store, start, false).await.unwrap();
            let mut planned_hours = HashMap::<i64, Vec<DateTime<Utc>>>::new();
            for day in 0..days {
                let day_start = start + Duration::days(day);
                article(
                    store,
                    "north",
                    &format!("{from}-{day}"),
                    day_start.timestamp(),
                )
                .await;
                // The daemon ticks; here every 30 minutes of the day.
                for tick in 1..=48 {
                    let at = day_start + Duration::minutes(30 * tick);
                    let report = plan_due(&config, store, at, false).await.unwrap();
                    for (_, zone, slot, summary) in report.slots {
                        if summary.deliveries > 0 {
                            planned_hours
                                .entry(slot.timestamp())
                                .or_default()
                                .push(slot);
                            let local = slot.with_timezone(&zone.tz());
                            assert_eq!(
                                (local.hour(), local.minute()),
                                (7, 0),
                                "{backend:?} {zone} {local}"
                            );
                            // Planned within one tick of the slot, never late.
                            assert!(at - slot < Duration::minutes(30) + Duration::seconds(1));
                        }
                    }
                }
                deliver_all(store, (day_start + Duration::days(1)).timestamp()).await;
            }
        }
        // Every reader got exactly one digest per local day.
        let rows = store.delivery_slots().await.unwrap();
        for (id, zone) in &ids {
            let tz: chrono_tz::Tz = zone.parse().unwrap();
            let mut dates: Vec<_> = rows
                .iter()
                .filter(|(s, _)| s == id)
                .map(|(_, slot)| slot.to_utc().with_timezone(&tz).date_naive())
                .collect();
            let total = dates.len();
            dates.dedup();
            assert_eq!(
                dates.len(),
                total,
                "{backend:?} {zone}: one digest per local day"
            );
            assert!(
                total >= 60,
                "{backend:?} {zone}: {total} digests over 64 days"
            );
        }
    }
}

#[tokio::test]
async fn weekly_lands_on_monday_at_seven_local() {
    use chrono::Datelike;
    let config = config("");
    for (_backend, t) in stores().await {
        let store = &t.store;
        reader(
            store,
            "w@example.org",
            "Asia/Kolkata",
            &[("south", Cadence::Weekly)],
        )
        .await;
        let start = utc("2026-11-01T00:00:00Z");
        for hour in 0..(24 * 21) {
            let at = start + Duration::hours(hour);
            if hour % 24 == 0 {
                article(store, "south", &format!("w{hour}"), at.timestamp()).await;
            }
            plan_due(&config, store, at, false).await.unwrap();
        }
        let slots = store.delivery_slots().await.unwrap();
        assert_eq!(slots.len(), 3, "three Mondays in three weeks");
        for (_, slot) in slots {
            let local = slot.to_utc().with_timezone(&chrono_tz::Asia::Kolkata);
            assert_eq!(local.weekday(), chrono::Weekday::Mon);
            assert_eq!((local.hour(), local.minute()), (7, 0));
        }
    }
}

#[tokio::test]
async fn planning_the_same_instant_twice_adds_nothing() {
    let config = config("");
    for (backend, t) in stores().await {
        let store = &t.store;
        reader(
            store,
            "a@example.org",
            "Europe/Berlin",
            &[("north", Cadence::Daily)],
        )
        .await;
        article(store, "north", "x", utc("2026-11-28T01:00:00Z").timestamp()).await;
        let at = utc("2026-11-28T06:00:30Z"); // 07:00:30 Berlin
        let first = plan_due(&config, store, at, false).await.unwrap();
        assert_eq!(first.deliveries(), 1, "{backend:?}");
        // Another pass at the same instant, and a second daemon that never ran before.
        let again = plan_due(&config, store, at, false).await.unwrap();
        assert_eq!(again.deliveries(), 0);
        store.reset_planner_mark().await.unwrap();
        let other_daemon = plan_due(&config, store, at, false).await.unwrap();
        assert_eq!(
            other_daemon.deliveries(),
            0,
            "{backend:?}: the slot's unique key holds"
        );
        assert_eq!(store.delivery_slots().await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_three_hour_outage_plans_each_missed_slot_once() {
    let config = config("");
    for (backend, t) in stores().await {
        let store = &t.store;
        // In late November 07:00 is 06:00 UTC in Berlin, 07:00 UTC in London and
        // 15:00 UTC in Los Angeles: only the first two fall inside the outage.
        reader(
            store,
            "berlin@example.org",
            "Europe/Berlin",
            &[("north", Cadence::Daily)],
        )
        .await;
        reader(
            store,
            "london@example.org",
            "Europe/London",
            &[("north", Cadence::Daily)],
        )
        .await;
        reader(
            store,
            "la@example.org",
            "America/Los_Angeles",
            &[("north", Cadence::Daily)],
        )
        .await;
        article(store, "north", "y", utc("2026-11-28T00:00:00Z").timestamp()).await;
        plan_due(&config, store, utc("2026-11-28T05:00:00Z"), false)
            .await
            .unwrap();
        // Down from 05:00 to 08:00 UTC: Berlin (06:00 UTC) and London (07:00 UTC) missed.
        let back = plan_due(&config, store, utc("2026-11-28T08:00:00Z"), false)
            .await
            .unwrap();
        let planned: Vec<&str> = back
            .slots
            .iter()
            .filter(|s| s.3.deliveries > 0)
            .map(|s| s.1.name())
            .collect();
        assert_eq!(planned, ["Europe/Berlin", "Europe/London"], "{backend:?}");
        assert!(back.skipped.is_empty());
        let again = plan_due(&config, store, utc("2026-11-28T08:00:00Z"), false)
            .await
            .unwrap();
        assert_eq!(again.deliveries(), 0);
        assert_eq!(store.delivery_slots().await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn a_three_day_outage_sends_nothing_stale() {
    let config = config("");
    for (backend, t) in stores().await {
        let store = &t.store;
        for (i, zone) in ZONES.iter().enumerate() {
            reader(
                store,
                &format!("z{i}@example.org"),
                zone,
                &[("north", Cadence::Daily)],
            )
            .await;
        }
        article(
            store,
            "north",
            "before",
            utc("2026-11-20T00:00:00Z").timestamp(),
        )
        .await;
        plan_due(&config, store, utc("2026-11-20T00:10:00Z"), false)
            .await
            .unwrap();
        let before: HashSet<_> = store.delivery_slots().await.unwrap().into_iter().collect();
        // Back three days later at 12:00 UTC.
        let at = utc("2026-11-23T12:00:00Z");
        let back = plan_due(&config, store, at, false).await.unwrap();
        assert!(
            back.skipped.len() >= 10,
            "{backend:?}: {} skipped",
            back.skipped.len()
        );
        for (_, _, slot, summary) in &back.slots {
            assert!(
                at - *slot <= Duration::hours(6),
                "a stale slot was planned: {slot}"
            );
            let _ = summary;
        }
        for row in store.delivery_slots().await.unwrap() {
            if !before.contains(&row) {
                assert!(
                    at - row.1.to_utc() <= Duration::hours(6),
                    "stale digest queued for {}",
                    row.1.to_utc()
                );
            }
        }
        assert_eq!(
            store.skipped_slot_count().await.unwrap() as usize,
            back.skipped.len()
        );
        // Skips are recorded once.
        let again = plan_due(&config, store, at, false).await.unwrap();
        assert!(again.skipped.is_empty());
    }
}

#[tokio::test]
async fn quiet_hours_hold_an_alert_until_they_end_and_old_alerts_expire() {
    let config = config("");
    for (backend, t) in stores().await {
        let store = &t.store;
        let berlin = reader(
            store,
            "night@example.org",
            "Europe/Berlin",
            &[("east", Cadence::Alert)],
        )
        .await;
        let kolkata = reader(
            store,
            "day@example.org",
            "Asia/Kolkata",
            &[("east", Cadence::Alert)],
        )
        .await;
        // 23:30 in Berlin, 04:00 in Kolkata... both quiet; use 22:30 UTC = 04:00 IST.
        let at = utc("2026-11-27T22:30:00Z");
        let id = article(store, "east", "flood", at.timestamp()).await;
        store.mark_breaking(id).await.unwrap();
        let report = plan_due(&config, store, at, false).await.unwrap();
        assert_eq!(report.alerts.len(), 2, "{backend:?}");
        // Nothing goes out during quiet hours.
        assert!(deliver_all(store, at.timestamp() + 60).await.is_empty());
        // Kolkata's quiet hours end at 07:00 IST = 01:30 UTC; the alert is 3 h old then.
        let sent = deliver_all(store, utc("2026-11-28T01:30:00Z").timestamp()).await;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, kolkata);
        assert_eq!(sent[0].1, vec![id]);
        // Berlin's end at 07:00 CET = 06:00 UTC, 7.5 h after the article: past max_age (6 h).
        let late = deliver_all(store, utc("2026-11-28T06:00:00Z").timestamp()).await;
        assert!(
            late.is_empty(),
            "{backend:?}: an alert older than max_age is not sent"
        );
        let ledger = store.delivery_ledger().await.unwrap();
        let states: HashSet<_> = ledger
            .iter()
            .map(|r| (r.email.clone().unwrap().to_string(), r.state))
            .collect();
        assert!(states.contains(&(
            "night@example.org".to_string(),
            crate::domain::DeliveryState::Expired
        )));
        assert!(states.contains(&(
            "day@example.org".to_string(),
            crate::domain::DeliveryState::Sent
        )));
        let _ = berlin;
    }
}

#[tokio::test]
async fn an_article_sent_as_an_alert_is_left_out_of_the_digest() {
    let mut config = config("");
    config.alerts.quiet_hours = None;
    for (backend, t) in stores().await {
        let store = &t.store;
        reader(
            store,
            "both@example.org",
            "UTC",
            &[("north", Cadence::Daily), ("south", Cadence::Alert)],
        )
        .await;
        // The same story lands in both regions (one article, two regions) and is breaking.
        let at = utc("2026-11-28T03:00:00Z");
        let id = article(store, "south", "shared", at.timestamp()).await;
        let north_feed = store
            .feed_id(&"north".parse().unwrap(), "file://north.xml")
            .await
            .unwrap();
        store
            .record_feed_items(
                north_feed,
                &"north".parse().unwrap(),
                &[FeedItem {
                    guid: "n-shared".into(),
                    link: "https://news.test.example/shared".into(),
                    title: "Story shared".into(),
                    summary: String::new(),
                    category: String::new(),
                    published_at: None,
                    breaking: false,
                }],
                at.into(),
            )
            .await
            .unwrap();
        let other = article(store, "north", "other", at.timestamp()).await;
        store.mark_breaking(id).await.unwrap();
        plan_due(&config, store, at, false).await.unwrap();
        let alerts = deliver_all(store, at.timestamp()).await;
        assert_eq!(alerts.len(), 1);
        plan_due(&config, store, utc("2026-11-28T07:00:00Z"), false)
            .await
            .unwrap();
        let digests = deliver_all(store, utc("2026-11-28T07:00:00Z").timestamp()).await;
        assert_eq!(digests.len(), 1, "{backend:?}");
        assert_eq!(
            digests[0].1,
            vec![other],
            "the alerted story is not repeated in the digest"
        );
    }
}

#[tokio::test]
async fn a_digest_whose_only_article_went_out_as_an_alert_is_not_created() {
    let mut config = config("");
    config.alerts.quiet_hours = None;
    for (backend, t) in stores().await {
        let store = &t.store;
        reader(
            store,
            "both@example.org",
            "UTC",
            &[("north", Cadence::Daily), ("south", Cadence::Alert)],
        )
        .await;
        let at = utc("2026-11-28T03:00:00Z");
        let id = article(store, "south", "only", at.timestamp()).await;
        let north: RegionSlug = "north".parse().unwrap();
        let feed = store.feed_id(&north, "file://north.xml").await.unwrap();
        store
            .record_feed_items(
                feed,
                &north,
                &[FeedItem {
                    guid: "n-only".into(),
                    link: "https://news.test.example/only".into(),
                    title: "Story only".into(),
                    summary: String::new(),
                    category: String::new(),
                    published_at: None,
                    breaking: false,
                }],
                at.into(),
            )
            .await
            .unwrap();
        store.mark_breaking(id).await.unwrap();
        plan_due(&config, store, at, false).await.unwrap();
        assert_eq!(deliver_all(store, at.timestamp()).await.len(), 1);
        let report = plan_due(&config, store, utc("2026-11-28T07:00:00Z"), false)
            .await
            .unwrap();
        assert_eq!(report.deliveries(), 0, "{backend:?}");
        assert!(
            store.delivery_slots().await.unwrap().is_empty(),
            "{backend:?}: no empty digest row is left behind"
        );
    }
}

#[tokio::test]
async fn planners_racing_on_one_reader_place_each_article_once() {
    for (backend, t) in stores().await {
        let store = &t.store;
        // Monday 07:00 in Berlin: the daily and the weekly slot fall on the same instant.
        let slot = utc("2026-11-30T06:00:00Z").timestamp();
        for i in 0..20 {
            reader(
                store,
                &format!("race{i}@example.org"),
                "Europe/Berlin",
                &[("north", Cadence::Daily), ("south", Cadence::Weekly)],
            )
            .await;
        }
        // One story carried by both regions: whichever planner places it second has
        // nothing left for these readers.
        let shared = article(store, "north", "shared", slot - 3_600).await;
        let south: RegionSlug = "south".parse().unwrap();
        let feed = store.feed_id(&south, "file://south.xml").await.unwrap();
        store
            .record_feed_items(
                feed,
                &south,
                &[FeedItem {
                    guid: "s-shared".into(),
                    link: "https://news.test.example/shared".into(),
                    title: "Story shared".into(),
                    summary: String::new(),
                    category: String::new(),
                    published_at: None,
                    breaking: false,
                }],
                at(slot - 3_600),
            )
            .await
            .unwrap();
        let plan = |cadence: Cadence, key: &'static str| SlotPlan {
            slot_key: key,
            cadence,
            zone: "Europe/Berlin".parse().unwrap(),
            slot_at: at(slot),
            period: cadence.period(),
            now: at(slot + 30),
            expires_at: at(slot + 86_400),
        };
        let daily = plan(Cadence::Daily, "daily:race");
        let weekly = plan(Cadence::Weekly, "weekly:race");
        let (a, b, c) = tokio::join!(
            store.plan_slot_digest(&daily, false),
            store.plan_slot_digest(&weekly, false),
            store.plan_slot_digest(&daily, false),
        );
        let planned = [a.unwrap(), b.unwrap(), c.unwrap()];
        let placements: u64 = planned.iter().map(|p| p.articles).sum();
        assert_eq!(
            placements, 20,
            "{backend:?}: the story once for each of 20 readers"
        );
        let mut received: HashMap<SubscriberId, Vec<ArticleId>> = HashMap::new();
        let sent = deliver_all(store, slot + 60).await;
        assert!(
            sent.iter().all(|(_, ids)| !ids.is_empty()),
            "{backend:?}: a digest that lost every story to the other planner is dropped"
        );
        for (reader, ids) in &sent {
            received.entry(*reader).or_default().extend(ids);
        }
        assert_eq!(received.len(), 20);
        for (reader, ids) in received {
            assert_eq!(ids, vec![shared], "{backend:?}: reader {reader}");
        }
        let planned_deliveries: u64 = planned.iter().map(|p| p.deliveries).sum();
        assert_eq!(
            planned_deliveries as usize,
            sent.len(),
            "{backend:?}: every planned digest carries something"
        );
    }
}

/// Random sequences of ingest, breaking news, planning and delivery over simulated
/// days: nobody receives an article twice, and nobody misses an article of a region
/// they follow (for alert readers: a breaking article).
#[tokio::test]
async fn property_no_duplicates_and_no_misses_over_random_sequences() {
    let mut config = config("");
    config.alerts.quiet_hours = None;
    config.alerts.max_age = std::time::Duration::from_secs(48 * 3600);
    let regions = ["north", "south", "east"];
    let cadences = [Cadence::Alert, Cadence::Daily, Cadence::Weekly];
    let seeds: Vec<u64> = if std::env::var("HERALD_TEST_POSTGRES_URL").is_ok() {
        (1..=3).collect()
    } else {
        (1..=6).collect()
    };
    for seed in seeds {
        for (backend, t) in stores().await {
            let store = &t.store;
            let mut rng = fastrand::Rng::with_seed(seed);
            let start = utc("2026-10-20T00:00:00Z");
            // Readers: random zones and random subscriptions.
            let mut follows: HashMap<SubscriberId, Vec<(String, Cadence)>> = HashMap::new();
            for i in 0..12 {
                let zone = ZONES[rng.usize(..ZONES.len())];
                let mut subs = Vec::new();
                for region in regions {
                    if rng.bool() {
                        subs.push((region, cadences[rng.usize(..3)]));
                    }
                }
                if subs.is_empty() {
                    subs.push(("north", Cadence::Daily));
                }
                let id = reader(store, &format!("p{i}@example.org"), zone, &subs).await;
                follows.insert(id, subs.iter().map(|(r, c)| (r.to_string(), *c)).collect());
            }
            let mut articles: Vec<(ArticleId, HashSet<String>, bool)> = Vec::new();
            let mut now = start;
            let mut received: HashMap<SubscriberId, Vec<ArticleId>> = HashMap::new();
            let mut last_delivery = now;
            for step in 0..160 {
                now += Duration::minutes(rng.i64(5..=120));
                // Workers run continuously in the daemon: mail is never left hours unsent.
                if now - last_delivery > Duration::hours(3) {
                    for (reader, ids) in deliver_all(store, now.timestamp()).await {
                        received.entry(reader).or_default().extend(ids);
                    }
                    last_delivery = now;
                }
                match rng.u8(..10) {
                    0..=3 => {
                        // A story in one or two regions; sometimes the same link in both.
                        let key = format!("s{seed}-{step}");
                        let first = regions[rng.usize(..3)];
                        let id = article(store, first, &key, now.timestamp()).await;
                        let mut in_regions: HashSet<String> = [first.to_string()].into();
                        if rng.u8(..4) == 0 {
                            let second = regions[rng.usize(..3)];
                            let slug: RegionSlug = second.parse().unwrap();
                            let feed = store
                                .feed_id(&slug, &format!("file://{second}-b.xml"))
                                .await
                                .unwrap();
                            store
                                .record_feed_items(
                                    feed,
                                    &slug,
                                    &[FeedItem {
                                        guid: format!("{key}-b"),
                                        link: format!("https://news.test.example/{key}"),
                                        title: key.clone(),
                                        summary: String::new(),
                                        category: String::new(),
                                        published_at: None,
                                        breaking: false,
                                    }],
                                    at(now.timestamp()),
                                )
                                .await
                                .unwrap();
                            in_regions.insert(second.to_string());
                        }
                        let breaking = rng.u8(..3) == 0;
                        if breaking {
                            store.mark_breaking(id).await.unwrap();
                        }
                        articles.push((id, in_regions, breaking));
                    }
                    4..=7 => {
                        plan_due(&config, store, now, false).await.unwrap();
                    }
                    _ => {
                        for (reader, ids) in deliver_all(store, now.timestamp()).await {
                            received.entry(reader).or_default().extend(ids);
                        }
                        last_delivery = now;
                    }
                }
            }
            // Run on for eight days with the daemon's rhythm so every cadence comes round.
            for _ in 0..(8 * 24) {
                now += Duration::hours(1);
                plan_due(&config, store, now, false).await.unwrap();
                for (reader, ids) in deliver_all(store, now.timestamp()).await {
                    received.entry(reader).or_default().extend(ids);
                }
            }
            for (reader, subs) in &follows {
                let got = received.get(reader).cloned().unwrap_or_default();
                let unique: HashSet<ArticleId> = got.iter().copied().collect();
                assert_eq!(
                    unique.len(),
                    got.len(),
                    "seed {seed} {backend:?}: reader {reader} got an article twice"
                );
                for (id, in_regions, breaking) in &articles {
                    let wanted = subs.iter().any(|(region, cadence)| {
                        in_regions.contains(region) && (*cadence != Cadence::Alert || *breaking)
                    });
                    if wanted {
                        assert!(
                            unique.contains(id),
                            "seed {seed} {backend:?}: reader {reader} ({subs:?}) missed article {id} in {in_regions:?} (breaking {breaking})"
                        );
                    }
                }
            }
            let states = store.list_subscribers().await.unwrap();
            assert!(states.iter().all(|s| s.state == SubscriberState::Confirmed));
        }
    }
}

/// A process killed between two chunks of a slot's plan leaves the slot unfinished. The
/// next pass of any planner finishes it, even after another daemon's pass has moved the
/// scheduler's mark past the slot; a slot left unfinished for longer than
/// `max_lateness` is given up instead of sent late.
#[tokio::test]
async fn a_slot_whose_planner_died_between_chunks_is_finished_by_the_next_pass() {
    let config = config("");
    for (backend, t) in stores().await {
        let store = &t.store;
        let mut readers = Vec::new();
        for i in 0..5 {
            let email = format!("r{i}@example.org");
            readers
                .push(reader(store, &email, "Europe/Berlin", &[("north", Cadence::Daily)]).await);
        }
        // 07:00 in Berlin on two days.
        let slot = utc("2027-01-13T06:00:00Z");
        let next_day = slot + Duration::days(1);
        article(
            store,
            "north",
            "one",
            (slot - Duration::hours(2)).timestamp(),
        )
        .await;
        let report = plan_due(&config, store, slot - Duration::hours(1), false)
            .await
            .unwrap();
        assert_eq!(report.next_slot, Some(slot), "{backend:?}");
        let begin = |slot: DateTime<Utc>, key: String| async move {
            let plan = SlotPlan {
                slot_key: &key,
                cadence: Cadence::Daily,
                zone: "Europe/Berlin".parse().unwrap(),
                slot_at: Timestamp::from(slot),
                period: Cadence::Daily.period(),
                now: Timestamp::from(slot + Duration::seconds(1)),
                expires_at: Timestamp::from(slot + Duration::days(1)),
            };
            let (tx, first, done) = store.begin_slot(&plan, 2).await.unwrap().unwrap();
            tx.commit().await.unwrap();
            assert!(!done);
            first
        };
        let first = begin(slot, format!("daily:Europe/Berlin:{}", slot.timestamp())).await;
        assert_eq!(first.deliveries, 2, "{backend:?}");
        // The process died; another daemon's pass then moved the mark past the slot.
        store
            .set_planner_last_run(Timestamp::from(slot + Duration::seconds(10)))
            .await
            .unwrap();
        let report = plan_due(&config, store, slot + Duration::seconds(60), false)
            .await
            .unwrap();
        assert!(report.slots.is_empty(), "{backend:?}: {report:?}");
        assert_eq!(report.finished.len(), 1, "{backend:?}");
        assert_eq!(report.finished[0].3.deliveries, 3, "{backend:?}");
        assert_eq!(report.next_slot, Some(next_day), "{backend:?}");
        let sent = deliver_all(store, (slot + Duration::seconds(90)).timestamp()).await;
        let mut got: Vec<SubscriberId> = sent.iter().map(|(id, _)| *id).collect();
        got.sort();
        assert_eq!(got, readers, "{backend:?}: every reader once");

        // The next day's plan dies after its first chunk, and nothing plans again for
        // seven hours: the rest of its readers would get a digest too late.
        article(
            store,
            "north",
            "two",
            (next_day - Duration::hours(2)).timestamp(),
        )
        .await;
        begin(
            next_day,
            format!("daily:Europe/Berlin:{}", next_day.timestamp()),
        )
        .await;
        let report = plan_due(&config, store, next_day + Duration::hours(7), false)
            .await
            .unwrap();
        assert!(report.finished.is_empty(), "{backend:?}: {report:?}");
        assert!(store.unfinished_slots(at(0)).await.unwrap().is_empty());
        let late = deliver_all(store, (next_day + Duration::hours(7)).timestamp()).await;
        assert_eq!(late.len(), 2, "{backend:?}: only the chunk planned in time");
    }
}

/// The daemon's planner sleeps a tick between passes, or less when a slot comes first,
/// waking just after the slot's instant.
#[test]
fn the_planner_wakes_for_a_slot_that_comes_before_its_next_tick() {
    let tick = std::time::Duration::from_secs(15);
    let now = utc("2027-01-13T05:59:57Z");
    let ms = std::time::Duration::from_millis;
    assert_eq!(
        sleep_before_next_pass(tick, Some(utc("2027-01-13T06:00:00Z")), now),
        ms(3_005)
    );
    assert_eq!(
        sleep_before_next_pass(tick, Some(utc("2027-01-13T07:00:00Z")), now),
        tick
    );
    assert_eq!(sleep_before_next_pass(tick, None, now), tick);
    assert_eq!(
        sleep_before_next_pass(tick, Some(utc("2027-01-13T05:59:00Z")), now),
        ms(5)
    );
}
