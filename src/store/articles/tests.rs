//! Feeds and articles on both backends: dedup by GUID and link, edits, breaking news,
//! pushes and poll bookkeeping.

use super::*;
use crate::store::testing::{at, stores};

fn item(guid: &str, link: &str, title: &str) -> FeedItem {
    FeedItem {
        guid: guid.into(),
        link: link.into(),
        title: title.into(),
        summary: String::new(),
        category: String::new(),
        published_at: None,
        breaking: false,
    }
}

#[tokio::test]
async fn two_feeds_storing_one_link_at_the_same_moment_make_one_article() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let state: RegionSlug = "state".parse().unwrap();
        let town: RegionSlug = "town".parse().unwrap();
        let state_feed = store.feed_id(&state, "file://state.xml").await.unwrap();
        let town_feed = store.feed_id(&town, "file://town.xml").await.unwrap();
        // Many shared links, so the two transactions overlap on PostgreSQL.
        let items = |prefix: &str| -> Vec<FeedItem> {
            (0..200)
                .map(|i| {
                    item(
                        &format!("{prefix}-{i}"),
                        &format!("https://news.example/shared/{i}"),
                        "Shared",
                    )
                })
                .collect()
        };
        let (state_items, town_items) = (items("s"), items("t"));
        let (a, b) = tokio::join!(
            store.record_feed_items(state_feed, &state, &state_items, at(100)),
            store.record_feed_items(town_feed, &town, &town_items, at(100)),
        );
        assert_eq!(a.unwrap().new, 200, "{backend:?}");
        assert_eq!(b.unwrap().new, 200, "{backend:?}");
        assert_eq!(store.article_count().await.unwrap(), 200, "{backend:?}");
        assert_eq!(store.region_article_count(&town).await.unwrap(), 200);
    }
}

#[tokio::test]
async fn dedups_by_guid_and_by_link_across_feeds() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let state: RegionSlug = "state".parse().unwrap();
        let town: RegionSlug = "town".parse().unwrap();
        let state_feed = store.feed_id(&state, "file://state.xml").await.unwrap();
        let town_feed = store.feed_id(&town, "file://town.xml").await.unwrap();
        assert_eq!(
            store.feed_id(&state, "file://state.xml").await.unwrap(),
            state_feed
        );

        let shared = item("s-1", "https://news.example/shared", "Shared story");
        let counts = store
            .record_feed_items(
                state_feed,
                &state,
                &[shared.clone(), item("s-2", "https://news.example/b", "B")],
                at(100),
            )
            .await
            .unwrap();
        assert_eq!(
            counts,
            FeedCounts {
                new: 2,
                updated: 0,
                unchanged: 0
            },
            "{backend:?}"
        );

        // The same story under another GUID in the town feed is one article in two regions.
        let again = item("t-9", "https://news.example/shared", "Shared story");
        let counts = store
            .record_feed_items(town_feed, &town, &[again], at(110))
            .await
            .unwrap();
        assert_eq!(counts.new, 1);
        assert_eq!(store.article_count().await.unwrap(), 2, "{backend:?}");
        assert_eq!(store.region_article_count(&town).await.unwrap(), 1);
        assert_eq!(store.region_article_count(&state).await.unwrap(), 2);

        // Polling again changes nothing; an edited title is an update, not a new article.
        let counts = store
            .record_feed_items(state_feed, &state, std::slice::from_ref(&shared), at(120))
            .await
            .unwrap();
        assert_eq!(
            counts,
            FeedCounts {
                new: 0,
                updated: 0,
                unchanged: 1
            }
        );
        let mut edited = shared;
        edited.title = "Shared story (corrected)".into();
        let counts = store
            .record_feed_items(state_feed, &state, &[edited], at(130))
            .await
            .unwrap();
        assert_eq!(
            counts,
            FeedCounts {
                new: 0,
                updated: 1,
                unchanged: 0
            }
        );
        assert_eq!(store.article_count().await.unwrap(), 2);
        let recent = store.recent_articles(&state, at(0), 10).await.unwrap();
        assert!(
            recent.iter().any(|a| a.title == "Shared story (corrected)"),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn feed_errors_are_recorded_without_touching_articles() {
    for (_backend, t) in stores().await {
        let store = &t.store;
        let region: RegionSlug = "state".parse().unwrap();
        let feed = store.feed_id(&region, "file://missing.xml").await.unwrap();
        store
            .record_feed_error(feed, "no such file", at(50), at(110))
            .await
            .unwrap();
        store
            .record_feed_error(feed, "no such file", at(110), at(230))
            .await
            .unwrap();
        let status = store.feed_statuses().await.unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].last_error.as_deref(), Some("no such file"));
        assert_eq!(status[0].last_success_at, None);
        assert_eq!(status[0].next_poll_at, Some(at(230)));
        assert_eq!(status[0].consecutive_failures, 2);
        assert_eq!(store.article_count().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn validators_and_schedule_survive_until_the_next_poll() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let region: RegionSlug = "state".parse().unwrap();
        let url = "https://news.example/feed";
        let fresh = store.feed_poll_state(&region, url).await.unwrap();
        assert_eq!(fresh.next_poll_at, None, "{backend:?}");
        store
            .record_feed_error(fresh.id, "timed out", at(10), at(70))
            .await
            .unwrap();
        store
            .record_feed_polled(
                fresh.id,
                Some("\"v1\""),
                Some("Sat, 21 Nov 2026 08:00:00 GMT"),
                at(100),
                at(1000),
            )
            .await
            .unwrap();
        let state = store.feed_poll_state(&region, url).await.unwrap();
        assert_eq!(
            state,
            FeedPollState {
                id: fresh.id,
                etag: Some("\"v1\"".into()),
                last_modified: Some("Sat, 21 Nov 2026 08:00:00 GMT".into()),
                next_poll_at: Some(at(1000)),
                consecutive_failures: 0,
            },
            "{backend:?}"
        );
        let status = &store.feed_statuses().await.unwrap()[0];
        assert_eq!(status.last_error, None);
        assert_eq!(status.last_success_at, Some(at(100)));
    }
}

#[tokio::test]
async fn breaking_is_stored_escalates_on_edit_and_never_clears() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let region: RegionSlug = "state".parse().unwrap();
        let feed = store.feed_id(&region, "file://state.xml").await.unwrap();
        let mut quiet = item("q", "https://news.example/q", "Road work");
        let mut loud = item("l", "https://news.example/l", "Bridge closed");
        loud.breaking = true;
        store
            .record_feed_items(feed, &region, &[quiet.clone(), loud.clone()], at(100))
            .await
            .unwrap();
        assert_eq!(
            store.article_breaking(&quiet.link).await.unwrap(),
            Some(false)
        );
        assert_eq!(
            store.article_breaking(&loud.link).await.unwrap(),
            Some(true),
            "{backend:?}"
        );

        // The feed later files the road work under breaking: an update, now breaking.
        quiet.breaking = true;
        quiet.category = "Breaking".into();
        let counts = store
            .record_feed_items(feed, &region, &[quiet.clone()], at(200))
            .await
            .unwrap();
        assert_eq!(counts.updated, 1);
        assert_eq!(
            store.article_breaking(&quiet.link).await.unwrap(),
            Some(true)
        );

        // Dropping the category later leaves it breaking: alerts may be out already.
        loud.breaking = false;
        loud.title = "Bridge reopened".into();
        store
            .record_feed_items(feed, &region, &[loud.clone()], at(300))
            .await
            .unwrap();
        assert_eq!(
            store.article_breaking(&loud.link).await.unwrap(),
            Some(true)
        );
        assert_eq!(store.article_count().await.unwrap(), 2);

        // Undated items are dated when first seen.
        let recent = store.recent_articles(&region, at(0), 10).await.unwrap();
        assert!(
            recent.iter().all(|a| a.published_at == Some(at(100))),
            "{recent:?}"
        );
    }
}

#[tokio::test]
async fn pushed_articles_are_keyed_by_link() {
    for (backend, t) in stores().await {
        let store = &t.store;
        let state: RegionSlug = "state".parse().unwrap();
        let town: RegionSlug = "town".parse().unwrap();
        let mut pushed = item("", "https://news.example/p", "Flood warning");
        pushed.breaking = true;
        let PushOutcome::Created(id) = store.push_article(&town, &pushed, at(100)).await.unwrap()
        else {
            panic!("first push creates ({backend:?})");
        };
        assert_eq!(
            store.push_article(&town, &pushed, at(110)).await.unwrap(),
            PushOutcome::Unchanged(id)
        );
        assert_eq!(
            store.push_article(&state, &pushed, at(120)).await.unwrap(),
            PushOutcome::Updated(id),
            "a new region is a change"
        );
        pushed.summary = "Evacuations on River Road.".into();
        assert_eq!(
            store.push_article(&town, &pushed, at(130)).await.unwrap(),
            PushOutcome::Updated(id)
        );
        assert_eq!(store.article_count().await.unwrap(), 1);
        assert_eq!(store.region_article_count(&state).await.unwrap(), 1);
        assert_eq!(
            store.article_breaking(&pushed.link).await.unwrap(),
            Some(true)
        );
    }
}
