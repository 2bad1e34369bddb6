//! The cases where a reader could get an article twice without the content groups'
//! exclusions, rows planned before content groups existed, and manual sends.

use std::collections::HashMap;

use super::*;
use crate::domain::FeedItem;
use crate::domain::{ArticleId, Email, RegionSlug, SubscriberId};
use crate::store::NewSubscriber;
use crate::store::testing::{at, seed, send_all_due, stores, stores_migrated_to};

const DAY: i64 = 86_400;
/// Monday 2026-11-30 07:00 UTC: the daily and the weekly slot fall on it.
const MONDAY: i64 = 1_796_022_000;

async fn reader(store: &Store, email: &str, subs: &[(&str, Cadence)]) -> SubscriberId {
    store
        .add_subscriber(
            &NewSubscriber {
                email: Email::parse(email).unwrap(),
                regions: subs.iter().map(|(r, c)| (r.parse().unwrap(), *c)).collect(),
                timezone: "UTC".parse().unwrap(),
                confirmed: true,
            },
            at(0),
        )
        .await
        .unwrap();
    let list = store.list_subscribers().await.unwrap();
    list.iter().find(|r| r.email == email).unwrap().id
}

/// Stores the story `key` in `region` at `at` (the same link in several regions is one
/// article); returns its id.
async fn story(store: &Store, region: &str, key: &str, when: i64) -> ArticleId {
    let slug: RegionSlug = region.parse().unwrap();
    let feed = store
        .feed_id(&slug, &format!("file://{region}.xml"))
        .await
        .unwrap();
    let link = format!("https://news.test.example/{key}");
    store
        .record_feed_items(
            feed,
            &slug,
            &[FeedItem {
                guid: format!("{region}-{key}"),
                link: link.clone(),
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
    store.article_id_by_link(&link).await.unwrap().unwrap()
}

async fn plan_slot(store: &Store, cadence: Cadence, slot_at: i64, now: i64) -> PlanSummary {
    let key = format!("{cadence}:UTC:{slot_at}");
    store
        .plan_slot_digest(
            &SlotPlan {
                slot_key: &key,
                cadence,
                zone: Timezone::UTC,
                slot_at: at(slot_at),
                period: cadence.period(),
                now: at(now),
                expires_at: at(now + DAY),
            },
            false,
        )
        .await
        .unwrap()
}

/// Sends everything due at `at`; returns each reader's articles, in email order.
async fn deliver(store: &Store, when: i64) -> HashMap<SubscriberId, Vec<Vec<ArticleId>>> {
    let claimed = send_all_due(store, 1_000, when).await;
    let mut out: HashMap<SubscriberId, Vec<Vec<ArticleId>>> = HashMap::new();
    for d in claimed {
        out.entry(d.subscriber_id)
            .or_default()
            .push(d.articles.iter().map(|a| a.article_id).collect());
    }
    out
}

#[tokio::test]
async fn an_article_in_regions_followed_at_two_cadences_reaches_a_reader_once() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let both = reader(
            store,
            "both@example.org",
            &[("north", Cadence::Daily), ("south", Cadence::Weekly)],
        )
        .await;
        let weekly = reader(store, "weekly@example.org", &[("south", Cadence::Weekly)]).await;
        let shared = story(store, "north", "shared", MONDAY - 3_600).await;
        assert_eq!(
            story(store, "south", "shared", MONDAY - 3_000).await,
            shared
        );
        let only_south = story(store, "south", "south", MONDAY - 2_000).await;

        let daily = plan_slot(store, Cadence::Daily, MONDAY, MONDAY + 30).await;
        assert_eq!(
            (daily.deliveries, daily.content_rows),
            (1, 1),
            "{backend:?}"
        );
        let week = plan_slot(store, Cadence::Weekly, MONDAY, MONDAY + 40).await;
        // Both weekly readers follow the same region from the same start, but one had
        // the shared story in the daily digest: two contents, three rows in all.
        assert_eq!(week.deliveries, 2, "{backend:?}");
        assert_eq!(week.articles, 3);
        assert_eq!(week.content_rows, 3);

        let got = deliver(store, MONDAY + 60).await;
        let mut mine = got[&both].clone();
        mine.sort();
        assert_eq!(mine, vec![vec![shared], vec![only_south]], "{backend:?}");
        // Newest first within the region.
        assert_eq!(got[&weekly], vec![vec![only_south, shared]], "{backend:?}");
    }
}

#[tokio::test]
async fn an_article_sent_in_a_digest_is_not_sent_again_as_an_alert() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let id = reader(
            store,
            "d@example.org",
            &[("north", Cadence::Daily), ("south", Cadence::Alert)],
        )
        .await;
        let alert_only = reader(store, "a@example.org", &[("south", Cadence::Alert)]).await;
        let article = story(store, "north", "x", MONDAY - 3_600).await;
        plan_slot(store, Cadence::Daily, MONDAY, MONDAY + 30).await;
        assert_eq!(deliver(store, MONDAY + 60).await[&id], vec![vec![article]]);
        // The story reaches the south region later and turns out to be breaking.
        story(store, "south", "x", MONDAY + 600).await;
        store.mark_breaking(article).await.unwrap();
        assert_eq!(store.alert_zones(article).await.unwrap(), ["UTC"]);
        let alert = store
            .plan_alert(&AlertPlan {
                article_id: article,
                zone: Timezone::UTC,
                release_at: at(MONDAY + 700),
                expires_at: at(MONDAY + DAY),
                now: at(MONDAY + 700),
            })
            .await
            .unwrap();
        assert_eq!(
            alert.deliveries, 1,
            "{backend:?}: only the reader who lacks it"
        );
        let got = deliver(store, MONDAY + 800).await;
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), [alert_only]);
        assert!(store.alert_zones(article).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn an_article_stored_after_the_slot_is_not_repeated_the_next_day() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let first = reader(store, "one@example.org", &[("north", Cadence::Daily)]).await;
        let second = reader(store, "two@example.org", &[("north", Cadence::Daily)]).await;
        let before = story(store, "north", "before", MONDAY - 600).await;
        // Stored between the slot and the late plan: in today's digest, and inside
        // tomorrow's window too (it starts at today's slot).
        let late = story(store, "north", "late", MONDAY + 600).await;
        let today = plan_slot(store, Cadence::Daily, MONDAY, MONDAY + 1_200).await;
        assert_eq!(
            (today.deliveries, today.content_rows),
            (2, 2),
            "{backend:?}"
        );
        deliver(store, MONDAY + 1_300).await;
        let next = story(store, "north", "next", MONDAY + 7_200).await;
        let tomorrow = plan_slot(store, Cadence::Daily, MONDAY + DAY, MONDAY + DAY + 30).await;
        // Both readers had the late story: they share one content without it.
        assert_eq!(tomorrow.deliveries, 2, "{backend:?}");
        assert_eq!(tomorrow.content_rows, 1, "{backend:?}");
        let got = deliver(store, MONDAY + DAY + 60).await;
        assert_eq!(got[&first], vec![vec![next]], "{backend:?}");
        assert_eq!(got[&second], vec![vec![next]], "{backend:?}");
        let _ = (before, late);
    }
}

#[tokio::test]
async fn rows_planned_before_content_groups_keep_their_articles() {
    for (backend, t) in stores_migrated_to(6).await {
        let store = &t.store;
        let id = reader(
            store,
            "old@example.org",
            &[("north", Cadence::Daily), ("south", Cadence::Weekly)],
        )
        .await;
        // Stored as that schema stored them (today's ingest writes newer columns).
        let mut ids = Vec::new();
        for (key, when) in [("older", MONDAY - 7_200), ("newer", MONDAY - 3_600)] {
            let (article,): (ArticleId,) = sqlx::query_as(
                "INSERT INTO articles (link, title, published_at, ingested_at, updated_at)
                 VALUES ($1, $2, $3, $3, $3) RETURNING id",
            )
            .bind(format!("https://news.test.example/{key}"))
            .bind(format!("Story {key}"))
            .bind(when)
            .fetch_one(&store.pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO article_regions (article_id, region_slug, added_at)
                 VALUES ($1, 'north', $2)",
            )
            .bind(article)
            .bind(when)
            .execute(&store.pool)
            .await
            .unwrap();
            ids.push(article);
        }
        let (older, newer) = (ids[0], ids[1]);
        // A digest queued the old way: one placement row per (reader, article).
        let (edition,): (i64,) = sqlx::query_as(
            "INSERT INTO editions (slot_key, kind, cadence, planned_at, slot_at, timezone)
             VALUES ('daily:UTC:old', 'digest', 'daily', $1, $1, 'UTC') RETURNING id",
        )
        .bind(MONDAY)
        .fetch_one(&store.pool)
        .await
        .unwrap();
        let (delivery,): (i64,) = sqlx::query_as(
            "INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority,
                 state, attempts, message_id, next_attempt_at, expires_at, created_at,
                 updated_at, slot_at, window_start)
             VALUES ($1, $2, 'digest', 'daily', 2, 'queued', 0, 'f00d', $3, $4, $3, $3, $3, 0)
             RETURNING id",
        )
        .bind(edition)
        .bind(id)
        .bind(MONDAY)
        .bind(MONDAY + DAY)
        .fetch_one(&store.pool)
        .await
        .unwrap();
        for article in [older, newer] {
            sqlx::query(
                "INSERT INTO delivery_articles (delivery_id, subscriber_id, article_id,
                     region_slug) VALUES ($1, $2, $3, 'north')",
            )
            .bind(delivery)
            .bind(id)
            .bind(article)
            .execute(&store.pool)
            .await
            .unwrap();
        }
        store.migrate().await.unwrap();

        assert_eq!(
            deliver(store, MONDAY + 60).await[&id],
            vec![vec![newer, older]],
            "{backend:?}: the queued row still carries its articles"
        );
        // The older story reaches a region the reader follows weekly: already had.
        story(store, "south", "older", MONDAY + 600).await;
        let fresh = story(store, "south", "fresh", MONDAY + 700).await;
        let week = plan_slot(store, Cadence::Weekly, MONDAY + 7 * DAY, MONDAY + 7 * DAY).await;
        assert_eq!(week.deliveries, 1, "{backend:?}");
        assert_eq!(
            deliver(store, MONDAY + 7 * DAY + 60).await[&id],
            vec![vec![fresh]],
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn planning_is_set_based_and_never_repeats_an_article() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let town = seed(store).await;
        let plan = store
            .plan_region_digest(
                "manual:1",
                &town,
                Cadence::Daily,
                at(0),
                at(2_000),
                at(9_000),
                false,
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            plan.deliveries, 2,
            "pending readers get nothing ({backend:?})"
        );
        assert_eq!(plan.articles, 6);
        // The same slot again, and a new slot: nothing new for anyone.
        let again = store
            .plan_region_digest(
                "manual:1",
                &town,
                Cadence::Daily,
                at(0),
                at(2_001),
                at(9_000),
                false,
                None,
            )
            .await
            .unwrap();
        assert_eq!(again.deliveries, 0);
        let other = store
            .plan_region_digest(
                "manual:2",
                &town,
                Cadence::Daily,
                at(0),
                at(2_002),
                at(9_000),
                false,
                None,
            )
            .await
            .unwrap();
        assert_eq!(other.deliveries, 0, "{backend:?}");
        assert_eq!(store.due_count(at(2_003)).await.unwrap(), 2);
    }
}

#[tokio::test]
async fn a_reader_whose_stored_zone_cannot_be_read_is_left_out_not_everyone() {
    for (backend, t) in stores().await {
        let store = &t.store;
        reader(store, "good@example.org", &[("town", Cadence::Daily)]).await;
        let bad = reader(store, "bad@example.org", &[("town", Cadence::Daily)]).await;
        sqlx::query("UPDATE subscribers SET timezone = 'Mars/Olympus' WHERE id = $1")
            .bind(bad)
            .execute(&store.pool)
            .await
            .unwrap();
        let zones = store.cadence_zones(Cadence::Daily).await.unwrap();
        assert_eq!(
            zones,
            vec!["UTC".parse::<Timezone>().unwrap()],
            "{backend:?}: the readable zone is still planned"
        );
    }
}

/// Syncs a state and a town below it, the town's stories in feed order.
async fn state_and_town(store: &Store) {
    use crate::config::{Region, StoryOrder};
    let region = |slug: &str, parent: Option<&str>, order| Region {
        slug: slug.parse().unwrap(),
        name: slug.to_string(),
        parent: parent.map(|p| p.parse().unwrap()),
        timezone: Timezone::UTC,
        feeds: Vec::new(),
        sources: Vec::new(),
        intervals: Vec::new(),
        url: None,
        order,
    };
    store
        .sync_regions(&[
            region("state", None, StoryOrder::Newest),
            region("town", Some("state"), StoryOrder::Feed),
            region("elsewhere", None, StoryOrder::Newest),
        ])
        .await
        .unwrap();
}

fn booking(region: &str, from: &str, to: &str, label: &str) -> crate::domain::NewSponsor {
    crate::domain::NewSponsor::parse(crate::domain::SponsorFields {
        regions: vec![region.into()],
        from: from.into(),
        to: to.into(),
        label: label.into(),
        headline: "Headline".into(),
        body: String::new(),
        link: "https://sponsor.example/".into(),
        image: None,
        alt: None,
    })
    .unwrap()
}

#[tokio::test]
async fn the_town_booking_beats_the_state_one_and_the_earlier_booking_wins() {
    for (backend, t) in stores().await {
        let store = &t.store;
        state_and_town(store).await;
        let town = reader(store, "town@example.org", &[("town", Cadence::Daily)]).await;
        let away = reader(store, "away@example.org", &[("elsewhere", Cadence::Daily)]).await;
        // 2026-11-30 is MONDAY's date in UTC.
        let state = store
            .add_sponsor(
                &booking("state", "2026-11-29", "2026-12-05", "State"),
                at(0),
            )
            .await
            .unwrap();
        store
            .add_sponsor(&booking("town", "2026-11-30", "2026-11-30", "Town"), at(1))
            .await
            .unwrap();
        store
            .add_sponsor(
                &booking("state", "2026-11-29", "2026-12-05", "Later"),
                at(2),
            )
            .await
            .unwrap();
        let mut labels = Vec::new();
        for day in 0..2 {
            let slot = MONDAY + day * DAY;
            story(store, "town", &format!("t{day}"), slot - 60).await;
            story(store, "elsewhere", &format!("e{day}"), slot - 60).await;
            plan_slot(store, Cadence::Daily, slot, slot + 30).await;
            let claimed = send_all_due(store, 100, slot + 60).await;
            assert_eq!(claimed.len(), 2, "{backend:?}");
            for d in claimed {
                let label = d.sponsor.as_ref().map(|s| s.label.clone());
                if d.subscriber_id == away {
                    assert_eq!(label, None, "{backend:?}: another state's reader");
                } else {
                    assert_eq!(d.subscriber_id, town);
                    labels.push(label.unwrap());
                }
            }
        }
        assert_eq!(labels, ["Town", "State"], "{backend:?}");
        // A manual send of the town on the 30th (in its readers' zone) carries the town's
        // booking too: manual sends choose per zone, on each zone's own date.
        let slug: RegionSlug = "town".parse().unwrap();
        story(store, "town", "manual", MONDAY + 100).await;
        store
            .plan_region_digest(
                "manual:town",
                &slug,
                Cadence::Daily,
                at(MONDAY),
                at(MONDAY + 200),
                at(MONDAY + DAY),
                false,
                None,
            )
            .await
            .unwrap();
        let claimed = send_all_due(store, 100, MONDAY + 300).await;
        assert_eq!(claimed.len(), 1, "{backend:?}");
        assert_eq!(
            claimed[0].sponsor.as_ref().map(|s| s.label.as_str()),
            Some("Town"),
            "{backend:?}"
        );
        let report = store.sponsor_report().await.unwrap();
        let sent: Vec<(String, i64)> = report.into_iter().map(|r| (r.label, r.sent)).collect();
        assert_eq!(
            sent,
            [("State".into(), 1), ("Town".into(), 2), ("Later".into(), 0)],
            "{backend:?}"
        );
        assert!(store.remove_sponsor(state).await.unwrap());
        assert!(!store.remove_sponsor(state).await.unwrap());
    }
}

#[tokio::test]
async fn a_region_ordered_by_feed_keeps_the_feeds_order_breaking_first() {
    for (backend, t) in stores().await {
        let store = &t.store;
        state_and_town(store).await;
        let town = reader(store, "town@example.org", &[("town", Cadence::Daily)]).await;
        let slug: RegionSlug = "town".parse().unwrap();
        let feed = store.feed_id(&slug, "file://town.xml").await.unwrap();
        // The feed lists an old story first and a breaking one last.
        let item = |key: &str, published: i64, breaking: bool| FeedItem {
            guid: key.into(),
            link: format!("https://news.test.example/{key}"),
            title: key.into(),
            summary: String::new(),
            category: String::new(),
            published_at: Some(published),
            breaking,
        };
        store
            .record_feed_items(
                feed,
                &slug,
                &[
                    item("old", MONDAY - 5 * 3_600, false),
                    item("new", MONDAY - 3_600, false),
                    item("mid", MONDAY - 3 * 3_600, false),
                    item("alarm", MONDAY - 7 * 3_600, true),
                ],
                at(MONDAY - 60),
            )
            .await
            .unwrap();
        plan_slot(store, Cadence::Daily, MONDAY, MONDAY + 30).await;
        let claimed = send_all_due(store, 100, MONDAY + 60).await;
        let d = claimed.iter().find(|d| d.subscriber_id == town).unwrap();
        let titles: Vec<&str> = d.articles.iter().map(|a| a.title.as_str()).collect();
        assert_eq!(titles, ["alarm", "old", "new", "mid"], "{backend:?}");
    }
}

/// The slot of [`plan_slot`]'s key, planned at `now`.
fn daily_slot(key: &str, slot_at: i64, now: i64) -> SlotPlan<'_> {
    SlotPlan {
        slot_key: key,
        cadence: Cadence::Daily,
        zone: Timezone::UTC,
        slot_at: at(slot_at),
        period: Cadence::Daily.period(),
        now: at(now),
        expires_at: at(now + DAY),
    }
}

/// Readers `r0`… following `north` (even) or `south` (odd) daily, and one story in each
/// region the hour before [`MONDAY`]; returns the readers and the two stories.
async fn two_regions(store: &Store, readers: usize) -> (Vec<SubscriberId>, ArticleId, ArticleId) {
    let mut ids = Vec::new();
    for i in 0..readers {
        let region = if i % 2 == 0 { "north" } else { "south" };
        ids.push(
            reader(
                store,
                &format!("r{i}@example.org"),
                &[(region, Cadence::Daily)],
            )
            .await,
        );
    }
    let north = story(store, "north", "n", MONDAY - 3_600).await;
    let south = story(store, "south", "s", MONDAY - 3_000).await;
    (ids, north, south)
}

/// A planner killed once its first chunk has committed leaves the edition's cursor
/// there: the chunk's rows go out at once, and the next planner plans the rest from the
/// cursor with the parameters the first one stored, so every reader gets one email with
/// what a single plan would have given them.
#[tokio::test]
async fn a_slot_left_between_two_chunks_is_finished_from_its_cursor_and_nobody_gets_two() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let (readers, north, south) = two_regions(store, 7).await;
        let key = format!("daily:UTC:{MONDAY}");
        let slot = daily_slot(&key, MONDAY, MONDAY + 30);
        let (tx, first, done) = store.begin_slot(&slot, 3).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        // The process dies here.
        assert!(!done, "{backend:?}");
        assert_eq!(
            (first.deliveries, first.content_rows),
            (3, 2),
            "{backend:?}"
        );
        let mut received = deliver(store, MONDAY + 31).await;
        assert_eq!(
            received.len(),
            3,
            "{backend:?}: the first chunk goes out at once"
        );
        // The slot is not planned again from the start, by this key or any other pass.
        assert_eq!(
            plan_slot(store, Cadence::Daily, MONDAY, MONDAY + 40).await,
            PlanSummary::default(),
            "{backend:?}"
        );
        let unfinished = store.unfinished_slots(at(MONDAY - DAY)).await.unwrap();
        assert_eq!(unfinished.len(), 1, "{backend:?}");
        assert_eq!(
            (
                unfinished[0].cadence,
                unfinished[0].zone,
                unfinished[0].slot_at
            ),
            (Cadence::Daily, Timezone::UTC, at(MONDAY))
        );
        // Stored after the slot was planned: the rest of the slot leaves it out too.
        story(store, "north", "late", MONDAY + 60).await;
        let rest = store.finish_slot(unfinished[0].edition_id).await.unwrap();
        assert_eq!(rest.deliveries, 4, "{backend:?}");
        assert_eq!(
            rest.content_rows, 0,
            "{backend:?}: the later chunks share the first chunk's contents"
        );
        assert!(store.unfinished_slots(at(0)).await.unwrap().is_empty());
        assert_eq!(
            store
                .finish_slot(unfinished[0].edition_id)
                .await
                .unwrap()
                .deliveries,
            0,
            "{backend:?}: a finished slot plans nothing more"
        );
        for (id, emails) in deliver(store, MONDAY + 120).await {
            received.entry(id).or_default().extend(emails);
        }
        for (i, id) in readers.iter().enumerate() {
            let story = if i % 2 == 0 { north } else { south };
            assert_eq!(received[id], vec![vec![story]], "{backend:?}: reader {i}");
        }
    }
}

/// Processes that find the same unfinished slot at once (several daemons, a restarted
/// one and the one that began it) take turns by chunk: each reader is planned once.
#[tokio::test]
async fn planners_finishing_one_slot_at_once_plan_each_reader_once() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let (readers, north, south) = two_regions(store, 30).await;
        let key = format!("daily:UTC:{MONDAY}");
        let slot = daily_slot(&key, MONDAY, MONDAY + 30);
        let (tx, first, _) = store.begin_slot(&slot, 2).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        let edition = first.edition_id.unwrap();
        let (a, b, c, d) = tokio::join!(
            store.finish_slot(edition),
            store.finish_slot(edition),
            store.plan_slot_digest(&slot, false),
            store.finish_slot(edition),
        );
        let planned = [&first, &a.unwrap(), &b.unwrap(), &c.unwrap(), &d.unwrap()];
        assert_eq!(
            planned.iter().map(|p| p.deliveries).sum::<u64>(),
            30,
            "{backend:?}: {planned:?}"
        );
        let received = deliver(store, MONDAY + 60).await;
        assert_eq!(received.len(), 30, "{backend:?}");
        for (i, id) in readers.iter().enumerate() {
            let story = if i % 2 == 0 { north } else { south };
            assert_eq!(received[id], vec![vec![story]], "{backend:?}: reader {i}");
        }
    }
}
